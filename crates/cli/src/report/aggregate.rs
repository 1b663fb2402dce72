//! Sums usage-log lines into report rows.
//!
//! Invariants:
//! - Only the interval fields (`rx_bytes`, …) are summed, and each line counts once, in the
//!   window of its `ts`; so the rows plus the unknown row sum to exactly the sum of those
//!   lines, whatever the grouping.
//! - A process is (pid, start_time): a reused pid is another row.
//! - A line that repeats one already read (same writer `daemon_start`, same process, a `ts`
//!   not after the last one of that process from that writer) is a duplicate — the same
//!   file given twice, or a rotated file and its copy — and is skipped and counted, never
//!   summed twice. Lines must therefore be fed oldest file first (see `files`).
//! - Within one writer, `total == previous total + interval` for every process; a line that
//!   breaks it means lines are missing (a rotated file not given) and is counted as a gap.
//!   Across a restart (a new `daemon_start`) totals continue from a checkpoint and may skip
//!   what was counted but never logged, so they are not compared.
//!
//! Memory is bounded by the number of rows and processes, not by the number of lines.

use std::collections::{HashMap, HashSet};

use super::line::{Counters, LogLine, ProcessId};
use super::time::Window;

/// What rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Process,
    User,
    Unit,
    Container,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Process => "process",
            By::User => "user",
            By::Unit => "unit",
            By::Container => "container",
        }
    }
}

/// What a row sums.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowKey {
    Process(ProcessId),
    /// A user, unit or container; `None` for the processes without one.
    Group(Option<String>),
    /// The `unknown` lines.
    Unknown,
}

/// One row: the sum of the lines of a process, a group, or the unknown bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: RowKey,
    /// The newest line's description of the process (process rows and the unknown row).
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub unit: Option<String>,
    pub container: Option<String>,
    /// Distinct processes summed (1 for a process row, 0 for the unknown row).
    pub processes: u64,
    pub sum: Counters,
    pub lines: u64,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    first_ms: i64,
    last_ms: i64,
}

impl Row {
    fn new(key: RowKey) -> Row {
        Row {
            key,
            comm: None,
            exe: None,
            uid: None,
            user: None,
            unit: None,
            container: None,
            processes: 0,
            sum: Counters::default(),
            lines: 0,
            first_ts: None,
            last_ts: None,
            first_ms: i64::MAX,
            last_ms: i64::MIN,
        }
    }

    fn add(&mut self, line: &LogLine) {
        self.sum.add(&line.interval);
        self.lines += 1;
        if line.ts_ms < self.first_ms {
            self.first_ms = line.ts_ms;
            self.first_ts = Some(line.ts.clone());
        }
        if line.ts_ms >= self.last_ms {
            self.last_ms = line.ts_ms;
            self.last_ts = Some(line.ts.clone());
            if !matches!(self.key, RowKey::Group(_)) {
                self.describe(line);
            }
        }
    }

    fn describe(&mut self, line: &LogLine) {
        self.comm = Some(line.comm.clone());
        self.exe.clone_from(&line.exe);
        self.uid = line.uid;
        self.user.clone_from(&line.user);
        self.unit.clone_from(&line.unit);
        self.container.clone_from(&line.container);
    }
}

/// What reading found besides the sums; every count here is also worth a warning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Checks {
    /// Lines read, of any kind.
    pub read: u64,
    /// v1 lines within the window (summed).
    pub in_window: u64,
    /// Lines that are not JSON, are torn, or lack a required field.
    pub malformed: u64,
    /// Lines of a schema version other than 1.
    pub unsupported_version: u64,
    /// Lines already read (not summed again).
    pub duplicate: u64,
    /// Lines whose totals show lines before them missing.
    pub gaps: u64,
}

/// The finished report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub by: By,
    pub window: Window,
    /// Process or group rows, most bytes first, ties by key.
    pub rows: Vec<Row>,
    /// The unknown bucket (pid null): always present, also when zero.
    pub unknown: Row,
    /// `rows` plus `unknown`.
    pub total: Counters,
    pub checks: Checks,
    /// Distinct `daemon_start` values among the lines in the window, oldest first.
    pub daemon_starts: Vec<String>,
    /// The oldest and newest `ts` in the window.
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
}

/// Where a writer (one `daemon_start`) last left a process.
#[derive(Debug, Clone)]
struct Seen {
    writer: usize,
    last_ms: i64,
    total: Option<Counters>,
}

/// Feeds on lines, oldest first; [`Aggregator::finish`] gives the report.
#[derive(Debug)]
pub struct Aggregator {
    by: By,
    window: Window,
    rows: HashMap<RowKey, Row>,
    members: HashMap<RowKey, HashSet<ProcessId>>,
    unknown: Row,
    writers: Vec<Option<String>>,
    seen: HashMap<Option<ProcessId>, Vec<Seen>>,
    starts_in_window: HashSet<usize>,
    checks: Checks,
}

