//! `pidcap-peer`: one process that owns real sockets and moves a known amount of traffic, so
//! the end-to-end tests can compare pidcapd's counters with an independent capture.
//!
//! Protocol on stdio (one JSON object per line on stdout):
//! 1. the sockets are created (and, for clients, connected), then ONE describe line:
//!    `{"event":"ready","pid":…,"proto":"tcp"|"udp","local":"ip:port","remote":"ip:port"|null}`;
//! 2. servers accept their one connection and print `{"event":"accepted","local":…,"remote":…}`;
//! 3. the peer waits for the line `go` on stdin, moves its traffic, and prints
//!    `{"event":"done","sent":N,"received":M}` (application-level bytes);
//! 4. it keeps its sockets open until stdin reaches EOF, then exits 0.
//!
//! Modes for the accuracy suite (`pidcap-accuracy`) follow other protocols, named per mode in
//! [`USAGE`]: `tcp-sink` is a long-lived server for many connections; `tcp-burst` and
//! `churn` are clients that start moving bytes the moment they are connected (they never wait
//! for `go`), print one `{"event":"flow",…}` line per connection and exit; `udp-dual`, `ping`,
//! `raw-send`, `raw-recv`, `sctp-server` and `sctp-client` use the ready/go/done/EOF steps
//! above.
//!
//! Invariants: every wait is bounded (socket timeouts, a watchdog that exits with status 3
//! after [`WATCHDOG`]), so a forgotten peer never outlives its test by long.

use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pidcap_e2e::accuracy::sockets;
use serde_json::json;

/// How long any single socket read or write may block.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer may live at most, whatever its test does.
const WATCHDOG: Duration = Duration::from_secs(120);

fn main() {
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("pidcap-peer: watchdog expired after {WATCHDOG:?}");
        std::process::exit(3);
    });
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("pidcap-peer: {e:#}");
        std::process::exit(2);
    }
}

fn run(args: &[String]) -> Result<()> {
    let (mode, rest) = args.split_first().context(USAGE)?;
    let opts = Opts::parse(rest)?;
    match mode.as_str() {
        "tcp-server" => tcp_server(&opts),
        "tcp-client" => tcp_client(&opts),
        "udp-send" => udp_send(&opts),
        "udp-recv" => udp_recv(&opts),
        "tcp-sink" => tcp_sink(&opts),
        "tcp-burst" => tcp_burst(&opts),
        "churn" => churn(&opts),
        "tcp-reuse" => tcp_reuse(&opts),
        "fork-share" => fork_share(&opts),
        "udp-queries" => udp_queries(&opts),
        "udp-dual" => udp_dual(&opts),
        "ping" => ping(&opts),
        "raw-send" => raw_send(&opts),
        "packet-send" => packet_send(&opts),
        "raw-recv" => raw_recv(&opts),
        "sctp-server" => sctp_server(&opts),
        "sctp-client" => sctp_client(&opts),
        other => bail!("unknown mode {other:?}; {USAGE}"),
    }
}

const USAGE: &str = "usage: pidcap-peer tcp-server --bind ADDR [--recv N] [--send M] | \
    tcp-client --connect ADDR [--send N] [--recv M] | \
    udp-send --bind ADDR [--connect ADDR | --to ADDR] --count K --size S [--await-reply] | \
    udp-recv --bind ADDR --count K [--reply-size R] | \
    tcp-sink --bind ADDR [--max-conns N] | \
    tcp-burst --connect ADDR --bytes N [--reply M] [--from IP] [--duration-ms D] | \
    churn --connect ADDR --duration-ms T [--interval-ms I] [--bytes N] [--from IP] | \
    tcp-reuse --bind ADDR --connect ADDR --bytes N [--reply M] --close server-first|rst | \
    fork-share --connect ADDR --bytes N [--reply M] [--duration-ms HOLD] | \
    udp-queries --connect ADDR --count K --size S [--duration-ms DELAY] [--interval-ms I] [--from IP] | \
    udp-dual --to IPV4ADDR --count K --size S [--await-reply] | \
    ping --to IP --count K --size S [--from IP] | \
    raw-send --from IP --to IP --proto P --count K --size S | \
    packet-send --bind IPV4ADDR --to IPV4ADDR --count K --size S | \
    raw-recv --from IP [--to IP] --proto P --count K | \
    sctp-server --bind ADDR --recv N | sctp-client --connect ADDR --send N";

