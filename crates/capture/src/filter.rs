//! BPF filters run in user space, on frames already captured (the `capture` stream's
//! per-client filter), compiled by libpcap for the capture's link type.

use crate::CaptureError;

/// A compiled BPF program. Matching reads only the given bytes: a test past them fails.
pub struct FrameFilter {
    program: pcap::BpfProgram,
}

impl std::fmt::Debug for FrameFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameFilter").finish_non_exhaustive()
    }
}

impl FrameFilter {
    /// Compiles `expression` (tcpdump syntax) for frames of link type `dlt`;
    /// [`CaptureError::BadFilter`] names the expression and libpcap's message.
    pub fn compile(dlt: i32, expression: &str) -> Result<FrameFilter, CaptureError> {
        let bad = |message: String| CaptureError::BadFilter {
            filter: expression.to_owned(),
            message,
        };
        let dead = pcap::Capture::dead(pcap::Linktype(dlt)).map_err(|e| bad(e.to_string()))?;
        let program = dead
            .compile(expression, true)
            .map_err(|e| bad(e.to_string()))?;
        Ok(FrameFilter { program })
    }

    /// Whether the frame passes the filter.
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.program.filter(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame carrying IPv4/UDP from port 1000 to port `dst`.
    fn udp(dst: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        f.extend_from_slice(&1000u16.to_be_bytes());
        f.extend_from_slice(&dst.to_be_bytes());
        f.extend_from_slice(&[0, 8, 0, 0]);
        f
    }

    #[test]
    fn a_compiled_filter_tells_frames_apart() {
        let filter = FrameFilter::compile(1, "udp dst port 53").unwrap();
        assert!(filter.matches(&udp(53)));
        assert!(!filter.matches(&udp(54)));
        assert!(!filter.matches(&[]), "an empty frame matches nothing");
    }

    #[test]
    fn a_bad_expression_is_named_in_the_error() {
        let error = FrameFilter::compile(1, "udp prot 53").unwrap_err();
        assert!(
            matches!(&error, CaptureError::BadFilter { filter, .. } if filter == "udp prot 53"),
            "{error}"
        );
    }
}
