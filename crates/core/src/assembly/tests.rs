//! The assembly policy with fixtures and properties: sockets, owners and sightings in,
//! tables out, time as a parameter (no kernel, no clock).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_wire::{FlowKey, IpProto};
use proptest::prelude::*;

use super::*;
use crate::{
    AttributionCache, Captured, Credit, Currency, MatchKind, SocketMatch, TableParts, TcpState,
    UnknownReason,
};

const NS: NetNsId = NetNsId(4026531840);
/// A peer no socket uses: a lookup with it finds bound sockets only.
const STRANGER: &str = "127.0.0.9:9";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sock(proto: IpProto, local: &str, remote: &str, inode: u64) -> SocketEntry {
    let connected = remote != "0.0.0.0:0";
    SocketEntry {
        netns: NS,
        proto,
        local: addr(local),
        remote: addr(remote),
        state: match (connected, proto) {
            (true, _) => TcpState::Established,
            (false, IpProto::Tcp) => TcpState::Listen,
            (false, _) => TcpState::Close,
        },
        inode,
        uid: 1000,
    }
}

/// `s` in TIME_WAIT: no fd holds it any more.
fn time_wait(s: SocketEntry) -> SocketEntry {
    SocketEntry {
        inode: 0,
        state: TcpState::TimeWait,
        ..s
    }
}

fn key(pid: u32) -> ProcessKey {
    ProcessKey {
        pid,
        start_time: u64::from(pid),
    }
}

fn info(pid: u32) -> ProcessInfo {
    ProcessInfo {
        key: key(pid),
        comm: format!("p{pid}"),
        exe: None,
        uid: 1000,
        cmdline: Vec::new(),
        placement: Default::default(),
    }
}

fn owners(held: &[(u64, u32)]) -> OwnerMap {
    let mut map = OwnerMap::default();
    for &(inode, pid) in held {
        map.holders.entry(inode).or_default().push(key(pid));
        map.processes.insert(key(pid), info(pid));
    }
    map
}

/// What the daemon's shell does around the assembly, without the kernel: a fixed owner map
/// (replaced on demand), learned holders recorded in it, time in milliseconds from a start.
struct Shell {
    assembly: TableAssembly,
    owners: Arc<OwnerMap>,
    scratch: Vec<SocketEntry>,
    generation: u64,
    start: Instant,
}

