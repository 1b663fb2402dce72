//! The one error type of this crate. Each variant tells the caller what to do.

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong reading the kernel's view of sockets and processes.
///
/// - [`Error::NotFound`]: the process (or file) is gone. Expected: processes exit at any time.
///   Count it, do not warn.
/// - [`Error::PermissionDenied`]: missing privileges. Report once, loudly; the fix is to run as
///   root or with `CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH`.
/// - [`Error::Io`]: anything else from the system (`EMFILE`, `EIO`, …). Unexpected; report it.
/// - [`Error::Parse`]: the kernel printed something this crate does not understand.
/// - [`Error::Netlink`]: the kernel refused a netlink sock_diag request. Read the `/proc/net`
///   tables instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} not found (the process exited)", path = path.display())]
    NotFound { path: PathBuf },

    #[error(
        "permission denied reading {path}: run as root or grant CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH",
        path = path.display()
    )]
    PermissionDenied { path: PathBuf },

    /// `path` is the file read, or the name of the system call when there is no file
    /// (`getifaddrs`).
    #[error("reading {path}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// `what` names the input (a path, or a table such as `tcp6 table` when parsing from a
    /// reader); `line` counts from 1 (0 when the input has no lines, e.g. a symlink target).
    #[error("parsing {what}, line {line}: {reason}")]
    Parse {
        what: String,
        line: usize,
        reason: String,
    },

    /// The kernel answered a sock_diag request with an error. `what` names the request
    /// (`udplite dump (AF_INET6)`); `errno` is positive: `ENOENT` from a dump means the
    /// kernel has no diag module for the protocol. `EPROTONOSUPPORT` is also returned, without
    /// asking the kernel, for a protocol the reader does not handle.
    #[error("netlink sock_diag {what}: {}", io::Error::from_raw_os_error(*errno))]
    Netlink { what: String, errno: i32 },
}

/// The result of every fallible call of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Classifies an I/O error on `path`: `ENOENT`/`ESRCH` mean the process exited
    /// ([`Error::NotFound`]), `EACCES`/`EPERM` mean missing privileges.
    pub(crate) fn from_io(path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match (source.raw_os_error(), source.kind()) {
            (Some(libc::ENOENT | libc::ESRCH), _) | (None, io::ErrorKind::NotFound) => {
                Error::NotFound { path }
            }
            (Some(libc::EACCES | libc::EPERM), _) | (None, io::ErrorKind::PermissionDenied) => {
                Error::PermissionDenied { path }
            }
            _ => Error::Io { path, source },
        }
    }

    pub(crate) fn parse(what: impl Into<String>, line: usize, reason: impl Into<String>) -> Self {
        Error::Parse {
            what: what.into(),
            line,
            reason: reason.into(),
        }
    }

    /// True for [`Error::NotFound`]: the process exited, an expected race.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True for [`Error::PermissionDenied`].
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::PermissionDenied { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(errno: i32) -> Error {
        Error::from_io(Path::new("/proc/1/fd"), io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn enoent_and_esrch_mean_the_process_exited() {
        assert!(classify(libc::ENOENT).is_not_found());
        assert!(classify(libc::ESRCH).is_not_found());
    }

    #[test]
    fn eacces_and_eperm_mean_missing_privileges() {
        assert!(classify(libc::EACCES).is_permission_denied());
        assert!(classify(libc::EPERM).is_permission_denied());
    }

    #[test]
    fn other_errnos_stay_io_errors_with_their_source() {
        let e = classify(libc::EMFILE);
        assert!(
            matches!(&e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EMFILE))
        );
    }
}
