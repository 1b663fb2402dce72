//! A minimal, independent parser for the reference capture: link header → IP header →
//! TCP/UDP ports. Deliberately not `pidcap-wire`, so the truth does not share its bugs.
//!
//! Invariants: never panics on any input (every slice access is checked); returns `None` for
//! anything that is not IPv4/IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// DLT numbers this parser understands.
pub mod dlt {
    pub const EN10MB: i32 = 1;
    pub const RAW: i32 = 12;
    pub const RAW_LINKTYPE: i32 = 101;
    pub const RAW_OPENBSD: i32 = 14;
    pub const LINUX_SLL: i32 = 113;
    pub const LINUX_SLL2: i32 = 276;
}

/// One packet as the truth sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// IP protocol number (6 TCP, 17 UDP, …).
    pub proto: u8,
    /// Source address and port (port 0 for non-TCP/UDP or non-first fragments).
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// IP-layer length: IPv4 total length, IPv6 40 + payload length (the header's claim;
    /// the reference captures only honest traffic, where it equals the wire length).
    pub ip_len: u32,
    /// For a TCP SYN without ACK (a connection's opening): its initial sequence number, which
    /// tells a retransmitted SYN from the next connection on the same 4-tuple.
    pub syn_seq: Option<u32>,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;

fn be16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

/// Parses one captured frame of link type `dlt`.
pub fn parse(dlt: i32, data: &[u8]) -> Option<Parsed> {
    let (ethertype, ip) = match dlt {
        dlt::EN10MB => ethernet(data)?,
        dlt::LINUX_SLL => (be16(data, 14)?, data.get(16..)?),
        dlt::LINUX_SLL2 => (be16(data, 0)?, data.get(20..)?),
        dlt::RAW | dlt::RAW_LINKTYPE | dlt::RAW_OPENBSD => (raw_ethertype(data)?, data),
        _ => return None,
    };
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(ip),
        ETHERTYPE_IPV6 => ipv6(ip),
        _ => None,
    }
}

fn ethernet(data: &[u8]) -> Option<(u16, &[u8])> {
    let ethertype = be16(data, 12)?;
    if ethertype == ETHERTYPE_VLAN {
        return Some((be16(data, 16)?, data.get(18..)?));
    }
    Some((ethertype, data.get(14..)?))
}

fn raw_ethertype(data: &[u8]) -> Option<u16> {
    match data.first()? >> 4 {
        4 => Some(ETHERTYPE_IPV4),
        6 => Some(ETHERTYPE_IPV6),
        _ => None,
    }
}

fn ipv4(ip: &[u8]) -> Option<Parsed> {
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let total_len = be16(ip, 2)?;
    let fragment_offset = be16(ip, 6)? & 0x1fff;
    let proto = *ip.get(9)?;
    let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
    let l4 = match fragment_offset {
        0 => ip.get(header_len..)?,
        _ => &[],
    };
    let (sport, dport) = ports(proto, l4);
    Some(Parsed {
        proto,
        src: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(src)), sport),
        dst: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(dst)), dport),
        ip_len: u32::from(total_len),
        syn_seq: syn_seq(proto, l4),
    })
}

fn ipv6(ip: &[u8]) -> Option<Parsed> {
    let payload_len = be16(ip, 4)?;
    let proto = *ip.get(6)?;
    let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
    let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
    let l4 = ip.get(40..)?;
    let (sport, dport) = ports(proto, l4);
    Some(Parsed {
        proto,
        src: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), sport),
        dst: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(dst)), dport),
        ip_len: 40 + u32::from(payload_len),
        syn_seq: syn_seq(proto, l4),
    })
}

/// The sequence number of a TCP segment with SYN set and ACK clear.
fn syn_seq(proto: u8, l4: &[u8]) -> Option<u32> {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let flags = *l4.get(13)?;
    (proto == 6 && flags & (SYN | ACK) == SYN)
        .then(|| Some(u32::from_be_bytes(l4.get(4..8)?.try_into().ok()?)))
        .flatten()
}

fn ports(proto: u8, l4: &[u8]) -> (u16, u16) {
    match proto {
        6 | 17 => (be16(l4, 0).unwrap_or(0), be16(l4, 2).unwrap_or(0)),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_ipv4_udp() {
        let frame = crate::pcapfile::ethernet_ipv4_udp(
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:2000".parse().unwrap(),
            10,
        );
        let p = parse(dlt::EN10MB, &frame).unwrap();
        assert_eq!(p.proto, 17);
        assert_eq!(p.src, "10.0.0.1:1000".parse().unwrap());
        assert_eq!(p.dst, "10.0.0.2:2000".parse().unwrap());
        assert_eq!(p.ip_len, 20 + 8 + 10);
        assert_eq!(p.syn_seq, None);
    }

    #[test]
    fn a_tcp_opening_carries_its_sequence_number_and_nothing_else_does() {
        let mut tcp = vec![0u8; 20];
        tcp[4..8].copy_from_slice(&7u32.to_be_bytes());
        tcp[13] = 0x02; // SYN
        assert_eq!(syn_seq(6, &tcp), Some(7));
        tcp[13] = 0x12; // SYN+ACK: the answer, not an opening
        assert_eq!(syn_seq(6, &tcp), None);
        tcp[13] = 0x02;
        assert_eq!(syn_seq(17, &tcp), None, "not TCP");
        assert_eq!(syn_seq(6, &tcp[..10]), None, "truncated");
    }

    #[test]
    fn truncated_frames_never_panic() {
        let frame = crate::pcapfile::ethernet_ipv4_udp(
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:2000".parse().unwrap(),
            10,
        );
        for dlt in [0, 1, 12, 14, 101, 113, 276] {
            for len in 0..frame.len() {
                let _ = parse(dlt, &frame[..len]);
            }
        }
    }
}