/// What [`Aggregator::add`] did with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Summed,
    OutsideWindow,
    Duplicate,
}

impl Aggregator {
    pub fn new(by: By, window: Window) -> Aggregator {
        Aggregator {
            by,
            window,
            rows: HashMap::new(),
            members: HashMap::new(),
            unknown: Row::new(RowKey::Unknown),
            writers: Vec::new(),
            seen: HashMap::new(),
            starts_in_window: HashSet::new(),
            checks: Checks::default(),
        }
    }

    /// Counts a line that could not be read.
    pub fn malformed(&mut self) {
        self.checks.read += 1;
        self.checks.malformed += 1;
    }

    /// Counts a line of another schema version.
    pub fn unsupported_version(&mut self) {
        self.checks.read += 1;
        self.checks.unsupported_version += 1;
    }

    /// Takes one line: checks it against what was read before, then sums it if it falls in
    /// the window.
    pub fn add(&mut self, line: &LogLine) -> Outcome {
        self.checks.read += 1;
        let writer = self.writer(&line.daemon_start);
        if !self.continues(line, writer) {
            self.checks.duplicate += 1;
            return Outcome::Duplicate;
        }
        if !self.window.contains(line.ts_ms) {
            return Outcome::OutsideWindow;
        }
        self.checks.in_window += 1;
        self.starts_in_window.insert(writer);
        match line.process {
            None => self.unknown.add(line),
            Some(id) => self.add_process(id, line),
        }
        Outcome::Summed
    }

    fn writer(&mut self, daemon_start: &Option<String>) -> usize {
        match self.writers.iter().position(|w| w == daemon_start) {
            Some(i) => i,
            None => {
                self.writers.push(daemon_start.clone());
                self.writers.len() - 1
            }
        }
    }

    /// Whether the line is new for its process and writer; counts a gap in the totals.
    fn continues(&mut self, line: &LogLine, writer: usize) -> bool {
        let history = self.seen.entry(line.process).or_default();
        let Some(seen) = history.iter_mut().find(|s| s.writer == writer) else {
            history.push(Seen {
                writer,
                last_ms: line.ts_ms,
                total: line.total,
            });
            return true;
        };
        if line.ts_ms <= seen.last_ms {
            return false;
        }
        if let (Some(before), Some(now)) = (seen.total, line.total) {
            let mut expected = before;
            expected.add(&line.interval);
            if expected != now {
                self.checks.gaps += 1;
            }
        }
        seen.last_ms = line.ts_ms;
        seen.total = line.total;
        true
    }

    fn add_process(&mut self, id: ProcessId, line: &LogLine) {
        let key = self.key(id, line);
        let row = self
            .rows
            .entry(key.clone())
            .or_insert_with(|| Row::new(key.clone()));
        row.add(line);
        let members = self.members.entry(key).or_default();
        members.insert(id);
        row.processes = members.len() as u64;
    }

    fn key(&self, id: ProcessId, line: &LogLine) -> RowKey {
        match self.by {
            By::Process => RowKey::Process(id),
            By::User => RowKey::Group(
                line.user
                    .clone()
                    .or_else(|| line.uid.map(|uid| uid.to_string())),
            ),
            By::Unit => RowKey::Group(line.unit.clone()),
            By::Container => RowKey::Group(line.container.clone()),
        }
    }

