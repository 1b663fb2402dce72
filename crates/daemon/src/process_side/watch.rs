//! The process watcher: learns a new process's sockets from the process side, while it lives.
//!
//! Capture is batched, so a process that lives 5 ms may be gone before its first packet is
//! read; by then its sockets have left the kernel's tables. The watcher listens to the
//! kernel's process-event connector and, after every `exec`, looks at the new process's fds
//! often while it is young (every 250 µs for its first 10 ms, then after 1, 2, 4 … 128 ms).
//! A socket fd it has not seen is read from the socket itself (`pidfd_getfd`, then
//! `getsockname`/`getpeername`: microseconds, so a socket that lives a millisecond is
//! still caught), and sent with the process's identity and facts to the refresher, which
//! keeps it (like a recently closed socket) for the grace period: packets read later are
//! credited to the right process even after it exited.
//!
//! Runs on its own thread. Bounded: at most `MAX_WATCHED` processes are watched at once (the
//! oldest dropped); the channel to the refresher drops what does not fit. Processes of
//! every network namespace are watched; their sockets are labelled with the namespace the
//! process was in at its last exec (read afresh at each exec: `ip netns exec` moves a process
//! and execs again). A process gone before its namespace was read is
//! [`NetNsId::UNPLACED`](pidcap_core::NetNsId::UNPLACED).

use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{LookSchedule, NetNsId, ProcessInfo, ProcessKey, SocketEntry, FORK_WINDOW};
use pidcap_sockets::trace::instant_of;
use pidcap_sockets::{ProcEvent, ProcEvents, ProcRoot, ProcessHandle};
use pidcap_wire::IpProto;
use tracing::{debug, warn};

use crate::inbox::{Learned, MissSignal, News};
use crate::process_side::facts::{Known, ProcessFacts};
use crate::process_side::holders::Holders;

/// Processes watched at once (when looks are due: `pidcap_core::LookSchedule`).
const MAX_WATCHED: usize = 4096;
/// The longest wait for process events (how quickly `stop` is noticed).
const MAX_WAIT: Duration = Duration::from_millis(100);

/// How long a process must have lived before the connected non-TCP sockets it inherited
/// (that its parent holds too) are reported as held by it: a child that lives less (a
/// shell's `$(…)`, a helper that execs with leaked fds) never becomes their newest holder,
/// so its parent's datagrams are not credited to it in the moments before its exit reaches
/// the table (README rule 4). The young looks go on this long.
pub const INHERITED_SETTLE: Duration = pidcap_core::YOUNG_FOR;

/// Whether the missing-privilege warning was given (once per daemon).
static DENIED_WARNED: AtomicBool = AtomicBool::new(false);

struct Watched {
    handle: ProcessHandle,
    info: ProcessInfo,
    /// The network namespace the process was in at its exec: its sockets are that one's.
    netns: NetNsId,
    /// Socket inodes already read (IP sockets sent, others ignored).
    done: HashSet<u64>,
    /// Whether its fds were read since its exec: what the first read finds was there at
    /// the exec, most likely inherited from its parent.
    looked: bool,
    /// When it was first watched (its exec, as read).
    since: Instant,
    /// Connected non-TCP sockets it had at its exec that its parent holds too: reported
    /// only once it has lived [`INHERITED_SETTLE`] (see [`Watcher::inherited`]).
    deferred: Vec<SocketEntry>,
}

/// A new process's parent and the socket inodes it holds (none when not read).
#[derive(Debug, Default)]
struct Parents {
    pid: Option<u32>,
    inodes: HashSet<u64>,
}

impl Parents {
    /// Whether `socket` is connected and the parent holds it too: inherited at fork.
    fn holds(&self, socket: &SocketEntry) -> bool {
        !socket.is_wildcard_remote() && self.inodes.contains(&socket.inode)
    }
}

/// Takes out of `found` the connected non-TCP sockets the parent holds too (TCP ones stay:
/// their claims decide, README rule 4).
fn take_inherited(found: &mut Vec<SocketEntry>, parents: &Parents) -> Vec<SocketEntry> {
    let (inherited, own): (Vec<_>, Vec<_>) = found
        .drain(..)
        .partition(|s| s.proto != IpProto::Tcp && parents.holds(s));
    *found = own;
    inherited
}

