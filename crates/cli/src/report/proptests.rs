//! Property: whatever files a log is rotated into (plain or gzip, named in any order), the
//! report's sums equal the sums over the lines within the window — per process and in total,
//! for every grouping — and no line is flagged as duplicate, gap or malformed.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use flate2::{write::GzEncoder, Compression};
use proptest::prelude::*;
use serde_json::json;

use super::line::{Counters, ProcessId};
use super::{build, By, RowKey, Window};

/// 2024-01-01T00:00:00Z.
const EPOCH_MS: i64 = 1_704_067_200_000;

/// One written line: who, when, what the interval held.
#[derive(Debug, Clone)]
struct Written {
    process: Option<ProcessId>,
    ts_ms: i64,
    interval: Counters,
    text: String,
}

/// A batch's process lines: (identity index, rx, tx).
type BatchSpec = Vec<(usize, u64, u64)>;

/// Identities with reused pids: 4 pids, 2 start times each.
fn identity(index: usize) -> ProcessId {
    ProcessId {
        pid: 100 + (index % 4) as u32,
        start_time: 1000 + (index / 4) as u64,
    }
}

/// What the daemon would write for `runs` (each a list of batches), totals continuing across
/// restarts with `lost` bytes counted but never logged before each restart.
fn simulate(runs: &[Vec<BatchSpec>], lost: u64) -> Vec<Vec<Written>> {
    let mut totals: HashMap<Option<ProcessId>, Counters> = HashMap::new();
    let mut batches = Vec::new();
    let mut ts_ms = EPOCH_MS;
    for (run, specs) in runs.iter().enumerate() {
        let daemon_start = super::time::format_timestamp(ts_ms + 1);
        for total in totals.values_mut() {
            total.rx_bytes += lost * run as u64;
        }
        for spec in specs {
            ts_ms += 10_000 + (spec.len() as i64) * 7;
            let mut seen = std::collections::HashSet::new();
            let mut batch = Vec::new();
            let unknown = spec
                .first()
                .map_or((0, 0), |(_, rx, tx)| (*rx / 3, *tx / 5));
            let mut lines = vec![(None, unknown.0, unknown.1)];
            lines.extend(
                spec.iter()
                    .filter(|(i, _, _)| seen.insert(*i))
                    .map(|(i, rx, tx)| (Some(identity(*i)), *rx, *tx)),
            );
            for (process, rx, tx) in lines {
                let interval = Counters {
                    rx_bytes: rx,
                    tx_bytes: tx,
                    rx_packets: rx / 100,
                    tx_packets: tx / 100,
                };
                let total = totals.entry(process).or_default();
                total.add(&interval);
                let text = render(process, ts_ms, &interval, total, &daemon_start);
                batch.push(Written {
                    process,
                    ts_ms,
                    interval,
                    text,
                });
            }
            batches.push(batch);
        }
        ts_ms += 3_000;
    }
    batches
}

fn render(
    process: Option<ProcessId>,
    ts_ms: i64,
    i: &Counters,
    t: &Counters,
    daemon_start: &str,
) -> String {
    json!({
        "v": 1, "ts": super::time::format_timestamp(ts_ms), "interval_s": 10.0,
        "pid": process.map(|p| p.pid), "start_time": process.map(|p| p.start_time),
        "comm": process.map_or("<unknown>".to_string(), |p| format!("p{}", p.pid)),
        "exe": null, "uid": process.map(|p| p.pid % 2),
        "rx_bytes": i.rx_bytes, "tx_bytes": i.tx_bytes,
        "rx_packets": i.rx_packets, "tx_packets": i.tx_packets,
        "rx_bytes_total": t.rx_bytes, "tx_bytes_total": t.tx_bytes,
        "rx_packets_total": t.rx_packets, "tx_packets_total": t.tx_packets,
        "exited": false, "daemon_start": daemon_start,
        "netns": null, "cgroup": null,
        "unit": process.map(|p| format!("u{}.service", p.start_time)),
        "container": null, "user": null,
        "a_field_from_the_future": [1, 2, 3],
    })
    .to_string()
}

