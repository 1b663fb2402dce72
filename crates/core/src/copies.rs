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
//! A copy crosses each interface once, in one direction: when the capture names the
//! interface (LINUX_SLL2), a second sighting of a fingerprint on an interface and direction
//! it was already seen on is another packet (identical datagrams sent in a row over IPv6,
//! whose flow label does not change per packet as IPv4's identification does), and starts
//! a new window.
//!
//! Invariants: at most [`MAX_TRACKED`] sightings are remembered; when full, those older than
//! the window are dropped, and if none is, all are (a copy then counts twice, never a packet
//! not at all), counted in [`CopyFilter::forgotten`]. Known limit: without the interface
//! (LINUX_SLL, the `any` capture of older libpcaps), two different packets with the same
//! fingerprint within the window (identical IPv6 datagrams, an IPv6 TCP retransmission
//! within 20 ms) count as one.

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
    /// Fingerprint → its first sighting.
    seen: FastMap<u64, First>,
    hasher: foldhash::fast::FixedState,
    forgotten: u64,
}

/// The first sighting of a fingerprint.
#[derive(Debug, Clone, Copy)]
struct First {
    /// Capture time, µs.
    at: u64,
    /// Whether it waits whole in the pending buffer (its counting not decided yet).
    held: bool,
    /// The interfaces and directions its copies were seen on (0: none; beyond
    /// [`VIAS_KEPT`], later copies are not told apart from new packets by interface).
    vias: [u64; VIAS_KEPT],
}

/// Interfaces remembered per packet: a container's packet crosses its veth, the bridge and
/// the uplink.
const VIAS_KEPT: usize = 4;

/// One packet as the filter weighs it: its IP length and [`CopyId`], and where it was
/// captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyPacket {
    pub ip_len: u32,
    pub id: CopyId,
    /// The interface index and direction it was captured on (LINUX_SLL2), as one nonzero
    /// number ([`CopyPacket::via`]); `None` when the capture does not say.
    pub via: Option<u64>,
}

impl CopyPacket {
    pub fn new(ip_len: u32, id: CopyId) -> CopyPacket {
        CopyPacket {
            ip_len,
            id,
            via: None,
        }
    }

    /// Captured on interface `ifindex`, leaving it (`outgoing`) or entering it.
    pub fn via(self, ifindex: u32, outgoing: bool) -> CopyPacket {
        let via = (u64::from(ifindex) << 1 | u64::from(outgoing)) + 1;
        CopyPacket {
            via: Some(via),
            ..self
        }
    }
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

