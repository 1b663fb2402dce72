//! The usage log: exact field set and types; SIGHUP reopens the path (for logrotate).

use std::path::Path;
use std::time::Duration;

use pidcap_e2e::{udp_exchange, usage_log, wait_until, Daemon};
use serde_json::Value;

const FIELDS: [&str; 23] = [
    "v",
    "ts",
    "interval_s",
    "pid",
    "start_time",
    "comm",
    "exe",
    "uid",
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_bytes_total",
    "tx_bytes_total",
    "rx_packets_total",
    "tx_packets_total",
    "exited",
    "daemon_start",
    "netns",
    "cgroup",
    "unit",
    "container",
    "user",
];
const COUNTERS: [&str; 8] = [
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_bytes_total",
    "tx_bytes_total",
    "rx_packets_total",
    "tx_packets_total",
];

/// `2026-11-29T17:14:53.774Z` or with a `+hh:mm` offset.
fn is_rfc3339(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (ts.ends_with('Z') || ts[19..].contains('+') || ts[19..].contains('-'))
}

fn check_line(line: &Value) {
    let obj = line.as_object().expect("object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = FIELDS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "field set of {line}");
    assert_eq!(line["v"], 1, "{line}");
    assert!(line["ts"].as_str().is_some_and(is_rfc3339), "ts of {line}");
    assert!(
        line["interval_s"].as_f64().is_some_and(|s| s >= 0.0),
        "interval_s of {line}"
    );
    for c in COUNTERS {
        assert!(line[c].is_u64(), "{c} of {line}");
    }
    for (interval, total) in [
        ("rx_bytes", "rx_bytes_total"),
        ("tx_bytes", "tx_bytes_total"),
    ] {
        assert!(
            line[interval].as_u64() <= line[total].as_u64(),
            "{interval} > {total}: {line}"
        );
    }
    assert!(line["exited"].is_boolean(), "exited of {line}");
    assert!(
        line["daemon_start"].as_str().is_some_and(is_rfc3339),
        "daemon_start of {line}"
    );
    if line["pid"].is_null() {
        assert_eq!(line["comm"], "<unknown>", "{line}");
        for f in [
            "start_time",
            "exe",
            "uid",
            "netns",
            "cgroup",
            "unit",
            "container",
            "user",
        ] {
            assert!(line[f].is_null(), "{f} of unknown line {line}");
        }
    } else {
        assert!(
            line["pid"].is_u64() && line["start_time"].is_u64(),
            "identity of {line}"
        );
        assert!(
            line["comm"].as_str().is_some_and(|c| !c.is_empty()),
            "comm of {line}"
        );
        assert!(
            line["exe"].is_string() || line["exe"].is_null(),
            "exe of {line}"
        );
        assert!(line["uid"].is_u64(), "uid of {line}");
        assert!(line["netns"].is_u64(), "netns of {line}");
        assert!(line["cgroup"].is_string(), "cgroup of {line}");
        for f in ["unit", "user"] {
            assert!(line[f].is_string() || line[f].is_null(), "{f} of {line}");
        }
        assert!(
            line["container"].is_object() || line["container"].is_null(),
            "container of {line}"
        );
    }
}

#[test]
fn log_lines_have_exactly_the_documented_fields_and_types() {
    let mut daemon = Daemon::start(&["--interface", "lo"]);
    let (receiver, sender) = udp_exchange(&daemon, 20, 400);
    let pid = u64::from(sender.pid());
    let credited = wait_until(Duration::from_secs(10), || {
        daemon.totals(sender.pid()).tx_bytes > 0
    });
    assert!(
        credited,
        "pidcapd never credited the sender; stats: {}",
        daemon.stats()
    );
    // The shutdown flush writes every counter, so no waiting on the interval is needed.
    let path = daemon.usage_log().to_path_buf();
    let finished = daemon.stop();
    assert_eq!(finished.code(), 0, "stderr:\n{}", finished.stderr);
    let lines = usage_log::read(&path);
    lines.iter().for_each(check_line);
    let peer_line = lines
        .iter()
        .find(|l| l["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("no line for the sender pid {pid} in {lines:?}"));
    assert_eq!(peer_line["comm"], "pidcap-peer", "{peer_line}");
    assert!(
        lines.iter().any(|l| l["pid"].is_null()),
        "no unknown line at all"
    );
    assert!(sender.finish().success());
    assert!(receiver.finish().success());
}

fn line_count(path: &Path) -> usize {
    usage_log::read(path).len()
}

#[test]
fn sighup_after_rename_writes_to_a_fresh_file_at_the_original_path() {
    let mut daemon = Daemon::start(&["--interface", "lo"]);
    let path = daemon.usage_log().to_path_buf();
    // The unknown line is written every interval, traffic or not.
    assert!(
        wait_until(Duration::from_secs(10), || line_count(&path) >= 1),
        "log never written"
    );
    let rotated = path.with_extension("jsonl.1");
    std::fs::rename(&path, &rotated).expect("rename log");
    daemon.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || line_count(&path) >= 1),
        "no fresh log at {} after SIGHUP; stderr:\n{}",
        path.display(),
        daemon.stderr()
    );
    let rotated_len = std::fs::metadata(&rotated).expect("rotated").len();
    let seen = line_count(&path);
    assert!(
        wait_until(Duration::from_secs(10), || line_count(&path) >= seen + 2),
        "fresh log stopped growing"
    );
    assert_eq!(
        std::fs::metadata(&rotated).expect("rotated").len(),
        rotated_len,
        "the daemon still writes to the renamed file"
    );
    usage_log::read(&rotated)
        .iter()
        .chain(usage_log::read(&path).iter())
        .for_each(check_line);
    let finished = daemon.stop();
    assert_eq!(finished.code(), 0, "stderr:\n{}", finished.stderr);
}
