//! The comparison: truth per workload pid (from reference captures and the endpoints the
//! workload reported) against the daemon's per-process totals, `unknown` and `stats`.
//!
//! Definitions (per direction, then summed): for each pid, `right` is min(daemon, truth) and
//! `wrong` is the daemon's excess over the truth (a pid outside the workload has truth 0, so
//! all its credit is wrong). `unowned` is captured traffic whose local end has no process
//! (an echo request answered by the kernel): the daemon is expected to put it in `unknown`,
//! so `unknown` reports only the daemon's unknown bytes beyond it.
//!
//! Invariants: pure arithmetic over snapshots except [`drain`] and [`DaemonView::read`],
//! which query the daemon (bounded by the harness's query timeout).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{addr_matches, Daemon, Truth};

/// At least this fraction of the truth must be credited to the right process.
pub const TARGET_RIGHT: f64 = 0.99;
/// At most this fraction of the truth may be credited to a wrong process.
pub const TARGET_WRONG: f64 = 0.001;

/// Bytes received and sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PidBytes {
    pub rx: u64,
    pub tx: u64,
}

impl PidBytes {
    pub fn total(&self) -> u64 {
        self.rx + self.tx
    }

    fn add(&mut self, other: PidBytes) {
        self.rx += other.rx;
        self.tx += other.tx;
    }

    fn min(self, other: PidBytes) -> PidBytes {
        PidBytes {
            rx: self.rx.min(other.rx),
            tx: self.tx.min(other.tx),
        }
    }

    fn excess_over(self, other: PidBytes) -> PidBytes {
        PidBytes {
            rx: self.rx.saturating_sub(other.rx),
            tx: self.tx.saturating_sub(other.tx),
        }
    }
}

/// Which local endpoints (and which separately measured bytes) belong to which workload pid.
#[derive(Debug, Default, Clone)]
pub struct Ownership {
    exact: HashMap<(u8, SocketAddr), u32>,
    wildcard: Vec<(u8, SocketAddr, u32)>,
    measured: BTreeMap<u32, PidBytes>,
    /// Endpoints two pids both reported (their bytes go to the first; noted in the report),
    /// unless [`Ownership::add_connection`] told their TCP connections apart.
    collisions: Vec<(u8, SocketAddr, String)>,
    /// TCP connections per (local, remote) in the order they were reported: a 4-tuple that
    /// passed from process to process (ports reused on one address) is split by connection
    /// (the reference capture counts its openings), the n-th to the n-th reporter.
    connections: HashMap<(u8, SocketAddr, SocketAddr), Vec<(u64, u32)>>,
}

impl Ownership {
    /// `pid` owns the socket bound to `local` (a wildcard IP owns that port on every local
    /// address, IPv4 included for `::`).
    pub fn add(&mut self, pid: u32, proto: u8, local: SocketAddr) {
        self.measured.entry(pid).or_default();
        if local.ip().is_unspecified() {
            self.wildcard.push((proto, local, pid));
            return;
        }
        if let Some(&other) = self.exact.get(&(proto, local)) {
            if other != pid {
                let note = format!("{local} reported by pids {other} and {pid}");
                self.collisions.push((proto, local, note));
            }
            return;
        }
        self.exact.insert((proto, local), pid);
    }

    /// `pid` is part of the workload and owns `bytes` measured apart from the endpoints
    /// (ICMP echo by identifier), or nothing at all (a peer in another namespace).
    pub fn add_measured(&mut self, pid: u32, bytes: PidBytes) {
        self.measured.entry(pid).or_default().add(bytes);
    }

    /// `pid` had the TCP connection `local` → `remote` that ended (was reported) at `at_us`.
    pub fn add_connection(&mut self, pid: u32, local: SocketAddr, remote: SocketAddr, at_us: u64) {
        self.add(pid, 6, local);
        let reporters = self.connections.entry((6, local, remote)).or_default();
        reporters.push((at_us, pid));
        reporters.sort_unstable();
    }

    /// The notes for endpoints two pids reported whose bytes could not be told apart (those
    /// of TCP connections with several reporters are, by connection order: counted in one
    /// line).
    pub fn collision_notes(&self) -> Vec<String> {
        let split = |c: &&(u8, SocketAddr, String)| {
            self.connections
                .iter()
                .any(|(&(p, l, _), r)| p == c.0 && l == c.1 && r.len() > 1)
        };
        let (resolved, open): (Vec<_>, Vec<_>) = self.collisions.iter().partition(split);
        let mut notes: Vec<String> = open.into_iter().map(|(_, _, n)| n.clone()).collect();
        if !resolved.is_empty() {
            notes.push(format!(
                "{} endpoints reused by another process, told apart by connection",
                resolved.len()
            ));
        }
        notes
    }

