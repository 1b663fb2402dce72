//! The `pidcap` client against a running daemon, and without one.

use std::process::Command;
use std::time::Duration;

use pidcap_e2e::{bin_path, wait_until, Daemon, Peer};

fn pidcap(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin_path("pidcap"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run pidcap")
}

/// A UDP sender/receiver pair, known to the daemon, that has exchanged a few datagrams.
fn udp_pair(daemon: &Daemon) -> (Peer, Peer) {
    let mut receiver = Peer::spawn(&[
        "udp-recv",
        "--bind",
        "127.0.0.1:0",
        "--count",
        "10",
        "--reply-size",
        "10",
    ]);
    let to = receiver.info.local.to_string();
    let mut sender = Peer::spawn(&[
        "udp-send",
        "--bind",
        "127.0.0.1:0",
        "--to",
        &to,
        "--count",
        "10",
        "--size",
        "500",
        "--await-reply",
    ]);
    let from = format!("127.0.0.1:{}", sender.info.local.port())
        .parse()
        .unwrap();
    daemon.wait_owner("udp", from, receiver.info.local, sender.pid());
    receiver.go();
    sender.go();
    receiver.wait_done();
    sender.wait_done();
    (receiver, sender)
}

#[test]
fn ps_shows_the_peer_comm_and_pid() {
    let daemon = Daemon::start(&["--interface", "lo"]);
    let (receiver, sender) = udp_pair(&daemon);
    let listed = wait_until(Duration::from_secs(10), || {
        daemon
            .process(sender.pid())
            .is_some_and(|p| p["tx_bytes_total"].as_u64() > Some(0))
    });
    assert!(
        listed,
        "pidcapd never listed the sender; stats: {}",
        daemon.stats()
    );
    let out = pidcap(daemon.socket(), &["ps"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pidcap ps failed: {out:?}");
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == sender.pid().to_string()))
        .unwrap_or_else(|| panic!("pid {} not in pidcap ps:\n{stdout}", sender.pid()));
    assert!(line.contains("pidcap-peer"), "comm missing from {line:?}");
    assert!(sender.finish().success());
    assert!(receiver.finish().success());
}

#[test]
fn lookup_prints_the_owner_of_a_socket() {
    let daemon = Daemon::start(&["--interface", "lo"]);
    let receiver = Peer::spawn(&["udp-recv", "--bind", "127.0.0.1:0", "--count", "1"]);
    let local = receiver.info.local;
    daemon.wait_owner("udp", local, "127.0.0.1:1".parse().unwrap(), receiver.pid());
    let out = pidcap(
        daemon.socket(),
        &["lookup", "udp", &local.to_string(), "127.0.0.1:1"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pidcap lookup failed: {out:?}");
    assert!(
        stdout.contains(&receiver.pid().to_string()),
        "no pid in {stdout:?}"
    );
    assert!(stdout.contains("pidcap-peer"), "no comm in {stdout:?}");
}

#[test]
fn without_a_daemon_pidcap_fails_and_names_pidcapd() {
    let out = pidcap(std::path::Path::new("/nonexistent/pidcap.sock"), &["ps"]);
    assert!(
        !out.status.success(),
        "pidcap ps without a daemon succeeded: {out:?}"
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        text.contains("pidcapd"),
        "message does not mention pidcapd: {text:?}"
    );
}

/// `pidcap ps --by user` sums the processes per user (here: root's peers), `--json` gives the
/// daemon's `groups` reply, and `top --by` prints the same table each interval.
#[test]
fn ps_and_top_by_user_sum_per_user() {
    let daemon = Daemon::start(&["--interface", "lo"]);
    let (receiver, sender) = udp_pair(&daemon);
    let named = wait_until(Duration::from_secs(10), || {
        daemon
            .process(sender.pid())
            .is_some_and(|p| p["user"] == "root")
    });
    assert!(named, "user never resolved");
    let out = pidcap(daemon.socket(), &["ps", "--by", "user"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap_or("");
    assert!(
        header.starts_with("GROUP") && header.contains("PROCS"),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("root ")), "{text}");
    let json = pidcap(daemon.socket(), &["ps", "--by", "user", "--json"]);
    let reply: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(reply["by"], "user", "{reply}");
    let root = reply["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|r| r["key"] == "root"))
        .expect("a root group");
    assert!(root["processes"].as_u64() >= Some(2), "{reply}");
    let top = pidcap(
        daemon.socket(),
        &["top", "--by", "unit", "--count", "2", "--interval", "100"],
    );
    assert!(top.status.success(), "{top:?}");
    let top = String::from_utf8_lossy(&top.stdout);
    assert_eq!(top.matches("GROUP").count(), 2, "{top}");
    let bad = pidcap(daemon.socket(), &["ps", "--by", "colour"]);
    assert_eq!(bad.status.code(), Some(2), "usage error");
    assert!(receiver.finish().success());
    assert!(sender.finish().success());
}
