//! The kernel's socket tables over netlink `sock_diag` (`INET_DIAG`): the same entries as the
//! `/proc/net/{tcp,tcp6,udp,udp6}` text, without formatting and parsing text, with the
//! kernel filtering by state, and with a targeted lookup of one socket by its 4-tuple.
//!
//! Requests and replies are the types of `netlink-packet-sock-diag` and `netlink-packet-core`
//! over a `netlink-sys` socket ([`request`], [`reply`]).
//!
//! Invariants:
//! - Blocking calls, one request in flight at a time (`&mut self`). Every receive waits at
//!   most [`RECV_TIMEOUT`]; `EINTR` is retried.
//! - One receive buffer of [`RECV_BUFFER`] bytes is allocated at [`SockDiag::open`] and
//!   reused; a call allocates nothing beyond the growth of the caller's `out`.
//! - Replies to an abandoned request (a timeout or a malformed message part-way through a
//!   dump) are never read as the answer to a later one: the socket is replaced before the
//!   next request, and messages are matched by sequence number.
//! - Entries equal those of [`ProcRoot::read_sockets`](crate::ProcRoot::read_sockets) for
//!   the same socket: IPv4 sockets are `AF_INET` entries, `AF_INET6` sockets keep IPv4-mapped
//!   addresses, sockets with no peer have an unspecified remote with port 0. (One known
//!   difference: a `SYN_RECV` request socket, inode 0, has uid 0 here and the listener's uid
//!   in `/proc`.)
//! - A dump is not a snapshot: the kernel fills each datagram from where the previous one
//!   stopped (a position in a hash chain), so a socket created or closed meanwhile can make
//!   another be listed twice or missed, as with the `/proc/net` text, also read in pieces.
//! - The socket answers for the network namespace of the thread that called
//!   [`SockDiag::open`]; the `netns` arguments only label the entries.

mod reply;
mod request;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NetlinkAddr};
use pidcap_core::{NetNsId, SocketEntry};
use pidcap_wire::IpProto;

use crate::error::{Error, Result};
use reply::{Messages, Reply, Shape};
use request::{find_families, Family, Request};

/// Every TCP state bit (`1 << TcpState number`): no filtering.
pub const ALL_STATES: u32 = 0xffff_ffff;

/// How long one receive may wait for the kernel.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// The receive buffer. The kernel fills dump datagrams up to the reader's buffer size, capped
/// at 32 KiB; twice that leaves room for future kernels. A bigger datagram is an error
/// (detected with `MSG_TRUNC`), never silently cut.
const RECV_BUFFER: usize = 64 * 1024;

/// What [`Error::Io`] names for this reader.
const SOCKET_NAME: &str = "netlink sock_diag socket";

/// A netlink sock_diag socket, opened once and reused (blocking calls).
///
/// It answers for the network namespace of the thread that opened it. After an abandoned
/// request (a receive timeout, a malformed reply) the next call opens a fresh socket, in the
/// calling thread's namespace: use one `SockDiag` from threads of one namespace.
#[derive(Debug)]
pub struct SockDiag {
    socket: Socket,
    buffer: Vec<u8>,
    seq: u32,
    /// A request was abandoned part-way: its replies may still arrive.
    abandoned: bool,
}

/// How a request ended.
enum Outcome {
    Answered,
    Failed(i32),
}

impl SockDiag {
    /// Opens a `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
    ///
    /// Fails with [`Error::PermissionDenied`] or [`Error::Io`] (netlink not available, e.g.
    /// a seccomp filter); the caller can fall back to the `/proc/net` tables.
    pub fn open() -> Result<SockDiag> {
        Ok(SockDiag {
            socket: open_socket()?,
            buffer: vec![0; RECV_BUFFER],
            seq: 0,
            abandoned: false,
        })
    }