/// The command line options shared by all modes (each mode reads the ones it needs).
#[derive(Debug, Default)]
struct Opts {
    bind: Option<SocketAddr>,
    connect: Option<SocketAddr>,
    to: Option<SocketAddr>,
    send: usize,
    recv: usize,
    count: usize,
    size: usize,
    reply_size: usize,
    await_reply: bool,
    /// `packet-send`: a `SOCK_DGRAM` packet socket (the kernel adds the link header).
    dgram: bool,
    // Accuracy-suite modes only.
    bytes: usize,
    reply: Option<usize>,
    from: Option<IpAddr>,
    to_ip: Option<IpAddr>,
    duration_ms: u64,
    interval_ms: Option<u64>,
    max_conns: Option<usize>,
    proto: Option<u8>,
    close: Option<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let mut opts = Opts::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--await-reply" {
                opts.await_reply = true;
                continue;
            }
            if flag == "--dgram" {
                opts.dgram = true;
                continue;
            }
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            opts.set(flag, value)?;
        }
        Ok(opts)
    }

    fn set(&mut self, flag: &str, value: &str) -> Result<()> {
        let addr = || {
            value
                .parse::<SocketAddr>()
                .with_context(|| format!("{flag} {value:?}"))
        };
        let num = || {
            value
                .parse::<usize>()
                .with_context(|| format!("{flag} {value:?}"))
        };
        match flag {
            "--bind" => self.bind = Some(addr()?),
            "--connect" => self.connect = Some(addr()?),
            "--to" => {
                self.to = value.parse().ok();
                self.to_ip = value.parse().ok();
                if self.to.is_none() && self.to_ip.is_none() {
                    bail!("--to {value:?}: neither IP:PORT nor IP");
                }
            }
            "--send" => self.send = num()?,
            "--recv" => self.recv = num()?,
            "--count" => self.count = num()?,
            "--size" => self.size = num()?,
            "--reply-size" => self.reply_size = num()?,
            _ => return self.set_accuracy(flag, value),
        }
        Ok(())
    }

    /// The flags of the accuracy-suite modes. `--to` takes an IP for `ping`/`raw-*` (kept
    /// apart from the socket address the UDP modes read).
    fn set_accuracy(&mut self, flag: &str, value: &str) -> Result<()> {
        let ctx = || format!("{flag} {value:?}");
        match flag {
            "--bytes" => self.bytes = value.parse().with_context(ctx)?,
            "--reply" => self.reply = Some(value.parse().with_context(ctx)?),
            "--from" => self.from = Some(value.parse().with_context(ctx)?),
            "--duration-ms" => self.duration_ms = value.parse().with_context(ctx)?,
            "--interval-ms" => self.interval_ms = Some(value.parse().with_context(ctx)?),
            "--max-conns" => self.max_conns = Some(value.parse().with_context(ctx)?),
            "--proto" => self.proto = Some(value.parse().with_context(ctx)?),
            "--close" => self.close = Some(value.to_owned()),
            _ => bail!("unknown flag {flag:?}; {USAGE}"),
        }
        Ok(())
    }
}

fn emit(value: serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
}

fn describe(proto: &str, local: SocketAddr, remote: Option<SocketAddr>) -> Result<()> {
    emit(json!({
        "event": "ready",
        "pid": std::process::id(),
        "proto": proto,
        "local": local.to_string(),
        "remote": remote.map(|r| r.to_string()),
    }))
}

fn done(sent: usize, received: usize) -> Result<()> {
    emit(json!({"event": "done", "sent": sent, "received": received}))
}