impl Shell {
    fn new(held: &[(u64, u32)]) -> Shell {
        Shell {
            assembly: TableAssembly::new(),
            owners: Arc::new(owners(held)),
            scratch: Vec::new(),
            generation: 0,
            start: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// A pass at `ms` listing `sockets`; the owner map unchanged.
    fn pass(&mut self, ms: u64, sockets: &[SocketEntry]) -> Option<SocketTable> {
        let owners = self.owners.clone();
        self.pass_with(ms, sockets, owners, false)
    }

    fn pass_with(
        &mut self,
        ms: u64,
        sockets: &[SocketEntry],
        after: Arc<OwnerMap>,
        owners_changed: bool,
    ) -> Option<SocketTable> {
        self.scratch.clear();
        self.scratch.extend_from_slice(sockets);
        self.generation += 1;
        let before = std::mem::replace(&mut self.owners, after);
        let now = self.at(ms);
        let pass = Pass {
            sockets: &mut self.scratch,
            addrs: vec![addr("192.0.2.1:0").ip()],
            guest_addrs: Vec::new(),
            owners_before: &before,
            owners: self.owners.clone(),
            owners_changed,
            listed_at: now,
        };
        self.assembly.pass(pass, NS, self.generation, now)
    }

    /// A table of what is known now (published or not).
    fn table(&mut self) -> SocketTable {
        self.generation += 1;
        self.assembly
            .table(self.owners.clone(), NS, self.generation)
    }

    /// A pass at `ms`, and the table as of then.
    fn table_at(&mut self, ms: u64, sockets: &[SocketEntry]) -> SocketTable {
        self.pass(ms, sockets).unwrap_or_else(|| self.table())
    }

    /// `pid`, started at `started` ms, seen holding `socket` at `seen` ms (its holding
    /// recorded in the owner map).
    fn learn_started(&mut self, socket: SocketEntry, pid: u32, started: u64, seen: u64) {
        let sighting = Sighting {
            sockets: vec![socket],
            holder: info(pid),
            seen: Some(self.at(seen)),
            started: Some(self.at(started)),
        };
        self.assembly.learn(sighting, self.at(seen));
        let map = Arc::make_mut(&mut self.owners);
        map.holders.entry(socket.inode).or_default().push(key(pid));
    }

    fn learn(&mut self, ms: u64, sockets: &[SocketEntry], pid: u32) {
        let map = Arc::make_mut(&mut self.owners);
        for s in sockets.iter().filter(|s| s.inode != 0) {
            map.holders.entry(s.inode).or_default().push(key(pid));
        }
        let now = self.at(ms);
        let sighting = Sighting {
            sockets: sockets.to_vec(),
            holder: info(pid),
            seen: Some(now),
            started: None,
        };
        self.assembly.learn(sighting, now);
    }
}

/// The socket and holder a lookup of `s`'s ends finds (a stranger as the peer of an
/// unconnected socket).
fn find(table: &SocketTable, s: &SocketEntry) -> Option<SocketMatch> {
    let remote = if s.is_wildcard_remote() {
        addr(STRANGER)
    } else {
        s.remote
    };
    table.lookup(s.proto, s.local, remote)
}

fn found(table: &SocketTable, s: &SocketEntry) -> Option<(u64, MatchKind, Option<u32>)> {
    find(table, s).map(|m| (m.inode, m.kind, m.owner.map(|k| k.pid)))
}

const SECOND: u64 = 1000;
const CLOSE_MS: u64 = CLOSE_GRACE.as_millis() as u64;
const BOUND_MS: u64 = BOUND_GRACE.as_millis() as u64;

#[test]
fn a_live_socket_wins_over_a_learned_one_on_the_same_address() {
    let mut shell = Shell::new(&[(60, 2), (61, 2)]);
    let learned_udp = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 50);
    let learned_tcp = sock(IpProto::Tcp, "127.0.0.1:40000", "127.0.0.1:80", 51);
    shell.pass(0, &[]);
    shell.learn(100, &[learned_udp, learned_tcp], 500);
    let table = shell.pass(200, &[]).expect("a sighting publishes");
    assert_eq!(
        found(&table, &learned_udp),
        Some((50, MatchKind::Wildcard, Some(500)))
    );
    assert_eq!(
        found(&table, &learned_tcp),
        Some((51, MatchKind::Recent, Some(500)))
    );

    let live_udp = SocketEntry {
        inode: 60,
        ..learned_udp
    };
    let live_tcp = SocketEntry {
        inode: 61,
        ..learned_tcp
    };
    let table = shell.pass(300, &[live_udp, live_tcp]).expect("new sockets");
    assert_eq!(
        found(&table, &live_udp),
        Some((60, MatchKind::Wildcard, Some(2)))
    );
    assert_eq!(
        found(&table, &live_tcp),
        Some((61, MatchKind::Exact, Some(2)))
    );
}

/// A socket shared after fork: the child was seen holding it (a sighting, its newest
/// holder), exited, and the socket lives on in the parent. Once the parent is found as its
/// holder and the socket is listed live, the parent is credited, not the child's sighting.
#[test]
fn a_socket_listed_live_with_its_holder_wins_over_an_exited_sharers_sighting() {
    let mut shell = Shell::new(&[]);
    let shared = sock(IpProto::Udp, "127.0.0.1:40000", "127.0.0.1:53", 70);
    shell.pass(0, &[]);
    shell.learn(10, &[shared], 900); // the child, at exec
    let table = shell.table();
    assert_eq!(
        found(&table, &shared),
        Some((70, MatchKind::Recent, Some(900))),
        "before its exit the child is the holder known"
    );
    // The child exited; the kernel still has the socket; its holders are looked for again.
    Arc::make_mut(&mut shell.owners)
        .holders
        .insert(70, vec![key(800)]);
    let now = shell.at(0);
    shell.assembly.add_live(vec![shared], now);
    let table = shell.table();
    assert_eq!(
        found(&table, &shared),
        Some((70, MatchKind::Exact, Some(800))),
        "the parent, found holding it, wins over the child's sighting"
    );
}

#[test]
fn a_connection_in_time_wait_keeps_its_last_holder_for_close_grace() {
    let conn = sock(IpProto::Tcp, "127.0.0.1:40000", "127.0.0.2:80", 10);
    let mut shell = Shell::new(&[(10, 1)]);
    shell.pass(0, &[conn]);
    let table = shell.pass(SECOND, &[time_wait(conn)]).expect("inode lost");
    assert_eq!(found(&table, &conn), Some((10, MatchKind::Recent, Some(1))));
    let table = shell.table_at(SECOND + CLOSE_MS - 1, &[time_wait(conn)]);
    assert_eq!(found(&table, &conn), Some((10, MatchKind::Recent, Some(1))));
    let table = shell.pass(SECOND + CLOSE_MS, &[time_wait(conn)]);
    let table = table.expect("the closed socket expired");
    assert_eq!(found(&table, &conn), Some((0, MatchKind::Exact, None)));
}

#[test]
fn a_closed_unconnected_socket_is_kept_for_bound_grace_then_expires() {
    let udp = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 20);
    let mut shell = Shell::new(&[(20, 1)]);
    shell.pass(0, &[udp]);
    let table = shell.pass(SECOND, &[]).expect("a socket left");
    assert_eq!(
        found(&table, &udp),
        Some((20, MatchKind::Wildcard, Some(1)))
    );
    assert!(shell.pass(SECOND + BOUND_MS - 1, &[]).is_none());
    let table = shell
        .pass(SECOND + BOUND_MS, &[])
        .expect("the kept socket expired");
    assert_eq!(found(&table, &udp), None);
}

