//! Prometheus exposition: the real daemon serves `/metrics` on loopback, the text passes
//! `promtool check metrics`, a process's series carry the bytes the `processes` query reports,
//! the `other` series takes the processes beyond `--metrics-top`, a bad address is exit 64,
//! and a bad path is a 404 after which the daemon goes on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use pidcap_e2e::{private_paths, run_pidcapd, wait_until, Counters, Daemon, Peer};

/// How long a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The address the daemon logged it serves metrics on (started with port 0).
fn metrics_addr(daemon: &Daemon) -> SocketAddr {
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        found = daemon
            .stderr()
            .lines()
            .filter(|l| l.contains("serving Prometheus metrics"))
            .find_map(|l| l.split("metrics_listen=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok());
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "pidcapd did not log its metrics address; stderr:\n{}",
            daemon.stderr()
        )
    })
}

/// `GET path`; returns the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(SCRAPE_TIMEOUT))
        .expect("timeout");
    stream
        .set_write_timeout(Some(SCRAPE_TIMEOUT))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read reply");
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {reply:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Runs `promtool check metrics` on `text`; panics with its output unless it passes.
fn assert_promtool_passes(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed for this test (scripts/deps --test installs prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The value of `label="value"` in a sample line's label set.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// The rx/tx values of `family` (e.g. `pidcap_process_bytes_total`) whose `key` label is
/// `value`.
fn series(text: &str, family: &str, key: &str, value: &str) -> Option<(u64, u64)> {
    let (mut rx, mut tx) = (None, None);
    for line in text
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
    {
        if label(line, key) != Some(value) {
            continue;
        }
        let n: u64 = line.rsplit(' ').next()?.parse().ok()?;
        match label(line, "direction") {
            Some("rx") => rx = Some(n),
            Some("tx") => tx = Some(n),
            _ => {}
        }
    }
    Some((rx?, tx?))
}

/// Distinct `pid` labels of the process byte series, `other` excluded.
fn process_series(text: &str) -> Vec<String> {
    let mut pids: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("pidcap_process_bytes_total{"))
        .filter_map(|l| label(l, "pid"))
        .filter(|p| *p != "other")
        .map(str::to_owned)
        .collect();
    pids.sort();
    pids.dedup();
    pids
}

/// A TCP client and server on loopback that moved `bytes` from client to server; both are
/// still running (their sockets open).
fn traffic(daemon: &Daemon, bytes: u64) -> (Peer, Peer) {
    let n = bytes.to_string();
    let mut server = Peer::spawn(&["tcp-server", "--bind", "127.0.0.1:0", "--recv", &n]);
    let remote = server.info.local.to_string();
    let mut client = Peer::spawn(&["tcp-client", "--connect", &remote, "--send", &n]);
    server.accepted();
    daemon.wait_owner("tcp", client.info.local, server.info.local, client.pid());
    server.go();
    client.go();
    assert_eq!(client.wait_done().sent, bytes);
    assert_eq!(server.wait_done().received, bytes);
    (client, server)
}

/// Waits until the daemon has counted at least `bytes` sent by `pid` and its totals stop
/// changing between two reads a log interval apart (bounded); returns them.
fn settled_totals(daemon: &Daemon, pid: u32, bytes: u64) -> Counters {
    let mut last = Counters::default();
    let settled = wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(1100));
        let now = daemon.totals(pid);
        let done = now.tx_bytes >= bytes && now == last;
        last = now;
        done
    });
    assert!(
        settled,
        "pid {pid}: the daemon's totals did not settle at >= {bytes} bytes sent: {last:?}"
    );
    last
}

