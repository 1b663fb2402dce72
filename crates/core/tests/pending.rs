//! Late credit: directions whose owner is unknown wait, bounded in time and count, and are
//! credited once a table knows the owner; conservation holds throughout.
// Tests pick their starting instant from the clock; the code under test never reads it.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{
    attribute, Arrival, AttributionCache, CopyCheck, CopyFilter, CopyPacket, Credit, Direction,
    Ledger, NatMap, NetNsId, OwnerMap, Pending, ProcessInfo, ProcessKey, SocketEntry, SocketTable,
    TableParts, Tally, TcpState, Translation,
};
use pidcap_wire::CopyId;
use pidcap_wire::{FlowKey, IpProto};

const SHORT: ProcessKey = ProcessKey {
    pid: 4321,
    start_time: 99,
};

fn flow() -> FlowKey {
    FlowKey {
        proto: IpProto::Tcp,
        src: "127.0.0.1:40000".parse().unwrap(),
        dst: "127.0.0.1:8080".parse().unwrap(),
    }
}

fn empty(generation: u64) -> SocketTable {
    SocketTable::build(generation, TableParts::default())
}

/// A table where the client end of `flow()` is held by SHORT.
fn knowing(generation: u64) -> SocketTable {
    holding(generation, flow(), Vec::new())
}

/// A table where SHORT holds the socket `held.src` → `held.dst`, on a host with `addrs`.
fn holding(generation: u64, held: FlowKey, addrs: Vec<std::net::IpAddr>) -> SocketTable {
    let local: SocketAddr = held.src;
    let mut owners = OwnerMap::default();
    owners.holders.insert(5, vec![SHORT]);
    owners.processes.insert(
        SHORT,
        ProcessInfo {
            key: SHORT,
            comm: "curl".into(),
            exe: None,
            uid: 0,
            cmdline: vec![],
            placement: Default::default(),
        },
    );
    SocketTable::build(
        generation,
        TableParts {
            sockets: vec![SocketEntry {
                netns: NetNsId(1),
                proto: held.proto,
                local,
                remote: held.dst,
                state: TcpState::Established,
                inode: 5,
                uid: 0,
            }],
            owners: Arc::new(owners),
            local_addrs: addrs,
            ..TableParts::default()
        },
    )
}

/// Holds both directions of `n` packets of `flow()` as the pipeline does.
fn capture(pending: &mut Pending, tally: &mut Tally, table: &SocketTable, n: u32, now: Instant) {
    for _ in 0..n {
        let v = attribute(table, &flow(), true);
        for (dir, side) in [(Direction::Tx, v.tx), (Direction::Rx, v.rx)] {
            if let Some(credit) = side {
                pending.hold(tally, flow(), dir, credit, 100, Arrival::at(now), None);
            }
        }
    }
}

fn conserved(ledger: &Ledger) {
    let t = ledger.totals();
    assert_eq!(
        t.credited.tx_bytes + t.unknown.tx_bytes,
        t.captured.tx_bytes
    );
    assert_eq!(
        t.credited.rx_bytes + t.unknown.rx_bytes,
        t.captured.rx_bytes
    );
}

#[test]
fn a_packet_whose_owner_is_learned_later_is_credited_late() {
    let t0 = Instant::now();
    let cache = AttributionCache::new(1024);
    let filter = CopyFilter::new();
    let mut pending = Pending::new(1000, Duration::from_secs(2));
    let mut tally = Tally::default();
    let mut ledger = Ledger::new(t0);
    let before = empty(1);
    capture(&mut pending, &mut tally, &before, 3, t0);
    assert_eq!(
        pending.level().packets,
        6,
        "both ends wait: neither is known"
    );
    pending.settle(
        &mut tally,
        &before,
        &cache,
        &filter,
        t0 + Duration::from_millis(100),
    );
    ledger.merge(&mut tally, &before);
    assert_eq!(
        ledger.totals().captured.tx_bytes,
        0,
        "nothing is decided while waiting"
    );

    let after = knowing(2);
    pending.settle(
        &mut tally,
        &after,
        &cache,
        &filter,
        t0 + Duration::from_millis(300),
    );
    ledger.merge(&mut tally, &after);
    let p = ledger.process(&SHORT).expect("credited");
    assert_eq!(p.usage.total.tx_bytes, 300);
    assert_eq!(p.quality.late, 300);
    assert_eq!(p.meta.comm, "curl");
    assert_eq!(
        pending.level().packets,
        3,
        "the server end is still unknown"
    );

    pending.settle(
        &mut tally,
        &after,
        &cache,
        &filter,
        t0 + Duration::from_secs(3),
    );
    ledger.merge(&mut tally, &after);
    assert_eq!(pending.level().packets, 0);
    assert_eq!(ledger.totals().unknown_by_reason.pending_expired, 300);
    assert_eq!(ledger.totals().credited_by_quality.late, 300);
    conserved(&ledger);
}

