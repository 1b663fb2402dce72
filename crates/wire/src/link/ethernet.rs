//! Ethernet II frames and 802.1Q / 802.1ad VLAN tags.
//!
//! Invariant: at most [`MAX_VLAN_TAGS`] tags are walked; more is `Malformed`.

use super::{LinkFrame, Network};
use crate::error::WireError;
use crate::field::be_u16;

/// The most VLAN tags walked before giving up (QinQ uses two; four is generous).
pub(crate) const MAX_VLAN_TAGS: usize = 4;

/// An EtherType (or LINUX_SLL protocol), with the ones this crate acts on named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EtherType {
    Ipv4,
    Ipv6,
    /// 802.1Q (0x8100), 802.1ad (0x88a8) or the pre-standard QinQ 0x9100.
    VlanTag,
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(n: u16) -> EtherType {
        match n {
            0x0800 => EtherType::Ipv4,
            0x86dd => EtherType::Ipv6,
            0x8100 | 0x88a8 | 0x9100 => EtherType::VlanTag,
            other => EtherType::Unknown(other),
        }
    }
}

mod field {
    //! Every field is named, including those the flow does not need.
    #![allow(dead_code)]

    use crate::field::Field;

    pub(crate) const DESTINATION: Field = 0..6;
    pub(crate) const SOURCE: Field = 6..12;
    pub(crate) const ETHERTYPE: Field = 12..14;
}

/// Length of an Ethernet II header without tags.
pub(crate) const HEADER_LEN: usize = field::ETHERTYPE.end;

/// A length-checked view of an Ethernet II header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Checks that the untagged header is present.
    pub(crate) fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Frame { buffer })
    }

    /// The outer EtherType (a VLAN tag type when tagged).
    pub(crate) fn ethertype(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[field::ETHERTYPE])
    }
}

mod tag_field {
    //! Every field is named, including those the flow does not need.
    #![allow(dead_code)]

    use crate::field::Field;

    /// Priority, drop-eligible bit and VLAN id; not needed for the flow.
    pub(crate) const TCI: Field = 0..2;
    pub(crate) const ETHERTYPE: Field = 2..4;
}

/// Length of one VLAN tag following a tag EtherType.
const TAG_LEN: usize = tag_field::ETHERTYPE.end;

/// A length-checked view of one VLAN tag (the 4 bytes after a tag EtherType).
#[derive(Debug, Clone, Copy)]
struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < TAG_LEN {
            return Err(WireError::Truncated);
        }
        Ok(VlanTag { buffer })
    }

    fn inner_ethertype(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[tag_field::ETHERTYPE])
    }
}

/// Decodes an Ethernet frame down to its IP header.
pub(super) fn decode(frame: &[u8]) -> Result<LinkFrame, WireError> {
    let eth = Frame::new_checked(frame)?;
    let (network, header_len) = after_ethertype(frame, HEADER_LEN, eth.ethertype())?;
    Ok(LinkFrame::plain(network, header_len))
}

/// Walks VLAN tags starting at `at` (just after an EtherType field holding `ethertype`) and
/// returns the network layer and the offset where it starts. Shared with LINUX_SLL/SLL2,
/// where libpcap re-inserts stripped VLAN tags after the cooked header.
pub(crate) fn after_ethertype(
    frame: &[u8],
    mut at: usize,
    mut ethertype: u16,
) -> Result<(Network, usize), WireError> {
    for _ in 0..=MAX_VLAN_TAGS {
        match EtherType::from(ethertype) {
            EtherType::Ipv4 => return Ok((Network::Ipv4, at)),
            EtherType::Ipv6 => return Ok((Network::Ipv6, at)),
            EtherType::Unknown(n) => return Err(WireError::NotIp(n)),
            EtherType::VlanTag => {
                let tag = VlanTag::new_checked(frame.get(at..).unwrap_or_default())?;
                ethertype = tag.inner_ethertype();
                at += TAG_LEN;
            }
        }
    }
    Err(WireError::Malformed("more than four VLAN tags"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAGGED: [u8; 22] = [
        0x02, 0, 0, 0, 0, 0x01, // destination MAC
        0x02, 0, 0, 0, 0, 0x02, // source MAC
        0x81, 0x00, // EtherType: 802.1Q
        0x00, 0x64, // TCI: VLAN 100
        0x86, 0xdd, // inner EtherType: IPv6
        0x60, 0, 0, 0, // (start of the IPv6 header)
    ];

    #[test]
    fn view_reads_the_outer_ethertype() {
        assert_eq!(Frame::new_checked(&TAGGED[..]).unwrap().ethertype(), 0x8100);
        assert_eq!(
            Frame::new_checked(&TAGGED[..13]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn one_tag_is_skipped() {
        assert_eq!(decode(&TAGGED).unwrap().header_len, 18);
        assert_eq!(decode(&TAGGED).unwrap().network, Network::Ipv6);
    }

    #[test]
    fn tag_cut_in_half_is_truncated() {
        assert_eq!(decode(&TAGGED[..16]), Err(WireError::Truncated));
    }

    #[test]
    fn five_tags_are_malformed() {
        let mut frame = vec![0u8; 12];
        for _ in 0..5 {
            frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x01]);
        }
        frame.extend_from_slice(&[0x08, 0x00]);
        assert_eq!(
            decode(&frame),
            Err(WireError::Malformed("more than four VLAN tags"))
        );
        frame.drain(12..16);
        assert_eq!(decode(&frame).unwrap().header_len, 14 + 16);
    }

    #[test]
    fn llc_length_field_is_not_ip() {
        let mut frame = [0u8; 14];
        frame[12..].copy_from_slice(&[0x00, 0x2e]);
        assert_eq!(decode(&frame), Err(WireError::NotIp(0x002e)));
    }
}