/// Blocks until stdin says `go`; EOF before that is an error (the test gave up).
fn wait_for_go() -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            bail!("stdin closed before \"go\"");
        }
        if line.trim() == "go" {
            return Ok(());
        }
    }
}

/// Keeps the sockets alive until the test closes stdin.
fn wait_for_eof() -> Result<()> {
    let mut sink = Vec::new();
    std::io::stdin().lock().read_to_end(&mut sink)?;
    Ok(())
}

fn tcp_server(opts: &Opts) -> Result<()> {
    let bind = opts.bind.context("tcp-server needs --bind")?;
    let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
    describe("tcp", listener.local_addr()?, None)?;
    let mut stream = accept_bounded(&listener)?;
    emit(json!({
        "event": "accepted",
        "local": stream.local_addr()?.to_string(),
        "remote": stream.peer_addr()?.to_string(),
    }))?;
    wait_for_go()?;
    let received = read_n(&mut stream, opts.recv)?;
    let sent = write_n(&mut stream, opts.send)?;
    done(sent, received)?;
    wait_for_eof()
}

fn accept_bounded(listener: &TcpListener) -> Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + IO_TIMEOUT * 3;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return configure(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("accept"),
        }
        if Instant::now() > deadline {
            bail!("no connection within {:?}", IO_TIMEOUT * 3);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn configure(stream: TcpStream) -> Result<TcpStream> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn tcp_client(opts: &Opts) -> Result<()> {
    let remote = opts.connect.context("tcp-client needs --connect")?;
    let stream = TcpStream::connect_timeout(&remote, IO_TIMEOUT)
        .with_context(|| format!("connect {remote}"))?;
    let mut stream = configure(stream)?;
    describe("tcp", stream.local_addr()?, Some(stream.peer_addr()?))?;
    wait_for_go()?;
    let sent = write_n(&mut stream, opts.send)?;
    let received = read_n(&mut stream, opts.recv)?;
    done(sent, received)?;
    wait_for_eof()
}

fn write_n(stream: &mut TcpStream, n: usize) -> Result<usize> {
    let chunk = [0x5a_u8; 16 * 1024];
    let mut left = n;
    while left > 0 {
        let len = left.min(chunk.len());
        stream.write_all(&chunk[..len]).context("tcp write")?;
        left -= len;
    }
    stream.flush()?;
    Ok(n)
}

fn read_n(stream: &mut TcpStream, n: usize) -> Result<usize> {
    let mut buf = vec![0_u8; 64 * 1024];
    let mut got = 0;
    while got < n {
        let want = (n - got).min(buf.len());
        match stream.read(&mut buf[..want]).context("tcp read")? {
            0 => bail!("connection closed after {got} of {n} bytes"),
            k => got += k,
        }
    }
    Ok(got)
}

fn udp_socket(bind: SocketAddr) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(socket)
}

fn udp_send(opts: &Opts) -> Result<()> {
    let socket = udp_socket(opts.bind.context("udp-send needs --bind")?)?;
    if let Some(remote) = opts.connect {
        socket
            .connect(remote)
            .with_context(|| format!("connect {remote}"))?;
    }
    let to = opts
        .to
        .or(opts.connect)
        .context("udp-send needs --to or --connect")?;
    describe("udp", socket.local_addr()?, socket.peer_addr().ok())?;
    wait_for_go()?;
    let payload = vec![0xa5_u8; opts.size];
    let mut reply = vec![0_u8; 65536];
    let (mut sent, mut received) = (0, 0);
    for _ in 0..opts.count {
        sent += match opts.connect {
            Some(_) => socket.send(&payload)?,
            None => socket.send_to(&payload, to)?,
        };
        if opts.await_reply {
            received += socket.recv(&mut reply).context("waiting for a reply")?;
        }
    }
    done(sent, received)?;
    wait_for_eof()
}

