//! The lookup order, loopback double credit, conservation, pid reuse and shared sockets.
// Tests pick their starting instant from the clock; the code under test never reads it.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{
    attribute, AttributionCache, ClosedSocket, Credit, Ledger, MatchKind, NetNsId, OwnerMap,
    ProcessInfo, ProcessKey, SocketEntry, SocketTable, TableParts, Tally, TcpState, UnknownReason,
};
use pidcap_wire::{FlowKey, IpProto};
use proptest::prelude::*;

const NS: NetNsId = NetNsId(4026531840);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sock(proto: IpProto, local: &str, remote: &str, inode: u64) -> SocketEntry {
    SocketEntry {
        netns: NS,
        proto,
        local: addr(local),
        remote: addr(remote),
        state: TcpState::Established,
        inode,
        uid: 1000,
    }
}

fn key(pid: u32, start_time: u64) -> ProcessKey {
    ProcessKey { pid, start_time }
}

fn info(k: ProcessKey, comm: &str) -> ProcessInfo {
    ProcessInfo {
        key: k,
        comm: comm.into(),
        exe: Some(format!("/usr/bin/{comm}")),
        uid: 1000,
        cmdline: vec![comm.into()],
        placement: Default::default(),
    }
}

/// A table from sockets and `(inode, holders)`; every holder is a known process.
fn table(
    sockets: Vec<SocketEntry>,
    holders: &[(u64, &[ProcessKey])],
    local: &[&str],
) -> SocketTable {
    SocketTable::build(1, parts(sockets, holders, local))
}

/// Table parts from sockets and `(inode, holders)`; every holder is a known process.
fn parts(
    sockets: Vec<SocketEntry>,
    holders: &[(u64, &[ProcessKey])],
    local: &[&str],
) -> TableParts {
    let mut h = HashMap::new();
    let mut processes = HashMap::new();
    for (inode, keys) in holders {
        h.insert(*inode, keys.to_vec());
        for k in *keys {
            processes.insert(*k, info(*k, &format!("p{}", k.pid)));
        }
    }
    TableParts {
        netns: Some(NS),
        sockets,
        owners: Arc::new(OwnerMap {
            holders: h,
            processes,
        }),
        closed: Vec::new(),
        departed: Vec::new(),
        local_addrs: local.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect(),
        guest_addrs: Vec::new(),
    }
}

fn flow(proto: IpProto, src: &str, dst: &str) -> FlowKey {
    FlowKey {
        proto,
        src: addr(src),
        dst: addr(dst),
    }
}

fn credited(c: Option<Credit>) -> Option<(u32, MatchKind)> {
    match c? {
        Credit::Process { key, kind } => Some((key.pid, kind)),
        Credit::Unknown(_) => None,
    }
}

#[test]
fn exact_socket_wins_over_listener() {
    let t = table(
        vec![
            sock(IpProto::Tcp, "10.0.0.1:80", "0.0.0.0:0", 1),
            sock(IpProto::Tcp, "10.0.0.1:80", "192.0.2.7:5555", 2),
        ],
        &[(1, &[key(10, 100)]), (2, &[key(20, 200)])],
        &["10.0.0.1"],
    );
    let v = attribute(
        &t,
        &flow(IpProto::Tcp, "192.0.2.7:5555", "10.0.0.1:80"),
        true,
    );
    assert_eq!(credited(v.rx), Some((20, MatchKind::Exact)));
    assert_eq!(v.tx, None, "the remote end is not local");
    let other = attribute(&t, &flow(IpProto::Tcp, "192.0.2.8:1", "10.0.0.1:80"), true);
    assert_eq!(credited(other.rx), Some((10, MatchKind::Wildcard)));
}

#[test]
fn wildcard_address_and_dual_stack_sockets_match_local_traffic() {
    let t = table(
        vec![
            sock(IpProto::Udp, "0.0.0.0:53", "0.0.0.0:0", 1),
            sock(IpProto::Udp, "[::]:5353", "[::]:0", 2),
            sock(
                IpProto::Tcp,
                "[::ffff:10.0.0.1]:8080",
                "[::ffff:192.0.2.1]:4000",
                3,
            ),
        ],
        &[(1, &[key(1, 1)]), (2, &[key(2, 2)]), (3, &[key(3, 3)])],
        &["10.0.0.1", "2001:db8::1"],
    );
    let v4 = attribute(
        &t,
        &flow(IpProto::Udp, "192.0.2.1:999", "10.0.0.1:53"),
        true,
    );
    assert_eq!(credited(v4.rx), Some((1, MatchKind::Wildcard)));
    let dual = attribute(
        &t,
        &flow(IpProto::Udp, "192.0.2.1:999", "10.0.0.1:5353"),
        true,
    );
    assert_eq!(
        credited(dual.rx),
        Some((2, MatchKind::Wildcard)),
        "IPv4 on a [::] socket"
    );
    let v6 = attribute(
        &t,
        &flow(IpProto::Udp, "[2001:db8::9]:1", "[2001:db8::1]:5353"),
        true,
    );
    assert_eq!(credited(v6.rx), Some((2, MatchKind::Wildcard)));
    let mapped = attribute(
        &t,
        &flow(IpProto::Tcp, "10.0.0.1:8080", "192.0.2.1:4000"),
        true,
    );
    assert_eq!(
        credited(mapped.tx),
        Some((3, MatchKind::Exact)),
        "v4-mapped connected socket"
    );
}

