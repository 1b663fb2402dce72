//! A connection shared after `fork`: the parent connects and forks, the child does the I/O,
//! the parent keeps its copy idle. The fds name both (then, once the child exited, only the
//! parent); the tracer's claims (events in the process's own context) name the parent's
//! `connect` and the child's first send. Whatever order the records arrive in, the child is
//! credited — and a claim never takes a connection from a holder that has no claim of its
//! own (a reused 4-tuple's previous holder stays out).
// Tests pick their starting instant from the clock; the code under test never reads it.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{
    Arrival, AttributionCache, Captured, ClosedSocket, CopyFilter, Credit, Currency, Direction,
    Forks, Ledger, NetNsId, OwnerMap, Pending, ProcessKey, Seen, SocketEntry, SocketTable,
    TableParts, Tally, TcpState, UnknownReason, FORK_WINDOW, YOUNG_CONNECTION,
};
use pidcap_wire::{FlowKey, IpProto};

const NS: NetNsId = NetNsId(4026531840);
const INODE: u64 = 777;
const PARENT: ProcessKey = ProcessKey {
    pid: 100,
    start_time: 1,
};
const CHILD: ProcessKey = ProcessKey {
    pid: 101,
    start_time: 2,
};
/// A process that held the same 4-tuple before (an earlier connection).
const EARLIER: ProcessKey = ProcessKey {
    pid: 90,
    start_time: 0,
};

fn local() -> SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}

fn remote() -> SocketAddr {
    "127.0.0.1:80".parse().unwrap()
}

/// A record of the connection: a claim (inode 0) or a look at `owner`'s fds.
fn record(owner: ProcessKey, inode: u64, at: Instant) -> ClosedSocket {
    ClosedSocket {
        netns: NS,
        proto: IpProto::Tcp,
        local: local(),
        remote: remote(),
        inode,
        owner,
        seen: Some(Seen::at(at)),
    }
}

/// A table with the connection live and held by `holders` (none: not listed) and `records`
/// inserted in the order given.
fn table(holders: &[ProcessKey], records: Vec<ClosedSocket>) -> SocketTable {
    table_of(1, holders, records)
}

/// [`table`] of generation `generation`.
fn table_of(generation: u64, holders: &[ProcessKey], records: Vec<ClosedSocket>) -> SocketTable {
    let sockets = match holders {
        [] => Vec::new(),
        _ => vec![SocketEntry {
            netns: NS,
            proto: IpProto::Tcp,
            local: local(),
            remote: remote(),
            state: TcpState::Established,
            inode: INODE,
            uid: 0,
        }],
    };
    let owners = OwnerMap {
        holders: HashMap::from([(INODE, holders.to_vec())]),
        ..OwnerMap::default()
    };
    SocketTable::build(
        generation,
        TableParts {
            netns: Some(NS),
            sockets,
            owners: Arc::new(owners),
            closed: records,
            local_addrs: vec!["127.0.0.1".parse().unwrap()],
            ..TableParts::default()
        },
    )
}

fn credited(t: &SocketTable) -> Option<ProcessKey> {
    t.lookup(IpProto::Tcp, local(), remote())?.owner
}

#[test]
fn the_child_that_used_a_shared_connection_is_credited_in_any_order_of_records() {
    let t0 = Instant::now();
    let us = Duration::from_micros(1);
    let connect = record(PARENT, 0, t0);
    let first_send = record(CHILD, 0, t0 + 100 * us);
    // The watcher's look at the parent's fds, made after the child's first send.
    let look = record(PARENT, INODE, t0 + 300 * us);
    let orders = [
        vec![connect, first_send, look],
        vec![look, connect, first_send],
        vec![first_send, look, connect],
        vec![connect, look, first_send],
    ];
    for records in orders {
        // Not listed (closed before a dump), listed with both holders, listed after the
        // child exited (the idle parent alone holds it).
        for holders in [&[][..], &[PARENT, CHILD], &[PARENT]] {
            let t = table(holders, records.clone());
            assert_eq!(credited(&t), Some(CHILD), "{holders:?} {records:?}");
        }
    }
}

