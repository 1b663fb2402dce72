//! Directory and link reads relative to open directory fds: the syscall layer of the
//! scanner.
//!
//! Invariants: nothing here allocates. Directory entries are read with `getdents64` into a
//! caller's buffer ([`RawDir`]); names passed to `openat`/`readlinkat` are `CStr`s on the
//! stack (a pid's decimal name) or borrowed from that buffer (an fd's name); link targets are
//! read into a fixed array. Errors are raw [`Errno`]s: the caller, which knows the path,
//! classifies them.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{openat, readlinkat_raw, seek, Mode, OFlags, RawDir, SeekFrom};
use rustix::io::Errno;

use crate::owners::fds::{parse_pid, parse_socket_link};

/// Bytes of `getdents64` output read per call. A `/proc` entry takes 24–32 bytes, so one
/// call lists about 500 processes (or fds); larger directories take several calls.
pub(super) const DENTS_BUFFER: usize = 16 * 1024;

/// Room for a link target. `socket:[N]` needs at most 29 bytes (`N` is a `u64`); a target
/// that fills the whole buffer is longer and so not a socket.
pub(super) const LINK_BUFFER: usize = 64;

/// A reusable `getdents64` buffer.
pub(super) fn dents_buffer() -> Vec<MaybeUninit<u8>> {
    vec![MaybeUninit::uninit(); DENTS_BUFFER]
}

/// The NUL-terminated decimal name of a pid, kept on the stack.
#[derive(Debug, Clone, Copy)]
pub(super) struct PidName {
    // u32::MAX has 10 digits; one more byte for the NUL.
    bytes: [u8; 11],
}

impl PidName {
    pub(super) fn new(pid: u32) -> Self {
        let mut digits = [0u8; 10];
        let mut n = pid;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut bytes = [0u8; 11];
        for (dst, src) in bytes.iter_mut().zip(digits[..len].iter().rev()) {
            *dst = *src;
        }
        PidName { bytes }
    }

    pub(super) fn as_c_str(&self) -> &CStr {
        // The array always holds a NUL (at most 10 digits are written), so this cannot fail.
        CStr::from_bytes_until_nul(&self.bytes).unwrap_or(c"")
    }
}

/// Opens `name` under `dir` as a directory (following symlinks, so a root whose `<pid>`
/// entries link to `/proc/<pid>` works too).
pub(super) fn open_dir<Fd: AsFd>(dir: Fd, name: &CStr) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    openat(dir, name, flags, Mode::empty())
}

/// Replaces `pids` with the numeric entries of `root`, in directory order (ascending on
/// procfs). Rewinds `root` first, so one open fd serves every pass.
pub(super) fn list_pids(
    root: &OwnedFd,
    dents: &mut [MaybeUninit<u8>],
    pids: &mut Vec<u32>,
) -> Result<(), Errno> {
    seek(root, SeekFrom::Start(0))?;
    pids.clear();
    let mut entries = RawDir::new(root.as_fd(), dents);
    while let Some(entry) = entries.next() {
        pids.extend(parse_pid(entry?.file_name().to_bytes()));
    }
    Ok(())
}

/// Appends the inode of every socket fd listed in `fd_dir` to `inodes`, adding the number of
/// fd links read (`.` and `..` excluded) to `fds_read` as it goes.
///
/// A link is rejected by its `socket:[` prefix before any number is parsed. An fd closed
/// between the listing and the `readlinkat` (`ENOENT`) is skipped; any other error ends the
/// read (`EACCES`: the process is off limits; `ENOENT` from `getdents64`: it exited).
pub(super) fn socket_inodes(
    fd_dir: &OwnedFd,
    dents: &mut [MaybeUninit<u8>],
    link: &mut [u8; LINK_BUFFER],
    inodes: &mut Vec<u64>,
    fds_read: &mut u64,
) -> Result<(), Errno> {
    let mut entries = RawDir::new(fd_dir.as_fd(), dents);
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name();
        if is_dot(name) {
            continue;
        }
        *fds_read += 1;
        match readlinkat_raw(fd_dir, name, &mut link[..]) {
            Ok(len) => inodes.extend(socket_target(&link[..len.min(LINK_BUFFER)])),
            Err(Errno::NOENT | Errno::SRCH) => continue,
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// The socket inode of a link target read into a [`LINK_BUFFER`]-sized buffer; `None` for a
/// non-socket target or one that may have been truncated.
fn socket_target(target: &[u8]) -> Option<u64> {
    if target.len() >= LINK_BUFFER || !target.starts_with(b"socket:[") {
        return None;
    }
    parse_socket_link(target)
}

fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_names_are_decimal_and_nul_terminated() {
        for pid in [0, 1, 9, 10, 4242, 32768, u32::MAX] {
            assert_eq!(PidName::new(pid).as_c_str().to_str(), Ok(&*pid.to_string()));
        }
    }

    #[test]
    fn socket_targets_need_the_prefix_and_fit_the_buffer() {
        assert_eq!(socket_target(b"socket:[8195]"), Some(8195));
        assert_eq!(socket_target(b"pipe:[8195]"), None);
        assert_eq!(socket_target(b"/dev/null"), None);
        let mut long = b"socket:[1]".to_vec();
        long.resize(LINK_BUFFER, b'x');
        assert_eq!(socket_target(&long), None);
    }

    #[test]
    fn dot_entries_are_not_fds() {
        assert!(is_dot(c"."));
        assert!(is_dot(c".."));
        assert!(!is_dot(c"3"));
    }
}