#[test]
fn a_closed_connection_is_kept_for_close_grace_then_expires() {
    let conn = sock(IpProto::Udp, "127.0.0.1:40000", "127.0.0.2:53", 30);
    let mut shell = Shell::new(&[(30, 1)]);
    shell.pass(0, &[conn]);
    let table = shell.pass(SECOND, &[]).expect("a socket left");
    assert_eq!(found(&table, &conn), Some((30, MatchKind::Recent, Some(1))));
    assert!(shell.pass(SECOND + CLOSE_MS - 1, &[]).is_none());
    let table = shell
        .pass(SECOND + CLOSE_MS, &[])
        .expect("the closed socket expired");
    assert_eq!(found(&table, &conn), None);
}

#[test]
fn a_new_live_socket_on_a_closed_sockets_address_wins_at_once() {
    let udp = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 20);
    let conn = sock(IpProto::Tcp, "127.0.0.1:40000", "127.0.0.2:80", 30);
    let mut shell = Shell::new(&[(20, 1), (30, 1), (21, 2), (31, 2)]);
    shell.pass(0, &[udp, conn]);
    shell.pass(SECOND, &[]).expect("both closed");
    let (udp2, conn2) = (
        SocketEntry { inode: 21, ..udp },
        SocketEntry { inode: 31, ..conn },
    );
    let table = shell.pass(SECOND + 1, &[udp2, conn2]).expect("reused");
    assert_eq!(
        found(&table, &udp),
        Some((21, MatchKind::Wildcard, Some(2)))
    );
    assert_eq!(found(&table, &conn), Some((31, MatchKind::Exact, Some(2))));
}

#[test]
fn of_two_kept_sockets_on_one_address_the_newer_wins() {
    let first = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 20);
    let second = SocketEntry { inode: 21, ..first };
    let mut shell = Shell::new(&[(20, 1), (21, 2)]);
    shell.pass(0, &[first]);
    shell.pass(SECOND, &[]);
    shell.pass(SECOND + 100, &[second]);
    let table = shell.pass(SECOND + 200, &[]).expect("closed");
    assert_eq!(
        found(&table, &first),
        Some((21, MatchKind::Wildcard, Some(2)))
    );
}

/// Issue #12, a UDP port passed from process to process: the previous holder's socket,
/// listed by a dump and leaving the list only at the pass after the new holder's socket
/// was learned, is kept after the new one — but it was held before it, so the new holder
/// keeps the port.
#[test]
fn a_socket_that_leaves_the_list_after_its_port_was_taken_does_not_take_it_back() {
    let old = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 20);
    let new = SocketEntry { inode: 21, ..old };
    let mut shell = Shell::new(&[(20, 1)]);
    shell.pass(0, &[old]);
    shell.learn(SECOND, &[new], 2);
    let table = shell.pass(SECOND + 100, &[]).expect("the old socket left");
    assert_eq!(
        found(&table, &old),
        Some((21, MatchKind::Wildcard, Some(2)))
    );
}

/// The credit of a datagram sent from unconnected socket `s` to a stranger, captured at
/// `at`, through `cache`.
fn sent_at(
    cache: &AttributionCache,
    table: &SocketTable,
    s: &SocketEntry,
    at: Instant,
) -> Option<Credit> {
    let flow = FlowKey {
        proto: s.proto,
        src: s.local,
        dst: addr(STRANGER),
    };
    cache.attribute_at(table, &flow, true, at).verdict.tx
}

