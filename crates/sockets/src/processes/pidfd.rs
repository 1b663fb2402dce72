//! A running process's sockets, read from the sockets themselves: `pidfd_open` pins the
//! process (no pid-reuse race), `pidfd_getfd` lends us a duplicate of one of its socket fds
//! for the few microseconds it takes to ask `getsockname`/`getpeername`, and the duplicate is
//! closed at once. This is how a socket that lives a millisecond is seen with its addresses,
//! where a table dump would arrive too late. Needs Linux 5.6 and ptrace access
//! (CAP_SYS_PTRACE).
//!
//! Invariants:
//! - The duplicate never outlives the call that made it (dropped before returning); while it
//!   exists, a `close` by the process does not yet end the socket, which delays its FIN by
//!   those microseconds at most.
//! - No reading of this process's own fd table sees a duplicate: each is made and closed
//!   under a shared hold of [`LENDING`], and every reader of `/proc/<pid>/fd` takes
//!   [`quiet_fds_of`] for its own pid, which waits for the duplicates to be closed and keeps
//!   new ones from being made. Without it a scan could find pidcapd holding another
//!   process's socket, and credit that process's traffic to pidcapd.

use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use pidcap_core::{NetNsId, SocketEntry, TcpState};
use pidcap_wire::IpProto;

use crate::error::{Error, Result};

/// Held shared while a borrowed duplicate exists, exclusively while this process's own fd
/// table is read. It guards no data: the fd table is the shared state.
static LENDING: RwLock<()> = RwLock::new(());

/// A duplicate of another process's fd, closed when dropped, with the shared hold of
/// [`LENDING`] that keeps readers of our own fd table from seeing it.
struct Borrowed {
    // Declared first: dropped (closed) before the hold is let go.
    fd: OwnedFd,
    _lent: RwLockReadGuard<'static, ()>,
}

/// While the returned guard lives, this process holds no borrowed duplicate, so its fd
/// table shows only its own sockets; `None` (nothing to wait for) when `pid` is another
/// process. Take it around any read of `/proc/<pid>/fd`; never while holding a [`Borrowed`]
/// in the same thread.
pub(crate) fn quiet_fds_of(pid: u32) -> Option<RwLockWriteGuard<'static, ()>> {
    (pid == std::process::id()).then(|| LENDING.write().unwrap_or_else(PoisonError::into_inner))
}

/// A pinned process whose socket fds can be inspected.
#[derive(Debug)]
pub struct ProcessHandle {
    pidfd: OwnedFd,
    pid: u32,
}

impl ProcessHandle {
    /// Pins `pid`. `NotFound` if it exited.
    pub fn open(pid: u32) -> Result<ProcessHandle> {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(os_error(pid, "pidfd_open"));
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(ProcessHandle { pidfd, pid })
    }

    /// The IP socket behind the process's fd `fd` (its inode known to be `inode`), or
    /// `None` for a socket that is not IP (unix, netlink, packet) or not bound yet (port 0,
    /// including a ping socket whose echo identifier is not assigned yet). Raw sockets get
    /// port 0 on both ends, as in the kernel's tables.
    pub fn ip_socket(
        &self,
        fd: RawFd,
        inode: u64,
        uid: u32,
        netns: NetNsId,
    ) -> Result<Option<SocketEntry>> {
        let dup = self.borrow_fd(fd)?;
        let sock = dup.fd.as_raw_fd();
        let Some(proto) = protocol(sock) else {
            return Ok(None);
        };
        let raw = int_option(sock, libc::SO_TYPE) == Some(libc::SOCK_RAW);
        let Some(local) = address(sock, libc::getsockname) else {
            return Ok(None);
        };
        let remote = address(sock, libc::getpeername);
        let listening = int_option(sock, libc::SO_ACCEPTCONN) == Some(1);
        drop(dup);
        if !raw && local.port() == 0 {
            // TCP/UDP not bound yet, or a ping socket before its first send assigned its
            // echo identifier: look again later.
            return Ok(None);
        }
        let unspecified = match local {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let remote = remote.unwrap_or(unspecified);
        // Raw sockets are keyed by protocol with port 0 (see ProcRoot::read_raw_into).
        let (local, remote) = if raw {
            (with_port(local, 0), with_port(remote, 0))
        } else {
            (local, remote)
        };
        // Without a peer: a listener (SO_ACCEPTCONN), or bound and not listening, which
        // no packet belongs to until it connects (then it has a peer).
        let state = match (remote.ip().is_unspecified(), listening) {
            (false, _) => TcpState::Established,
            (true, true) => TcpState::Listen,
            (true, false) => TcpState::Close,
        };
        Ok(Some(SocketEntry {
            netns,
            proto,
            local,
            remote,
            state,
            inode,
            uid,
        }))
    }

    fn borrow_fd(&self, fd: RawFd) -> Result<Borrowed> {
        let lent = LENDING.read().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: pidfd_getfd(2) takes a pidfd, a target fd number and flags, and returns a
        // new fd in this process or -1.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.pidfd.as_raw_fd(), fd, 0) };
        if dup < 0 {
            return Err(os_error(self.pid, "pidfd_getfd"));
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(dup as RawFd) };
        Ok(Borrowed { fd, _lent: lent })
    }
}

fn os_error(pid: u32, call: &str) -> Error {
    let source = std::io::Error::last_os_error();
    Error::from_io(std::path::Path::new(&format!("{call}({pid})")), source)
}

fn int_option(sock: RawFd, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for writes of a c_int, as getsockopt(2) requires.
    let rc = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// The IP protocol of an AF_INET/AF_INET6 socket; `None` for other families.
fn protocol(sock: RawFd) -> Option<IpProto> {
    let domain = int_option(sock, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return None;
    }
    let proto = int_option(sock, libc::SO_PROTOCOL)?;
    u8::try_from(proto).ok().map(IpProto::from)
}

type NameCall =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn address(sock: RawFd, call: NameCall) -> Option<SocketAddr> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage is large enough for any socket address and len says so.
    let rc = unsafe { call(sock, storage.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised, and the kernel wrote at most `len` bytes of an address.
    let storage = unsafe { storage.assume_init() };
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                0,
                0,
            )))
        }
        _ => None,
    }
}