fn udp_recv(opts: &Opts) -> Result<()> {
    let socket = udp_socket(opts.bind.context("udp-recv needs --bind")?)?;
    describe("udp", socket.local_addr()?, None)?;
    wait_for_go()?;
    let reply = vec![0x3c_u8; opts.reply_size];
    let mut buf = vec![0_u8; 65536];
    let (mut sent, mut received) = (0, 0);
    for _ in 0..opts.count {
        let (n, from) = socket
            .recv_from(&mut buf)
            .context("waiting for a datagram")?;
        received += n;
        if opts.reply_size > 0 {
            sent += socket.send_to(&reply, from)?;
        }
    }
    done(sent, received)?;
    wait_for_eof()
}

// ---- Accuracy-suite modes -------------------------------------------------------------------

/// A connection's (local, remote), read while it is connected (after the close handshake
/// `getpeername` fails).
fn ends(stream: &TcpStream) -> Result<(SocketAddr, SocketAddr)> {
    Ok((stream.local_addr()?, stream.peer_addr()?))
}

/// One `{"event":"flow",…}` line: the pid and the 5-tuple a connection used, and its bytes.
fn flow_line(
    proto: &str,
    ends: (SocketAddr, SocketAddr),
    sent: usize,
    received: usize,
) -> Result<()> {
    emit(json!({
        "event": "flow",
        "pid": std::process::id(),
        "proto": proto,
        "local": ends.0.to_string(),
        "remote": ends.1.to_string(),
        "sent": sent,
        "received": received,
        // After the connection's end: orders the connections of one 4-tuple.
        "at_us": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    }))
}

/// `tcp-sink`: accepts connections until stdin reaches EOF (at most `--max-conns`). On each:
/// reads an 8-byte big-endian reply length, reads the payload to EOF, writes the reply,
/// closes, and prints a `flow` line for its side. When the reply length has its top bit
/// set ([`COUNTED`]), a second 8-byte length follows and the payload is read to that length,
/// not to EOF: the sink then closes first (the client never half-closes).
fn tcp_sink(opts: &Opts) -> Result<()> {
    let bind = opts.bind.context("tcp-sink needs --bind")?;
    let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
    describe("tcp", listener.local_addr()?, None)?;
    let max = opts.max_conns.unwrap_or(100_000);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            match stream {
                Ok(stream) => {
                    std::thread::spawn(move || {
                        if let Err(e) = sink_one(stream) {
                            eprintln!("pidcap-peer tcp-sink: {e:#}");
                        }
                    });
                }
                Err(e) => eprintln!("pidcap-peer tcp-sink: accept: {e}"),
            }
        }
    });
    wait_for_eof()
}

fn sink_one(stream: TcpStream) -> Result<()> {
    let mut stream = configure(stream)?;
    let addrs = ends(&stream)?;
    let mut header = [0_u8; 8];
    stream.read_exact(&mut header).context("reply length")?;
    let reply = u64::from_be_bytes(header);
    let received = match reply & COUNTED {
        0 => read_to_eof(&mut stream)?,
        _ => {
            stream.read_exact(&mut header).context("payload length")?;
            let payload = usize::try_from(u64::from_be_bytes(header)).context("payload length")?;
            read_n(&mut stream, payload)?
        }
    };
    let reply = usize::try_from(reply & !COUNTED).context("reply length")?;
    let sent = write_n(&mut stream, reply)?;
    flow_line("tcp", addrs, sent, received)?;
    // The peer may have gone already; the reply was written either way.
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}

/// The reply length's top bit: a payload length follows, and the sink closes first.
const COUNTED: u64 = 1 << 63;

fn read_to_eof(stream: &mut TcpStream) -> Result<usize> {
    let mut buf = vec![0_u8; 64 * 1024];
    let mut got = 0;
    loop {
        match stream.read(&mut buf).context("tcp read")? {
            0 => return Ok(got),
            k => got += k,
        }
    }
}

fn tcp_open(opts: &Opts, remote: SocketAddr) -> Result<TcpStream> {
    let stream = match opts.from {
        Some(ip) => sockets::tcp_connect_from(SocketAddr::new(ip, 0), remote, IO_TIMEOUT),
        None => TcpStream::connect_timeout(&remote, IO_TIMEOUT),
    };
    configure(stream.with_context(|| format!("connect {remote}"))?)
}

