//! The pending buffer: directions of packets whose owner was not known when they were
//! captured wait here for a refresh, and are credited late instead of going to `unknown`.
//!
//! Invariants: bounded in packets (`capacity`) and in time (`max_age`); when full, the
//! oldest entry is decided as `unknown` (reason `PendingExpired`) to make room, so memory
//! never grows past `capacity` entries (fixed-size ring, allocated once). Every entry is
//! decided exactly once — credited when a table resolves it, or `unknown` when its time runs
//! out — so conservation holds and nothing is counted twice. Time is a parameter.
//!
//! A packet that may be a copy of one captured on another interface in another form (an
//! address-translated copy whose translation is not known yet: [`CopyMark`]) waits whole:
//! each of its local directions, credited or not, waits until the table resolves every end
//! of it. Then, if the table knows its translation and a copy of it in another form was
//! counted meanwhile, it is `transit` (once per packet); otherwise each direction is
//! credited. When its time runs out, a direction already credited at capture keeps that
//! credit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pidcap_wire::FlowKey;

use crate::attribute::{attribute_in, Credit, UnknownReason, Verdict};
use crate::cache::AttributionCache;
use crate::copies::{CopyFilter, CopyMark};
use crate::counters::{Direction, Tally};
use crate::table::{MatchKind, SocketTable};
use crate::NetNsId;

#[derive(Debug, Clone, Copy)]
struct Waiting {
    flow: FlowKey,
    dir: Direction,
    /// The credit at capture: a miss, or (for a packet waiting whole) a process.
    credit: Credit,
    len: u32,
    since: Instant,
    /// When the packet was captured (on the clock `since` is on): decides which of its
    /// 4-tuple's connections it belongs to ([`AttributionCache::attribute_late`]).
    captured: Instant,
    /// Its last lookup met an undecided record: it is retried as the horizon moves, not
    /// only when the table changes.
    undecided: bool,
    /// Set for a packet that waits whole (see the module docs).
    mark: Option<CopyMark>,
    /// Set for a packet captured inside this namespace (a container's own loopback): it is
    /// retried with [`attribute_in`], among that namespace's sockets only.
    netns: Option<NetNsId>,
}

/// How a packet direction arrives in the buffer: when it was captured and when it arrives
/// (one clock), and whether its lookup met an undecided record
/// ([`crate::Currency::Undecided`]).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub captured: Instant,
    pub now: Instant,
    pub undecided: bool,
}

