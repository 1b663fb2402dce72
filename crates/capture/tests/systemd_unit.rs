//! Checks `systemd/pidcapd.service` with `systemd-analyze verify` and pins the settings the
//! daemon depends on. It lives in this crate only because the unit grants the capture
//! privileges; it does not use the crate.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT_NAME: &str = "pidcapd.service";

/// The capabilities the daemon needs, and no others (CAP_PERFMON: the socket tracer).
const CAPABILITIES: [&str; 5] = [
    "CAP_NET_RAW",
    "CAP_NET_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
    "CAP_PERFMON",
];

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../systemd")
        .join(UNIT_NAME)
}

fn unit_text() -> String {
    let path = unit_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `Key=value` assignments, in order, ignoring comments and blank lines.
fn assignments(unit: &str) -> Vec<(&str, &str)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// The single value of `key`; fails if it is missing or set more than once.
fn single_value<'a>(unit: &'a str, key: &str) -> &'a str {
    let values: Vec<&str> = assignments(unit)
        .into_iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        values.len(),
        1,
        "{key} must be set exactly once, found {values:?}"
    );
    values[0]
}

/// The unit with `ExecStart` pointing at a binary that exists, since `pidcapd` may not be built
/// or installed where the test runs.
fn with_existing_exec_start(unit: &str) -> String {
    let mut replaced = 0;
    let lines: Vec<String> = unit
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("ExecStart=") {
                replaced += 1;
                "ExecStart=/bin/true".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(replaced, 1, "the unit must have exactly one ExecStart line");
    lines.join("\n") + "\n"
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let copy = dir.path().join(UNIT_NAME);
    std::fs::write(&copy, with_existing_exec_start(&unit_text())).expect("write unit copy");

    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}): install the systemd package \
                 (scripts/deps installs it)"
            )
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed ({}):\n{stderr}",
        output.status
    );
    // Unknown keys and bad values are only warnings (exit 0), so any line about our unit fails.
    let copy_path = copy.display().to_string();
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&copy_path) || l.contains(UNIT_NAME))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complained about the unit:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn verify_check_catches_unknown_keys() {
    // Guards the test above: a typo'd key must show up in stderr with the unit's path.
    let dir = tempfile::tempdir().expect("create temp dir");
    let copy = dir.path().join(UNIT_NAME);
    let unit = with_existing_exec_start(&unit_text())
        .replace("[Service]\n", "[Service]\nWatchDogSecs=30\n");
    std::fs::write(&copy, unit).expect("write unit copy");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze: install the systemd package (scripts/deps installs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&copy.display().to_string()) && stderr.contains("WatchDogSecs"),
        "expected an unknown-key warning naming the unit, got:\n{stderr}"
    );
}

#[test]
fn unit_is_notify_with_watchdog() {
    let unit = unit_text();
    assert_eq!(single_value(&unit, "Type"), "notify");
    assert_eq!(single_value(&unit, "NotifyAccess"), "main");
    assert_eq!(single_value(&unit, "WatchdogSec"), "30");
    assert_eq!(single_value(&unit, "Restart"), "on-failure");
}

#[test]
fn unit_grants_exactly_the_five_capabilities() {
    let unit = unit_text();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let mut granted: Vec<&str> = single_value(&unit, key).split_whitespace().collect();
        granted.sort_unstable();
        let mut expected = CAPABILITIES.to_vec();
        expected.sort_unstable();
        assert_eq!(granted, expected, "{key}");
    }
}

#[test]
fn unit_lets_the_process_side_sources_make_their_system_calls() {
    let unit = unit_text();
    let filters: Vec<&str> = assignments(&unit)
        .into_iter()
        .filter(|(k, _)| *k == "SystemCallFilter")
        .map(|(_, v)| v)
        .collect();
    for call in ["pidfd_getfd", "perf_event_open"] {
        assert!(
            filters.contains(&call),
            "SystemCallFilter={call} missing: {filters:?}"
        );
    }
    assert_eq!(single_value(&unit, "LimitMEMLOCK"), "128M");
}

#[test]
fn unit_keeps_settings_that_would_break_attribution_off() {
    // Each of these hides the host's network or other processes from the daemon.
    let unit = unit_text();
    let set: Vec<&str> = assignments(&unit).into_iter().map(|(k, _)| k).collect();
    for key in [
        "PrivateNetwork",
        "PrivateUsers",
        "ProtectProc",
        "ProcSubset",
    ] {
        assert!(
            !set.contains(&key),
            "{key} must not be set: it breaks attribution"
        );
    }
    let families: Vec<&str> = single_value(&unit, "RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    for family in ["AF_PACKET", "AF_NETLINK", "AF_UNIX"] {
        assert!(
            families.contains(&family),
            "RestrictAddressFamilies lacks {family}"
        );
    }
}
