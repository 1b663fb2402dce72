//! The IPv6 extension-header chain, walked to the upper-layer protocol.
//!
//! Invariants: at most [`MAX_EXT_HEADERS`] headers are skipped (more is `Malformed`); every
//! header is length-checked before use. Skipped: hop-by-hop (0), routing (43), fragment (44),
//! destination options (60), AH (51, length in 4-byte units + 2). ESP (50) and No Next
//! Header (59) end the chain like any other upper-layer number: they have no ports. A
//! fragment header with a non-zero offset ends the walk: the rest is not a transport header.

use crate::error::WireError;
use crate::field::{be_u16, be_u32};
use crate::flow::IpProto;
use crate::meta::Fragment;

/// The most extension headers skipped before giving up.
pub(crate) const MAX_EXT_HEADERS: usize = 8;

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTIONS: u8 = 60;

mod field {
    //! Every field is named, including those the flow does not need.
    #![allow(dead_code)]

    use crate::field::Field;

    /// Common to every skipped header.
    pub(crate) const NXT_HDR: usize = 0;
    pub(crate) const LENGTH: usize = 1;
    /// Fragment header only.
    pub(crate) const FR_OFF_M: Field = 2..4;
    pub(crate) const FR_IDENT: Field = 4..8;
}

/// The fixed length of a fragment header, and the minimum of every other one.
const FRAGMENT_HEADER_LEN: usize = field::FR_IDENT.end;

/// A length-checked view of one extension header (the 8-byte minimum, then its full length).
#[derive(Debug, Clone, Copy)]
struct ExtHeader<T: AsRef<[u8]>> {
    buffer: T,
    kind: u8,
}

impl<T: AsRef<[u8]>> ExtHeader<T> {
    /// Checks that the whole header of type `kind` is present; `cut` is the error otherwise.
    fn new_checked(buffer: T, kind: u8, cut: WireError) -> Result<Self, WireError> {
        let len = buffer.as_ref().len();
        if len < FRAGMENT_HEADER_LEN {
            return Err(cut);
        }
        let h = ExtHeader { buffer, kind };
        if len < h.header_len() {
            return Err(cut);
        }
        Ok(h)
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn next_header(&self) -> u8 {
        self.bytes()[field::NXT_HDR]
    }

    /// Length in bytes: fixed for fragments, 4-byte units + 2 for AH, 8-byte units + 1 else.
    fn header_len(&self) -> usize {
        let n = usize::from(self.bytes()[field::LENGTH]);
        match self.kind {
            FRAGMENT => FRAGMENT_HEADER_LEN,
            AUTH => (n + 2) * 4,
            _ => (n + 1) * 8,
        }
    }

    /// Some for a fragment header describing a real fragment (not an atomic one).
    fn fragment(&self) -> Option<Fragment> {
        if self.kind != FRAGMENT {
            return None;
        }
        let off_m = be_u16(&self.bytes()[field::FR_OFF_M]);
        let (offset, more) = (off_m >> 3, off_m & 1 != 0);
        (offset != 0 || more).then(|| Fragment {
            id: be_u32(&self.bytes()[field::FR_IDENT]),
            offset,
            more,
        })
    }
}

/// Where the chain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chain<'a> {
    pub(crate) proto: IpProto,
    pub(crate) fragment: Option<Fragment>,
    /// The upper-layer bytes; `None` after a non-first fragment header.
    pub(crate) transport: Option<&'a [u8]>,
}

/// Whether `n` is an extension header this walker skips.
fn is_skipped(n: u8) -> bool {
    matches!(n, HOP_BY_HOP | ROUTING | FRAGMENT | AUTH | DEST_OPTIONS)
}

/// Walks the chain starting with next-header value `next` over `payload`. A header running
/// off the end of `payload` yields `cut`.
pub(crate) fn walk(
    mut next: u8,
    mut payload: &[u8],
    cut: WireError,
) -> Result<Chain<'_>, WireError> {
    let mut fragment = None;
    for _ in 0..MAX_EXT_HEADERS {
        if !is_skipped(next) {
            break;
        }
        let h = ExtHeader::new_checked(payload, next, cut)?;
        next = h.next_header();
        fragment = h.fragment().or(fragment);
        if fragment.is_some_and(|f| !f.is_first()) {
            return Ok(Chain {
                proto: IpProto::from(next),
                fragment,
                transport: None,
            });
        }
        payload = payload.get(h.header_len()..).unwrap_or_default();
    }
    if is_skipped(next) {
        return Err(WireError::Malformed(
            "more than eight IPv6 extension headers",
        ));
    }
    Ok(Chain {
        proto: IpProto::from(next),
        fragment,
        transport: Some(payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUT: WireError = WireError::Truncated;

    #[test]
    fn ah_length_is_in_four_byte_units_plus_two() {
        let ah = [
            6, 4, // next header TCP, payload length 4 → (4 + 2) × 4 = 24 bytes
            0, 0, // reserved
            0, 0, 0, 1, // SPI
            0, 0, 0, 1, // sequence
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ICV (12 bytes)
            0x12, 0x34, // (TCP source port)
        ];
        let c = walk(AUTH, &ah, CUT).unwrap();
        assert_eq!(c.proto, IpProto::Tcp);
        assert_eq!(c.transport, Some(&[0x12, 0x34][..]));
    }

    #[test]
    fn nine_headers_are_malformed_eight_are_fine() {
        let mut chain = Vec::new();
        for _ in 0..8 {
            chain.extend_from_slice(&[DEST_OPTIONS, 0, 1, 4, 0, 0, 0, 0]);
        }
        assert!(matches!(
            walk(DEST_OPTIONS, &chain, CUT),
            Err(WireError::Malformed(_))
        ));
        let last = chain.len() - 8;
        chain[last] = 17;
        assert_eq!(walk(DEST_OPTIONS, &chain, CUT).unwrap().proto, IpProto::Udp);
    }

    #[test]
    fn cut_header_yields_the_given_error() {
        let malformed = WireError::Malformed("x");
        assert_eq!(
            walk(HOP_BY_HOP, &[17, 1, 0, 0, 0, 0, 0, 0], malformed),
            Err(malformed)
        );
        assert_eq!(walk(ROUTING, &[17, 0, 0], CUT), Err(CUT));
    }

    #[test]
    fn atomic_fragment_is_not_a_fragment() {
        let frag = [17, 0, 0, 0, 0, 0, 0, 9];
        let c = walk(FRAGMENT, &frag, CUT).unwrap();
        assert_eq!(c.fragment, None);
        assert_eq!(c.transport, Some(&[][..]));
    }
}
