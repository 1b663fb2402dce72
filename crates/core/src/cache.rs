//! The attribution cache: flow → verdict, valid for one socket-table generation.
//!
//! Invariants: an entry is used only while its generation equals the current table's, so a
//! refresh invalidates every cached verdict at once (a reused port is never credited from a
//! stale entry). The cache is bounded: when it reaches its capacity it is emptied, which costs
//! a re-lookup per live flow and nothing else. Concurrent readers (the capture thread, the
//! `lookup` query) share it through `dashmap`'s sharded locks; no global lock is taken.

use dashmap::DashMap;
use foldhash::fast::RandomState;
use pidcap_wire::FlowKey;

use crate::attribute::{attribute, Verdict};
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
    capacity: usize,
}

impl AttributionCache {
    /// A cache holding at most `capacity` flows (at least 1).
    pub fn new(capacity: usize) -> AttributionCache {
        AttributionCache {
            entries: DashMap::with_hasher(RandomState::default()),
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
        if self.entries.len() >= self.capacity {
            self.entries.clear();
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

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
