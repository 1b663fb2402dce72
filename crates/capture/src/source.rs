//! A capture handle, live or offline, read one frame at a time.
//!
//! Invariants:
//! - Every call blocks the calling thread: [`Source::next`] for at most the configured read
//!   timeout on a live capture (see `live.rs` for how that bound is enforced), for disk I/O on
//!   a file. Nothing here spawns threads, allocates per frame, or panics on malformed input
//!   (libpcap validates file records; errors come back as [`CaptureError::Read`]).
//! - The link type is fixed once `open_*` returns: any datalink switch and the BPF filter are
//!   applied before the first read, so the filter is compiled against the final link type.

use std::fmt;
use std::path::Path;

use pcap::{Activated, Active, Capture, Linktype, Offline};

use crate::config::LiveConfig;
use crate::error::{pcap_message, CaptureError};
use crate::frame::{Frame, Next};
use crate::interfaces::ensure_interface_exists;
use crate::live::LiveCapture;
use crate::stats::{CaptureStats, StatsAccumulator};

/// Linux's pseudo-interface that captures on every interface.
const ANY_INTERFACE: &str = "any";

enum Handle {
    Live(LiveCapture),
    Offline(Capture<Offline>),
}

/// A libpcap capture: a live interface or a pcap/pcapng file.
///
/// Blocking: run the read loop on a dedicated thread (`std::thread::spawn`), never on an async
/// runtime's worker thread. `Source` is `Send` but not `Sync`.
pub struct Source {
    handle: Handle,
    /// Interface name or file path, for errors and logs.
    origin: String,
    stats: StatsAccumulator,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("origin", &self.origin)
            .field("live", &self.is_live())
            .field("link", &self.link_name())
            .finish_non_exhaustive()
    }
}

impl Source {
    /// Opens a live capture, non-promiscuous, as described by `cfg`.
    ///
    /// On `any`, asks for `LINUX_SLL2` (libpcap ≥ 1.10; it carries the interface index) and
    /// silently keeps `LINUX_SLL` where that is unsupported. Needs `CAP_NET_RAW` and
    /// `CAP_NET_ADMIN`.
    pub fn open_live(cfg: &LiveConfig) -> Result<Source, CaptureError> {
        ensure_interface_exists(&cfg.interface)?;
        let mut capture = activate(cfg)?;
        if cfg.interface == ANY_INTERFACE {
            prefer_sll2(&mut capture);
        }
        if let Some(filter) = &cfg.filter {
            apply_filter(&mut capture, filter)?;
        }
        let live = LiveCapture::new(capture, cfg.timeout_ms, cfg.snaplen)
            .map_err(|e| CaptureError::from_open(&cfg.interface, &e))?;
        let source = Source::new(Handle::Live(live), cfg.interface.clone());
        tracing::info!(
            interface = %cfg.interface,
            link = %source.link_name(),
            snaplen = cfg.snaplen,
            buffer_size = cfg.buffer_size,
            immediate = cfg.immediate,
            timeout_ms = cfg.timeout_ms,
            filter = cfg.filter.as_deref().unwrap_or(""),
            "live capture opened"
        );
        Ok(source)
    }

    /// Opens a pcap or pcapng file for replay, optionally with a BPF filter.
    pub fn open_file(path: &Path, filter: Option<&str>) -> Result<Source, CaptureError> {
        let file_error = |e: pcap::Error| CaptureError::File {
            path: path.to_owned(),
            message: pcap_message(&e),
        };
        let mut capture = Capture::from_file(path).map_err(file_error)?;
        if let Some(filter) = filter {
            apply_filter(&mut capture, filter)?;
        }
        let source = Source::new(Handle::Offline(capture), path.display().to_string());
        tracing::debug!(path = %path.display(), link = %source.link_name(), "capture file opened");
        Ok(source)
    }

    fn new(handle: Handle, origin: String) -> Source {
        Source {
            handle,
            origin,
            stats: StatsAccumulator::default(),
        }
    }

    /// The link-layer type of every frame this source yields.
    pub fn link_type(&self) -> pidcap_wire::LinkType {
        pidcap_wire::LinkType::from_dlt(self.datalink())
    }

    /// The raw libpcap DLT number (`pcap_datalink`), e.g. 1 for Ethernet, 276 for LINUX_SLL2.
    pub fn datalink(&self) -> i32 {
        match &self.handle {
            Handle::Live(l) => l.capture.get_datalink().0,
            Handle::Offline(c) => c.get_datalink().0,
        }
    }

    /// libpcap's name for the link type, e.g. `"LINUX_SLL2"` or `"EN10MB"`; `"DLT_<n>"` when
    /// libpcap has no name for it.
    pub fn link_name(&self) -> String {
        let dlt = self.datalink();
        Linktype(dlt)
            .get_name()
            .unwrap_or_else(|_| format!("DLT_{dlt}"))
    }

