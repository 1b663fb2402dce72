//! The port pair that opens TCP, UDP, UDP-Lite and SCTP headers alike.
//!
//! Only the 4 port bytes are needed for the flow, so only they are required: a capture that
//! holds them but not the rest of the transport header still yields ports.

use crate::error::WireError;
use crate::field::be_u16;

mod field {
    //! Every field is named, including those the flow does not need.
    #![allow(dead_code)]

    use crate::field::Field;

    pub(crate) const SRC_PORT: Field = 0..2;
    pub(crate) const DST_PORT: Field = 2..4;
}

/// Bytes needed to read both ports.
pub(crate) const PORTS_LEN: usize = field::DST_PORT.end;

/// A length-checked view of the ports at the start of a transport header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub(crate) fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < PORTS_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub(crate) fn src_port(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    pub(crate) fn dst_port(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[field::DST_PORT])
    }
}
