//! Frames sent through packet sockets: a sent packet that no socket owns is credited, late,
//! to the one process that sent a frame of its length through a packet socket when it was
//! captured — never to a process whose send merely resembles it, never on the receiving side.
// Tests pick their starting instant from the clock; the code under test never reads it.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{
    attribute, Arrival, AttributionCache, CopyFilter, Direction, Ledger, NetNsId, OwnerMap,
    PacketSend, Pending, ProcessInfo, ProcessKey, SocketTable, TableAssembly, Tally, SEND_WINDOW,
};
use pidcap_wire::{FlowKey, IpProto};

const NS: NetNsId = NetNsId(4026531840);
/// IPv4 + UDP + 300 bytes.
const IP_LEN: u32 = 328;
/// The same as a whole Ethernet frame (`SOCK_RAW`).
const FRAME_LEN: u32 = IP_LEN + 14;

fn key(pid: u32) -> ProcessKey {
    ProcessKey {
        pid,
        start_time: 77,
    }
}

fn info(pid: u32, comm: &str) -> ProcessInfo {
    ProcessInfo {
        key: key(pid),
        comm: comm.into(),
        exe: None,
        uid: 0,
        cmdline: vec![],
        placement: Default::default(),
    }
}

fn injected() -> FlowKey {
    FlowKey {
        proto: IpProto::Udp,
        src: "127.0.0.5:4000".parse().unwrap(),
        dst: "127.0.0.6:4001".parse().unwrap(),
    }
}

fn send(pid: u32, at: Instant, len: u32) -> PacketSend {
    PacketSend {
        at,
        len,
        sender: Some(key(pid)),
        netns: NS,
    }
}

/// Holds both directions of one packet of `injected()` captured at `at`, as the pipeline does.
fn capture(pending: &mut Pending, tally: &mut Tally, table: &SocketTable, at: Instant) {
    let v = attribute(table, &injected(), true);
    for (dir, side) in [(Direction::Tx, v.tx), (Direction::Rx, v.rx)] {
        let credit = side.expect("loopback ends are local");
        assert!(credit.is_miss(), "no socket has these addresses");
        let arrival = Arrival {
            captured: at,
            now: at,
            undecided: false,
        };
        pending.hold(tally, injected(), dir, credit, IP_LEN, arrival, None);
    }
}

struct Run {
    assembly: TableAssembly,
    pending: Pending,
    tally: Tally,
    ledger: Ledger,
    cache: AttributionCache,
    copies: CopyFilter,
    generation: u64,
}

impl Run {
    fn new(t0: Instant) -> Run {
        Run {
            assembly: TableAssembly::new(),
            pending: Pending::new(1000, Duration::from_secs(2)),
            tally: Tally::default(),
            ledger: Ledger::new(t0),
            cache: AttributionCache::new(64),
            copies: CopyFilter::new(),
            generation: 0,
        }
    }

    fn table(&mut self) -> SocketTable {
        self.generation += 1;
        self.assembly
            .table(Arc::new(OwnerMap::default()), NS, self.generation)
    }

    fn settle(&mut self, now: Instant) {
        let table = self.table();
        let r = self;
        r.pending
            .settle(&mut r.tally, &table, &r.cache, &r.copies, now);
        r.ledger.merge(&mut r.tally, &table);
    }
}