fn with_port(addr: SocketAddr, port: u16) -> SocketAddr {
    let mut addr = addr;
    addr.set_port(port);
    addr
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn inode_of(fd: RawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        crate::owners::fds::parse_socket_link(std::os::unix::ffi::OsStrExt::as_bytes(
            link.as_os_str(),
        ))
        .unwrap()
    }

    #[test]
    fn reads_a_connected_tcp_socket_of_a_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let handle = ProcessHandle::open(std::process::id()).unwrap();
        let fd = client.as_raw_fd();
        let entry = handle
            .ip_socket(fd, inode_of(fd), 0, NetNsId(1))
            .unwrap()
            .unwrap();
        assert_eq!(entry.proto, IpProto::Tcp);
        assert_eq!(entry.local, client.local_addr().unwrap());
        assert_eq!(entry.remote, listener.local_addr().unwrap());
        assert_eq!(entry.inode, inode_of(fd));
        let lfd = listener.as_raw_fd();
        let l = handle
            .ip_socket(lfd, inode_of(lfd), 0, NetNsId(1))
            .unwrap()
            .unwrap();
        assert!(l.is_wildcard_remote());
    }

    #[test]
    fn an_unbound_or_non_ip_socket_is_none() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let handle = ProcessHandle::open(std::process::id()).unwrap();
        assert_eq!(
            handle.ip_socket(a.as_raw_fd(), 1, 0, NetNsId(1)).unwrap(),
            None
        );
        // SAFETY: plain socket(2); closed below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        assert_eq!(
            handle.ip_socket(raw, 2, 0, NetNsId(1)).unwrap(),
            None,
            "UDP not bound yet"
        );
        // SAFETY: ours.
        unsafe { libc::close(raw) };
    }

    /// A `sleep` holding a UDP socket this process does not hold: its fd number there, and
    /// its inode.
    fn child_holding_a_socket() -> (std::process::Child, RawFd, u64) {
        use std::os::unix::process::CommandExt;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (fd, inode) = (socket.as_raw_fd(), inode_of(socket.as_raw_fd()));
        let mut command = std::process::Command::new("sleep");
        command.arg("30");
        // SAFETY: fcntl is async-signal-safe; it only lets the child keep the fd across exec.
        unsafe {
            command.pre_exec(move || match libc::fcntl(fd, libc::F_SETFD, 0) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            })
        };
        let child = command.spawn().unwrap();
        drop(socket);
        (child, fd, inode)
    }

    #[test]
    fn readers_of_our_own_fds_never_see_a_borrowed_duplicate() {
        let (mut child, fd, inode) = child_holding_a_socket();
        let handle = ProcessHandle::open(child.id()).unwrap();
        let me = std::process::id();
        let root = crate::root::ProcRoot::default();
        let hold = std::time::Duration::from_millis(200);
        std::thread::scope(|s| {
            let (lent, borrowed) = std::sync::mpsc::channel();
            let handle = &handle;
            s.spawn(move || {
                let dup = handle.borrow_fd(fd).unwrap();
                assert_eq!(inode_of(dup.fd.as_raw_fd()), inode);
                lent.send(()).unwrap();
                // Held while the reader below starts: it must wait for the duplicate.
                std::thread::sleep(hold);
                drop(dup);
            });
            borrowed.recv().expect("the borrowing thread failed");
            let mut fds = Vec::new();
            root.socket_fds_of(me, &mut fds).unwrap();
            assert!(fds.iter().all(|&(_, i)| i != inode), "{fds:?}");
            assert_eq!(root.socket_inode(me, fd).ok().flatten(), None);
        });
        // Every reader takes the same hold; the full scans list the child alone.
        let holders = |scan: crate::owners::fds::OwnerScan| {
            let keys = scan.holders.get(&inode).cloned().unwrap_or_default();
            keys.iter().map(|k| k.pid).collect::<Vec<_>>()
        };
        let dup = handle.borrow_fd(fd).unwrap();
        let reader = std::thread::spawn(move || {
            let root = crate::root::ProcRoot::default();
            let mut scanner = crate::owners::scanner::OwnerScanner::open(&root).unwrap();
            let plain = root.scan_socket_owners().unwrap();
            (plain, scanner.scan_all().unwrap())
        });
        std::thread::sleep(hold);
        drop(dup);
        let (plain, fast) = reader.join().unwrap();
        assert_eq!(holders(plain), vec![child.id()]);
        assert_eq!(holders(fast), vec![child.id()]);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn an_exited_process_is_not_found() {
        assert!(ProcessHandle::open(u32::MAX / 2)
            .unwrap_err()
            .is_not_found());
    }
}