#[test]
fn wildcard_socket_does_not_claim_traffic_to_foreign_addresses() {
    let t = table(
        vec![sock(IpProto::Udp, "0.0.0.0:53", "0.0.0.0:0", 1)],
        &[(1, &[key(1, 1)])],
        &["10.0.0.1"],
    );
    let v = attribute(
        &t,
        &flow(IpProto::Udp, "192.0.2.1:999", "198.51.100.1:53"),
        true,
    );
    assert_eq!(v.rx, None);
    assert_eq!(v.tx, None);
}

/// Foreign packets skip the socket lookups (a busy segment, a replayed capture): only
/// when no socket, live or recently closed, has either address. A transparent proxy's
/// socket on an address that is not the host's still gets its packets.
#[test]
fn a_socket_on_an_address_that_is_not_the_hosts_still_gets_its_packets() {
    let proxied = sock(IpProto::Tcp, "203.0.113.5:80", "192.0.2.9:4000", 1);
    let mut p = parts(
        vec![proxied],
        &[(1, &[key(1, 1)]), (2, &[key(2, 1)])],
        &["10.0.0.1"],
    );
    p.closed = vec![ClosedSocket {
        netns: NS,
        proto: IpProto::Tcp,
        local: addr("203.0.113.6:80"),
        remote: addr("192.0.2.9:4001"),
        inode: 2,
        owner: key(2, 1),
        seen: None,
    }];
    let t = SocketTable::build(1, p);
    let to_proxy = attribute(
        &t,
        &flow(IpProto::Tcp, "192.0.2.9:4000", "203.0.113.5:80"),
        true,
    );
    assert_eq!(credited(to_proxy.rx), Some((1, MatchKind::Exact)));
    assert_eq!(to_proxy.tx, None);
    let closed = attribute(
        &t,
        &flow(IpProto::Tcp, "203.0.113.6:80", "192.0.2.9:4001"),
        true,
    );
    assert_eq!(credited(closed.tx), Some((2, MatchKind::Recent)));
    let foreign = attribute(
        &t,
        &flow(IpProto::Tcp, "192.0.2.9:4000", "198.51.100.1:80"),
        true,
    );
    assert_eq!((foreign.tx, foreign.rx), (None, None));
    // Another port on the proxy's address is not the proxy's, but that address is an end.
    let other = attribute(
        &t,
        &flow(IpProto::Tcp, "192.0.2.9:4000", "203.0.113.5:81"),
        true,
    );
    assert_eq!(other.tx, None);
}

#[test]
fn loopback_packet_credits_sender_tx_and_receiver_rx() {
    let t = table(
        vec![
            sock(IpProto::Tcp, "127.0.0.1:40000", "127.0.0.1:5000", 1),
            sock(IpProto::Tcp, "127.0.0.1:5000", "127.0.0.1:40000", 2),
        ],
        &[(1, &[key(100, 1)]), (2, &[key(200, 2)])],
        &[],
    );
    let v = attribute(
        &t,
        &flow(IpProto::Tcp, "127.0.0.1:40000", "127.0.0.1:5000"),
        true,
    );
    assert_eq!(credited(v.tx), Some((100, MatchKind::Exact)));
    assert_eq!(credited(v.rx), Some((200, MatchKind::Exact)));
}

#[test]
fn unmatched_local_end_is_unknown_by_reason() {
    let t = table(
        vec![sock(IpProto::Tcp, "127.0.0.1:6000", "127.0.0.1:6001", 0)],
        &[],
        &["10.0.0.1"],
    );
    let time_wait = attribute(
        &t,
        &flow(IpProto::Tcp, "127.0.0.1:6000", "127.0.0.1:6001"),
        true,
    );
    assert_eq!(
        time_wait.tx,
        Some(Credit::Unknown(UnknownReason::NoProcess))
    );
    assert_eq!(time_wait.rx, Some(Credit::Unknown(UnknownReason::NoSocket)));
    // ICMP with neither a ping nor a raw socket: no socket (the kernel itself answered).
    let icmp = attribute(&t, &flow(IpProto::Icmp, "10.0.0.1:0", "192.0.2.1:0"), false);
    assert_eq!(icmp.tx, Some(Credit::Unknown(UnknownReason::NoSocket)));

    assert_eq!(icmp.rx, None);
}

