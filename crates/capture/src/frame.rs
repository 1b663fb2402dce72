//! What one read yields.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One captured frame, borrowed from the source until the next call to
/// [`Source::next`](crate::Source::next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The captured bytes, starting at the link-layer header; at most `snaplen` long.
    pub data: &'a [u8],
    /// Length of the frame on the wire, which may exceed `data.len()` when it was snapped.
    pub orig_len: u32,
    /// Capture time stamp (microsecond precision). A corrupt file's out-of-range time stamp
    /// reads as the Unix epoch.
    pub ts: SystemTime,
}

/// Outcome of one [`Source::next`](crate::Source::next) call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next<'a> {
    /// A frame arrived.
    Packet(Frame<'a>),
    /// No frame arrived within the read timeout (live only): a chance to check for shutdown
    /// and do periodic work.
    Timeout,
    /// The file has no more frames (offline only).
    End,
}

impl<'a> Frame<'a> {
    /// The frame libpcap returned, borrowed in place.
    pub(crate) fn from_packet(packet: &pcap::Packet<'a>) -> Frame<'a> {
        Frame {
            data: packet.data,
            orig_len: packet.header.len,
            ts: system_time(packet.header.ts.tv_sec, packet.header.ts.tv_usec),
        }
    }
}

/// A frame copied out of libpcap's ring into a buffer that is reused, never reallocated once
/// it has grown to the snaplen.
#[derive(Debug, Clone)]
pub(crate) struct FrameBuf {
    data: Vec<u8>,
    orig_len: u32,
    ts: SystemTime,
}

impl FrameBuf {
    pub(crate) fn with_capacity(capacity: usize) -> FrameBuf {
        FrameBuf {
            data: Vec::with_capacity(capacity),
            orig_len: 0,
            ts: UNIX_EPOCH,
        }
    }

    pub(crate) fn copy_from(&mut self, frame: Frame<'_>) {
        self.data.clear();
        self.data.extend_from_slice(frame.data);
        self.orig_len = frame.orig_len;
        self.ts = frame.ts;
    }

    pub(crate) fn as_frame(&self) -> Frame<'_> {
        Frame {
            data: &self.data,
            orig_len: self.orig_len,
            ts: self.ts,
        }
    }
}

/// Converts a `struct timeval` to `SystemTime` without panicking on any input.
pub(crate) fn system_time(sec: impl Into<i64>, usec: impl Into<i64>) -> SystemTime {
    let sec: i64 = sec.into();
    let whole = Duration::from_secs(sec.unsigned_abs());
    let base = if sec >= 0 {
        UNIX_EPOCH.checked_add(whole)
    } else {
        UNIX_EPOCH.checked_sub(whole)
    };
    let micros = Duration::from_micros(u64::try_from(usec.into()).unwrap_or(0));
    base.and_then(|t| t.checked_add(micros))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeval_converts_exactly() {
        let t = system_time(1_700_000_000i64, 123_456i64);
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_700_000_000, 123_456_000)
        );
    }

    #[test]
    fn extreme_timevals_do_not_panic() {
        for (sec, usec) in [
            (i64::MAX, i64::MAX),
            (i64::MIN, i64::MIN),
            (-1, 999_999),
            (0, -5),
        ] {
            let _ = system_time(sec, usec);
        }
        assert_eq!(system_time(0i64, -5i64), UNIX_EPOCH);
        assert_eq!(
            system_time(-1i64, 500_000i64),
            UNIX_EPOCH - Duration::from_millis(500)
        );
    }

    #[test]
    fn frame_buf_round_trips_and_reuses_its_buffer() {
        let mut buf = FrameBuf::with_capacity(8);
        let ts = UNIX_EPOCH + Duration::from_secs(3);
        buf.copy_from(Frame {
            data: &[1, 2, 3],
            orig_len: 60,
            ts,
        });
        assert_eq!(
            buf.as_frame(),
            Frame {
                data: &[1, 2, 3],
                orig_len: 60,
                ts
            }
        );
        let capacity = buf.data.capacity();
        buf.copy_from(Frame {
            data: &[9],
            orig_len: 1,
            ts,
        });
        assert_eq!(buf.as_frame().data, &[9]);
        assert_eq!(buf.data.capacity(), capacity);
    }
}
