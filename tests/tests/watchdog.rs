//! The systemd watchdog watches every long-lived thread (issue #9): WATCHDOG=1 goes out only
//! while capture, refresh, watcher and tracer all go round their loops. A fake notify socket
//! stands in for systemd; a debug-build-only variable stalls one thread.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pidcap_e2e::{bin_path, require_root, Client};
use serde_json::{json, Value};

/// Keep-alives the daemon sent in the two seconds after its first second of readiness, and
/// its `stats.threads` at the end of them.
struct Observed {
    keepalives: usize,
    threads: Vec<Value>,
    stderr: String,
}

/// Runs pidcapd under a fake systemd (NOTIFY_SOCKET, WATCHDOG_USEC = 1 s, so a keep-alive is
/// due every 0.5 s) with `stall` naming a thread to stall, and counts its keep-alives.
fn run_under_fake_systemd(stall: Option<&str>) -> Observed {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = UnixDatagram::bind(dir.path().join("notify")).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let stderr_path = dir.path().join("stderr.log");
    let mut command = Command::new("sh");
    // WATCHDOG_PID must be the daemon's own pid: the shell's, which exec keeps.
    command
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(bin_path("pidcapd"))
        .args(["--interface", "lo"])
        .args(pidcap_e2e::private_paths(dir.path()))
        .env("NOTIFY_SOCKET", dir.path().join("notify"))
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("PIDCAP_FAULT_STALL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    if let Some(thread) = stall {
        command.env("PIDCAP_FAULT_STALL", thread);
    }
    let mut child = command.spawn().expect("spawn pidcapd");
    let mut ready_at = None;
    let mut keepalives = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        let message = match notify.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => String::new(),
        };
        if message.contains("READY=1") {
            ready_at.get_or_insert_with(Instant::now);
        }
        let Some(ready) = ready_at else { continue };
        let since = ready.elapsed();
        if since >= Duration::from_secs(3) {
            break;
        }
        if since >= Duration::from_secs(1) && message.contains("WATCHDOG=1") {
            keepalives += 1;
        }
    }
    let stats = Client::connect(&dir.path().join("sock"))
        .and_then(|mut c| c.try_request(&json!({"cmd": "stats"})));
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(ready_at.is_some(), "pidcapd never said READY=1: {stderr}");
    let stats = stats.unwrap_or_else(|e| panic!("stats: {e}: {stderr}"));
    let threads = stats["stats"]["threads"]
        .as_array()
        .unwrap_or_else(|| panic!("no stats.threads: {stats}"))
        .clone();
    Observed {
        keepalives,
        threads,
        stderr,
    }
}

/// The names of the threads `stats` reports running, and of those it reports stale.
fn running_and_stale(threads: &[Value]) -> (Vec<&str>, Vec<&str>) {
    let names = |pick: &dyn Fn(&Value) -> bool| -> Vec<&str> {
        threads
            .iter()
            .filter(|t| pick(t))
            .map(|t| t["name"].as_str().expect("thread name"))
            .collect()
    };
    (
        names(&|t| t["running"] == true),
        names(&|t| t["stale"] == true),
    )
}

#[test]
fn a_stalled_thread_withholds_the_watchdog_keepalive() {
    require_root();
    let healthy = run_under_fake_systemd(None);
    assert!(
        healthy.keepalives > 0,
        "no keep-alive from a healthy daemon: {}",
        healthy.stderr
    );
    // As root every thread runs; a healthy daemon reports none stale.
    let (running, stale) = running_and_stale(&healthy.threads);
    assert_eq!(
        running,
        ["capture", "refresh", "watch", "trace"],
        "{:?}: {}",
        healthy.threads,
        healthy.stderr
    );
    assert!(stale.is_empty(), "{:?}", healthy.threads);
    for thread in ["refresh", "watch", "trace"] {
        let stalled = run_under_fake_systemd(Some(thread));
        assert_eq!(
            stalled.keepalives, 0,
            "keep-alives sent while {thread} was stalled: {}",
            stalled.stderr
        );
        assert!(
            stalled
                .stderr
                .contains("withholding the watchdog keep-alive")
                && stalled.stderr.contains(thread),
            "{thread}: {}",
            stalled.stderr
        );
        // `stats` names the stalled thread, and only it, stale (past half the 1 s period).
        let (_, stale) = running_and_stale(&stalled.threads);
        assert_eq!(stale, [thread], "{:?}", stalled.threads);
    }
}
