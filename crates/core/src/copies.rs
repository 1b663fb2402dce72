//! Copies of one packet captured on several interfaces: a container's packet is seen on its
//! veth, again on the bridge it is attached to, and again on the uplink when it is routed.
//! Each local packet is credited once: the first sighting counts, the copies that follow
//! within [`COPY_WINDOW`] are `transit`.
//!
//! A copy is recognised by its flow, IP length and [`CopyId`] (IP identification or flow
//! label, and the first transport bytes: what bridging and routing leave unchanged). Time is the packets' capture time, a parameter: no clock is read.
//!
//! Invariants: at most [`MAX_TRACKED`] sightings are remembered; when full, those older than
//! the window are dropped, and if none is, all are (a copy then counts twice, never a packet
//! not at all), counted in [`CopyFilter::forgotten`]. Known limit: two different packets with
//! the same fingerprint within the window (an IPv6 TCP retransmission within 20 ms) count as
//! one.

use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::HashMap as FastMap;
use pidcap_wire::{CopyId, PacketMeta};

/// How long after a packet's first sighting another with its fingerprint is a copy of it.
/// Copies are seen microseconds apart (a queue on the way may add milliseconds).
pub const COPY_WINDOW_US: u64 = 20_000;

/// Sightings remembered at once.
pub const MAX_TRACKED: usize = 65_536;

/// See the module doc.
#[derive(Debug, Default)]
pub struct CopyFilter {
    /// Fingerprint → capture time (µs) of its first sighting.
    seen: FastMap<u64, u64>,
    hasher: foldhash::fast::FixedState,
    forgotten: u64,
}

impl CopyFilter {
    pub fn new() -> CopyFilter {
        CopyFilter::default()
    }

    /// True when `meta` (with `id`) is a copy of a packet first seen less than the window
    /// before `at_us` (capture time, µs); otherwise remembers it as a first sighting.
    pub fn is_copy(&mut self, meta: &PacketMeta, id: CopyId, at_us: u64) -> bool {
        let key = self.fingerprint(meta, id);
        if let Some(&first) = self.seen.get(&key) {
            if at_us.saturating_sub(first) < COPY_WINDOW_US {
                return true;
            }
        }
        if self.seen.len() >= MAX_TRACKED {
            self.make_room(at_us);
        }
        self.seen.insert(key, at_us);
        false
    }

    /// Sightings dropped before their window ended, because the table was full.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    fn fingerprint(&self, meta: &PacketMeta, id: CopyId) -> u64 {
        let mut h = self.hasher.build_hasher();
        meta.flow.hash(&mut h);
        meta.ip_len.hash(&mut h);
        id.hash(&mut h);
        h.finish()
    }

    fn make_room(&mut self, now_us: u64) {
        self.seen
            .retain(|_, &mut at| now_us.saturating_sub(at) < COPY_WINDOW_US);
        if self.seen.len() >= MAX_TRACKED {
            self.forgotten += self.seen.len() as u64;
            self.seen.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidcap_wire::{FlowKey, IpProto, LinkDirection};

    fn id(n: u64) -> CopyId {
        CopyId {
            ident: 7,
            head: u128::from(n).to_le_bytes(),
        }
    }

    fn meta() -> PacketMeta {
        PacketMeta {
            flow: FlowKey {
                proto: IpProto::Udp,
                src: "10.0.0.2:5000".parse().unwrap(),
                dst: "10.0.0.1:53".parse().unwrap(),
            },
            ip_len: 100,
            ports_known: true,
            fragment: None,
            icmp_echo: false,
            direction: LinkDirection::Unknown,
            ifindex: Some(3),
        }
    }

    #[test]
    fn copies_within_the_window_are_copies_and_later_ones_are_new_packets() {
        let mut f = CopyFilter::new();
        assert!(!f.is_copy(&meta(), id(1), 1_000));
        let on_the_bridge = PacketMeta {
            ifindex: Some(4),
            ..meta()
        };
        assert!(f.is_copy(&on_the_bridge, id(1), 1_010));
        assert!(f.is_copy(&meta(), id(1), 1_000 + COPY_WINDOW_US - 1));
        assert!(!f.is_copy(&meta(), id(2), 1_020), "another packet");
        assert!(
            !f.is_copy(&meta(), id(1), 1_000 + COPY_WINDOW_US),
            "the window is over"
        );
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_it_forgets() {
        let mut f = CopyFilter::new();
        for i in 0..MAX_TRACKED as u64 {
            assert!(!f.is_copy(&meta(), id(i), 0));
        }
        assert_eq!(f.forgotten(), 0);
        // Full, nothing old enough to drop: all go, counted.
        assert!(!f.is_copy(&meta(), id(u64::MAX), 1));
        assert_eq!(f.forgotten(), MAX_TRACKED as u64);
        assert!(f.seen.len() <= MAX_TRACKED);
        // Full again (one kept from before, the rest now), then a packet a window later:
        // the old ones are dropped, nothing counted.
        for i in 0..MAX_TRACKED as u64 - 1 {
            f.is_copy(&meta(), id(i), 10);
        }
        assert_eq!(f.seen.len(), MAX_TRACKED);
        f.is_copy(&meta(), id(u64::MAX - 1), 10 + COPY_WINDOW_US);
        assert_eq!(f.seen.len(), 1);
        assert_eq!(f.forgotten(), MAX_TRACKED as u64);
    }
}
