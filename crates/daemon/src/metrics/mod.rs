//! Prometheus exposition (opt-in: `metrics_listen` / `--metrics-listen`): `GET /metrics` on a
//! TCP address, served by [`http`], rendered by [`render`], with bounded cardinality from
//! [`ranking`].
//!
//! Invariants:
//! - Off unless an address is configured; a non-loopback address is accepted with a warning
//!   (the exposition names processes, units, containers and users, and has no access control).
//! - One scrape copies what it exports out of the shared state through the very functions the
//!   `processes` and `stats` queries use ([`queries::process_rows`], [`queries::stats_of`]);
//!   the ledger lock is held only for that copy, never while ranking, encoding or writing,
//!   so a scrape cannot hold up the capture thread for longer than a `processes` query does.
//! - At most `metrics_top` + 1 series per direction in each per-process and per-group family,
//!   whatever the number of processes (see [`ranking`]); exited processes' series retire
//!   when the ledger forgets them (after the retention).
//! - The ranking state (one entry per listed process and group) is behind its own mutex,
//!   which only scrapes take.

pub mod http;
pub mod ranking;
pub mod render;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pidcap_core::Counters;
use pidcap_proto::{self as proto, GroupBy};
use tracing::{info, warn};

use crate::query::access::Viewer;
use crate::query::queries;
use crate::state::DaemonState;
use ranking::{GroupSums, TopN};
use render::{Exposition, Format, GroupFamily, ProcessLabels};

/// A process as the ledger names it: (pid, start time).
type ProcessId = (u32, u64);

/// The per-group families, in the order they are exported.
const GROUPS: [(GroupBy, &str); 3] = [
    (GroupBy::Unit, "unit"),
    (GroupBy::Container, "container"),
    (GroupBy::User, "user"),
];

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics_listen: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the metrics address (port 0 picks a free one: the log says which). Warns when the
/// address is not loopback.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    if !addr.ip().is_loopback() {
        warn!(metrics_listen = %bound, "metrics are served on a non-loopback address: anyone who can reach it sees every process's traffic, names, units, containers and users; prefer 127.0.0.1 and a firewall or a proxy");
    }
    info!(metrics_listen = %bound, "serving Prometheus metrics on /metrics");
    Ok(listener)
}

/// Builds expositions from the shared state; one per daemon.
#[derive(Debug)]
pub struct Exporter {
    shared: Arc<DaemonState>,
    top: usize,
    rankings: Mutex<Rankings>,
}

/// The state that keeps `other` and the group sums from going back between scrapes.
#[derive(Debug, Default)]
struct Rankings {
    processes: TopN<ProcessId>,
    groups: [(GroupSums<ProcessId>, TopN<String>); 3],
}

impl Exporter {
    /// `top`: series per family besides `other`.
    pub fn new(shared: Arc<DaemonState>, top: usize) -> Exporter {
        Exporter {
            shared,
            top,
            rankings: Mutex::default(),
        }
    }

    /// One scrape's text, at `now`.
    pub fn scrape(&self, now: Instant, format: Format) -> Result<String, std::fmt::Error> {
        render::render(&self.exposition(now), format)
    }

    /// What one scrape exports, at `now`.
    pub fn exposition(&self, now: Instant) -> Exposition {
        let (rows, _unknown) = queries::process_rows(&self.shared, Viewer::Full);
        let stats = queries::stats_of(&self.shared, now, proto::QueryServer::default());
        let mut rankings = self.rankings.lock().unwrap_or_else(|e| e.into_inner());
        rankings.exposition(&rows, stats, self.top)
    }
}

fn id(r: &proto::ProcessRow) -> ProcessId {
    (r.pid, r.start_time)
}

/// A row's counters since first seen.
fn totals(r: &proto::ProcessRow) -> Counters {
    Counters {
        rx_bytes: r.usage.rx_bytes_total,
        tx_bytes: r.usage.tx_bytes_total,
        rx_packets: r.usage.rx_packets_total,
        tx_packets: r.usage.tx_packets_total,
    }
}

fn labels(r: &proto::ProcessRow) -> ProcessLabels {
    let key = |by| queries::group_key(r, by).unwrap_or_default();
    ProcessLabels {
        pid: r.pid.to_string(),
        comm: r.comm.clone(),
        unit: key(GroupBy::Unit),
        container: key(GroupBy::Container),
        user: key(GroupBy::User),
    }
}

