//! Captures inside other network namespaces (`namespaces = all`): each namespace's own
//! loopback, the one interface whose traffic no capture of the host sees (everything else a
//! container sends or receives crosses a host interface: its veth peer, a bridge, the
//! uplink). One thread waits on every namespace's capture at once.
//!
//! Invariants:
//! - A namespace's capture is opened from inside it (`setns(2)` on this thread, then back;
//!   needs CAP_SYS_ADMIN) through one of the processes the refresher last found in it, and
//!   only while the refresher lists it: it is closed when the namespace empties, and one
//!   that failed to open is tried again after [`RETRY_OPEN`].
//! - Both ends of a packet captured there are that namespace's and are looked up among its
//!   sockets only ([`attribute_in`]): each is credited once, `tx` to its sender and `rx` to
//!   its receiver, like the host's loopback. A miss waits in this thread's own pending
//!   buffer and asks the refresher to read that namespace again (once per table).
//! - Nothing here blocks on anything but `poll(2)` over the captures (at most
//!   [`WAIT_MS`]), so the heartbeat goes round at least that often; counts are merged into
//!   the ledger at most every [`MERGE_EVERY`].
//! - Each capture's kernel ring is [`RING_BYTES`] at most (a container's loopback; one ring
//!   per namespace), never the host capture's size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_capture::{CaptureError, LiveConfig, Next, Source};
use pidcap_core::{
    attribute_in, AttributionCache, CopyFilter, Direction, NetNsId, Pending, SocketTable, Tally,
};
use pidcap_sockets::ProcRoot;
use pidcap_wire::{parse, LinkType, WireError};
use tracing::{debug, info, warn};

use crate::inbox::MissSignal;
use crate::pipeline::{merge_and_settle, Settle};
use crate::state::{DaemonState, GuestList, NamespaceCaptureInfo, Worker};

/// Longest single wait for a frame (how quickly `stop` is noticed; the heartbeat's period).
const WAIT_MS: i32 = 100;
/// Longest time counts wait on this thread before they are merged into the ledger.
const MERGE_EVERY: Duration = Duration::from_millis(50);
/// Frames read from one capture before the others get their turn.
const FRAMES_PER_TURN: usize = 1024;
/// How long a namespace whose capture failed to open waits before it is tried again.
pub const RETRY_OPEN: Duration = Duration::from_secs(5);
/// The kernel ring of one namespace's capture: about 7,000 snapped frames.
pub const RING_BYTES: i32 = 2 << 20;

/// The thread's settings and handles.
#[derive(Debug)]
pub struct NamespaceCapture {
    pub proc: ProcRoot,
    /// The host capture's settings; the interface and ring size are replaced.
    pub live: LiveConfig,
    pub shared: Arc<DaemonState>,
    pub misses: MissSignal,
    pub stop: Arc<AtomicBool>,
    pub pending: Pending,
}

/// One namespace's open capture.
struct Opened {
    netns: NetNsId,
    source: Source,
    /// Its libpcap counters at the last read.
    received: u64,
    dropped: u64,
}

/// The thread's counts between two merges, and what it needs to attribute.
struct Batch {
    tally: Tally,
    pending: Pending,
    table: Arc<SocketTable>,
    merged_at: Instant,
    /// The table generation each namespace last asked the refresher under.
    asked: HashMap<NetNsId, u64>,
    /// The pending buffer's arguments for packets held without a namespace; none are here
    /// (every entry is held with its namespace and retried with [`attribute_in`]).
    no_cache: AttributionCache,
    no_copies: CopyFilter,
}