    /// Whether `packet` of `flow` (its canonical flow when it is a translated form),
    /// captured at `at_us` (µs), is a copy of a packet first seen less than the window
    /// before (and not on the same interface and direction); otherwise remembers it as a
    /// first sighting, which is `held` when the caller holds it whole (see
    /// [`CopyFilter::seen_in_another_form`]). For a translated form, `forms` are its
    /// connection's four forms: a sighting in any of them (remembered before the
    /// translation was known) makes this one a copy too.
    pub fn check(
        &mut self,
        flow: &FlowKey,
        forms: Option<&[FlowKey; 4]>,
        packet: CopyPacket,
        at_us: u64,
        held: bool,
    ) -> CopyCheck {
        let bytes = self.bytes_print(packet.ip_len, packet.id);
        let key = self.flow_print(flow, bytes);
        if self.copy_of(key, at_us, packet.via) {
            return CopyCheck::Copy;
        }
        let others = forms.map(|forms| forms.map(|form| self.flow_print(&form, bytes)));
        for other in others.into_iter().flatten().filter(|&k| k != key) {
            if self.copy_of(other, at_us, packet.via) {
                return CopyCheck::Copy;
            }
        }
        if self.seen.len() >= MAX_TRACKED {
            self.make_room(at_us);
        }
        let mut vias = [0; VIAS_KEPT];
        vias[0] = packet.via.unwrap_or(0);
        let first = First {
            at: at_us,
            held,
            vias,
        };
        self.seen.insert(key, first);
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
            self.seen.get(&key).is_some_and(|f| {
                let first = (f.at, key) < (mark.at_us, mark.recorded);
                f.at.abs_diff(mark.at_us) < COPY_WINDOW_US && (!f.held || first)
            })
        })
    }

    /// True when `key`'s first sighting is within the window of `at_us` and was not seen
    /// `via` this interface and direction already (then this is a copy, and `via` is
    /// noted).
    fn copy_of(&mut self, key: u64, at_us: u64, via: Option<u64>) -> bool {
        let Some(first) = self.seen.get_mut(&key) else {
            return false;
        };
        if at_us.abs_diff(first.at) >= COPY_WINDOW_US {
            return false;
        }
        let Some(via) = via else {
            return true;
        };
        if first.vias.contains(&via) {
            return false; // crossed this interface already: another packet
        }
        if let Some(free) = first.vias.iter_mut().find(|v| **v == 0) {
            *free = via;
        }
        true
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
            .retain(|_, f| now_us.saturating_sub(f.at) < COPY_WINDOW_US);
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
        f.check(&udp(), None, CopyPacket::new(100, id(n)), at, false) == CopyCheck::Copy
    }

    /// Identical datagrams sent in a row over IPv6 (one flow label, one payload): each
    /// crosses the veth once, so a second sighting on the same interface and direction is
    /// the next datagram; its copy on the bridge is still a copy.
    #[test]
    fn a_repeat_on_the_same_interface_is_another_packet_and_other_interfaces_see_copies() {
        let mut f = CopyFilter::new();
        let veth = CopyPacket::new(100, id(1)).via(7, false);
        let bridge = CopyPacket::new(100, id(1)).via(3, false);
        let check =
            |f: &mut CopyFilter, p: CopyPacket, at: u64| f.check(&udp(), None, p, at, false);
        assert!(matches!(check(&mut f, veth, 1_000), CopyCheck::First(_)));
        assert_eq!(check(&mut f, bridge, 1_005), CopyCheck::Copy);
        assert!(
            matches!(check(&mut f, veth, 1_100), CopyCheck::First(_)),
            "the next one"
        );
        assert_eq!(check(&mut f, bridge, 1_105), CopyCheck::Copy);
        let outgoing = CopyPacket::new(100, id(1)).via(7, true);
        assert_eq!(
            check(&mut f, outgoing, 1_110),
            CopyCheck::Copy,
            "the other direction"
        );
        // Without the interface (LINUX_SLL), a repeat within the window is a copy.
        let unnamed = CopyPacket::new(100, id(1));
        assert_eq!(check(&mut f, unnamed, 1_200), CopyCheck::Copy);
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
                f.check(&udp(), None, CopyPacket::new(101, id(1)), 1_030, false),
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
        let CopyCheck::First(first) =
            f.check(&veth, None, CopyPacket::new(100, id(1)), 1_000, false)
        else {
            panic!("first sighting")
        };
        assert!(!f.seen_in_another_form(first, &forms), "only itself so far");
        let CopyCheck::First(held) =
            f.check(&uplink, None, CopyPacket::new(100, id(1)), 1_005, true)
        else {
            panic!("not a copy while the translation is unknown")
        };
        assert!(f.seen_in_another_form(held, &forms), "counted on the veth");
        let CopyCheck::First(other) =
            f.check(&uplink, None, CopyPacket::new(100, id(2)), 1_010, true)
        else {
            panic!("another packet")
        };
        assert!(!f.seen_in_another_form(other, &forms));
        let CopyCheck::First(late) = f.check(
            &uplink,
            None,
            CopyPacket::new(100, id(1)),
            1_000 + COPY_WINDOW_US + 5,
            true,
        ) else {
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
        let CopyCheck::First(a) = f.check(&outside, None, CopyPacket::new(100, id(1)), 1_000, true)
        else {
            panic!("first")
        };
        let CopyCheck::First(b) = f.check(&inside, None, CopyPacket::new(100, id(1)), 1_004, true)
        else {
            panic!("first in its form")
        };
        assert!(!f.seen_in_another_form(a, &forms), "the first counts");
        assert!(f.seen_in_another_form(b, &forms), "the second is transit");
        // Another packet seen first inside only; its next copy comes once the translation
        // is known, checked under the canonical (outside) form: a copy all the same.
        assert!(matches!(
            f.check(&inside, None, CopyPacket::new(100, id(2)), 2_000, true),
            CopyCheck::First(_)
        ));
        assert_eq!(
            f.check(
                &outside,
                Some(&forms),
                CopyPacket::new(100, id(2)),
                2_004,
                false
            ),
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