#[derive(Debug)]
pub struct Watcher {
    pub events: ProcEvents,
    pub proc: ProcRoot,
    pub netns: NetNsId,
    pub learned: SyncSender<News>,
    pub wake: MissSignal,
    pub stop: Arc<AtomicBool>,
    /// Every new process's facts, recorded at exec for the socket tracer.
    pub facts: ProcessFacts,
    /// For the heartbeat the watchdog reads.
    pub shared: Arc<crate::state::DaemonState>,
    /// Processes whose sockets were sent to the refresher, to be reported at their exit (at
    /// most `MAX_REPORTED` (65,536); beyond, full fd scans alone correct those holders).
    /// (Shared with the socket tracer, which tells of holders too.)
    pub reported: Holders,
    /// Network namespaces already told to the refresher (at most `MAX_REPORTED`).
    pub namespaces_told: HashSet<NetNsId>,
    /// Processes that forked within the last [`FORK_WINDOW`], and when each last did (at
    /// most `MAX_REPORTED`): reported with their sockets (the child holds them too).
    pub forks: HashMap<u32, Instant>,
}

/// When a process event happened: the kernel's time `at_ns` (`CLOCK_MONOTONIC`), never
/// later than `now`, when it was read; `now` when the kernel gave none.
fn event_time(at_ns: u64, now: Instant) -> Instant {
    match at_ns {
        0 => now,
        ns => instant_of(ns).min(now),
    }
}

/// Processes remembered for the report of their exit.
const MAX_REPORTED: usize = 65_536;