/// One client exchange with a `tcp-sink`: connect, send `bytes` (spread over `duration`),
/// half-close, read the reply to EOF, print the flow line. Returns (sent, received).
fn exchange(opts: &Opts, remote: SocketAddr, duration: Duration) -> Result<(usize, usize)> {
    let mut stream = tcp_open(opts, remote)?;
    let addrs = ends(&stream)?;
    let reply = opts.reply.unwrap_or(opts.bytes);
    stream.write_all(&(reply as u64).to_be_bytes())?;
    let sent = write_paced(&mut stream, opts.bytes, duration)?;
    stream.shutdown(Shutdown::Write)?;
    let received = read_to_eof(&mut stream)?;
    if received != reply {
        bail!("reply of {received} bytes, expected {reply}");
    }
    flow_line("tcp", addrs, sent, received)?;
    Ok((sent, received))
}

/// Writes `n` bytes in 64 KiB chunks, sleeping between chunks so the whole takes `duration`.
fn write_paced(stream: &mut TcpStream, n: usize, duration: Duration) -> Result<usize> {
    const CHUNK: usize = 64 * 1024;
    let chunks = n.div_ceil(CHUNK).max(1);
    let pause = duration / u32::try_from(chunks).unwrap_or(u32::MAX);
    let mut left = n;
    while left > 0 {
        let len = left.min(CHUNK);
        write_n(stream, len)?;
        left -= len;
        if left > 0 && !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok(n)
}

/// `tcp-burst`: one exchange with a `tcp-sink` the moment the process starts, then exit.
fn tcp_burst(opts: &Opts) -> Result<()> {
    let remote = opts.connect.context("tcp-burst needs --connect")?;
    exchange(opts, remote, Duration::from_millis(opts.duration_ms))?;
    Ok(())
}

/// `fork-share`: a socket shared after `fork`, used by the child alone. The parent connects
/// to a `tcp-sink` and forks; the child does the whole exchange on the inherited socket
/// (`--bytes` up, the reply back), prints the flow line under its own pid and exits; the
/// parent keeps its copy of the socket open and idle for `--duration-ms` more, then exits.
fn fork_share(opts: &Opts) -> Result<()> {
    let remote = opts.connect.context("fork-share needs --connect")?;
    let mut stream = tcp_open(opts, remote)?;
    std::io::stdout().flush()?;
    // SAFETY: this process has one thread; the child only does socket and stdout I/O and
    // leaves with `_exit`, never returning into the parent's state.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            let addrs = ends(&stream)?;
            let reply = opts.reply.unwrap_or(opts.bytes);
            let done = (|| -> Result<()> {
                stream.write_all(&(reply as u64).to_be_bytes())?;
                let sent = write_n(&mut stream, opts.bytes)?;
                stream.shutdown(Shutdown::Write)?;
                let received = read_to_eof(&mut stream)?;
                flow_line("tcp", addrs, sent, received)
            })();
            let code = i32::from(done.is_err());
            // SAFETY: ends the child at once, without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        child => {
            std::thread::sleep(Duration::from_millis(opts.duration_ms));
            let mut status = 0;
            // SAFETY: waits for the child this process forked; status is a valid out-pointer.
            unsafe { libc::waitpid(child, &mut status, 0) };
            drop(stream);
            match libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                true => Ok(()),
                false => bail!("the child failed (status {status})"),
            }
        }
    }
}

