//! The socket inode → holders map, kept up to date cheaply.
//!
//! Invariants: a full scan of every process's fds runs at most every `full_every` (and
//! first); in between, only inodes that appeared since are looked for. An inode that a
//! resolution could not place is not looked for again until the next full scan, so a socket
//! whose holder is unreadable costs one search, not one per refresh. The map is shared with
//! published tables through an `Arc` and copied only when it changes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{OwnerMap, SocketEntry};
use pidcap_sockets::{OwnerScan, ProcRoot, ScanStats};

#[derive(Debug)]
pub struct OwnerTracker {
    proc: ProcRoot,
    map: Arc<OwnerMap>,
    unplaceable: HashSet<u64>,
    last_full: Option<Instant>,
    full_every: Duration,
}

/// What one update did.
#[derive(Debug, Default, Clone, Copy)]
pub struct OwnerUpdate {
    pub changed: bool,
    pub full: bool,
    pub stats: ScanStats,
}

impl OwnerTracker {
    pub fn new(proc: ProcRoot, full_every: Duration) -> OwnerTracker {
        OwnerTracker {
            proc,
            map: Arc::default(),
            unplaceable: HashSet::new(),
            last_full: None,
            full_every,
        }
    }

    /// The current map, to put in a table.
    pub fn map(&self) -> Arc<OwnerMap> {
        self.map.clone()
    }

    /// Brings the map up to date for `sockets`.
    pub fn update(&mut self, sockets: &[SocketEntry], now: Instant) -> anyhow::Result<OwnerUpdate> {
        let due = self
            .last_full
            .is_none_or(|at| now.saturating_duration_since(at) >= self.full_every);
        if due {
            return self.full_scan(now);
        }
        let wanted = self.unknown_inodes(sockets);
        if wanted.is_empty() {
            return Ok(OwnerUpdate::default());
        }
        self.resolve(&wanted)
    }

    fn full_scan(&mut self, now: Instant) -> anyhow::Result<OwnerUpdate> {
        let scan = self.proc.scan_socket_owners()?;
        let stats = scan.stats;
        self.map = Arc::new(into_map(scan));
        self.unplaceable.clear();
        self.last_full = Some(now);
        Ok(OwnerUpdate {
            changed: true,
            full: true,
            stats,
        })
    }

    /// Held sockets (inode ≠ 0) with no known holder that were not given up on.
    fn unknown_inodes(&self, sockets: &[SocketEntry]) -> Vec<u64> {
        sockets
            .iter()
            .map(|s| s.inode)
            .filter(|&i| {
                i != 0 && !self.map.holders.contains_key(&i) && !self.unplaceable.contains(&i)
            })
            .collect()
    }

    /// Finds holders for `wanted`; what stays unplaced is remembered until the next full scan.
    fn resolve(&mut self, wanted: &[u64]) -> anyhow::Result<OwnerUpdate> {
        let scan = self.proc.scan_socket_owners()?;
        let stats = scan.stats;
        let map = Arc::make_mut(&mut self.map);
        let mut changed = false;
        for &inode in wanted {
            match scan.holders.get(&inode) {
                Some(holders) => {
                    for key in holders {
                        if let Some(info) = scan.processes.get(key) {
                            map.processes.entry(*key).or_insert_with(|| info.clone());
                        }
                    }
                    map.holders.insert(inode, holders.clone());
                    changed = true;
                }
                None => {
                    self.unplaceable.insert(inode);
                }
            }
        }
        Ok(OwnerUpdate {
            changed,
            full: false,
            stats,
        })
    }
}

fn into_map(scan: OwnerScan) -> OwnerMap {
    OwnerMap {
        holders: scan.holders,
        processes: scan.processes,
    }
}
