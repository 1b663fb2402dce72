//! Who a pid is (or was): process facts shared by the process watcher and the socket tracer.
//!
//! The tracer learns "pid P used connection C" a few milliseconds after the fact; a process
//! that lives 5 ms is gone by then, and `/proc/P` with it. The watcher records every new
//! process's facts at `exec` and marks them at `exit`; the tracer reads them here, or from
//! `/proc` for a process older than the daemon, and records those too.
//!
//! Invariants: an entry describes the process that holds the pid now, or the last one that
//! held it for [`KEEP_EXITED`] after its exit. A `fork` forgets what was known about the child's
//! pid (a reused pid never inherits a dead process's identity). At most [`MAX_FACTS`] entries
//! holding at most [`MAX_FACTS_BYTES`] of strings (command lines are already cut at
//! `pidcap_sockets::process::CMDLINE_LIMIT`); when either bound is reached, exited processes
//! go first, then the table is emptied (facts are re-read), and [`ProcessFacts::evictions`]
//! counts it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pidcap_core::{NetNsId, ProcessInfo};
use pidcap_sockets::ProcRoot;

/// How long an exited process's facts stay readable.
pub const KEEP_EXITED: Duration = Duration::from_secs(30);
/// Processes remembered at once.
pub const MAX_FACTS: usize = 65_536;
/// Heap bytes of the facts remembered at once (comm, exe, command line): about 32 MiB, so
/// about 4,000 processes with the longest command lines and executable paths, or every one
/// of [`MAX_FACTS`] ordinary ones (a few hundred bytes each).
pub const MAX_FACTS_BYTES: usize = 32 << 20;

#[derive(Debug, Clone)]
struct Fact {
    info: ProcessInfo,
    /// The network namespace the process was in when its facts were read.
    netns: NetNsId,
    exited: Option<Instant>,
}

/// See the module doc. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ProcessFacts {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<u32, Fact>,
    /// Sum of the heap bytes of `map`'s facts.
    bytes: usize,
    pruned: Option<Instant>,
    /// Times the bounds made the table drop live or exited entries early.
    evictions: u64,
    /// Forks not yet taken ([`ProcessFacts::take_forks`]): the parent and when, the oldest
    /// dropped beyond [`FORKS_KEPT`].
    forks: VecDeque<(u32, Instant)>,
}

/// Forks kept for the socket tracer between its rounds (a few milliseconds).
const FORKS_KEPT: usize = 4096;

impl Fact {
    fn heap_bytes(&self) -> usize {
        self.info.heap_bytes()
    }
}

impl Inner {
    fn insert(&mut self, pid: u32, fact: Fact) {
        self.bytes += fact.heap_bytes();
        if let Some(old) = self.map.insert(pid, fact) {
            self.bytes -= old.heap_bytes();
        }
    }

    fn remove(&mut self, pid: u32) {
        if let Some(old) = self.map.remove(&pid) {
            self.bytes -= old.heap_bytes();
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&Fact) -> bool) {
        let mut bytes = self.bytes;
        self.map.retain(|_, f| {
            let kept = keep(f);
            if !kept {
                bytes -= f.heap_bytes();
            }
            kept
        });
        self.bytes = bytes;
    }

    /// Makes room for a fact of `incoming` bytes: exited processes go first, then everything.
    fn make_room(&mut self, incoming: usize) {
        let full = |i: &Inner| i.map.len() >= MAX_FACTS || i.bytes + incoming > MAX_FACTS_BYTES;
        if !full(self) {
            return;
        }
        self.evictions += 1;
        self.retain(|f| f.exited.is_none());
        if full(self) {
            self.map.clear();
            self.bytes = 0;
        }
    }
}

/// What is known about a pid.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    /// A process (possibly exited), and the network namespace it is in: its sockets are that
    /// namespace's.
    Process(ProcessInfo, NetNsId),
    /// Nothing.
    Unknown,
}

impl ProcessFacts {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the process now holding `pid`, in network namespace `netns`.
    pub fn record(&self, pid: u32, info: ProcessInfo, netns: NetNsId, now: Instant) {
        let mut inner = self.inner();
        prune(&mut inner, now);
        inner.remove(pid);
        let fact = Fact {
            info,
            netns,
            exited: None,
        };
        inner.make_room(fact.heap_bytes());
        inner.insert(pid, fact);
    }

    /// The process holding `pid` exited.
    pub fn exited(&self, pid: u32, now: Instant) {
        if let Some(f) = self.inner().map.get_mut(&pid) {
            f.exited.get_or_insert(now);
        }
    }

