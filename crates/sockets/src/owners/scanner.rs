//! [`OwnerScanner`]: the socket-inode → process map, read cheaply and kept open between
//! passes.
//!
//! The scanner opens the proc root once and works relative to that directory fd:
//! `getdents64` lists it (and each `<pid>/fd`) into one reused buffer, `openat` opens
//! `<pid>` and then `fd` under it, and `readlinkat` reads each fd link into a fixed
//! 64-byte array. A link is rejected by its `socket:[` prefix before any number is parsed.
//! Process facts are read, through the same `<pid>` directory fd (so a reused pid cannot mix
//! two processes), only for processes that hold a socket the caller cares about.
//!
//! Invariants:
//! - No allocation per fd: a pass allocates per process that holds sockets (its facts, one
//!   map entry) and per distinct socket (its holder list), never per fd read.
//! - No socket or process data is kept between calls; only the root fd and the buffers are.
//! - Races are counted, never errors and never logged per event, exactly as in
//!   [`ProcRoot::scan_socket_owners`]: a process that exits (`ENOENT`/`ESRCH`) is `vanished`,
//!   one whose fds may not be read (`EACCES`/`EPERM`; pid 1 in some sandboxes even for root)
//!   is `permission_denied`, an fd closed between listing and reading is skipped. Any other
//!   system error fails the call.
//! - Threads are not visited: `getdents64` on the proc root lists thread-group leaders only,
//!   and threads share their leader's fd table.
//!
//! Nothing here panics on what the kernel (or a fixture) returns.

mod dir;
mod facts;
mod order;

use std::collections::HashMap;
use std::fmt;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;

use pidcap_core::ProcessInfo;
use rustix::fs::{fstat, open, statat, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::owners::fds::{tolerate, OwnerScan, ScanStats};
use crate::processes::pidfd::quiet_fds_of;
use crate::root::ProcRoot;
use dir::{PidName, LINK_BUFFER};

/// Keeps /proc open and scans it cheaply: getdents64 on directory fds, openat/readlinkat
/// relative to them, one reused buffer for link targets, non-socket links rejected by their
/// "socket:[" prefix before any parsing.
///
/// Blocking; holds one open directory fd and about 20 KiB of buffers. Not `Sync` by design:
/// one scanner per thread (it is `Send`).
pub struct OwnerScanner {
    root: ProcRoot,
    /// The proc root, opened once; rewound before each listing.
    proc_dir: OwnedFd,
    /// `getdents64` output, for the root and each fd directory in turn.
    dents: Vec<MaybeUninit<u8>>,
    /// One fd link target.
    link: [u8; LINK_BUFFER],
    /// One process file (`stat`, `status`, `cmdline`, `loadavg`) at a time.
    file: Vec<u8>,
    /// The pids of the current pass.
    pids: Vec<u32>,
    /// Pids put off to the second group of a resolution.
    deferred: Vec<u32>,
    /// Pids a resolution has dealt with before listing the root.
    probed: Vec<u32>,
    /// Socket inodes of the process being read.
    inodes: Vec<u64>,
    /// Facts of the socket holders of the last full pass, by pid: a holder whose `stat`
    /// still shows the same start time and `comm` is not re-read (its status, cmdline and
    /// exe are taken from here). A uid change without an exec is missed until it exits.
    known: HashMap<u32, ProcessInfo>,
}

/// What one [`OwnerScanner::resolve`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolveStats {
    /// Processes whose fds were read (or tried: vanished and forbidden ones count).
    pub processes_visited: u64,
    /// Distinct wanted inodes for which a holder was found.
    pub found: u64,
    /// Distinct wanted inodes that no visited process holds.
    pub missing: u64,
}

impl fmt::Debug for OwnerScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerScanner")
            .field("root", &self.root)
            .field("proc_dir", &self.proc_dir)
            .finish_non_exhaustive()
    }
}

