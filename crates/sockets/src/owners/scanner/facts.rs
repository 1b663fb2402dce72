//! Process facts read relative to an open `<root>/<pid>` directory fd, with the parsers of
//! [`ProcRoot::process`](crate::ProcRoot::process).
//!
//! Invariant: every file is opened through the same pid directory fd that the fds were
//! listed through. Once that process exits its directory fd only yields `ENOENT`/`ESRCH`,
//! even if the pid is reused, so fds and facts always describe one process.
//! One reused buffer holds each file in turn; only the facts themselves are allocated.

use std::ffi::CStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use pidcap_core::{cgroup_path, Placement, ProcessInfo, ProcessKey};
use rustix::buffer::spare_capacity;
use rustix::fs::{openat, readlinkat, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::processes::netns::parse_ns_link;
use crate::processes::process::{
    parse_cmdline, parse_stat, parse_status_uid, CGROUP_LIMIT, CMDLINE_LIMIT,
};
use crate::text::{dec, fields};

/// `<root>/<pid>/<name>`, built only to name a file in an error.
pub(super) fn proc_path(root: &Path, pid: u32, name: &str) -> PathBuf {
    root.join(pid.to_string()).join(name)
}

/// Free space asked for before each `read`: procfs fills one page at most per call.
const READ_CHUNK: usize = 4096;

/// Reads `name` under `dir` whole into `buf` (cleared first; its capacity is kept, so once
/// it has grown to the largest file read this allocates nothing). Unlike `File::read_to_end`
/// it does not `fstat`/`lseek` for a size hint: procfs files report size 0.
pub(super) fn read_at(dir: &OwnedFd, name: &CStr, buf: &mut Vec<u8>) -> io::Result<()> {
    read_at_most(dir, name, buf, usize::MAX)
}

/// [`read_at`], stopping once `buf` holds at least `limit` bytes (it may hold up to one
/// chunk more).
pub(super) fn read_at_most(
    dir: &OwnedFd,
    name: &CStr,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<()> {
    let fd = openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    buf.clear();
    while buf.len() < limit {
        buf.reserve(READ_CHUNK);
        match rustix::io::read(&fd, spare_capacity(buf)) {
            Ok(0) => return Ok(()),
            Ok(_) | Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The facts of the process whose directory is `pid_dir`. `root` and `pid` only name files
/// in errors. [`Error::NotFound`] if it exited.
pub(super) fn process_at(
    pid_dir: &OwnedFd,
    root: &Path,
    pid: u32,
    buf: &mut Vec<u8>,
) -> Result<ProcessInfo> {
    let read = |name: &CStr, file: &str, buf: &mut Vec<u8>| {
        read_at(pid_dir, name, buf).map_err(|e| Error::from_io(&proc_path(root, pid, file), e))
    };
    let parse_error = |file: &str, line, reason| {
        Error::parse(
            proc_path(root, pid, file).display().to_string(),
            line,
            reason,
        )
    };
    read(c"stat", "stat", buf)?;
    let (comm, start_time) = parse_stat(buf).map_err(|r| parse_error("stat", 1, r))?;
    read(c"status", "status", buf)?;
    let uid = parse_status_uid(buf).map_err(|(line, r)| parse_error("status", line, r))?;
    read_at_most(pid_dir, c"cmdline", buf, CMDLINE_LIMIT + 1)
        .map_err(|e| Error::from_io(&proc_path(root, pid, "cmdline"), e))?;
    let cmdline = parse_cmdline(buf);
    Ok(ProcessInfo {
        key: ProcessKey { pid, start_time },
        comm,
        exe: exe_at(pid_dir, buf),
        uid,
        cmdline,
        placement: placement_at(pid_dir, buf),
    })
}

/// The process's network namespace and cgroup path; each `None` when unreadable.
fn placement_at(pid_dir: &OwnedFd, buf: &mut Vec<u8>) -> Placement {
    let netns = readlinkat(pid_dir, c"ns/net", std::mem::take(buf))
        .ok()
        .and_then(|target| {
            let netns = parse_ns_link(target.as_bytes());
            *buf = target.into_bytes();
            netns
        });
    let cgroup = read_at_most(pid_dir, c"cgroup", buf, CGROUP_LIMIT)
        .ok()
        .and_then(|()| cgroup_path(&String::from_utf8_lossy(buf)));
    Placement { netns, cgroup }
}

/// `comm` and start time from `stat` alone: enough to tell that a process seen before is
/// still the same one, running the same program.
pub(super) fn stat_at(
    pid_dir: &OwnedFd,
    root: &Path,
    pid: u32,
    buf: &mut Vec<u8>,
) -> Result<(String, u64)> {
    read_at(pid_dir, c"stat", buf).map_err(|e| Error::from_io(&proc_path(root, pid, "stat"), e))?;
    parse_stat(buf)
        .map_err(|r| Error::parse(proc_path(root, pid, "stat").display().to_string(), 1, r))
}

/// The executable path, or `None` when it cannot be read (kernel threads; another user's
/// process without ptrace access): not knowing it is normal, as in `ProcRoot::process`.
fn exe_at(pid_dir: &OwnedFd, buf: &mut Vec<u8>) -> Option<String> {
    let target = readlinkat(pid_dir, c"exe", std::mem::take(buf)).ok()?;
    let exe = String::from_utf8_lossy(target.as_bytes()).into_owned();
    *buf = target.into_bytes();
    Some(exe)
}

/// Whether `status` describes a thread-group leader (`Tgid:` equals `Pid:`); `None` if either
/// line is missing or unparsable. `/proc/<tid>` of a non-leader thread can be opened although
/// the root listing never shows it.
pub(super) fn is_thread_group_leader(status: &[u8]) -> Option<bool> {
    let number = |prefix: &[u8]| {
        let line = status
            .split(|&b| b == b'\n')
            .find_map(|line| line.strip_prefix(prefix))?;
        let [value] = fields::<1>(line)?;
        dec(value)
    };
    Some(number(b"Tgid:")? == number(b"Pid:")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of `/proc/<tid>/status`, Linux 6.18, for a leader and for another thread of
    /// the same process.
    const LEADER: &[u8] =
        b"Name:\tpidcapd\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t1\n";
    const THREAD: &[u8] =
        b"Name:\tpcap\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4250\nPPid:\t1\n";

    #[test]
    fn leaders_have_their_own_tgid() {
        assert_eq!(is_thread_group_leader(LEADER), Some(true));
        assert_eq!(is_thread_group_leader(THREAD), Some(false));
    }

    #[test]
    fn status_without_tgid_or_pid_is_unknown() {
        assert_eq!(is_thread_group_leader(b"Name:\tx\nPid:\t1\n"), None);
        assert_eq!(is_thread_group_leader(b"Tgid:\t1\nPid:\tx\n"), None);
        assert_eq!(is_thread_group_leader(b""), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_status_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = is_thread_group_leader(&bytes);
        }
    }
}