impl NamespaceCapture {
    pub fn run(self) {
        let NamespaceCapture {
            proc,
            live,
            shared,
            misses,
            stop,
            pending,
        } = self;
        let live = LiveConfig {
            interface: "lo".into(),
            buffer_size: live.buffer_size.min(RING_BYTES),
            ..live
        };
        let mut set = CaptureSet {
            proc,
            live,
            open: Vec::new(),
            failed: HashMap::new(),
            synced: Arc::default(),
            info: NamespaceCaptureInfo::default(),
            retired: (0, 0),
        };
        let mut batch = Batch {
            tally: Tally::default(),
            pending,
            table: shared.table(),
            merged_at: Instant::now(),
            asked: HashMap::new(),
            no_cache: AttributionCache::new(1),
            no_copies: CopyFilter::new(),
        };
        info!(
            ring_bytes = set.live.buffer_size,
            "capturing inside every other network namespace (their own loopback)"
        );
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            shared.beat_worker(Worker::Namespaces, now);
            set.sync(&shared.guests(), now);
            set.read(&misses, &mut batch);
            if now.saturating_duration_since(batch.merged_at) >= MERGE_EVERY {
                merge(&shared, &mut batch, now);
                set.publish(&shared);
            }
        }
        let now = Instant::now();
        merge(&shared, &mut batch, now);
        batch.pending.drain(
            &mut batch.tally,
            &batch.table,
            &batch.no_cache,
            &batch.no_copies,
        );
        merge(&shared, &mut batch, now);
    }
}

/// The open captures and the namespaces they follow.
struct CaptureSet {
    proc: ProcRoot,
    live: LiveConfig,
    open: Vec<Opened>,
    /// Namespaces whose capture failed to open, and when.
    failed: HashMap<NetNsId, Instant>,
    /// The refresher's list the set was last matched with.
    synced: GuestList,
    info: NamespaceCaptureInfo,
    /// Received and dropped counts of captures already closed.
    retired: (u64, u64),
}

impl CaptureSet {
    /// Opens a capture in each listed namespace that has none, and closes those of
    /// namespaces no longer listed; failed ones are retried after [`RETRY_OPEN`].
    fn sync(&mut self, guests: &GuestList, now: Instant) {
        let retry_due = self
            .failed
            .values()
            .any(|&at| now.saturating_duration_since(at) >= RETRY_OPEN);
        if Arc::ptr_eq(guests, &self.synced) && !retry_due {
            return;
        }
        self.synced = Arc::clone(guests);
        let listed = |netns: NetNsId| guests.iter().any(|(n, _)| *n == netns);
        let before = self.open.len();
        self.open.retain(|o| listed(o.netns));
        let gone = (before - self.open.len()) as u64;
        if gone > 0 {
            debug!(
                closed = gone,
                "namespace captures closed: their namespaces emptied"
            );
        }
        self.info.closed += gone;
        self.failed.retain(|&netns, _| listed(netns));
        for (netns, pids) in guests.iter() {
            let open = self.open.iter().any(|o| o.netns == *netns);
            let waiting = self
                .failed
                .get(netns)
                .is_some_and(|&at| now.saturating_duration_since(at) < RETRY_OPEN);
            if !open && !waiting {
                self.open_in(*netns, pids, now);
            }
        }
    }

    /// Opens the loopback capture of `netns` through the first of `pids` still in it.
    fn open_in(&mut self, netns: NetNsId, pids: &[u32], now: Instant) {
        let mut last_error = None;
        for &pid in pids {
            match open_inside(&self.proc, pid, netns, &self.live) {
                Ok(source) => {
                    debug!(netns = netns.0, pid, "namespace capture opened");
                    self.failed.remove(&netns);
                    self.info.opened += 1;
                    self.open.push(Opened {
                        netns,
                        source,
                        received: 0,
                        dropped: 0,
                    });
                    return;
                }
                Err(error) => last_error = Some(error),
            }
        }
        self.info.open_failures += 1;
        self.failed.insert(netns, now);
        if let Some(error) = last_error {
            debug!(netns = netns.0, error = %error, "namespace capture not opened; trying again later");
        }
    }

