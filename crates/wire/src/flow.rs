//! The flow key: one `Copy + Hash` type for IPv4 and IPv6 alike.

use std::net::SocketAddr;

/// An IP protocol number, with the ones pidcap understands named.
///
/// Unknown numbers are kept as `Unknown(n)` so nothing is lost or mis-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpProto {
    Icmp,
    Tcp,
    Udp,
    Icmpv6,
    Sctp,
    UdpLite,
    Unknown(u8),
}

impl From<u8> for IpProto {
    fn from(n: u8) -> Self {
        match n {
            1 => IpProto::Icmp,
            6 => IpProto::Tcp,
            17 => IpProto::Udp,
            58 => IpProto::Icmpv6,
            132 => IpProto::Sctp,
            136 => IpProto::UdpLite,
            other => IpProto::Unknown(other),
        }
    }
}

impl From<IpProto> for u8 {
    fn from(p: IpProto) -> u8 {
        match p {
            IpProto::Icmp => 1,
            IpProto::Tcp => 6,
            IpProto::Udp => 17,
            IpProto::Icmpv6 => 58,
            IpProto::Sctp => 132,
            IpProto::UdpLite => 136,
            IpProto::Unknown(n) => n,
        }
    }
}

impl IpProto {
    /// The lower-case name used in the query protocol and logs (`"tcp"`, `"udp"`, …;
    /// `"ip-N"` for unnamed numbers).
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self {
            IpProto::Icmp => "icmp".into(),
            IpProto::Tcp => "tcp".into(),
            IpProto::Udp => "udp".into(),
            IpProto::Icmpv6 => "icmpv6".into(),
            IpProto::Sctp => "sctp".into(),
            IpProto::UdpLite => "udplite".into(),
            IpProto::Unknown(n) => format!("ip-{n}").into(),
        }
    }

    /// Parses the names produced by [`IpProto::name`].
    pub fn from_name(s: &str) -> Option<IpProto> {
        Some(match s {
            "icmp" => IpProto::Icmp,
            "tcp" => IpProto::Tcp,
            "udp" => IpProto::Udp,
            "icmpv6" => IpProto::Icmpv6,
            "sctp" => IpProto::Sctp,
            "udplite" => IpProto::UdpLite,
            _ => IpProto::from(s.strip_prefix("ip-")?.parse::<u8>().ok()?),
        })
    }
}

/// The identity of one packet's flow, as seen on the wire: protocol, source and destination.
///
/// Invariants: IPv6 addresses carry flow info and scope id 0, so equal flows hash equally.
/// For protocols without ports (and non-first IP fragments) both ports are 0. For ICMP and
/// ICMPv6 echo, the echo identifier (which is how Linux ping sockets name their "local port")
/// is the source port of a request and the destination port of a reply; the other port is 0
/// (that end is the kernel's echo responder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: IpProto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub fn reversed(self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
        }
    }
}
