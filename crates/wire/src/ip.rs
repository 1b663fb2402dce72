//! What IPv4 and IPv6 have in common: the parsed network-layer result and the length rule.
//!
//! # The IP length rule
//!
//! `ip_len` is the length the IP header declares (IPv4 total length, IPv6 40 + payload
//! length), never more than the packet's length on the wire (`orig_len` minus the link
//! header), and never the captured length: captures are cut at a snaplen.
//!
//! * Declared 0: Linux hands outgoing TSO/GSO super-packets to the capture before
//!   segmentation with a 0 length field (IPv6 jumbograms also say 0). Then
//!   `ip_len = orig_len - link header length`.
//! * Declared non-zero: `min(declared, orig_len - link header length)`. The declared length
//!   is what the sender meant, and it is shorter than the wire when the link layer pads
//!   (Ethernet's 60-byte minimum); but it is also the one field any remote sender controls,
//!   so a 46-byte frame that declares 65,535 bytes counts 46 - link header, not 65,535.
//! * Either way the result must cover the IP header (IPv4 IHL × 4, IPv6's 40 bytes), or the
//!   packet is `Malformed`: a declared length below it, or a wire length below it (a pcap
//!   record whose original length is shorter than the bytes it holds).
//!
//! Invariant: `ip_len <= orig_len - link header length` for every packet that parses.
//!
//! The bytes after the IP header are clipped to the declared length, so Ethernet padding is
//! never read as a transport header.

use std::net::IpAddr;

use crate::error::WireError;
use crate::field::len_u32;
use crate::flow::IpProto;
use crate::meta::Fragment;

/// A parsed IPv4 or IPv6 header (with IPv6 extension headers already walked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetworkRepr<'a> {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub(crate) proto: IpProto,
    pub(crate) ip_len: u32,
    pub(crate) fragment: Option<Fragment>,
    /// IPv4 identification, or the IPv6 flow label: part of [`crate::PacketMeta::copy_id`].
    pub(crate) ident: u32,
    /// The captured upper-layer bytes, clipped to the declared length; `None` for non-first
    /// fragments, which carry no transport header.
    pub(crate) transport: Option<&'a [u8]>,
}

/// Applies the IP length rule (see the module docs).
///
/// `declared` is the header's length (0 if it said 0), `header_len` the minimum it must
/// cover, `wire_len` the original packet length minus the link header.
pub(crate) fn ip_len(declared: u32, header_len: usize, wire_len: u32) -> Result<u32, WireError> {
    let header_len = len_u32(header_len);
    if declared != 0 && declared < header_len {
        return Err(WireError::Malformed("IP length below the header length"));
    }
    if wire_len < header_len {
        return Err(WireError::Malformed("original length below the IP header"));
    }
    Ok(match declared {
        0 => wire_len,
        n => n.min(wire_len),
    })
}

/// The captured bytes from `start` up to the declared end `ip_len` (or the capture's end).
pub(crate) fn clipped(packet: &[u8], start: usize, ip_len: u32) -> &[u8] {
    let end = packet
        .len()
        .min(usize::try_from(ip_len).unwrap_or(usize::MAX));
    packet.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_length_takes_the_original_length() {
        assert_eq!(ip_len(0, 20, 64_000), Ok(64_000));
        assert_eq!(ip_len(0, 40, 40), Ok(40));
        assert!(matches!(ip_len(0, 40, 39), Err(WireError::Malformed(_))));
    }

    #[test]
    fn declared_length_must_cover_the_header() {
        assert_eq!(ip_len(24, 24, 24), Ok(24));
        assert!(matches!(ip_len(23, 24, 1500), Err(WireError::Malformed(_))));
    }

    #[test]
    fn wire_length_must_cover_the_header() {
        assert!(matches!(ip_len(24, 24, 0), Err(WireError::Malformed(_))));
        assert!(matches!(ip_len(40, 40, 39), Err(WireError::Malformed(_))));
    }

    #[test]
    fn declared_length_beyond_the_wire_is_cut_to_the_wire() {
        // A 46-byte payload on Ethernet whose IPv4 header claims 65,535 bytes.
        assert_eq!(ip_len(65_535, 20, 46), Ok(46));
        assert_eq!(ip_len(1500, 20, 60), Ok(60));
    }

    #[test]
    fn declared_length_below_the_wire_is_kept() {
        // Ethernet pads a 40-byte IPv4 packet to 46 bytes of payload.
        assert_eq!(ip_len(40, 20, 46), Ok(40));
    }

    #[test]
    fn clipping_never_goes_past_either_end() {
        let p = [0u8; 30];
        assert_eq!(clipped(&p, 20, 24).len(), 4);
        assert_eq!(clipped(&p, 20, 1500).len(), 10);
        assert_eq!(clipped(&p, 20, 10).len(), 0);
        assert_eq!(clipped(&p, 40, 1500).len(), 0);
    }
}
