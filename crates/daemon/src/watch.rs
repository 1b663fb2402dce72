//! The process watcher: learns a new process's sockets from the process side, while it lives.
//!
//! Capture is batched, so a process that lives 5 ms may be gone before its first packet is
//! read; by then its sockets have left the kernel's tables. The watcher listens to the
//! kernel's process-event connector and, after every `exec`, looks at the new process's fds
//! a few times (after 0, 1, 2, 4, … 128 ms, while it lives). When it sees socket inodes it
//! has not seen for that process, it dumps the socket tables at once and sends the sockets
//! found, with the process's identity and facts, to the refresher; the refresher keeps them
//! (like recently closed sockets) for the grace period, so the packets, read later, are
//! credited to the right process even after it exited.
//!
//! Runs on its own thread; bounded: at most `MAX_WATCHED` processes are watched at once
//! (the oldest are dropped) and the channel to the refresher drops what does not fit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{NetNsId, ProcessInfo, SocketEntry};
use pidcap_sockets::{ProcEvent, ProcEvents, ProcRoot};
use tracing::{debug, warn};

use crate::refresh::{MissSignal, SocketSource};

/// Looks at a new process's fds this many times, doubling the delay from 1 ms.
const ROUNDS: u32 = 9;
/// Processes watched at once.
const MAX_WATCHED: usize = 4096;

/// Sockets a process was seen holding, with who it is.
#[derive(Debug, Clone)]
pub struct Learned {
    pub sockets: Vec<SocketEntry>,
    pub info: ProcessInfo,
}

struct Watched {
    info: Option<ProcessInfo>,
    inodes: HashSet<u64>,
    round: u32,
}

#[derive(Debug)]
pub struct Watcher {
    pub events: ProcEvents,
    pub proc: ProcRoot,
    pub netns: NetNsId,
    pub learned: SyncSender<Learned>,
    pub wake: MissSignal,
    pub stop: Arc<AtomicBool>,
}

impl Watcher {
    pub fn run(mut self) {
        let mut sockets = SocketSource::open(self.proc.clone());
        let mut due: BTreeMap<(Instant, u32), ()> = BTreeMap::new();
        let mut watched: HashMap<u32, Watched> = HashMap::new();
        let mut events = Vec::new();
        let mut failing = false;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = due
                .keys()
                .next()
                .map_or(Duration::from_millis(100), |(at, _)| {
                    at.saturating_duration_since(now)
                })
                .min(Duration::from_millis(100));
            if let Err(error) = self.events.recv_into(wait, &mut events) {
                if !failing {
                    warn!(error = %error, "process events unreadable; short-lived processes may go to unknown");
                }
                failing = true;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            failing = false;
            for event in events.drain(..) {
                if let ProcEvent::Exec { pid } = event {
                    watch(&mut due, &mut watched, pid, Instant::now());
                }
            }
            self.look_at_due(&mut due, &mut watched, &mut sockets);
        }
    }

    /// Looks at every process whose turn has come, schedules its next look, and resolves
    /// all the new socket inodes seen with one socket dump.
    fn look_at_due(
        &mut self,
        due: &mut BTreeMap<(Instant, u32), ()>,
        watched: &mut HashMap<u32, Watched>,
        sockets: &mut SocketSource,
    ) {
        let now = Instant::now();
        let ready: Vec<u32> = due
            .range(..=(now, u32::MAX))
            .map(|((_, pid), ())| *pid)
            .collect();
        due.retain(|(at, _), ()| *at > now);
        let mut fresh: Vec<(u32, HashSet<u64>)> = Vec::new();
        for pid in ready {
            let Some(w) = watched.get_mut(&pid) else {
                continue;
            };
            let seen = self.look(pid, w);
            w.round += 1;
            match seen {
                Some(new) if w.round < ROUNDS => {
                    due.insert((now + Duration::from_millis(1 << (w.round - 1)), pid), ());
                    if !new.is_empty() {
                        fresh.push((pid, new));
                    }
                }
                Some(new) => {
                    if !new.is_empty() {
                        fresh.push((pid, new));
                    }
                }
                None => {
                    watched.remove(&pid);
                }
            }
        }
        if !fresh.is_empty() {
            self.resolve(&fresh, watched, sockets);
        }
    }

    /// One look at `pid`'s fds: the socket inodes not seen before, or `None` once the
    /// process is gone.
    fn look(&mut self, pid: u32, w: &mut Watched) -> Option<HashSet<u64>> {
        if w.info.is_none() {
            w.info = Some(self.proc.process(pid).ok()?);
        }
        let mut inodes = Vec::new();
        self.proc.socket_inodes_of(pid, &mut inodes).ok()?;
        Some(inodes.into_iter().filter(|i| w.inodes.insert(*i)).collect())
    }

    /// Dumps the sockets once and sends each process the ones it was seen holding.
    fn resolve(
        &mut self,
        fresh: &[(u32, HashSet<u64>)],
        watched: &HashMap<u32, Watched>,
        sockets: &mut SocketSource,
    ) {
        let mut all = Vec::new();
        if let Err(error) = sockets.read_into(self.netns, &mut all) {
            debug!(error = %error, "socket dump for new processes failed");
            return;
        }
        for (pid, new) in fresh {
            let found: Vec<SocketEntry> = all
                .iter()
                .filter(|s| new.contains(&s.inode))
                .copied()
                .collect();
            let info = watched.get(pid).and_then(|w| w.info.clone());
            if let (false, Some(info)) = (found.is_empty(), info) {
                debug!(pid, sockets = found.len(), comm = %info.comm, "learnt sockets of a new process");
                let _ = self.learned.try_send(Learned {
                    sockets: found,
                    info,
                });
            }
        }
        self.wake.request();
    }
}

/// Starts (or restarts, after a new exec) watching `pid`.
fn watch(
    due: &mut BTreeMap<(Instant, u32), ()>,
    watched: &mut HashMap<u32, Watched>,
    pid: u32,
    now: Instant,
) {
    if watched.len() >= MAX_WATCHED && !watched.contains_key(&pid) {
        if let Some(((at, oldest), ())) = due.pop_first() {
            let _ = at;
            watched.remove(&oldest);
        }
    }
    watched.insert(
        pid,
        Watched {
            info: None,
            inodes: HashSet::new(),
            round: 0,
        },
    );
    due.insert((now, pid), ());
}