/// Issue #12: a UDP port passed on at once. Once its holder's exit is known, a kept
/// socket answers for the datagrams captured before the exit and for none after — those
/// are the next holder's, whose socket is not known yet: a miss, never the dead process.
/// The verdict depends on the capture time, so the cache keeps none for the flow.
#[test]
fn a_kept_socket_answers_only_for_packets_captured_before_its_holder_exited() {
    let udp = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 20);
    let mut shell = Shell::new(&[]);
    shell.pass(0, &[]);
    shell.learn(10, &[udp], 1);
    shell.assembly.ended(&[20], shell.at(50));
    let table = shell.table();
    let cache = AttributionCache::new(64);
    let tx = |ms: u64| sent_at(&cache, &table, &udp, shell.at(ms));
    let credited = |c: Option<Credit>| match c {
        Some(Credit::Process { key, .. }) => Some(key.pid),
        _ => None,
    };
    assert_eq!(credited(tx(40)), Some(1), "captured before the exit");
    assert_eq!(
        tx(60),
        Some(Credit::Unknown(UnknownReason::NoSocket)),
        "captured after the exit: a miss, not the dead holder (nor a cached verdict)"
    );
    assert_eq!(credited(tx(49)), Some(1), "and before it again");
    // Without a capture time (a query), the kept socket answers as before.
    assert_eq!(
        found(&table, &udp),
        Some((20, MatchKind::Wildcard, Some(1)))
    );
}

/// A socket still listed (the pass that drops it has not come) whose holder exited:
/// the same, until the next pass.
#[test]
fn a_listed_socket_whose_holder_exited_answers_for_no_later_packet() {
    let udp = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 20);
    let mut shell = Shell::new(&[(20, 1)]);
    shell.pass(0, &[udp]);
    shell.assembly.ended(&[20], shell.at(50));
    let table = shell.table();
    let cache = AttributionCache::new(64);
    let tx = |ms: u64| sent_at(&cache, &table, &udp, shell.at(ms));
    assert!(matches!(tx(40), Some(Credit::Process { key, .. }) if key.pid == 1));
    assert_eq!(tx(60), Some(Credit::Unknown(UnknownReason::NoSocket)));
}

/// Issue #12, scenario 15: a UDP port passed on while the previous holder's socket is still
/// listed (the pass that drops it has not come). Once that holder's exit is known, the next
/// holder's socket, seen by the watcher, takes the port at once — not only at the next
/// pass (7 links of a chain went to unknown that way, every datagram of theirs).
#[test]
fn a_listed_socket_whose_holder_exited_yields_its_port_to_a_newer_sighting() {
    let old = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 20);
    let new = SocketEntry { inode: 21, ..old };
    let mut shell = Shell::new(&[(20, 1)]);
    shell.pass(0, &[old]);
    shell.assembly.ended(&[20], shell.at(50));
    shell.learn_started(new, 2, 55, 60);
    let table = shell.table();
    let cache = AttributionCache::new(64);
    let tx = |ms: u64| sent_at(&cache, &table, &old, shell.at(ms));
    assert!(matches!(tx(70), Some(Credit::Process { key, .. }) if key.pid == 2));
    // Before the old holder exited the port was its own (a datagram read late).
    assert!(matches!(tx(40), Some(Credit::Process { key, .. }) if key.pid == 1));
    // Between the old holder's exit and the new one's start: nobody's.
    assert_eq!(tx(52), Some(Credit::Unknown(UnknownReason::NoSocket)));
    // A listed socket whose holder lives still wins over any sighting.
    let mut live = Shell::new(&[(20, 1)]);
    live.pass(0, &[old]);
    live.learn(60, &[new], 2);
    assert_eq!(
        found(&live.table(), &old),
        Some((20, MatchKind::Wildcard, Some(1)))
    );
}

/// Issue #12, scenario 15: a chain of processes on one UDP port, each seen by the watcher
/// (or its bind traced), each exit known, and the datagrams read late (the capture is
/// polled every 500 ms while traffic is sparse): each is credited to the link that was
/// alive when it was captured, however many links came since.
#[test]
fn datagrams_read_late_go_to_the_link_of_a_chain_that_lived_when_they_were_captured() {
    let base = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 0);
    let mut shell = Shell::new(&[]);
    shell.pass(0, &[]);
    let links = 12u64; // more than the earlier holders kept per address
    for link in 0..links {
        let socket = SocketEntry {
            inode: 100 + link,
            ..base
        };
        let (start, end) = (link * 100 + 10, link * 100 + 90);
        let sighting = Sighting {
            sockets: vec![socket],
            holder: info(link as u32 + 1),
            seen: Some(shell.at(start + 1)),
            started: Some(shell.at(start)),
        };
        shell.assembly.learn(sighting, shell.at(start + 1));
        let map = Arc::make_mut(&mut shell.owners);
        map.holders
            .entry(socket.inode)
            .or_default()
            .push(key(link as u32 + 1));
        shell.assembly.ended(&[socket.inode], shell.at(end));
    }
    let table = shell.table();
    let cache = AttributionCache::new(64);
    let tx = |ms: u64| sent_at(&cache, &table, &base, shell.at(ms));
    let pid = |c: Option<Credit>| match c {
        Some(Credit::Process { key, .. }) => Some(key.pid),
        _ => None,
    };
    for link in 0..links {
        let during = link * 100 + 50;
        let kept = link + crate::table::HOLDERS_KEPT as u64 + 1 >= links;
        let want = kept.then_some(link as u32 + 1);
        assert_eq!(pid(tx(during)), want, "a datagram of link {link}");
        assert_eq!(
            pid(tx(link * 100 + 95)),
            None,
            "between links {link} and the next"
        );
    }
}

