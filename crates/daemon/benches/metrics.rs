//! One Prometheus scrape of 1,000 processes with traffic, in memory (no socket, no HTTP).
//!
//! Run: `cargo bench -p pidcapd --bench metrics`. `scrape/*` is a whole scrape (copy out of
//! the ledger, rank, render) in each format at `metrics_top` 100 and 1,000, on one exporter
//! scraped again and again (its ranking state in the steady state Prometheus keeps it in);
//! `ledger_copy/process_rows` is the part done under the ledger lock, so the longest a scrape
//! holds up the capture thread; `processes_query` is the JSON `processes` answer of the same
//! data, the reference to compare a scrape with.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pidcap_core::{
    attribute, NetNsId, OwnerMap, Placement, ProcessInfo, ProcessKey, SocketEntry, SocketTable,
    TableParts, Tally, TcpState,
};
use pidcap_wire::{FlowKey, IpProto};
use pidcapd::metrics::render::Format;
use pidcapd::metrics::Exporter;
use pidcapd::query::access::Viewer;
use pidcapd::query::queries;
use pidcapd::state::DaemonState;

const PROCESSES: u32 = 1_000;
const NS: NetNsId = NetNsId(4026531840);
const HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 199, 0, 1));

fn key(pid: u32) -> ProcessKey {
    ProcessKey { pid, start_time: 1 }
}

/// Process `pid`: one of 50 units and 20 users, as on a busy host.
fn info(pid: u32) -> ProcessInfo {
    ProcessInfo {
        key: key(pid),
        comm: format!("worker-{pid}"),
        exe: None,
        uid: 1000 + pid % 20,
        cmdline: Vec::new(),
        placement: Placement {
            netns: Some(NS),
            cgroup: Some(format!("/system.slice/service-{}.service", pid % 50)),
        },
    }
}

fn port(pid: u32) -> u16 {
    40_000 + pid as u16
}

/// Processes 1..=PROCESSES, each with one UDP socket on port 40000 + pid.
fn table() -> SocketTable {
    let sockets = (1..=PROCESSES)
        .map(|p| SocketEntry {
            netns: NS,
            proto: IpProto::Udp,
            local: SocketAddr::new(HOST, port(p)),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: TcpState::Close,
            inode: u64::from(p),
            uid: 1000 + p % 20,
        })
        .collect();
    let owners = OwnerMap {
        holders: (1..=PROCESSES)
            .map(|p| (u64::from(p), vec![key(p)]))
            .collect(),
        processes: (1..=PROCESSES).map(|p| (key(p), info(p))).collect(),
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

/// Every process has received traffic (different amounts, so the ranking has work to do).
fn seeded() -> Arc<DaemonState> {
    let shared = DaemonState::new(table(), Instant::now());
    let table = shared.table();
    let mut tally = Tally::default();
    for pid in 1..=PROCESSES {
        let flow = FlowKey {
            proto: IpProto::Udp,
            src: "10.199.0.2:53".parse().unwrap(),
            dst: SocketAddr::new(HOST, port(pid)),
        };
        tally.record(&attribute(&table, &flow, true), 100 + pid * 7 % 1_000);
    }
    shared.ledger().merge(&mut tally, &table);
    shared
}

fn bench(c: &mut Criterion) {
    let shared = seeded();
    let (rows, _) = queries::process_rows(&shared, Viewer::Full);
    assert_eq!(rows.len(), PROCESSES as usize, "every process has traffic");

    let mut group = c.benchmark_group("scrape");
    for top in [100, 1_000] {
        let exporter = Exporter::new(shared.clone(), top);
        for (name, format) in [("openmetrics", Format::OpenMetrics), ("text", Format::Text)] {
            let bytes = exporter.scrape(Instant::now(), format).unwrap().len();
            eprintln!("scrape/{name}/top{top}: {bytes} bytes");
            group.bench_function(format!("{name}/top{top}"), |b| {
                b.iter(|| black_box(exporter.scrape(Instant::now(), format).unwrap()))
            });
        }
    }
    group.finish();

    // Only the copy is timed: the rows are dropped after the lock is released, and here
    // too, before the next copy (so the allocator reuses their memory, as in the daemon).
    c.bench_function("ledger_copy/process_rows", |b| {
        b.iter_custom(|iters| {
            let mut held = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let rows = black_box(queries::process_rows(&shared, Viewer::Full));
                held += start.elapsed();
                drop(rows);
            }
            held
        })
    });
    c.bench_function("processes_query", |b| {
        b.iter(|| black_box(queries::processes(&shared, Viewer::Full).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