impl Rankings {
    fn exposition(
        &mut self,
        rows: &[proto::ProcessRow],
        stats: proto::Stats,
        top: usize,
    ) -> Exposition {
        let items = rows.iter().map(|r| (id(r), totals(r))).collect();
        let ranked = self.processes.rank(items, top);
        let by_id: HashMap<ProcessId, &proto::ProcessRow> =
            rows.iter().map(|r| (id(r), r)).collect();
        let processes = ranked
            .top
            .into_iter()
            .filter_map(|(pid, c)| by_id.get(&pid).map(|r| (labels(r), c)))
            .collect();
        let groups = self
            .groups
            .iter_mut()
            .zip(GROUPS)
            .map(|((sums, top_n), (by, label))| {
                let members = rows
                    .iter()
                    .map(|r| (id(r), queries::group_key(r, by), totals(r)));
                let ranked = top_n.rank(sums.update(members), top);
                GroupFamily {
                    label,
                    top: ranked.top,
                    other: ranked.other,
                }
            })
            .collect();
        Exposition {
            stats,
            processes,
            other_processes: ranked.other,
            groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pidcap_core::{
        attribute, NetNsId, OwnerMap, ProcessInfo, ProcessKey, SocketEntry, SocketTable,
        TableParts, Tally, TcpState,
    };
    use pidcap_wire::{FlowKey, IpProto};

    use super::*;

    const NS: NetNsId = NetNsId(4026531840);

    fn info(pid: u32, uid: u32) -> ProcessInfo {
        ProcessInfo {
            key: ProcessKey { pid, start_time: 1 },
            comm: format!("p{pid}"),
            exe: None,
            uid,
            cmdline: Vec::new(),
            placement: Default::default(),
        }
    }

    fn udp(port: u16, inode: u64) -> SocketEntry {
        SocketEntry {
            netns: NS,
            proto: IpProto::Udp,
            local: format!("127.0.0.1:{port}").parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: TcpState::Close,
            inode,
            uid: 0,
        }
    }

    /// Processes 1..=n, each with a UDP socket on port 1000 + pid.
    fn table(n: u32) -> SocketTable {
        let sockets = (1..=n)
            .map(|p| udp(1000 + p as u16, u64::from(p)))
            .collect();
        let owners = OwnerMap {
            holders: (1..=n)
                .map(|p| {
                    (
                        u64::from(p),
                        vec![ProcessKey {
                            pid: p,
                            start_time: 1,
                        }],
                    )
                })
                .collect(),
            processes: (1..=n)
                .map(|p| {
                    (
                        ProcessKey {
                            pid: p,
                            start_time: 1,
                        },
                        info(p, 0),
                    )
                })
                .collect(),
        };
        SocketTable::build(
            1,
            TableParts {
                netns: Some(NS),
                sockets,
                owners: Arc::new(owners),
                ..TableParts::default()
            },
        )
    }

    /// Counts `bytes` received by process `pid` (from a remote address).
    fn receive(shared: &DaemonState, pid: u32, bytes: u32) {
        let table = shared.table();
        let flow = FlowKey {
            proto: IpProto::Udp,
            src: "10.0.0.1:53".parse().unwrap(),
            dst: format!("127.0.0.1:{}", 1000 + pid).parse().unwrap(),
        };
        let mut tally = Tally::default();
        tally.record(&attribute(&table, &flow, true), bytes);
        shared.ledger().merge(&mut tally, &table);
    }

    fn credited_rx(e: &Exposition) -> u64 {
        e.processes.iter().map(|(_, c)| c.rx_bytes).sum::<u64>() + e.other_processes.rx_bytes
    }

    #[test]
    fn top_n_plus_other_equal_what_the_processes_query_and_stats_report() {
        let shared = DaemonState::new(table(10), Instant::now());
        for pid in 1..=10 {
            receive(&shared, pid, pid * 100);
        }
        let exporter = Exporter::new(shared.clone(), 3);
        let e = exporter.exposition(Instant::now());
        let pids: Vec<&str> = e.processes.iter().map(|(l, _)| l.pid.as_str()).collect();
        assert_eq!(pids, ["10", "9", "8"]);
        assert_eq!(credited_rx(&e), 5_500);
        assert_eq!(credited_rx(&e), e.stats.credited_rx_bytes);
        let user = &e.groups[2];
        assert_eq!(user.label, "user");
        let by_user: u64 =
            user.top.iter().map(|(_, c)| c.rx_bytes).sum::<u64>() + user.other.rx_bytes;
        assert_eq!(by_user, 5_500);
        let (rows, _) = queries::process_rows(&shared, Viewer::Full);
        let row = rows.iter().find(|r| r.pid == 10).unwrap();
        assert_eq!(e.processes[0].1.rx_bytes, row.usage.rx_bytes_total);
    }

    #[test]
    fn exited_processes_retire_when_the_ledger_forgets_them() {
        let start = Instant::now();
        let shared = DaemonState::new(table(3), start);
        for pid in 1..=3 {
            receive(&shared, pid, pid * 100);
        }
        let exporter = Exporter::new(shared.clone(), 5);
        assert_eq!(exporter.exposition(start).processes.len(), 3);
        // Everything is logged, every process exits, the retention passes.
        let batch = shared.ledger().log_batch(start);
        shared.ledger().commit_log(&batch, start);
        for pid in 1..=3 {
            shared
                .ledger()
                .mark_exited(&ProcessKey { pid, start_time: 1 }, start);
        }
        let later = start + Duration::from_secs(601);
        shared.ledger().expire(later, Duration::from_secs(600));
        let e = exporter.exposition(later);
        assert!(e.processes.is_empty(), "{:?}", e.processes);
        assert!(e.groups.iter().all(|g| g.top.is_empty()), "{:?}", e.groups);
        let text = render::render(&e, Format::Text).unwrap();
        assert!(!text.contains("pid=\"1\""), "{text}");
    }
}
