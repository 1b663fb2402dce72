//! Comparisons of the daemon's counters with the reference capture's truth.
//!
//! Invariants: byte counts must be within [`TOLERANCE_PERCENT`] of the truth and non-zero;
//! the daemon is polled (bounded by [`SETTLE`]) because it processes packets asynchronously,
//! and the failure message shows expected and got for every endpoint.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::{usage_log, wait_until, within_percent, Counters, Daemon, RefCapture, Truth};

/// How far the daemon's bytes may be from the truth, in percent.
pub const TOLERANCE_PERCENT: f64 = 2.0;
/// How long the daemon may take to catch up with traffic that has ended.
pub const SETTLE: Duration = Duration::from_secs(10);

/// IP protocol numbers used by the tests.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// One process's socket whose traffic is checked.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub name: &'static str,
    pub pid: u32,
    pub proto: u8,
    /// The socket's local address (wildcard IPs match any address on that port).
    pub local: SocketAddr,
}

/// What the truth says `endpoint` sent and received.
pub fn expected(truth: &Truth, endpoint: &Endpoint) -> Counters {
    let rx = truth.rx_of(endpoint.proto, endpoint.local);
    let tx = truth.tx_of(endpoint.proto, endpoint.local);
    Counters {
        rx_bytes: rx.bytes,
        tx_bytes: tx.bytes,
        rx_packets: rx.packets,
        tx_packets: tx.packets,
    }
}

fn close_enough(got: &Counters, want: &Counters) -> bool {
    within_percent(got.rx_bytes, want.rx_bytes, TOLERANCE_PERCENT)
        && within_percent(got.tx_bytes, want.tx_bytes, TOLERANCE_PERCENT)
        && got.rx_bytes > 0
        && got.tx_bytes > 0
}

fn report(rows: &[(Endpoint, Counters, Counters)]) -> String {
    let mut out = String::new();
    for (e, want, got) in rows {
        let _ = writeln!(
            out,
            "  {} pid {} {} {}: expected rx {} B / tx {} B ({} / {} pkts), daemon rx {} B / \
             tx {} B ({} / {} pkts)",
            e.name,
            e.pid,
            e.proto,
            e.local,
            want.rx_bytes,
            want.tx_bytes,
            want.rx_packets,
            want.tx_packets,
            got.rx_bytes,
            got.tx_bytes,
            got.rx_packets,
            got.tx_packets
        );
    }
    out
}

/// Waits until the daemon's `processes` totals of every endpoint's pid match the live
/// reference capture within tolerance; panics with a table otherwise.
pub fn assert_totals_match(daemon: &Daemon, cap: &RefCapture, endpoints: &[Endpoint]) {
    let mut rows = Vec::new();
    let matched = wait_until(SETTLE, || {
        let truth = cap.snapshot();
        rows = endpoints
            .iter()
            .map(|e| (*e, expected(&truth, e), daemon.totals(e.pid)))
            .collect();
        rows.iter().all(|(_, want, got)| close_enough(got, want))
    });
    assert!(
        matched,
        "daemon totals do not match the reference capture within {TOLERANCE_PERCENT}%:\n{}\
         stats: {}",
        report(&rows),
        daemon.stats()
    );
}

/// The usage log's per-pid sums of interval counters match `truth`; and for each endpoint
/// the interval counters add up to the last line's `*_total` (nothing lost or doubled).
pub fn assert_log_matches(lines: &[Value], truth: &Truth, endpoints: &[Endpoint]) {
    let sums = usage_log::sum_by_pid(lines);
    let rows: Vec<_> = endpoints
        .iter()
        .map(|e| {
            let got = sums
                .get(&Some(u64::from(e.pid)))
                .copied()
                .unwrap_or_default();
            (*e, expected(truth, e), got)
        })
        .collect();
    assert!(
        rows.iter().all(|(_, want, got)| close_enough(got, want)),
        "usage log sums do not match the reference capture within {TOLERANCE_PERCENT}%:\n{}",
        report(&rows)
    );
    for e in endpoints {
        assert_intervals_add_up(lines, e.pid, &sums[&Some(u64::from(e.pid))]);
    }
}

fn assert_intervals_add_up(lines: &[Value], pid: u32, sum: &Counters) {
    let last = lines
        .iter()
        .rev()
        .find(|l| l["pid"].as_u64() == Some(u64::from(pid)))
        .expect("a line for the pid");
    assert_eq!(
        *sum,
        Counters::from_json(last, "_total"),
        "pid {pid}: the log's interval counters do not add up to its last totals: {last}"
    );
}

/// Per direction, credited + unknown == captured, exactly (`stats`).
pub fn assert_conservation(stats: &Value) {
    for dir in ["rx", "tx"] {
        for unit in ["bytes", "packets"] {
            let field = |prefix: &str| {
                let name = format!("{prefix}{dir}_{unit}");
                stats[&name]
                    .as_u64()
                    .unwrap_or_else(|| panic!("stats.{name} missing: {stats}"))
            };
            let (credited, unknown, total) = (field("credited_"), field("unknown_"), field(""));
            assert_eq!(
                credited + unknown,
                total,
                "conservation broken for {dir} {unit}: credited {credited} + unknown \
                 {unknown} != captured {total}; stats: {stats}"
            );
        }
    }
}