impl Arrival {
    /// Captured and arriving at `now`, decided.
    pub fn at(now: Instant) -> Arrival {
        Arrival {
            captured: now,
            now,
            undecided: false,
        }
    }
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
    /// Capture time of the latest packet read ([`Pending::read_up_to`]): openings up to it
    /// are known when entries are retried.
    horizon: Option<Instant>,
    /// The horizon at the last retry.
    retried_at_horizon: Option<Instant>,
    /// Entries that, at their last retry, may have waited for the claims made up to their
    /// capture ([`Pending::waits_for_claims`]).
    for_claims: usize,
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
            horizon: None,
            retried_at_horizon: None,
            for_claims: 0,
        }
    }

    /// Every packet captured up to `at` has been read (and its opening noted): entries are
    /// retried knowing that. Without it, a retry takes its own time as the horizon.
    pub fn read_up_to(&mut self, at: Instant) {
        self.horizon = Some(self.horizon.map_or(at, |h| h.max(at)));
    }

    /// True when, at the last retry, some entries may have waited for the claims made up to
    /// their capture to reach a table ([`SocketTable::may_wait_for_claims`]): the socket
    /// tracer is to report how far it read meanwhile.
    pub fn waits_for_claims(&self) -> bool {
        self.for_claims > 0
    }

    pub fn level(&self) -> PendingLevel {
        PendingLevel {
            packets: self.queue.len() as u64,
            bytes: self.bytes,
            evicted: self.evicted,
        }
    }

    /// Holds one direction of a packet whose owner is unknown; anything else is recorded at
    /// once — except with a `mark`: then the direction waits whatever its credit (the caller
    /// holds every local direction of a packet that may be a translated copy and has a miss).
    /// `arrival` says when the packet was captured and arrives here, and whether its lookup
    /// met an undecided record.
    #[allow(clippy::too_many_arguments)]
    pub fn hold(
        &mut self,
        tally: &mut Tally,
        flow: FlowKey,
        dir: Direction,
        credit: Credit,
        len: u32,
        arrival: Arrival,
        mark: Option<CopyMark>,
    ) {
        self.push(
            tally,
            Waiting {
                flow,
                dir,
                credit,
                len,
                since: arrival.now,
                captured: arrival.captured,
                undecided: arrival.undecided,
                mark,
                netns: None,
            },
        );
    }

    /// [`Pending::hold`] for one direction of a packet captured inside `netns` on an
    /// interface only that namespace sees (see [`attribute_in`]); never a translated copy.
    #[allow(clippy::too_many_arguments)]
    pub fn hold_in(
        &mut self,
        tally: &mut Tally,
        netns: NetNsId,
        flow: FlowKey,
        dir: Direction,
        credit: Credit,
        len: u32,
        now: Instant,
    ) {
        self.push(
            tally,
            Waiting {
                flow,
                dir,
                credit,
                len,
                since: now,
                captured: now,
                undecided: false,
                mark: None,
                netns: Some(netns),
            },
        );
    }

    /// Queues `w` if it must wait (a miss, or a packet waiting whole), deciding the oldest
    /// entry first when the buffer is full; records it at once otherwise.
    fn push(&mut self, tally: &mut Tally, w: Waiting) {
        if (!w.credit.is_miss() && w.mark.is_none()) || self.capacity == 0 {
            tally.record_side(w.dir, w.credit, false, w.len);
            return;
        }
        if self.queue.len() == self.capacity {
            if let Some(oldest) = self.queue.pop_front() {
                self.expire_one(tally, oldest);
                self.evicted += 1;
            }
        }
        self.bytes += u64::from(w.len);
        self.queue.push_back(w);
    }

    /// Retries every waiting direction against `table` (once per table generation), crediting
    /// what resolves as late, then expires what waited longer than `max_age`.
    pub fn settle(
        &mut self,
        tally: &mut Tally,
        table: &SocketTable,
        cache: &AttributionCache,
        copies: &CopyFilter,
        now: Instant,
    ) {
        if !self.queue.is_empty() {
            let all = self.tried != table.generation();
            if all || self.horizon > self.retried_at_horizon {
                self.tried = table.generation();
                self.retry(tally, table, cache, copies, all);
            }
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
    pub fn drain(
        &mut self,
        tally: &mut Tally,
        table: &SocketTable,
        cache: &AttributionCache,
        copies: &CopyFilter,
    ) {
        self.retry(tally, table, cache, copies, true);
        while let Some(w) = self.queue.pop_front() {
            self.expire_one(tally, w);
        }
    }

    /// Retries every entry (`all`: the table changed) or only those waiting for the horizon.
    fn retry(
        &mut self,
        tally: &mut Tally,
        table: &SocketTable,
        cache: &AttributionCache,
        copies: &CopyFilter,
        all: bool,
    ) {
        let bytes = &mut self.bytes;
        let mut for_claims = 0;
        let horizon = self.horizon;
        self.queue.retain_mut(|w| {
            if !all && !w.undecided {
                return true;
            }
            let verdict = match w.netns {
                Some(netns) => attribute_in(table, netns, &w.flow, true),
                None => {
                    let horizon = horizon.unwrap_or(w.captured);
                    let (verdict, waits) =
                        cache.attribute_late(table, &w.flow, w.captured, horizon);
                    w.undecided = waits;
                    verdict
                }
            };
            let decided = match w.mark {
                None => decide_one(tally, w, &verdict, table),
                Some(mark) => decide_whole(tally, w, mark, &verdict, table, copies),
            };
            if decided {
                *bytes -= u64::from(w.len);
            } else if table.may_wait_for_claims(&w.flow, w.captured) {
                for_claims += 1;
            }
            !decided
        });
        self.retried_at_horizon = horizon;
        if all {
            self.for_claims = for_claims;
        }
    }

    fn expire_one(&mut self, tally: &mut Tally, w: Waiting) {
        self.bytes -= u64::from(w.len);
        let credit = match w.credit {
            credited @ Credit::Process { .. } => credited,
            _ => Credit::Unknown(UnknownReason::PendingExpired),
        };
        tally.record_side(w.dir, credit, false, w.len);
    }
}

fn side_of(verdict: &Verdict, dir: Direction) -> Option<Credit> {
    match dir {
        Direction::Tx => verdict.tx,
        Direction::Rx => verdict.rx,
    }
}

/// A direction waiting alone: credited (late) once the table names its process. A sent
/// packet that no socket owns goes to the process that sent it through a packet socket,
/// when the table knows exactly one ([`SocketTable::packet_sender`]).
fn decide_one(tally: &mut Tally, w: &Waiting, verdict: &Verdict, table: &SocketTable) -> bool {
    match side_of(verdict, w.dir) {
        Some(credit @ Credit::Process { .. }) => {
            tally.record_side(w.dir, credit, true, w.len);
            true
        }
        Some(Credit::Unknown(UnknownReason::NoSocket)) if w.dir == Direction::Tx => {
            let Some(key) = table.packet_sender(w.len, w.captured, w.netns) else {
                return false;
            };
            let kind = MatchKind::PacketSender;
            tally.record_side(w.dir, Credit::Process { key, kind }, true, w.len);
            true
        }
        _ => false,
    }
}

/// A direction of a packet waiting whole: decided once no end of the packet is a miss — as
/// `transit` when a copy of it in another form of its translated connection was counted
/// (recorded by one direction only: the sender's, or the receiver's when the sender is not
/// local), else credited.
fn decide_whole(
    tally: &mut Tally,
    w: &Waiting,
    mark: CopyMark,
    verdict: &Verdict,
    table: &SocketTable,
    copies: &CopyFilter,
) -> bool {
    if verdict.has_miss() {
        return false;
    }
    let copy = table
        .nat_view(&w.flow)
        .is_some_and(|view| copies.seen_in_another_form(mark, &view.forms));
    if copy {
        if w.dir == Direction::Tx || verdict.tx.is_none() {
            tally.record_transit(w.len);
        }
        return true;
    }
    let credit = match side_of(verdict, w.dir) {
        Some(found @ Credit::Process { .. }) => found,
        _ => w.credit,
    };
    tally.record_side(w.dir, credit, w.credit.is_miss(), w.len);
    true
}