impl Watcher {
    pub fn run(mut self) {
        let mut due = LookSchedule::new(MAX_WATCHED);
        let mut watched: HashMap<u32, Watched> = HashMap::new();
        let mut events = Vec::new();
        let mut fds = Vec::new();
        let mut failing = false;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.shared.beat_worker(crate::state::Worker::Watch, now);
            crate::fault::stall_point("watch", &self.stop);
            let wait = due.wait(now, MAX_WAIT);
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
                match event {
                    ProcEvent::Exec { pid } => self.watch(&mut due, &mut watched, pid),
                    ProcEvent::Exit { pid, at_ns, .. } => {
                        watched.remove(&pid);
                        due.forget(pid);
                        let now = Instant::now();
                        self.facts.exited(pid, now);
                        // When it exited (the kernel's time), not when that was read: a
                        // socket it held answers for no packet captured after.
                        let at = event_time(at_ns, now);
                        self.report_exit(pid, at);
                    }
                    ProcEvent::Fork {
                        parent_pid,
                        child_pid,
                        at_ns,
                    } => {
                        let at = event_time(at_ns, Instant::now());
                        self.facts.forked(parent_pid, child_pid, at);
                        self.forked(parent_pid, at);
                    }
                }
            }
            self.look_at_due(&mut due, &mut watched, &mut fds);
        }
    }

    /// Starts (or restarts, after a new exec) watching `pid`. An exec replaces the program
    /// and may follow a `setns` (`ip netns exec`): the facts and the namespace are read
    /// afresh, and a watch of the previous program ends.
    fn watch(&mut self, due: &mut LookSchedule, watched: &mut HashMap<u32, Watched>, pid: u32) {
        watched.remove(&pid);
        let before = self.facts.get(pid);
        // Known since its last fork: this exec is its second (or later), perhaps after a
        // `setns`; a namespace that can no longer be read is not assumed to be the old one.
        let unreadable = match before {
            Known::Process(..) => NetNsId::UNPLACED,
            Known::Unknown => self.netns,
        };
        let Known::Process(info, netns) =
            self.facts.read(&self.proc, unreadable, pid, Instant::now())
        else {
            // Gone before this exec was read: if it had moved, its namespace is lost.
            if let Known::Process(old, from) = self.facts.unplace(pid) {
                self.moved(old.key, from, NetNsId::UNPLACED);
            }
            return;
        };
        if let Known::Process(old, from) = before {
            if old.key == info.key {
                self.moved(info.key, from, netns);
            }
        }
        self.note_namespace(netns, pid);
        let Ok(handle) = ProcessHandle::open(pid) else {
            return; // already gone
        };
        if let Some(dropped) = due.start(pid, Instant::now()) {
            watched.remove(&dropped);
        }
        let w = Watched {
            handle,
            info,
            netns,
            done: HashSet::new(),
            looked: false,
            since: Instant::now(),
            deferred: Vec::new(),
        };
        watched.insert(pid, w);
    }

    /// Looks at every process whose turn has come and schedules its next look.
    fn look_at_due(
        &mut self,
        due: &mut LookSchedule,
        watched: &mut HashMap<u32, Watched>,
        fds: &mut Vec<(RawFd, u64)>,
    ) {
        let now = Instant::now();
        for pid in due.take_due(now) {
            let keep = match watched.get_mut(&pid) {
                Some(w) => self.look(pid, w, fds) && due.looked(pid, now),
                None => false,
            };
            if !keep {
                watched.remove(&pid);
                due.forget(pid);
            }
        }
    }

    /// Reads the sockets `pid` opened since the last look; false once it is gone.
    fn look(&mut self, pid: u32, w: &mut Watched, fds: &mut Vec<(RawFd, u64)>) -> bool {
        fds.clear();
        if self.proc.socket_fds_of(pid, fds).is_err() {
            return false;
        }
        let mut found = Vec::new();
        for &(fd, inode) in fds.iter() {
            if w.done.contains(&inode) {
                continue;
            }
            match w.handle.ip_socket(fd, inode, w.info.uid, w.netns) {
                Ok(Some(entry)) => {
                    w.done.insert(inode);
                    found.push(entry);
                }
                Ok(None) => {} // not IP, or not bound yet: look again next time
                Err(error) if error.is_not_found() => return false,
                Err(error) if error.is_permission_denied() => {
                    if !DENIED_WARNED.swap(true, Ordering::Relaxed) {
                        warn!(error = %error, "cannot read new processes' sockets (pidfd_getfd needs CAP_SYS_PTRACE and, under systemd, SystemCallFilter=pidfd_getfd); short-lived processes may go to unknown (reported once)");
                    }
                    return false;
                }
                Err(error) => debug!(pid, fd, error = %error, "cannot read a new process's socket"),
            }
        }
        let first_look = !std::mem::replace(&mut w.looked, true);
        if first_look && !found.is_empty() {
            let parents = self.parent_sockets(pid, &found);
            self.shared_with_parent(pid, &found, &parents);
            w.deferred = take_inherited(&mut found, &parents);
        }
        if !w.deferred.is_empty() && w.since.elapsed() >= INHERITED_SETTLE {
            debug!(
                pid,
                sockets = w.deferred.len(),
                "a process that lived on holds what it inherited"
            );
            found.append(&mut w.deferred);
        }
        if !found.is_empty() {
            debug!(pid, sockets = found.len(), comm = %w.info.comm, "learned sockets of a new process");
            let learned = Learned {
                sockets: found,
                info: w.info.clone(),
                seen: Instant::now(),
            };
            self.report(pid, learned);
        }
        true
    }

    /// The connected TCP sockets `pid` had at its exec (`found` at its first look) that its
    /// parent holds too: inherited, not opened. The parent is reported holding them, so the
    /// connection's claims can tell which of the two uses it (README rule 4: a parent that
    /// goes on writing while a child that inherited the socket idles is the one credited).
    fn shared_with_parent(&mut self, pid: u32, found: &[SocketEntry], parents: &Parents) {
        let Some(parent) = parents.pid else {
            return;
        };
        let shared: Vec<SocketEntry> = found
            .iter()
            .filter(|s| s.proto == IpProto::Tcp && parents.holds(s))
            .copied()
            .collect();
        if shared.is_empty() {
            return;
        }
        let now = Instant::now();
        let Known::Process(info, _) = self.facts.get_or_read(&self.proc, self.netns, parent, now)
        else {
            return;
        };
        debug!(
            pid,
            parent,
            sockets = shared.len(),
            "a new process shares its parent's sockets"
        );
        let learned = Learned {
            sockets: shared,
            info,
            seen: now,
        };
        self.report(parent, learned);
    }

    /// The parent of `pid` and the socket inodes it holds, read only when `found` (what
    /// `pid` had at its exec) has a connected socket: those may be inherited.
    fn parent_sockets(&self, pid: u32, found: &[SocketEntry]) -> Parents {
        let mut parents = Parents::default();
        if !found.iter().any(|s| !s.is_wildcard_remote()) {
            return parents;
        }
        let Ok(parent) = self.proc.parent_pid(pid) else {
            return parents;
        };
        let mut fds = Vec::new();
        if parent <= 1 || self.proc.socket_fds_of(parent, &mut fds).is_err() {
            return parents;
        }
        parents.pid = Some(parent);
        parents.inodes = fds.into_iter().map(|(_, inode)| inode).collect();
        parents
    }

    /// Sends what `pid` was seen holding, and remembers it to report its exit. A fork of
    /// `pid` within the last [`FORK_WINDOW`] goes first: its child may hold these sockets
    /// too, and no table is to have them without it.
    fn report(&mut self, pid: u32, learned: Learned) {
        let (key, uid) = (learned.info.key, learned.info.uid);
        let fork = self.forks.get(&pid).copied();
        if let Some(at) = fork.filter(|at| at.elapsed() < FORK_WINDOW) {
            debug!(pid, ago = ?at.elapsed(), "a process that forked holds sockets");
            self.send(News::Forked { pid, at });
        }
        self.send(learned.into());
        // After the sockets: the refresher never reads the exit before them.
        self.reported.note(key, uid);
    }

    /// `pid` forked at `at`: told to the refresher when it was reported holding sockets
    /// (its child holds them too: `pidcap_core::SocketTable::with_forks`), and kept for
    /// [`FORK_WINDOW`] in case it is reported later.
    fn forked(&mut self, pid: u32, at: Instant) {
        if self.forks.len() >= MAX_REPORTED {
            let now = Instant::now();
            self.forks
                .retain(|_, at| now.saturating_duration_since(*at) < FORK_WINDOW);
            if self.forks.len() >= MAX_REPORTED {
                self.forks.clear();
            }
        }
        self.forks.insert(pid, at);
        if self.reported.contains(pid) {
            debug!(pid, ago = ?at.elapsed(), "a process seen holding sockets forked");
            self.send(News::Forked { pid, at });
        }
    }

    /// Tells the refresher about a network namespace it has not been told of (the first
    /// process seen in it), so its addresses are known before its traffic comes.
    /// Claims the tracer filed under the namespace a process was in at its previous exec
    /// follow it to the one it is in now (or to none known).
    fn moved(&mut self, key: ProcessKey, from: NetNsId, to: NetNsId) {
        if from != to {
            self.send(News::Moved { key, from, to });
        }
    }

    fn note_namespace(&mut self, netns: NetNsId, pid: u32) {
        if netns == self.netns
            || netns == NetNsId::UNPLACED
            || self.namespaces_told.contains(&netns)
        {
            return;
        }
        if self.namespaces_told.len() >= MAX_REPORTED {
            self.namespaces_told.clear();
        }
        self.namespaces_told.insert(netns);
        self.send(News::Namespace { netns, pid });
    }

    /// Tells the refresher that a process it was told holds sockets has exited: it holds
    /// nothing now (a child that inherited a socket must not stay its newest holder).
    fn report_exit(&mut self, pid: u32, at: Instant) {
        if let Some((key, uid)) = self.reported.take(pid) {
            self.send(News::Exited { key, uid, at });
        }
    }

    /// Queues `news` for the refresher (counting a drop when its queue is full) and wakes it.
    fn send(&self, news: News) {
        if self.learned.try_send(news).is_err() {
            self.shared.process_side().learned_dropped += 1;
        }
        self.wake.request();
    }
}