    /// Interface name (live) or file path (offline).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether this is a live capture rather than a file.
    pub fn is_live(&self) -> bool {
        matches!(self.handle, Handle::Live(_))
    }

    /// Reads the next frame, blocking for at most the read timeout (live) or until the next
    /// record is read (file).
    ///
    /// An error means the handle is finished (interface gone, file truncated): reopen it.
    // Not `Iterator::next`: each frame borrows the source (a lending read), which `Iterator`
    // cannot express.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Next<'_>, CaptureError> {
        let read_error = |message| CaptureError::Read {
            origin: self.origin.clone(),
            message,
        };
        match &mut self.handle {
            Handle::Live(live) => match live.next() {
                Ok(Some(frame)) => Ok(Next::Packet(frame)),
                Ok(None) => Ok(Next::Timeout),
                Err(message) => Err(read_error(message)),
            },
            Handle::Offline(capture) => match capture.next_packet() {
                Ok(packet) => Ok(Next::Packet(Frame::from_packet(&packet))),
                Err(pcap::Error::NoMorePackets) => Ok(Next::End),
                Err(e) => Err(read_error(pcap_message(&e))),
            },
        }
    }

    /// The next frame a live capture already has, without waiting: [`Next::Timeout`] when
    /// none is buffered (wait with [`wait_any`] first). A file reads its next record.
    pub fn next_ready(&mut self) -> Result<Next<'_>, CaptureError> {
        if !self.is_live() {
            return self.next();
        }
        let read_error = |message| CaptureError::Read {
            origin: self.origin.clone(),
            message,
        };
        match &mut self.handle {
            Handle::Live(live) => match live.next_ready() {
                Ok(Some(frame)) => Ok(Next::Packet(frame)),
                Ok(None) => Ok(Next::Timeout),
                Err(message) => Err(read_error(message)),
            },
            Handle::Offline(_) => unreachable!("checked above"),
        }
    }

    /// The descriptor to wait on for a live capture's next frame; `None` for a file.
    pub fn ready_fd(&self) -> Option<std::os::fd::RawFd> {
        match &self.handle {
            Handle::Live(live) => Some(std::os::fd::AsRawFd::as_raw_fd(&live.capture)),
            Handle::Offline(_) => None,
        }
    }

    /// Kernel counters since the capture was opened, as 64-bit totals that survive libpcap's
    /// 32-bit wrap-around (exact while fewer than 2^32 packets pass between two calls; call it
    /// every few seconds).
    ///
    /// Files have no kernel counters: an offline source always returns all zeros.
    pub fn stats(&mut self) -> Result<CaptureStats, CaptureError> {
        let Handle::Live(live) = &mut self.handle else {
            return Ok(CaptureStats::default());
        };
        let sample = live.capture.stats().map_err(|e| CaptureError::Read {
            origin: self.origin.clone(),
            message: pcap_message(&e),
        })?;
        Ok(self.stats.observe(sample))
    }
}

/// Waits until one of several live captures has a frame ([`Source::ready_fd`]), for at most
/// `timeout_ms` (-1: forever); `false` on timeout. Read each with [`Source::next_ready`].
pub fn wait_any(sources: &[&Source], timeout_ms: i32) -> Result<bool, CaptureError> {
    let fds: Vec<std::os::fd::RawFd> = sources.iter().filter_map(|s| s.ready_fd()).collect();
    crate::live::wait_any(&fds, timeout_ms).map_err(|message| CaptureError::Read {
        origin: "poll".into(),
        message,
    })
}

/// Creates and activates the live handle. Promiscuous mode stays off: pidcap only accounts for
/// this host's own traffic.
fn activate(cfg: &LiveConfig) -> Result<Capture<Active>, CaptureError> {
    let open_error = |e: pcap::Error| CaptureError::from_open(&cfg.interface, &e);
    Capture::from_device(cfg.interface.as_str())
        .map_err(open_error)?
        .promisc(false)
        .snaplen(cfg.snaplen)
        .buffer_size(cfg.buffer_size)
        .immediate_mode(cfg.immediate)
        .timeout(cfg.timeout_ms)
        .open()
        .map_err(open_error)
}

/// Switches `any` to LINUX_SLL2 where libpcap supports it; keeps LINUX_SLL otherwise.
fn prefer_sll2(capture: &mut Capture<Active>) {
    if let Err(error) = capture.set_datalink(Linktype::LINUX_SLL2) {
        tracing::debug!(%error, "LINUX_SLL2 unavailable; keeping LINUX_SLL");
    }
}

fn apply_filter<T: Activated + ?Sized>(
    capture: &mut Capture<T>,
    filter: &str,
) -> Result<(), CaptureError> {
    capture
        .filter(filter, true)
        .map_err(|e| CaptureError::BadFilter {
            filter: filter.to_owned(),
            message: pcap_message(&e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Source>();
    }
}
