//! `pidcap report`: sums usage-log files, without the daemon.
//!
//! The engine is [`crate::report`]; this module picks the files, resolves the window against
//! the clock, and renders the report as a table, JSON or CSV. Warnings (skipped lines,
//! duplicates, gaps) go to stderr and never change the exit status: the sums cover every line
//! that could be read, and the machine formats carry the same counts in `lines`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{anyhow, bail};
use serde::Serialize;

use crate::cli::{ReportArgs, ReportBy};
use crate::format::{self, Align, Table};
use crate::report::aggregate::Checks;
use crate::report::files::{self, DEFAULT_LOG};
use crate::report::line::Counters;
use crate::report::{self, time, By, FileWarnings, Report, Row, RowKey, Window};

/// Skipped lines named per file before the rest are only counted.
const NAMED_PER_FILE: usize = 5;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

pub fn run(args: &ReportArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let now = time::epoch_ms(SystemTime::now());
    let window = window(args, now).map_err(|e| anyhow!(e))?;
    let paths = paths(&args.files)?;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let (report, skipped) = report::build(paths, by(args.by), window)?;
    for warning in warnings(&report.checks, &skipped) {
        eprintln!("pidcap: warning: {warning}");
    }
    let format = match (args.json, args.csv) {
        (true, _) => Format::Json,
        (_, true) => Format::Csv,
        _ => Format::Table,
    };
    out.write_all(render(&report, &names, format).as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn by(by: ReportBy) -> By {
    match by {
        ReportBy::Process => By::Process,
        ReportBy::User => By::User,
        ReportBy::Unit => By::Unit,
        ReportBy::Container => By::Container,
    }
}

/// `--since`/`--until` against the clock reading `now_ms`.
pub fn window(args: &ReportArgs, now_ms: i64) -> Result<Window, String> {
    let bound = |text: &Option<String>, flag: &str| {
        text.as_deref()
            .map(|t| time::parse_bound(t, now_ms).map_err(|e| format!("{flag}: {e}")))
            .transpose()
    };
    Window::new(
        bound(&args.since, "--since")?,
        bound(&args.until, "--until")?,
    )
}

/// The files named, or the default log and its rotated siblings.
fn paths(named: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    let found = files::with_rotated(Path::new(DEFAULT_LOG))?;
    if found.is_empty() {
        bail!(
            "no usage log at {DEFAULT_LOG} (nor rotated ones beside it); name the files to \
             read, e.g. pidcap report /path/to/usage.jsonl*"
        );
    }
    Ok(found)
}

/// What a person should know about the reading: skipped lines (the first few by file and
/// line number), duplicates and gaps.
pub fn warnings(checks: &Checks, skipped: &[FileWarnings]) -> Vec<String> {
    let mut lines = Vec::new();
    for file in skipped {
        for (number, why) in file.skipped.iter().take(NAMED_PER_FILE) {
            lines.push(format!("{}:{number}: {why}", file.path.display()));
        }
        let more = file.skipped.len().saturating_sub(NAMED_PER_FILE);
        if more > 0 {
            lines.push(format!(
                "{}: {more} more lines skipped",
                file.path.display()
            ));
        }
    }
    if checks.duplicate > 0 {
        lines.push(format!(
            "{} lines were read twice (a file named twice, or a rotated file and a copy of \
             it) and counted once",
            checks.duplicate
        ));
    }
    if checks.gaps > 0 {
        lines.push(format!(
            "{} lines do not follow on from the previous line of their process (their totals \
             jump): lines are missing, perhaps a rotated file that was not given",
            checks.gaps
        ));
    }
    lines
}

/// The report in `format`; `files` are the names read, for the machine formats.
pub fn render(report: &Report, files: &[String], format: Format) -> String {
    match format {
        Format::Table => table(report),
        Format::Json => json(report, files),
        Format::Csv => csv(report),
    }
}

// ---- table ----

const PROCESS_COLUMNS: [(&str, Align); 7] = [
    ("PID", Align::Right),
    ("USER", Align::Left),
    ("COMM", Align::Left),
    ("RX", Align::Right),
    ("TX", Align::Right),
    ("FIRST", Align::Left),
    ("LAST", Align::Left),
];

const GROUP_COLUMNS: [(&str, Align); 6] = [
    ("GROUP", Align::Left),
    ("PROCS", Align::Right),
    ("RX", Align::Right),
    ("TX", Align::Right),
    ("FIRST", Align::Left),
    ("LAST", Align::Left),
];

/// A header line, then rows by bytes (most first), the unknown row, and the total.
fn table(report: &Report) -> String {
    let columns: &[(&str, Align)] = match report.by {
        By::Process => &PROCESS_COLUMNS,
        _ => &GROUP_COLUMNS,
    };
    let mut table = Table::new(columns);
    for row in &report.rows {
        table.push(row_cells(report.by, row));
    }
    table.push(row_cells(report.by, &report.unknown));
    table.push(total_cells(report.by, &report.total));
    header(report) + &table.render()
}

fn header(report: &Report) -> String {
    let span = match (&report.first_ts, &report.last_ts) {
        (Some(first), Some(last)) => format!("{} .. {}", when(first), when(last)),
        _ => "no lines in the window".into(),
    };
    let starts = report.daemon_starts.len();
    let mut text = format!(
        "pidcap report  by {}  {span}  {} lines, {starts} daemon start{}",
        report.by.as_str(),
        report.checks.in_window,
        if starts == 1 { "" } else { "s" },
    );
    let bounds = [
        ("since", report.window.since),
        ("until", report.window.until),
    ];
    for (name, bound) in bounds {
        if let Some(ms) = bound {
            text.push_str(&format!("  {name} {}", time::format_timestamp(ms)));
        }
    }
    text + "\n\n"
}

/// `2026-11-29 17:14:53` from a log `ts` (UTC), or the text as written if it does not parse.
fn when(ts: &str) -> String {
    match time::parse_timestamp(ts) {
        Some(ms) => time::format_timestamp(ms)[..19].replacen('T', " ", 1),
        None => ts.to_owned(),
    }
}

fn row_cells(by: By, row: &Row) -> Vec<String> {
    let times = [
        row.first_ts.as_deref().map_or(String::new(), when),
        row.last_ts.as_deref().map_or(String::new(), when),
    ];
    let traffic = [
        format::bytes(row.sum.rx_bytes),
        format::bytes(row.sum.tx_bytes),
    ];
    let lead = match (&row.key, by) {
        (RowKey::Process(id), _) => vec![id.pid.to_string(), user(row), comm(row)],
        (RowKey::Unknown, By::Process) => vec!["-".into(), "-".into(), comm(row)],
        (RowKey::Unknown, _) => vec![pidcap_proto::UNKNOWN_COMM.into(), "-".into()],
        (RowKey::Group(key), _) => vec![group_name(by, key.as_deref()), row.processes.to_string()],
    };
    lead.into_iter().chain(traffic).chain(times).collect()
}

fn total_cells(by: By, total: &Counters) -> Vec<String> {
    let lead: Vec<String> = match by {
        By::Process => vec![String::new(), String::new(), "TOTAL".into()],
        _ => vec!["TOTAL".into(), String::new()],
    };
    lead.into_iter()
        .chain([format::bytes(total.rx_bytes), format::bytes(total.tx_bytes)])
        .collect()
}

fn user(row: &Row) -> String {
    match (&row.user, row.uid) {
        (Some(user), _) => user.clone(),
        (None, Some(uid)) => uid.to_string(),
        (None, None) => "-".into(),
    }
}

fn comm(row: &Row) -> String {
    row.comm.clone().unwrap_or_else(|| "?".into())
}

/// A group as people read it: containers by runtime and short id, the processes without the
/// key in parentheses (as `ps --by` shows them).
fn group_name(by: By, key: Option<&str>) -> String {
    match (by, key) {
        (By::Container, Some(key)) => format::short_container(key),
        (_, Some(key)) => key.to_owned(),
        (By::User, None) => "(no user)".into(),
        (By::Container, None) => "(host)".into(),
        (_, None) => "(no unit)".into(),
    }
}

// ---- JSON and CSV ----

/// One row of `--json` (`rows`) and `--csv`. Every row has every field (`null`/empty when
/// not applicable), so the rows of one report always sum to `total`.
#[derive(Debug, Serialize)]
pub struct RowOut<'a> {
    /// `process`, `group` or `unknown`.
    pub kind: &'static str,
    /// `PID:START_TIME` for a process; the user, unit or `runtime:id` for a group (`null`
    /// for the processes without one); `null` for unknown.
    pub key: Option<String>,
    pub pid: Option<u32>,
    pub start_time: Option<u64>,
    pub comm: Option<&'a str>,
    pub exe: Option<&'a str>,
    pub uid: Option<u32>,
    pub user: Option<&'a str>,
    pub unit: Option<&'a str>,
    pub container: Option<&'a str>,
    pub processes: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub lines: u64,
    pub first_ts: Option<&'a str>,
    pub last_ts: Option<&'a str>,
}

/// The CSV header: [`RowOut`]'s fields in order.
pub const CSV_FIELDS: [&str; 18] = [
    "kind",
    "key",
    "pid",
    "start_time",
    "comm",
    "exe",
    "uid",
    "user",
    "unit",
    "container",
    "processes",
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "lines",
    "first_ts",
    "last_ts",
];

impl<'a> RowOut<'a> {
    fn new(row: &'a Row) -> RowOut<'a> {
        let (kind, key, id) = match &row.key {
            RowKey::Process(id) => (
                "process",
                Some(format!("{}:{}", id.pid, id.start_time)),
                Some(*id),
            ),
            RowKey::Group(key) => ("group", key.clone(), None),
            RowKey::Unknown => ("unknown", None, None),
        };
        RowOut {
            kind,
            key,
            pid: id.map(|i| i.pid),
            start_time: id.map(|i| i.start_time),
            comm: row.comm.as_deref(),
            exe: row.exe.as_deref(),
            uid: row.uid,
            user: row.user.as_deref(),
            unit: row.unit.as_deref(),
            container: row.container.as_deref(),
            processes: row.processes,
            rx_bytes: row.sum.rx_bytes,
            tx_bytes: row.sum.tx_bytes,
            rx_packets: row.sum.rx_packets,
            tx_packets: row.sum.tx_packets,
            lines: row.lines,
            first_ts: row.first_ts.as_deref(),
            last_ts: row.last_ts.as_deref(),
        }
    }

    fn csv_cells(&self) -> [String; 18] {
        let opt = |v: Option<&str>| v.unwrap_or_default().to_owned();
        let num = |v: Option<u64>| v.map_or(String::new(), |n| n.to_string());
        [
            self.kind.to_owned(),
            opt(self.key.as_deref()),
            num(self.pid.map(u64::from)),
            num(self.start_time),
            opt(self.comm),
            opt(self.exe),
            num(self.uid.map(u64::from)),
            opt(self.user),
            opt(self.unit),
            opt(self.container),
            self.processes.to_string(),
            self.rx_bytes.to_string(),
            self.tx_bytes.to_string(),
            self.rx_packets.to_string(),
            self.tx_packets.to_string(),
            self.lines.to_string(),
            opt(self.first_ts),
            opt(self.last_ts),
        ]
    }
}

/// Rows, then the unknown row.
fn rows_out(report: &Report) -> Vec<RowOut<'_>> {
    report
        .rows
        .iter()
        .chain([&report.unknown])
        .map(RowOut::new)
        .collect()
}

#[derive(Debug, Serialize)]
struct TotalOut {
    #[serde(flatten)]
    sum: Counters,
    lines: u64,
}

#[derive(Debug, Serialize)]
struct ReportOut<'a> {
    v: u32,
    by: &'static str,
    since: Option<String>,
    until: Option<String>,
    first_ts: Option<&'a str>,
    last_ts: Option<&'a str>,
    files: &'a [String],
    lines: Checks,
    daemon_starts: &'a [String],
    rows: Vec<RowOut<'a>>,
    total: TotalOut,
}

