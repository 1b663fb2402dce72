//! The attribution cache: flow → verdict, valid for one socket-table generation.
//!
//! Invariants: an entry is used only while its generation equals the current table's, so a
//! refresh invalidates every cached verdict at once (a reused port is never credited from a
//! stale entry). The cache is bounded: when it reaches its capacity it is emptied, which costs
//! a re-lookup per live flow and nothing else. Concurrent readers (the capture thread, the
//! `lookup` query) share it through `dashmap`'s sharded locks; no global lock is taken.
//!
//! A flow whose local ends have no socket at all, connected or bound (a port scan, a flood of
//! spoofed flows to closed ports), or that has no local end (foreign), is not cached per flow: its verdict is recomputed for each
//! packet (a few lookups in small maps), and only its local ends are remembered, so that a
//! refresh is asked for once per local end and generation, not once per flow. A flood of
//! 320,000 such flows then costs 20,000 small entries, not 320,000 cold 128-byte ones.

use dashmap::DashMap;
use foldhash::fast::RandomState;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use pidcap_wire::{FlowKey, IpProto};

use std::cell::Cell;
use std::time::Instant;

use crate::attribute::{attribute_captured, Credit, UnknownReason, Verdict};
use crate::openings::{Currency, Openings, Seen};
use crate::table::SocketTable;

#[derive(Debug, Clone, Copy)]
struct Cached {
    generation: u64,
    verdict: Verdict,
}

/// The outcome of one cached attribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    pub verdict: Verdict,
    /// True the first time this flow missed under the current table: the caller should ask
    /// for a refresh (once per flow and generation, never per packet).
    pub new_miss: bool,
    /// A record could not be judged yet (see [`crate::Currency::Undecided`]): the miss is
    /// to wait for later packets, not for a refresh.
    pub undecided: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct AttributionCache {
    entries: DashMap<FlowKey, Cached, RandomState>,
    /// Local ends with no socket, and the generation they were last missed under.
    unowned: DashMap<UnownedEnds, u64, RandomState>,
    /// Flows whose lookup met an undecided record, and the generation they last asked for
    /// a refresh under.
    undecided: DashMap<FlowKey, u64, RandomState>,
    capacity: usize,
    /// Times either map was emptied because it was full.
    clears: AtomicU64,
    /// When each TCP 4-tuple last opened a connection: records seen before are passed over
    /// for the packets after (a 4-tuple that changed hands).
    openings: Openings,
}

/// The protocol and the local ends (source for `tx`, destination for `rx`) that matched no
/// socket, for a flow whose verdict does not depend on its remote ends.
type UnownedEnds = (IpProto, Option<SocketAddr>, Option<SocketAddr>);

impl AttributionCache {
    /// A cache holding at most `capacity` flows (at least 1).
    pub fn new(capacity: usize) -> AttributionCache {
        AttributionCache {
            entries: DashMap::with_hasher(RandomState::default()),
            unowned: DashMap::with_hasher(RandomState::default()),
            undecided: DashMap::with_hasher(RandomState::default()),
            clears: AtomicU64::new(0),
            capacity: capacity.max(1),
            openings: Openings::new(capacity),
        }
    }

    /// The verdict for `flow` under `table`, from the cache when it is current; without
    /// regard to openings (a query's lookup, a replay).
    pub fn attribute(&self, table: &SocketTable, flow: &FlowKey, ports_known: bool) -> Lookup {
        self.lookup(table, flow, ports_known, &|_| Currency::Current, None)
    }

    /// Records that a packet of `flow` captured at `at` opened a connection on its 4-tuple
    /// (`PacketMeta::tcp_opening`): both directions' cached verdicts are dropped, and the
    /// records of its 4-tuple seen before stop answering for the packets after.
    pub fn open(&self, flow: &FlowKey, at: Instant) {
        self.openings.note(flow, at);
        self.entries.remove(flow);
        self.entries.remove(&flow.reversed());
    }

    /// The verdict for a packet of `flow` captured at `at`, read in capture order (every
    /// packet before it was read): from the cache when it is current (no opening came
    /// between: [`AttributionCache::open`] drops the entries), else looked up with its
    /// records judged by the openings ([`Openings::judge`]) and its kept sockets by when
    /// their holders exited ([`crate::SocketMatch::until`]: such verdicts are not cached).
    pub fn attribute_at(
        &self,
        table: &SocketTable,
        flow: &FlowKey,
        ports_known: bool,
        at: Instant,
    ) -> Lookup {
        if !judged_by_openings(table, flow) {
            return self.lookup(table, flow, ports_known, &|_| Currency::Current, Some(at));
        }
        let judge = |seen| self.openings.judge(flow, seen, at, at);
        self.lookup(table, flow, ports_known, &judge, Some(at))
    }

    /// The verdict for a packet of `flow` captured at `at`, decided late (from the pending
    /// buffer) once every packet up to `horizon` was read: openings read since may make the
    /// cached verdict another connection's, so a 4-tuple with openings is looked up afresh
    /// (and not cached). Also says whether a record could not be judged yet.
    pub fn attribute_late(
        &self,
        table: &SocketTable,
        flow: &FlowKey,
        at: Instant,
        horizon: Instant,
    ) -> (Verdict, bool) {
        if !self.openings.knows(flow) || !judged_by_openings(table, flow) {
            let lookup = self.lookup(table, flow, true, &|_| Currency::Current, Some(at));
            return (lookup.verdict, false);
        }
        let undecided = Cell::new(false);
        let judge = |seen| {
            let currency = self.openings.judge(flow, seen, at, horizon);
            undecided.set(undecided.get() || currency == Currency::Undecided);
            currency
        };
        let (verdict, _) = attribute_captured(table, flow, true, &judge, Some(at));
        (verdict, undecided.get())
    }

