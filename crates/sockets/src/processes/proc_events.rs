//! The kernel's process-event connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`): a multicast
//! stream of fork, exec and exit events, so the daemon learns of new and dead processes without
//! rescanning `/proc`.
//!
//! The bytes are read by the pure [`parse_datagram`] ([`wire`]); this file is the socket.
//!
//! Invariants:
//! - Pids are thread-group ids (userspace's pids) in the initial PID namespace. Events of
//!   threads (`pid != tgid`) are skipped. One case remains: a process whose main thread ends
//!   with `pthread_exit` while other threads run reports its `Exit` then, not when the last
//!   thread ends.
//! - The kernel sends events only to listeners in the initial PID and user namespaces and
//!   silently ignores the others' subscriptions; [`ProcEvents::open`] waits (at most
//!   [`ACK_TIMEOUT`]) for the kernel's acknowledgement so that this is an error, not silence.
//! - No threads, no blocking beyond the caller's timeout: the fd is non-blocking (ready for
//!   `AsyncFd`), [`ProcEvents::recv_into`] polls it once and then drains at most
//!   [`MAX_DATAGRAMS_PER_CALL`] datagrams.
//! - One receive buffer of [`RECV_BUFFER`] bytes, allocated at open and reused; a call
//!   allocates nothing beyond the growth of the caller's `out`.
//! - When the kernel drops events (the socket's queue was full: `ENOBUFS`), [`ProcEvents::lost`]
//!   grows; the stream goes on. Whoever keeps state from these events must then rescan.
//! - Only datagrams from the kernel (netlink port 0) are read; another process's are skipped.

mod wire;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_CONNECTOR, Socket, SocketAddr as NetlinkAddr};

use crate::error::{Error, Result};
pub use wire::{parse_datagram, MalformedDatagram};
use wire::{subscription_request, McastOp, Message, Messages, Skip, CN_IDX_PROC};

/// A process's fork, exec or exit, as the kernel reports it. Pids are thread-group ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcEvent {
    /// A new process (not a thread); `parent_pid` is the forking process's tgid. `at_ns`:
    /// when, on the kernel's `CLOCK_MONOTONIC` (as for [`ProcEvent::Exit`]).
    Fork {
        parent_pid: u32,
        child_pid: u32,
        at_ns: u64,
    },
    /// The process replaced its program (`execve`): its executable and command line changed.
    Exec { pid: u32 },
    /// The process exited. `exit_code` is the raw wait status (`exit(3)` is `3 << 8`; killed
    /// by `SIGKILL` is `9`), as `waitpid` would report it.
    /// `at_ns`: when, on the kernel's `CLOCK_MONOTONIC` (`ktime_get_ns`), in nanoseconds —
    /// not when it was read, which may be milliseconds later.
    Exit {
        pid: u32,
        exit_code: u32,
        at_ns: u64,
    },
}

/// The socket's receive queue: events wait here while the caller is busy. 4 MiB holds about
/// 5,000 events (each queued datagram also costs the kernel's `sk_buff` overhead).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// The buffer one datagram is read into. The kernel sends one 76-byte message per datagram.
const RECV_BUFFER: usize = 8 * 1024;

/// How long [`ProcEvents::open`] waits for the kernel to acknowledge the subscription.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// The most datagrams one [`ProcEvents::recv_into`] reads, so that a fork storm cannot keep the
/// caller in the call; the rest stay queued for the next.
const MAX_DATAGRAMS_PER_CALL: usize = 4096;

/// What [`Error::Parse`] names.
const DATAGRAM_NAME: &str = "proc connector datagram";

/// What errors name; a missing `CAP_NET_ADMIN` is the one cause of `PermissionDenied`.
const SOCKET_NAME: &str =
    "netlink proc connector socket (this kernel requires CAP_NET_ADMIN to listen)";

/// A subscription to the kernel's process events: fork, exec and exit of every process.
///
/// Open one per daemon; every listener receives every event. Dropping it unsubscribes.
#[derive(Debug)]
pub struct ProcEvents {
    socket: Socket,
    /// This socket's netlink port: unique among sockets, so it also tells our acknowledgement
    /// apart from other listeners'.
    port: u32,
    buffer: Vec<u8>,
    /// Events read while `open` waited for the acknowledgement.
    pending: Vec<ProcEvent>,
    subscribed: bool,
    lost: u64,
    skipped: Skipped,
}

