//! The attribution cache: flow → verdict, valid for one socket-table generation.
//!
//! Invariants: an entry is used only while its generation equals the current table's, so a
//! refresh invalidates every cached verdict at once (a reused port is never credited from a
//! stale entry). The cache is bounded: when it reaches its capacity it is emptied, which costs
//! a re-lookup per live flow and nothing else. Concurrent readers (the capture thread, the
//! `lookup` query) share it through `dashmap`'s sharded locks; no global lock is taken.
//!
//! A flow none of whose local ends any connected socket uses, live or recently closed
//! (datagrams to or from bound sockets, a port scan, a flood of spoofed flows to closed ports),
//! has a verdict that no remote end can change: it is cached per local end, not per flow,
//! and so is a miss's request for a refresh (once per local end and generation, not once
//! per flow). A flood of 320,000 such flows then costs 20,000 small entries, not 320,000 cold
//! 128-byte ones. A flow with no local end at all (foreign) is decided without a lookup.

use dashmap::DashMap;
use foldhash::fast::RandomState;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use pidcap_wire::{FlowKey, IpProto};

use std::cell::Cell;
use std::time::Instant;

use crate::attribute::{attribute_captured, attribute_end, Credit, Verdict};
use crate::openings::{Currency, Openings, Seen};
use crate::table::{Captured, SocketTable};

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
    /// Local ends of flows whose verdict no remote end can change, by protocol and address.
    ends: DashMap<(IpProto, SocketAddr), CachedEnd, RandomState>,
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

/// What one local end of a packet is under one table generation.
#[derive(Debug, Clone, Copy)]
struct CachedEnd {
    generation: u64,
    answer: EndAnswer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndAnswer {
    /// A connected socket uses this end: the flow's remote end matters (cached per flow).
    Dependent,
    /// The end's credit (`None`: not local), whatever the remote end.
    Credit(Option<Credit>),
    /// A socket whose holder's life bounds it answers: decided per packet by its capture
    /// time; `miss_asked` once a miss of it asked for a refresh.
    Timed { miss_asked: bool },
}

/// One end of a flow, decided through [`AttributionCache::ends`].
struct EndLookup {
    credit: Option<Credit>,
    new_miss: bool,
    /// Decided by the packet's capture time (see [`EndAnswer::Timed`]).
    timed: bool,
}

impl AttributionCache {
    /// A cache holding at most `capacity` flows (at least 1).
    pub fn new(capacity: usize) -> AttributionCache {
        AttributionCache {
            entries: DashMap::with_hasher(RandomState::default()),
            ends: DashMap::with_hasher(RandomState::default()),
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
            // Not through the cache: its verdicts are for packets decided as they are read,
            // some of which wait where a late one is decided (see `Captured::late`).
            let current = &|_| Currency::Current;
            let late = Captured::late(at);
            return (
                attribute_captured(table, flow, true, current, late).0,
                false,
            );
        }
        let undecided = Cell::new(false);
        let judge = |seen| {
            let currency = self.openings.judge(flow, seen, at, horizon);
            undecided.set(undecided.get() || currency == Currency::Undecided);
            currency
        };
        let (verdict, _) = attribute_captured(table, flow, true, &judge, Captured::late(at));
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
        if let Some((found, timed)) = self.by_ends(table, flow, ports_known, captured, generation) {
            // A flow with no miss is cached per flow too (one lookup for its next packets);
            // one with a miss (a flood to closed ports) is not: its ends answer.
            if !found.verdict.has_miss() && !timed {
                self.insert(flow, generation, found.verdict);
            }
            return found;
        }
        let undecided = Cell::new(false);
        let judged = |seen| {
            let currency = judge(seen);
            undecided.set(undecided.get() || currency == Currency::Undecided);
            currency
        };
        let at = Captured {
            at: captured,
            late: false,
        };
        let (verdict, timed) = attribute_captured(table, flow, ports_known, &judged, at);
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
        self.insert(flow, generation, verdict);
        Lookup {
            verdict,
            new_miss: verdict.has_miss(),
            undecided: false,
        }
    }

    /// Caches `verdict` for `flow` under `generation` (emptying the cache at its bound).
    fn insert(&self, flow: &FlowKey, generation: u64, verdict: Verdict) {
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
    }

    /// Records that `flow`, undecided, missed under `generation`; true the first time.
    fn first_undecided(&self, flow: &FlowKey, generation: u64) -> bool {
        self.first_under(&self.undecided, *flow, generation)
    }

    /// The verdict of a flow none of whose local ends a connected socket uses (so no
    /// remote end can change it), from each end's cached answer; `None` for any other flow
    /// (a translated one, one with unknown ports, one with an end a connection uses).
    fn by_ends(
        &self,
        table: &SocketTable,
        flow: &FlowKey,
        ports_known: bool,
        captured: Option<Instant>,
        generation: u64,
    ) -> Option<(Lookup, bool)> {
        if !ports_known || table.nat_view(flow).is_some() {
            return None;
        }
        let end =
            |local, remote| self.end(table, flow.proto, (local, remote), captured, generation);
        let tx = end(flow.src, flow.dst)?;
        let rx = end(flow.dst, flow.src)?;
        let found = Lookup {
            verdict: Verdict {
                tx: tx.credit,
                rx: rx.credit,
            },
            new_miss: tx.new_miss || rx.new_miss,
            undecided: false,
        };
        Some((found, tx.timed || rx.timed))
    }

    /// The credit of the end `local` (a packet to or from `remote`), when no remote end can
    /// change it; `None` when a connected socket uses it. A miss is new once per end and
    /// generation.
    fn end(
        &self,
        table: &SocketTable,
        proto: IpProto,
        (local, remote): (SocketAddr, SocketAddr),
        captured: Option<Instant>,
        generation: u64,
    ) -> Option<EndLookup> {
        let key = (proto, crate::table::canonical(local));
        let cached = self.ends.get(&key).map(|e| *e);
        let answer = match cached {
            Some(e) if e.generation == generation => e.answer,
            _ if !table.remote_independent(proto, local) => {
                self.put_end(key, generation, EndAnswer::Dependent);
                return None;
            }
            _ => {
                let (credit, timed) = attribute_end(table, proto, (local, remote), true, captured);
                let new_miss = credit.is_some_and(Credit::is_miss);
                let answer = match timed {
                    true => EndAnswer::Timed {
                        miss_asked: new_miss,
                    },
                    false => EndAnswer::Credit(credit),
                };
                self.put_end(key, generation, answer);
                return Some(EndLookup {
                    credit,
                    new_miss,
                    timed,
                });
            }
        };
        match answer {
            EndAnswer::Dependent => None,
            EndAnswer::Credit(credit) => Some(EndLookup {
                credit,
                new_miss: false,
                timed: false,
            }),
            EndAnswer::Timed { miss_asked } => {
                let (credit, _) = attribute_end(table, proto, (local, remote), true, captured);
                let new_miss = !miss_asked && credit.is_some_and(Credit::is_miss);
                if new_miss {
                    self.put_end(key, generation, EndAnswer::Timed { miss_asked: true });
                }
                Some(EndLookup {
                    credit,
                    new_miss,
                    timed: true,
                })
            }
        }
    }

    /// Caches `answer` for the end `key` under `generation` (emptying the map at its bound).
    fn put_end(&self, key: (IpProto, SocketAddr), generation: u64, answer: EndAnswer) {
        if self.ends.len() >= self.capacity && !self.ends.contains_key(&key) {
            self.ends.clear();
            self.clears.fetch_add(1, Ordering::Relaxed);
        }
        self.ends.insert(key, CachedEnd { generation, answer });
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
