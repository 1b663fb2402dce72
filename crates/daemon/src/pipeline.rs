//! The packet path: capture → parse → attribute → tally, on its own thread.
//!
//! Invariants: nothing here blocks on anything but libpcap; each packet is attributed with
//! the newest table (one atomic generation check per packet); the ledger mutex is taken once
//! per batch (at most `BATCH` packets or `FLUSH_EVERY` of capture time), never per packet;
//! a direction whose owner is unknown waits in the bounded pending buffer and a refresh is
//! requested without waiting. Malformed frames are counted, never fatal. A live capture whose
//! interface goes away is reopened when it returns (backoff up to [`REOPEN_MAX_WAIT`]); in
//! between, pending packets are still decided, the heartbeat goes on, and queries are served.
//! Reopening needs CAP_NET_RAW and CAP_NET_ADMIN, which is why the daemon keeps them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pidcap_capture::{CaptureError, LiveConfig, Next, Source};
use pidcap_core::{Direction, FragmentMap, Pending, SocketTable, Tally};
use pidcap_wire::{parse, LinkType, PacketMeta, WireError};
use tracing::{debug, info, warn};

use crate::inbox::MissSignal;
use crate::state::Shared;

/// Packets handled between two merges into the ledger.
pub const BATCH: u64 = 4096;
/// Longest time counts wait on the capture thread before they are merged.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How often libpcap's counters are read.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// First wait before trying to reopen a capture whose interface went away; doubled per try.
const REOPEN_FIRST_WAIT: Duration = Duration::from_millis(100);
/// Longest wait between two tries to reopen the capture.
pub const REOPEN_MAX_WAIT: Duration = Duration::from_secs(5);

/// Why the capture loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Asked to stop.
    Stopped,
    /// The replayed file is finished.
    EndOfFile,
}

/// Runs the capture loop until `stop` is set or the file ends.
#[derive(Debug)]
pub struct Pipeline {
    pub source: Source,
    pub shared: Arc<Shared>,
    pub misses: MissSignal,
    pub pending: Pending,
    pub fragments: FragmentMap,
    pub stop: Arc<AtomicBool>,
    /// How to reopen a live capture whose interface went away; `None` for a file.
    pub reopen: Option<LiveConfig>,
}

/// The capture thread's own state: nothing here is shared or locked.
struct Batch {
    tally: Tally,
    pending: Pending,
    fragments: FragmentMap,
    table: Arc<SocketTable>,
    /// Capture timestamp of the first packet since the last merge. Packet timestamps, not
    /// the clock, decide when a trickle of packets is merged: no clock read per packet.
    opened_at: Option<SystemTime>,
    /// Clock time of the last merge: the arrival time of pending entries (to a batch).
    merged_at: Instant,
    stats_at: Instant,
}

impl Batch {
    fn due(&mut self, ts: SystemTime) -> bool {
        if self.tally.len() >= BATCH {
            return true;
        }
        let opened = *self.opened_at.get_or_insert(ts);
        ts.duration_since(opened)
            .map_or(true, |age| age >= FLUSH_EVERY)
    }
}

/// The capture loop's handles, apart from its per-batch state.
struct Capture {
    source: Source,
    shared: Arc<Shared>,
    misses: MissSignal,
    stop: Arc<AtomicBool>,
    reopen: Option<LiveConfig>,
}

impl Pipeline {
    pub fn run(self) -> Result<End, CaptureError> {
        let Pipeline {
            source,
            shared,
            misses,
            pending,
            fragments,
            stop,
            reopen,
        } = self;
        let now = Instant::now();
        let mut batch = Batch {
            tally: Tally::default(),
            pending,
            fragments,
            table: shared.table.load_full(),
            opened_at: None,
            merged_at: now,
            stats_at: now,
        };
        let mut capture = Capture {
            source,
            shared,
            misses,
            stop,
            reopen,
        };
        let link = capture.source.link_type();
        capture.publish_stats();
        let result = capture.capture(link, &mut batch);
        capture.finish(&mut batch);
        result
    }
}

