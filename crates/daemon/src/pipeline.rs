//! The packet path: capture → parse → attribute → tally, on its own thread.
//!
//! Invariants: nothing here blocks on anything but libpcap; the socket table is loaded once
//! per batch; the ledger mutex is taken once per batch (at most `BATCH` packets or
//! `FLUSH_EVERY` of time); misses only post a non-blocking request to the refresher.
//! Malformed frames are counted, never fatal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pidcap_capture::{CaptureError, Next, Source};
use pidcap_core::{SocketTable, Tally};
use pidcap_wire::{parse, LinkType, WireError};
use tracing::{info, warn};

use crate::refresh::MissSignal;
use crate::state::Shared;

/// Packets handled between two merges into the ledger.
pub const BATCH: u64 = 4096;
/// Longest time counts wait on the capture thread before they are merged.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How often libpcap's counters are read.
const STATS_EVERY: Duration = Duration::from_secs(1);

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
    pub stop: Arc<AtomicBool>,
}

struct Batch {
    tally: Tally,
    table: Arc<SocketTable>,
    /// Capture timestamp of the first packet since the last merge. Packet timestamps, not
    /// the clock, decide when a trickle of packets is merged: no clock read per packet.
    opened_at: Option<SystemTime>,
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

impl Pipeline {
    pub fn run(mut self) -> Result<End, CaptureError> {
        let link = self.source.link_type();
        self.publish_stats();
        let mut batch = Batch {
            tally: Tally::default(),
            table: self.shared.table.load_full(),
            opened_at: None,
            stats_at: Instant::now(),
        };
        let end = loop {
            if self.stop.load(Ordering::Relaxed) {
                break End::Stopped;
            }
            match self.source.next() {
                Ok(Next::Packet(frame)) => {
                    if self.shared.generation() != batch.table.generation() {
                        // A refresh landed: attribute this packet with the new table.
                        merge(&self.shared, &mut batch);
                    }
                    handle(
                        &self.shared,
                        &self.misses,
                        &mut batch,
                        link,
                        frame.data,
                        frame.orig_len,
                    );
                    if batch.due(frame.ts) {
                        self.flush(&mut batch);
                    }
                    continue;
                }
                Ok(Next::Timeout) => self.flush(&mut batch),
                Ok(Next::End) => break End::EndOfFile,
                Err(e) => {
                    self.flush(&mut batch);
                    return Err(e);
                }
            }
        };
        self.flush(&mut batch);
        self.publish_stats();
        Ok(end)
    }

    /// Merges the batch and, at most once per `STATS_EVERY`, reads libpcap's counters.
    fn flush(&mut self, batch: &mut Batch) {
        let now = merge(&self.shared, batch);
        if now.saturating_duration_since(batch.stats_at) >= STATS_EVERY {
            batch.stats_at = now;
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

/// Merges the batch into the ledger and picks up the newest table. Returns the time.
fn merge(shared: &Shared, batch: &mut Batch) -> Instant {
    let now = Instant::now();
    if !batch.tally.is_empty() {
        shared.ledger().merge(&mut batch.tally, &batch.table);
    }
    batch.table = shared.table.load_full();
    batch.opened_at = None;
    shared.beat(now);
    now
}

/// One frame: parse, attribute (through the cache), count.
fn handle(
    shared: &Shared,
    misses: &MissSignal,
    batch: &mut Batch,
    link: LinkType,
    data: &[u8],
    orig_len: u32,
) {
    match parse(link, data, orig_len) {
        Ok(meta) => {
            let lookup = shared
                .cache
                .attribute(&batch.table, &meta.flow, meta.ports_known);
            if lookup.new_miss {
                misses.request();
            }
            batch.tally.record(&lookup.verdict, meta.ip_len);
        }
        Err(WireError::NotIp(_)) => batch.tally.record_non_ip(),
        Err(_) => batch.tally.record_malformed(),
    }
}
