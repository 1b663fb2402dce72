//! `pidcap report` on the usage log the real daemon wrote (rotated and gzipped half-way, as
//! logrotate does), and `pidcap top` against the real daemon in a dumb 40-column terminal.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pidcap_e2e::{bin_path, udp_exchange, usage_log, wait_until, Counters, Daemon};
use serde_json::Value;

const PACKETS: u64 = 20;
const PAYLOAD: u64 = 400;

/// A UDP exchange on loopback of `PACKETS` datagrams of `PAYLOAD` bytes, each answered;
/// returns the sender's pid once the daemon has credited it.
fn exchange(daemon: &Daemon) -> u32 {
    let (receiver, sender) = udp_exchange(daemon, PACKETS, PAYLOAD);
    let pid = sender.pid();
    let credited = wait_until(Duration::from_secs(10), || {
        daemon.totals(pid).tx_bytes >= PACKETS * PAYLOAD
    });
    assert!(
        credited,
        "pidcapd never credited the sender's {PACKETS} x {PAYLOAD} bytes; stats: {}",
        daemon.stats()
    );
    assert!(sender.finish().success());
    assert!(receiver.finish().success());
    pid
}

/// Waits (bounded) until the log at `path` has a line for `pid`.
fn wait_logged(path: &Path, pid: u32) {
    let logged = wait_until(Duration::from_secs(10), || {
        usage_log::read(path)
            .iter()
            .any(|l| l["pid"].as_u64() == Some(u64::from(pid)))
    });
    assert!(
        logged,
        "no line for pid {pid} in {} within 10 s",
        path.display()
    );
}

/// The lines of a gzipped log, through the system's gzip (as logrotate compresses).
fn read_gzipped(path: &Path) -> Vec<Value> {
    let output = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("run gzip -dc (package gzip)");
    assert!(
        output.status.success(),
        "gzip -dc {}: {output:?}",
        path.display()
    );
    let plain = path.with_extension("plain");
    std::fs::write(&plain, &output.stdout).expect("write decompressed copy");
    let lines = usage_log::read(&plain);
    std::fs::remove_file(&plain).expect("remove decompressed copy");
    lines
}

/// Interval counters summed per process `(pid, start_time)` (`None`: unknown), and over all.
fn sums(
    lines: &[Value],
) -> (
    std::collections::HashMap<Option<(u64, u64)>, Counters>,
    Counters,
) {
    let mut per = std::collections::HashMap::<_, Counters>::new();
    let mut total = Counters::default();
    for line in lines {
        let id = line["pid"]
            .as_u64()
            .map(|pid| (pid, line["start_time"].as_u64().expect("start_time")));
        let counters = Counters::from_json(line, "");
        per.entry(id).or_default().add(&counters);
        total.add(&counters);
    }
    (per, total)
}

fn run_pidcap(args: &[&str], files: &[PathBuf], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin_path("pidcap"));
    command.args(args).args(files).env_remove("PIDCAP_SOCKET");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run pidcap")
}

fn counters_of(value: &Value) -> Counters {
    Counters::from_json(value, "")
}

#[test]
fn report_totals_equal_the_sums_of_the_daemons_log_lines() {
    let mut daemon = Daemon::start(&["--interface", "lo"]);
    let log = daemon.usage_log().to_path_buf();
    let first = exchange(&daemon);
    wait_logged(&log, first);
    // Rotate as logrotate does: rename, SIGHUP, compress the old file.
    let rotated = log.with_extension("jsonl.1");
    std::fs::rename(&log, &rotated).expect("rename the log");
    daemon.signal(libc::SIGHUP);
    let second = exchange(&daemon);
    wait_logged(&log, second);
    let socket = daemon.socket().to_path_buf();
    let finished = daemon.stop();
    assert_eq!(finished.code(), 0, "stderr:\n{}", finished.stderr);
    let gzip = Command::new("gzip")
        .arg(&rotated)
        .status()
        .expect("run gzip");
    assert!(gzip.success(), "gzip {}", rotated.display());
    let gzipped = log.with_extension("jsonl.1.gz");

    let mut lines = read_gzipped(&gzipped);
    lines.extend(usage_log::read(&log));
    let (per_process, total) = sums(&lines);

    // The daemon is stopped: report must not need it.
    let socket_arg = socket.to_string_lossy().into_owned();
    let output = run_pidcap(
        &["--socket", &socket_arg, "report", "--json"],
        &[log.clone(), gzipped.clone()],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("report --json is JSON");
    assert_eq!(counters_of(&report["total"]), total, "{report}");
    assert_eq!(report["total"]["lines"], lines.len() as u64, "{report}");
    for check in ["malformed", "unsupported_version", "duplicate", "gaps"] {
        assert_eq!(report["lines"][check], 0, "{check}: {report}");
    }
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), per_process.len(), "{report}");
    for row in rows {
        let id = row["pid"]
            .as_u64()
            .map(|pid| (pid, row["start_time"].as_u64().expect("start_time")));
        assert_eq!(Some(&counters_of(row)), per_process.get(&id), "{row}");
    }
    for pid in [first, second] {
        let row = rows
            .iter()
            .find(|r| r["pid"].as_u64() == Some(u64::from(pid)))
            .unwrap_or_else(|| panic!("no row for sender {pid} in {report}"));
        assert_eq!(row["comm"], "pidcap-peer", "{row}");
        let tx = row["tx_bytes"].as_u64().expect("tx_bytes");
        assert!(
            tx >= PACKETS * PAYLOAD,
            "sender {pid} sent {tx} bytes: {row}"
        );
    }
}

#[test]
fn top_against_the_daemon_fits_40_columns_with_no_escapes_in_a_dumb_terminal() {
    let daemon = Daemon::start(&["--interface", "lo"]);
    let socket = daemon.socket().to_string_lossy().into_owned();
    let output = run_pidcap(
        &["--socket", &socket, "top", "--interval", "100", "-n", "3"],
        &[],
        &[("TERM", "dumb"), ("COLUMNS", "40")],
    );
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(!text.contains('\x1b'), "escape sequences: {text:?}");
    assert_eq!(text.matches("pidcap top").count(), 3, "{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= 40, "{line:?} in\n{text}");
    }
    assert!(text.contains("TOTAL"), "{text}");
}
