//! A socket shared after fork (issue #12): a short-lived child that inherited its parent's
//! connected UDP socket, and exited, must not be credited with the parent's traffic.
//!
//! bash opens the socket, then `$(seq …)` forks a subshell whose `seq` holds the socket for a
//! millisecond and exits; bash sends every datagram. The watcher reads `seq`'s fds at exec
//! and reports it as a holder; before its exit was reported, `seq` stayed the socket's newest
//! holder until the next full fd scan (10 s) and every datagram was credited to it.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use pidcap_e2e::{wait_bounded, wait_until, Daemon};
use serde_json::Value;

const DATAGRAMS: u64 = 100;

/// `(pid, comm, tx_packets_total)` of every process the daemon credited with sent packets.
fn senders(daemon: &Daemon) -> Vec<(u64, String, u64)> {
    daemon
        .processes()
        .iter()
        .map(|p: &Value| {
            (
                p["pid"].as_u64().unwrap_or(0),
                p["comm"].as_str().unwrap_or("").to_string(),
                p["tx_packets_total"].as_u64().unwrap_or(0),
            )
        })
        .filter(|(_, _, tx)| *tx > 0)
        .collect()
}

/// Runs `bash -c script` to its end (at most a minute); its pid.
fn run_bash(script: &str) -> u64 {
    let sender = Command::new("bash")
        .args(["-c", script])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn the sender");
    let pid = u64::from(sender.id());
    wait_bounded(sender, Duration::from_secs(60), "the sender");
    pid
}

#[test]
fn a_child_that_inherited_a_socket_and_exited_is_not_credited_with_its_parents_traffic() {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let port = sink.local_addr().expect("sink addr").port();
    let filter = format!("udp port {port}");
    let daemon = Daemon::start(&["--interface", "lo", "--filter", &filter]);
    let script = format!(
        "exec 3<>/dev/udp/127.0.0.1/{port}; for i in $(seq {DATAGRAMS}); do echo x >&3; sleep 0.01 3>&-; done"
    );
    let pid = run_bash(&script);
    // Every datagram decided: captured, and nothing left pending.
    let drained = wait_until(Duration::from_secs(20), || {
        let stats = daemon.stats();
        stats["pending_packets"] == 0 && stats["tx_packets"].as_u64() >= Some(DATAGRAMS)
    });
    assert!(drained, "not all datagrams decided: {}", daemon.stats());
    let credited = senders(&daemon);
    let wrong: Vec<_> = credited.iter().filter(|(p, _, _)| *p != pid).collect();
    assert!(
        wrong.is_empty(),
        "datagrams bash {pid} sent were credited to other processes: {wrong:?}"
    );
    let right = credited
        .iter()
        .find(|(p, _, _)| *p == pid)
        .map_or(0, |(_, _, tx)| *tx);
    // Before the socket is first read, a datagram or two may wait and go to unknown; never
    // to another process.
    assert!(
        right >= DATAGRAMS - 5,
        "bash {pid} credited with {right} of {DATAGRAMS}: {credited:?} {}",
        daemon.stats()
    );
}

/// The TCP case, where the children keep the inherited connection open while they live:
/// bash writes a line every 10 ms on a connection it opened, and each `sleep 0.01` it
/// forks meanwhile holds the socket (fd 3 stays open) and never touches it. The fds name
/// the idle child as the newest holder; the socket tracer saw bash connect, and bash holds
/// this very socket: bash is credited with every byte (README rule 4).
#[test]
fn idle_children_holding_a_tcp_connection_are_not_credited_with_its_bytes() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind listener");
    let port = listener.local_addr().expect("listener addr").port();
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink).map(|_| sink.len())
    });
    let filter = format!("tcp port {port}");
    let daemon = Daemon::start(&["--interface", "lo", "--filter", &filter]);
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; for i in $(seq {DATAGRAMS}); do echo x >&3; sleep 0.01; done"
    );
    let pid = run_bash(&script);
    let received = reader.join().expect("reader").expect("read");
    assert_eq!(received as u64, 2 * DATAGRAMS, "the lines arrived");
    let drained = wait_until(Duration::from_secs(20), || {
        daemon.stats()["pending_packets"] == 0
    });
    assert!(drained, "not all segments decided: {}", daemon.stats());
    let credited = senders(&daemon);
    let wrong: Vec<_> = credited
        .iter()
        // The listener's segments are this test process's own.
        .filter(|(p, _, _)| *p != pid && *p != u64::from(std::process::id()))
        .collect();
    assert!(
        wrong.is_empty(),
        "segments bash {pid} sent were credited to other processes: {wrong:?}"
    );
    let right = credited
        .iter()
        .find(|(p, _, _)| *p == pid)
        .map_or(0, |(_, _, tx)| *tx);
    // A line per segment, but TCP coalesces some while an ACK is delayed: every segment
    // is bash's (the listener's are the test's own), none unknown.
    let stats = daemon.stats();
    assert!(
        right > DATAGRAMS / 2 && stats["unknown_tx_packets"] == 0,
        "bash {pid} credited with {right} segments: {credited:?} {stats}"
    );
}

/// The other side of the deferral that keeps short-lived children out: a child that lives
/// on with the UDP socket it inherited and sends on it, while its parent waits, is credited
/// with its datagrams (the newest holder, README rule 4) — from the moment it is reported,
/// 10 ms after its exec, long before its first datagram here.
#[test]
fn a_child_that_lives_on_with_an_inherited_udp_socket_is_credited_with_what_it_sends() {
    const CHILD_SENDS: u64 = 50;
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let port = sink.local_addr().expect("sink addr").port();
    let filter = format!("udp port {port}");
    let daemon = Daemon::start(&["--interface", "lo", "--filter", &filter]);
    let dir = tempfile::tempdir().expect("temp dir");
    let child_pid_file = dir.path().join("child.pid");
    // The child writes its pid first, sleeps past the settle, then sends (its own `sleep`s
    // do not hold the socket: idle holders are the documented limit the first test shows);
    // the parent only waits for it (`; true` keeps bash from exec'ing the child in place).
    let script = format!(
        "exec 3<>/dev/udp/127.0.0.1/{port}; \
         bash -c 'echo $$ > {file}; sleep 0.2 3>&-; i=0; while [ $i -lt {CHILD_SENDS} ]; do echo y >&3; i=$((i+1)); sleep 0.01 3>&-; done'; true",
        file = child_pid_file.display()
    );
    let parent = run_bash(&script);
    let child: u64 = std::fs::read_to_string(&child_pid_file)
        .expect("the child wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    let drained = wait_until(Duration::from_secs(20), || {
        let stats = daemon.stats();
        stats["pending_packets"] == 0 && stats["tx_packets"].as_u64() >= Some(CHILD_SENDS)
    });
    assert!(drained, "not all datagrams decided: {}", daemon.stats());
    let credited = senders(&daemon);
    let child_got = credited
        .iter()
        .find(|(p, _, _)| *p == child)
        .map_or(0, |(_, _, tx)| *tx);
    assert_eq!(
        child_got, CHILD_SENDS,
        "the child {child} sent every datagram (parent {parent}): {credited:?}"
    );
    let others: Vec<_> = credited.iter().filter(|(p, _, _)| *p != child).collect();
    assert!(others.is_empty(), "credited to others: {others:?}");
}