/// `tcp-reuse`: one link of a chain of processes using the same local port one after the
/// other. Binds `--bind` with `SO_REUSEADDR`, connects to a `tcp-sink`, sends `--bytes` in
/// counted mode, reads the reply (`--reply`, default as many), and ends the connection as
/// `--close` says: `server-first` reads the sink's close, then closes (the TIME_WAIT is the
/// sink's); `rst` closes at once with a RST (no TIME_WAIT anywhere). Prints the flow line.
fn tcp_reuse(opts: &Opts) -> Result<()> {
    let remote = opts.connect.context("tcp-reuse needs --connect")?;
    let local = opts.bind.context("tcp-reuse needs --bind")?;
    let rst = match opts.close.as_deref() {
        Some("server-first") => false,
        Some("rst") => true,
        other => bail!("--close {other:?}: server-first or rst"),
    };
    let stream = sockets::tcp_connect_reusing(local, remote, IO_TIMEOUT)
        .with_context(|| format!("connect {remote} from {local}"))?;
    let mut stream = configure(stream)?;
    let addrs = ends(&stream)?;
    let reply = opts.reply.unwrap_or(opts.bytes);
    stream.write_all(&(reply as u64 | COUNTED).to_be_bytes())?;
    stream.write_all(&(opts.bytes as u64).to_be_bytes())?;
    let sent = write_n(&mut stream, opts.bytes)?;
    let received = read_n(&mut stream, reply)?;
    match rst {
        true => sockets::linger_zero(&stream)?,
        false => {
            if read_to_eof(&mut stream)? != 0 {
                bail!("the sink sent more than the reply");
            }
        }
    }
    drop(stream);
    flow_line("tcp", addrs, sent, received)
}

/// `churn`: exchanges with a `tcp-sink` every `--interval-ms` (default 100) for
/// `--duration-ms`, each on a fresh connection; then a `done` line and exit.
fn churn(opts: &Opts) -> Result<()> {
    let remote = opts.connect.context("churn needs --connect")?;
    let interval = Duration::from_millis(opts.interval_ms.unwrap_or(100));
    let end = Instant::now() + Duration::from_millis(opts.duration_ms);
    let (mut sent, mut received, mut connections) = (0, 0, 0);
    while Instant::now() < end && connections < 10_000 {
        let (s, r) = exchange(opts, remote, Duration::ZERO)?;
        (sent, received, connections) = (sent + s, received + r, connections + 1);
        std::thread::sleep(interval);
    }
    emit(json!({"event": "done", "sent": sent, "received": received,
        "connections": connections}))
}

/// `udp-queries`: a resolver's pattern in a process older than the watcher's window. Waits
/// `--duration-ms` first, then `--count` times: a fresh UDP socket (from `--from`, port 0)
/// connected to `--connect`, one query of `--size` bytes, one reply, close; `--interval-ms`
/// apart. Each query's 5-tuple is reported as a flow line.
fn udp_queries(opts: &Opts) -> Result<()> {
    let server = opts.connect.context("udp-queries needs --connect")?;
    std::thread::sleep(Duration::from_millis(opts.duration_ms));
    let from = opts
        .from
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let query = vec![0x51_u8; opts.size];
    let mut reply = vec![0_u8; 65536];
    let (mut sent, mut received) = (0, 0);
    for _ in 0..opts.count {
        let socket = udp_socket(SocketAddr::new(from, 0))?;
        socket
            .connect(server)
            .with_context(|| format!("connect {server}"))?;
        let ends = (socket.local_addr()?, socket.peer_addr()?);
        let s = socket.send(&query)?;
        let r = socket.recv(&mut reply).context("waiting for a reply")?;
        drop(socket);
        flow_line("udp", ends, s, r)?;
        (sent, received) = (sent + s, received + r);
        std::thread::sleep(Duration::from_millis(opts.interval_ms.unwrap_or(20)));
    }
    emit(json!({"event": "done", "sent": sent, "received": received}))
}

/// `udp-dual`: a dual-stack `[::]` socket that sends IPv4 datagrams (as `::ffff:a.b.c.d`).
fn udp_dual(opts: &Opts) -> Result<()> {
    let to = match opts.to.context("udp-dual needs --to IPV4:PORT")? {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        SocketAddr::V6(_) => bail!("udp-dual sends IPv4: --to takes an IPv4 address"),
    };
    let socket = sockets::dual_stack_udp(0).context("dual-stack socket")?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    describe("udp", socket.local_addr()?, None)?;
    wait_for_go()?;
    let payload = vec![0xa5_u8; opts.size];
    let mut reply = vec![0_u8; 65536];
    let (mut sent, mut received) = (0, 0);
    for _ in 0..opts.count {
        sent += socket.send_to(&payload, to)?;
        if opts.await_reply {
            received += socket.recv(&mut reply).context("waiting for a reply")?;
        }
    }
    done(sent, received)?;
    wait_for_eof()
}