#[test]
fn shared_socket_is_credited_to_newest_holder_deterministically() {
    let parent = key(50, 1000);
    let child = key(60, 2000);
    let twin = key(55, 2000);
    let sockets = vec![sock(IpProto::Tcp, "127.0.0.1:7000", "0.0.0.0:0", 9)];
    let holders: &[ProcessKey] = &[parent, child, twin];
    let t = table(sockets.clone(), &[(9, holders)], &[]);
    let v = attribute(
        &t,
        &flow(IpProto::Tcp, "127.0.0.1:1", "127.0.0.1:7000"),
        true,
    );
    assert_eq!(
        credited(v.rx),
        Some((60, MatchKind::Wildcard)),
        "newest, then the higher pid (the later fork within one clock tick)"
    );
    let reversed: &[ProcessKey] = &[twin, child, parent];
    let t2 = table(sockets, &[(9, reversed)], &[]);
    let v2 = attribute(
        &t2,
        &flow(IpProto::Tcp, "127.0.0.1:1", "127.0.0.1:7000"),
        true,
    );
    assert_eq!(v.rx, v2.rx, "holder order does not matter");
    assert_eq!(t.holders(9).len(), 3);
}

#[test]
fn reused_pid_never_inherits_counts() {
    let old = key(4242, 100);
    let new = key(4242, 900);
    let now = Instant::now();
    let mut ledger = Ledger::new(now);
    let mut tally = Tally::default();
    let t1 = table(
        vec![sock(IpProto::Udp, "127.0.0.1:9000", "127.0.0.1:9001", 1)],
        &[(1, &[old])],
        &[],
    );
    let f = flow(IpProto::Udp, "127.0.0.1:9000", "127.0.0.1:9001");
    tally.record(&attribute(&t1, &f, true), 100);
    ledger.merge(&mut tally, &t1);
    ledger.mark_exited(&old, now);
    let t2 = table(
        vec![sock(IpProto::Udp, "127.0.0.1:9000", "127.0.0.1:9001", 2)],
        &[(2, &[new])],
        &[],
    );
    tally.record(&attribute(&t2, &f, true), 30);
    ledger.merge(&mut tally, &t2);
    assert_eq!(ledger.process(&old).unwrap().usage.total.tx_bytes, 100);
    assert_eq!(ledger.process(&new).unwrap().usage.total.tx_bytes, 30);
    assert!(!ledger.process(&old).unwrap().alive());
    assert_eq!(
        ledger.find_pid(4242).unwrap().key,
        new,
        "the live process wins"
    );
}

#[test]
fn cache_is_invalidated_by_a_new_generation() {
    let f = flow(IpProto::Tcp, "127.0.0.1:1000", "127.0.0.1:2000");
    let empty = SocketTable::build(1, TableParts::default());
    let cache = AttributionCache::new(16);
    let first = cache.attribute(&empty, &f, true);
    assert!(first.new_miss);
    assert!(
        !cache.attribute(&empty, &f, true).new_miss,
        "a miss is reported once"
    );
    let mut parts = TableParts {
        sockets: vec![sock(IpProto::Tcp, "127.0.0.1:1000", "127.0.0.1:2000", 5)],
        ..TableParts::default()
    };
    Arc::make_mut(&mut parts.owners)
        .holders
        .insert(5, vec![key(7, 7)]);
    let full = SocketTable::build(2, parts);
    let second = cache.attribute(&full, &f, true);
    assert_eq!(credited(second.verdict.tx), Some((7, MatchKind::Exact)));
}

#[test]
fn cache_stays_within_capacity() {
    // A bound sender whose port a connection also uses: the remote end matters, so each
    // flow is cached per flow.
    let t = table(
        vec![
            sock(IpProto::Udp, "127.0.0.1:1", "0.0.0.0:0", 1),
            sock(IpProto::Udp, "127.0.0.1:1", "127.0.0.9:1", 2),
        ],
        &[(1, &[key(1, 1)]), (2, &[key(2, 1)])],
        &[],
    );
    let cache = AttributionCache::new(8);
    for port in 2..100u16 {
        let f = flow(IpProto::Udp, "127.0.0.1:1", &format!("127.0.0.1:{port}"));
        let tx = cache.attribute(&t, &f, true).verdict.tx;
        assert_eq!(credited(tx), Some((1, MatchKind::Wildcard)));
        assert!((1..=8).contains(&cache.len()), "{}", cache.len());
    }
    assert_eq!(
        cache.clears(),
        98 / 8,
        "each clear counted for stats.bounds"
    );
}