    /// The reporters of the connections `local` → `remote`, in order, when more than one
    /// process had one.
    fn reporters(&self, proto: u8, local: SocketAddr, remote: SocketAddr) -> Option<&[(u64, u32)]> {
        self.connections
            .get(&(proto, local, remote))
            .filter(|r| r.iter().any(|&(_, pid)| pid != r[0].1))
            .map(Vec::as_slice)
    }

    /// Credits one direction of a flow: by connection when its 4-tuple changed hands,
    /// else to the endpoint's owner. `local`/`remote` are the flow's ends from `pid`'s side.
    fn credit(
        &self,
        truth: &Truth,
        flow: (u8, SocketAddr, SocketAddr),
        ends: (SocketAddr, SocketAddr),
        tally: u64,
        mut add: impl FnMut(u32, u64),
    ) {
        let (proto, local, remote) = (flow.0, ends.0, ends.1);
        let by_connection = self
            .reporters(proto, local, remote)
            .zip(truth.connections.get(&flow));
        match by_connection {
            Some((reporters, connections)) => {
                for (&n, t) in connections {
                    let index = (n.max(1) as usize - 1).min(reporters.len() - 1);
                    add(reporters[index].1, t.bytes);
                }
            }
            None => {
                if let Some(pid) = self.owner(proto, local) {
                    add(pid, tally);
                }
            }
        }
    }

    fn owner(&self, proto: u8, addr: SocketAddr) -> Option<u32> {
        if let Some(&pid) = self.exact.get(&(proto, addr)) {
            return Some(pid);
        }
        self.wildcard
            .iter()
            .find(|(p, local, _)| *p == proto && addr_matches(*local, addr))
            .map(|&(_, _, pid)| pid)
    }

    /// Splits the captured `truth` into bytes per workload pid and bytes with no owner.
    /// `is_local` says whether an address is this host's (every address on loopback).
    pub fn split(&self, truth: &Truth, is_local: impl Fn(IpAddr) -> bool) -> TruthSplit {
        let mut per_pid = self.measured.clone();
        let mut local = PidBytes::default();
        for (&(proto, src, dst), tally) in &truth.flows {
            if is_local(src.ip()) {
                local.tx += tally.bytes;
            }
            if is_local(dst.ip()) {
                local.rx += tally.bytes;
            }
            let flow = (proto, src, dst);
            self.credit(truth, flow, (src, dst), tally.bytes, |pid, bytes| {
                per_pid.entry(pid).or_default().tx += bytes;
            });
            self.credit(truth, flow, (dst, src), tally.bytes, |pid, bytes| {
                per_pid.entry(pid).or_default().rx += bytes;
            });
        }
        let owned = per_pid.values().fold(PidBytes::default(), |mut sum, b| {
            sum.add(*b);
            sum
        });
        TruthSplit {
            per_pid,
            captured: local,
            unowned: local.excess_over(owned),
        }
    }
}

/// The truth of one scenario.
#[derive(Debug, Clone, Default)]
pub struct TruthSplit {
    pub per_pid: BTreeMap<u32, PidBytes>,
    /// Everything the reference capture saw, per direction (local source: tx; local
    /// destination: rx).
    pub captured: PidBytes,
    pub unowned: PidBytes,
}

/// What the daemon says, after the traffic has drained.
#[derive(Debug, Clone)]
pub struct DaemonView {
    pub per_pid: BTreeMap<u32, (PidBytes, String)>,
    pub unknown: PidBytes,
    pub stats: Value,
}

impl DaemonView {
    /// Reads `processes` (every row, exited processes included) and `stats`.
    pub fn read(daemon: &Daemon) -> DaemonView {
        let reply = daemon.query(&json!({"cmd": "processes"}));
        let mut per_pid = BTreeMap::new();
        for row in reply["processes"].as_array().into_iter().flatten() {
            let Some(pid) = row["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else {
                continue;
            };
            let comm = row["comm"].as_str().unwrap_or("?").to_owned();
            per_pid.insert(pid, (totals(row), comm));
        }
        DaemonView {
            per_pid,
            unknown: totals(&reply["unknown"]),
            stats: daemon.stats(),
        }
    }
}

fn totals(row: &Value) -> PidBytes {
    PidBytes {
        rx: row["rx_bytes_total"].as_u64().unwrap_or(0),
        tx: row["tx_bytes_total"].as_u64().unwrap_or(0),
    }
}