    /// `parent` forked at `at`, and the new process got `pid`: forget the previous holder
    /// of `pid`, and note the fork for [`ProcessFacts::take_forks`].
    pub fn forked(&self, parent: u32, pid: u32, at: Instant) {
        let mut inner = self.inner();
        inner.remove(pid);
        if inner.forks.len() == FORKS_KEPT {
            inner.forks.pop_front();
        }
        inner.forks.push_back((parent, at));
    }

    /// The forks noted since the last call (parent, when), oldest first.
    pub fn take_forks(&self) -> Vec<(u32, Instant)> {
        self.inner().forks.drain(..).collect()
    }

    /// Reads who holds `pid` now, and its network namespace, from `/proc` and records it. A
    /// process whose namespace cannot be read but whose stat can is exiting or a zombie:
    /// taken as in `unreadable` (the daemon's own namespace, or
    /// [`NetNsId::UNPLACED`] for a process that exec'd again and may have moved).
    /// `Unknown`: gone.
    pub fn read(&self, proc: &ProcRoot, unreadable: NetNsId, pid: u32, now: Instant) -> Known {
        let netns = proc.netns_of(pid).unwrap_or(unreadable);
        match proc.process(pid) {
            Ok(info) => {
                self.record(pid, info.clone(), netns, now);
                Known::Process(info, netns)
            }
            Err(_) => Known::Unknown,
        }
    }

    /// What is recorded about `pid`, or else what [`ProcessFacts::read`] finds.
    pub fn get_or_read(&self, proc: &ProcRoot, home: NetNsId, pid: u32, now: Instant) -> Known {
        match self.get(pid) {
            Known::Unknown => self.read(proc, home, pid, now),
            known => known,
        }
    }

    /// The process holding `pid` exec'd again but was gone before its namespace was read:
    /// it may have moved (`setns`, then exec), so its namespace is no longer known. Returns
    /// the facts as they were.
    pub fn unplace(&self, pid: u32) -> Known {
        let mut inner = self.inner();
        match inner.map.get_mut(&pid) {
            Some(f) => {
                let before = Known::Process(f.info.clone(), f.netns);
                f.netns = NetNsId::UNPLACED;
                before
            }
            None => Known::Unknown,
        }
    }

    /// When the process recorded for `pid` exited, if it did (as the watcher read it).
    pub fn exited_at(&self, pid: u32) -> Option<Instant> {
        self.inner().map.get(&pid).and_then(|f| f.exited)
    }

    pub fn get(&self, pid: u32) -> Known {
        match self.inner().map.get(&pid) {
            Some(f) => Known::Process(f.info.clone(), f.netns),
            None => Known::Unknown,
        }
    }

    pub fn len(&self) -> usize {
        self.inner().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held by the facts, at most [`MAX_FACTS_BYTES`].
    pub fn bytes(&self) -> usize {
        self.inner().bytes
    }

    /// Times a bound made the table forget facts early (see the module doc).
    pub fn evictions(&self) -> u64 {
        self.inner().evictions
    }

    /// Entries, heap bytes and evictions, read together (for `stats`).
    pub fn usage(&self) -> FactsUsage {
        let inner = self.inner();
        FactsUsage {
            entries: inner.map.len(),
            bytes: inner.bytes,
            evictions: inner.evictions,
        }
    }
}

/// What [`ProcessFacts::usage`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactsUsage {
    pub entries: usize,
    pub bytes: usize,
    pub evictions: u64,
}

