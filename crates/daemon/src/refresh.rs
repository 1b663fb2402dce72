//! The refresher: builds socket tables from the kernel and swaps them in.
//!
//! Runs on its own thread (blocking procfs reads never sit on a tokio worker). A full
//! refresh happens every `interval`; a lookup miss on the packet path asks for an early one
//! through a one-slot channel, so concurrent misses coalesce into at most one pending
//! request, and early refreshes are at least `MIN_GAP` apart. The packet path never waits.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{NetNsId, ProcessKey, SocketTable, TableParts};
use pidcap_sockets::{local_addresses, ProcRoot, ScanStats};
use tracing::{debug, warn};

use crate::state::Shared;

/// The shortest time between two refreshes asked for by misses.
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// Asks the refresher for an early refresh; never blocks, drops the request if one is
/// already pending.
#[derive(Debug, Clone)]
pub struct MissSignal(SyncSender<()>);

impl MissSignal {
    pub fn request(&self) {
        let _ = self.0.try_send(());
    }
}

/// A one-slot request channel.
pub fn miss_channel() -> (MissSignal, Receiver<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    (MissSignal(tx), rx)
}

/// Reads the kernel's sockets, their holders and the host's addresses into a new table.
pub fn build_table(
    proc: &ProcRoot,
    netns: NetNsId,
    generation: u64,
) -> anyhow::Result<(SocketTable, ScanStats)> {
    let sockets = proc.read_sockets(netns)?;
    let scan = proc.scan_socket_owners()?;
    debug!(
        sockets = sockets.len(),
        processes = scan.stats.processes_scanned,
        vanished = scan.stats.vanished,
        permission_denied = scan.stats.permission_denied,
        "socket table read"
    );
    let stats = scan.stats;
    let table = SocketTable::build(
        generation,
        TableParts {
            netns: Some(netns),
            sockets,
            holders: scan.holders,
            processes: scan.processes,
            local_addrs: local_addresses()?,
        },
    );
    Ok((table, stats))
}

/// The refresher's loop; returns when `stop` is set.
#[derive(Debug)]
pub struct Refresher {
    pub proc: ProcRoot,
    pub netns: NetNsId,
    pub interval: Duration,
    pub shared: Arc<Shared>,
    pub requests: Receiver<()>,
    pub stop: Arc<AtomicBool>,
}

impl Refresher {
    pub fn run(self) {
        let mut generation = self.shared.table.load().generation();
        let mut last = Instant::now();
        let mut failing = false;
        let mut denied_warned = false;
        while !self.stop.load(Ordering::Relaxed) {
            let wait = self
                .interval
                .saturating_sub(last.elapsed())
                .min(Duration::from_millis(200));
            match self.requests.recv_timeout(wait) {
                Ok(()) => std::thread::sleep(MIN_GAP.saturating_sub(last.elapsed())),
                Err(RecvTimeoutError::Timeout) if last.elapsed() < self.interval => continue,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            generation += 1;
            last = Instant::now();
            failing = self.refresh_once(generation, failing, &mut denied_warned);
        }
    }

    /// One refresh; returns whether it failed (so a persistent failure is warned once).
    fn refresh_once(&self, generation: u64, was_failing: bool, denied_warned: &mut bool) -> bool {
        let started = Instant::now();
        match build_table(&self.proc, self.netns, generation) {
            Ok((table, stats)) => {
                if stats.permission_denied > 0 && !*denied_warned {
                    *denied_warned = true;
                    warn!(
                        processes = stats.permission_denied,
                        "some processes' file descriptors are unreadable; their traffic goes to unknown. \
                         pidcapd needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (reported once)"
                    );
                }
                self.mark_exits(&table);
                self.shared.publish(table);
                let mut info = self.shared.refresh_info();
                info.count += 1;
                info.last_duration = started.elapsed();
                if was_failing {
                    warn!("socket table refresh works again");
                }
                false
            }
            Err(error) => {
                self.shared.refresh_info().failures += 1;
                if !was_failing {
                    warn!(error = %error, "socket table refresh failed; keeping the previous table");
                }
                true
            }
        }
    }

    /// Marks ledger processes that no longer exist (or whose pid now names another process).
    fn mark_exits(&self, table: &SocketTable) {
        let live = self.shared.ledger().live_keys();
        let seen: HashSet<ProcessKey> = live
            .iter()
            .filter(|k| table.process(k).is_some())
            .copied()
            .collect();
        let gone: Vec<ProcessKey> = live
            .into_iter()
            .filter(|k| !seen.contains(k) && !self.still_running(k))
            .collect();
        if gone.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut ledger = self.shared.ledger();
        for key in &gone {
            ledger.mark_exited(key, now);
        }
    }

    fn still_running(&self, key: &ProcessKey) -> bool {
        match self.proc.process(key.pid) {
            Ok(info) => info.key.start_time == key.start_time,
            Err(e) => !e.is_not_found(),
        }
    }
}