    /// 4-tuples whose openings are remembered, and how many were forgotten early.
    pub fn openings(&self) -> (usize, u64) {
        (self.openings.len(), self.openings.forgotten())
    }

    /// Looks `flow` up (through the cache) for a packet captured at `captured`; a verdict
    /// with an undecided record, or one that met a socket kept after its holder exited, is
    /// not cached (the next packet may be decided otherwise).
    fn lookup(
        &self,
        table: &SocketTable,
        flow: &FlowKey,
        ports_known: bool,
        judge: &dyn Fn(Seen) -> Currency,
        captured: Option<Instant>,
    ) -> Lookup {
        if is_foreign(table, flow) {
            // Neither end can be local: no socket to look up, no refresh to ask for.
            return Lookup {
                verdict: Verdict { tx: None, rx: None },
                new_miss: false,
                undecided: false,
            };
        }
        let generation = table.generation();
        if let Some(hit) = self.entries.get(flow) {
            if hit.generation == generation {
                return Lookup {
                    verdict: hit.verdict,
                    new_miss: false,
                    undecided: false,
                };
            }
        }
        let undecided = Cell::new(false);
        let judged = |seen| {
            let currency = judge(seen);
            undecided.set(undecided.get() || currency == Currency::Undecided);
            currency
        };
        let (verdict, timed) = attribute_captured(table, flow, ports_known, &judged, captured);
        if undecided.get() || timed {
            // Not cached (the next packet may decide it); a miss of its other end (a socket
            // or a translation not known yet) still asks for a refresh, once per generation.
            let new_miss = verdict.has_miss() && self.first_undecided(flow, generation);
            return Lookup {
                verdict,
                new_miss,
                undecided: undecided.get(),
            };
        }
        if let Some(ends) = unowned_ends(table, flow, &verdict) {
            let new_miss = verdict.has_miss() && self.first_unowned(ends, generation);
            return Lookup {
                verdict,
                new_miss,
                undecided: false,
            };
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
            self.clears.fetch_add(1, Ordering::Relaxed);
        }
        self.entries.insert(
            *flow,
            Cached {
                generation,
                verdict,
            },
        );
        Lookup {
            verdict,
            new_miss: verdict.has_miss(),
            undecided: false,
        }
    }

    /// Records that `flow`, undecided, missed under `generation`; true the first time.
    fn first_undecided(&self, flow: &FlowKey, generation: u64) -> bool {
        self.first_under(&self.undecided, *flow, generation)
    }

    /// Records that `ends` missed under `generation`; true the first time.
    fn first_unowned(&self, ends: UnownedEnds, generation: u64) -> bool {
        self.first_under(&self.unowned, ends, generation)
    }

    /// Records `key` in `seen` under `generation` (emptying the map at its bound); true the
    /// first time for that generation.
    fn first_under<K: std::hash::Hash + Eq>(
        &self,
        seen: &DashMap<K, u64, RandomState>,
        key: K,
        generation: u64,
    ) -> bool {
        if seen.get(&key).is_some_and(|g| *g == generation) {
            return false;
        }
        if seen.len() >= self.capacity {
            seen.clear();
            self.clears.fetch_add(1, Ordering::Relaxed);
        }
        seen.insert(key, generation);
        true
    }

    /// Flows cached (flows to unowned local ends are not, see the module doc).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Times the cache was emptied because it was full (each costs a re-lookup per live
    /// flow), since start.
    pub fn clears(&self) -> u64 {
        self.clears.load(Ordering::Relaxed)
    }
}

/// True when neither end of `flow` can be local (see [`SocketTable::may_be_local`]) and it
/// is no form of a translated connection: a foreign packet, decided without a lookup.
fn is_foreign(table: &SocketTable, flow: &FlowKey) -> bool {
    !table.may_be_local(flow.src.ip())
        && !table.may_be_local(flow.dst.ip())
        && table.nat_view(flow).is_none()
}

/// Whether openings weigh the records of `flow`: only for a packet between this host's own
/// addresses (loopback included), the traffic they are tested on. A packet of another
/// namespace, or of an address not known yet, may be captured once per interface and form
/// it crosses (a bridge, a translation), so its copies would open one connection several
/// times over: a known limit, such packets are judged by the socket tables alone, as before
/// openings existed.
fn judged_by_openings(table: &SocketTable, flow: &FlowKey) -> bool {
    flow.proto == pidcap_wire::IpProto::Tcp
        && table.is_home(flow.src.ip())
        && table.is_home(flow.dst.ip())
        && table.nat_view(flow).is_none()
}

/// The local ends of `flow` when its verdict is one that no remote end could change: every
/// end is either not local (a foreign flow has two such) or local with no socket, and no
/// connected socket (live or recently closed) has it as its local end. `None` for every
/// other verdict: those are cached per flow.
fn unowned_ends(table: &SocketTable, flow: &FlowKey, verdict: &Verdict) -> Option<UnownedEnds> {
    if table.nat_view(flow).is_some() {
        return None; // each end looked up in its own form: the whole flow matters
    }
    let end = |credit: Option<Credit>, local: SocketAddr| -> Option<Option<SocketAddr>> {
        match credit {
            None => Some(None),
            Some(Credit::Unknown(UnknownReason::NoSocket)) => Some(Some(local)),
            Some(_) => None,
        }
    };
    let tx = end(verdict.tx, flow.src)?;
    let rx = end(verdict.rx, flow.dst)?;
    let independent = table.remote_independent(flow.proto, flow.src)
        && table.remote_independent(flow.proto, flow.dst);
    independent.then_some((flow.proto, tx, rx))
}