#[test]
fn a_frame_no_socket_owns_goes_to_its_packet_sender_once_the_send_is_known() {
    let t0 = Instant::now();
    let mut run = Run::new(t0);
    let before = run.table();
    for i in 0..3 {
        capture(
            &mut run.pending,
            &mut run.tally,
            &before,
            t0 + Duration::from_millis(i),
        );
    }
    run.settle(t0 + Duration::from_millis(5));
    assert_eq!(run.pending.level().packets, 6, "nobody is known yet");

    let sends: Vec<_> = (0..3)
        .map(|i| {
            send(
                10,
                t0 + Duration::from_millis(i) + Duration::from_micros(30),
                FRAME_LEN,
            )
        })
        .collect();
    // Not before every send up to the end of the last frame's window is known: another
    // process's fitting send may still be on its way.
    let all_read = t0 + Duration::from_millis(2) + SEND_WINDOW;
    let early = all_read - Duration::from_millis(1);
    let t = t0 + Duration::from_millis(10);
    run.assembly
        .packet_sent(&sends, vec![info(10, "injector")], early, t);
    run.settle(t0 + Duration::from_millis(20));
    let p = run
        .ledger
        .process(&key(10))
        .expect("the first two frames are decided");
    assert_eq!(p.usage.total.tx_bytes, u64::from(2 * IP_LEN));
    run.assembly.packet_sent(&[], vec![], all_read, t);
    run.settle(t0 + Duration::from_millis(30));

    let p = run
        .ledger
        .process(&key(10))
        .expect("the sender is credited");
    assert_eq!(p.usage.total.tx_bytes, u64::from(3 * IP_LEN));
    assert_eq!(p.usage.total.rx_bytes, 0, "a sender receives nothing");
    assert_eq!(p.quality.packet_sender, u64::from(3 * IP_LEN));
    assert_eq!(p.quality.late, 0);
    assert_eq!(p.meta.comm, "injector");
    assert_eq!(
        run.pending.level().packets,
        3,
        "the receiving end still waits"
    );
    run.settle(t0 + Duration::from_secs(3));
    let totals = run.ledger.totals();
    assert_eq!(
        totals.unknown_by_reason.pending_expired,
        u64::from(3 * IP_LEN)
    );
    assert_eq!(
        totals.credited_by_quality.packet_sender,
        u64::from(3 * IP_LEN)
    );
}

#[test]
fn a_fitting_send_of_a_process_nobody_named_leaves_the_frame_unknown() {
    let t0 = Instant::now();
    let mut run = Run::new(t0);
    let before = run.table();
    capture(&mut run.pending, &mut run.tally, &before, t0);
    let unnamed = PacketSend {
        sender: None,
        ..send(0, t0, FRAME_LEN)
    };
    let named = send(10, t0, FRAME_LEN);
    let read = t0 + SEND_WINDOW;
    run.assembly
        .packet_sent(&[named, unnamed], vec![info(10, "named")], read, t0);
    run.settle(t0 + Duration::from_millis(10));
    run.settle(t0 + Duration::from_secs(3));
    assert!(run.ledger.process(&key(10)).is_none());
    assert_eq!(run.ledger.totals().credited_by_quality.packet_sender, 0);
}

#[test]
fn two_processes_sending_that_length_at_that_time_leave_the_frame_unknown() {
    let t0 = Instant::now();
    let mut run = Run::new(t0);
    let before = run.table();
    capture(&mut run.pending, &mut run.tally, &before, t0);
    let read = t0 + SEND_WINDOW * 2;
    let one = send(10, t0, FRAME_LEN);
    run.assembly
        .packet_sent(&[one], vec![info(10, "one")], t0, t0);
    let two = send(11, t0 + Duration::from_millis(1), IP_LEN);
    run.assembly
        .packet_sent(&[two], vec![info(11, "two")], read, t0);
    run.settle(t0 + Duration::from_millis(10));
    run.settle(t0 + Duration::from_secs(3));
    assert!(run.ledger.process(&key(10)).is_none());
    assert!(run.ledger.process(&key(11)).is_none());
    let totals = run.ledger.totals();
    assert_eq!(totals.credited_by_quality.packet_sender, 0);
    assert_eq!(
        totals.unknown_by_reason.pending_expired,
        u64::from(2 * IP_LEN)
    );
}

#[test]
fn a_send_of_another_length_or_outside_the_window_is_not_the_frame() {
    let t0 = Instant::now();
    let mut run = Run::new(t0);
    let before = run.table();
    capture(&mut run.pending, &mut run.tally, &before, t0);
    let late = t0 + SEND_WINDOW + Duration::from_millis(1);
    let sends = [send(10, t0, FRAME_LEN + 1), send(10, late, FRAME_LEN)];
    let read = late + SEND_WINDOW;
    run.assembly
        .packet_sent(&sends, vec![info(10, "other")], read, t0);
    run.settle(t0 + Duration::from_millis(10));
    run.settle(t0 + Duration::from_secs(3));
    assert!(run.ledger.process(&key(10)).is_none());
    assert_eq!(
        run.ledger.totals().unknown_by_reason.pending_expired,
        u64::from(2 * IP_LEN)
    );
}
