//! `udp-flood`: sends small UDP datagrams as fast as it can with `sendmmsg`, over many
//! flows, bounded in packet count AND time.
//!
//! Flows: `--sockets` sending sockets (distinct source ports) × `--ports` destination ports
//! from `--port-base`. The destination must be inside the benchmark's own veth subnet
//! (10.199.0.0/24) or loopback: the tool refuses anything else, so a typo cannot send a
//! flood anywhere real. Prints one line: `sent=N seconds=S pps=R`.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use clap::Parser;

/// Datagrams handed to the kernel per `sendmmsg` call.
const BATCH: usize = 64;

/// Floods UDP datagrams to one address; see the module docs.
#[derive(Debug, Parser)]
struct Args {
    /// Destination (10.199.0.0/24 or 127.0.0.0/8 only).
    #[arg(long)]
    dst: Ipv4Addr,
    #[arg(long, default_value_t = 40_000)]
    port_base: u16,
    /// Destination ports (flows per sending socket).
    #[arg(long, default_value_t = 64)]
    ports: u16,
    /// Sending sockets (distinct source ports).
    #[arg(long, default_value_t = 16)]
    sockets: u16,
    /// Stop after this many datagrams.
    #[arg(long, default_value_t = 2_000_000)]
    packets: u64,
    /// Stop after this many seconds, whatever was sent.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// UDP payload bytes (18 makes a 64-byte Ethernet frame).
    #[arg(long, default_value_t = 18)]
    payload: usize,
    /// Send at most this many datagrams per second (paced per batch); 0: as fast as it can.
    #[arg(long, default_value_t = 0)]
    pps: u64,
}

fn allowed(dst: Ipv4Addr) -> bool {
    let [a, b, c, _] = dst.octets();
    dst.is_loopback() || (a, b, c) == (10, 199, 0)
}

/// One sending socket with its prepared batch of messages (one per destination port).
struct Sender {
    socket: UdpSocket,
    addrs: Vec<libc::sockaddr_in>,
    next: usize,
}

impl Sender {
    fn new(args: &Args) -> anyhow::Result<Sender> {
        let socket = UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?;
        let addrs = (0..args.ports)
            .map(|i| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: args.port_base.wrapping_add(i).to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(args.dst).to_be(),
                },
                sin_zero: [0; 8],
            })
            .collect();
        Ok(Sender {
            socket,
            addrs,
            next: 0,
        })
    }

    /// Sends up to `count` (≤ BATCH) datagrams, cycling through the destination ports.
    /// Returns how many the kernel took.
    fn send(&mut self, payload: &mut [u8], count: usize) -> std::io::Result<usize> {
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let ports = self.addrs.len();
        for msg in msgs.iter_mut().take(count) {
            let addr = &mut self.addrs[self.next];
            self.next = (self.next + 1) % ports;
            msg.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
            msg.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            msg.msg_hdr.msg_iov = &mut iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `count` headers point at live addresses and the iovec above.
        let sent =
            unsafe { libc::sendmmsg(self.socket.as_raw_fd(), msgs.as_mut_ptr(), count as u32, 0) };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Sends until the count or the time runs out; returns the count sent.
fn flood(args: &Args, senders: &mut [Sender]) -> anyhow::Result<u64> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let mut payload = vec![0x5a; args.payload];
    let mut sent = 0u64;
    let mut turn = 0usize;
    while sent < args.packets && Instant::now() < deadline {
        let count = (args.packets - sent).min(BATCH as u64) as usize;
        match senders[turn].send(&mut payload, count) {
            Ok(n) => sent += n as u64,
            // A full queue or an ICMP error reported on the socket: keep going.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ECONNREFUSED)) => {}
            Err(e) => return Err(e.into()),
        }
        turn = (turn + 1) % senders.len();
        if args.pps > 0 {
            // Ahead of the pace: wait until this many datagrams are due.
            let due = Duration::from_secs_f64(sent as f64 / args.pps as f64);
            let ahead = due.saturating_sub(started.elapsed());
            if !ahead.is_zero() {
                std::thread::sleep(ahead.min(deadline.saturating_duration_since(Instant::now())));
            }
        }
    }
    Ok(sent)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        allowed(args.dst),
        "refusing to send to {}: only 10.199.0.0/24 (the bench veth) or loopback",
        args.dst
    );
    anyhow::ensure!(
        args.sockets > 0 && args.ports > 0,
        "--sockets and --ports must be > 0"
    );
    let mut senders = (0..args.sockets)
        .map(|_| Sender::new(&args))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let sent = flood(&args, &mut senders)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "sent={sent} seconds={seconds:.3} pps={:.0} flows={}",
        sent as f64 / seconds,
        u32::from(args.sockets) * u32::from(args.ports)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bench_veth_subnet_and_loopback_are_allowed() {
        assert!(allowed(Ipv4Addr::new(10, 199, 0, 1)));
        assert!(allowed(Ipv4Addr::new(127, 0, 0, 1)));
        assert!(!allowed(Ipv4Addr::new(10, 199, 1, 1)));
        assert!(!allowed(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!allowed(Ipv4Addr::new(192, 168, 1, 1)));
        assert!(!allowed(Ipv4Addr::new(8, 8, 8, 8)));
    }
}