/// Issue #12, scenario 15 (a wrong credit found by the suite): a process that bound the
/// port once and let it go (its socket seen, then closed; the process lives on) must not
/// get a datagram of a link nobody saw, captured after later links took the port.
#[test]
fn a_datagram_of_an_unseen_link_never_goes_to_a_live_process_that_let_the_port_go() {
    let base = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 0);
    let mut shell = Shell::new(&[]);
    shell.pass(0, &[]);
    let sighting = |shell: &mut Shell, inode: u64, pid: u32, start: u64| {
        shell.learn_started(SocketEntry { inode, ..base }, pid, start, start + 1);
    };
    sighting(&mut shell, 90, 9, 0); // bound and let go; lives on, never ends
    sighting(&mut shell, 100, 1, 10);
    shell.assembly.ended(&[100], shell.at(90));
    // Link 2 (100..190) is never seen. Link 3:
    sighting(&mut shell, 102, 3, 210);
    let table = shell.table();
    let cache = AttributionCache::new(64);
    let tx = |ms: u64| sent_at(&cache, &table, &base, shell.at(ms));
    assert!(matches!(tx(50), Some(Credit::Process { key, .. }) if key.pid == 1));
    assert_eq!(
        tx(150),
        Some(Credit::Unknown(UnknownReason::NoSocket)),
        "link 2's"
    );
    assert!(matches!(tx(250), Some(Credit::Process { key, .. }) if key.pid == 3));
}

/// The other side of a UDP port passed on: the next holder's socket, learned after the
/// previous holder's last datagrams were captured but before they were decided (they
/// waited), is not theirs — its holder started after them.
#[test]
fn a_kept_socket_answers_for_no_packet_captured_before_its_holder_started() {
    let udp = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 21);
    let mut shell = Shell::new(&[]);
    shell.pass(0, &[]);
    shell.learn_started(udp, 2, 100, 120);
    let table = shell.table();
    let cache = AttributionCache::new(64);
    let tx = |ms: u64| sent_at(&cache, &table, &udp, shell.at(ms));
    assert_eq!(tx(50), Some(Credit::Unknown(UnknownReason::NoSocket)));
    assert!(matches!(tx(110), Some(Credit::Process { key, .. }) if key.pid == 2));
    assert_eq!(tx(99), Some(Credit::Unknown(UnknownReason::NoSocket)));
}

#[test]
fn a_closed_tcp_listener_is_not_kept() {
    let listener = sock(IpProto::Tcp, "127.0.0.1:8080", "0.0.0.0:0", 40);
    let mut shell = Shell::new(&[(40, 1)]);
    shell.pass(0, &[listener]);
    assert_eq!(found(&shell.table_at(SECOND, &[]), &listener), None);
}

#[test]
fn a_departed_holders_facts_outlive_its_closed_socket() {
    let conn = sock(IpProto::Tcp, "127.0.0.1:40000", "127.0.0.2:80", 30);
    let mut shell = Shell::new(&[(30, 1)]);
    shell.pass(0, &[conn]);
    // The process exited: the next full scan no longer knows it.
    let table = shell.pass_with(SECOND, &[], Arc::new(OwnerMap::default()), true);
    let table = table.expect("a socket left");
    assert_eq!(found(&table, &conn), Some((30, MatchKind::Recent, Some(1))));
    assert_eq!(table.process(&key(1)).map(|p| p.comm.as_str()), Some("p1"));
}

