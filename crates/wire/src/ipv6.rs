//! IPv6 fixed headers; the extension-header chain is walked in [`crate::ipv6_ext`].
//!
//! Invariants: `Packet::new_checked` proves the 40-byte header is captured and the version
//! is 6. Addresses become `SocketAddr::V6` with flow info and scope id 0; IPv4-mapped
//! addresses stay IPv6, as on the wire.

use std::net::{IpAddr, Ipv6Addr};

use crate::error::WireError;
use crate::field::{be_u16, Field};
use crate::ip::{self, NetworkRepr};
use crate::ipv6_ext;

mod field {
    //! Every field is named, including those the flow does not need.
    #![allow(dead_code)]

    use crate::field::Field;

    /// Version, traffic class and flow label.
    pub(crate) const VER_TC_FLOW: Field = 0..4;
    pub(crate) const LENGTH: Field = 4..6;
    pub(crate) const NXT_HDR: usize = 6;
    pub(crate) const HOP_LIMIT: usize = 7;
    pub(crate) const SRC_ADDR: Field = 8..24;
    pub(crate) const DST_ADDR: Field = 24..40;
}

/// Length of the fixed IPv6 header.
pub(crate) const HEADER_LEN: usize = field::DST_ADDR.end;

/// A length-checked view of a fixed IPv6 header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the version and that the fixed header is captured.
    pub(crate) fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let first = *b.first().ok_or(WireError::Truncated)?;
        if first >> 4 != 6 {
            return Err(WireError::Malformed(
                "IPv6 header with a version other than 6",
            ));
        }
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The payload length field (0 for TSO/GSO super-packets and jumbograms).
    pub(crate) fn payload_len(&self) -> u16 {
        be_u16(&self.bytes()[field::LENGTH])
    }

    /// The 20-bit flow label.
    pub(crate) fn flow_label(&self) -> u32 {
        let b = self.bytes();
        u32::from_be_bytes([0, b[1] & 0x0f, b[2], b[3]])
    }

    /// The first next-header value (an extension header or the upper layer).
    pub(crate) fn next_header(&self) -> u8 {
        self.bytes()[field::NXT_HDR]
    }

    pub(crate) fn src_addr(&self) -> Ipv6Addr {
        self.addr(field::SRC_ADDR)
    }

    pub(crate) fn dst_addr(&self) -> Ipv6Addr {
        self.addr(field::DST_ADDR)
    }

    fn addr(&self, f: Field) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.bytes()[f]).unwrap_or_default())
    }

    /// The declared IP length, or 0 when the payload length field is 0.
    fn declared_len(&self) -> u32 {
        match self.payload_len() {
            0 => 0,
            n => u32::from(n) + crate::field::len_u32(HEADER_LEN),
        }
    }
}

/// Parses an IPv6 packet; `wire_len` is the original length minus the link header.
pub(crate) fn parse(packet: &[u8], wire_len: u32) -> Result<NetworkRepr<'_>, WireError> {
    let p = Packet::new_checked(packet)?;
    let ip_len = ip::ip_len(p.declared_len(), HEADER_LEN, wire_len)?;
    let payload = ip::clipped(packet, HEADER_LEN, ip_len);
    // Running off the payload is a lie in the header if the declared end was captured,
    // and a short capture otherwise.
    let cut = if usize::try_from(ip_len).is_ok_and(|l| l <= packet.len()) {
        WireError::Malformed("IPv6 extension header beyond the payload length")
    } else {
        WireError::Truncated
    };
    let chain = ipv6_ext::walk(p.next_header(), payload, cut)?;
    Ok(NetworkRepr {
        src: IpAddr::V6(p.src_addr()),
        dst: IpAddr::V6(p.dst_addr()),
        proto: chain.proto,
        ip_len,
        fragment: chain.fragment,
        ident: p.flow_label(),
        transport: chain.transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: [u8; 40] = [
        0x60, 0x00, 0x00, 0x00, // version 6, traffic class 0, flow label 0
        0x00, 0x08, // payload length 8
        0x11, 0x40, // next header UDP, hop limit 64
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // source 2001:db8::1
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x02, // destination 2001:db8::2
    ];

    #[test]
    fn accessors_read_every_field() {
        let p = Packet::new_checked(&HEADER[..]).unwrap();
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.src_addr(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn short_header_is_truncated() {
        assert_eq!(
            Packet::new_checked(&HEADER[..39]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn transport_missing_from_capture_is_still_parsed() {
        let r = parse(&HEADER, 48).unwrap();
        assert_eq!(r.ip_len, 48);
        assert_eq!(r.transport, Some(&[][..]));
    }
}