#[test]
fn a_full_buffer_decides_its_oldest_entry_first() {
    let t0 = Instant::now();
    let mut pending = Pending::new(4, Duration::from_secs(60));
    let mut tally = Tally::default();
    let mut ledger = Ledger::new(t0);
    let table = empty(1);
    capture(&mut pending, &mut tally, &table, 5, t0);
    assert_eq!(pending.level().packets, 4, "bounded");
    assert_eq!(pending.level().bytes, 400);
    ledger.merge(&mut tally, &table);
    assert_eq!(ledger.totals().unknown_by_reason.pending_expired, 600);
    assert_eq!(pending.level().evicted, 6, "counted for stats.bounds");
    conserved(&ledger);
}

#[test]
fn drain_decides_everything_once() {
    let t0 = Instant::now();
    let cache = AttributionCache::new(1024);
    let mut pending = Pending::new(100, Duration::from_secs(60));
    let mut tally = Tally::default();
    let mut ledger = Ledger::new(t0);
    capture(&mut pending, &mut tally, &empty(1), 2, t0);
    let table = knowing(2);
    pending.drain(&mut tally, &table, &cache, &CopyFilter::new());
    ledger.merge(&mut tally, &table);
    let t = ledger.totals();
    assert_eq!((t.credited.tx_bytes, t.unknown.rx_bytes), (200, 200));
    assert_eq!(pending.level().packets, 0);
    pending.drain(&mut tally, &table, &cache, &CopyFilter::new());
    ledger.merge(&mut tally, &table);
    assert_eq!(
        ledger.totals().captured.tx_bytes,
        200,
        "nothing decided twice"
    );
    conserved(&ledger);
}

#[test]
fn a_disabled_buffer_records_misses_as_unknown_at_once() {
    let mut pending = Pending::new(0, Duration::from_secs(1));
    let mut tally = Tally::default();
    let mut ledger = Ledger::new(Instant::now());
    let table = empty(1);
    capture(&mut pending, &mut tally, &table, 1, Instant::now());
    ledger.merge(&mut tally, &table);
    assert_eq!(ledger.totals().unknown_by_reason.no_socket, 200);
    assert!(matches!(
        attribute(&table, &flow(), true).tx,
        Some(Credit::Unknown(_))
    ));
}

fn udp(src: &str, dst: &str) -> FlowKey {
    FlowKey {
        proto: IpProto::Udp,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
    }
}

/// A container 172.17.0.2 sends a datagram to 198.51.100.7:53 that leaves masqueraded as
/// 192.0.2.1:61000. Its veth copy is credited at once; its uplink copy misses (the
/// translation is not known yet) and waits whole. Once a table knows the translation, the
/// uplink copy is `transit` if the veth copy was counted, and credited to the container's
/// process if it was not (a capture of the uplink alone).
#[test]
fn a_held_translated_copy_is_transit_once_its_translation_is_known() {
    let veth = udp("172.17.0.2:5000", "198.51.100.7:53");
    let uplink = udp("192.0.2.1:61000", "198.51.100.7:53");
    let addrs = vec!["172.17.0.2".parse().unwrap(), "192.0.2.1".parse().unwrap()];
    let id = CopyId::default();
    let nat = Arc::new(NatMap::new([Translation {
        orig: veth,
        reply: uplink.reversed(),
    }]));
    for veth_seen in [true, false] {
        let t0 = Instant::now();
        let (cache, mut filter) = (AttributionCache::new(64), CopyFilter::new());
        let mut pending = Pending::new(100, Duration::from_secs(2));
        let (mut tally, mut ledger) = (Tally::default(), Ledger::new(t0));
        let before = holding(1, veth, addrs.clone());
        if veth_seen {
            assert!(matches!(
                filter.check(&veth, None, CopyPacket::new(60, id), 1_000, false),
                CopyCheck::First(_)
            ));
            let v = attribute(&before, &veth, true);
            tally.record_side(Direction::Tx, v.tx.unwrap(), false, 60);
        }
        let CopyCheck::First(mark) =
            filter.check(&uplink, None, CopyPacket::new(60, id), 1_005, true)
        else {
            panic!("a first sighting in its own form")
        };
        let v = attribute(&before, &uplink, true);
        assert!(v.has_miss() && v.rx.is_none());
        pending.hold(
            &mut tally,
            uplink,
            Direction::Tx,
            v.tx.unwrap(),
            60,
            Arrival::at(t0),
            Some(mark),
        );
        let after = holding(2, veth, addrs.clone()).with_nat(Arc::clone(&nat));
        pending.settle(&mut tally, &after, &cache, &filter, t0);
        ledger.merge(&mut tally, &after);
        let p = ledger.process(&SHORT).expect("credited");
        let t = ledger.totals();
        assert_eq!(p.usage.total.tx_bytes, 60, "veth seen: {veth_seen}");
        assert_eq!(t.transit_bytes, if veth_seen { 60 } else { 0 });
        assert_eq!(pending.level().packets, 0);
        conserved(&ledger);
    }
}

