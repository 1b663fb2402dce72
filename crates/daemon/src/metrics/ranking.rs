//! Bounded cardinality for counters whose set of keys changes: the top N keys by total bytes
//! get a series each, everything else is summed into one `other` series.
//!
//! Invariants (pure: no I/O, no clock, no lock):
//! - Every exported value only grows while its key is listed, so Prometheus never sees a
//!   counter go back (which `rate()` would read as a reset and a spike). Hence `other` is not
//!   "total minus the top N" (that falls whenever a key climbs into the top N) but an
//!   accumulator: each ranking adds to it what every key outside the top N grew by since the
//!   previous ranking. While no key moves between the top N and `other`, `other` + the top N
//!   equals the sum of every key ever listed outside the top N plus the top N's totals; the
//!   sum of their rates is always the rate of the whole.
//! - A key no longer listed is forgotten (its series retires); what it had added to `other`
//!   stays there.
//! - Memory is one entry per key listed by the last ranking.

use std::collections::HashMap;
use std::hash::Hash;

use pidcap_core::Counters;

/// Bytes in both directions: the ranking's order.
pub fn total_bytes(c: &Counters) -> u64 {
    c.rx_bytes.saturating_add(c.tx_bytes)
}

/// The result of one ranking: at most `n` keys with their counters, biggest first (ties by
/// key), and the `other` accumulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked<K> {
    pub top: Vec<(K, Counters)>,
    pub other: Counters,
}

/// One family's ranking state: each key's counters at the previous ranking, and `other`.
#[derive(Debug)]
pub struct TopN<K> {
    seen: HashMap<K, Counters>,
    other: Counters,
}

impl<K> Default for TopN<K> {
    fn default() -> TopN<K> {
        TopN {
            seen: HashMap::new(),
            other: Counters::default(),
        }
    }
}

impl<K: Hash + Eq + Ord + Clone> TopN<K> {
    /// Ranks `items` (each key once, with its counters since first seen) and keeps the top
    /// `n`; the rest grow `other` by their growth since the previous ranking.
    pub fn rank(&mut self, mut items: Vec<(K, Counters)>, n: usize) -> Ranked<K> {
        items.sort_by(|a, b| {
            total_bytes(&b.1)
                .cmp(&total_bytes(&a.1))
                .then_with(|| a.0.cmp(&b.0))
        });
        let mut seen = HashMap::with_capacity(items.len());
        for (i, (key, now)) in items.iter().enumerate() {
            if i >= n {
                let before = self.seen.get(key).copied().unwrap_or_default();
                self.other.absorb(&now.since(&before));
            }
            seen.insert(key.clone(), *now);
        }
        self.seen = seen;
        items.truncate(n);
        Ranked {
            top: items,
            other: self.other,
        }
    }
}

/// Per-group counters that only grow: each update adds what each process grew by since the
/// previous update to its group's sum. A group is forgotten once none of its processes is
/// listed (they retired from the ledger), so its series retires with them.
#[derive(Debug)]
pub struct GroupSums<P> {
    seen: HashMap<P, Counters>,
    sums: HashMap<String, Counters>,
}

impl<P> Default for GroupSums<P> {
    fn default() -> GroupSums<P> {
        GroupSums {
            seen: HashMap::new(),
            sums: HashMap::new(),
        }
    }
}

