//! The `capture` stream: the packets the daemon attributes, each with its owners.
//!
//! A `{"cmd":"capture",…}` request is answered by one [`CaptureStart`] line, then by
//! [`CaptureLine`]s until the client leaves: a [`CapturedProcess`] before the first packet
//! that names it, a [`CapturedPacket`] per packet, and a [`CaptureLost`] whenever packets
//! were dropped because this client read too slowly (the capture itself never waits).
//!
//! Invariants: every pid a packet names was described by a `process` line earlier in the same
//! stream (pids are only unique together with `start_time`; a later `process` line with the
//! same pid and another `start_time` replaces the earlier one); `data` is the captured frame
//! (at most the daemon's snaplen), base64 (standard alphabet, padded).

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{ContainerRef, ProtoError};

/// The snaplen announced for a replayed file's frames (libpcap's largest).
pub const MAX_SNAPLEN: u32 = 262_144;

/// Most bytes of a BPF expression a `capture` request may carry.
pub const MAX_CAPTURE_FILTER: usize = 4096;

/// The `capture` arguments: which packets to stream. Every filter given must match (a packet
/// matches a process filter when either of its owners, sender or receiver, matches).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CaptureRequest {
    /// Only packets to or from this pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Only packets to or from processes with this `comm` (exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Only packets to or from processes of this systemd unit (exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Only packets to or from processes of this container: its id (or a prefix of at least
    /// 4 characters) or its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A BPF expression (tcpdump syntax) applied to each frame, as on the daemon's capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

impl CaptureRequest {
    /// Checks what JSON types cannot: lengths and empty strings.
    pub fn validate(&self) -> Result<(), ProtoError> {
        for (name, value) in [
            ("comm", &self.comm),
            ("unit", &self.unit),
            ("container", &self.container),
        ] {
            if value.as_deref() == Some("") {
                return Err(ProtoError::BadArgument(format!("{name} must not be empty")));
            }
        }
        if let Some(c) = &self.container {
            if c.len() < 4 {
                return Err(ProtoError::BadArgument(format!(
                    "container {c:?} is too short: give its name or at least 4 characters of its id"
                )));
            }
        }
        match &self.filter {
            Some(f) if f.len() > MAX_CAPTURE_FILTER => Err(ProtoError::BadArgument(format!(
                "filter is {} bytes; at most {MAX_CAPTURE_FILTER}",
                f.len()
            ))),
            _ => Ok(()),
        }
    }
}

/// The first line of a `capture` stream: `{"v":1,"ok":true,"capture":{…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStart {
    /// What the packets that follow are.
    pub capture: CaptureHeader,
}

/// The capture the packets come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureHeader {
    /// The frames' link type (LINKTYPE_ number: 1 Ethernet, 276 LINUX_SLL2, …).
    pub link_type: i32,
    /// Most bytes kept of each frame.
    pub snaplen: u32,
    /// The daemon's capture: an interface name, `any`, or a replayed file.
    pub interface: String,
    /// Set when the stream carries only packets of the caller's own processes (this uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered_to_uid: Option<u32>,
}

/// Every line after [`CaptureStart`]: `{"v":1,"ok":true,"packet":{…}}`, `…"process":{…}}` or
/// `…"lost":{…}}`. Exactly one field is set (the constructors keep it so); a reader should
/// ignore a line with none, which a newer daemon may send.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureLine {
    /// A process named by the packets after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<CapturedProcess>,
    /// One captured frame and its owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<CapturedPacket>,
    /// Packets this client missed since the previous `lost` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<CaptureLost>,
}

impl CaptureLine {
    /// A `process` line.
    pub fn process(process: CapturedProcess) -> Self {
        CaptureLine {
            process: Some(process),
            ..CaptureLine::default()
        }
    }

    /// A `packet` line.
    pub fn packet(packet: CapturedPacket) -> Self {
        CaptureLine {
            packet: Some(packet),
            ..CaptureLine::default()
        }
    }

    /// A `lost` line.
    pub fn lost(packets: u64) -> Self {
        CaptureLine {
            lost: Some(CaptureLost { packets }),
            ..CaptureLine::default()
        }
    }
}

/// Who a process is, sent once per stream before its first packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedProcess {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks after boot (with `pid`, the identity).
    pub start_time: u64,
    /// Process name.
    pub comm: String,
    /// Executable path, when readable.
    #[serde(default)]
    pub exe: Option<String>,
    /// Real uid.
    pub uid: u32,
    /// systemd unit.
    #[serde(default)]
    pub unit: Option<String>,
    /// Container.
    #[serde(default)]
    pub container: Option<ContainerRef>,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedPacket {
    /// Capture time, µs since the Unix epoch.
    pub ts_us: u64,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// The captured bytes (at most the snaplen), base64.
    pub data: String,
    /// The sending process, when the packet's source is local.
    #[serde(default)]
    pub tx: Option<PacketOwner>,
    /// The receiving process, when the packet's destination is local.
    #[serde(default)]
    pub rx: Option<PacketOwner>,
    /// Why the packet has no owner at all: `foreign` (neither end local), `copy` (a copy of a
    /// packet already counted on another interface), `not_ip`, `malformed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl CapturedPacket {
    /// Encodes `frame` as [`CapturedPacket::data`].
    pub fn encode_data(frame: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(frame)
    }

    /// The captured bytes; [`ProtoError::BadArgument`] when `data` is not base64.
    pub fn bytes(&self) -> Result<Vec<u8>, ProtoError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.data)
            .map_err(|e| ProtoError::BadArgument(format!("packet data is not base64: {e}")))
    }
}

/// One end's owner: a process (`pid`, `start_time`, `matched` as in counting rule 3) or
/// `unknown` with its reason (as in `stats.unknown_reasons`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PacketOwner {
    /// The process, when one was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its start time (ticks after boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// How it was found: `exact`, `wildcard`, `recent`, `late` (found by a refresh after
    /// the packet was captured) or `packet_sender` (no socket's: the process that sent the
    /// frame through a packet socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    /// Why none was found (as in `stats.unknown_reasons`), or `hidden`: another user's
    /// process, not shown to a caller outside the socket group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

/// Packets dropped for this client (it read too slowly), since the previous such line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureLost {
    /// How many.
    pub packets: u64,
}
