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
//! Invariants: every wait is bounded (socket timeouts, a watchdog that exits with status 3
//! after [`WATCHDOG`]), so a forgotten peer never outlives its test by long.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
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
        other => bail!("unknown mode {other:?}; {USAGE}"),
    }
}

const USAGE: &str = "usage: pidcap-peer tcp-server --bind ADDR [--recv N] [--send M] | \
    tcp-client --connect ADDR [--send N] [--recv M] | \
    udp-send --bind ADDR [--connect ADDR | --to ADDR] --count K --size S [--await-reply] | \
    udp-recv --bind ADDR --count K [--reply-size R]";

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
            "--to" => self.to = Some(addr()?),
            "--send" => self.send = num()?,
            "--recv" => self.recv = num()?,
            "--count" => self.count = num()?,
            "--size" => self.size = num()?,
            "--reply-size" => self.reply_size = num()?,
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