    /// Dumps every socket of `proto` (Tcp, Udp, UdpLite) for IPv4 and IPv6 into `out`, with the
    /// kernel filtering states by `states` bitmask (1 << TcpState number; use ALL_STATES for all).
    ///
    /// IPv4 entries come first, then IPv6. Another `proto` is [`Error::Netlink`] with
    /// `EPROTONOSUPPORT`, without asking the kernel; a kernel without the protocol's diag
    /// module answers `ENOENT`. On error, `out` may hold the entries read before it.
    pub fn dump_into(
        &mut self,
        proto: IpProto,
        states: u32,
        netns: NetNsId,
        out: &mut Vec<SocketEntry>,
    ) -> Result<()> {
        check_proto(proto, "dump")?;
        let shape = Shape { proto, netns };
        for family in [Family::V4, Family::V6] {
            let request = Request::dump(family, proto, states);
            let before = out.len();
            if let Outcome::Failed(errno) = self.exchange(&request, shape, |e| out.push(e))? {
                return Err(netlink_error(proto, &request, errno));
            }
            let sockets = out.len() - before;
            let family = family.name();
            tracing::trace!(proto = %proto.name(), family, sockets, "sock_diag dump");
        }
        Ok(())
    }

    /// Convenience: TCP + UDP (v4+v6), all states — the same set ProcRoot::read_sockets returns.
    pub fn read_sockets_into(&mut self, netns: NetNsId, out: &mut Vec<SocketEntry>) -> Result<()> {
        self.dump_into(IpProto::Tcp, ALL_STATES, netns, out)?;
        self.dump_into(IpProto::Udp, ALL_STATES, netns, out)
    }

    /// Targeted lookup of ONE socket by its 4-tuple (`INET_DIAG_REQ_V2` with the addresses and
    /// ports set, cookie `INET_DIAG_NOCOOKIE`, no `NLM_F_DUMP`). `None` when the kernel has no
    /// such socket (`ENOENT`).
    ///
    /// The kernel answers with the socket its receive path would deliver a packet from
    /// `remote` to `local` to: the connected socket with exactly this 4-tuple when there is
    /// one, otherwise a TCP listener, or an unconnected UDP socket, bound to `local`'s port
    /// (its entry then has an unspecified remote; compare `entry.remote` with `remote` to
    /// tell the two apart).
    ///
    /// IPv4 addresses (plain or `::ffff:`-mapped) are asked as `AF_INET` first, then as
    /// `AF_INET6` with mapped addresses; the `AF_INET` lookup already finds IPv4 traffic of a
    /// dual-stack IPv6 socket, whose entry keeps the mapped addresses (as in `/proc/net/tcp6`).
    /// The IPv6 scope id is not sent (`idiag_if` 0).
    pub fn find(
        &mut self,
        proto: IpProto,
        local: SocketAddr,
        remote: SocketAddr,
        netns: NetNsId,
    ) -> Result<Option<SocketEntry>> {
        check_proto(proto, "lookup")?;
        let shape = Shape { proto, netns };
        for &family in find_families(local, remote) {
            let request = Request::find(family, proto, local, remote);
            let mut found = None;
            match self.exchange(&request, shape, |e| found = Some(e))? {
                Outcome::Answered if found.is_some() => return Ok(found),
                Outcome::Answered | Outcome::Failed(libc::ENOENT) => {}
                Outcome::Failed(errno) => return Err(netlink_error(proto, &request, errno)),
            }
        }
        Ok(None)
    }

    /// Sends `request` and feeds every socket of its reply to `on_socket`, until the dump's
    /// `NLMSG_DONE`, an `NLMSG_ERROR`, or (for a lookup) the one answer.
    fn exchange(
        &mut self,
        request: &Request,
        shape: Shape,
        mut on_socket: impl FnMut(SocketEntry),
    ) -> Result<Outcome> {
        self.start()?;
        let seq = self.seq;
        self.send(&request.encode(seq))?;
        loop {
            let len = self.recv()?;
            let mut answered = false;
            for reply in Messages::new(&self.buffer[..len], seq, shape) {
                match reply.map_err(|reason| Error::parse("netlink sock_diag reply", 0, reason))? {
                    Reply::Socket(entry) => {
                        on_socket(entry);
                        answered = !request.is_dump();
                    }
                    Reply::Done => return Ok(self.finish(Outcome::Answered)),
                    Reply::Failed(errno) => return Ok(self.finish(Outcome::Failed(errno))),
                    Reply::Skipped => {}
                }
            }
            if answered {
                return Ok(self.finish(Outcome::Answered));
            }
        }
    }

