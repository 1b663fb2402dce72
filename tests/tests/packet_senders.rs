//! Frames sent through packet sockets (issue #12): no IP socket has their addresses, so only
//! the kernel's report of the send (`sock:sock_send_length` on an `AF_PACKET` socket, in the
//! sender's context) can name who sent them. Real processes inject real frames on `lo`.
//!
//! Each test probes the kernel: without that tracepoint (Linux before 6.4) or without the
//! tracer, the frames must stay `unknown` — never another process's — and the test says so
//! loudly.

use std::net::Ipv4Addr;
use std::path::Path;

use base64::Engine as _;
use std::time::Duration;

use pidcap_e2e::{require_root, wait_until, Client, Daemon, Peer};
use serde_json::{json, Value};

const FRAMES: u64 = 150;

/// What the daemon counts per frame: IPv4 + UDP + `payload`.
fn ip_len(payload: usize) -> u64 {
    20 + 8 + payload as u64
}

/// Whether this kernel reports sends on packet sockets and the daemon's tracer runs.
fn senders_traced(daemon: &Daemon) -> bool {
    let tracepoint = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| {
            Path::new(t)
                .join("events/sock/sock_send_length/format")
                .exists()
        });
    let tracer = daemon.stats()["process_side"]["tracer"] == true;
    if !(tracepoint && tracer) {
        eprintln!(
            "NOTE: packet senders cannot be traced here (sock_send_length tracepoint: \
             {tracepoint}, tracer running: {tracer}); checking only that injected frames \
             are credited to nobody"
        );
    }
    tracepoint && tracer
}

/// A `packet-send` peer of `FRAMES` frames of `payload` bytes. The tests run in parallel and
/// each daemon sees every test's frames on `lo`: each test has its own source ports (its
/// daemon's filter) and payload length (frames of one length sent at once by two processes
/// are nobody's).
fn injector(from: &str, to: &str, payload: usize, extra: &[&str]) -> Peer {
    let count = FRAMES.to_string();
    let size = payload.to_string();
    let mut args = vec![
        "packet-send",
        "--bind",
        from,
        "--to",
        to,
        "--count",
        &count,
        "--size",
        &size,
    ];
    args.extend_from_slice(extra);
    Peer::spawn(&args)
}

/// `(pid, tx_bytes_total, matched.packet_sender)` of every process credited with sent bytes.
fn senders(daemon: &Daemon) -> Vec<(u32, u64, u64)> {
    daemon
        .processes()
        .iter()
        .map(|p: &Value| {
            (
                p["pid"].as_u64().unwrap_or(0) as u32,
                p["tx_bytes_total"].as_u64().unwrap_or(0),
                p["matched"]["packet_sender"].as_u64().unwrap_or(0),
            )
        })
        .filter(|(_, tx, _)| *tx > 0)
        .collect()
}

/// Waits until `frames` sent frames were decided (captured, nothing pending).
fn wait_decided(daemon: &Daemon, frames: u64) {
    let decided = wait_until(Duration::from_secs(30), || {
        let stats = daemon.stats();
        stats["pending_packets"] == 0 && stats["tx_packets"].as_u64() >= Some(frames)
    });
    assert!(decided, "not all frames decided: {}", daemon.stats());
}

fn credited(senders: &[(u32, u64, u64)], pid: u32) -> (u64, u64) {
    senders
        .iter()
        .find(|(p, _, _)| *p == pid)
        .map_or((0, 0), |&(_, tx, by_sender)| (tx, by_sender))
}

#[test]
fn frames_injected_through_packet_sockets_are_credited_to_their_sender() {
    require_root();
    // Two lengths: a frame of one length sent within 50 ms of the other injector's send of
    // a fitting length would be either's (and go to unknown).
    const PAYLOAD: usize = 300;
    const DGRAM_PAYLOAD: usize = 350;
    let filter = "udp and src net 127.0.0.0/8 and src port 4100";
    let daemon = Daemon::start(&["--interface", "lo", "--filter", filter]);
    let traced = senders_traced(&daemon);
    // A SOCK_RAW socket writes whole Ethernet frames; a SOCK_DGRAM one IP packets.
    let mut raw = injector("127.0.0.5:4100", "127.0.0.6:4001", PAYLOAD, &[]);
    raw.go();
    raw.wait_done();
    let mut dgram = injector(
        "127.0.0.7:4100",
        "127.0.0.6:4001",
        DGRAM_PAYLOAD,
        &["--dgram"],
    );
    dgram.go();
    dgram.wait_done();
    wait_decided(&daemon, 2 * FRAMES);
    let found = senders(&daemon);
    let others: Vec<_> = found
        .iter()
        .filter(|(p, _, _)| *p != raw.pid() && *p != dgram.pid())
        .collect();
    assert!(
        others.is_empty(),
        "injected frames credited to others: {others:?}"
    );
    let each = [
        ("SOCK_RAW", &raw, PAYLOAD),
        ("SOCK_DGRAM", &dgram, DGRAM_PAYLOAD),
    ];
    for (what, peer, payload) in each {
        let (tx, by_sender) = credited(&found, peer.pid());
        if traced {
            assert_eq!(
                tx,
                FRAMES * ip_len(payload),
                "{what} sender {}: {found:?}",
                peer.pid()
            );
            assert_eq!(by_sender, tx, "credited as packet_sender");
        } else {
            assert_eq!(
                tx, 0,
                "{what}: nobody can be credited without the tracepoint"
            );
        }
    }
    let stats = daemon.stats();
    let all = FRAMES * (ip_len(PAYLOAD) + ip_len(DGRAM_PAYLOAD));
    let expected = if traced { all } else { 0 };
    assert_eq!(
        stats["credited_matched"]["packet_sender"], expected,
        "{stats}"
    );
    raw.finish();
    dgram.finish();
}

