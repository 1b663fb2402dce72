//! What can go wrong when opening or reading a capture, and what the caller should do about it.
//!
//! libpcap reports most failures as text, and the `pcap` crate drops libpcap's numeric status
//! codes, so classification of open failures matches on libpcap's (stable, long-standing)
//! messages. Anything unrecognised falls back to [`CaptureError::Open`], which still carries the
//! full libpcap text.

use std::path::PathBuf;

/// Errors from [`crate::Source`] and [`crate::list_interfaces`].
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The process lacks the privileges to open a packet socket. Fatal: fix the deployment.
    #[error(
        "no permission to capture on interface `{interface}`: run pidcapd as root or grant it \
         CAP_NET_RAW and CAP_NET_ADMIN (libpcap: {message})"
    )]
    PermissionDenied {
        /// Interface the capture was opened on.
        interface: String,
        /// libpcap's own text.
        message: String,
    },

    /// The interface does not exist. Fatal: fix the configuration.
    #[error(
        "no capture interface named `{interface}`: choose one listed by `tcpdump -D`, or `any`"
    )]
    NoSuchDevice {
        /// The name that was asked for.
        interface: String,
    },

    /// The BPF filter did not compile (syntax, or not valid for this link type). Fatal: fix
    /// the configuration.
    #[error("BPF filter `{filter}` rejected: {message}; check it with `tcpdump -d '{filter}'`")]
    BadFilter {
        /// The filter text as given.
        filter: String,
        /// libpcap's compiler message.
        message: String,
    },

    /// Opening a live capture failed for another reason (interface down, buffer too large...).
    /// Usually fatal at start-up; a supervisor may retry.
    #[error("cannot open capture on interface `{interface}`: {message}")]
    Open {
        /// Interface the capture was opened on.
        interface: String,
        /// libpcap's own text.
        message: String,
    },

    /// Reading the next frame failed: the interface went away, or a file is truncated or
    /// corrupt. The handle is not usable afterwards; reopen it.
    #[error("capture read failed on `{origin}`: {message}")]
    Read {
        /// Interface name or file path.
        origin: String,
        /// libpcap's own text.
        message: String,
    },

    /// libpcap could not enumerate interfaces (`pcap_findalldevs` failed).
    #[error("cannot list capture interfaces: {message}")]
    Interfaces {
        /// libpcap's own text.
        message: String,
    },

    /// A capture file could not be opened: missing, unreadable, or not pcap/pcapng.
    #[error("cannot read capture file {}: {message}", path.display())]
    File {
        /// The file asked for.
        path: PathBuf,
        /// libpcap's own text.
        message: String,
    },
}

/// Kind of an activation failure, decided from libpcap's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenFailure {
    PermissionDenied,
    NoSuchDevice,
    Other,
}

/// Classifies libpcap's `pcap_activate` text.
///
/// libpcap 1.x says "You don't have permission to perform this capture on that device
/// (socket: Operation not permitted)" for `PCAP_ERROR_PERM_DENIED` and "No such device exists"
/// for `PCAP_ERROR_NO_SUCH_DEVICE`; older releases only carry the errno text.
pub(crate) fn classify_open_failure(message: &str) -> OpenFailure {
    let lower = message.to_ascii_lowercase();
    if lower.contains("permission") || lower.contains("operation not permitted") {
        OpenFailure::PermissionDenied
    } else if lower.contains("no such device") {
        OpenFailure::NoSuchDevice
    } else {
        OpenFailure::Other
    }
}

/// The text of a `pcap` error without the crate's "libpcap error: " prefix.
pub(crate) fn pcap_message(error: &pcap::Error) -> String {
    match error {
        pcap::Error::PcapError(text) => text.clone(),
        other => other.to_string(),
    }
}

impl CaptureError {
    /// Maps a failed `pcap_activate` on `interface` to the variant that says what to do.
    pub(crate) fn from_open(interface: &str, error: &pcap::Error) -> CaptureError {
        let message = pcap_message(error);
        let interface = interface.to_owned();
        match classify_open_failure(&message) {
            OpenFailure::PermissionDenied => CaptureError::PermissionDenied { interface, message },
            OpenFailure::NoSuchDevice => CaptureError::NoSuchDevice { interface },
            OpenFailure::Other => CaptureError::Open { interface, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Texts as printed by libpcap 1.10.3 (Debian 12) through tcpdump.
    #[test]
    fn libpcap_permission_text_is_permission_denied() {
        let text = "You don't have permission to perform this capture on that device\n\
                    (socket: Operation not permitted)";
        assert_eq!(classify_open_failure(text), OpenFailure::PermissionDenied);
        assert_eq!(
            classify_open_failure("socket: Operation not permitted"),
            OpenFailure::PermissionDenied
        );
    }

    #[test]
    fn libpcap_missing_device_text_is_no_such_device() {
        assert_eq!(
            classify_open_failure("No such device exists\n(No such device exists)"),
            OpenFailure::NoSuchDevice
        );
        assert_eq!(
            classify_open_failure("SIOCGIFINDEX: No such device"),
            OpenFailure::NoSuchDevice
        );
    }

    #[test]
    fn other_texts_stay_open_errors() {
        assert_eq!(
            classify_open_failure("That device is not up"),
            OpenFailure::Other
        );
    }

    #[test]
    fn permission_message_names_the_fix() {
        let e = CaptureError::from_open(
            "eth0",
            &pcap::Error::PcapError("socket: Operation not permitted".into()),
        );
        let text = e.to_string();
        assert!(matches!(e, CaptureError::PermissionDenied { .. }), "{e:?}");
        for needle in [
            "CAP_NET_RAW",
            "CAP_NET_ADMIN",
            "root",
            "eth0",
            "Operation not permitted",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text:?}");
        }
    }
}