/// The counters whose change means the daemon is still working through packets.
fn progress(stats: &Value) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = stats
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.ends_with("_bytes") || k.ends_with("_packets") || k.contains("pending"))
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect();
    out.sort();
    out
}

/// Waits until the daemon's byte, packet and pending counters have not changed for
/// `quiet`, at most `bound`; returns whether they settled.
pub fn drain(daemon: &Daemon, quiet: Duration, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    let mut last = progress(&daemon.stats());
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = progress(&daemon.stats());
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return true;
        }
    }
    false
}

/// Checks credited + unknown (+ pending, if the daemon reports it) == captured, per
/// direction, for bytes and packets; `Err` describes every mismatch.
pub fn conservation(stats: &Value) -> Result<(), String> {
    let field = |name: String| stats[&name].as_u64();
    let mut broken = Vec::new();
    for dir in ["rx", "tx"] {
        for unit in ["bytes", "packets"] {
            let total = field(format!("{dir}_{unit}"));
            let credited = field(format!("credited_{dir}_{unit}"));
            let unknown = field(format!("unknown_{dir}_{unit}"));
            let pending = field(format!("pending_{dir}_{unit}")).unwrap_or(0);
            match (total, credited, unknown) {
                (Some(t), Some(c), Some(u)) if c + u + pending == t => {}
                (Some(t), Some(c), Some(u)) => broken.push(format!(
                    "{dir} {unit}: credited {c} + unknown {u} + pending {pending} != {t}"
                )),
                _ => broken.push(format!("{dir} {unit}: counters missing from stats")),
            }
        }
    }
    match broken.is_empty() {
        true => Ok(()),
        false => Err(broken.join("; ")),
    }
}

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ran,
    Skipped(String),
    Failed(String),
}

/// One scenario's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: String,
    pub status: Status,
    /// Bytes (rx + tx) that belong to a workload process.
    pub truth: u64,
    pub right: u64,
    pub wrong: u64,
    /// The daemon's unknown bytes beyond the unowned ones.
    pub unknown: u64,
    /// Captured bytes with no owning process (expected in `unknown`).
    pub unowned: u64,
    pub conservation: Result<(), String>,
    pub notes: Vec<String>,
    /// Workload processes that moved bytes, and how many of them got all their bytes.
    pub processes: usize,
    pub fully_credited: usize,
}

impl Outcome {
    /// An outcome for a scenario that did not run.
    pub fn not_run(scenario: &str, status: Status) -> Outcome {
        Outcome {
            scenario: scenario.to_owned(),
            status,
            truth: 0,
            right: 0,
            wrong: 0,
            unknown: 0,
            unowned: 0,
            conservation: Ok(()),
            notes: Vec::new(),
            processes: 0,
            fully_credited: 0,
        }
    }

    /// Compares `daemon` with `truth`.
    pub fn compare(scenario: &str, truth: &TruthSplit, daemon: &DaemonView) -> Outcome {
        let mut outcome = Outcome::not_run(scenario, Status::Ran);
        let mut pids: Vec<u32> = truth.per_pid.keys().copied().collect();
        pids.extend(daemon.per_pid.keys().copied());
        pids.sort_unstable();
        pids.dedup();
        let mut short = Vec::new();
        for pid in pids {
            let want = truth.per_pid.get(&pid).copied().unwrap_or_default();
            let (got, comm) = daemon.per_pid.get(&pid).cloned().unwrap_or_default();
            outcome.truth += want.total();
            outcome.right += got.min(want).total();
            let excess = got.excess_over(want).total();
            outcome.wrong += excess;
            if excess > 0 && want.total() == 0 {
                outcome.notes.push(format!(
                    "pid {pid} ({comm}) is not in the workload but got {excess} B"
                ));
            }
            if want.total() > 0 {
                outcome.processes += 1;
                if got.min(want).total() == want.total() {
                    outcome.fully_credited += 1;
                }
            }
            if got.total() < want.total() {
                short.push((want.total() - got.total(), pid, want.total()));
            }
        }
        let unknown = daemon.unknown.total();
        outcome.unowned = truth.unowned.total();
        outcome.unknown = unknown.saturating_sub(outcome.unowned);
        outcome.conservation = conservation(&daemon.stats);
        outcome.notes.extend(shortfall_notes(&mut short));
        outcome.notes.extend(capture_notes(truth, daemon));
        outcome
    }

    fn fraction(&self, bytes: u64) -> f64 {
        match self.truth {
            0 => 0.0,
            t => bytes as f64 / t as f64,
        }
    }