/// Each injected frame's source address and the pid the daemon credited with sending it
/// (`None`: unknown), from a `capture` stream, until `frames` frames came (bounded).
fn frame_senders(stream: &mut Client, frames: u64) -> Vec<(Ipv4Addr, Option<u32>)> {
    let mut seen = Vec::new();
    while (seen.len() as u64) < frames {
        let line = stream
            .read_json()
            .expect("a capture line within the query timeout");
        let Some(packet) = line.get("packet") else {
            assert!(
                line.get("lost").is_none(),
                "the test client fell behind: {line}"
            );
            continue;
        };
        let data = base64::engine::general_purpose::STANDARD
            .decode(packet["data"].as_str().expect("data"))
            .expect("base64");
        // Ethernet (loopback) + IPv4: the source address at 14 + 12.
        let src = Ipv4Addr::new(data[26], data[27], data[28], data[29]);
        let pid = packet["tx"]["pid"].as_u64().map(|p| p as u32);
        seen.push((src, pid));
    }
    seen
}

#[test]
fn two_injectors_sending_frames_of_one_length_at_once_never_get_each_others() {
    require_root();
    const PAYLOAD: usize = 600;
    let filter = "udp and src net 127.0.0.0/8 and src port 4200";
    let daemon = Daemon::start(&["--interface", "lo", "--filter", filter]);
    let traced = senders_traced(&daemon);
    let mut stream = daemon.connect();
    let start = stream.request(&json!({"cmd": "capture", "filter": filter}));
    assert!(start.get("capture").is_some(), "capture refused: {start}");
    // Same length, same pace, same time: most frames could be either's and go to unknown; a
    // frame is credited only where one sender alone could have sent it.
    let slow = ["--interval-ms", "2"];
    let (a_addr, b_addr) = (Ipv4Addr::new(127, 0, 0, 8), Ipv4Addr::new(127, 0, 0, 9));
    let mut a = injector(&format!("{a_addr}:4200"), "127.0.0.6:4001", PAYLOAD, &slow);
    let mut b = injector(&format!("{b_addr}:4200"), "127.0.0.6:4001", PAYLOAD, &slow);
    a.go();
    b.go();
    a.wait_done();
    b.wait_done();
    let frames = frame_senders(&mut stream, 2 * FRAMES);
    let owner_of = |src: Ipv4Addr| if src == a_addr { a.pid() } else { b.pid() };
    let wrong: Vec<_> = frames
        .iter()
        .filter(|(src, pid)| pid.is_some_and(|p| p != owner_of(*src)))
        .collect();
    assert!(
        wrong.is_empty(),
        "frames credited to a process that did not send them: {wrong:?}"
    );
    let credited = frames.iter().filter(|(_, pid)| pid.is_some()).count();
    eprintln!(
        "{credited} of {} interleaved frames credited, the rest unknown",
        frames.len()
    );
    if !traced {
        assert_eq!(credited, 0, "nobody can be credited without the tracepoint");
    }
    // The ledger agrees with the stream and conserves bytes.
    wait_decided(&daemon, 2 * FRAMES);
    let found = senders(&daemon);
    let ledger_total: u64 = found.iter().map(|(_, tx, _)| tx).sum();
    assert_eq!(ledger_total, credited as u64 * ip_len(PAYLOAD), "{found:?}");
    let stats = daemon.stats();
    let unknown = stats["unknown_tx_bytes"].as_u64().unwrap_or(0);
    let sent = 2 * FRAMES * ip_len(PAYLOAD);
    assert_eq!(ledger_total + unknown, sent, "conservation: {stats}");
    a.finish();
    b.finish();
}