impl<P: Hash + Eq + Clone> GroupSums<P> {
    /// Takes every listed process (key, group if it has one, counters since first seen);
    /// returns each live group's sum.
    pub fn update(
        &mut self,
        processes: impl IntoIterator<Item = (P, Option<String>, Counters)>,
    ) -> Vec<(String, Counters)> {
        let mut seen = HashMap::new();
        let mut live: HashMap<String, Counters> = HashMap::new();
        for (process, group, now) in processes {
            let before = self.seen.get(&process).copied().unwrap_or_default();
            if let Some(group) = group {
                let sum = self.sums.get(&group).copied().unwrap_or_default();
                let entry = live.entry(group).or_insert(sum);
                entry.absorb(&now.since(&before));
            }
            seen.insert(process, now);
        }
        self.seen = seen;
        self.sums = live;
        self.sums.iter().map(|(g, c)| (g.clone(), *c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(rx: u64, tx: u64) -> Counters {
        Counters {
            rx_bytes: rx,
            tx_bytes: tx,
            rx_packets: rx / 100,
            tx_packets: tx / 100,
        }
    }

    fn sum<'a>(items: impl IntoIterator<Item = &'a Counters>) -> Counters {
        let mut total = Counters::default();
        for c in items {
            total.absorb(c);
        }
        total
    }

    fn keys(r: &Ranked<u32>) -> Vec<u32> {
        r.top.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn the_top_n_and_other_add_up_to_the_total() {
        let items: Vec<(u32, Counters)> = (1..=10u32)
            .map(|k| (k, bytes(u64::from(k) * 100, u64::from(k) * 10)))
            .collect();
        let total = sum(items.iter().map(|(_, c)| c));
        let ranked = TopN::default().rank(items, 3);
        assert_eq!(keys(&ranked), [10, 9, 8], "biggest first");
        let mut exported = sum(ranked.top.iter().map(|(_, c)| c));
        exported.absorb(&ranked.other);
        assert_eq!(exported, total);
    }

    #[test]
    fn other_grows_by_what_the_rest_added_and_never_goes_back() {
        let mut top = TopN::default();
        let first = top.rank(vec![(1, bytes(1000, 0)), (2, bytes(10, 0))], 1);
        assert_eq!(first.other.rx_bytes, 10);
        // 2 overtakes 1: 1's growth (none) goes to other; 2's series starts at its total.
        let second = top.rank(vec![(1, bytes(1000, 0)), (2, bytes(5000, 0))], 1);
        assert_eq!(keys(&second), [2]);
        assert_eq!(second.other.rx_bytes, 10, "other did not fall");
        let third = top.rank(vec![(1, bytes(1500, 0)), (2, bytes(6000, 0))], 1);
        assert_eq!(
            third.other.rx_bytes, 510,
            "1's growth since the last scrape"
        );
    }

    #[test]
    fn a_key_no_longer_listed_retires_and_what_it_gave_other_stays() {
        let mut top = TopN::default();
        top.rank(vec![(1, bytes(1000, 0)), (2, bytes(10, 0))], 1);
        let ranked = top.rank(vec![(1, bytes(1000, 0))], 1);
        assert_eq!(keys(&ranked), [1]);
        assert_eq!(ranked.other.rx_bytes, 10);
        assert_eq!(top.seen.len(), 1, "the retired key is forgotten");
        // The same key listed again starts from nothing seen.
        let again = top.rank(vec![(1, bytes(1000, 0)), (2, bytes(30, 0))], 1);
        assert_eq!(again.other.rx_bytes, 40);
    }

    #[test]
    fn zero_keeps_only_other() {
        let ranked = TopN::default().rank(vec![(1, bytes(5, 5)), (2, bytes(1, 1))], 0);
        assert!(ranked.top.is_empty());
        assert_eq!(ranked.other, bytes(6, 6));
    }

    #[test]
    fn group_sums_only_grow_and_retire_with_their_last_process() {
        let unit = |s: &str| Some(s.to_string());
        let mut sums = GroupSums::default();
        let mut first = sums.update([
            (1, unit("a.service"), bytes(100, 0)),
            (2, unit("a.service"), bytes(50, 0)),
            (3, None, bytes(7, 0)),
        ]);
        first.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(first, [("a.service".to_string(), bytes(150, 0))]);
        // Process 2 is forgotten by the ledger: the unit's counter keeps its bytes.
        let second = sums.update([(1, unit("a.service"), bytes(120, 0))]);
        assert_eq!(second, [("a.service".to_string(), bytes(170, 0))]);
        let third = sums.update([(3, None, bytes(9, 0))]);
        assert!(third.is_empty(), "no process left in a.service: {third:?}");
        assert_eq!(sums.seen.len(), 1);
    }
}