/// A local sender spraying datagrams from its bound socket to ports nobody holds (the
/// bench's flood of misses once its namespace is known): its end is credited, the other end
/// is a miss, and nothing is cached per flow — one answer per local end.
#[test]
fn a_bound_senders_flood_to_unowned_ports_is_cached_per_end_not_per_flow() {
    let t = table(
        vec![sock(IpProto::Udp, "10.0.0.2:5000", "0.0.0.0:0", 1)],
        &[(1, &[key(1, 1)])],
        &["10.0.0.1", "10.0.0.2"],
    );
    let cache = AttributionCache::new(1024);
    let mut misses = 0;
    for dst_port in 1000..1300u16 {
        let f = flow(
            IpProto::Udp,
            "10.0.0.2:5000",
            &format!("10.0.0.1:{dst_port}"),
        );
        for _ in 0..3 {
            let got = cache.attribute(&t, &f, true);
            assert_eq!(got.verdict, attribute(&t, &f, true));
            assert_eq!(credited(got.verdict.tx), Some((1, MatchKind::Wildcard)));
            misses += usize::from(got.new_miss);
        }
    }
    assert_eq!(misses, 300, "one miss per unowned port, not per packet");
    assert_eq!(cache.len(), 0, "no flow cached");
}

/// A flood of flows to local ports nobody holds (spoofed sources, a scan): no flow is cached,
/// a refresh is asked for once per local port and table, not once per flow.
#[test]
fn flows_to_unowned_ports_cost_one_miss_per_port_not_per_flow() {
    let t = table(
        vec![
            sock(IpProto::Udp, "10.0.0.1:53", "0.0.0.0:0", 1),
            // A connected socket on port 7: flows to port 7 depend on their remote end.
            sock(IpProto::Udp, "10.0.0.1:7", "192.0.2.9:7", 2),
        ],
        &[(1, &[key(1, 1)]), (2, &[key(2, 2)])],
        &["10.0.0.1"],
    );
    let cache = AttributionCache::new(1024);
    let mut misses = 0;
    for src_port in 1000..1100u16 {
        for dst_port in [80u16, 81] {
            let f = flow(
                IpProto::Udp,
                &format!("192.0.2.1:{src_port}"),
                &format!("10.0.0.1:{dst_port}"),
            );
            let got = cache.attribute(&t, &f, true);
            assert_eq!(got.verdict, attribute(&t, &f, true));
            assert_eq!(
                got.verdict.rx,
                Some(Credit::Unknown(UnknownReason::NoSocket))
            );
            misses += usize::from(got.new_miss);
        }
    }
    assert_eq!(misses, 2, "one miss per unowned port");
    assert_eq!(cache.len(), 0, "no flow cached");
    // Port 7 has a connected socket: each new remote is its own miss, cached per flow.
    for src_port in 1000..1010u16 {
        let f = flow(IpProto::Udp, &format!("192.0.2.1:{src_port}"), "10.0.0.1:7");
        assert!(cache.attribute(&t, &f, true).new_miss);
    }
    assert_eq!(cache.len(), 10);
    // A new table asks again.
    let next = SocketTable::build(2, parts(Vec::new(), &[], &["10.0.0.1"]));
    let f = flow(IpProto::Udp, "192.0.2.1:1000", "10.0.0.1:80");
    assert!(cache.attribute(&next, &f, true).new_miss);
    assert!(!cache.attribute(&next, &f, true).new_miss);
}

#[test]
fn failed_log_write_loses_nothing_and_exit_waits_for_the_log() {
    let p = key(1, 1);
    let t = table(
        vec![sock(IpProto::Tcp, "127.0.0.1:1", "127.0.0.1:2", 1)],
        &[(1, &[p])],
        &[],
    );
    let f = flow(IpProto::Tcp, "127.0.0.1:1", "127.0.0.1:2");
    let t0 = Instant::now();
    let mut ledger = Ledger::new(t0);
    let mut tally = Tally::default();
    tally.record(&attribute(&t, &f, true), 60);
    ledger.merge(&mut tally, &t);
    let _failed = ledger.log_batch(t0 + Duration::from_secs(10)); // never committed
    tally.record(&attribute(&t, &f, true), 40);
    ledger.merge(&mut tally, &t);
    ledger.mark_exited(&p, t0 + Duration::from_secs(11));
    assert_eq!(
        ledger.expire(t0 + Duration::from_secs(3600), Duration::from_secs(600)),
        0
    );
    let batch = ledger.log_batch(t0 + Duration::from_secs(20));
    assert_eq!(batch.interval, Duration::from_secs(20));
    let rec = &batch.records[0];
    assert_eq!(
        (rec.interval.tx_bytes, rec.total.tx_bytes, rec.exited),
        (100, 100, true)
    );
    assert_eq!(
        batch.records.last().unwrap().key,
        None,
        "unknown is always logged"
    );
    ledger.commit_log(&batch, t0 + Duration::from_secs(20));
    let next = ledger.log_batch(t0 + Duration::from_secs(30));
    assert_eq!(next.records.len(), 1, "nothing new to log for the process");
    assert_eq!(
        ledger.expire(t0 + Duration::from_secs(300), Duration::from_secs(600)),
        0
    );
    assert_eq!(
        ledger.expire(t0 + Duration::from_secs(611), Duration::from_secs(600)),
        1
    );
}