/// `ping`: a ping socket (ICMP for an IPv4 `--to`, ICMPv6 for IPv6) sends `--count` echo
/// requests of `--size` payload bytes, each awaiting its reply. The describe line's local
/// port is the echo identifier the kernel gave the socket.
fn ping(opts: &Opts) -> Result<()> {
    let to = opts.to_ip.context("ping needs --to IP")?;
    let from = opts.from.unwrap_or(match to {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let socket = sockets::ping_socket(SocketAddr::new(from, 0))
        .context("ping socket (is net.ipv4.ping_group_range set to include this group?)")?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    let proto = if to.is_ipv4() { "icmp" } else { "icmpv6" };
    describe(proto, socket.local_addr()?, Some(SocketAddr::new(to, 0)))?;
    wait_for_go()?;
    let request_type = if to.is_ipv4() { 8 } else { 128 };
    let mut reply = vec![0_u8; 65536];
    let (mut sent, mut received) = (0, 0);
    for seq in 0..opts.count {
        let mut request = vec![request_type, 0, 0, 0, 0, 0];
        request.extend_from_slice(&(seq as u16).to_be_bytes());
        request.resize(8 + opts.size, 0x42);
        sent += socket.send_to(&request, SocketAddr::new(to, 0))?;
        received += socket
            .recv(&mut reply)
            .context("waiting for an echo reply")?;
    }
    done(sent, received)?;
    wait_for_eof()
}

fn raw_proto(opts: &Opts) -> Result<u8> {
    opts.proto.context("raw modes need --proto P")
}

/// `raw-send`: a raw socket of protocol `--proto` bound to `--from` sends `--count` packets.
fn raw_send(opts: &Opts) -> Result<()> {
    let proto = raw_proto(opts)?;
    let from = opts.from.context("raw-send needs --from IP")?;
    let to = SocketAddr::new(opts.to_ip.context("raw-send needs --to IP")?, 0);
    let socket = sockets::raw_socket(SocketAddr::new(from, 0), proto).context("raw socket")?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    raw_describe(proto, SocketAddr::new(from, 0), Some(to))?;
    wait_for_go()?;
    let payload = vec![0x77_u8; opts.size];
    let mut sent = 0;
    for _ in 0..opts.count {
        sent += socket.send_to(&payload, to)?;
        // A raw receiver's buffer is small; pacing keeps it from overflowing.
        std::thread::sleep(Duration::from_micros(500));
    }
    done(sent, 0)?;
    wait_for_eof()
}

/// `packet-send`: injects `--count` UDP datagrams of `--size` payload bytes from `--bind`
/// to `--to` as whole Ethernet frames through an AF_PACKET socket on `lo` (no IP socket
/// anywhere has those addresses: only the packet socket's holder sent them). Paced. With
/// `--dgram`, a `SOCK_DGRAM` packet socket is given the IP packets alone.
fn packet_send(opts: &Opts) -> Result<()> {
    let (Some(SocketAddr::V4(from)), Some(SocketAddr::V4(to))) = (opts.bind, opts.to) else {
        bail!("packet-send needs --bind and --to, IPv4");
    };
    let (kind, protocol) = if opts.dgram {
        (libc::SOCK_DGRAM, libc::ETH_P_IP as u16)
    } else {
        (libc::SOCK_RAW, libc::ETH_P_ALL as u16)
    };
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, kind, i32::from(protocol.to_be())) };
    if fd < 0 {
        bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let ifindex = nix_ifindex("lo")?;
    describe("udp", SocketAddr::V4(from), Some(SocketAddr::V4(to)))?;
    wait_for_go()?;
    let whole = udp_frame(from, to, opts.size);
    let frame = if opts.dgram { &whole[14..] } else { &whole[..] };
    let pause = Duration::from_micros(opts.interval_ms.map_or(500, |ms| ms * 1000));
    let mut sent = 0;
    for _ in 0..opts.count {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set below are plain data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: `frame` and `addr` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            bail!("sendto(AF_PACKET): {}", std::io::Error::last_os_error());
        }
        sent += whole.len() - 14; // IP bytes, as captures count them
        std::thread::sleep(pause);
    }
    done(sent, 0)?;
    wait_for_eof()
}