#[test]
fn an_unchanged_pass_publishes_no_table_and_tables_share_unchanged_parts() {
    let conn = sock(IpProto::Tcp, "127.0.0.1:40000", "127.0.0.2:80", 30);
    let mut shell = Shell::new(&[(30, 1)]);
    let first = shell.pass(0, &[conn]).expect("the first pass publishes");
    assert!(shell.pass(SECOND, &[conn]).is_none());
    let again = shell.table();
    let (a, b) = (first.parts(), again.parts());
    assert!(Arc::ptr_eq(a.0, b.0) && Arc::ptr_eq(a.1, b.1) && Arc::ptr_eq(a.2, b.2));

    // A connection learned: only the recent part is new.
    let learned = sock(IpProto::Tcp, "127.0.0.1:40001", "127.0.0.2:80", 0);
    shell.learn(SECOND + 1, &[learned], 500);
    let next = shell
        .pass(SECOND + 2, &[conn])
        .expect("a sighting publishes");
    assert!(Arc::ptr_eq(first.parts().0, next.parts().0));
    assert!(!Arc::ptr_eq(first.parts().2, next.parts().2));
    assert_eq!(
        found(&next, &learned),
        Some((0, MatchKind::Recent, Some(500)))
    );
    assert!(shell.pass(SECOND + 3, &[conn]).is_none());
}

#[test]
fn a_resolved_socket_joins_the_live_list() {
    let conn = sock(IpProto::Tcp, "127.0.0.1:40000", "127.0.0.2:80", 30);
    let mut shell = Shell::new(&[(30, 1)]);
    let first = shell.pass(0, &[]).expect("the first pass publishes");
    let table = shell
        .assembly
        .resolved(vec![conn], shell.owners.clone(), NS, 2, shell.at(1));
    assert!(!Arc::ptr_eq(first.parts().0, table.parts().0));
    assert_eq!(found(&table, &conn), Some((30, MatchKind::Exact, Some(1))));
    assert!(
        shell.pass(1, &[conn]).is_none(),
        "the dump shows what was resolved"
    );
}

/// Sockets the properties draw from: ports reused by other sockets, a wildcard bind, a
/// socket no process holds.
fn universe() -> Vec<SocketEntry> {
    vec![
        sock(IpProto::Tcp, "127.0.0.1:80", "0.0.0.0:0", 1),
        sock(IpProto::Tcp, "127.0.0.1:80", "127.0.0.2:4000", 2),
        sock(IpProto::Tcp, "127.0.0.1:5000", "127.0.0.2:80", 3),
        sock(IpProto::Udp, "127.0.0.1:53", "0.0.0.0:0", 4),
        sock(IpProto::Udp, "127.0.0.1:53", "0.0.0.0:0", 5),
        sock(IpProto::Tcp, "127.0.0.1:5000", "127.0.0.2:80", 6),
        sock(IpProto::Udp, "0.0.0.0:123", "0.0.0.0:0", 7),
        sock(IpProto::Tcp, "127.0.0.1:6000", "127.0.0.2:80", 8),
    ]
}

const HELD: &[(u64, u32)] = &[(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3), (7, 1)];

#[derive(Debug, Clone)]
enum Op {
    /// A pass `ms` later listing these sockets (index, in TIME_WAIT).
    Pass(u64, Vec<(usize, bool)>),
    /// A sighting by a pid of these sockets (index, without inode as the tracer has it).
    Learn(u32, Vec<(usize, bool)>),
    Table,
}

fn op() -> impl Strategy<Value = Op> {
    let picks = prop::collection::vec((0..8usize, any::<bool>()), 0..6);
    prop_oneof![
        3 => (0..3 * CLOSE_MS, picks.clone()).prop_map(|(ms, p)| Op::Pass(ms, p)),
        1 => (500..502u32, picks).prop_map(|(pid, p)| Op::Learn(pid, p)),
        1 => Just(Op::Table),
    ]
}

/// The listed sockets of a pass: one per address (the first), TIME_WAIT for connected TCP.
fn listed(picks: &[(usize, bool)]) -> Vec<SocketEntry> {
    let all = universe();
    let mut out: Vec<SocketEntry> = Vec::new();
    for &(i, tw) in picks {
        let s = all[i];
        let s = if tw && s.proto == IpProto::Tcp && !s.is_wildcard_remote() {
            time_wait(s)
        } else {
            s
        };
        let key = (s.proto, s.local, s.remote);
        if !out.iter().any(|o| (o.proto, o.local, o.remote) == key) {
            out.push(s);
        }
    }
    out
}

fn sighted(picks: &[(usize, bool)]) -> Vec<SocketEntry> {
    let all = universe();
    let strip = |(i, no_inode): &(usize, bool)| SocketEntry {
        inode: if *no_inode { 0 } else { all[*i].inode },
        ..all[*i]
    };
    picks.iter().map(strip).collect()
}

