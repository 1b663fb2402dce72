//! Copies of one packet captured on several interfaces: a container's packet is seen on its
//! veth, again on the bridge it is attached to, and again on the uplink when it is routed.
//! Each local packet is credited once: the first sighting counts, the copies that follow
//! within [`COPY_WINDOW`] are `transit`.
//!
//! A copy is recognised by its flow, IP length and [`CopyId`] (IP identification or flow
//! label, and the first transport bytes: what bridging, routing and address translation
//! leave unchanged). A copy translated by NAT has another flow: it is checked under its
//! connection's canonical flow when the translation is known ([`crate::NatView`]), and a
//! packet held while its translation was not known yet carries a [`CopyMark`], with which
//! [`CopyFilter::seen_in_another_form`] tells later whether a copy of it in another form of
//! the connection was counted meanwhile. Time is the packets' capture time, a parameter: no
//! clock is read.
//!
//! Invariants: at most [`MAX_TRACKED`] sightings are remembered; when full, those older than
//! the window are dropped, and if none is, all are (a copy then counts twice, never a packet
//! not at all), counted in [`CopyFilter::forgotten`]. Known limit: two different packets with
//! the same fingerprint within the window (an IPv6 TCP retransmission within 20 ms) count as
//! one.

use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::HashMap as FastMap;
use pidcap_wire::{CopyId, FlowKey};

/// How long after a packet's first sighting another with its fingerprint is a copy of it.
/// Copies are seen microseconds apart (a queue on the way may add milliseconds).
pub const COPY_WINDOW_US: u64 = 20_000;

/// Sightings remembered at once.
pub const MAX_TRACKED: usize = 65_536;

/// See the module doc.
#[derive(Debug, Default)]
pub struct CopyFilter {
    /// Fingerprint → capture time (µs) of its first sighting, and whether that sighting
    /// waits whole in the pending buffer (its counting not decided yet).
    seen: FastMap<u64, (u64, bool)>,
    hasher: foldhash::fast::FixedState,
    forgotten: u64,
}

/// What the filter said about one sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyCheck {
    /// A copy of a packet first seen less than the window before.
    Copy,
    /// The first sighting of this packet in this form, remembered.
    First(CopyMark),
}

/// A first sighting, to ask later whether a copy of it was counted in another form
/// ([`CopyFilter::seen_in_another_form`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyMark {
    /// Fingerprint of the length and [`CopyId`] alone.
    bytes: u64,
    /// The fingerprint this sighting was remembered under.
    recorded: u64,
    at_us: u64,
}

impl CopyFilter {
    pub fn new() -> CopyFilter {
        CopyFilter::default()
    }

    /// Whether a packet of `flow` (its canonical flow when it is a translated form),
    /// `ip_len` bytes, with `id`, captured at `at_us` (µs), is a copy of a packet first
    /// seen less than the window before; otherwise remembers it as a first sighting, which
    /// is `held` when the caller holds it whole (see [`CopyFilter::seen_in_another_form`]).
    /// For a translated form, `forms` are its connection's four forms: a sighting in any of
    /// them (remembered before the translation was known) makes this one a copy too.
    pub fn check(
        &mut self,
        flow: &FlowKey,
        forms: Option<&[FlowKey; 4]>,
        ip_len: u32,
        id: CopyId,
        at_us: u64,
        held: bool,
    ) -> CopyCheck {
        let bytes = self.bytes_print(ip_len, id);
        let key = self.flow_print(flow, bytes);
        let other_form = || {
            forms
                .into_iter()
                .flatten()
                .any(|form| self.seen_within(self.flow_print(form, bytes), at_us))
        };
        if self.seen_within(key, at_us) || other_form() {
            return CopyCheck::Copy;
        }
        if self.seen.len() >= MAX_TRACKED {
            self.make_room(at_us);
        }
        self.seen.insert(key, (at_us, held));
        CopyCheck::First(CopyMark {
            bytes,
            recorded: key,
            at_us,
        })
    }

    /// True when the held sighting `mark` is not the one of its packet to count: a copy of
    /// the packet was first seen, within the window, in one of `forms` other than the one
    /// `mark` was remembered under, and that sighting was counted at once, or was held too
    /// and came first (of several held sightings of one packet, the earliest counts; ties go
    /// to the lower fingerprint). For a translated copy held while its translation was not
    /// known yet.
    pub fn seen_in_another_form(&self, mark: CopyMark, forms: &[FlowKey]) -> bool {
        forms.iter().any(|form| {
            let key = self.flow_print(form, mark.bytes);
            if key == mark.recorded {
                return false;
            }
            self.seen.get(&key).is_some_and(|&(at, held)| {
                let first = (at, key) < (mark.at_us, mark.recorded);
                at.abs_diff(mark.at_us) < COPY_WINDOW_US && (!held || first)
            })
        })
    }

    fn seen_within(&self, key: u64, at_us: u64) -> bool {
        self.seen
            .get(&key)
            .is_some_and(|&(first, _)| at_us.abs_diff(first) < COPY_WINDOW_US)
    }

