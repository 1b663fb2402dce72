//! The packet path on in-memory frames: parse → cached attribution → tally, per packet.
//!
//! Run: `cargo bench -p pidcap-core --bench packet_path`. The `parse_only` group is the floor
//! (what any tool must pay to read headers); `parse_attribute_count` is pidcap's whole
//! per-packet cost on a cache hit; `attribute_uncached` is a miss-free table lookup without the
//! cache. Compare them as ratios from the same run.
// Tests pick their starting instant from the clock; the code under test never reads it.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pidcap_core::{
    attribute, AttributionCache, Ledger, NetNsId, ProcessInfo, ProcessKey, SocketEntry,
    SocketTable, TableParts, Tally, TcpState,
};
use pidcap_wire::{parse, IpProto, LinkType};

const FLOWS: u16 = 1024;
const SOCKETS_PER_PROCESS: usize = 20;

/// An Ethernet + IPv4 + TCP frame (54 bytes) from 127.0.0.1:`sport` to 127.0.0.2:80.
fn frame(sport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]); // EtherType IPv4
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]); // IPv4, total length 40, TCP
    f.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 2]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&[0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]); // TCP header length 20, ACK
    f
}

/// Both ends of every flow have a connected socket held by one of FLOWS / 20 processes.
fn table() -> SocketTable {
    let mut parts = TableParts {
        netns: Some(NetNsId(1)),
        ..TableParts::default()
    };
    let client = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let server = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for i in 0..FLOWS {
        let (c, s) = (
            SocketAddr::new(client, 10_000 + i),
            SocketAddr::new(server, 80),
        );
        for (inode, local, remote) in [(u64::from(i) * 2 + 1, c, s), (u64::from(i) * 2 + 2, s, c)] {
            parts.sockets.push(SocketEntry {
                netns: NetNsId(1),
                proto: IpProto::Tcp,
                local,
                remote,
                state: TcpState::Established,
                inode,
                uid: 0,
            });
            let key = ProcessKey {
                pid: 1000 + (inode as usize / SOCKETS_PER_PROCESS) as u32,
                start_time: 1,
            };
            let owners = std::sync::Arc::make_mut(&mut parts.owners);
            owners.holders.insert(inode, vec![key]);
            owners.processes.entry(key).or_insert_with(|| ProcessInfo {
                key,
                comm: "bench".into(),
                exe: None,
                uid: 0,
                cmdline: Vec::new(),
                placement: Default::default(),
            });
        }
    }
    SocketTable::build(1, parts)
}

fn bench(c: &mut Criterion) {
    let frames: Vec<Vec<u8>> = (0..FLOWS).map(|i| frame(10_000 + i)).collect();
    let table = table();
    let cache = AttributionCache::new(65_536);
    let mut tally = Tally::default();
    let mut ledger = Ledger::new(std::time::Instant::now());

    let mut group = c.benchmark_group("packet_path");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("parse_only", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(parse(LinkType::Ethernet, black_box(f), 54).ok());
            }
        })
    });
    group.bench_function("parse_attribute_count", |b| {
        b.iter(|| {
            for f in &frames {
                if let Ok(meta) = parse(LinkType::Ethernet, black_box(f), 54) {
                    let lookup = cache.attribute(&table, &meta.flow, meta.ports_known);
                    tally.record(&lookup.verdict, meta.ip_len);
                }
            }
            ledger.merge(&mut tally, &table);
        })
    });
    group.bench_function("attribute_uncached", |b| {
        b.iter(|| {
            for f in &frames {
                if let Ok(meta) = parse(LinkType::Ethernet, black_box(f), 54) {
                    tally.record(
                        &attribute(&table, &meta.flow, meta.ports_known),
                        meta.ip_len,
                    );
                }
            }
            ledger.merge(&mut tally, &table);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
