//! A 4-tuple that changes hands: one client port used by a chain of processes, one
//! connection each, and the records of each holder (claims, closed sockets) arriving late and
//! in any order. Whatever the order, a packet is credited to the process whose connection it
//! belongs to, or waits (a miss) — never to another holder of the port.
// Tests pick their starting instant from the clock; the code under test never reads it.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{
    AttributionCache, ClosedSocket, Credit, NetNsId, OwnerMap, ProcessKey, Seen, SocketTable,
    TableParts,
};
use pidcap_wire::{FlowKey, IpProto};
use proptest::prelude::*;

const NS: NetNsId = NetNsId(4026531840);
const MS: Duration = Duration::from_millis(1);
const US: Duration = Duration::from_micros(1);

fn owner(link: usize) -> ProcessKey {
    ProcessKey {
        pid: 1000 + link as u32,
        start_time: link as u64,
    }
}

fn out() -> FlowKey {
    FlowKey {
        proto: IpProto::Tcp,
        src: "127.0.0.1:5000".parse().unwrap(),
        dst: "127.0.0.1:80".parse().unwrap(),
    }
}

/// One link of the chain: its connection opens at `opened` (the SYN) and lives `life`; its
/// holder is seen (claimed) over `seen`, which starts at most 50 µs before the SYN (a traced
/// `connect`) and ends within the connection's life.
#[derive(Debug, Clone)]
struct Link {
    opened: Instant,
    life: Duration,
    seen: Seen,
}

fn chain(t0: Instant, links: &[(u64, u64, u64, u64)]) -> Vec<Link> {
    let mut at = t0;
    links
        .iter()
        .map(|&(gap_ms, life_ms, early_us, seen_ms)| {
            at += Duration::from_millis(gap_ms + 12);
            let life = Duration::from_millis(life_ms + 1);
            let first = at - Duration::from_micros(early_us);
            let last = (at + Duration::from_millis(seen_ms)).min(at + life);
            let link = Link {
                opened: at,
                life,
                seen: Seen { first, last },
            };
            at += life;
            link
        })
        .collect()
}

/// A table holding the records of `known` links (inserted in that order).
fn table_with(links: &[Link], known: &[usize], generation: u64) -> SocketTable {
    let closed = known
        .iter()
        .map(|&i| ClosedSocket {
            netns: NS,
            proto: IpProto::Tcp,
            local: out().src,
            remote: out().dst,
            inode: 0,
            owner: owner(i),
            seen: Some(links[i].seen),
        })
        .collect();
    SocketTable::build(
        generation,
        TableParts {
            netns: Some(NS),
            owners: Arc::new(OwnerMap::default()),
            closed,
            local_addrs: vec!["127.0.0.1".parse().unwrap()],
            ..TableParts::default()
        },
    )
}

fn link_strategy() -> impl Strategy<Value = (u64, u64, u64, u64)> {
    (0u64..20, 0u64..20, 0u64..50, 0u64..25)
}

proptest! {
    #[test]
    fn a_packet_is_credited_to_its_own_connection_or_waits(
        links in prop::collection::vec(link_strategy(), 2..7),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        packets in prop::collection::vec((any::<prop::sample::Index>(), 0u64..1000), 1..40),
        horizon_back_ms in 0u64..30,
    ) {
        let t0 = Instant::now();
        let links = chain(t0, &links);
        let end = links.last().map(|l| l.opened + l.life).unwrap();
        // Records arrive in any order, some twice, some never.
        let known: Vec<usize> = order.iter().map(|i| i.index(links.len())).collect();
        let table = table_with(&links, &known, 2);
        let cache = AttributionCache::new(64);
        for link in &links {
            cache.open(&out(), link.opened);
        }
        // Every packet read, or only up to a while before the end.
        for horizon in [end, end - Duration::from_millis(horizon_back_ms)] {
            for (which, permille) in &packets {
                let i = which.index(links.len());
                let at = links[i].opened + links[i].life * (*permille as u32) / 1000;
                if at > horizon {
                    continue;
                }
                let (verdict, _) = cache.attribute_late(&table, &out(), at, horizon);
                match verdict.tx {
                    Some(Credit::Process { key, .. }) => prop_assert_eq!(
                        key, owner(i),
                        "packet of link {} at +{:?} credited to another link", i, at - t0
                    ),
                    Some(Credit::Unknown(_)) => {}
                    None => prop_assert!(false, "the client end is local"),
                }
            }
        }
    }

    #[test]
    fn a_known_holder_gets_its_packets_once_every_packet_was_read(
        links in prop::collection::vec(link_strategy(), 2..5),
        permille in 0u64..1000,
    ) {
        let t0 = Instant::now();
        let links = chain(t0, &links);
        let end = links.last().map(|l| l.opened + l.life).unwrap() + 10 * MS;
        let all: Vec<usize> = (0..links.len()).collect();
        let table = table_with(&links, &all, 2);
        let cache = AttributionCache::new(64);
        for link in &links {
            cache.open(&out(), link.opened);
        }
        for (i, link) in links.iter().enumerate() {
            let at = link.opened + link.life * permille as u32 / 1000;
            let (verdict, undecided) = cache.attribute_late(&table, &out(), at, end);
            prop_assert!(!undecided);
            let credited = matches!(verdict.tx, Some(Credit::Process { key, .. }) if key == owner(i));
            // At most 4 holders of one 4-tuple are remembered: the older may be forgotten.
            prop_assert!(credited || i + 4 < links.len(), "link {} at +{:?}: {:?}", i, at - t0, verdict.tx);
        }
    }
}

#[test]
fn a_new_connection_on_a_reused_port_is_never_its_previous_holders() {
    let t0 = Instant::now();
    let links = chain(t0, &[(0, 10, 30, 5), (0, 10, 30, 5)]);
    // Only the first holder is known when the second connection's packets are read.
    let table = table_with(&links, &[0], 2);
    let cache = AttributionCache::new(64);
    cache.open(&out(), links[0].opened);
    let first = cache.attribute_at(&table, &out(), true, links[0].opened + 2 * MS);
    assert!(matches!(first.verdict.tx, Some(Credit::Process { key, .. }) if key == owner(0)));
    cache.open(&out(), links[1].opened);
    let second = cache.attribute_at(&table, &out(), true, links[1].opened + 100 * US);
    assert!(
        second.verdict.tx.is_some_and(Credit::is_miss),
        "{:?}",
        second.verdict
    );
    // Once the second holder is known, it is credited; the first keeps its own packets.
    let both = table_with(&links, &[0, 1], 3);
    let end = links[1].opened + links[1].life;
    let (late, _) = cache.attribute_late(&both, &out(), links[1].opened + 100 * US, end);
    assert!(matches!(late.tx, Some(Credit::Process { key, .. }) if key == owner(1)));
    let (early, _) = cache.attribute_late(&both, &out(), links[0].opened + 2 * MS, end);
    assert!(matches!(early.tx, Some(Credit::Process { key, .. }) if key == owner(0)));
}
