//! ICMP and ICMPv6 headers, read only to recognise echo request/reply and their identifier.
//!
//! Linux ping sockets (`SOCK_DGRAM`, `IPPROTO_ICMP[V6]`) use the echo identifier as their
//! local "port". The identifier becomes the port of the end that owns it: the source port of
//! a request (the pinger sent it) and the destination port of a reply (the pinger receives
//! it); the other end, the kernel's echo responder, gets port 0.

use crate::error::WireError;
use crate::field::be_u16;

mod field {
    //! Every field is named, including those the flow does not need.
    #![allow(dead_code)]

    use crate::field::Field;

    pub(crate) const TYPE: usize = 0;
    pub(crate) const CODE: usize = 1;
    pub(crate) const CHECKSUM: Field = 2..4;
    pub(crate) const ECHO_IDENT: Field = 4..6;
    pub(crate) const ECHO_SEQNO: Field = 6..8;
}

/// Length of an ICMP(v6) header (echo identifier and sequence included).
pub(crate) const HEADER_LEN: usize = 8;

/// ICMP for IPv4 or ICMPv6: they number their echo messages differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V4,
    V6,
}

impl Version {
    /// Echo request and reply types: 8/0 for ICMP, 128/129 for ICMPv6.
    fn echo_kind(self, msg_type: u8) -> Option<Echo> {
        match (self, msg_type) {
            (Version::V4, 8) | (Version::V6, 128) => Some(Echo::Request),
            (Version::V4, 0) | (Version::V6, 129) => Some(Echo::Reply),
            _ => None,
        }
    }
}

/// Which half of an echo exchange a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Echo {
    Request,
    Reply,
}

/// A length-checked view of an ICMP(v6) header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub(crate) fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub(crate) fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The echo identifier and the kind of echo message, if this is an echo request or reply.
    pub(crate) fn echo_ident(&self, version: Version) -> Option<(u16, Echo)> {
        let kind = version.echo_kind(self.msg_type())?;
        Some((be_u16(&self.buffer.as_ref()[field::ECHO_IDENT]), kind))
    }
}
