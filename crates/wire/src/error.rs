//! The one error type of this crate. `Copy`, no allocation: it is built on the packet path.

/// Why a captured frame yielded no [`PacketMeta`](crate::PacketMeta).
///
/// Each variant says what the caller should do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// The capture ended before the end of the link header or the IP header (including IPv4
    /// options and the IPv6 extension-header chain). Count it as unparsed; a larger snaplen
    /// helps. A cut *transport* header is not an error (see `PacketMeta::ports_known`).
    #[error("frame truncated before the end of the link or IP header")]
    Truncated,
    /// A valid non-IP frame (ARP, LLDP, …): the EtherType, SLL protocol or NULL/LOOP address
    /// family is carried. Expected traffic: count it, never warn about it.
    #[error("not an IP packet (ethertype or address family {0:#06x})")]
    NotIp(u16),
    /// The headers contradict themselves (wrong IP version, header length below minimum,
    /// too many VLAN tags or IPv6 extension headers, …). Count it; it is not a bug here.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The capture's link type is not one this crate parses. Detect it once at capture open
    /// time (`LinkType::Unknown(_)` is the only unsupported type), not per packet.
    #[error("unsupported link type (DLT {0})")]
    UnsupportedLink(i32),
}