/// Messages read but not returned, by reason (traced, for diagnosis).
#[derive(Debug, Default)]
struct Skipped {
    threads: u64,
    other_kinds: u64,
    other_messages: u64,
    other_acks: u64,
    foreign_senders: u64,
}

/// What one receive got.
enum Received {
    Datagram(usize),
    Foreign,
    Overrun,
    Empty,
}

impl ProcEvents {
    /// Opens the connector socket, subscribes (PROC_CN_MCAST_LISTEN), sets a large receive
    /// buffer (e.g. 4 MiB via SO_RCVBUFFORCE, falling back to SO_RCVBUF).
    ///
    /// Without `CAP_NET_ADMIN` the kernel decides: before Linux 6.6 it always refuses
    /// ([`Error::PermissionDenied`]); since 6.6 (commit bfdfdc2f3b70) upstream lets any user
    /// listen, but builds of the same version differ, so callers must handle both outcomes.
    /// Without `CAP_NET_ADMIN` the receive buffer is capped by `net.core.rmem_max`. Returns once the kernel has acknowledged the
    /// subscription; [`Error::Io`] (`TimedOut`) when it does not within a second, which happens
    /// outside the initial PID or user namespace (a container).
    pub fn open() -> Result<ProcEvents> {
        let socket = open_socket().map_err(classify)?;
        let mut address = NetlinkAddr::new(0, 0);
        socket.get_address(&mut address).map_err(io_error)?;
        let mut events = ProcEvents {
            socket,
            port: address.port_number(),
            buffer: vec![0; RECV_BUFFER],
            pending: Vec::new(),
            subscribed: false,
            lost: 0,
            skipped: Skipped::default(),
        };
        events.send(McastOp::Listen).map_err(classify)?;
        events.subscribed = true;
        events.await_ack()?;
        tracing::debug!(port = events.port, "subscribed to proc events");
        Ok(events)
    }

    /// Waits up to `timeout` for events and appends them to `out` (all that are queued, not
    /// just one). Returns Ok(()) also on timeout.
    ///
    /// ENOBUFS (the kernel dropped events because we were slow) → counted in `lost()` and not
    /// an error. A datagram this reader cannot parse is [`Error::Parse`], with the events read
    /// before it in `out`; the socket stays usable.
    pub fn recv_into(&mut self, timeout: Duration, out: &mut Vec<ProcEvent>) -> Result<()> {
        let before = out.len();
        out.append(&mut self.pending);
        let timeout = if out.len() > before {
            Duration::ZERO
        } else {
            timeout
        };
        if wait_readable(self.as_raw_fd(), timeout).map_err(io_error)? {
            self.drain(out)?;
        }
        let events = out.len() - before;
        tracing::trace!(events, lost = self.lost, skipped = ?self.skipped, "proc events");
        Ok(())
    }

    /// How many times the kernel reported dropped events (`ENOBUFS`); each time, one or more
    /// events were lost.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The socket, non-blocking, for `poll` or `AsyncFd`: readable when events are queued.
    pub fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Reads until the kernel's acknowledgement of our subscription, keeping events meanwhile.
    fn await_ack(&mut self) -> Result<()> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        let mut pending = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero()
                || !wait_readable(self.as_raw_fd(), remaining).map_err(io_error)?
            {
                return Err(io_error(io::Error::new(io::ErrorKind::TimedOut, NO_ACK)));
            }
            if self.drain(&mut pending)? {
                self.pending = pending;
                return Ok(());
            }
        }
    }

    /// Reads the queued datagrams (at most [`MAX_DATAGRAMS_PER_CALL`]); true when our
    /// acknowledgement was among them.
    fn drain(&mut self, out: &mut Vec<ProcEvent>) -> Result<bool> {
        let mut acked = false;
        for _ in 0..MAX_DATAGRAMS_PER_CALL {
            match self.recv()? {
                Received::Datagram(len) => acked |= self.read_datagram(len, out)?,
                Received::Foreign => self.skipped.foreign_senders += 1,
                Received::Overrun => self.lost += 1,
                Received::Empty => break,
            }
        }
        Ok(acked)
    }

    fn recv(&mut self) -> Result<Received> {
        let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
        loop {
            return match self.socket.recv_from(&mut &mut self.buffer[..], flags) {
                Ok((_, from)) if from.port_number() != 0 => Ok(Received::Foreign),
                Ok((len, _)) => Ok(Received::Datagram(len.min(self.buffer.len()))),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(Received::Overrun),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Received::Empty),
                Err(e) => Err(io_error(e)),
            };
        }
    }

    /// Appends the datagram's events to `out`; true when it held our acknowledgement.
    fn read_datagram(&mut self, len: usize, out: &mut Vec<ProcEvent>) -> Result<bool> {
        let mut acked = false;
        for message in Messages::new(&self.buffer[..len]) {
            let message = message.map_err(|e| Error::parse(DATAGRAM_NAME, 0, e.to_string()))?;
            match message {
                Message::Event(event) => out.push(event),
                Message::Ack { ack, err } if ack == self.port.wrapping_add(1) => {
                    refused(err)?;
                    acked = true;
                }
                Message::Ack { .. } => self.skipped.other_acks += 1,
                Message::Skipped(skip) => self.skipped.count(skip),
            }
        }
        Ok(acked)
    }

    fn send(&self, op: McastOp) -> io::Result<()> {
        let request = subscription_request(op, self.port, self.port);
        let kernel = NetlinkAddr::new(0, 0);
        loop {
            match self.socket.send_to(&request, &kernel, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => return result.map(drop),
            }
        }
    }
}

