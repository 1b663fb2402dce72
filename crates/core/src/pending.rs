//! The pending buffer: directions of packets whose owner was not known when they were
//! captured wait here for a refresh, and are credited late instead of going to `unknown`.
//!
//! Invariants: bounded in packets (`capacity`) and in time (`max_age`); when full, the
//! oldest entry is decided as `unknown` (reason `PendingExpired`) to make room, so memory
//! never grows past `capacity` entries (fixed-size ring, allocated once). Every entry is
//! decided exactly once — credited when a table resolves it, or `unknown` when its time runs
//! out — so conservation holds and nothing is counted twice. Time is a parameter.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pidcap_wire::FlowKey;

use crate::attribute::{Credit, UnknownReason};
use crate::cache::AttributionCache;
use crate::counters::{Direction, Tally};
use crate::table::SocketTable;

#[derive(Debug, Clone, Copy)]
struct Waiting {
    flow: FlowKey,
    dir: Direction,
    len: u32,
    since: Instant,
}

/// What is waiting, for `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingLevel {
    pub packets: u64,
    pub bytes: u64,
    /// Directions decided early (to `unknown`, or credited if resolved) because the buffer
    /// was full, since start.
    pub evicted: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Pending {
    queue: VecDeque<Waiting>,
    capacity: usize,
    max_age: Duration,
    bytes: u64,
    /// Generation of the table the queue was last retried against.
    tried: u64,
    /// See [`PendingLevel::evicted`].
    evicted: u64,
}

impl Pending {
    /// A buffer of at most `capacity` directions, each kept at most `max_age`. A capacity of
    /// 0 disables it: every miss goes to `unknown` at once.
    pub fn new(capacity: usize, max_age: Duration) -> Pending {
        Pending {
            queue: VecDeque::with_capacity(capacity),
            capacity,
            max_age,
            bytes: 0,
            tried: 0,
            evicted: 0,
        }
    }

    pub fn level(&self) -> PendingLevel {
        PendingLevel {
            packets: self.queue.len() as u64,
            bytes: self.bytes,
            evicted: self.evicted,
        }
    }

    /// Holds one direction of a packet whose owner is unknown (`credit` must be a miss);
    /// anything else is recorded at once.
    pub fn hold(
        &mut self,
        tally: &mut Tally,
        flow: FlowKey,
        dir: Direction,
        credit: Credit,
        len: u32,
        now: Instant,
    ) {
        if !credit.is_miss() || self.capacity == 0 {
            tally.record_side(dir, credit, false, len);
            return;
        }
        if self.queue.len() == self.capacity {
            if let Some(oldest) = self.queue.pop_front() {
                self.expire_one(tally, oldest);
                self.evicted += 1;
            }
        }
        self.bytes += u64::from(len);
        self.queue.push_back(Waiting {
            flow,
            dir,
            len,
            since: now,
        });
    }

    /// Retries every waiting direction against `table` (once per table generation), crediting
    /// what resolves as late, then expires what waited longer than `max_age`.
    pub fn settle(
        &mut self,
        tally: &mut Tally,
        table: &SocketTable,
        cache: &AttributionCache,
        now: Instant,
    ) {
        if !self.queue.is_empty() && self.tried != table.generation() {
            self.tried = table.generation();
            self.retry(tally, table, cache);
        }
        while let Some(front) = self.queue.front() {
            if now.saturating_duration_since(front.since) < self.max_age {
                break;
            }
            if let Some(oldest) = self.queue.pop_front() {
                self.expire_one(tally, oldest);
            }
        }
    }

    /// Decides everything now: resolved entries are credited, the rest go to `unknown`
    /// (used at shutdown and at the end of a replayed file).
    pub fn drain(&mut self, tally: &mut Tally, table: &SocketTable, cache: &AttributionCache) {
        self.retry(tally, table, cache);
        while let Some(w) = self.queue.pop_front() {
            self.expire_one(tally, w);
        }
    }

    fn retry(&mut self, tally: &mut Tally, table: &SocketTable, cache: &AttributionCache) {
        let bytes = &mut self.bytes;
        self.queue.retain(|w| {
            let verdict = cache.attribute(table, &w.flow, true).verdict;
            let side = match w.dir {
                Direction::Tx => verdict.tx,
                Direction::Rx => verdict.rx,
            };
            match side {
                Some(credit @ Credit::Process { .. }) => {
                    tally.record_side(w.dir, credit, true, w.len);
                    *bytes -= u64::from(w.len);
                    false
                }
                _ => true,
            }
        });
    }

    fn expire_one(&mut self, tally: &mut Tally, w: Waiting) {
        self.bytes -= u64::from(w.len);
        tally.record_side(
            w.dir,
            Credit::Unknown(UnknownReason::PendingExpired),
            false,
            w.len,
        );
    }
}