#[test]
fn rates_follow_the_sampling_period() {
    let p = key(1, 1);
    let t = table(
        vec![sock(IpProto::Tcp, "127.0.0.1:1", "127.0.0.1:2", 1)],
        &[(1, &[p])],
        &[],
    );
    let f = flow(IpProto::Tcp, "127.0.0.1:1", "127.0.0.1:2");
    let t0 = Instant::now();
    let mut ledger = Ledger::new(t0);
    let mut tally = Tally::default();
    for _ in 0..10 {
        tally.record(&attribute(&t, &f, true), 1000);
    }
    ledger.merge(&mut tally, &t);
    ledger.sample_rates(t0 + Duration::from_secs(2));
    let rate = ledger.process(&p).unwrap().usage.rate;
    assert_eq!(rate.tx_bps, 5000.0);
    assert_eq!(rate.rx_bps, 0.0);
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    (
        prop::sample::select(vec![
            "127.0.0.1",
            "10.0.0.1",
            "192.0.2.1",
            "::1",
            "2001:db8::1",
        ]),
        1u16..6,
    )
        .prop_map(|(ip, port)| SocketAddr::new(ip.parse().unwrap(), port))
}

proptest! {
    /// Conservation: per direction, credited + unknown == captured, for any mix of packets.
    #[test]
    fn conservation_holds(packets in prop::collection::vec((arb_addr(), arb_addr(), 20u32..1500, any::<bool>()), 0..200)) {
        let t = table(
            vec![
                sock(IpProto::Tcp, "127.0.0.1:1", "127.0.0.1:2", 1),
                sock(IpProto::Tcp, "0.0.0.0:3", "0.0.0.0:0", 2),
                sock(IpProto::Tcp, "[::]:4", "[::]:0", 3),
                sock(IpProto::Tcp, "10.0.0.1:5", "192.0.2.1:5", 0),
            ],
            &[(1, &[key(1, 1)]), (2, &[key(2, 2)]), (3, &[key(3, 3), key(4, 4)])],
            &["10.0.0.1", "2001:db8::1"],
        );
        let mut ledger = Ledger::new(Instant::now());
        let mut tally = Tally::default();
        let mut ip_bytes = 0u64;
        for (src, dst, len, known) in packets {
            let f = FlowKey { proto: IpProto::Tcp, src, dst };
            tally.record(&attribute(&t, &f, known), len);
            ip_bytes += u64::from(len);
        }
        ledger.merge(&mut tally, &t);
        let tot = ledger.totals();
        prop_assert_eq!(tot.credited.rx_bytes + tot.unknown.rx_bytes, tot.captured.rx_bytes);
        prop_assert_eq!(tot.credited.tx_bytes + tot.unknown.tx_bytes, tot.captured.tx_bytes);
        prop_assert_eq!(tot.credited.rx_packets + tot.unknown.rx_packets, tot.captured.rx_packets);
        let per_process: u64 = ledger.processes().map(|p| p.usage.total.rx_bytes + p.usage.total.tx_bytes).sum();
        prop_assert_eq!(per_process, tot.credited.rx_bytes + tot.credited.tx_bytes);
        prop_assert_eq!(ledger.unknown().total, tot.unknown);
        prop_assert!(tot.captured.rx_bytes + tot.captured.tx_bytes + tot.foreign_bytes >= ip_bytes);
    }
}