/// Forgets processes that exited over [`KEEP_EXITED`] ago; at most once a second.
fn prune(inner: &mut Inner, now: Instant) {
    if inner
        .pruned
        .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
    {
        return;
    }
    inner.pruned = Some(now);
    inner.retain(|f| {
        f.exited
            .is_none_or(|at| now.saturating_duration_since(at) < KEEP_EXITED)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidcap_core::ProcessKey;

    const HOME: NetNsId = NetNsId(4026531840);
    const GUEST: NetNsId = NetNsId(4026532001);

    fn info(pid: u32, start: u64) -> ProcessInfo {
        ProcessInfo {
            key: ProcessKey {
                pid,
                start_time: start,
            },
            comm: format!("p{pid}"),
            exe: None,
            uid: 0,
            cmdline: Vec::new(),
            placement: Default::default(),
        }
    }

    #[test]
    fn exited_processes_stay_known_for_a_while_then_go() {
        let facts = ProcessFacts::default();
        let t0 = Instant::now();
        facts.record(10, info(10, 1), HOME, t0);
        facts.exited(10, t0);
        assert_eq!(facts.get(10), Known::Process(info(10, 1), HOME));
        facts.record(11, info(11, 1), GUEST, t0 + KEEP_EXITED);
        assert_eq!(facts.get(10), Known::Unknown);
        assert_eq!(facts.get(11), Known::Process(info(11, 1), GUEST));
    }

    /// A process gone before its second exec was read may have moved: its facts stay, its
    /// namespace becomes unplaced; a pid nobody recorded stays unknown.
    #[test]
    fn unplacing_keeps_who_it_was_and_forgets_where() {
        let facts = ProcessFacts::default();
        let t0 = Instant::now();
        facts.record(10, info(10, 1), HOME, t0);
        assert_eq!(facts.unplace(10), Known::Process(info(10, 1), HOME));
        assert_eq!(
            facts.get(10),
            Known::Process(info(10, 1), NetNsId::UNPLACED)
        );
        assert_eq!(facts.unplace(11), Known::Unknown);
        assert_eq!(facts.get(11), Known::Unknown);
    }

    #[test]
    fn a_fork_forgets_the_previous_holder_of_the_pid() {
        let facts = ProcessFacts::default();
        let t0 = Instant::now();
        facts.record(10, info(10, 1), HOME, t0);
        facts.exited(10, t0);
        facts.forked(1, 10, t0);
        assert_eq!(facts.get(10), Known::Unknown);
    }

    #[test]
    fn forks_are_taken_once_in_order_and_bounded() {
        let facts = ProcessFacts::default();
        let t0 = Instant::now();
        facts.forked(1, 10, t0);
        facts.forked(2, 11, t0 + Duration::from_millis(1));
        assert_eq!(
            facts.take_forks(),
            vec![(1, t0), (2, t0 + Duration::from_millis(1))]
        );
        assert!(facts.take_forks().is_empty());
        for pid in 0..FORKS_KEPT as u32 + 5 {
            facts.forked(pid, pid + 1, t0);
        }
        let kept = facts.take_forks();
        assert_eq!(kept.len(), FORKS_KEPT);
        assert_eq!(kept[0].0, 5, "the oldest are dropped");
    }

    fn hog(pid: u32) -> ProcessInfo {
        ProcessInfo {
            exe: Some("/x".repeat(2048)),
            cmdline: vec!["a".repeat(pidcap_sockets::process::CMDLINE_LIMIT)],
            ..info(pid, 1)
        }
    }

    /// Issue #9: hostile processes (long executable paths, huge argv) must not grow the
    /// daemon without bound; the byte budget holds and evictions are counted.
    #[test]
    fn the_facts_stay_within_their_byte_budget() {
        let facts = ProcessFacts::default();
        let t0 = Instant::now();
        let per_hog = hog(0).heap_bytes();
        let hogs = 3 * MAX_FACTS_BYTES / per_hog;
        for pid in 0..hogs as u32 {
            facts.record(pid, hog(pid), HOME, t0);
            facts.exited(pid, t0);
            assert!(facts.bytes() <= MAX_FACTS_BYTES, "{}", facts.bytes());
        }
        assert!(facts.evictions() >= 2, "{}", facts.evictions());
        // The most recent one is still known; the byte count matches what is held.
        let last = hogs as u32 - 1;
        assert_eq!(facts.get(last), Known::Process(hog(last), HOME));
        let held: usize = facts.inner().map.values().map(Fact::heap_bytes).sum();
        assert_eq!(held, facts.bytes());
    }

    #[test]
    fn replacing_and_forgetting_keep_the_byte_count_exact() {
        let facts = ProcessFacts::default();
        let t0 = Instant::now();
        facts.record(1, hog(1), HOME, t0);
        facts.record(1, info(1, 2), HOME, t0);
        assert_eq!(facts.bytes(), info(1, 2).heap_bytes());
        facts.forked(0, 1, Instant::now());
        assert_eq!(facts.bytes(), 0);
        facts.record(2, hog(2), HOME, t0);
        facts.exited(2, t0);
        facts.record(3, info(3, 1), GUEST, t0 + KEEP_EXITED);
        assert_eq!(facts.bytes(), info(3, 1).heap_bytes());
    }

    #[test]
    fn the_table_is_bounded() {
        let facts = ProcessFacts::default();
        let t0 = Instant::now();
        for pid in 0..(MAX_FACTS as u32 + 10) {
            facts.record(pid, info(pid, 1), HOME, t0);
            assert!(facts.len() <= MAX_FACTS);
        }
    }
}