    pub fn right_fraction(&self) -> f64 {
        self.fraction(self.right)
    }

    pub fn wrong_fraction(&self) -> f64 {
        self.fraction(self.wrong)
    }

    pub fn unknown_fraction(&self) -> f64 {
        self.fraction(self.unknown)
    }

    /// Ran, moved bytes, ≥ 99 % right and ≤ 0.1 % wrong.
    pub fn meets_targets(&self) -> bool {
        self.status == Status::Ran
            && self.truth > 0
            && self.right_fraction() >= TARGET_RIGHT
            && self.wrong_fraction() <= TARGET_WRONG
    }

    /// A one-line summary for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "{}: truth {} B, right {:.3}%, wrong {:.3}%, unknown {:.3}% (unowned {} B), \
             conservation {}; {}",
            self.scenario,
            self.truth,
            self.right_fraction() * 100.0,
            self.wrong_fraction() * 100.0,
            self.unknown_fraction() * 100.0,
            self.unowned,
            match &self.conservation {
                Ok(()) => "exact".to_owned(),
                Err(e) => e.clone(),
            },
            self.notes.join("; ")
        )
    }
}

/// The processes that got less than their truth: how many, and the worst few.
fn shortfall_notes(short: &mut [(u64, u32, u64)]) -> Vec<String> {
    if short.is_empty() {
        return Vec::new();
    }
    short.sort_unstable_by(|a, b| b.cmp(a));
    let nothing = short.iter().filter(|(miss, _, want)| miss == want).count();
    let worst: Vec<String> = short
        .iter()
        .take(3)
        .map(|(miss, pid, want)| format!("pid {pid} {miss}/{want} B"))
        .collect();
    vec![format!(
        "{} process(es) short of their truth ({nothing} got nothing); worst: {}",
        short.len(),
        worst.join(", ")
    )]
}

/// The daemon's capture against the reference capture, drops, and any counters the daemon
/// reports beyond the basic ones (reasons for unknown, pending, late credit…).
fn capture_notes(truth: &TruthSplit, daemon: &DaemonView) -> Vec<String> {
    let stats = &daemon.stats;
    let mut notes = Vec::new();
    let got = PidBytes {
        rx: stats["rx_bytes"].as_u64().unwrap_or(0),
        tx: stats["tx_bytes"].as_u64().unwrap_or(0),
    };
    if got != truth.captured {
        notes.push(format!(
            "daemon captured rx {} / tx {} B, reference rx {} / tx {} B",
            got.rx, got.tx, truth.captured.rx, truth.captured.tx
        ));
    }
    for key in [
        "pcap_dropped",
        "pcap_if_dropped",
        "malformed_packets",
        "foreign_bytes",
    ] {
        match stats[key].as_u64() {
            Some(0) | None => {}
            Some(n) => notes.push(format!("{key} {n}")),
        }
    }
    notes.extend(extra_counters(stats));
    notes
}

const BASIC_STATS: &[&str] = &[
    "rx_packets",
    "rx_bytes",
    "tx_packets",
    "tx_bytes",
    "foreign_packets",
    "foreign_bytes",
    "credited_rx_bytes",
    "credited_tx_bytes",
    "credited_rx_packets",
    "credited_tx_packets",
    "unknown_rx_bytes",
    "unknown_tx_bytes",
    "unknown_rx_packets",
    "unknown_tx_packets",
    "non_ip_packets",
    "malformed_packets",
    "pcap_received",
    "pcap_dropped",
    "pcap_if_dropped",
    "sockets_known",
    "processes_known",
    "refreshes",
    "last_refresh_ms",
    "uptime_s",
    "interface",
    "link_type",
];