fn nix_ifindex(name: &str) -> Result<i32> {
    let name = std::ffi::CString::new(name)?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    match index {
        0 => bail!("no interface {name:?}"),
        i => Ok(i32::try_from(i)?),
    }
}

/// An Ethernet frame (zero MACs, IPv4) carrying one UDP datagram of `size` bytes.
fn udp_frame(from: std::net::SocketAddrV4, to: std::net::SocketAddrV4, size: usize) -> Vec<u8> {
    let ip_len = 20 + 8 + size;
    let mut f = vec![0_u8; 14];
    f[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&from.ip().octets());
    ip.extend_from_slice(&to.ip().octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&from.port().to_be_bytes());
    f.extend_from_slice(&to.port().to_be_bytes());
    f.extend_from_slice(&((8 + size) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend(std::iter::repeat_n(0x5a_u8, size));
    f
}

fn raw_describe(proto: u8, local: SocketAddr, remote: Option<SocketAddr>) -> Result<()> {
    emit(json!({
        "event": "ready",
        "pid": std::process::id(),
        "proto": "raw",
        "ip_proto": proto,
        "local": local.to_string(),
        "remote": remote.map(|r| r.to_string()),
    }))
}

/// `raw-recv`: a raw socket of protocol `--proto` bound to `--from` (and connected to `--to`
/// if given) reads until `--count` packets arrived or nothing came for 2 s.
fn raw_recv(opts: &Opts) -> Result<()> {
    let proto = raw_proto(opts)?;
    let from = opts.from.context("raw-recv needs --from IP")?;
    let socket = sockets::raw_socket(SocketAddr::new(from, 0), proto).context("raw socket")?;
    let remote = opts.to_ip.map(|ip| SocketAddr::new(ip, 0));
    if let Some(remote) = remote {
        socket.connect(remote)?;
    }
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    raw_describe(proto, SocketAddr::new(from, 0), remote)?;
    wait_for_go()?;
    let mut buf = vec![0_u8; 65536];
    let mut received = 0;
    for _ in 0..opts.count {
        match socket.recv(&mut buf) {
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e).context("raw recv"),
        }
    }
    done(0, received)?;
    wait_for_eof()
}

/// `sctp-server`: like `tcp-server` over a one-to-one SCTP socket: accept, `go`, receive
/// `--recv` bytes, done, EOF.
fn sctp_server(opts: &Opts) -> Result<()> {
    let bind = opts.bind.context("sctp-server needs --bind")?;
    let listener = sockets::sctp_listen(bind).with_context(|| format!("sctp bind {bind}"))?;
    describe("sctp", listener.local_addr()?, None)?;
    let mut stream = accept_bounded(&listener)?;
    emit(json!({
        "event": "accepted",
        "local": stream.local_addr()?.to_string(),
        "remote": stream.peer_addr()?.to_string(),
    }))?;
    wait_for_go()?;
    let received = read_n(&mut stream, opts.recv)?;
    done(0, received)?;
    wait_for_eof()
}

/// `sctp-client`: connect, `go`, send `--send` bytes, done, EOF.
fn sctp_client(opts: &Opts) -> Result<()> {
    let remote = opts.connect.context("sctp-client needs --connect")?;
    let stream = sockets::sctp_connect(remote, IO_TIMEOUT)
        .with_context(|| format!("sctp connect {remote}"))?;
    let mut stream = configure(stream)?;
    describe("sctp", stream.local_addr()?, Some(stream.peer_addr()?))?;
    wait_for_go()?;
    let sent = write_n(&mut stream, opts.send)?;
    done(sent, 0)?;
    wait_for_eof()
}
