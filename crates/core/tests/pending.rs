//! Late credit: directions whose owner is unknown wait, bounded in time and count, and are
//! credited once a table knows the owner; conservation holds throughout.
// Tests pick their starting instant from the clock; the code under test never reads it.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{
    attribute, AttributionCache, Credit, Direction, Ledger, NetNsId, OwnerMap, Pending,
    ProcessInfo, ProcessKey, SocketEntry, SocketTable, TableParts, Tally, TcpState,
};
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
    let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
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
                proto: IpProto::Tcp,
                local,
                remote: "127.0.0.1:8080".parse().unwrap(),
                state: TcpState::Established,
                inode: 5,
                uid: 0,
            }],
            owners: Arc::new(owners),
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
                pending.hold(tally, flow(), dir, credit, 100, now);
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
    pending.settle(&mut tally, &before, &cache, t0 + Duration::from_millis(100));
    ledger.merge(&mut tally, &before);
    assert_eq!(
        ledger.totals().captured.tx_bytes,
        0,
        "nothing is decided while waiting"
    );

    let after = knowing(2);
    pending.settle(&mut tally, &after, &cache, t0 + Duration::from_millis(300));
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

    pending.settle(&mut tally, &after, &cache, t0 + Duration::from_secs(3));
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
    pending.drain(&mut tally, &table, &cache);
    ledger.merge(&mut tally, &table);
    let t = ledger.totals();
    assert_eq!((t.credited.tx_bytes, t.unknown.rx_bytes), (200, 200));
    assert_eq!(pending.level().packets, 0);
    pending.drain(&mut tally, &table, &cache);
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