#[test]
fn without_a_claim_of_the_holder_an_earlier_claim_never_takes_the_connection() {
    let t0 = Instant::now();
    let ms = Duration::from_millis(1);
    // An earlier holder of the 4-tuple claimed it; the current holder was seen holding it
    // (fds, dump) but its own claim is not in yet.
    let earlier = record(EARLIER, 0, t0);
    let held = record(PARENT, INODE, t0 + 20 * ms);
    assert_eq!(credited(&table(&[PARENT], vec![earlier])), Some(PARENT));
    assert_eq!(credited(&table(&[], vec![earlier, held])), Some(PARENT));
    assert_eq!(credited(&table(&[], vec![held, earlier])), Some(PARENT));
    // Once the holder's own claim is in, it is the latest claim: still the holder.
    let claim = record(PARENT, 0, t0 + 10 * ms);
    let t = table(&[PARENT], vec![claim, earlier, held]);
    assert_eq!(credited(&t), Some(PARENT));
}

/// The other way round: the parent goes on using the connection, a child that inherited it
/// idles. The fds name both (the child is the newest holder); only the parent claimed the
/// connection — and it holds this very socket: the parent is credited.
#[test]
fn a_holder_that_used_the_connection_wins_over_a_newer_idle_one() {
    let t0 = Instant::now();
    let connect = record(PARENT, 0, t0);
    let t = table(&[PARENT, CHILD], vec![connect]);
    assert_eq!(credited(&t), Some(PARENT));
    // Without a claim of anyone, the documented rule: the newest holder.
    assert_eq!(credited(&table(&[PARENT, CHILD], vec![])), Some(CHILD));
    // A claimant that does not hold the socket (an earlier connection's) changes nothing.
    let earlier = record(EARLIER, 0, t0);
    assert_eq!(
        credited(&table(&[PARENT, CHILD], vec![earlier])),
        Some(CHILD)
    );
}

/// A parent that forks a child every few milliseconds while it writes on a connection
/// (each child holds the inherited socket while it lives, `sleep` in a shell loop): the
/// children's fd sightings, far more than the records kept per 4-tuple, never push out
/// the parent's claim, and the parent's own repeated sightings are one record.
#[test]
fn many_idle_children_do_not_push_out_the_claim_of_the_user() {
    let t0 = Instant::now();
    let ms = Duration::from_millis(1);
    let mut records = vec![record(PARENT, 0, t0)];
    let mut last_child = CHILD;
    for i in 1..=20u32 {
        let child = ProcessKey {
            pid: 1000 + i,
            start_time: 10 + u64::from(i),
        };
        records.push(record(child, INODE, t0 + 10 * ms * i));
        records.push(record(PARENT, INODE, t0 + 10 * ms * i));
        last_child = child;
    }
    let t = table(&[PARENT, last_child], records);
    assert_eq!(credited(&t), Some(PARENT));
}

/// The owner a packet of the connection captured at `captured` is credited to (`None`: it
/// waits).
fn owner_at(t: &SocketTable, captured: Captured) -> Option<ProcessKey> {
    let current = &|_| Currency::Current;
    t.lookup_captured(IpProto::Tcp, local(), remote(), current, captured)?
        .owner
}

/// Under CPU load the child's first-send claim reaches the table a tracer round after the
/// parent's connect claim. A packet decided late (it waited for the claims) is decided only
/// once the table holds every claim made up to its capture: never the parent's meanwhile.
#[test]
fn a_late_packet_waits_until_every_claim_up_to_its_capture_is_in() {
    let t0 = Instant::now();
    let ms = Duration::from_millis(1);
    let connect = record(PARENT, 0, t0);
    let first_send = record(CHILD, 0, t0 + 2 * ms);
    let late = Captured::late(t0 + 3 * ms);
    let read_to = |t: SocketTable, at| t.with_claims_read_to(Some(at));

    let parent_only = read_to(table(&[], vec![connect]), t0 + ms);
    assert_eq!(
        owner_at(&parent_only, late),
        None,
        "the child's claim may come"
    );
    let both = read_to(table(&[], vec![connect, first_send]), t0 + 4 * ms);
    assert_eq!(owner_at(&both, late), Some(CHILD));
    // Listed with both holders (an fd scan came first): the same.
    let listed = read_to(table(&[PARENT, CHILD], vec![connect]), t0 + ms);
    assert_eq!(owner_at(&listed, late), None);
    // Read past the capture and no other claim came: the parent used it.
    let alone = read_to(table(&[], vec![connect]), t0 + 4 * ms);
    assert_eq!(owner_at(&alone, late), Some(PARENT));
    // Without claims traced (no horizon), as before.
    assert_eq!(owner_at(&table(&[], vec![connect]), late), Some(PARENT));
    // A connection only seen in its holder's fds (no claim in yet) waits too.
    let looked = read_to(table(&[], vec![record(PARENT, INODE, t0)]), t0 + ms);
    assert_eq!(owner_at(&looked, late), None);

    // Read as it comes, a packet of the young connection waits (outside the answer's
    // life); one read after [`YOUNG_CONNECTION`] is credited, and may be cached.
    let current = &|_| Currency::Current;
    let read = |at| {
        let captured = Captured::at(at);
        let m = parent_only.lookup_captured(IpProto::Tcp, local(), remote(), current, captured);
        m.expect("the parent's claim answers")
    };
    let young = read(t0 + 3 * ms);
    assert!(young.life.excludes(t0 + 3 * ms));
    let settled = read(t0 + YOUNG_CONNECTION);
    assert_eq!(
        (settled.owner, settled.life.is_unbounded()),
        (Some(PARENT), true)
    );
    // Without claims traced, nothing waits.
    let untraced = table(&[], vec![connect]);
    let m = untraced.lookup_captured(
        IpProto::Tcp,
        local(),
        remote(),
        current,
        Captured::at(t0 + ms),
    );
    assert!(m.unwrap().life.is_unbounded());
}

