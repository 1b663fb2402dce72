//! Checks `systemd/pidcapd.service` with `systemd-analyze verify`, keeps its
//! `systemd-analyze security` exposure at or below 2.8, and pins the settings the daemon
//! depends on. It lives in this crate only because the unit grants the capture
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

/// The highest `systemd-analyze security` exposure the unit may have (issue #9: it was 3.4
/// when the daemon ran as root).
const MAX_EXPOSURE: f64 = 2.8;

/// The figure of `Overall exposure level for NAME: 2.5 OK 🙂`.
fn overall_exposure(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let (_, rest) = line.split_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `systemd-analyze security --offline=true` of `unit` (a copy with an ExecStart that
/// exists), as the overall exposure figure and the whole table.
fn exposure_of(unit: &str) -> (f64, String) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let copy = dir.path().join(UNIT_NAME);
    std::fs::write(&copy, with_existing_exec_start(unit)).expect("write unit copy");
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze: install the systemd package (scripts/deps installs it)");
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let figure = overall_exposure(&table).unwrap_or_else(|| {
        panic!(
            "no overall exposure in systemd-analyze security output ({}):\n{table}\n{stderr}",
            output.status
        )
    });
    (figure, table)
}

#[test]
fn overall_exposure_parses_systemd_252_output() {
    let line = "→ Overall exposure level for pidcapd.service: 2.5 OK 🙂";
    assert_eq!(overall_exposure(line), Some(2.5));
    assert_eq!(
        overall_exposure("✓ PrivateTmp=   Service has no access"),
        None
    );
}

#[test]
fn unit_exposure_is_at_most_2_8() {
    let (figure, table) = exposure_of(&unit_text());
    assert!(
        figure <= MAX_EXPOSURE,
        "systemd-analyze security rates the unit {figure}, above {MAX_EXPOSURE}:\n{table}"
    );
}

#[test]
fn exposure_check_sees_a_root_unit_as_worse() {
    // Guards the test above: the figure must move when the unit loses its user.
    let unit = unit_text();
    let (figure, _) = exposure_of(&unit);
    let as_root: String = unit
        .lines()
        .filter(|l| !l.starts_with("User=") && !l.starts_with("Group="))
        .map(|l| format!("{l}\n"))
        .collect();
    let (root_figure, table) = exposure_of(&as_root);
    assert!(
        root_figure > figure,
        "without User= the unit rated {root_figure}, not above {figure}:\n{table}"
    );
}

#[test]
fn unit_runs_as_the_user_the_sysusers_file_creates() {
    let unit = unit_text();
    assert_eq!(single_value(&unit, "User"), "pidcap");
    assert_eq!(single_value(&unit, "Group"), "pidcap");
    let path = unit_path().with_file_name("pidcap.sysusers");
    let sysusers =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let entries: Vec<Vec<&str>> = sysusers
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        entries.iter().any(|e| e[..] == ["g", "pidcap", "-"]),
        "{sysusers}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.len() >= 3 && e[..3] == ["u", "pidcap", "-:pidcap"]),
        "{sysusers}"
    );
}

/// A systemd size (`512M`, `1G`) in bytes.
fn size_bytes(value: &str) -> u64 {
    let (digits, unit) = value.split_at(value.trim_end_matches(char::is_alphabetic).len());
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        other => panic!("unexpected size unit {other:?} in {value:?}"),
    };
    digits.parse::<u64>().expect("a size") << shift
}

#[test]
fn unit_bounds_memory_and_never_restarts_on_a_config_error() {
    let unit = unit_text();
    let high = size_bytes(single_value(&unit, "MemoryHigh"));
    let max = size_bytes(single_value(&unit, "MemoryMax"));
    assert_eq!(max, 512 << 20, "the bound README documents");
    assert!(
        high < max,
        "MemoryHigh must throttle before MemoryMax kills"
    );
    let prevent: Vec<&str> = single_value(&unit, "RestartPreventExitStatus")
        .split_whitespace()
        .collect();
    assert!(prevent.contains(&"64"), "EX_CONFIG restarts: {prevent:?}");
}

#[test]
fn unit_filter_refuses_other_processes_memory_and_resource_calls() {
    let unit = unit_text();
    let filters: Vec<&str> = assignments(&unit)
        .into_iter()
        .filter(|(k, _)| *k == "SystemCallFilter")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        filters.first(),
        Some(&"@system-service"),
        "an allow list first"
    );
    let denied: Vec<&str> = filters
        .iter()
        .filter_map(|f| f.strip_prefix('~'))
        .flat_map(str::split_whitespace)
        .collect();
    for call in ["process_vm_readv", "process_vm_writev", "@resources"] {
        assert!(denied.contains(&call), "{call} not denied: {filters:?}");
    }
}