/// Runs `ops`, calling `check` after each with the shell, the time and the listed sockets;
/// returns the shell, the time and the sockets listed last.
fn run(
    ops: &[Op],
    mut check: impl FnMut(&mut Shell, u64, &[SocketEntry]),
) -> (Shell, u64, Vec<SocketEntry>) {
    let mut shell = Shell::new(HELD);
    let (mut ms, mut list) = (0, Vec::new());
    shell.pass(ms, &list); // as the daemon does before anything is learned
    for op in ops {
        match op {
            Op::Pass(later, picks) => {
                ms += later;
                list = listed(picks);
                shell.pass(ms, &list);
            }
            Op::Learn(pid, picks) => shell.learn(ms, &sighted(picks), *pid),
            Op::Table => drop(shell.table()),
        }
        check(&mut shell, ms, &list);
    }
    (shell, ms, list)
}

/// Every lookup of the universe's ends.
fn answers(table: &SocketTable) -> Vec<Option<SocketMatch>> {
    universe().iter().map(|s| find(table, s)).collect()
}

proptest! {
    #[test]
    fn a_live_held_socket_always_wins(ops in prop::collection::vec(op(), 1..30)) {
        run(&ops, |shell, _, list| {
            let table = shell.table();
            for s in list.iter().filter(|s| !table.holders(s.inode).is_empty()) {
                let m = find(&table, s).expect("a live held socket is found");
                assert_eq!(m.inode, s.inode, "{s:?} in {list:?}");
            }
        });
    }

    #[test]
    fn unchanged_inputs_publish_nothing_and_share_parts(ops in prop::collection::vec(op(), 1..30)) {
        run(&ops, |shell, ms, list| {
            let first = shell.table();
            assert!(shell.pass(ms, list).is_none());
            let again = shell.table();
            let (a, b) = (first.parts(), again.parts());
            assert!(Arc::ptr_eq(a.0, b.0) && Arc::ptr_eq(a.1, b.1) && Arc::ptr_eq(a.2, b.2));
        });
    }

    #[test]
    fn everything_kept_expires_after_the_grace_periods(ops in prop::collection::vec(op(), 1..30)) {
        let (mut shell, ms, list) = run(&ops, |_, _, _| {});
        let listed_inodes: Vec<u64> = list.iter().map(|s| s.inode).collect();
        let bound_over = shell.table_at(ms + BOUND_MS, &list);
        for m in answers(&bound_over).into_iter().flatten() {
            if m.kind == MatchKind::Wildcard {
                prop_assert!(listed_inodes.contains(&m.inode), "{m:?} kept past BOUND_GRACE");
            }
        }
        let close_over = shell.table_at(ms + CLOSE_MS, &list);
        let plain = SocketTable::build(0, TableParts {
            netns: Some(NS),
            sockets: list.clone(),
            owners: shell.owners.clone(),
            local_addrs: vec![addr("192.0.2.1:0").ip()],
            ..TableParts::default()
        });
        prop_assert_eq!(answers(&close_over), answers(&plain));
    }

    #[test]
    fn built_parts_answer_as_parts_rebuilt_from_the_inputs(ops in prop::collection::vec(op(), 1..30)) {
        run(&ops, |shell, _, _| {
            let table = shell.table();
            let a = &shell.assembly;
            let rebuilt = SocketTable::from_shared(
                0,
                Some(NS),
                Arc::new(a.live.build(Some(NS))),
                shell.owners.clone(),
                Arc::new(a.recent.build(Some(NS))),
            );
            assert_eq!(answers(&table), answers(&rebuilt));
            assert_eq!(table.sockets(), rebuilt.sockets());
        });
    }
}

