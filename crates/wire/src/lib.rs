#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod error;
mod field;
mod flow;
mod icmp;
mod ip;
mod ipv4;
mod ipv6;
mod ipv6_ext;
mod link;
mod meta;
mod ports;
mod transport;

use std::net::SocketAddr;

pub use error::WireError;
pub use flow::{FlowKey, IpProto};
pub use link::{LinkDirection, LinkType};
pub use meta::{Fragment, PacketMeta};

use field::len_u32;
use link::Network;
use transport::Ports;

/// Parses one captured frame into its packet metadata.
///
/// `frame` is the captured bytes (cut at the snaplen), `orig_len` the packet's length on the
/// wire (pcap's `len`), which bounds the counted length (see [`PacketMeta::ip_len`]). Never panics, never allocates.
pub fn parse(link: LinkType, frame: &[u8], orig_len: u32) -> Result<PacketMeta, WireError> {
    let l2 = link::decode(link, frame)?;
    let packet = frame.get(l2.header_len..).ok_or(WireError::Truncated)?;
    let wire_len = orig_len.saturating_sub(len_u32(l2.header_len));
    let net = match l2.network {
        Network::Ipv4 => ipv4::parse(packet, wire_len)?,
        Network::Ipv6 => ipv6::parse(packet, wire_len)?,
    };
    let ports = net
        .transport
        .map_or(Ports::UNKNOWN, |t| transport::ports(net.proto, t));
    Ok(PacketMeta {
        flow: FlowKey {
            proto: net.proto,
            src: SocketAddr::new(net.src, ports.src),
            dst: SocketAddr::new(net.dst, ports.dst),
        },
        ip_len: net.ip_len,
        ports_known: ports.known,
        fragment: net.fragment,
        icmp_echo: ports.icmp_echo,
        direction: l2.direction,
        ifindex: l2.ifindex,
        copy_id: copy_id(net.ident, net.transport),
    })
}

/// See [`PacketMeta::copy_id`]: a 64-bit mix (FNV-style multiply and xor-shift) of
/// `ident` and the first 16 transport bytes.
fn copy_id(ident: u32, transport: Option<&[u8]>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ u64::from(ident);
    let bytes = transport.map_or(&[][..], |t| t.get(..16).unwrap_or(t));
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}
