//! IPv4 headers, with options and fragments.
//!
//! Invariants: `Packet::new_checked` proves the whole header (IHL × 4 bytes, options
//! included) is captured, so accessors index without panicking. The header checksum is not
//! verified: offloaded outgoing packets are captured before the NIC fills it in.

use std::net::{IpAddr, Ipv4Addr};

use crate::error::WireError;
use crate::field::{be_u16, Field};
use crate::flow::IpProto;
use crate::ip::{self, NetworkRepr};
use crate::meta::Fragment;

mod field {
    //! Every field is named, including those the flow does not need.
    #![allow(dead_code)]

    use crate::field::Field;

    pub(crate) const VER_IHL: usize = 0;
    pub(crate) const DSCP_ECN: usize = 1;
    pub(crate) const LENGTH: Field = 2..4;
    pub(crate) const IDENT: Field = 4..6;
    pub(crate) const FLG_OFF: Field = 6..8;
    pub(crate) const TTL: usize = 8;
    pub(crate) const PROTOCOL: usize = 9;
    pub(crate) const CHECKSUM: Field = 10..12;
    pub(crate) const SRC_ADDR: Field = 12..16;
    pub(crate) const DST_ADDR: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub(crate) const HEADER_LEN: usize = field::DST_ADDR.end;

/// The "more fragments" flag in the flags/offset field.
const MORE_FRAGMENTS: u16 = 0x2000;
/// The fragment offset (8-byte units) in the flags/offset field.
const OFFSET_MASK: u16 = 0x1fff;

/// A length-checked view of an IPv4 header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks version, IHL and that the whole header, options included, is captured.
    pub(crate) fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let first = *b.first().ok_or(WireError::Truncated)?;
        if first >> 4 != 4 {
            return Err(WireError::Malformed(
                "IPv4 header with a version other than 4",
            ));
        }
        let header_len = usize::from(first & 0x0f) * 4;
        if header_len < HEADER_LEN {
            return Err(WireError::Malformed("IPv4 header length below 20 bytes"));
        }
        if b.len() < header_len {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Header length in bytes (IHL × 4), options included.
    pub(crate) fn header_len(&self) -> usize {
        usize::from(self.bytes()[field::VER_IHL] & 0x0f) * 4
    }

    /// The total length field (0 for TSO/GSO super-packets).
    pub(crate) fn total_len(&self) -> u16 {
        be_u16(&self.bytes()[field::LENGTH])
    }

    pub(crate) fn ident(&self) -> u16 {
        be_u16(&self.bytes()[field::IDENT])
    }

    pub(crate) fn more_frags(&self) -> bool {
        be_u16(&self.bytes()[field::FLG_OFF]) & MORE_FRAGMENTS != 0
    }

    /// Fragment offset in 8-byte units.
    pub(crate) fn frag_offset(&self) -> u16 {
        be_u16(&self.bytes()[field::FLG_OFF]) & OFFSET_MASK
    }

    pub(crate) fn protocol(&self) -> IpProto {
        IpProto::from(self.bytes()[field::PROTOCOL])
    }

    pub(crate) fn src_addr(&self) -> Ipv4Addr {
        self.addr(field::SRC_ADDR)
    }

    pub(crate) fn dst_addr(&self) -> Ipv4Addr {
        self.addr(field::DST_ADDR)
    }

    fn addr(&self, f: Field) -> Ipv4Addr {
        let b = &self.bytes()[f];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Some for a real fragment (MF set or a non-zero offset).
    pub(crate) fn fragment(&self) -> Option<Fragment> {
        let (offset, more) = (self.frag_offset(), self.more_frags());
        (offset != 0 || more).then(|| Fragment {
            id: u32::from(self.ident()),
            offset,
            more,
        })
    }
}

/// Parses an IPv4 packet; `wire_len` is the original length minus the link header.
pub(crate) fn parse(packet: &[u8], wire_len: u32) -> Result<NetworkRepr<'_>, WireError> {
    let p = Packet::new_checked(packet)?;
    let ip_len = ip::ip_len(u32::from(p.total_len()), p.header_len(), wire_len)?;
    let fragment = p.fragment();
    let first = fragment.is_none_or(Fragment::is_first);
    Ok(NetworkRepr {
        src: IpAddr::V4(p.src_addr()),
        dst: IpAddr::V4(p.dst_addr()),
        proto: p.protocol(),
        ip_len,
        fragment,
        ident: u32::from(p.ident()),
        transport: first.then(|| ip::clipped(packet, p.header_len(), ip_len)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 24-byte header: IHL 6 with one 4-byte option (NOP NOP NOP EOL).
    const WITH_OPTION: [u8; 24] = [
        0x46, 0x00, // version 4, IHL 6; DSCP/ECN
        0x00, 0x1c, // total length 28
        0xab, 0xcd, // identification
        0x20, 0x02, // flags MF, fragment offset 2
        0x40, 0x11, // TTL 64, protocol UDP
        0x00, 0x00, // checksum (not verified)
        10, 0, 0, 1, // source
        10, 0, 0, 2, // destination
        0x01, 0x01, 0x01, 0x00, // options
    ];

    #[test]
    fn accessors_read_every_field() {
        let p = Packet::new_checked(&WITH_OPTION[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0xabcd);
        assert!(p.more_frags());
        assert_eq!(p.frag_offset(), 2);
        assert_eq!(p.protocol(), IpProto::Udp);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
    }

    #[test]
    fn option_cut_is_truncated() {
        assert_eq!(
            Packet::new_checked(&WITH_OPTION[..23]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn ihl_below_five_is_malformed() {
        let mut h = WITH_OPTION;
        h[0] = 0x44;
        assert!(matches!(
            Packet::new_checked(&h[..]),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn non_first_fragment_has_no_transport() {
        let r = parse(&WITH_OPTION, 28).unwrap();
        assert_eq!(r.transport, None);
        assert_eq!(
            r.fragment,
            Some(Fragment {
                id: 0xabcd,
                offset: 2,
                more: true
            })
        );
    }
}