    /// Begins a request: a fresh socket if the last one was abandoned, a new sequence number.
    fn start(&mut self) -> Result<()> {
        if self.abandoned {
            tracing::debug!("previous sock_diag request abandoned; reopening the socket");
            self.socket = open_socket()?;
        }
        self.abandoned = true;
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }

    fn finish(&mut self, outcome: Outcome) -> Outcome {
        self.abandoned = false;
        outcome
    }

    fn send(&self, bytes: &[u8]) -> Result<()> {
        loop {
            match self.socket.send(bytes, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// Receives one datagram into the buffer; its length.
    fn recv(&mut self) -> Result<usize> {
        loop {
            // MSG_TRUNC: the datagram's real length, to detect one bigger than the buffer.
            match self.socket.recv(&mut &mut self.buffer[..], libc::MSG_TRUNC) {
                Ok(len) if len > self.buffer.len() => {
                    let e = format!("{len}-byte reply exceeds the {RECV_BUFFER}-byte buffer");
                    return Err(io_error(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                Ok(len) => return Ok(len),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let e = format!("no reply from the kernel within {RECV_TIMEOUT:?}");
                    return Err(io_error(io::Error::new(io::ErrorKind::TimedOut, e)));
                }
                Err(e) => return Err(io_error(e)),
            }
        }
    }
}

impl SockDiag {
    /// Reads one reply datagram to request `seq` as a dump or lookup does, without a socket:
    /// the entry point of the `sock_diag` fuzz target (`fuzz/`), not an API. One item per
    /// netlink message: a socket, `None` for the end, a failure or a skipped message, or the
    /// reason a message is malformed (then the last item).
    #[doc(hidden)]
    pub fn parse_reply(
        datagram: &[u8],
        seq: u32,
    ) -> Vec<std::result::Result<Option<SocketEntry>, String>> {
        let shape = Shape {
            proto: IpProto::Tcp,
            netns: NetNsId(0),
        };
        let socket = |reply| match reply {
            Reply::Socket(entry) => Some(entry),
            Reply::Done | Reply::Failed(_) | Reply::Skipped => None,
        };
        Messages::new(datagram, seq, shape)
            .map(|reply| reply.map(socket))
            .collect()
    }
}

/// A bound, connected `NETLINK_SOCK_DIAG` socket with [`RECV_TIMEOUT`] set.
fn open_socket() -> Result<Socket> {
    let classify = |e| Error::from_io(&PathBuf::from(SOCKET_NAME), e);
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(classify)?;
    socket.bind_auto().map_err(classify)?;
    socket.connect(&NetlinkAddr::new(0, 0)).map_err(classify)?;
    set_recv_timeout(&socket, RECV_TIMEOUT).map_err(classify)?;
    Ok(socket)
}

pub(crate) fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: the fd is owned by `socket` and open; `tv` is a valid timeval for the duration
    // of the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The protocols whose sockets `/proc/net` lists in the same shape.
fn check_proto(proto: IpProto, verb: &str) -> Result<()> {
    match proto {
        IpProto::Tcp | IpProto::Udp | IpProto::UdpLite => Ok(()),
        _ => Err(Error::Netlink {
            what: format!("{} {verb}", proto.name()),
            errno: libc::EPROTONOSUPPORT,
        }),
    }
}

fn netlink_error(proto: IpProto, request: &Request, errno: i32) -> Error {
    let verb = if request.is_dump() { "dump" } else { "lookup" };
    Error::Netlink {
        what: format!("{} {verb} ({})", proto.name(), request.family().name()),
        errno,
    }
}

fn io_error(source: io::Error) -> Error {
    Error::Io {
        path: PathBuf::from(SOCKET_NAME),
        source,
    }
}
