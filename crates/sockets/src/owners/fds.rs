//! Which processes hold which sockets: a walk of `<root>/<pid>/fd/*`.
//!
//! A socket fd is a symlink whose target reads `socket:[N]`, `N` being the inode that the
//! `/proc/net` tables list. The scan:
//!
//! - visits only numeric entries of the root (processes; threads share their leader's fd
//!   table, so `task/*/fd` is not read — a thread that unshared its fd table is missed);
//! - reads each fd link with `std::fs::read_link` and keeps it only if it starts with
//!   `socket:[`;
//! - reads process facts ([`ProcRoot::process`]) only for processes holding at least one
//!   socket.
//!
//! Cost: one `read_dir` per process and one `readlink` (with a path allocation) per fd.
//! [`OwnerScanner`](crate::OwnerScanner) does the same relative to open directory fds,
//! without allocating per fd.
//!
//! Expected races are counted in [`ScanStats`], never logged per event and never an error:
//! a process that exits mid-scan (`ENOENT`/`ESRCH`) is `vanished`; one whose fds we may not
//! read is `permission_denied` (the caller reports that once). An fd closed between listing
//! and reading is skipped. Any other system error (`EMFILE`, `EIO`, …) fails the scan: it is
//! not a property of one process and would make the result silently incomplete.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;

use pidcap_core::{ProcessInfo, ProcessKey};

use crate::error::{Error, Result};
use crate::processes::pidfd::quiet_fds_of;
use crate::root::ProcRoot;
use crate::text::{bracketed, dec};

/// The result of one [`ProcRoot::scan_socket_owners`].
#[derive(Debug, Clone, Default)]
pub struct OwnerScan {
    /// Every holder of each socket inode; each process at most once per inode. A socket is
    /// shared after `fork` or fd passing, so one inode may have several holders.
    pub holders: HashMap<u64, Vec<ProcessKey>>,
    /// Facts of every process that holds at least one socket (and only of those).
    pub processes: HashMap<ProcessKey, ProcessInfo>,
    pub stats: ScanStats,
}

/// Counters of one scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Numeric entries of the proc root visited.
    pub processes_scanned: u64,
    /// Processes that exited during the scan (expected).
    pub vanished: u64,
    /// Processes whose fds or facts we were not allowed to read.
    pub permission_denied: u64,
    /// The first of those, to name it in a warning.
    pub first_denied: Option<u32>,
    /// fd links read.
    pub fds_read: u64,
    /// (process, socket inode) pairs recorded in `holders`.
    pub sockets_found: u64,
}

/// The inode of a socket fd's link target `socket:[N]`; `None` for any other target.
pub(crate) fn parse_socket_link(target: &[u8]) -> Option<u64> {
    bracketed(target, b"socket:[")
}

/// A pid from a proc root entry name; `None` for `self`, `net`, `sys`, ….
pub(crate) fn parse_pid(name: &[u8]) -> Option<u32> {
    dec(name).and_then(|n| u32::try_from(n).ok())
}

/// Turns the expected failures of reading process `pid` into counts: `Ok(None)` when it
/// vanished or is off limits, `Err` for anything else.
pub(crate) fn tolerate<T>(result: Result<T>, pid: u32, stats: &mut ScanStats) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Error::NotFound { .. }) => {
            stats.vanished += 1;
            Ok(None)
        }
        Err(Error::PermissionDenied { .. }) => {
            stats.permission_denied += 1;
            stats.first_denied.get_or_insert(pid);
            Ok(None)
        }
        Err(other) => Err(other),
    }
}

impl ProcRoot {
    /// Maps every socket inode held by a process to its holders, with the facts of those
    /// processes. See the module docs for cost and the races tolerated.
    pub fn scan_socket_owners(&self) -> Result<OwnerScan> {
        let mut scan = OwnerScan::default();
        let mut inodes = Vec::new();
        let entries = fs::read_dir(self.path()).map_err(|e| Error::from_io(self.path(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::from_io(self.path(), e))?;
            let Some(pid) = parse_pid(entry.file_name().as_bytes()) else {
                continue;
            };
            scan.stats.processes_scanned += 1;
            inodes.clear();
            let listed = self.socket_inodes(pid, &mut inodes, &mut scan.stats);
            if tolerate(listed, pid, &mut scan.stats)?.is_some() && !inodes.is_empty() {
                self.record_holder(pid, &mut inodes, &mut scan)?;
            }
        }
        tracing::debug!(stats = ?scan.stats, sockets = scan.holders.len(), "socket owner scan");
        Ok(scan)
    }

    /// Appends the inode of every socket fd of `pid` to `inodes`.
    fn socket_inodes(&self, pid: u32, inodes: &mut Vec<u64>, stats: &mut ScanStats) -> Result<()> {
        let dir = self.pid_dir(pid).join("fd");
        let _quiet = quiet_fds_of(pid);
        for entry in fs::read_dir(&dir).map_err(|e| Error::from_io(&dir, e))? {
            let link = entry.map_err(|e| Error::from_io(&dir, e))?.path();
            stats.fds_read += 1;
            match fs::read_link(&link).map_err(|e| Error::from_io(&link, e)) {
                Ok(target) => inodes.extend(parse_socket_link(target.as_os_str().as_bytes())),
                // The fd was closed after the listing: nothing to record.
                Err(Error::NotFound { .. }) => continue,
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Records `pid` as a holder of each of `inodes` (deduplicated: a socket may sit in
    /// several fds of one process), after reading its facts.
    fn record_holder(&self, pid: u32, inodes: &mut Vec<u64>, scan: &mut OwnerScan) -> Result<()> {
        let Some(info) = tolerate(self.process(pid), pid, &mut scan.stats)? else {
            return Ok(());
        };
        inodes.sort_unstable();
        inodes.dedup();
        for &inode in inodes.iter() {
            scan.holders.entry(inode).or_default().push(info.key);
        }
        scan.stats.sockets_found += inodes.len() as u64;
        scan.processes.insert(info.key, info);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_give_their_inode() {
        assert_eq!(parse_socket_link(b"socket:[8195]"), Some(8195));
    }

    #[test]
    fn other_links_are_not_sockets() {
        for target in [
            &b"pipe:[9]"[..],
            b"/dev/null",
            b"anon_inode:[eventfd]",
            b"socket:[x]",
        ] {
            assert_eq!(parse_socket_link(target), None);
        }
    }

    #[test]
    fn only_numeric_entries_are_processes() {
        assert_eq!(parse_pid(b"4242"), Some(4242));
        for name in [&b"self"[..], b"thread-self", b"net", b"1a", b"99999999999"] {
            assert_eq!(parse_pid(name), None);
        }
    }

    #[test]
    fn tolerated_failures_are_counted_and_others_propagate() {
        let mut stats = ScanStats::default();
        let gone: Result<()> = Err(Error::NotFound {
            path: "/proc/1".into(),
        });
        let denied: Result<()> = Err(Error::PermissionDenied {
            path: "/proc/1/fd".into(),
        });
        assert!(tolerate(gone, 1, &mut stats).unwrap().is_none());
        assert!(tolerate(denied, 1, &mut stats).unwrap().is_none());
        assert_eq!((stats.vanished, stats.permission_denied), (1, 1));
        assert_eq!(stats.first_denied, Some(1));
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let other: Result<()> = Err(Error::Io {
            path: "/proc/1/fd".into(),
            source: emfile,
        });
        assert!(tolerate(other, 1, &mut stats).is_err());
    }
}
