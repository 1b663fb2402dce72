//! The packet path allocates nothing per packet once warm: parse → cached attribution →
//! tally, and the per-batch merge into the ledger for processes already known.
//!
//! A counting global allocator (this test binary only) counts allocations made by this
//! thread while the measured loop runs.
// Tests pick their starting instant from the clock; the code under test never reads it.
#![allow(clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use pidcap_core::{
    AttributionCache, Ledger, NetNsId, OwnerMap, ProcessInfo, ProcessKey, SocketEntry, SocketTable,
    TableParts, Tally, TcpState,
};
use pidcap_wire::{parse, IpProto, LinkType};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const FLOWS: u16 = 512;

/// Ethernet + IPv4 + UDP from 127.0.0.1:`sport` to 127.0.0.1:9000.
fn frame(sport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
    ]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&9000u16.to_be_bytes());
    f.extend_from_slice(&[0, 8, 0, 0]);
    f
}

fn table() -> SocketTable {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut owners = OwnerMap::default();
    let mut sockets = Vec::new();
    for i in 0..FLOWS {
        let inode = u64::from(i) + 1;
        sockets.push(SocketEntry {
            netns: NetNsId(1),
            proto: IpProto::Udp,
            local: SocketAddr::new(lo, 20_000 + i),
            remote: SocketAddr::new(lo, 9000),
            state: TcpState::Established,
            inode,
            uid: 0,
        });
        let key = ProcessKey {
            pid: 100 + u32::from(i % 16),
            start_time: 1,
        };
        owners.holders.insert(inode, vec![key]);
        owners.processes.entry(key).or_insert_with(|| ProcessInfo {
            key,
            comm: "sender".into(),
            exe: None,
            uid: 0,
            cmdline: Vec::new(),
            placement: Default::default(),
        });
    }
    // The receiver: one unconnected socket on 0.0.0.0:9000 (a wildcard match).
    sockets.push(SocketEntry {
        netns: NetNsId(1),
        proto: IpProto::Udp,
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9000),
        remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        state: TcpState::Close,
        inode: 9999,
        uid: 0,
    });
    let receiver = ProcessKey {
        pid: 7,
        start_time: 1,
    };
    owners.holders.insert(9999, vec![receiver]);
    owners.processes.insert(
        receiver,
        ProcessInfo {
            key: receiver,
            comm: "receiver".into(),
            exe: None,
            uid: 0,
            cmdline: Vec::new(),
            placement: Default::default(),
        },
    );
    SocketTable::build(
        1,
        TableParts {
            netns: Some(NetNsId(1)),
            sockets,
            owners: Arc::new(owners),
            closed: Vec::new(),
            departed: Vec::new(),
            local_addrs: vec![lo],
            guest_addrs: Vec::new(),
        },
    )
}

fn run_batch(
    frames: &[Vec<u8>],
    table: &SocketTable,
    cache: &AttributionCache,
    tally: &mut Tally,
    ledger: &mut Ledger,
) {
    for f in frames {
        let meta = parse(LinkType::Ethernet, f, f.len() as u32).expect("valid frame");
        let lookup = cache.attribute(table, &meta.flow, meta.ports_known);
        tally.record(&lookup.verdict, meta.ip_len);
    }
    ledger.merge(tally, table);
}

#[test]
fn the_warm_packet_path_allocates_nothing_per_packet() {
    let frames: Vec<Vec<u8>> = (0..FLOWS).map(|i| frame(20_000 + i)).collect();
    let table = table();
    let cache = AttributionCache::new(65_536);
    let mut tally = Tally::default();
    let mut ledger = Ledger::new(Instant::now());
    // Warm-up: the cache learns every flow, the tally and ledger learn every process. That
    // does allocate, which also shows the counter counts.
    let cold = allocations();
    run_batch(&frames, &table, &cache, &mut tally, &mut ledger);
    assert!(
        allocations() > cold,
        "the cold path must allocate (cache and maps grow)"
    );
    run_batch(&frames, &table, &cache, &mut tally, &mut ledger);

    let before = allocations();
    for _ in 0..20 {
        run_batch(&frames, &table, &cache, &mut tally, &mut ledger);
    }
    let during = allocations() - before;
    assert_eq!(
        during,
        0,
        "{during} allocations for {} packets",
        20 * frames.len()
    );

    // And the counting really counts: the ledger saw every packet of every batch.
    let credited: u64 = ledger
        .processes()
        .map(|p| p.usage.total.tx_packets + p.usage.total.rx_packets)
        .sum();
    assert_eq!(credited, 22 * 2 * u64::from(FLOWS));
}