impl Capture {
    fn capture(&mut self, link: LinkType, batch: &mut Batch) -> Result<End, CaptureError> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(End::Stopped);
            }
            let next = match self.source.next() {
                Ok(next) => next,
                Err(error) => {
                    self.reopen_after(error, batch)?;
                    continue;
                }
            };
            match next {
                Next::Packet(frame) => {
                    if self.shared.generation() != batch.table.generation() {
                        // A refresh landed: attribute this packet with the new table.
                        merge(&self.shared, batch);
                    }
                    handle(
                        &self.shared,
                        &self.misses,
                        batch,
                        link,
                        frame.data,
                        frame.orig_len,
                    );
                    if batch.due(frame.ts) {
                        merge(&self.shared, batch);
                        self.maybe_publish_stats(batch);
                    }
                }
                Next::Timeout => {
                    merge(&self.shared, batch);
                    self.maybe_publish_stats(batch);
                }
                Next::End => return Ok(End::EndOfFile),
            }
        }
    }

    /// After a read error: gives the error back for a file; for a live capture, waits for the
    /// interface to return (deciding pending packets and beating the heartbeat meanwhile) and
    /// reopens it, or returns when asked to stop. The link type stays the one configured.
    fn reopen_after(&mut self, error: CaptureError, batch: &mut Batch) -> Result<(), CaptureError> {
        let Some(live) = self.reopen.clone() else {
            return Err(error);
        };
        warn!(interface = %live.interface, error = %error, "capture interface gone; counting pauses until it returns, queries go on");
        self.shared.capture_info().down = true;
        let mut wait = REOPEN_FIRST_WAIT;
        while !self.stop.load(Ordering::Relaxed) {
            self.pause(wait, batch);
            match Source::open_live(&live) {
                Ok(source) => {
                    self.source = source;
                    let mut info = self.shared.capture_info();
                    info.down = false;
                    info.reopens += 1;
                    info!(interface = %live.interface, "capture reopened");
                    return Ok(());
                }
                Err(error) => {
                    debug!(interface = %live.interface, error = %error, "capture not reopened yet");
                    wait = (wait * 2).min(REOPEN_MAX_WAIT);
                }
            }
        }
        Ok(())
    }

    /// Sleeps about `wait` in short steps, merging (which settles pending packets and beats
    /// the heartbeat) and watching for a stop request.
    fn pause(&self, wait: Duration, batch: &mut Batch) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && !self.stop.load(Ordering::Relaxed) {
            merge(&self.shared, batch);
            std::thread::sleep(REOPEN_FIRST_WAIT.min(wait));
        }
    }

    /// Decides everything still pending and merges the last counts.
    fn finish(&mut self, batch: &mut Batch) {
        merge(&self.shared, batch);
        batch
            .pending
            .drain(&mut batch.tally, &batch.table, &self.shared.cache);
        merge(&self.shared, batch);
        self.publish_stats();
    }

    fn maybe_publish_stats(&mut self, batch: &mut Batch) {
        if batch.merged_at.saturating_duration_since(batch.stats_at) >= STATS_EVERY {
            batch.stats_at = batch.merged_at;
            self.publish_stats();
        }
    }

    fn publish_stats(&mut self) {
        if !self.source.is_live() {
            return;
        }
        match self.source.stats() {
            Ok(stats) => {
                let mut info = self.shared.capture_info();
                let new_drops = stats.dropped.saturating_sub(info.stats.dropped)
                    + stats.if_dropped.saturating_sub(info.stats.if_dropped);
                if new_drops > 0 {
                    warn!(
                        dropped = stats.dropped,
                        if_dropped = stats.if_dropped,
                        new = new_drops,
                        "capture dropped packets"
                    );
                }
                info.stats = stats;
            }
            Err(error) => info!(error = %error, "capture statistics unavailable"),
        }
    }
}

/// Merges the batch into the ledger, switches to the newest table, retries the pending
/// buffer against it (crediting late what it resolves) and merges that too.
fn merge(shared: &Shared, batch: &mut Batch) {
    let now = Instant::now();
    shared.count_frames(batch.tally.len());
    if !batch.tally.is_empty() {
        shared.ledger().merge(&mut batch.tally, &batch.table);
    }
    batch.table = shared.table.load_full();
    batch
        .pending
        .settle(&mut batch.tally, &batch.table, &shared.cache, now);
    if !batch.tally.is_empty() {
        shared.ledger().merge(&mut batch.tally, &batch.table);
    }
    shared.set_pending(batch.pending.level());
    shared.set_fragments_forgotten(batch.fragments.forgotten());
    batch.opened_at = None;
    batch.merged_at = now;
    shared.beat(now);
}

/// One frame: parse, attribute (through the cache), count or hold.
fn handle(
    shared: &Shared,
    misses: &MissSignal,
    batch: &mut Batch,
    link: LinkType,
    data: &[u8],
    orig_len: u32,
) {
    match parse(link, data, orig_len) {
        Ok(mut meta) => {
            batch.fragments.resolve(&mut meta);
            attribute(shared, misses, batch, &meta)
        }
        Err(WireError::NotIp(_)) => batch.tally.record_non_ip(),
        Err(_) => batch.tally.record_malformed(),
    }
}

fn attribute(shared: &Shared, misses: &MissSignal, batch: &mut Batch, meta: &PacketMeta) {
    let lookup = shared
        .cache
        .attribute(&batch.table, &meta.flow, meta.ports_known);
    if lookup.new_miss {
        misses.missed(meta.flow);
    }
    let verdict = lookup.verdict;
    batch.tally.note_frame();
    if verdict.tx.is_none() && verdict.rx.is_none() {
        batch.tally.record_foreign(meta.ip_len);
        return;
    }
    for (dir, side) in [(Direction::Tx, verdict.tx), (Direction::Rx, verdict.rx)] {
        if let Some(credit) = side {
            batch.pending.hold(
                &mut batch.tally,
                meta.flow,
                dir,
                credit,
                meta.ip_len,
                batch.merged_at,
            );
        }
    }
}
