//! DLT_NULL and DLT_LOOP: a 4-byte address family before the IP header.
//!
//! The family is in the capturing host's byte order (NULL) or network order (LOOP), but pcap
//! files travel between hosts, so both orders are accepted for both link types: the values
//! cannot be confused (2 read the wrong way round is 0x0200_0000).

use super::{LinkFrame, Network};
use crate::error::WireError;

mod field {
    //! Every field is named, including those the flow does not need.
    #![allow(dead_code)]

    use crate::field::Field;

    pub(crate) const FAMILY: Field = 0..4;
}

/// Length of the NULL/LOOP header.
pub(crate) const HEADER_LEN: usize = field::FAMILY.end;

/// `AF_INET` on every system.
const AF_INET: u32 = 2;
/// `AF_INET6` on Linux (10), NetBSD/OpenBSD/BSD/OS (24), FreeBSD/DragonFly (28), Darwin (30).
const AF_INET6: [u32; 4] = [10, 24, 28, 30];

/// Which byte order the link type promises for the family field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FamilyOrder {
    /// DLT_NULL: the capturing host's order.
    Host,
    /// DLT_LOOP: big-endian.
    Network,
}

/// A length-checked view of a NULL/LOOP header.
#[derive(Debug, Clone, Copy)]
struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Header { buffer })
    }

    /// The family field read in both byte orders: (big-endian, little-endian).
    fn family_both_orders(&self) -> (u32, u32) {
        let b = &self.buffer.as_ref()[field::FAMILY];
        let bytes = [b[0], b[1], b[2], b[3]];
        (u32::from_be_bytes(bytes), u32::from_le_bytes(bytes))
    }
}

/// Decodes a NULL/LOOP header.
pub(super) fn decode(frame: &[u8], order: FamilyOrder) -> Result<LinkFrame, WireError> {
    let (be, le) = Header::new_checked(frame)?.family_both_orders();
    let network = if be == AF_INET || le == AF_INET {
        Network::Ipv4
    } else if AF_INET6.contains(&be) || AF_INET6.contains(&le) {
        Network::Ipv6
    } else {
        return Err(WireError::NotIp(reported_family(be, le, order)));
    };
    Ok(LinkFrame::plain(network, HEADER_LEN))
}

/// The family to report in `NotIp`: in the link type's promised order, or the other order if
/// that one does not fit 16 bits.
fn reported_family(be: u32, le: u32, order: FamilyOrder) -> u16 {
    let host_is_big = cfg!(target_endian = "big");
    let (first, second) = match order {
        FamilyOrder::Host if !host_is_big => (le, be),
        FamilyOrder::Host | FamilyOrder::Network => (be, le),
    };
    u16::try_from(first)
        .or_else(|_| u16::try_from(second))
        .unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inet6_value_in_both_orders_is_ipv6() {
        for f in AF_INET6 {
            for order in [FamilyOrder::Host, FamilyOrder::Network] {
                let got = decode(&f.to_be_bytes(), order).unwrap();
                assert_eq!(got.network, Network::Ipv6);
                assert_eq!(decode(&f.to_le_bytes(), order).unwrap(), got);
            }
        }
    }

    #[test]
    fn unknown_family_is_reported_in_the_promised_order() {
        // AF_APPLETALK-ish 16 stored little-endian.
        let le16 = 16u32.to_le_bytes();
        assert_eq!(
            decode(&le16, FamilyOrder::Network),
            Err(WireError::NotIp(16))
        );
        assert_eq!(decode(&le16, FamilyOrder::Host), Err(WireError::NotIp(16)));
    }

    #[test]
    fn short_header_is_truncated() {
        assert_eq!(
            decode(&[2, 0, 0], FamilyOrder::Host),
            Err(WireError::Truncated)
        );
    }
}