/// A table of a few connected, bound, holderless and recently closed sockets over
/// `arb_addr`'s addresses and ports.
fn mixed_table() -> SocketTable {
    let parts = TableParts {
        closed: vec![
            closed(IpProto::Udp, "0.0.0.0:2", "192.0.2.1:3", 0, key(5, 5)),
            closed(IpProto::Udp, "10.0.0.1:4", "192.0.2.1:1", 9, key(6, 6)),
        ],
        ..parts(
            vec![
                sock(IpProto::Udp, "127.0.0.1:1", "127.0.0.1:2", 1),
                sock(IpProto::Udp, "0.0.0.0:3", "0.0.0.0:0", 2),
                sock(IpProto::Udp, "[::]:4", "[::]:0", 3),
                sock(IpProto::Udp, "10.0.0.1:5", "192.0.2.1:5", 0),
                sock(IpProto::Udp, "10.0.0.1:1", "0.0.0.0:0", 4),
            ],
            &[(1, &[key(1, 1)]), (2, &[key(2, 2)]), (3, &[key(3, 3)])],
            &["10.0.0.1", "2001:db8::1"],
        )
    };
    SocketTable::build(3, parts)
}

/// The local ends of `verdict`'s misses (the source for tx, the destination for rx).
fn missed_ends(
    f: &FlowKey,
    verdict: &pidcap_core::Verdict,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let missed = |c: Option<Credit>, end: SocketAddr| c.is_some_and(Credit::is_miss).then_some(end);
    (missed(verdict.tx, f.src), missed(verdict.rx, f.dst))
}

proptest! {
    /// A local end that `remote_independent` names gets the same answer whatever the remote.
    #[test]
    fn remote_independent_ends_answer_the_same_for_every_remote(local in arb_addr(), r1 in arb_addr(), r2 in arb_addr()) {
        let t = mixed_table();
        if t.remote_independent(IpProto::Udp, local) {
            prop_assert_eq!(t.lookup(IpProto::Udp, local, r1), t.lookup(IpProto::Udp, local, r2));
        }
    }

    /// The cache never changes a verdict, reports a miss only for a miss, and reports every
    /// missed local end at least once per table.
    #[test]
    fn the_cache_is_transparent_and_reports_every_missed_end(flows in prop::collection::vec((arb_addr(), arb_addr()), 1..300)) {
        let t = mixed_table();
        let cache = AttributionCache::new(64);
        let mut reported = std::collections::HashSet::new();
        for (src, dst) in flows {
            let f = FlowKey { proto: IpProto::Udp, src, dst };
            let got = cache.attribute(&t, &f, true);
            prop_assert_eq!(got.verdict, attribute(&t, &f, true));
            prop_assert!(!got.new_miss || got.verdict.has_miss());
            // A refresh is asked for once per missed local end and table (the refresher then
            // looks up both ends of the flow that asked).
            let (tx, rx) = missed_ends(&f, &got.verdict);
            if got.new_miss {
                reported.extend([tx, rx].into_iter().flatten());
            }
            for end in [tx, rx].into_iter().flatten() {
                prop_assert!(reported.contains(&end), "{:?}: end {} never reported", f, end);
            }
        }
    }
}

fn table_with_closed(
    sockets: Vec<SocketEntry>,
    holders: &[(u64, &[ProcessKey])],
    closed: Vec<ClosedSocket>,
) -> SocketTable {
    let parts = TableParts {
        closed,
        ..parts(sockets, holders, &[])
    };
    SocketTable::build(2, parts)
}

#[test]
fn trailing_packets_of_a_closed_connection_keep_their_owner() {
    let dead = key(300, 30);
    let closed = closed(IpProto::Tcp, "127.0.0.1:45000", "127.0.0.1:80", 77, dead);
    // The client socket is in TIME_WAIT (inode 0): its last holder keeps the flow.
    let t = table_with_closed(
        vec![sock(IpProto::Tcp, "127.0.0.1:45000", "127.0.0.1:80", 0)],
        &[],
        vec![closed],
    );
    let fin = attribute(
        &t,
        &flow(IpProto::Tcp, "127.0.0.1:45000", "127.0.0.1:80"),
        true,
    );
    assert_eq!(credited(fin.tx), Some((300, MatchKind::Recent)));
    // Gone from the table altogether: still the last holder.
    let t = table_with_closed(vec![], &[], vec![closed]);
    let ack = attribute(
        &t,
        &flow(IpProto::Tcp, "127.0.0.1:80", "127.0.0.1:45000"),
        true,
    );
    assert_eq!(credited(ack.rx), Some((300, MatchKind::Recent)));
}

/// A recently closed socket `local` → `remote` of `proto`, last held by `owner`.
fn closed(
    proto: IpProto,
    local: &str,
    remote: &str,
    inode: u64,
    owner: ProcessKey,
) -> ClosedSocket {
    ClosedSocket {
        netns: NS,
        proto,
        local: addr(local),
        remote: addr(remote),
        inode,
        owner,
        seen: None,
    }
}