    /// Sightings dropped before their window ended, because the table was full.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    fn bytes_print(&self, ip_len: u32, id: CopyId) -> u64 {
        let mut h = self.hasher.build_hasher();
        ip_len.hash(&mut h);
        id.hash(&mut h);
        h.finish()
    }

    fn flow_print(&self, flow: &FlowKey, bytes: u64) -> u64 {
        let mut h = self.hasher.build_hasher();
        flow.hash(&mut h);
        bytes.hash(&mut h);
        h.finish()
    }

    fn make_room(&mut self, now_us: u64) {
        self.seen
            .retain(|_, &mut (at, _)| now_us.saturating_sub(at) < COPY_WINDOW_US);
        if self.seen.len() >= MAX_TRACKED {
            self.forgotten += self.seen.len() as u64;
            self.seen.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidcap_wire::IpProto;

    fn id(n: u64) -> CopyId {
        CopyId {
            ident: 7,
            head: u128::from(n).to_le_bytes(),
        }
    }

    fn flow(src: &str, dst: &str) -> FlowKey {
        FlowKey {
            proto: IpProto::Udp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    fn udp() -> FlowKey {
        flow("10.0.0.2:5000", "10.0.0.1:53")
    }

    fn is_copy(f: &mut CopyFilter, n: u64, at: u64) -> bool {
        f.check(&udp(), None, 100, id(n), at, false) == CopyCheck::Copy
    }

    #[test]
    fn copies_within_the_window_are_copies_and_later_ones_are_new_packets() {
        let mut f = CopyFilter::new();
        assert!(!is_copy(&mut f, 1, 1_000));
        assert!(is_copy(&mut f, 1, 1_010), "on the bridge");
        assert!(is_copy(&mut f, 1, 1_000 + COPY_WINDOW_US - 1));
        assert!(!is_copy(&mut f, 2, 1_020), "another packet");
        assert!(
            matches!(
                f.check(&udp(), None, 101, id(1), 1_030, false),
                CopyCheck::First(_)
            ),
            "another length is another packet"
        );
        assert!(
            !is_copy(&mut f, 1, 1_000 + COPY_WINDOW_US),
            "the window is over"
        );
    }

    /// A container's datagram 172.17.0.2:5000 → 198.51.100.7:53 leaves masqueraded as
    /// 192.0.2.1:61000: the uplink copy, held while its translation was unknown, finds the
    /// veth copy counted in the connection's other form; the veth copy itself, or a packet
    /// with other bytes, does not.
    #[test]
    fn a_held_translated_copy_finds_its_other_form() {
        let veth = flow("172.17.0.2:5000", "198.51.100.7:53");
        let uplink = flow("192.0.2.1:61000", "198.51.100.7:53");
        let forms = [veth, uplink, uplink.reversed(), veth.reversed()];
        let mut f = CopyFilter::new();
        let CopyCheck::First(first) = f.check(&veth, None, 100, id(1), 1_000, false) else {
            panic!("first sighting")
        };
        assert!(!f.seen_in_another_form(first, &forms), "only itself so far");
        let CopyCheck::First(held) = f.check(&uplink, None, 100, id(1), 1_005, true) else {
            panic!("not a copy while the translation is unknown")
        };
        assert!(f.seen_in_another_form(held, &forms), "counted on the veth");
        let CopyCheck::First(other) = f.check(&uplink, None, 100, id(2), 1_010, true) else {
            panic!("another packet")
        };
        assert!(!f.seen_in_another_form(other, &forms));
        let CopyCheck::First(late) =
            f.check(&uplink, None, 100, id(1), 1_000 + COPY_WINDOW_US + 5, true)
        else {
            panic!("outside the window")
        };
        assert!(!f.seen_in_another_form(late, &forms));
    }

    /// A port-forwarded packet whose two ends are both local misses in both forms before its
    /// translation is known: both sightings are held, and exactly one — the first — counts.
    #[test]
    fn of_two_held_sightings_of_one_packet_the_first_counts() {
        let outside = flow("10.231.1.2:40000", "10.231.1.1:18080");
        let inside = flow("10.231.1.2:40000", "10.232.1.2:8080");
        let forms = [outside, inside, inside.reversed(), outside.reversed()];
        let mut f = CopyFilter::new();
        let CopyCheck::First(a) = f.check(&outside, None, 100, id(1), 1_000, true) else {
            panic!("first")
        };
        let CopyCheck::First(b) = f.check(&inside, None, 100, id(1), 1_004, true) else {
            panic!("first in its form")
        };
        assert!(!f.seen_in_another_form(a, &forms), "the first counts");
        assert!(f.seen_in_another_form(b, &forms), "the second is transit");
        // Another packet seen first inside only; its next copy comes once the translation
        // is known, checked under the canonical (outside) form: a copy all the same.
        assert!(matches!(
            f.check(&inside, None, 100, id(2), 2_000, true),
            CopyCheck::First(_)
        ));
        assert_eq!(
            f.check(&outside, Some(&forms), 100, id(2), 2_004, false),
            CopyCheck::Copy
        );
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_it_forgets() {
        let mut f = CopyFilter::new();
        for i in 0..MAX_TRACKED as u64 {
            assert!(!is_copy(&mut f, i, 0));
        }
        assert_eq!(f.forgotten(), 0);
        // Full, nothing old enough to drop: all go, counted.
        assert!(!is_copy(&mut f, u64::MAX, 1));
        assert_eq!(f.forgotten(), MAX_TRACKED as u64);
        assert!(f.seen.len() <= MAX_TRACKED);
        // Full again (one kept from before, the rest now), then a packet a window later:
        // the old ones are dropped, nothing counted.
        for i in 0..MAX_TRACKED as u64 - 1 {
            is_copy(&mut f, i, 10);
        }
        assert_eq!(f.seen.len(), MAX_TRACKED);
        is_copy(&mut f, u64::MAX - 1, 10 + COPY_WINDOW_US);
        assert_eq!(f.seen.len(), 1);
        assert_eq!(f.forgotten(), MAX_TRACKED as u64);
    }
}
