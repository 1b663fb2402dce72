//! The few sockets `std` cannot make: ping sockets (ICMP/ICMPv6 echo without privileges),
//! raw IP sockets of a given protocol number, TCP bound to a chosen source address before
//! connecting, and SCTP. Each is created with `libc` and handed back as a `std` socket type,
//! so reads, writes and timeouts use `std`'s checked wrappers.
//!
//! Invariants: every fd is owned by the returned value (closed on Drop, also on error paths);
//! no function here blocks without the timeout the caller set.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// IP protocol numbers used by the accuracy suite.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// A `sockaddr_storage` holding `addr`, and its length.
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// `socket(family of addr, kind, proto)` with close-on-exec, as an owned fd.
fn socket_for(addr: SocketAddr, kind: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket has no memory preconditions.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage is a valid sockaddr of length len for the duration of the call.
    check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) })
}

fn connect(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage is a valid sockaddr of length len for the duration of the call.
    check(unsafe { libc::connect(fd.as_raw_fd(), (&raw const storage).cast(), len) })
}

/// Sets SO_SNDTIMEO, which also bounds a blocking `connect` on Linux.
fn send_timeout(fd: OwnedFd, timeout: Duration) -> io::Result<OwnedFd> {
    // Borrow the fd as a TcpStream only to reach std's checked setsockopt wrapper.
    let stream = TcpStream::from(fd);
    stream.set_write_timeout(Some(timeout))?;
    Ok(OwnedFd::from(stream))
}

/// A TCP connection to `remote` from `local` (port 0: any), with `connect` bounded by
/// `timeout`.
pub fn tcp_connect_from(
    local: SocketAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let fd = send_timeout(socket_for(remote, libc::SOCK_STREAM, 0)?, timeout)?;
    bind(&fd, local)?;
    connect(&fd, remote)?;
    Ok(TcpStream::from(fd))
}

/// [`tcp_connect_from`] with `SO_REUSEADDR` set before the bind, so `local` may be a port a
/// closed connection (in TIME_WAIT) still holds, as a server re-binding its port does.
pub fn tcp_connect_reusing(
    local: SocketAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let fd = send_timeout(socket_for(remote, libc::SOCK_STREAM, 0)?, timeout)?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&fd, local)?;
    connect(&fd, remote)?;
    Ok(TcpStream::from(fd))
}

/// Sets `SO_LINGER` to zero seconds: closing `stream` then sends a RST and leaves no
/// TIME_WAIT behind.
pub fn linger_zero(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: linger is a valid value of the option's type for the duration of the call.
    check(unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    })
}

fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: value is a valid c_int for the duration of the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// An ICMP (IPv4 `local`) or ICMPv6 ping socket bound to `local`; the kernel assigns the echo
/// identifier, which `local_addr().port()` then reports. Needs `net.ipv4.ping_group_range`
/// to include the caller's group.
pub fn ping_socket(local: SocketAddr) -> io::Result<UdpSocket> {
    let proto = match local {
        SocketAddr::V4(_) => libc::IPPROTO_ICMP,
        SocketAddr::V6(_) => libc::IPPROTO_ICMPV6,
    };
    let fd = socket_for(local, libc::SOCK_DGRAM, proto)?;
    bind(&fd, local)?;
    Ok(UdpSocket::from(fd))
}

/// A raw IPv4/IPv6 socket of protocol `proto` bound to `local`'s address (the port is
/// ignored). IPv4 reads return the IP header followed by the payload.
pub fn raw_socket(local: SocketAddr, proto: u8) -> io::Result<UdpSocket> {
    let fd = socket_for(local, libc::SOCK_RAW, libc::c_int::from(proto))?;
    bind(&fd, SocketAddr::new(local.ip(), 0))?;
    Ok(UdpSocket::from(fd))
}

/// A UDP socket bound to `[::]:port` with `IPV6_V6ONLY` off, whatever the host's
/// `net.ipv6.bindv6only`: it sends and receives IPv4 as `::ffff:a.b.c.d`.
pub fn dual_stack_udp(port: u16) -> io::Result<UdpSocket> {
    use std::os::fd::AsRawFd;
    let local = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port);
    let fd = socket_for(local, libc::SOCK_DGRAM, 0)?;
    let off: libc::c_int = 0;
    // SAFETY: optval points to a c_int of the given length for the duration of the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const off).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    bind(&fd, local)?;
    Ok(UdpSocket::from(fd))
}

/// Whether the kernel offers SCTP: `Err` carries the reason it does not.
pub fn sctp_available() -> io::Result<()> {
    let any: SocketAddr = "0.0.0.0:0".parse().expect("literal");
    socket_for(any, libc::SOCK_STREAM, libc::IPPROTO_SCTP).map(drop)
}

/// A one-to-one SCTP listener on `local`.
pub fn sctp_listen(local: SocketAddr) -> io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let fd = socket_for(local, libc::SOCK_STREAM, libc::IPPROTO_SCTP)?;
    bind(&fd, local)?;
    // SAFETY: listen has no memory preconditions.
    check(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
    Ok(TcpListener::from(fd))
}

/// A one-to-one SCTP association to `remote` (read/write through the `TcpStream` API, which
/// uses plain `recv`/`send`).
pub fn sctp_connect(remote: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let fd = send_timeout(
        socket_for(remote, libc::SOCK_STREAM, libc::IPPROTO_SCTP)?,
        timeout,
    )?;
    connect(&fd, remote)?;
    Ok(TcpStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trips_through_the_kernel() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("local_addr");
        let (storage, len) = sockaddr(addr);
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in>());
        // SAFETY: sockaddr wrote a sockaddr_in into storage.
        let sin = unsafe { &*(&raw const storage).cast::<libc::sockaddr_in>() };
        assert_eq!(u16::from_be(sin.sin_port), addr.port());
    }

    #[test]
    fn tcp_connect_from_uses_the_chosen_source_address() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let local = "127.0.0.9:0".parse().expect("addr");
        let stream = tcp_connect_from(
            local,
            listener.local_addr().expect("addr"),
            Duration::from_secs(5),
        )
        .expect("connect");
        assert_eq!(stream.local_addr().expect("addr").ip(), local.ip());
    }
}