/// A claimed connection whose claimant forks, then whose child claims it: each of the
/// tracer's reports is a change (a new table), the child's claim wins once the claims are
/// read past the packet, and the fork is forgotten with the claims, after [`CLOSE_GRACE`].
#[test]
fn forks_and_claims_read_make_tables_and_forks_expire_with_the_claims() {
    let mut shell = Shell::new(&[]);
    let conn = sock(IpProto::Tcp, "192.0.2.1:40000", "198.51.100.7:80", 0);
    assert!(shell.pass(0, &[]).is_some(), "the first table");
    shell.learn(10, &[conn], 100);
    assert!(shell.pass(11, &[]).is_some(), "a claim is a change");
    shell.assembly.forked(100, shell.at(12));
    assert!(shell.pass(13, &[]).is_some(), "a fork is a change");
    shell.learn(14, &[conn], 101);
    let read_to = shell.at(20);
    shell.assembly.claims_read(read_to);
    let table = shell.pass(21, &[]).expect("claims read is a change");
    assert!(shell.pass(22, &[]).is_none(), "nothing new");
    shell.assembly.claims_read(shell.at(15));
    assert!(shell.pass(23, &[]).is_none(), "an older horizon is no news");

    let late = |t: &SocketTable, ms| {
        let current = &|_| Currency::Current;
        let captured = Captured::late(shell.at(ms));
        t.lookup_captured(IpProto::Tcp, conn.local, conn.remote, current, captured)
            .and_then(|m| m.owner)
    };
    assert_eq!(late(&table, 16), Some(key(101)), "the child's claim");
    assert_eq!(late(&table, 30), None, "claims after 20 ms may still come");
    // Read as it comes, 1 ms after the fork: it waits (outside the answer's life).
    let now = Captured::at(shell.at(13));
    let current = &|_| Currency::Current;
    let m = table
        .lookup_captured(IpProto::Tcp, conn.local, conn.remote, current, now)
        .unwrap();
    assert!(m.life.excludes(shell.at(13)));

    let grace = CLOSE_GRACE.as_millis() as u64;
    let gone = shell.table_at(13 + grace, &[]);
    let now = Captured::at(shell.at(13 + grace));
    let m = gone.lookup_captured(IpProto::Tcp, conn.local, conn.remote, current, now);
    assert!(m.is_none_or(|m| m.life.is_unbounded()), "{m:?}");
}

/// The owner a late (pending) lookup of a datagram from `s`'s port captured at `at` finds,
/// `None` when it is undecided.
fn late_owner(table: &SocketTable, s: &SocketEntry, at: Instant) -> Option<Option<u32>> {
    let current = &|_| Currency::Current;
    let captured = Captured {
        at: Some(at),
        late: true,
    };
    table
        .lookup_captured(s.proto, s.local, addr(STRANGER), current, captured)
        .map(|m| m.owner.filter(|_| !m.life.excludes(at)).map(|k| k.pid))
}

/// Issue #12, scenario 15's probe: a process that bound a port once to find it free and
/// let it go while living on (its socket seen at its bind, then closed, never listed) does
/// not answer for a datagram captured after the binds the tracer read so far: a new
/// process may have bound the port, its bind on its way. The datagram waits, and is
/// decided once every bind up to its capture is in — the new holder's if one bound it, the
/// prober's if none did. A socket the kernel lists answers as read.
#[test]
fn a_datagram_on_a_port_let_go_by_a_live_process_waits_for_the_binds_up_to_its_capture() {
    let base = sock(IpProto::Udp, "127.0.0.1:5353", "0.0.0.0:0", 0);
    let probe = SocketEntry { inode: 90, ..base };
    let flow = FlowKey {
        proto: IpProto::Udp,
        src: base.local,
        dst: addr(STRANGER),
    };
    let start = |shell: &mut Shell| {
        shell.pass(0, &[]);
        shell.learn_started(probe, 9, 0, 1); // the prober: lives on, never ends
        shell.assembly.claims_read(shell.at(50));
    };
    let mut shell = Shell::new(&[]);
    start(&mut shell);
    let table = shell.table();
    let cache = AttributionCache::new(64);
    assert!(
        matches!(
            sent_at(&cache, &table, &base, shell.at(40)),
            Some(Credit::Process { key, .. }) if key.pid == 9
        ),
        "captured before the binds read: as read"
    );
    assert_eq!(
        sent_at(&cache, &table, &base, shell.at(60)),
        Some(Credit::Unknown(UnknownReason::NoSocket)),
        "captured after: waits"
    );
    assert_eq!(late_owner(&table, &base, shell.at(60)), None, "undecided");
    assert!(table.may_wait_for_claims(&flow, shell.at(60)));

    // A new process bound the port at 55; the binds up to 70 are in: its datagram.
    shell.learn_started(SocketEntry { inode: 100, ..base }, 1, 54, 55);
    shell.assembly.claims_read(shell.at(70));
    let table = shell.table();
    assert_eq!(late_owner(&table, &base, shell.at(60)), Some(Some(1)));
    assert!(!table.may_wait_for_claims(&flow, shell.at(60)));

    // Nobody bound it: the prober's, once the binds up to it are in.
    let mut shell = Shell::new(&[]);
    start(&mut shell);
    shell.assembly.claims_read(shell.at(70));
    let table = shell.table();
    assert_eq!(late_owner(&table, &base, shell.at(60)), Some(Some(9)));

    // Listed by the kernel, it answers as read.
    let mut shell = Shell::new(&[(90, 9)]);
    start(&mut shell);
    let table = shell.table_at(2, &[probe]);
    assert!(matches!(
        sent_at(&AttributionCache::new(64), &table, &base, shell.at(60)),
        Some(Credit::Process { key, .. }) if key.pid == 9
    ));
}