    /// Waits for a frame on any capture, then reads what each has (a bounded turn each);
    /// a capture whose read fails is closed (its namespace is gone).
    fn read(&mut self, misses: &MissSignal, batch: &mut Batch) {
        if self.open.is_empty() {
            std::thread::sleep(Duration::from_millis(WAIT_MS as u64));
            return;
        }
        let sources: Vec<&Source> = self.open.iter().map(|o| &o.source).collect();
        match pidcap_capture::wait_any(&sources, WAIT_MS) {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                warn!(error = %error, "waiting on the namespace captures failed");
                std::thread::sleep(Duration::from_millis(WAIT_MS as u64));
                return;
            }
        }
        let mut failed = Vec::new();
        for (at, opened) in self.open.iter_mut().enumerate() {
            if let Err(error) = drain(opened, misses, batch) {
                debug!(netns = opened.netns.0, error = %error, "namespace capture ended");
                failed.push(at);
            }
        }
        for at in failed.into_iter().rev() {
            let closed = self.open.swap_remove(at);
            self.retire(&closed);
        }
    }

    fn retire(&mut self, closed: &Opened) {
        self.info.closed += 1;
        self.retired.0 += closed.received;
        self.retired.1 += closed.dropped;
    }

    /// Reads every capture's kernel counters and publishes the set's report.
    fn publish(&mut self, shared: &DaemonState) {
        let (mut received, mut dropped) = self.retired;
        for opened in &mut self.open {
            if let Ok(stats) = opened.source.stats() {
                opened.received = stats.received;
                opened.dropped = stats.dropped + stats.if_dropped;
            }
            received += opened.received;
            dropped += opened.dropped;
        }
        self.info.open = self.open.len() as u64;
        self.info.received = received;
        self.info.dropped = dropped;
        *shared.namespace_capture() = self.info;
    }
}

/// Opens a capture on `live.interface` from inside `netns`, entered through `pid`.
fn open_inside(
    proc: &ProcRoot,
    pid: u32,
    netns: NetNsId,
    live: &LiveConfig,
) -> anyhow::Result<Source> {
    let inside = proc.enter_netns(pid, netns)?;
    let opened = Source::open_live(live);
    inside.leave()?;
    Ok(opened?)
}

/// Reads the frames `opened` has now (at most [`FRAMES_PER_TURN`]).
fn drain(opened: &mut Opened, misses: &MissSignal, batch: &mut Batch) -> Result<(), CaptureError> {
    let link = opened.source.link_type();
    for _ in 0..FRAMES_PER_TURN {
        match opened.source.next_ready()? {
            Next::Packet(frame) => handle(
                opened.netns,
                link,
                frame.data,
                frame.orig_len,
                misses,
                batch,
            ),
            Next::Timeout | Next::End => break,
        }
    }
    Ok(())
}

/// One frame captured inside `netns`: both ends are credited there, or wait.
fn handle(
    netns: NetNsId,
    link: LinkType,
    data: &[u8],
    orig_len: u32,
    misses: &MissSignal,
    batch: &mut Batch,
) {
    let meta = match parse(link, data, orig_len) {
        Ok(meta) => meta,
        Err(WireError::NotIp(_)) => return batch.tally.record_non_ip(),
        Err(_) => return batch.tally.record_malformed(),
    };
    batch.tally.note_frame();
    let verdict = attribute_in(&batch.table, netns, &meta.flow, meta.ports_known);
    if verdict.has_miss() {
        let generation = batch.table.generation();
        if batch.asked.insert(netns, generation) != Some(generation) {
            misses.missed_in(netns);
        }
    }
    for (dir, side) in [(Direction::Tx, verdict.tx), (Direction::Rx, verdict.rx)] {
        if let Some(credit) = side {
            batch.pending.hold_in(
                &mut batch.tally,
                netns,
                meta.flow,
                dir,
                credit,
                meta.ip_len,
                batch.merged_at,
            );
        }
    }
}

/// Merges the counts into the ledger, switches to the newest table and retries what waits.
fn merge(shared: &DaemonState, batch: &mut Batch, now: Instant) {
    let settle = Settle {
        cache: &batch.no_cache,
        copies: &batch.no_copies,
        now,
    };
    merge_and_settle(
        shared,
        &mut batch.tally,
        &mut batch.table,
        &mut batch.pending,
        settle,
    );
    batch.merged_at = now;
}
