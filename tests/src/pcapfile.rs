//! Writes small classic-format pcap files for `pidcapd --pcap-file` replays.
//!
//! Invariants: frames are well-formed (correct lengths and IPv4 header checksum), so the
//! expected IP-layer byte counts are exactly `20 + 8 + payload` per UDP/IPv4 packet.

use std::io::Write;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;

/// LINKTYPE_ETHERNET in a pcap file header.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// Writes `frames` (of link type `linktype`) as a microsecond pcap file, one second apart.
pub fn write(path: &Path, linktype: u32, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes());
    out.extend_from_slice(&2_u16.to_le_bytes());
    out.extend_from_slice(&4_u16.to_le_bytes());
    out.extend_from_slice(&0_i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0_u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65535_u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&linktype.to_le_bytes());
    for (i, frame) in frames.iter().enumerate() {
        let len = u32::try_from(frame.len()).expect("small frame");
        out.extend_from_slice(&(1_700_000_000 + i as u32).to_le_bytes()); // ts_sec
        out.extend_from_slice(&0_u32.to_le_bytes()); // ts_usec
        out.extend_from_slice(&len.to_le_bytes()); // incl_len
        out.extend_from_slice(&len.to_le_bytes()); // orig_len
        out.extend_from_slice(frame);
    }
    std::fs::File::create(path)?.write_all(&out)
}

/// An Ethernet frame holding IPv4/UDP from `src` to `dst` with `payload` zero bytes.
pub fn ethernet_ipv4_udp(src: SocketAddr, dst: SocketAddr, payload: usize) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("ethernet_ipv4_udp takes IPv4 addresses");
    };
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    frame.extend_from_slice(&ipv4_header(src, dst, 28 + payload));
    frame.extend_from_slice(&src.port().to_be_bytes());
    frame.extend_from_slice(&dst.port().to_be_bytes());
    frame.extend_from_slice(&u16::try_from(8 + payload).expect("small").to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // UDP checksum: none
    frame.resize(frame.len() + payload, 0);
    frame
}

/// The same frame with its IPv4 total length replaced by `declared` (header checksum
/// recomputed), as a sender lying about its size would send it.
pub fn with_declared_ipv4_length(mut frame: Vec<u8>, declared: u16) -> Vec<u8> {
    const IP: usize = 14;
    let mut header: [u8; 20] = frame[IP..IP + 20].try_into().expect("an IPv4 header");
    header[2..4].copy_from_slice(&declared.to_be_bytes());
    header[10..12].copy_from_slice(&[0, 0]);
    let checksum = ipv4_checksum(&header);
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame[IP..IP + 20].copy_from_slice(&header);
    frame
}

fn ipv4_header(src: SocketAddrV4, dst: SocketAddrV4, total_len: usize) -> [u8; 20] {
    let mut h = [0_u8; 20];
    h[0] = 0x45; // version 4, IHL 5
    h[2..4].copy_from_slice(&u16::try_from(total_len).expect("small").to_be_bytes());
    h[8] = 64; // TTL
    h[9] = 17; // UDP
    h[12..16].copy_from_slice(&src.ip().octets());
    h[16..20].copy_from_slice(&dst.ip().octets());
    let checksum = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&checksum.to_be_bytes());
    h
}

fn ipv4_checksum(header: &[u8; 20]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_reads_back_with_libpcap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pcap");
        let a = "192.0.2.1:1".parse().unwrap();
        let b = "192.0.2.2:2".parse().unwrap();
        write(&path, LINKTYPE_ETHERNET, &[ethernet_ipv4_udp(a, b, 5)]).unwrap();
        let mut cap = pcap::Capture::from_file(&path).unwrap();
        assert_eq!(cap.get_datalink(), pcap::Linktype::ETHERNET);
        let packet = cap.next_packet().unwrap();
        assert_eq!(packet.header.len, 14 + 20 + 8 + 5);
        assert!(cap.next_packet().is_err());
    }

    #[test]
    fn checksum_verifies_to_zero() {
        let a = "192.0.2.1:1".parse().unwrap();
        let b = "192.0.2.2:2".parse().unwrap();
        let frame = ethernet_ipv4_udp(a, b, 5);
        let header: [u8; 20] = frame[14..34].try_into().unwrap();
        assert_eq!(ipv4_checksum(&header), 0);
    }
}
