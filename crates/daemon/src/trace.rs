//! The socket tracer: tells the refresher which process used which TCP connection, from the
//! kernel's socket tracepoints (see `pidcap_sockets::trace`).
//!
//! This closes what fd scans and the process watcher cannot: a connection that lives a
//! millisecond in a process of any age (connection churn, parallel clients), and connections
//! accepted by one process and served by another. For a successful `connect()` of any IP
//! socket it also reads the socket at once (`pidfd_getfd`), which is how a connected UDP
//! socket that lives one round trip (a resolver's) gets its owner. Each claim goes to the refresher as a
//! learnt socket with the process's facts ([`ProcessFacts`]: recorded at exec by the watcher,
//! or read from `/proc` now), so the flow's packets, read later, are credited to it even after
//! the socket closed and the process exited; a live socket whose holder is known still wins.
//!
//! Runs on its own thread. Optional: without tracefs or `CAP_PERFMON` the daemon warns once
//! and attributes as before. Processes of another network namespace are ignored (the
//! tracepoints are system-wide; their connections are not this namespace's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{NetNsId, SocketEntry, TcpState};
use pidcap_sockets::trace::{SockTracer, SocketClaim};
use pidcap_sockets::{ProcRoot, ProcessHandle};
use pidcap_wire::IpProto;
use tracing::{debug, warn};

use crate::facts::{Known, ProcessFacts};
use crate::refresh::MissSignal;
use crate::state::Shared;
use crate::watch::Learned;

/// How long events may wait in the rings while TCP is busy (the latency of a claim, and of
/// learning who a new process is before it exits)…
const ACTIVE_WAIT: Duration = Duration::from_millis(5);
/// …and once nothing happened for [`ACTIVE_FOR`] (also how quickly `stop` is noticed).
const IDLE_WAIT: Duration = Duration::from_millis(200);
const ACTIVE_FOR: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Tracer {
    pub tracer: SockTracer,
    pub facts: ProcessFacts,
    pub proc: ProcRoot,
    pub netns: NetNsId,
    pub learned: SyncSender<Learned>,
    pub wake: MissSignal,
    pub stop: Arc<AtomicBool>,
    /// Where the claim counts are published (`stats`).
    pub shared: Arc<Shared>,
}

impl Tracer {
    pub fn run(mut self) {
        let mut claims = Vec::new();
        let mut lost = 0;
        let mut active_at: Option<Instant> = None;
        self.shared.process_side().tracer = true;
        let mut failing = false;
        while !self.stop.load(Ordering::Relaxed) {
            claims.clear();
            let wait = if self.tracer.has_waiting() {
                Duration::ZERO
            } else if active_at.is_some_and(|at| at.elapsed() < ACTIVE_FOR) {
                ACTIVE_WAIT
            } else {
                IDLE_WAIT
            };
            if let Err(error) = self.tracer.poll(wait, &mut claims) {
                if !failing {
                    warn!(error = %error, "socket tracepoints unreadable; short-lived connections may go to unknown");
                }
                failing = true;
                std::thread::sleep(IDLE_WAIT);
                continue;
            }
            failing = false;
            if self.tracer.has_waiting() || !claims.is_empty() {
                active_at = Some(Instant::now());
            }
            // Connected datagram sockets first: a resolver's lives one round trip.
            let connected = self.tracer.connected().to_vec();
            let learnt = connected
                .into_iter()
                .filter(|&(pid, fd)| self.learn_connected(pid, fd))
                .count();
            if learnt > 0 {
                self.wake.request();
                self.shared.process_side().traced_claims += learnt as u64;
            }
            // Learn who the actors are now: a 5 ms process is gone by the time its
            // connection's events are paired.
            for i in 0..self.tracer.actors().len() {
                let pid = self.tracer.actors()[i];
                self.who(pid);
            }
            if !claims.is_empty() {
                self.send(&claims);
            }
            if self.tracer.lost() != lost {
                lost = self.tracer.lost();
                warn!(
                    lost,
                    "socket trace events lost (ring full); some connections may go to unknown"
                );
            }
            if self.tracer.has_waiting() {
                // Let events age past the reorder window, batching what comes meanwhile.
                std::thread::sleep(pidcap_sockets::trace::perf::REORDER / 2);
            }
        }
    }

    /// Groups claims by process and hands them to the refresher.
    fn send(&self, claims: &[SocketClaim]) {
        let mut by_pid: HashMap<u32, Vec<&SocketClaim>> = HashMap::new();
        for c in claims {
            by_pid.entry(c.pid).or_default().push(c);
        }
        let mut sent = false;
        let mut unknown = 0;
        for (pid, claims) in by_pid {
            let info = match self.who(pid) {
                Known::Ours(info) => info,
                Known::Foreign => continue, // another namespace's connection
                Known::Unknown => {
                    unknown += claims.len() as u64;
                    debug!(
                        pid,
                        sockets = claims.len(),
                        "connections claimed by a process nobody knew"
                    );
                    continue;
                }
            };
            let sockets = claims
                .iter()
                .map(|c| SocketEntry {
                    netns: self.netns,
                    proto: IpProto::Tcp,
                    local: c.local,
                    remote: c.remote,
                    state: TcpState::Established,
                    inode: 0,
                    uid: info.uid,
                })
                .collect();
            debug!(pid, comm = %info.comm, sockets = claims.len(), "connections claimed by trace");
            sent |= self.learned.try_send(Learned { sockets, info }).is_ok();
        }
        if sent {
            self.wake.request();
        }
        let mut side = self.shared.process_side();
        side.traced_claims += claims.len() as u64 - unknown;
        side.traced_unknown_process += unknown;
    }

    /// Reads the socket `pid` just connected on `fd` (a duplicate through `pidfd_getfd`,
    /// then its addresses) and hands it to the refresher; false if it is gone, not IP, or
    /// not ours. TCP connects are claimed from their state changes too; this also gives
    /// them their inode.
    fn learn_connected(&self, pid: u32, fd: i32) -> bool {
        let Ok(Some(inode)) = self.proc.socket_inode(pid, fd) else {
            return false;
        };
        let Ok(handle) = ProcessHandle::open(pid) else {
            return false;
        };
        let Ok(Some(mut entry)) = handle.ip_socket(fd, inode, 0, self.netns) else {
            return false;
        };
        if entry.is_wildcard_remote() {
            return false;
        }
        let Known::Ours(info) = self.who(pid) else {
            return false;
        };
        entry.uid = info.uid;
        debug!(pid, fd, local = %entry.local, remote = %entry.remote, "connected socket read");
        let learnt = Learned {
            sockets: vec![entry],
            info,
        };
        self.learned.try_send(learnt).is_ok()
    }

    /// Who `pid` is (or was), reading `/proc` if nobody recorded it yet. `Unknown`: it
    /// exited before anyone learnt who it was.
    fn who(&self, pid: u32) -> Known {
        self.facts
            .get_or_read(&self.proc, self.netns, pid, Instant::now())
    }
}