/// A packet read as it comes, shortly after the process it would be credited to forked,
/// waits (the child may be the user, and claim it a round later); before the fork and
/// after [`FORK_WINDOW`] the holder answers, for that capture time only, so that no cache
/// of verdicts per flow credits the window's packets with it.
#[test]
fn a_packet_read_just_after_its_claimant_forked_waits() {
    let t0 = Instant::now();
    let ms = Duration::from_millis(1);
    let fork = t0 + 5 * ms;
    let forks = |pid: u32| Arc::new(Forks::from_iter([(pid, fork)]));
    let t = table(&[], vec![record(PARENT, 0, t0)]).with_forks(forks(PARENT.pid));
    let read = |t: &SocketTable, at| {
        t.lookup_captured(
            IpProto::Tcp,
            local(),
            remote(),
            &|_| Currency::Current,
            Captured::at(at),
        )
    };

    let before = read(&t, t0 + ms).expect("the parent's, before its fork");
    assert_eq!(before.owner, Some(PARENT));
    assert!(before.life.excludes(fork + ms), "and for no packet after");
    for at in [fork, fork + ms, fork + FORK_WINDOW - ms] {
        let m = read(&t, at).expect("the parent's claim…");
        assert!(m.life.excludes(at), "…but not for this packet: it waits");
    }
    let after = read(&t, fork + FORK_WINDOW).expect("the parent's again");
    assert_eq!(after.owner, Some(PARENT));
    assert!(after.life.excludes(fork + ms));

    // Another process's fork changes nothing.
    let other = table(&[], vec![record(PARENT, 0, t0)]).with_forks(forks(EARLIER.pid));
    let m = read(&other, fork + ms).unwrap();
    assert_eq!((m.owner, m.life.is_unbounded()), (Some(PARENT), true));
    // A holder seen in the fd tables (the watcher's look, before any claim came) or
    // listed with the live socket waits the same.
    for t in [
        table(&[], vec![record(PARENT, INODE, t0)]),
        table(&[PARENT], vec![]),
    ] {
        let t = t.with_forks(forks(PARENT.pid));
        let m = read(&t, fork + ms).expect("the parent's…");
        assert!(m.life.excludes(fork + ms), "…but not for this packet");
        // Decided late, it waits for the claims up to its capture too.
        let t = t.with_claims_read_to(Some(fork));
        let current = &|_| Currency::Current;
        let late = Captured::late(fork + ms);
        assert!(t
            .lookup_captured(IpProto::Tcp, local(), remote(), current, late)
            .is_none());
    }
}

/// Through the cache of verdicts: a packet before the fork does not make one in the window
/// the parent's under the same table.
#[test]
fn the_cache_keeps_no_verdict_for_the_packets_of_a_fork_window() {
    let t0 = Instant::now();
    let ms = Duration::from_millis(1);
    let fork = t0 + 5 * ms;
    let t = table(&[], vec![record(PARENT, 0, t0)])
        .with_forks(Arc::new(Forks::from_iter([(PARENT.pid, fork)])));
    let cache = AttributionCache::new(64);
    let flow = FlowKey {
        proto: IpProto::Tcp,
        src: local(),
        dst: remote(),
    };
    let tx = |at| match cache.attribute_at(&t, &flow, true, at).verdict.tx {
        Some(Credit::Process { key, .. }) => Some(key),
        _ => None,
    };
    assert_eq!(tx(t0 + ms), Some(PARENT));
    assert_eq!(tx(fork + ms), None, "waits");
    assert_eq!(tx(fork + FORK_WINDOW + ms), Some(PARENT));
}