impl AsRawFd for ProcEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Drop for ProcEvents {
    /// Unsubscribes, best-effort: older kernels count listeners only by these requests
    /// (and build events while the count is above zero); newer ones also count a close.
    fn drop(&mut self) {
        if self.subscribed {
            if let Err(error) = self.send(McastOp::Ignore) {
                tracing::debug!(%error, "unsubscribing from proc events failed");
            }
        }
    }
}

impl Skipped {
    fn count(&mut self, skip: Skip) {
        match skip {
            Skip::Thread => self.threads += 1,
            Skip::OtherKind => self.other_kinds += 1,
            Skip::NotConnector | Skip::OtherConnector => self.other_messages += 1,
        }
    }
}

const NO_ACK: &str = "the kernel did not acknowledge the proc events subscription within 1 s: \
    it sends process events only to listeners in the initial PID and user namespaces";

/// A non-blocking connector socket bound to the process-event multicast group, with a large
/// receive queue. Joining the group is what needs `CAP_NET_ADMIN` (before Linux 6.6).
fn open_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_CONNECTOR)?;
    socket.bind(&NetlinkAddr::new(0, CN_IDX_PROC))?;
    socket.set_non_blocking(true)?;
    set_receive_buffer(&socket)?;
    Ok(socket)
}

/// `SO_RCVBUFFORCE` passes `net.core.rmem_max` but needs `CAP_NET_ADMIN`; `SO_RCVBUF` is
/// capped by it.
fn set_receive_buffer(socket: &Socket) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    set_int_option(fd, libc::SO_RCVBUFFORCE, SOCKET_BUFFER)
        .or_else(|_| set_int_option(fd, libc::SO_RCVBUF, SOCKET_BUFFER))
}

fn set_int_option(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller; `value` lives for the call and its
    // size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Polls `fd` for input (or an error such as `ENOBUFS`) for up to `timeout`, retrying `EINTR`
/// with the time left. False on timeout. `ppoll`, not `poll`: the watcher waits 250 µs
/// between looks at a young process, which `poll`'s milliseconds would make 1 ms (a process
/// that binds, sends and exits within a millisecond or two would be missed).
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline.map(|d| timespec(d.saturating_duration_since(Instant::now())));
        let left_ptr = left
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `pollfd` is one valid, initialised entry and `left_ptr` null or a valid
        // timespec for the duration of the call; no signal mask is changed (null).
        match unsafe { libc::ppoll(&mut pollfd, 1, left_ptr, std::ptr::null()) } {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => {}
                e => return Err(e),
            },
        }
    }
}

/// `duration` as a `timespec`, its seconds capped to the type's range.
fn timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(duration.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: duration.subsec_nanos() as libc::c_long, // under 10⁹: fits
    }
}

/// The kernel's answer to our subscription: `err` is a positive errno, or 0.
fn refused(err: u32) -> Result<()> {
    match err {
        0 => Ok(()),
        errno => {
            let source = io::Error::from_raw_os_error(errno as i32);
            Err(io_error(io::Error::new(
                source.kind(),
                format!("subscription refused: {source}"),
            )))
        }
    }
}

/// `EPERM`/`EACCES` (no `CAP_NET_ADMIN`) become [`Error::PermissionDenied`].
fn classify(source: io::Error) -> Error {
    Error::from_io(Path::new(SOCKET_NAME), source)
}

fn io_error(source: io::Error) -> Error {
    Error::Io {
        path: SOCKET_NAME.into(),
        source,
    }
}
