//! Link layers: from a capture's link type and a frame to where the IP header starts.
//!
//! Invariants: every view checks its length once in `new_checked`; VLAN tags are bounded by
//! [`ethernet::MAX_VLAN_TAGS`]; nothing here allocates or panics. The returned
//! [`LinkFrame::header_len`] is always `<= frame.len()`.

mod ethernet;
mod null;
mod sll;

use crate::error::WireError;

/// A capture's link type, from the DLT value libpcap's `pcap_datalink()` returns (the
/// LINKTYPE_ values found in pcap files are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// DLT_NULL (0): 4-byte address family in the capturing host's byte order.
    Null,
    /// DLT_EN10MB (1): Ethernet II, with up to four 802.1Q/802.1ad tags.
    Ethernet,
    /// DLT_RAW (12, 14) / LINKTYPE_RAW (101): IPv4 or IPv6 by the version nibble.
    Raw,
    /// DLT_IPV4 (228): IPv4 only.
    Ipv4,
    /// DLT_IPV6 (229): IPv6 only.
    Ipv6,
    /// DLT_LOOP (108): 4-byte address family in network byte order.
    Loop,
    /// DLT_LINUX_SLL (113): Linux "cooked" capture v1 (the `any` device on older libpcap).
    LinuxSll,
    /// DLT_LINUX_SLL2 (276): Linux "cooked" capture v2, carries the interface index.
    LinuxSll2,
    /// Any other value: [`parse`](crate::parse) answers `WireError::UnsupportedLink`.
    Unknown(i32),
}

impl LinkType {
    /// Maps a DLT (or LINKTYPE_) number to a link type.
    pub fn from_dlt(dlt: i32) -> LinkType {
        match dlt {
            0 => LinkType::Null,
            1 => LinkType::Ethernet,
            12 | 14 | 101 => LinkType::Raw,
            108 => LinkType::Loop,
            113 => LinkType::LinuxSll,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            276 => LinkType::LinuxSll2,
            other => LinkType::Unknown(other),
        }
    }
}

/// Which way a packet went, as Linux cooked captures record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkDirection {
    /// SLL packet type 0..=3 (to us, broadcast, multicast, to another host).
    Incoming,
    /// SLL packet type 4 (sent by this host).
    Outgoing,
    /// Other link types, or an SLL packet type above 4.
    Unknown,
}

impl LinkDirection {
    /// From a LINUX_SLL/SLL2 packet type (`PACKET_HOST` … `PACKET_OUTGOING`).
    fn from_sll_packet_type(t: u16) -> LinkDirection {
        match t {
            0..=3 => LinkDirection::Incoming,
            4 => LinkDirection::Outgoing,
            _ => LinkDirection::Unknown,
        }
    }
}

/// The network layer a link header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Network {
    Ipv4,
    Ipv6,
}

/// A decoded link header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkFrame {
    pub(crate) network: Network,
    /// Bytes before the IP header (including VLAN tags); `<= frame.len()`.
    pub(crate) header_len: usize,
    pub(crate) direction: LinkDirection,
    pub(crate) ifindex: Option<u32>,
}

impl LinkFrame {
    /// A link header without direction or interface information.
    fn plain(network: Network, header_len: usize) -> LinkFrame {
        LinkFrame {
            network,
            header_len,
            direction: LinkDirection::Unknown,
            ifindex: None,
        }
    }
}

/// Decodes the link header of `frame`.
pub(crate) fn decode(link: LinkType, frame: &[u8]) -> Result<LinkFrame, WireError> {
    match link {
        LinkType::Ethernet => ethernet::decode(frame),
        LinkType::Null => null::decode(frame, null::FamilyOrder::Host),
        LinkType::Loop => null::decode(frame, null::FamilyOrder::Network),
        LinkType::LinuxSll => sll::decode_v1(frame),
        LinkType::LinuxSll2 => sll::decode_v2(frame),
        LinkType::Raw => Ok(LinkFrame::plain(raw_network(frame)?, 0)),
        LinkType::Ipv4 => Ok(LinkFrame::plain(Network::Ipv4, 0)),
        LinkType::Ipv6 => Ok(LinkFrame::plain(Network::Ipv6, 0)),
        LinkType::Unknown(dlt) => Err(WireError::UnsupportedLink(dlt)),
    }
}

/// DLT_RAW has no header: the IP version nibble says which IP it is.
fn raw_network(frame: &[u8]) -> Result<Network, WireError> {
    match frame.first().map(|b| b >> 4) {
        None => Err(WireError::Truncated),
        Some(4) => Ok(Network::Ipv4),
        Some(6) => Ok(Network::Ipv6),
        Some(_) => Err(WireError::Malformed(
            "raw IP frame with a version other than 4 or 6",
        )),
    }
}
