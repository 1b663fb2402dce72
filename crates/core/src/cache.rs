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

use crate::attribute::{attribute, Credit, UnknownReason, Verdict};
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
}

/// See the module documentation.
#[derive(Debug)]
pub struct AttributionCache {
    entries: DashMap<FlowKey, Cached, RandomState>,
    /// Local ends with no socket, and the generation they were last missed under.
    unowned: DashMap<UnownedEnds, u64, RandomState>,
    capacity: usize,
    /// Times either map was emptied because it was full.
    clears: AtomicU64,
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
            clears: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    /// The verdict for `flow` under `table`, from the cache when it is current.
    pub fn attribute(&self, table: &SocketTable, flow: &FlowKey, ports_known: bool) -> Lookup {
        let generation = table.generation();
        if let Some(hit) = self.entries.get(flow) {
            if hit.generation == generation {
                return Lookup {
                    verdict: hit.verdict,
                    new_miss: false,
                };
            }
        }
        let verdict = attribute(table, flow, ports_known);
        if let Some(ends) = unowned_ends(table, flow, &verdict) {
            let new_miss = verdict.has_miss() && self.first_unowned(ends, generation);
            return Lookup { verdict, new_miss };
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
        }
    }

    /// Records that `ends` missed under `generation`; true the first time.
    fn first_unowned(&self, ends: UnownedEnds, generation: u64) -> bool {
        if self.unowned.get(&ends).is_some_and(|g| *g == generation) {
            return false;
        }
        if self.unowned.len() >= self.capacity {
            self.unowned.clear();
            self.clears.fetch_add(1, Ordering::Relaxed);
        }
        self.unowned.insert(ends, generation);
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