    pub fn finish(self) -> Report {
        let mut rows: Vec<Row> = self.rows.into_values().collect();
        rows.sort_by(|a, b| b.sum.bytes().cmp(&a.sum.bytes()).then(a.key.cmp(&b.key)));
        let mut total = self.unknown.sum;
        rows.iter().for_each(|row| total.add(&row.sum));
        let all = rows.iter().chain([&self.unknown]);
        let first = all
            .clone()
            .filter(|r| r.lines > 0)
            .min_by_key(|r| r.first_ms);
        let last = all.filter(|r| r.lines > 0).max_by_key(|r| r.last_ms);
        let mut starts: Vec<String> = self
            .starts_in_window
            .iter()
            .filter_map(|&w| self.writers[w].clone())
            .collect();
        starts.sort_by_key(|s| super::time::parse_timestamp(s));
        Report {
            by: self.by,
            window: self.window,
            first_ts: first.and_then(|r| r.first_ts.clone()),
            last_ts: last.and_then(|r| r.last_ts.clone()),
            rows,
            unknown: self.unknown,
            total,
            checks: self.checks,
            daemon_starts: starts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::line::parse;

    /// A v1 line of process `pid`/`start` (or unknown when `pid` is 0) at second `t`.
    fn line(t: u32, pid: u32, start: u64, rx: u64, rx_total: u64, daemon: &str) -> LogLine {
        let (pid, start) = if pid == 0 {
            ("null".to_string(), "null".to_string())
        } else {
            (pid.to_string(), start.to_string())
        };
        let comm = if pid == "null" {
            "<unknown>".to_string()
        } else {
            format!("c{pid}")
        };
        let text = format!(
            r#"{{"v":1,"ts":"2024-01-01T00:00:{t:02}Z","pid":{pid},"start_time":{start},"comm":"{comm}","uid":1000,"user":"alice","unit":"u.service","container":null,"rx_bytes":{rx},"tx_bytes":{rx},"rx_packets":{rx},"tx_packets":{rx},"rx_bytes_total":{rx_total},"tx_bytes_total":{rx_total},"rx_packets_total":{rx_total},"tx_packets_total":{rx_total},"daemon_start":"{daemon}"}}"#
        );
        parse(text.as_bytes()).unwrap()
    }

    const D1: &str = "2024-01-01T00:00:00Z";
    const D2: &str = "2024-01-01T00:00:30Z";

    #[test]
    fn a_reused_pid_is_another_row() {
        let mut agg = Aggregator::new(By::Process, Window::default());
        agg.add(&line(1, 7, 100, 10, 10, D1));
        agg.add(&line(2, 7, 100, 5, 15, D1));
        agg.add(&line(3, 7, 900, 1000, 1000, D1));
        let report = agg.finish();
        assert_eq!(report.rows.len(), 2);
        assert_eq!(
            report.rows[0].key,
            RowKey::Process(ProcessId {
                pid: 7,
                start_time: 900
            })
        );
        assert_eq!(report.rows[0].sum.rx_bytes, 1000);
        assert_eq!(report.rows[1].sum.rx_bytes, 15);
        assert_eq!(report.rows[1].lines, 2);
        assert_eq!(report.total.rx_bytes, 1015);
        assert_eq!(report.checks.gaps, 0);
    }

    #[test]
    fn unknown_is_its_own_row_even_when_grouping() {
        let mut agg = Aggregator::new(By::User, Window::default());
        agg.add(&line(1, 0, 0, 50, 50, D1));
        agg.add(&line(1, 7, 100, 10, 10, D1));
        agg.add(&line(1, 8, 100, 20, 20, D1));
        let report = agg.finish();
        assert_eq!(report.rows.len(), 1);
        assert_eq!(report.rows[0].key, RowKey::Group(Some("alice".into())));
        assert_eq!(report.rows[0].processes, 2);
        assert_eq!(report.rows[0].sum.rx_bytes, 30);
        assert_eq!(report.unknown.sum.rx_bytes, 50);
        assert_eq!(report.unknown.comm.as_deref(), Some("<unknown>"));
        assert_eq!(report.total.rx_bytes, 80);
    }

    #[test]
    fn a_line_read_twice_is_summed_once() {
        let mut agg = Aggregator::new(By::Process, Window::default());
        let lines = [line(1, 7, 100, 10, 10, D1), line(2, 7, 100, 5, 15, D1)];
        for l in lines.iter().chain(lines.iter()) {
            agg.add(l);
        }
        let report = agg.finish();
        assert_eq!(report.checks.duplicate, 2);
        assert_eq!(report.total.rx_bytes, 15);
    }

    #[test]
    fn a_restart_continues_totals_without_double_counting() {
        let mut agg = Aggregator::new(By::Process, Window::default());
        agg.add(&line(10, 7, 100, 10, 10, D1));
        agg.add(&line(20, 7, 100, 10, 20, D1));
        // The new daemon's first line: totals continue from the checkpoint (20), plus what
        // the old one counted but never logged (3), plus its own interval (4).
        agg.add(&line(40, 7, 100, 4, 27, D2));
        // Its own earlier-looking `ts` is no duplicate: another writer.
        agg.add(&line(35, 0, 0, 1, 1, D2));
        let report = agg.finish();
        assert_eq!(report.rows[0].sum.rx_bytes, 24);
        assert_eq!(report.checks.gaps, 0);
        assert_eq!(report.checks.duplicate, 0);
        assert_eq!(report.daemon_starts, [D1, D2]);
    }

    #[test]
    fn a_missing_line_shows_as_a_gap() {
        let mut agg = Aggregator::new(By::Process, Window::default());
        agg.add(&line(10, 7, 100, 10, 10, D1));
        agg.add(&line(30, 7, 100, 10, 30, D1));
        assert_eq!(agg.finish().checks.gaps, 1);
    }

    #[test]
    fn the_window_takes_lines_by_their_ts() {
        let window = Window::new(Some(20_000 + 1_704_067_200_000), None).unwrap();
        let mut agg = Aggregator::new(By::Process, window);
        assert_eq!(
            agg.add(&line(10, 7, 100, 10, 10, D1)),
            Outcome::OutsideWindow
        );
        assert_eq!(agg.add(&line(20, 7, 100, 10, 20, D1)), Outcome::Summed);
        let report = agg.finish();
        assert_eq!(report.total.rx_bytes, 10);
        assert_eq!(report.checks.read, 2);
        assert_eq!(report.checks.in_window, 1);
        assert_eq!(report.first_ts.as_deref(), Some("2024-01-01T00:00:20Z"));
    }
}