fn json(report: &Report, files: &[String]) -> String {
    let out = ReportOut {
        v: 1,
        by: report.by.as_str(),
        since: report.window.since.map(time::format_timestamp),
        until: report.window.until.map(time::format_timestamp),
        first_ts: report.first_ts.as_deref(),
        last_ts: report.last_ts.as_deref(),
        files,
        lines: report.checks,
        daemon_starts: &report.daemon_starts,
        rows: rows_out(report),
        total: TotalOut {
            sum: report.total,
            lines: report.checks.in_window,
        },
    };
    // Plain structs of numbers and strings always serialize.
    serde_json::to_string(&out).unwrap_or_default() + "\n"
}

fn csv(report: &Report) -> String {
    let mut text = CSV_FIELDS.join(",") + "\n";
    for row in rows_out(report) {
        let cells: Vec<String> = row.csv_cells().iter().map(|c| csv_cell(c)).collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    text
}

/// RFC 4180: a cell with a comma, quote or line break is quoted, its quotes doubled.
fn csv_cell(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::aggregate::Aggregator;
    use crate::report::line::parse;

    fn line(t: u32, pid: &str, start: &str, comm: &str, rx: u64, extra: &str) -> String {
        format!(
            r#"{{"v":1,"ts":"2024-01-01T00:00:{t:02}Z","pid":{pid},"start_time":{start},"comm":"{comm}","exe":null,"uid":0,"rx_bytes":{rx},"tx_bytes":{rx},"rx_packets":1,"tx_packets":2,"daemon_start":"2024-01-01T00:00:00Z"{extra}}}"#
        )
    }

    fn report(by: By) -> Report {
        let mut agg = Aggregator::new(by, Window::default());
        for text in [
            line(
                10,
                "7",
                "70",
                "sshd",
                1024,
                r#","user":"root","unit":"ssh.service""#,
            ),
            line(10, "null", "null", "<unknown>", 5, ""),
            line(
                20,
                "7",
                "700",
                r#"a,\"b\""#,
                4096,
                r#","container":{"runtime":"docker","id":"abababababababababababababababababababababababababababababababab"}"#,
            ),
            line(
                20,
                "7",
                "70",
                "sshd",
                1024,
                r#","user":"root","unit":"ssh.service""#,
            ),
        ] {
            agg.add(&parse(text.as_bytes()).unwrap());
        }
        agg.finish()
    }

    #[test]
    fn table_lists_processes_then_unknown_then_total() {
        let text = render(&report(By::Process), &[], Format::Table);
        let expected = [
            "pidcap report  by process  2024-01-01 00:00:10 .. 2024-01-01 00:00:20  4 lines, 1 daemon start",
            "",
            "PID  USER  COMM            RX       TX  FIRST                LAST",
            "  7  0     a,\"b\"      4.0 KiB  4.0 KiB  2024-01-01 00:00:20  2024-01-01 00:00:20",
            "  7  root  sshd       2.0 KiB  2.0 KiB  2024-01-01 00:00:10  2024-01-01 00:00:20",
            "  -  -     <unknown>      5 B      5 B  2024-01-01 00:00:10  2024-01-01 00:00:10",
            "           TOTAL      6.0 KiB  6.0 KiB",
        ];
        assert_eq!(text, expected.join("\n") + "\n");
    }

    #[test]
    fn group_tables_name_the_groups() {
        let text = render(&report(By::Container), &[], Format::Table);
        assert!(text.contains("docker:abababababab      1"), "{text}");
        assert!(text.contains("(host)                   1"), "{text}");
        let text = render(&report(By::Unit), &[], Format::Table);
        assert!(text.contains("ssh.service"), "{text}");
        assert!(text.contains("(no unit)"), "{text}");
        assert!(text.contains("<unknown>"), "{text}");
    }

    #[test]
    fn json_rows_sum_to_the_total_and_keep_exact_counts() {
        let files = ["usage.jsonl".to_string()];
        let text = render(&report(By::Process), &files, Format::Json);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["v"], 1);
        assert_eq!(value["by"], "process");
        assert_eq!(value["files"][0], "usage.jsonl");
        assert_eq!(value["lines"]["in_window"], 4);
        let rows = value["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["key"], "7:700");
        assert_eq!(rows[0]["container"], format!("docker:{}", "ab".repeat(32)));
        assert_eq!(rows[2]["kind"], "unknown");
        assert!(rows[2]["pid"].is_null());
        let rx: u64 = rows.iter().map(|r| r["rx_bytes"].as_u64().unwrap()).sum();
        assert_eq!(rx, 4096 + 2048 + 5);
        assert_eq!(value["total"]["rx_bytes"], rx);
        assert_eq!(value["total"]["tx_packets"], 8);
        assert_eq!(value["total"]["lines"], 4);
    }

    #[test]
    fn csv_has_the_json_fields_and_quotes_what_needs_it() {
        let text = render(&report(By::Process), &[], Format::Csv);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], CSV_FIELDS.join(","));
        assert_eq!(lines.len(), 4);
        assert!(
            lines[1].starts_with("process,7:700,7,700,\"a,\"\"b\"\"\",,0,"),
            "{text}"
        );
        assert!(lines[3].starts_with("unknown,,,,<unknown>,"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&render(&report(By::Unit), &[], Format::Json)).unwrap();
        let mut keys: Vec<&str> = json["rows"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = CSV_FIELDS.to_vec();
        keys.sort_unstable();
        fields.sort_unstable();
        assert_eq!(keys, fields);
    }

    #[test]
    fn warnings_name_the_first_skipped_lines_and_count_the_rest() {
        let skipped = vec![FileWarnings {
            path: PathBuf::from("usage.jsonl.1"),
            skipped: (1..=7).map(|n| (n, "malformed: x".to_string())).collect(),
        }];
        let checks = Checks {
            duplicate: 3,
            gaps: 2,
            ..Checks::default()
        };
        let lines = warnings(&checks, &skipped);
        assert_eq!(lines[0], "usage.jsonl.1:1: malformed: x");
        assert_eq!(lines[5], "usage.jsonl.1: 2 more lines skipped");
        assert!(lines[6].starts_with("3 lines were read twice"));
        assert!(lines[7].starts_with("2 lines do not follow on"));
    }

    #[test]
    fn the_window_is_resolved_against_the_given_clock() {
        let args = ReportArgs {
            since: Some("1h".into()),
            until: Some("2024-01-01T00:00:00Z".into()),
            by: ReportBy::Process,
            json: false,
            csv: false,
            files: vec![],
        };
        let now = 1_704_067_200_000 + 7_200_000;
        assert_eq!(
            window(&args, now),
            Err(
                "--since (2024-01-01T01:00:00.000Z) is not before --until (2024-01-01T00:00:00.000Z)"
                    .to_string()
            )
        );
        let args = ReportArgs {
            until: Some("10m".into()),
            ..args
        };
        assert_eq!(
            window(&args, now).unwrap(),
            Window::new(Some(now - 3_600_000), Some(now - 600_000)).unwrap()
        );
    }
}
