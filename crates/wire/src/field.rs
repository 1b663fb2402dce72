//! Field ranges and big-endian reads over buffers whose length was already checked.
//!
//! Invariant: callers index only after a view's `new_checked` proved the buffer long enough,
//! so the indexing here cannot panic.

/// A byte range inside a header, as in smoltcp's `wire::field`.
pub(crate) type Field = core::ops::Range<usize>;

/// Reads a big-endian `u16` from the first two bytes of `b`.
pub(crate) fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Reads a big-endian `u32` from the first four bytes of `b`.
pub(crate) fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads a length (frame offsets are tiny) as the `u32` used for wire lengths.
pub(crate) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
