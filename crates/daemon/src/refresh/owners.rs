//! The socket inode → holders map, kept up to date cheaply.
//!
//! Invariants: a full scan of every process's fds runs at most every `full_every` (and
//! first); in between, only inodes that appeared since are looked for. An inode that a
//! resolution could not place is not looked for again until the next full scan, so a socket
//! whose holder is unreadable costs one search, not one per refresh. The map is shared with
//! published tables through an `Arc` and copied only when it changes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{OwnerMap, ProcessKey, SocketEntry};
use pidcap_sockets::{OwnerScan, OwnerScanner, ProcRoot, ScanStats};

/// Processes whose learned holdings are remembered for their exit.
const MAX_LEARNED: usize = 65_536;

#[derive(Debug)]
pub struct OwnerTracker {
    proc: ProcRoot,
    /// The cheap scanner (open /proc fd, no allocation per fd); `None` if /proc could not
    /// be opened that way, then the plain scan is used.
    scanner: Option<OwnerScanner>,
    map: Arc<OwnerMap>,
    /// The inodes each process was learned to hold from the process side, until it exits
    /// (at most [`MAX_LEARNED`] processes; beyond, the oldest knowledge goes and full scans
    /// alone correct those holders).
    learned: HashMap<ProcessKey, Vec<SocketEntry>>,
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
            scanner: OwnerScanner::open(&proc).ok(),
            proc,
            map: Arc::default(),
            learned: HashMap::new(),
            unplaceable: HashSet::new(),
            last_full: None,
            full_every,
        }
    }

    /// The current map, to put in a table.
    pub fn map(&self) -> Arc<OwnerMap> {
        self.map.clone()
    }

    /// Records a holder of `socket` learned from the process side (the process watcher).
    pub fn learn(&mut self, socket: &SocketEntry, key: ProcessKey) {
        let inode = socket.inode;
        let holders = Arc::make_mut(&mut self.map)
            .holders
            .entry(inode)
            .or_default();
        if !holders.contains(&key) {
            holders.push(key);
        }
        // Remembered for its exit even when a scan already listed it as the holder (the
        // scan may come first): at its exit the socket must end, or it keeps its port from
        // the next process until the next pass.
        if self.learned.len() >= MAX_LEARNED {
            self.learned.clear();
        }
        let held = self.learned.entry(key).or_default();
        if !held.iter().any(|s| s.inode == inode) {
            held.push(*socket);
        }
        self.unplaceable.remove(&inode);
    }

    /// The sockets `key` was learned to hold, forgotten (it exited).
    pub fn take_learned(&mut self, key: ProcessKey) -> Vec<SocketEntry> {
        self.learned.remove(&key).unwrap_or_default()
    }

    /// Looks again for the holders of `inodes`, sockets still open after their holder
    /// `exited` (inherited across fork): the exited one no longer answers for them; those
    /// found join the other holders listed before (the search stops at the first holder it
    /// finds, which may be a sibling rather than the parent still using the socket; the
    /// next full scan drops any that closed it meanwhile). True when some were found.
    pub fn recheck(
        &mut self,
        inodes: &[u64],
        uid: u32,
        exited: ProcessKey,
    ) -> anyhow::Result<bool> {
        if inodes.is_empty() {
            return Ok(false);
        }
        let before: Vec<(u64, Vec<ProcessKey>)> = inodes
            .iter()
            .filter_map(|&i| Some((i, self.map.holders.get(&i)?.clone())))
            .collect();
        let changed = self.resolve(inodes, &[uid])?.changed;
        if changed {
            let map = Arc::make_mut(&mut self.map);
            for (inode, old) in before {
                if let Some(now) = map.holders.get_mut(&inode) {
                    for key in old.into_iter().filter(|&k| k != exited) {
                        if !now.contains(&key) {
                            now.push(key);
                        }
                    }
                }
            }
        }
        Ok(changed)
    }

    /// Makes sure every socket in `sockets` (inode ≠ 0) has a known holder, searching for
    /// the missing ones; false if some stay unplaced.
    pub fn place(&mut self, sockets: &[SocketEntry]) -> anyhow::Result<bool> {
        let wanted: Vec<u64> = sockets
            .iter()
            .map(|s| s.inode)
            .filter(|i| !self.map.holders.contains_key(i))
            .collect();
        if wanted.is_empty() {
            return Ok(true);
        }
        let mut uids: Vec<u32> = sockets.iter().map(|s| s.uid).collect();
        uids.sort_unstable();
        uids.dedup();
        self.resolve(&wanted, &uids)?;
        Ok(wanted.iter().all(|i| self.map.holders.contains_key(i)))
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
        let mut uids: Vec<u32> = sockets
            .iter()
            .filter(|s| wanted.contains(&s.inode))
            .map(|s| s.uid)
            .collect();
        uids.sort_unstable();
        uids.dedup();
        self.resolve(&wanted, &uids)
    }

    fn scan_all(&mut self) -> anyhow::Result<OwnerScan> {
        Ok(match self.scanner.as_mut() {
            Some(scanner) => scanner.scan_all()?,
            None => self.proc.scan_socket_owners()?,
        })
    }

    fn full_scan(&mut self, now: Instant) -> anyhow::Result<OwnerUpdate> {
        let scan = self.scan_all()?;
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

    /// Finds holders for `wanted`, visiting the likeliest processes first (same uid, newest)
    /// and stopping when all are found; what stays unplaced is remembered until the next
    /// full scan.
    fn resolve(&mut self, wanted: &[u64], uids: &[u32]) -> anyhow::Result<OwnerUpdate> {
        let scan = match self.scanner.as_mut() {
            Some(scanner) => {
                let mut found = OwnerScan::default();
                scanner.resolve(wanted, uids, &mut found)?;
                found
            }
            None => self.proc.scan_socket_owners()?,
        };
        let stats = scan.stats;
        let (found, missing): (Vec<u64>, Vec<u64>) =
            wanted.iter().partition(|i| scan.holders.contains_key(i));
        self.unplaceable.extend(missing);
        let changed = !found.is_empty();
        if changed {
            // Copies the map only when something was found (tables share it).
            let map = Arc::make_mut(&mut self.map);
            for inode in found {
                let holders = &scan.holders[&inode];
                for key in holders {
                    if let Some(info) = scan.processes.get(key) {
                        map.processes.entry(*key).or_insert_with(|| info.clone());
                    }
                }
                map.holders.insert(inode, holders.clone());
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