/// A TCP connection from `local` to 127.0.0.1:80 that `owner` was seen using (no inode:
/// what the socket tracer reports).
fn seen_tcp(local: &str, owner: ProcessKey) -> ClosedSocket {
    closed(IpProto::Tcp, local, "127.0.0.1:80", 0, owner)
}

#[test]
fn an_open_connection_whose_holder_is_not_found_yet_is_exact_for_the_process_seen_using_it() {
    let user = key(500, 50);
    let seen = seen_tcp("127.0.0.1:45001", user);
    // Inode 91 is in the dump, but no fd scan has found who holds it yet.
    let t = table_with_closed(
        vec![sock(IpProto::Tcp, "127.0.0.1:45001", "127.0.0.1:80", 91)],
        &[],
        vec![seen],
    );
    let m = t
        .lookup(IpProto::Tcp, addr("127.0.0.1:45001"), addr("127.0.0.1:80"))
        .unwrap();
    assert_eq!(
        (m.inode, m.kind, m.owner),
        (91, MatchKind::Exact, Some(user))
    );
}

/// An IPv6 UDP connect seen through its route lookup, before the kernel chose the source
/// address: `[::]:45100` stands for port 45100 on every local address, with that remote only.
#[test]
fn a_claim_without_a_chosen_source_address_matches_that_port_on_local_addresses_only() {
    let user = key(700, 70);
    let seen = closed(IpProto::Udp, "[::]:45100", "[::1]:53", 0, user);
    let t = table_with_closed(vec![], &[], vec![seen]);
    let query = attribute(&t, &flow(IpProto::Udp, "[::1]:45100", "[::1]:53"), true);
    assert_eq!(credited(query.tx), Some((700, MatchKind::Recent)));
    let answer = attribute(&t, &flow(IpProto::Udp, "[::1]:53", "[::1]:45100"), true);
    assert_eq!(credited(answer.rx), Some((700, MatchKind::Recent)));
    // Not another port, another remote, another family, nor an address not this host's.
    for (src, dst) in [
        ("[::1]:45101", "[::1]:53"),
        ("[::1]:45100", "[::1]:54"),
        ("127.0.0.1:45100", "127.0.0.1:53"),
        ("[2001:db8::9]:45100", "[::1]:53"),
    ] {
        let v = attribute(&t, &flow(IpProto::Udp, src, dst), true);
        assert_eq!(credited(v.tx), None, "{src} -> {dst}");
    }
}

#[test]
fn tables_share_parts_but_a_published_table_never_changes() {
    let live = Arc::new(pidcap_core::LiveSockets::build(
        Some(NS),
        Vec::new(),
        Vec::new(),
        &[],
    ));
    let owners = Arc::new(pidcap_core::OwnerMap::default());
    let mut recent = Arc::new(pidcap_core::RecentSockets::default());
    let before =
        SocketTable::from_shared(1, Some(NS), live.clone(), owners.clone(), recent.clone());
    Arc::make_mut(&mut recent).insert(seen_tcp("127.0.0.1:45002", key(600, 60)));
    let after = SocketTable::from_shared(2, Some(NS), live, owners, recent);
    let find =
        |t: &SocketTable| t.lookup(IpProto::Tcp, addr("127.0.0.1:45002"), addr("127.0.0.1:80"));
    assert_eq!(find(&before), None);
    assert_eq!(find(&after).map(|m| m.owner), Some(Some(key(600, 60))));
}

#[test]
fn a_live_socket_on_a_reused_port_wins_over_the_closed_one() {
    let dead = key(300, 30);
    let alive = key(400, 40);
    let closed = closed(IpProto::Udp, "127.0.0.1:45000", "127.0.0.1:53", 77, dead);
    let reused = table_with_closed(
        vec![sock(IpProto::Udp, "127.0.0.1:45000", "127.0.0.1:53", 88)],
        &[(88, &[alive])],
        vec![closed],
    );
    let v = attribute(
        &reused,
        &flow(IpProto::Udp, "127.0.0.1:45000", "127.0.0.1:53"),
        true,
    );
    assert_eq!(credited(v.tx), Some((400, MatchKind::Exact)));
    // A closed socket never claims a different remote (that is a new flow).
    let other = attribute(
        &reused,
        &flow(IpProto::Udp, "127.0.0.1:45000", "127.0.0.1:54"),
        true,
    );
    assert_eq!(other.tx, Some(Credit::Unknown(UnknownReason::NoSocket)));
}