/// Non-zero stats the base protocol does not define, flattened one level (`a.b N`).
fn extra_counters(stats: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in stats.as_object().into_iter().flatten() {
        if BASIC_STATS.contains(&key.as_str()) {
            continue;
        }
        match value {
            Value::Object(inner) => {
                for (k, v) in inner {
                    if v.as_f64().is_some_and(|n| n != 0.0) {
                        out.push(format!("{key}.{k} {v}"));
                    }
                }
            }
            v if v.as_f64().is_some_and(|n| n != 0.0) => out.push(format!("{key} {v}")),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tally;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn truth(flows: &[(u8, &str, &str, u64)]) -> Truth {
        let mut truth = Truth::default();
        for &(proto, src, dst, bytes) in flows {
            truth
                .flows
                .insert((proto, a(src), a(dst)), Tally { packets: 1, bytes });
        }
        truth
    }

    fn view(per_pid: &[(u32, u64, u64)], unknown: PidBytes) -> DaemonView {
        DaemonView {
            per_pid: per_pid
                .iter()
                .map(|&(pid, rx, tx)| (pid, (PidBytes { rx, tx }, "p".to_owned())))
                .collect(),
            unknown,
            stats: json!({}),
        }
    }

    #[test]
    fn split_credits_both_ends_and_wildcards() {
        let mut own = Ownership::default();
        own.add(1, 6, a("127.0.0.1:80"));
        own.add(2, 6, a("127.0.0.1:5000"));
        own.add(3, 17, a("[::]:53"));
        let t = truth(&[
            (6, "127.0.0.1:5000", "127.0.0.1:80", 100),
            (6, "127.0.0.1:80", "127.0.0.1:5000", 40),
            (17, "127.0.0.1:9", "127.0.0.1:53", 7),
        ]);
        let split = own.split(&t, |_| true);
        assert_eq!(split.per_pid[&1], PidBytes { rx: 100, tx: 40 });
        assert_eq!(split.per_pid[&2], PidBytes { rx: 40, tx: 100 });
        assert_eq!(split.per_pid[&3], PidBytes { rx: 7, tx: 0 });
        assert_eq!(split.unowned, PidBytes { rx: 0, tx: 7 });
    }

    #[test]
    fn compare_separates_right_wrong_and_unknown() {
        let mut own = Ownership::default();
        own.add(1, 6, a("127.0.0.1:80"));
        own.add(2, 6, a("127.0.0.1:5000"));
        let t = truth(&[(6, "127.0.0.1:5000", "127.0.0.1:80", 100)]);
        let split = own.split(&t, |_| true);
        // pid 1 got its rx; pid 2's tx went half to pid 9, half to unknown.
        let d = view(&[(1, 100, 0), (9, 0, 50)], PidBytes { rx: 0, tx: 50 });
        let o = Outcome::compare("s", &split, &d);
        assert_eq!((o.truth, o.right, o.wrong, o.unknown), (200, 100, 50, 50));
        assert!(!o.meets_targets());
        assert!(o.notes.iter().any(|n| n.contains("pid 9")));
    }

    #[test]
    fn conservation_counts_pending_when_present() {
        let stats = json!({"rx_bytes": 10, "credited_rx_bytes": 6, "unknown_rx_bytes": 1,
            "pending_rx_bytes": 3, "rx_packets": 1, "credited_rx_packets": 1,
            "unknown_rx_packets": 0, "tx_bytes": 0, "credited_tx_bytes": 0,
            "unknown_tx_bytes": 0, "tx_packets": 0, "credited_tx_packets": 0,
            "unknown_tx_packets": 0});
        assert_eq!(conservation(&stats), Ok(()));
        let broken = json!({"rx_bytes": 10});
        assert!(conservation(&broken).is_err());
    }

    #[test]
    fn collisions_are_noted() {
        let mut own = Ownership::default();
        own.add(1, 6, a("127.0.0.1:80"));
        own.add(2, 6, a("127.0.0.1:80"));
        assert_eq!(own.collision_notes().len(), 1);
    }

    #[test]
    fn a_four_tuple_that_changed_hands_is_split_by_connection_in_report_order() {
        let (client, server) = (a("127.0.0.1:40000"), a("127.0.0.1:80"));
        let mut own = Ownership::default();
        own.add(9, 6, server);
        // Reported out of order: pid 2's connection ended after pid 1's.
        own.add_connection(2, client, server, 2_000);
        own.add_connection(1, client, server, 1_000);
        let tally = |bytes| crate::refcap::Tally { packets: 1, bytes };
        let mut truth = Truth::default();
        truth.flows.insert((6, client, server), tally(300));
        truth.flows.insert((6, server, client), tally(30));
        truth.connections.insert(
            (6, client, server),
            BTreeMap::from([(1, tally(100)), (2, tally(200))]),
        );
        truth.connections.insert(
            (6, server, client),
            BTreeMap::from([(1, tally(10)), (2, tally(20))]),
        );
        let split = own.split(&truth, |_| true);
        assert_eq!(split.per_pid[&1], PidBytes { tx: 100, rx: 10 });
        assert_eq!(split.per_pid[&2], PidBytes { tx: 200, rx: 20 });
        assert_eq!(split.per_pid[&9], PidBytes { tx: 30, rx: 300 });
        assert_eq!(
            own.collision_notes(),
            ["1 endpoints reused by another process, told apart by connection"]
        );
    }
}