impl OwnerScanner {
    /// Opens the proc root. [`Error::NotFound`] if it does not exist.
    pub fn open(root: &ProcRoot) -> Result<OwnerScanner> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let proc_dir = open(root.path(), flags, Mode::empty())
            .map_err(|e| Error::from_io(root.path(), e.into()))?;
        Ok(OwnerScanner {
            root: root.clone(),
            proc_dir,
            dents: dir::dents_buffer(),
            link: [0; LINK_BUFFER],
            file: Vec::with_capacity(4096),
            pids: Vec::new(),
            deferred: Vec::new(),
            probed: Vec::with_capacity(PROBE_WINDOW as usize),
            inodes: Vec::new(),
            known: HashMap::new(),
        })
    }

    /// A full pass; same result as ProcRoot::scan_socket_owners (tested equal on live /proc
    /// and on a fixture root).
    pub fn scan_all(&mut self) -> Result<OwnerScan> {
        let mut scan = OwnerScan::default();
        self.list_pids()?;
        for index in 0..self.pids.len() {
            let pid = self.pids[index];
            scan.stats.processes_scanned += 1;
            let listed = self.read_socket_fds(pid, &mut scan.stats);
            let Some(pid_dir) = tolerate(listed, pid, &mut scan.stats)? else {
                continue;
            };
            if let Some(info) = self.holder_facts(&pid_dir, pid, &mut scan.stats)? {
                record_all(&self.inodes, info, &mut scan);
            }
        }
        tracing::debug!(stats = ?scan.stats, sockets = scan.holders.len(), "socket owner scan");
        self.known = scan
            .processes
            .values()
            .map(|info| (info.key.pid, info.clone()))
            .collect();
        Ok(scan)
    }

    /// Targeted resolution of socket inodes not yet known: visits processes in the order most
    /// likely to hold them — those whose `/proc/<pid>` owner uid is in `uids` first, then the
    /// rest; within each group newest first — reading only fd links, and stops as soon as
    /// every inode in `wanted` has at least one holder. Fills holders and process facts for
    /// what it found into `into` (merging, not replacing). Returns how many processes it
    /// visited.
    ///
    /// Newest first: highest pid first, corrected for wrap-around with the last pid handed
    /// out (the last field of `<root>/loadavg`): pids at or below it come first, descending,
    /// then those above it, descending. Without a readable `loadavg` it is plain highest pid
    /// first, which after a wrap visits the newest (low-pid) processes late — still correct,
    /// only slower.
    ///
    /// Listing a root of 1,000 processes costs about 1.7 ms of kernel time, more than
    /// visiting a few processes, so when the last pid is known the `PROBE_WINDOW` (64) pids at
    /// and below it are first opened directly, newest first, without a listing; a pid that
    /// is unused is skipped, and one that is a thread rather than a process (its `status`
    /// shows another `Tgid`) is left alone: threads are never visited. Only if something is
    /// still missing is the root listed, and the visit goes on, in the same order, with the
    /// processes not dealt with yet. This assumes the root is procfs of
    /// the reader's pid namespace (as `loadavg` is); for another root a wrong last pid only
    /// changes the order, never the result. A pid in the window whose `status` shows no `Tgid`
    /// (not seen on any kernel) is left to the listing phase.
    ///
    /// The owner uid of `/proc/<pid>` is the process's effective uid (root for a
    /// non-dumpable process); it costs one `stat` per process, and is read only when `uids`
    /// is not empty. With `uids` empty every process is in one group.
    ///
    /// Only the wanted inodes are recorded (a visited process's other sockets are not: their
    /// holder lists would be partial). A holder already listed in `into` is not listed twice;
    /// facts already in `into` are kept. `into.stats` accumulates the counters of the
    /// processes this call visited.
    pub fn resolve(
        &mut self,
        wanted: &[u64],
        uids: &[u32],
        into: &mut OwnerScan,
    ) -> Result<ResolveStats> {
        let mut search = Search::new(wanted);
        let mut stats = ResolveStats::default();
        self.deferred.clear();
        let last_pid = if search.pending > 0 {
            self.last_pid()
        } else {
            None
        };
        self.probed.clear();
        if let Some(last) = last_pid {
            self.probe_newest(last, uids, &mut search, into, &mut stats)?;
        }
        if search.pending > 0 {
            self.list_pids()?;
            let probed = &self.probed;
            self.pids.retain(|pid| !probed.contains(pid));
            order::newest_first(&mut self.pids, last_pid);
            self.visit_likely_holders(uids, &mut search, into, &mut stats)?;
        }
        stats.missing = search.pending as u64;
        stats.found = search.wanted.len() as u64 - stats.missing;
        tracing::debug!(
            visited = stats.processes_visited,
            found = stats.found,
            missing = stats.missing,
            "socket owner resolution"
        );
        Ok(stats)
    }

    /// Opens the `PROBE_WINDOW` (64) pids at and below `last` directly, newest first, visiting
    /// the processes (not threads) among them owned by one of `uids` and deferring the
    /// others. Records in `self.probed` the pids the listing phase must skip: those visited,
    /// deferred, or found gone or forbidden (counted once).
    fn probe_newest(
        &mut self,
        last: u32,
        uids: &[u32],
        search: &mut Search,
        into: &mut OwnerScan,
        stats: &mut ResolveStats,
    ) -> Result<()> {
        let window = last.saturating_sub(PROBE_WINDOW - 1).max(1)..=last;
        for pid in window.rev() {
            if search.pending == 0 {
                break;
            }
            let Some(pid_dir) = self.open_process(pid, &mut into.stats)? else {
                continue;
            };
            self.probed.push(pid);
            match owned_by(&pid_dir, pid, uids, self.root.path(), &mut into.stats)? {
                Some(true) => self.visit(pid, Some(pid_dir), search, into, stats)?,
                Some(false) => self.deferred.push(pid),
                None => {} // exited or off limits: counted
            }
        }
        Ok(())
    }

    /// `<root>/<pid>` if it is a thread-group leader; `None` for an unused pid or a thread
    /// (neither is listed), one that exited or is off limits (counted, and recorded in
    /// `self.probed`), or one whose `status` is not understood (left to the listing).
    fn open_process(&mut self, pid: u32, stats: &mut ScanStats) -> Result<Option<OwnedFd>> {
        let name = PidName::new(pid);
        let pid_dir = match dir::open_dir(&self.proc_dir, name.as_c_str()) {
            Ok(pid_dir) => pid_dir,
            Err(Errno::NOENT | Errno::SRCH) => return Ok(None),
            Err(e) => return Err(errno_error(self.root.path(), pid, None, e)),
        };
        let status = facts::read_at(&pid_dir, c"status", &mut self.file)
            .map_err(|e| Error::from_io(&facts::proc_path(self.root.path(), pid, "status"), e));
        if tolerate(status, pid, stats)?.is_none() {
            self.probed.push(pid);
            return Ok(None);
        }
        let leader = facts::is_thread_group_leader(&self.file) == Some(true);
        Ok(leader.then_some(pid_dir))
    }

    /// Visits the processes owned by one of `uids`, deferring the others, then the deferred
    /// ones; both in the order of `self.pids`, after what `self.deferred` already holds.
    /// Stops once nothing is pending.
    fn visit_likely_holders(
        &mut self,
        uids: &[u32],
        search: &mut Search,
        into: &mut OwnerScan,
        stats: &mut ResolveStats,
    ) -> Result<()> {
        for index in 0..self.pids.len() {
            if search.pending == 0 {
                return Ok(());
            }
            let pid = self.pids[index];
            match self.is_owned_by(pid, uids, &mut into.stats)? {
                Some(true) => self.visit(pid, None, search, into, stats)?,
                Some(false) => self.deferred.push(pid),
                None => {} // exited or off limits: counted
            }
        }
        let deferred = std::mem::take(&mut self.deferred);
        for &pid in &deferred {
            if search.pending == 0 {
                break;
            }
            self.visit(pid, None, search, into, stats)?;
        }
        self.deferred = deferred;
        Ok(())
    }

    /// Whether the owner of `<root>/<pid>` is one of `uids` (always true when `uids` is
    /// empty, without a system call); `None` if the process vanished or is off limits.
    fn is_owned_by(&self, pid: u32, uids: &[u32], stats: &mut ScanStats) -> Result<Option<bool>> {
        if uids.is_empty() {
            return Ok(Some(true));
        }
        let name = PidName::new(pid);
        let stat = statat(&self.proc_dir, name.as_c_str(), AtFlags::empty())
            .map_err(|e| errno_error(self.root.path(), pid, None, e));
        Ok(tolerate(stat, pid, stats)?.map(|stat| uids.contains(&stat.st_uid)))
    }

    /// Reads the fds of `pid` (through `pid_dir` if already open) and records it as a holder
    /// of each wanted inode it holds.
    fn visit(
        &mut self,
        pid: u32,
        pid_dir: Option<OwnedFd>,
        search: &mut Search,
        into: &mut OwnerScan,
        stats: &mut ResolveStats,
    ) -> Result<()> {
        stats.processes_visited += 1;
        into.stats.processes_scanned += 1;
        let listed = match pid_dir {
            Some(pid_dir) => self.read_fds_in(pid_dir, pid, &mut into.stats),
            None => self.read_socket_fds(pid, &mut into.stats),
        };
        let Some(pid_dir) = tolerate(listed, pid, &mut into.stats)? else {
            return Ok(());
        };
        self.inodes.retain(|&inode| search.wants(inode));
        if let Some(info) = self.holder_facts(&pid_dir, pid, &mut into.stats)? {
            for &inode in &self.inodes {
                search.mark_found(inode);
            }
            record_new(&self.inodes, info, into);
        }
        Ok(())
    }

    /// Fills `self.inodes` with the (deduplicated) socket inodes of `pid` and returns its
    /// open directory, for reading its facts.
    fn read_socket_fds(&mut self, pid: u32, stats: &mut ScanStats) -> Result<OwnedFd> {
        let name = PidName::new(pid);
        let pid_dir = dir::open_dir(&self.proc_dir, name.as_c_str())
            .map_err(|e| errno_error(self.root.path(), pid, None, e))?;
        self.read_fds_in(pid_dir, pid, stats)
    }

    /// Fills `self.inodes` with the (deduplicated) socket inodes in `<pid_dir>/fd` and
    /// returns `pid_dir`, for reading the facts of `pid`.
    fn read_fds_in(
        &mut self,
        pid_dir: OwnedFd,
        pid: u32,
        stats: &mut ScanStats,
    ) -> Result<OwnedFd> {
        let root = self.root.path();
        self.inodes.clear();
        let fd_dir =
            dir::open_dir(&pid_dir, c"fd").map_err(|e| errno_error(root, pid, Some("fd"), e))?;
        let inodes = &mut self.inodes;
        let _quiet = quiet_fds_of(pid);
        dir::socket_inodes(
            &fd_dir,
            &mut self.dents,
            &mut self.link,
            inodes,
            &mut stats.fds_read,
        )
        .map_err(|e| errno_error(root, pid, Some("fd"), e))?;
        // A socket may sit in several fds of one process.
        inodes.sort_unstable();
        inodes.dedup();
        Ok(pid_dir)
    }

    /// The facts of `pid` if it holds any of `self.inodes`; `None` if it holds none, or
    /// exited / is off limits (counted).
    fn holder_facts(
        &mut self,
        pid_dir: &OwnedFd,
        pid: u32,
        stats: &mut ScanStats,
    ) -> Result<Option<ProcessInfo>> {
        if self.inodes.is_empty() {
            return Ok(None);
        }
        if let Some(known) = self.known.get(&pid) {
            let seen = facts::stat_at(pid_dir, self.root.path(), pid, &mut self.file);
            match tolerate(seen, pid, stats)? {
                Some((comm, start)) if start == known.key.start_time && comm == known.comm => {
                    return Ok(Some(known.clone()));
                }
                Some(_) => {}
                None => return Ok(None),
            }
        }
        let facts = facts::process_at(pid_dir, self.root.path(), pid, &mut self.file);
        tolerate(facts, pid, stats)
    }

    /// Replaces `self.pids` with the processes of the root.
    fn list_pids(&mut self) -> Result<()> {
        dir::list_pids(&self.proc_dir, &mut self.dents, &mut self.pids)
            .map_err(|e| Error::from_io(self.root.path(), e.into()))
    }

    /// The pid most recently handed out, from `<root>/loadavg`; `None` if that cannot be
    /// read (a fixture root): the order then ignores wrap-around.
    fn last_pid(&mut self) -> Option<u32> {
        facts::read_at(&self.proc_dir, c"loadavg", &mut self.file).ok()?;
        order::parse_last_pid(&self.file)
    }
}