/// A packet waiting whole whose time runs out keeps the credit its resolved end had.
#[test]
fn a_packet_waiting_whole_keeps_its_known_credit_when_it_expires() {
    let t0 = Instant::now();
    let (cache, mut filter) = (AttributionCache::new(64), CopyFilter::new());
    let mut pending = Pending::new(100, Duration::from_secs(2));
    let (mut tally, mut ledger) = (Tally::default(), Ledger::new(t0));
    let table = knowing(1);
    let CopyCheck::First(mark) = filter.check(
        &flow(),
        None,
        CopyPacket::new(100, CopyId::default()),
        0,
        true,
    ) else {
        panic!("first")
    };
    let v = attribute(&table, &flow(), true);
    for (dir, side) in [(Direction::Tx, v.tx), (Direction::Rx, v.rx)] {
        pending.hold(
            &mut tally,
            flow(),
            dir,
            side.unwrap(),
            100,
            Arrival::at(t0),
            Some(mark),
        );
    }
    pending.settle(&mut tally, &table, &cache, &filter, t0);
    assert_eq!(
        pending.level().packets,
        2,
        "the server end is a miss: both wait"
    );
    pending.settle(
        &mut tally,
        &table,
        &cache,
        &filter,
        t0 + Duration::from_secs(3),
    );
    ledger.merge(&mut tally, &table);
    assert_eq!(ledger.process(&SHORT).unwrap().usage.total.tx_bytes, 100);
    assert_eq!(ledger.totals().unknown_by_reason.pending_expired, 100);
    conserved(&ledger);
}

/// A table whose own namespace is 1, where SHORT holds the client end of `flow()` in
/// `netns`.
fn holding_in(generation: u64, netns: NetNsId) -> SocketTable {
    let home = holding(generation, flow(), Vec::new());
    let mut socket = home.sockets()[0];
    socket.netns = netns;
    let owners = home.parts().1;
    SocketTable::build(
        generation,
        TableParts {
            netns: Some(NetNsId(1)),
            sockets: vec![socket],
            owners: Arc::clone(owners),
            ..TableParts::default()
        },
    )
}

/// A direction captured inside a namespace waits like any other and is retried among that
/// namespace's sockets: a home socket with the same loopback ports never resolves it.
#[test]
fn a_direction_held_in_a_namespace_is_resolved_only_by_that_namespaces_socket() {
    let guest = NetNsId(7);
    let now = Instant::now();
    let mut pending = Pending::new(8, Duration::from_secs(2));
    let mut tally = Tally::default();
    let miss = Credit::Unknown(pidcap_core::UnknownReason::NoSocket);
    pending.hold_in(&mut tally, guest, flow(), Direction::Tx, miss, 100, now);
    assert_eq!(pending.level().packets, 1);
    let (cache, copies) = (AttributionCache::new(16), CopyFilter::new());
    pending.settle(&mut tally, &holding_in(2, NetNsId(1)), &cache, &copies, now);
    assert_eq!(
        pending.level().packets,
        1,
        "home's socket does not resolve it"
    );
    let in_guest = holding_in(3, guest);
    pending.settle(&mut tally, &in_guest, &cache, &copies, now);
    assert_eq!(pending.level().packets, 0);
    let mut ledger = Ledger::new(now);
    ledger.merge(&mut tally, &in_guest);
    let row = ledger.find_pid(SHORT.pid).expect("credited late");
    assert_eq!(row.usage.total.tx_bytes, 100);
    conserved(&ledger);
}
