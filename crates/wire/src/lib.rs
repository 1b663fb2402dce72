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
pub use meta::{CopyId, Fragment, PacketMeta};

use field::len_u32;
use link::Network;
use transport::Ports;

/// Parses one captured frame into its packet metadata.
///
/// `frame` is the captured bytes (cut at the snaplen), `orig_len` the packet's length on the
/// wire (pcap's `len`), which bounds the counted length (see [`PacketMeta::ip_len`]). Never panics, never allocates.
pub fn parse(link: LinkType, frame: &[u8], orig_len: u32) -> Result<PacketMeta, WireError> {
    let (l2, net) = layers(link, frame, orig_len)?;
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
        tcp_opening: ports.tcp_opening,
        direction: l2.direction,
        ifindex: l2.ifindex,
    })
}

/// The [`CopyId`] of a frame that [`parse`] accepts (parsed again: only the few packets
/// that may have been captured twice need it, so the common path never pays for it).
pub fn copy_id(link: LinkType, frame: &[u8], orig_len: u32) -> Result<CopyId, WireError> {
    let (_, net) = layers(link, frame, orig_len)?;
    Ok(CopyId::new(net.ident, net.proto, net.transport))
}

/// The link and network layers of a frame.
fn layers(
    link: LinkType,
    frame: &[u8],
    orig_len: u32,
) -> Result<(link::LinkFrame, ip::NetworkRepr<'_>), WireError> {
    let l2 = link::decode(link, frame)?;
    let packet = frame.get(l2.header_len..).ok_or(WireError::Truncated)?;
    let wire_len = orig_len.saturating_sub(len_u32(l2.header_len));
    let net = match l2.network {
        Network::Ipv4 => ipv4::parse(packet, wire_len)?,
        Network::Ipv6 => ipv6::parse(packet, wire_len)?,
    };
    Ok((l2, net))
}