/// Through the pending buffer, as the daemon runs it: the child's packet, read before any
/// claim, waits; the table with the parent's claim alone (read short of its capture) does
/// not decide it, and says so (the tracer is asked to report on); the next one, with the
/// child's claim and read past it, credits the child.
#[test]
fn a_waiting_packet_goes_to_the_child_once_the_claims_up_to_it_are_in() {
    let t0 = Instant::now();
    let ms = Duration::from_millis(1);
    let flow = FlowKey {
        proto: IpProto::Tcp,
        src: local(),
        dst: remote(),
    };
    let cache = AttributionCache::new(64);
    let copies = CopyFilter::new();
    let mut pending = Pending::new(100, Duration::from_secs(2));
    let mut tally = Tally::default();
    let captured = t0 + 3 * ms;
    let arrival = Arrival {
        captured,
        now: captured,
        undecided: false,
    };
    let miss = Credit::Unknown(UnknownReason::NoSocket);
    pending.hold(&mut tally, flow, Direction::Tx, miss, 100, arrival, None);

    let connect = record(PARENT, 0, t0);
    let parent_only = table_of(2, &[], vec![connect]).with_claims_read_to(Some(t0 + ms));
    pending.settle(&mut tally, &parent_only, &cache, &copies, t0 + 10 * ms);
    assert_eq!(pending.level().packets, 1, "not the parent's");
    assert!(pending.waits_for_claims());

    let first_send = record(CHILD, 0, t0 + 2 * ms);
    let both = table_of(3, &[], vec![connect, first_send]).with_claims_read_to(Some(t0 + 5 * ms));
    pending.settle(&mut tally, &both, &cache, &copies, t0 + 20 * ms);
    assert_eq!(pending.level().packets, 0);
    assert!(!pending.waits_for_claims());
    let mut ledger = Ledger::new(t0);
    ledger.merge(&mut tally, &both);
    let child = ledger.process(&CHILD).expect("the child is credited");
    assert_eq!((child.usage.total.tx_bytes, child.quality.late), (100, 100));
    assert!(ledger.process(&PARENT).is_none());
}

/// Only an answer that rests on a connection waits for the claims: a packet of a flow no
/// socket is known for waits for a table with its socket, and does not keep the tracer
/// reporting (each report would cost a table and a retry of every waiting packet, under a
/// flood of misses too); a packet of a claimed connection read past the claims does.
#[test]
fn only_a_packet_of_a_known_connection_waits_for_the_claims() {
    let t0 = Instant::now();
    let ms = Duration::from_millis(1);
    let claimed = FlowKey {
        proto: IpProto::Tcp,
        src: local(),
        dst: remote(),
    };
    let unknown = FlowKey {
        proto: IpProto::Tcp,
        src: local(),
        dst: "127.0.0.1:9".parse().unwrap(),
    };
    let t = table_of(2, &[], vec![record(PARENT, 0, t0)]).with_claims_read_to(Some(t0 + ms));
    assert!(t.may_wait_for_claims(&claimed, t0 + 2 * ms));
    let reversed = FlowKey {
        proto: IpProto::Tcp,
        src: remote(),
        dst: local(),
    };
    assert!(t.may_wait_for_claims(&reversed, t0 + 2 * ms), "either end");
    assert!(
        !t.may_wait_for_claims(&claimed, t0),
        "read past its capture"
    );
    assert!(
        !t.may_wait_for_claims(&unknown, t0 + 2 * ms),
        "no connection"
    );

    let cache = AttributionCache::new(64);
    let copies = CopyFilter::new();
    let mut pending = Pending::new(100, Duration::from_secs(2));
    let mut tally = Tally::default();
    let captured = t0 + 2 * ms;
    let arrival = Arrival {
        captured,
        now: captured,
        undecided: false,
    };
    let miss = Credit::Unknown(UnknownReason::NoSocket);
    pending.hold(&mut tally, unknown, Direction::Tx, miss, 100, arrival, None);
    pending.settle(&mut tally, &t, &cache, &copies, t0 + 10 * ms);
    assert_eq!(pending.level().packets, 1, "still a miss");
    assert!(!pending.waits_for_claims());
}