/// Pids opened directly, newest first, before a resolution lists the root: enough for the
/// processes started since the last refresh on a busy host, few enough that probing unused
/// pids (one failed `openat` each) costs far less than a listing.
const PROBE_WINDOW: u32 = 64;

/// Whether the owner of the open `pid_dir` is one of `uids` (always true when `uids` is
/// empty, without a system call); `None` if the process vanished (counted).
fn owned_by(
    pid_dir: &OwnedFd,
    pid: u32,
    uids: &[u32],
    root: &Path,
    stats: &mut ScanStats,
) -> Result<Option<bool>> {
    if uids.is_empty() {
        return Ok(Some(true));
    }
    let stat = fstat(pid_dir).map_err(|e| errno_error(root, pid, None, e));
    Ok(tolerate(stat, pid, stats)?.map(|stat| uids.contains(&stat.st_uid)))
}

/// Records the holder `info` of each of `inodes` in a scan being built (each process is
/// visited once per pass, so no holder can be listed twice).
fn record_all(inodes: &[u64], info: ProcessInfo, scan: &mut OwnerScan) {
    for &inode in inodes {
        scan.holders.entry(inode).or_default().push(info.key);
    }
    scan.stats.sockets_found += inodes.len() as u64;
    scan.processes.insert(info.key, info);
}

