//! From an upper-layer protocol and its captured bytes to the flow's ports.
//!
//! Invariant: never fails. A transport header cut by the snaplen (or by the declared IP
//! length) gives unknown ports, not an error: the addresses are still worth counting.

use crate::flow::IpProto;
use crate::{icmp, ports};

/// The ports of one packet's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ports {
    pub(crate) src: u16,
    pub(crate) dst: u16,
    pub(crate) known: bool,
    pub(crate) icmp_echo: bool,
    /// A TCP segment with SYN set and ACK clear: the first packet of a connection.
    pub(crate) tcp_opening: bool,
}

impl Ports {
    /// Both ports 0: no ports, non-first fragment, or header not captured.
    pub(crate) const UNKNOWN: Ports = Ports {
        src: 0,
        dst: 0,
        known: false,
        icmp_echo: false,
        tcp_opening: false,
    };

    fn pair(src: u16, dst: u16) -> Ports {
        Ports {
            src,
            dst,
            known: true,
            icmp_echo: false,
            tcp_opening: false,
        }
    }

    /// The identifier goes to the pinger's end: source of a request, destination of a reply.
    fn echo((ident, kind): (u16, icmp::Echo)) -> Ports {
        let (src, dst) = match kind {
            icmp::Echo::Request => (ident, 0),
            icmp::Echo::Reply => (0, ident),
        };
        Ports {
            icmp_echo: true,
            ..Ports::pair(src, dst)
        }
    }
}

/// Reads the ports of `proto` from the start of `bytes`.
pub(crate) fn ports(proto: IpProto, bytes: &[u8]) -> Ports {
    match proto {
        IpProto::Tcp => Ports {
            tcp_opening: tcp_opening(bytes),
            ..port_pair(bytes)
        },
        IpProto::Udp | IpProto::UdpLite | IpProto::Sctp => port_pair(bytes),
        IpProto::Icmp => echo(bytes, icmp::Version::V4),
        IpProto::Icmpv6 => echo(bytes, icmp::Version::V6),
        IpProto::Unknown(_) => Ports::UNKNOWN,
    }
}

fn port_pair(bytes: &[u8]) -> Ports {
    ports::Packet::new_checked(bytes)
        .map_or(Ports::UNKNOWN, |p| Ports::pair(p.src_port(), p.dst_port()))
}

/// SYN set and ACK clear in the TCP flags byte (offset 13); false when it was not captured.
fn tcp_opening(bytes: &[u8]) -> bool {
    const FLAGS: usize = 13;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    bytes.get(FLAGS).is_some_and(|f| f & (SYN | ACK) == SYN)
}

fn echo(bytes: &[u8], version: icmp::Version) -> Ports {
    icmp::Packet::new_checked(bytes)
        .ok()
        .and_then(|p| p.echo_ident(version))
        .map_or(Ports::UNKNOWN, Ports::echo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_port_bytes_are_not_enough() {
        assert_eq!(ports(IpProto::Sctp, &[0, 1, 0]), Ports::UNKNOWN);
        assert_eq!(ports(IpProto::Sctp, &[0, 1, 0, 2]), Ports::pair(1, 2));
    }

    #[test]
    fn only_a_syn_without_ack_opens_a_tcp_connection() {
        let mut header = [0u8; 20];
        header[..4].copy_from_slice(&[0x30, 0x39, 0x00, 0x50]);
        let with = |flags: u8| {
            let mut h = header;
            h[13] = flags;
            ports(IpProto::Tcp, &h).tcp_opening
        };
        assert!(with(0x02), "SYN");
        assert!(with(0x02 | 0x08), "SYN with PSH");
        assert!(!with(0x12), "SYN-ACK");
        assert!(!with(0x10), "ACK");
        assert!(!with(0x04), "RST");
        assert!(
            !ports(IpProto::Tcp, &header[..13]).tcp_opening,
            "flags not captured"
        );
        assert!(!ports(IpProto::Udp, &[0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]).tcp_opening);
    }

    #[test]
    fn icmp_type_numbers_depend_on_the_version() {
        let v4_request = [8, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(
            ports(IpProto::Icmp, &v4_request),
            Ports::echo((0x1234, icmp::Echo::Request))
        );
        assert_eq!(ports(IpProto::Icmpv6, &v4_request), Ports::UNKNOWN);
        let v6_reply = [129, 0, 0, 0, 0x12, 0x34, 0, 1];
        let reply = ports(IpProto::Icmpv6, &v6_reply);
        assert_eq!((reply.src, reply.dst, reply.icmp_echo), (0, 0x1234, true));
    }
}