#[test]
fn a_scrape_carries_each_processes_bytes_and_passes_promtool() {
    let daemon = Daemon::start(&["--interface", "lo", "--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&daemon);
    let (client, server) = traffic(&daemon, 200_000);
    let before = settled_totals(&daemon, client.pid(), 200_000);
    let text = scrape(addr);
    let after = daemon.totals(client.pid());
    assert_promtool_passes(&text);
    let pid = client.pid().to_string();
    let (rx, tx) = series(&text, "pidcap_process_bytes_total", "pid", &pid)
        .unwrap_or_else(|| panic!("no series for pid {pid}:\n{text}"));
    assert!(
        (before.rx_bytes..=after.rx_bytes).contains(&rx)
            && (before.tx_bytes..=after.tx_bytes).contains(&tx),
        "pid {pid}: scraped rx {rx} tx {tx}; processes said {before:?} then {after:?}"
    );
    let (rx_packets, tx_packets) = series(&text, "pidcap_process_packets_total", "pid", &pid)
        .unwrap_or_else(|| panic!("no packet series for pid {pid}:\n{text}"));
    assert!(
        (before.tx_packets..=after.tx_packets).contains(&tx_packets)
            && (before.rx_packets..=after.rx_packets).contains(&rx_packets),
        "pid {pid}: scraped packets rx {rx_packets} tx {tx_packets}; processes said {before:?}"
    );
    for required in [
        "pidcap_build_info{version=\"",
        "pidcap_captured_bytes_total{direction=\"tx\"}",
        "pidcap_unknown_reason_bytes_total{reason=\"no_socket\"}",
        "pidcap_user_bytes_total{user=\"root\",direction=\"tx\"}",
        "pidcap_refreshes_total ",
        "pidcap_thread_running{thread=\"capture\"} 1",
    ] {
        assert!(text.contains(required), "no {required:?} in:\n{text}");
    }
    assert!(client.finish().success());
    assert!(server.finish().success());
}

#[test]
fn processes_beyond_metrics_top_are_summed_into_other() {
    let daemon = Daemon::start(&[
        "--interface",
        "lo",
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-top",
        "1",
    ]);
    let addr = metrics_addr(&daemon);
    let (client, server) = traffic(&daemon, 100_000);
    let sent = settled_totals(&daemon, client.pid(), 100_000);
    let received = daemon.totals(server.pid());
    let text = scrape(addr);
    assert_promtool_passes(&text);
    assert_eq!(process_series(&text).len(), 1, "--metrics-top 1:\n{text}");
    let (top_rx, top_tx) = process_series(&text)
        .first()
        .and_then(|pid| series(&text, "pidcap_process_bytes_total", "pid", pid))
        .expect("the top series");
    let (other_rx, other_tx) = series(&text, "pidcap_process_bytes_total", "pid", "other")
        .unwrap_or_else(|| panic!("no other series:\n{text}"));
    assert!(other_rx + other_tx > 0, "other is empty:\n{text}");
    assert!(
        top_tx + other_tx >= sent.tx_bytes + received.tx_bytes
            && top_rx + other_rx >= sent.rx_bytes + received.rx_bytes,
        "top + other (rx {top_rx}+{other_rx}, tx {top_tx}+{other_tx}) lost bytes of client \
         {sent:?} and server {received:?}"
    );
    assert!(client.finish().success());
    assert!(server.finish().success());
}

#[test]
fn a_bad_path_gets_404_and_the_daemon_goes_on() {
    let daemon = Daemon::start(&["--interface", "lo", "--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&daemon);
    let (status, body) = get(addr, "/nope");
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(addr, "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/metrics"), "{body}");
    assert!(scrape(addr).contains("pidcap_build_info"));
    assert_eq!(daemon.stats()["interface"], "lo");
}

#[test]
fn a_bad_metrics_listen_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in ["localhost:9469", "127.0.0.1", "127.0.0.1:70000"] {
        let mut args: Vec<String> = private_paths(dir.path())
            .into_iter()
            .map(|a| a.into_string().expect("utf-8 path"))
            .collect();
        args.extend(["--interface", "lo", "--metrics-listen", bad].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let finished = run_pidcapd(&args, Duration::from_secs(30));
        assert_eq!(finished.code(), 64, "{bad}: {}", finished.stderr);
        assert!(
            finished.stderr.contains("metrics_listen"),
            "{bad}: the message does not name the key:\n{}",
            finished.stderr
        );
        assert!(
            !dir.path().join("sock").exists(),
            "{bad}: the socket was created before the config was rejected"
        );
    }
}
