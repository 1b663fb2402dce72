//! Who may see what on the query socket.
//!
//! Rule: the kernel's credentials of the connecting process (`SO_PEERCRED` for its uid and
//! gid, `SO_PEERGROUPS` for its supplementary groups, both fixed at `connect`) decide. Root
//! and members of the socket group see everything; every other caller is a
//! [`Viewer::Own`] and sees only processes whose real uid is its own: no other process's
//! row, exe, cmdline, connections or lookup owner. Daemon-wide aggregates (the unknown
//! bucket, `stats`) carry no per-process detail and are the same for everybody.
//!
//! Nothing here panics; a caller whose credentials cannot be read is refused, never
//! promoted.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// The group whose members see every process, resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    pub name: String,
    pub gid: u32,
}

/// What a connected client may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// Root or a member of the socket group: every process.
    Full,
    /// Anyone else: only processes whose real uid is `uid`.
    Own { uid: u32 },
}

impl Viewer {
    /// Whether a process running as `uid` is visible.
    pub fn sees(self, uid: u32) -> bool {
        match self {
            Viewer::Full => true,
            Viewer::Own { uid: own } => own == uid,
        }
    }

    /// The uid replies are narrowed to, `None` for a full view.
    pub fn filtered_to(self) -> Option<u32> {
        match self {
            Viewer::Full => None,
            Viewer::Own { uid } => Some(uid),
        }
    }
}

/// A client's identity as the kernel recorded it at `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; empty when the kernel cannot tell (Linux < 4.13).
    pub groups: Vec<u32>,
}

impl Credentials {
    /// The view these credentials get, given the socket group (if one exists).
    pub fn viewer(&self, group: Option<&SocketGroup>) -> Viewer {
        let member = group.is_some_and(|g| self.gid == g.gid || self.groups.contains(&g.gid));
        if self.uid == 0 || member {
            Viewer::Full
        } else {
            Viewer::Own { uid: self.uid }
        }
    }
}

/// Most supplementary groups read from the kernel (Linux's NGROUPS_MAX).
const MAX_GROUPS: usize = 65_536;

/// `SO_PEERGROUPS` (asm-generic/socket.h; the same on x86, arm and riscv).
const SO_PEERGROUPS: libc::c_int = 59;

/// Reads the credentials of the process at the other end of `stream`.
pub fn peer_credentials(stream: &tokio::net::UnixStream) -> io::Result<Credentials> {
    let cred = stream.peer_cred()?;
    Ok(Credentials {
        uid: cred.uid(),
        gid: cred.gid(),
        groups: peer_groups(stream.as_raw_fd()).unwrap_or_default(),
    })
}

/// The peer's supplementary groups (`SO_PEERGROUPS`), growing the buffer once if the kernel
/// says it is too small.
fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // SAFETY: `groups` is a live buffer of `len` bytes; the kernel writes at most `len`
        // bytes and stores the needed size in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / 4;
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(error);
        }
        groups.resize(needed.min(MAX_GROUPS), 0);
    }
}

/// Why the configured socket group could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// No such group in the group database.
    #[error("group {0:?} does not exist")]
    NotFound(String),
    /// The group database could not be read.
    #[error("cannot look up group {name:?}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Resolves a group name (or a number) through the system's group database (NSS).
pub fn resolve_group(name: &str) -> Result<SocketGroup, GroupError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(SocketGroup {
            name: name.into(),
            gid,
        });
    }
    let lookup = |source| GroupError::Lookup {
        name: name.into(),
        source,
    };
    let c_name = CString::new(name).map_err(|_| GroupError::NotFound(name.into()))?;
    let mut buf = vec![0u8; 4096];
    loop {
        match getgrnam(&c_name, &mut buf) {
            Ok(Some(gid)) => {
                return Ok(SocketGroup {
                    name: name.into(),
                    gid,
                })
            }
            Ok(None) => return Err(GroupError::NotFound(name.into())),
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < (1 << 20) => {
                buf.resize(buf.len() * 4, 0);
            }
            Err(e) => return Err(lookup(e)),
        }
    }
}

/// The configured socket group, resolved. A group that does not exist is an error only when
/// it was configured explicitly (a typo should stop the daemon); the default `pidcap` group
/// missing, or a group database that cannot be read, is a warning: the daemon then runs with
/// no group, so only root sees every process (everyone else still sees their own).
pub fn configured_group(
    name: Option<&str>,
    required: bool,
) -> Result<Option<SocketGroup>, GroupError> {
    let Some(name) = name else {
        return Ok(None);
    };
    match resolve_group(name) {
        Ok(group) => Ok(Some(group)),
        Err(GroupError::NotFound(_)) if !required => {
            tracing::warn!(
                group = name,
                "socket group does not exist: only root sees every process on the query socket; \
                 create it with `systemd-sysusers` (systemd/pidcap.sysusers) or \
                 `groupadd --system pidcap`"
            );
            Ok(None)
        }
        Err(error @ GroupError::Lookup { .. }) => {
            tracing::warn!(error = %error, "only root sees every process on the query socket");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// One `getgrnam_r` call: the gid, `None` if there is no such group.
fn getgrnam(name: &CString, buf: &mut [u8]) -> io::Result<Option<u32>> {
    // SAFETY: all-zero is a valid `struct group` (null pointers, gid 0); it is only read
    // after getgrnam_r filled it.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: `name` is NUL-terminated; `group`, `buf` and `found` live across the call and
    // `buf.len()` is the buffer's true size.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut group,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    match rc {
        0 if found.is_null() => Ok(None),
        0 => Ok(Some(group.gr_gid)),
        // Some NSS modules report "not found" as one of these instead of a null result.
        libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => Ok(None),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        Credentials {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    const PIDCAP: SocketGroup = SocketGroup {
        name: String::new(),
        gid: 990,
    };

    #[test]
    fn root_sees_everything_even_without_a_group() {
        assert_eq!(creds(0, 0, &[]).viewer(None), Viewer::Full);
        assert_eq!(creds(0, 0, &[]).viewer(Some(&PIDCAP)), Viewer::Full);
    }

    #[test]
    fn group_members_see_everything_by_primary_or_supplementary_group() {
        assert_eq!(creds(1000, 990, &[]).viewer(Some(&PIDCAP)), Viewer::Full);
        assert_eq!(
            creds(1000, 1000, &[27, 990]).viewer(Some(&PIDCAP)),
            Viewer::Full
        );
    }

    #[test]
    fn everybody_else_sees_only_their_own_uid() {
        let viewer = creds(1000, 1000, &[27]).viewer(Some(&PIDCAP));
        assert_eq!(viewer, Viewer::Own { uid: 1000 });
        assert!(viewer.sees(1000));
        assert!(!viewer.sees(0));
        assert!(
            !viewer.sees(u32::MAX),
            "a process of unknown uid is nobody's"
        );
        assert_eq!(viewer.filtered_to(), Some(1000));
        let no_group = creds(1000, 990, &[990]).viewer(None);
        assert_eq!(no_group, Viewer::Own { uid: 1000 });
    }

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(resolve_group("root").unwrap().gid, 0);
        assert_eq!(resolve_group("4242").unwrap().gid, 4242);
        assert!(matches!(
            resolve_group("no-such-group-pidcap-test"),
            Err(GroupError::NotFound(_))
        ));
    }
}
