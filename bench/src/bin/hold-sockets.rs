//! `hold-sockets`: forks N processes that each open K sockets and hold them, so refresh and
//! idle benchmarks see a realistic socket population.
//!
//! Sockets alternate UDP (bound) and TCP (bound and listening) on `--bind` (127.0.0.1 by
//! default) with kernel-chosen ports; with `--udp-port-base P` every socket is UDP, bound to
//! ports P, P+1, … (a sink for the live flood: packets are attributed to a real socket and
//! dropped at its full buffer instead of drawing ICMP errors).
//!
//! Lifetime is bounded: the parent prints `ready procs=N sockets=M` once every child holds
//! its sockets, then waits `--seconds` (or until SIGTERM/SIGINT kills it). Children wait on a
//! pipe whose only write end the parent holds, so they exit as soon as the parent does,
//! however it ends; they also give up after `--seconds` on their own.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use clap::Parser;

/// Forks processes holding sockets; see the module docs.
#[derive(Debug, Parser)]
struct Args {
    /// Processes to fork.
    #[arg(long, default_value_t = 1000)]
    procs: u32,
    /// Sockets per process.
    #[arg(long, default_value_t = 20)]
    per_proc: u32,
    /// Address every socket binds to.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Bind UDP sockets only, to consecutive ports from this one.
    #[arg(long)]
    udp_port_base: Option<u16>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
}

/// A socket held open until exit (dropping would close it).
#[allow(dead_code)] // held, never read
enum Held {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both fds on success; we take ownership of them immediately.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The sockets of child number `child`.
fn open_sockets(args: &Args, child: u32) -> std::io::Result<Vec<Held>> {
    (0..args.per_proc)
        .map(|i| match args.udp_port_base {
            Some(base) => {
                let port = u32::from(base) + child * args.per_proc + i;
                let port = u16::try_from(port).map_err(|_| std::io::ErrorKind::InvalidInput)?;
                UdpSocket::bind(SocketAddr::new(args.bind, port)).map(Held::Udp)
            }
            None if i % 2 == 0 => UdpSocket::bind(SocketAddr::new(args.bind, 0)).map(Held::Udp),
            None => TcpListener::bind(SocketAddr::new(args.bind, 0)).map(Held::Tcp),
        })
        .collect()
}

fn write_byte(fd: &OwnedFd, byte: u8) {
    // SAFETY: writes one byte from a local to an fd we own.
    unsafe { libc::write(fd.as_raw_fd(), (&byte as *const u8).cast(), 1) };
}

/// Waits until `fd` is readable (EOF: the parent is gone) or `timeout` passes.
fn wait_readable(fd: &OwnedFd, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// The child's whole life: open, report, hold, exit (never returns).
fn child(args: &Args, index: u32, ready: OwnedFd, hold: OwnedFd) -> ! {
    let held = open_sockets(args, index);
    write_byte(&ready, if held.is_ok() { b'R' } else { b'E' });
    drop(ready);
    if held.is_ok() {
        wait_readable(&hold, Duration::from_secs(args.seconds));
    }
    drop(held);
    // SAFETY: _exit is always safe; it skips the parent's atexit handlers and buffers.
    unsafe { libc::_exit(0) }
}

/// Reads one status byte per child; returns how many reported failure.
fn collect_ready(ready: &OwnedFd, children: u32) -> anyhow::Result<u32> {
    let mut failed = 0;
    let mut seen = 0;
    let mut buf = [0u8; 256];
    while seen < children {
        // SAFETY: reads into a local buffer from an fd we own.
        let n = unsafe { libc::read(ready.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            n if n > 0 => {
                let got = &buf[..n as usize];
                failed += got.iter().filter(|&&b| b != b'R').count() as u32;
                seen += n as u32;
            }
            0 => anyhow::bail!("children exited before reporting ({seen}/{children})"),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return Err(std::io::Error::last_os_error().into()),
        }
    }
    Ok(failed)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (ready_r, ready_w) = pipe()?;
    let (hold_r, hold_w) = pipe()?;
    let mut pids = Vec::with_capacity(args.procs as usize);
    for index in 0..args.procs {
        // SAFETY: this program is single-threaded, so the child may run ordinary code.
        match unsafe { libc::fork() } {
            -1 => return Err(std::io::Error::last_os_error().into()),
            0 => {
                drop(hold_w);
                drop(ready_r);
                child(&args, index, ready_w, hold_r)
            }
            pid => pids.push(pid),
        }
    }
    drop(ready_w);
    drop(hold_r);
    let failed = collect_ready(&ready_r, args.procs)?;
    anyhow::ensure!(
        failed == 0,
        "{failed} processes could not open their sockets"
    );
    println!(
        "ready procs={} sockets={} pid={}",
        args.procs,
        args.procs * args.per_proc,
        std::process::id()
    );
    std::thread::sleep(Duration::from_secs(args.seconds));
    drop(hold_w);
    for pid in pids {
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    Ok(())
}
