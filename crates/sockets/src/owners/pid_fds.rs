//! The socket inodes one process holds: a quick look at `/proc/<pid>/fd`, used right after a
//! process starts, while it may still be alive (the full scan is in `fds.rs`).

use std::fs;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, Result};
use crate::owners::fds::parse_socket_link;
use crate::processes::pidfd::quiet_fds_of;
use crate::root::ProcRoot;

impl ProcRoot {
    /// Appends (fd number, inode) of every socket `pid` holds to `out`. `NotFound` when the
    /// process has exited; an fd closed while reading is skipped.
    pub fn socket_fds_of(&self, pid: u32, out: &mut Vec<(RawFd, u64)>) -> Result<()> {
        let dir = self.pid_dir(pid).join("fd");
        let _quiet = quiet_fds_of(pid);
        let entries = fs::read_dir(&dir).map_err(|e| Error::from_io(&dir, e))?;
        for entry in entries.flatten() {
            let Some(fd) = std::str::from_utf8(entry.file_name().as_bytes())
                .ok()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            let Ok(target) = fs::read_link(entry.path()) else {
                continue;
            };
            if let Some(inode) = parse_socket_link(target.as_os_str().as_bytes()) {
                out.push((fd, inode));
            }
        }
        Ok(())
    }

    /// The socket inode behind `pid`'s fd `fd`; `None` if that fd is not a socket.
    /// `NotFound` when the process exited or the fd was closed.
    pub fn socket_inode(&self, pid: u32, fd: RawFd) -> Result<Option<u64>> {
        let path = self.pid_dir(pid).join("fd").join(fd.to_string());
        let _quiet = quiet_fds_of(pid);
        let target = fs::read_link(&path).map_err(|e| Error::from_io(&path, e))?;
        Ok(parse_socket_link(target.as_os_str().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_socket_this_process_holds() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd_link = fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        ))
        .unwrap();
        let inode = parse_socket_link(fd_link.as_os_str().as_bytes()).unwrap();
        let mut out = Vec::new();
        ProcRoot::default()
            .socket_fds_of(std::process::id(), &mut out)
            .unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        assert!(out.contains(&(fd, inode)));
        let root = ProcRoot::default();
        assert_eq!(
            root.socket_inode(std::process::id(), fd).unwrap(),
            Some(inode)
        );
        assert_eq!(
            root.socket_inode(std::process::id(), 0).ok().flatten(),
            None
        );
    }

    #[test]
    fn an_exited_process_is_not_found() {
        let mut out = Vec::new();
        let err = ProcRoot::default()
            .socket_fds_of(u32::MAX - 1, &mut out)
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }
}