/// Merges the holder `info` of each of `inodes` into an existing scan: a holder already
/// listed is not added again, facts already known are kept.
fn record_new(inodes: &[u64], info: ProcessInfo, into: &mut OwnerScan) {
    for &inode in inodes {
        let holders = into.holders.entry(inode).or_default();
        if !holders.contains(&info.key) {
            holders.push(info.key);
            into.stats.sockets_found += 1;
        }
    }
    into.processes.entry(info.key).or_insert(info);
}

/// The wanted inodes of one resolution and which of them still lack a holder.
#[derive(Debug)]
struct Search {
    /// Sorted, deduplicated.
    wanted: Vec<u64>,
    found: Vec<bool>,
    pending: usize,
}

impl Search {
    fn new(wanted: &[u64]) -> Self {
        let mut wanted = wanted.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let pending = wanted.len();
        Search {
            found: vec![false; pending],
            wanted,
            pending,
        }
    }

    fn wants(&self, inode: u64) -> bool {
        self.wanted.binary_search(&inode).is_ok()
    }

    fn mark_found(&mut self, inode: u64) {
        if let Ok(index) = self.wanted.binary_search(&inode) {
            if !std::mem::replace(&mut self.found[index], true) {
                self.pending -= 1;
            }
        }
    }
}

/// Classifies a system error on `<root>/<pid>[/<file>]` (the path is built only here, on
/// the error path).
fn errno_error(root: &Path, pid: u32, file: Option<&str>, errno: Errno) -> Error {
    let mut path = root.join(pid.to_string());
    if let Some(file) = file {
        path.push(file);
    }
    Error::from_io(&path, errno.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_counts_each_wanted_inode_once() {
        let mut search = Search::new(&[7, 3, 7, 9]);
        assert_eq!(search.pending, 3);
        assert!(search.wants(3) && search.wants(9) && !search.wants(8));
        search.mark_found(7);
        search.mark_found(7);
        search.mark_found(8);
        assert_eq!(search.pending, 2);
    }

    #[test]
    fn errors_name_the_process_file() {
        let e = errno_error(Path::new("/proc"), 42, Some("fd"), Errno::ACCESS);
        assert!(matches!(&e, Error::PermissionDenied { path } if path == Path::new("/proc/42/fd")));
        assert!(errno_error(Path::new("/proc"), 42, None, Errno::SRCH).is_not_found());
    }
}