#[test]
fn ping_sockets_match_by_echo_identifier_and_raw_sockets_by_protocol() {
    let t = table(
        vec![
            sock(IpProto::Icmp, "0.0.0.0:4242", "0.0.0.0:0", 1),
            sock(IpProto::Icmpv6, "[::]:77", "[::]:0", 2),
            sock(IpProto::Unknown(253), "0.0.0.0:0", "0.0.0.0:0", 3),
            sock(IpProto::Icmp, "10.0.0.1:0", "0.0.0.0:0", 4),
        ],
        &[
            (1, &[key(1, 1)]),
            (2, &[key(2, 2)]),
            (3, &[key(3, 3)]),
            (4, &[key(4, 4)]),
        ],
        &["10.0.0.1", "2001:db8::1"],
    );
    // A ping socket's identifier is the pinger's "port": the source of its requests and the
    // destination of the replies; the kernel's responder end (port 0) is nobody's.
    let request = attribute(
        &t,
        &flow(IpProto::Icmp, "127.0.0.1:4242", "127.0.0.1:0"),
        true,
    );
    assert_eq!(credited(request.tx), Some((1, MatchKind::Wildcard)));
    assert_eq!(request.rx, Some(Credit::Unknown(UnknownReason::NoSocket)));
    let v6 = attribute(&t, &flow(IpProto::Icmpv6, "[::1]:0", "[::1]:77"), true);
    assert_eq!(credited(v6.rx), Some((2, MatchKind::Wildcard)));
    assert_eq!(v6.tx, Some(Credit::Unknown(UnknownReason::NoSocket)));
    // An unusual protocol without ports goes to the raw socket of that protocol.
    let raw = attribute(
        &t,
        &flow(IpProto::Unknown(253), "192.0.2.9:0", "10.0.0.1:0"),
        false,
    );
    assert_eq!(credited(raw.rx), Some((3, MatchKind::Wildcard)));
    // ICMP that is not a ping-socket echo (here: another identifier) reaches the raw ICMP socket.
    let other = attribute(&t, &flow(IpProto::Icmp, "192.0.2.9:9", "10.0.0.1:9"), true);
    assert_eq!(credited(other.rx), Some((4, MatchKind::Wildcard)));
    // SCTP is matched by ports like TCP; with no SCTP socket, a local end is a miss.
    let sctp = attribute(&t, &flow(IpProto::Sctp, "10.0.0.1:1", "192.0.2.9:2"), true);
    assert_eq!(sctp.tx, Some(Credit::Unknown(UnknownReason::NoSocket)));
    // A TCP non-first fragment has no ports: unsupported.
    let frag = attribute(&t, &flow(IpProto::Tcp, "10.0.0.1:0", "192.0.2.9:0"), false);
    assert_eq!(frag.tx, Some(Credit::Unknown(UnknownReason::Unsupported)));
}

#[test]
fn a_server_connection_in_time_wait_falls_back_to_its_listener() {
    let server = key(80, 8);
    let t = table(
        vec![
            sock(IpProto::Tcp, "127.0.0.1:8080", "0.0.0.0:0", 1),
            sock(IpProto::Tcp, "127.0.0.1:8080", "127.0.0.1:50000", 0),
        ],
        &[(1, &[server])],
        &[],
    );
    let fin = attribute(
        &t,
        &flow(IpProto::Tcp, "127.0.0.1:8080", "127.0.0.1:50000"),
        true,
    );
    assert_eq!(credited(fin.tx), Some((80, MatchKind::Wildcard)));
    // With no listener either, the holderless socket is what is known.
    let t = table(
        vec![sock(IpProto::Tcp, "127.0.0.1:8080", "127.0.0.1:50000", 0)],
        &[],
        &[],
    );
    let fin = attribute(
        &t,
        &flow(IpProto::Tcp, "127.0.0.1:8080", "127.0.0.1:50000"),
        true,
    );
    assert_eq!(fin.tx, Some(Credit::Unknown(UnknownReason::NoProcess)));
}

#[test]
fn sctp_associations_and_endpoints_match_by_ports() {
    let t = table(
        vec![
            sock(IpProto::Sctp, "10.0.0.1:5060", "192.0.2.9:7000", 1),
            sock(IpProto::Sctp, "0.0.0.0:5061", "0.0.0.0:0", 2),
        ],
        &[(1, &[key(1, 1)]), (2, &[key(2, 2)])],
        &["10.0.0.1"],
    );
    let assoc = attribute(
        &t,
        &flow(IpProto::Sctp, "10.0.0.1:5060", "192.0.2.9:7000"),
        true,
    );
    assert_eq!(credited(assoc.tx), Some((1, MatchKind::Exact)));
    let ep = attribute(
        &t,
        &flow(IpProto::Sctp, "192.0.2.9:9", "10.0.0.1:5061"),
        true,
    );
    assert_eq!(credited(ep.rx), Some((2, MatchKind::Wildcard)));
}