#[cfg(test)]
mod tests {
    use pidcap_core::TcpState;

    use super::*;

    fn socket(proto: IpProto, remote: &str, inode: u64) -> SocketEntry {
        SocketEntry {
            netns: NetNsId(1),
            proto,
            local: "127.0.0.1:4000".parse().unwrap(),
            remote: remote.parse().unwrap(),
            state: TcpState::Established,
            inode,
            uid: 0,
        }
    }

    #[test]
    fn only_connected_non_tcp_sockets_the_parent_holds_are_deferred() {
        let parents = Parents {
            pid: Some(1),
            inodes: HashSet::from([1, 2, 3]),
        };
        let mut found = vec![
            socket(IpProto::Udp, "127.0.0.1:53", 1), // inherited: deferred
            socket(IpProto::Tcp, "127.0.0.1:80", 2), // TCP: its claims decide
            socket(IpProto::Udp, "0.0.0.0:0", 3),    // not connected: a listener
            socket(IpProto::Udp, "127.0.0.1:53", 4), // its own: the parent does not hold it
        ];
        let deferred = take_inherited(&mut found, &parents);
        let inodes = |v: &[SocketEntry]| v.iter().map(|s| s.inode).collect::<Vec<_>>();
        assert_eq!(inodes(&deferred), [1]);
        assert_eq!(inodes(&found), [2, 3, 4]);
        let unread = Parents::default();
        let mut found = vec![socket(IpProto::Udp, "127.0.0.1:53", 1)];
        assert!(
            take_inherited(&mut found, &unread).is_empty(),
            "no parent read: none"
        );
    }
}
