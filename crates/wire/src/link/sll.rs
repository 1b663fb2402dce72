//! Linux cooked captures: LINUX_SLL (16-byte header) and LINUX_SLL2 (20-byte header).
//!
//! Both carry the packet type (direction); SLL2 also carries the interface index. The
//! protocol field is an EtherType for the frames pidcap cares about; libpcap re-inserts
//! stripped VLAN tags after the cooked header, so tags are walked like on Ethernet.

use super::{ethernet, LinkDirection, LinkFrame};
use crate::error::WireError;
use crate::field::{be_u16, be_u32};

mod v1_field {
    //! Every field is named, including those the flow does not need.
    #![allow(dead_code)]

    use crate::field::Field;

    pub(crate) const PACKET_TYPE: Field = 0..2;
    /// ARPHRD_ type of the capturing device; not needed for the flow.
    pub(crate) const HATYPE: Field = 2..4;
    pub(crate) const ADDR_LEN: Field = 4..6;
    pub(crate) const ADDR: Field = 6..14;
    pub(crate) const PROTOCOL: Field = 14..16;
}

/// Length of a LINUX_SLL header.
pub(crate) const V1_HEADER_LEN: usize = v1_field::PROTOCOL.end;

mod v2_field {
    //! Every field is named, including those the flow does not need.
    #![allow(dead_code)]

    use crate::field::Field;

    pub(crate) const PROTOCOL: Field = 0..2;
    pub(crate) const RESERVED: Field = 2..4;
    pub(crate) const IFINDEX: Field = 4..8;
    pub(crate) const HATYPE: Field = 8..10;
    pub(crate) const PACKET_TYPE: usize = 10;
    pub(crate) const ADDR_LEN: usize = 11;
    pub(crate) const ADDR: Field = 12..20;
}

/// Length of a LINUX_SLL2 header.
pub(crate) const V2_HEADER_LEN: usize = v2_field::ADDR.end;

/// A length-checked view of a LINUX_SLL header.
#[derive(Debug, Clone, Copy)]
struct HeaderV1<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HeaderV1<T> {
    fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < V1_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(HeaderV1 { buffer })
    }

    fn packet_type(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[v1_field::PACKET_TYPE])
    }

    fn protocol(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[v1_field::PROTOCOL])
    }
}

/// A length-checked view of a LINUX_SLL2 header.
#[derive(Debug, Clone, Copy)]
struct HeaderV2<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HeaderV2<T> {
    fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < V2_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(HeaderV2 { buffer })
    }

    fn protocol(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[v2_field::PROTOCOL])
    }

    fn ifindex(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[v2_field::IFINDEX])
    }

    fn packet_type(&self) -> u8 {
        self.buffer.as_ref()[v2_field::PACKET_TYPE]
    }
}

/// Decodes a LINUX_SLL header.
pub(super) fn decode_v1(frame: &[u8]) -> Result<LinkFrame, WireError> {
    let sll = HeaderV1::new_checked(frame)?;
    let (network, header_len) = ethernet::after_ethertype(frame, V1_HEADER_LEN, sll.protocol())?;
    Ok(LinkFrame {
        network,
        header_len,
        direction: LinkDirection::from_sll_packet_type(sll.packet_type()),
        ifindex: None,
    })
}

/// Decodes a LINUX_SLL2 header.
pub(super) fn decode_v2(frame: &[u8]) -> Result<LinkFrame, WireError> {
    let sll = HeaderV2::new_checked(frame)?;
    let (network, header_len) = ethernet::after_ethertype(frame, V2_HEADER_LEN, sll.protocol())?;
    Ok(LinkFrame {
        network,
        header_len,
        direction: LinkDirection::from_sll_packet_type(u16::from(sll.packet_type())),
        ifindex: Some(sll.ifindex()),
    })
}
