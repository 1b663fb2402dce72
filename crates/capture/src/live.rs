//! Reading a live capture with a read timeout that actually fires.
//!
//! Since libpcap 1.9.1, a blocking `pcap_next_ex` on Linux (TPACKET_V3 ring) waits until a
//! packet arrives however long that takes: the kernel's block timer only starts with the first
//! packet (libpcap issue #1001). A capture thread that must notice shutdown and feed the
//! systemd watchdog cannot block like that, so the handle is put in non-blocking mode and an
//! empty ring is waited on with `poll(2)` for at most the configured timeout.
//!
//! Idle, the wait grows: after [`IDLE_AFTER`] timeouts in a row it is at least
//! [`IDLE_TIMEOUT_MS`], until the next frame (a daemon on a quiet interface wakes about
//! three times a second instead of ten; a frame is not delayed by it, `poll` returns as soon
//! as the kernel hands over a block; shutdown and the heartbeat are noticed within the
//! longer wait, which stays well under half of a 1 s systemd watchdog period, after which
//! the capture thread counts as stale: at 500 ms it sat on that boundary).
//!
//! Invariant: `poll` is only called after libpcap reported its buffer empty, so no frame
//! already handed to libpcap is ever waited on. A frame is copied once into a reused buffer
//! (at most snaplen bytes, no allocation once the buffer has grown).

use std::os::fd::{AsRawFd, RawFd};

use pcap::{Active, Capture};

use crate::frame::{Frame, FrameBuf};

/// A live, non-blocking libpcap handle plus the bounded wait that replaces its timeout.
pub(crate) struct LiveCapture {
    pub(crate) capture: Capture<Active>,
    /// `poll` timeout: the configured read timeout, or -1 (forever) when that is 0.
    poll_timeout_ms: i32,
    /// Timeouts in a row since the last frame.
    idle: u32,
    frame: FrameBuf,
}

/// Timeouts in a row after which the capture counts as idle.
pub const IDLE_AFTER: u32 = 10;
/// The least `poll` timeout of an idle capture, ms.
pub const IDLE_TIMEOUT_MS: i32 = 300;

/// libpcap's maximum snapshot length, used when the configured one is not positive.
const MAX_SNAPLEN: usize = 262_144;

impl LiveCapture {
    /// Wraps an activated handle; switches it to non-blocking mode.
    pub(crate) fn new(
        capture: Capture<Active>,
        timeout_ms: i32,
        snaplen: i32,
    ) -> Result<LiveCapture, pcap::Error> {
        let capacity = usize::try_from(snaplen)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(MAX_SNAPLEN);
        Ok(LiveCapture {
            capture: capture.setnonblock()?,
            poll_timeout_ms: if timeout_ms > 0 { timeout_ms } else { -1 },
            idle: 0,
            frame: FrameBuf::with_capacity(capacity),
        })
    }

    /// The next frame, or `None` when none arrived within the timeout.
    pub(crate) fn next(&mut self) -> Result<Option<Frame<'_>>, String> {
        if !self.take_one()? {
            let fd = self.capture.as_raw_fd();
            if !wait_readable(fd, self.wait_ms())? || !self.take_one()? {
                self.idle = self.idle.saturating_add(1);
                return Ok(None);
            }
        }
        Ok(Some(self.frame.as_frame()))
    }

    /// How long the next wait for a frame may last (see the module doc).
    fn wait_ms(&self) -> i32 {
        match self.poll_timeout_ms {
            t if t > 0 && self.idle >= IDLE_AFTER => t.max(IDLE_TIMEOUT_MS),
            t => t,
        }
    }

    /// The next frame libpcap has buffered, without waiting.
    pub(crate) fn next_ready(&mut self) -> Result<Option<Frame<'_>>, String> {
        Ok(self.take_one()?.then(|| self.frame.as_frame()))
    }

    /// Copies the next buffered frame, if libpcap has one without blocking.
    fn take_one(&mut self) -> Result<bool, String> {
        match self.capture.next_packet() {
            Ok(packet) => {
                self.frame.copy_from(Frame::from_packet(&packet));
                self.idle = 0;
                Ok(true)
            }
            Err(pcap::Error::TimeoutExpired) => Ok(false),
            Err(e) => Err(crate::error::pcap_message(&e)),
        }
    }
}

/// Waits until `fd` is readable (or in error, which the next read reports) for at most
/// `timeout_ms` (-1: forever). `false` on timeout or when a signal interrupted the wait.
fn wait_readable(fd: RawFd, timeout_ms: i32) -> Result<bool, String> {
    wait_any(&[fd], timeout_ms)
}

/// Waits until one of `fds` is readable (or in error) for at most `timeout_ms` (-1:
/// forever). `false` on timeout or when a signal interrupted the wait.
pub(crate) fn wait_any(fds: &[RawFd], timeout_ms: i32) -> Result<bool, String> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pollfds` is a valid, exclusively borrowed array of `len` elements for the
    // duration of the call; each fd is owned by a capture handle that outlives the call.
    let ready = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if ready >= 0 {
        return Ok(ready > 0);
    }
    let error = std::io::Error::last_os_error();
    if error.kind() == std::io::ErrorKind::Interrupted {
        Ok(false)
    } else {
        Err(format!("poll on the capture socket failed: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn wait_readable_times_out_then_sees_data() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        assert_eq!(wait_readable(reader.as_raw_fd(), 10), Ok(false));
        writer.write_all(b"x").unwrap();
        assert_eq!(wait_readable(reader.as_raw_fd(), 10_000), Ok(true));
    }
}
