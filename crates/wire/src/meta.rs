//! What [`parse`](crate::parse) returns for one packet.

use crate::flow::{FlowKey, IpProto};
use crate::link::LinkDirection;

/// An IPv4 or IPv6 fragment's identity and place.
///
/// Present for every real fragment, first or not. Not present for an unfragmented packet,
/// including an IPv6 "atomic fragment" (fragment header with offset 0 and M clear, RFC 6946),
/// which needs no reassembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fragment {
    /// IPv4 identification (16 bits, widened) or IPv6 fragment identification (32 bits).
    pub id: u32,
    /// Fragment offset in 8-byte units; 0 for the first fragment.
    pub offset: u16,
    /// More fragments follow (IPv4 MF flag, IPv6 M flag).
    pub more: bool,
}

impl Fragment {
    /// The first fragment carries the transport header; later ones do not.
    pub fn is_first(self) -> bool {
        self.offset == 0
    }
}

/// The metadata of one captured packet: its flow and its IP-layer size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketMeta {
    /// Protocol, source and destination (see [`FlowKey`] for the port invariants).
    pub flow: FlowKey,
    /// IP-layer length: IPv4 total length, IPv6 40 + payload length, cut to `orig_len` minus
    /// the link header so a lying header cannot inflate it. When the header says 0 (Linux
    /// TSO/GSO super-packets, IPv6 jumbograms) it is `orig_len` minus the link header.
    /// Always `<= orig_len - link header`.
    pub ip_len: u32,
    /// The flow's ports are real: false for non-first fragments, protocols without ports
    /// (including non-echo ICMP), or a transport header cut by the snaplen. When false, both
    /// ports are 0.
    pub ports_known: bool,
    /// Some for any IPv4/IPv6 fragment, first or not.
    pub fragment: Option<Fragment>,
    /// ICMP/ICMPv6 echo request or reply: the echo identifier is the source port of a request
    /// and the destination port of a reply (the pinger's end); the other port is 0.
    pub icmp_echo: bool,
    /// A TCP segment with SYN set and ACK clear: the first packet of a new connection on its
    /// 4-tuple (whoever held that 4-tuple before no longer does). False for every other
    /// packet, and when the flags were not captured.
    pub tcp_opening: bool,
    /// From the LINUX_SLL/SLL2 packet type; `Unknown` for other link types.
    pub direction: LinkDirection,
    /// The interface index LINUX_SLL2 carries; `None` for other link types.
    pub ifindex: Option<u32>,
}

/// What a bridged, routed or NATed copy of a packet keeps unchanged ([`crate::copy_id`]):
/// the IPv4 identification or IPv6 flow label, and the first 16 captured bytes of the
/// transport header with what address translation rewrites zeroed — the ports, the UDP,
/// SCTP and ICMP checksums and the ICMP echo identifier — so TCP keeps its sequence and
/// acknowledgement numbers, flags and window, UDP its length and first payload bytes, ICMP
/// its type, code and sequence (zeros past what was captured). With the flow and the IP
/// length it tells the copies of one packet seen on several interfaces from other packets;
/// the TTL, the link header, the addresses and the IP checksum do not enter it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CopyId {
    pub ident: u32,
    pub head: [u8; 16],
}

impl CopyId {
    pub(crate) fn new(ident: u32, proto: IpProto, transport: Option<&[u8]>) -> CopyId {
        let mut head = [0u8; 16];
        if let Some(t) = transport {
            let n = t.len().min(16);
            head[..n].copy_from_slice(&t[..n]);
        }
        // (start, end) of each rewritten range.
        let rewritten: &[(usize, usize)] = match proto {
            IpProto::Tcp => &[(0, 4)],
            IpProto::Udp | IpProto::UdpLite => &[(0, 4), (6, 8)],
            IpProto::Sctp => &[(0, 4), (8, 12)],
            IpProto::Icmp | IpProto::Icmpv6 => &[(2, 6)],
            _ => &[],
        };
        for &(start, end) in rewritten {
            head[start..end].fill(0);
        }
        CopyId { ident, head }
    }
}
