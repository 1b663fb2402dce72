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
    ClosedSocket, NetNsId, OwnerMap, ProcessKey, Seen, SocketEntry, SocketTable, TableParts,
    TcpState,
};
use pidcap_wire::IpProto;

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
        1,
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
