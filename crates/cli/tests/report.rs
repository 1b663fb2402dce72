//! Runs the real `pidcap report` on the fixture logs in `tests/fixtures/report` (see its
//! README for what they hold and the sums a report must print), with no daemon anywhere:
//! `--socket` points at a path that does not exist.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const PIDCAP: &str = env!("CARGO_BIN_EXE_pidcap");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/report")
        .join(name)
}

/// The three files in the order a shell glob names them (not oldest first).
fn all_files() -> Vec<PathBuf> {
    ["usage.jsonl", "usage.jsonl.1", "usage.jsonl.2.gz"]
        .map(fixture)
        .to_vec()
}

fn report(args: &[&str], files: &[PathBuf]) -> Output {
    Command::new(PIDCAP)
        .args(["--socket", "/nonexistent/pidcap.sock", "report"])
        .args(args)
        .args(files)
        .output()
        .expect("run pidcap")
}

fn ok_json(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

fn row<'a>(report: &'a Value, key: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no row {key} in {report}"))
}

fn counters(value: &Value) -> [u64; 4] {
    ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"].map(|f| value[f].as_u64().unwrap())
}

#[test]
fn sums_rotated_gzipped_and_restarted_logs_exactly() {
    let output = report(&["--json"], &all_files());
    let json = ok_json(&output);
    assert_eq!(counters(&json["total"]), [14676, 8137, 51, 29]);
    assert_eq!(json["total"]["lines"], 13);
    // The reused pid is two rows; the restart does not split or double nginx.
    assert_eq!(counters(row(&json, "4242:100")), [4010, 620, 31, 12]);
    assert_eq!(row(&json, "4242:100")["comm"], "curl");
    assert_eq!(counters(row(&json, "4242:900")), [10000, 400, 10, 4]);
    assert_eq!(row(&json, "4242:900")["comm"], "wget");
    assert_eq!(counters(row(&json, "77:5000")), [610, 7110, 7, 11]);
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let unknown = rows.last().unwrap();
    assert_eq!(unknown["kind"], "unknown");
    assert!(unknown["pid"].is_null());
    assert_eq!(counters(unknown), [56, 7, 3, 2]);
    assert_eq!(json["lines"]["read"], 16);
    assert_eq!(json["lines"]["malformed"], 2);
    assert_eq!(json["lines"]["unsupported_version"], 1);
    assert_eq!(json["lines"]["duplicate"], 0);
    assert_eq!(json["lines"]["gaps"], 0);
    assert_eq!(json["daemon_starts"].as_array().unwrap().len(), 2);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("usage.jsonl:2: malformed"), "{stderr}");
    assert!(
        stderr.contains("usage.jsonl:3: schema version 2"),
        "{stderr}"
    );
    assert!(stderr.contains("usage.jsonl:6: malformed"), "{stderr}");
}

#[test]
fn a_file_named_twice_counts_once() {
    let mut files = all_files();
    files.push(fixture("usage.jsonl.1"));
    let output = report(&["--json"], &files);
    let json = ok_json(&output);
    assert_eq!(counters(&json["total"]), [14676, 8137, 51, 29]);
    assert_eq!(json["lines"]["duplicate"], 5);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("5 lines were read twice"), "{stderr}");
}

/// A line missing in the middle of one daemon's run (here curl's second line, as if a
/// rotated file between two given ones were left out) shows as a gap in the totals.
#[test]
fn a_missing_line_shows_as_a_gap() {
    let mut oldest = String::new();
    let gz = std::fs::File::open(fixture("usage.jsonl.2.gz")).unwrap();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut oldest).unwrap();
    let without_line_3: Vec<&str> = oldest
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| l)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("usage.jsonl.2");
    std::fs::write(&cut, without_line_3.join("\n") + "\n").unwrap();
    let output = report(&["--json"], &[cut, fixture("usage.jsonl.1")]);
    let json = ok_json(&output);
    assert_eq!(json["lines"]["gaps"], 1);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("lines are missing"), "{stderr}");
}

#[test]
fn the_window_takes_lines_by_their_ts() {
    let args = [
        "--json",
        "--since",
        "2026-03-01T10:00:30Z",
        "--until",
        "2026-03-01 10:00:50",
    ];
    let json = ok_json(&report(&args, &all_files()));
    assert_eq!(json["total"]["rx_bytes"], 8116);
    assert_eq!(json["total"]["tx_bytes"], 427);
    assert_eq!(json["total"]["lines"], 5);
    assert_eq!(json["since"], "2026-03-01T10:00:30.000Z");
    assert_eq!(json["first_ts"], "2026-03-01T10:00:30.000Z");
    assert_eq!(json["last_ts"], "2026-03-01T10:00:45.000Z");
}

#[test]
fn grouping_keeps_the_total() {
    for by in ["user", "unit", "container"] {
        let json = ok_json(&report(&["--json", "--by", by], &all_files()));
        assert_eq!(counters(&json["total"]), [14676, 8137, 51, 29], "{by}");
        let summed: u64 = json["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rx_bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(summed, 14676, "{by}");
    }
    let json = ok_json(&report(&["--json", "--by", "container"], &all_files()));
    let rows = json["rows"].as_array().unwrap();
    // Most bytes first: the host (curl and wget), then the container (nginx), then unknown.
    assert_eq!(rows[0]["key"], Value::Null, "{json}");
    assert_eq!(rows[0]["processes"], 2);
    let docker = rows[1]["key"].as_str().unwrap();
    assert!(docker.starts_with("docker:3f4e1b5d0a9c"), "{json}");
    assert_eq!(rows[1]["processes"], 1);
    assert_eq!(rows[2]["kind"], "unknown");
}

#[test]
fn csv_and_table_carry_the_same_rows() {
    let output = report(&["--csv"], &all_files());
    assert_eq!(output.status.code(), Some(0));
    let csv = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("kind,key,pid,start_time,comm,"),
        "{csv}"
    );
    assert_eq!(lines.len(), 5, "{csv}");
    let rx_column = lines[0].split(',').position(|f| f == "rx_bytes").unwrap();
    let rx: u64 = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(rx_column).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(rx, 14676);

    let output = report(&[], &all_files());
    assert_eq!(output.status.code(), Some(0));
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.starts_with("pidcap report  by process  2026-03-01 10:00:10 .. 2026-03-01 10:01:05"),
        "{table}"
    );
    for expected in [
        "wget",
        "curl",
        "nginx",
        "<unknown>",
        "TOTAL",
        "14.3 KiB",
        "7.9 KiB",
    ] {
        assert!(table.contains(expected), "{expected} missing:\n{table}");
    }
}

#[test]
fn errors_are_clear_and_never_about_the_daemon() {
    let output = report(&[], &[fixture("no-such-file")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-file"), "{stderr}");
    assert!(!stderr.contains("connect"), "{stderr}");
    let output = report(&["--since", "someday"], &all_files());
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--since: \"someday\" is neither a time"),
        "{stderr}"
    );
}