/// Writes the batches into files cut at `cuts` (batch indexes), gzipping those `gzip` says,
/// and returns them in the order `order` (sort keys) gives: any order.
fn write_files(
    dir: &std::path::Path,
    batches: &[Vec<Written>],
    cuts: &[usize],
    gzip: &[bool],
    order: &[u32],
) -> Vec<PathBuf> {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (batches.len() + 1)).collect();
    bounds.extend([0, batches.len()]);
    bounds.sort_unstable();
    bounds.dedup();
    let mut files = Vec::new();
    for (n, pair) in bounds.windows(2).enumerate() {
        let text: String = batches[pair[0]..pair[1]]
            .iter()
            .flatten()
            .map(|w| format!("{}\n", w.text))
            .collect();
        let path = dir.join(format!("usage.jsonl.{n}"));
        let bytes = if gzip.get(n).copied().unwrap_or(false) {
            let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap()
        } else {
            text.into_bytes()
        };
        std::fs::write(&path, bytes).unwrap();
        files.push((order.get(n).copied().unwrap_or(0), path));
    }
    files.sort_by_key(|(key, _)| *key);
    files.into_iter().map(|(_, path)| path).collect()
}

fn batch_spec() -> impl Strategy<Value = BatchSpec> {
    prop::collection::vec((0usize..8, 0u64..50_000, 0u64..50_000), 0..6)
}

fn runs() -> impl Strategy<Value = Vec<Vec<BatchSpec>>> {
    prop::collection::vec(prop::collection::vec(batch_spec(), 1..6), 1..4)
}

fn by() -> impl Strategy<Value = By> {
    prop_oneof![
        Just(By::Process),
        Just(By::User),
        Just(By::Unit),
        Just(By::Container)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn report_sums_equal_the_lines_in_the_window(
        runs in runs(),
        lost in 0u64..1000,
        cuts in prop::collection::vec(0usize..40, 0..5),
        gzip in prop::collection::vec(any::<bool>(), 6),
        order in prop::collection::vec(any::<u32>(), 6),
        since in prop::option::of(0i64..200_000),
        length in prop::option::of(1i64..200_000),
        by in by(),
    ) {
        let batches = simulate(&runs, lost);
        let dir = tempfile::tempdir().unwrap();
        let paths = write_files(dir.path(), &batches, &cuts, &gzip, &order);
        let since = since.map(|s| EPOCH_MS + s);
        let until = length.map(|l| since.unwrap_or(EPOCH_MS) + l);
        let window = Window::new(since, until).unwrap();
        let (report, warnings) = build(paths, by, window).unwrap();

        let mut expected = Counters::default();
        let mut per_process: HashMap<Option<ProcessId>, Counters> = HashMap::new();
        let mut in_window = 0;
        for line in batches.iter().flatten().filter(|w| window.contains(w.ts_ms)) {
            expected.add(&line.interval);
            per_process.entry(line.process).or_default().add(&line.interval);
            in_window += 1;
        }
        prop_assert!(warnings.is_empty(), "{warnings:?}");
        prop_assert_eq!(report.total, expected);
        let mut summed = report.unknown.sum;
        report.rows.iter().for_each(|r| summed.add(&r.sum));
        prop_assert_eq!(summed, expected);
        prop_assert_eq!(report.checks.in_window, in_window);
        prop_assert_eq!(report.checks.read, batches.iter().flatten().count() as u64);
        prop_assert_eq!(report.checks.duplicate, 0);
        prop_assert_eq!(report.checks.gaps, 0);
        prop_assert_eq!(report.checks.malformed, 0);
        prop_assert_eq!(
            report.unknown.sum,
            per_process.get(&None).copied().unwrap_or_default()
        );
        if by == By::Process {
            for row in &report.rows {
                let RowKey::Process(id) = row.key else { panic!("{row:?}") };
                prop_assert_eq!(Some(&row.sum), per_process.get(&Some(id)));
            }
        }
    }

    #[test]
    fn the_same_files_twice_count_once(runs in runs(), cuts in prop::collection::vec(0usize..40, 0..3)) {
        let batches = simulate(&runs, 7);
        let dir = tempfile::tempdir().unwrap();
        let paths = write_files(dir.path(), &batches, &cuts, &[true, false], &[]);
        let once = build(paths.clone(), By::Process, Window::default()).unwrap().0;
        let twice = build([paths.clone(), paths].concat(), By::Process, Window::default())
            .unwrap()
            .0;
        prop_assert_eq!(twice.total, once.total);
        prop_assert_eq!(twice.checks.duplicate, once.checks.read);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = super::line::parse(&bytes);
        let mut agg = super::Aggregator::new(By::Process, Window::default());
        let _ = super::files::read_into(&mut std::io::Cursor::new(bytes), &mut agg);
    }
}
