//! Requests: one JSON object per line, tagged by `"cmd"`.
//!
//! Invariant: a [`Request`] returned by [`crate::parse_request`] has passed
//! [`Request::validate`], so [`LookupRequest::query`] and [`WatchRequest::interval_ms`] succeed
//! on it. Unknown fields are ignored (forward compatibility).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// `watch` interval when the request names none.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
/// Smallest `watch` interval a server accepts.
pub const MIN_INTERVAL_MS: u64 = 100;
/// Largest `watch` interval a server accepts.
pub const MAX_INTERVAL_MS: u64 = 60_000;

/// A query, as sent on one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Every known process and the unknown bucket: `{"cmd":"processes"}`.
    Processes,
    /// One process with its command line and connections: `{"cmd":"process","pid":N}`.
    Process {
        /// The process id.
        pid: u32,
    },
    /// Who owns a flow: `{"cmd":"lookup","proto":"tcp","local":"IP:PORT","remote":"IP:PORT"}`.
    Lookup(LookupRequest),
    /// Capture and attribution counters: `{"cmd":"stats"}`.
    Stats,
    /// A stream of rate frames: `{"cmd":"watch","interval_ms":1000}`.
    Watch(WatchRequest),
    /// Counters summed per user, unit, container or network namespace:
    /// `{"cmd":"groups","by":"unit"}`.
    Groups {
        /// What to group by.
        by: crate::GroupBy,
    },
    /// A stream of the captured packets with their owners:
    /// `{"cmd":"capture","pid":N,"filter":"tcp port 80"}` (every argument optional).
    Capture(crate::CaptureRequest),
}

impl Request {
    /// Every `"cmd"` value this version understands; anything else is `unknown_command`.
    pub const COMMANDS: [&'static str; 7] = [
        "processes",
        "process",
        "lookup",
        "stats",
        "watch",
        "groups",
        "capture",
    ];

    /// The `"cmd"` value of this request.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Processes => "processes",
            Request::Process { .. } => "process",
            Request::Lookup(_) => "lookup",
            Request::Stats => "stats",
            Request::Watch(_) => "watch",
            Request::Groups { .. } => "groups",
            Request::Capture(_) => "capture",
        }
    }

    /// Checks the arguments that JSON types cannot: addresses, protocol names, ranges.
    /// Fails with [`ProtoError::BadArgument`].
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Request::Lookup(lookup) => lookup.query().map(drop),
            Request::Watch(watch) => watch.interval_ms().map(drop),
            Request::Capture(capture) => capture.validate(),
            Request::Processes
            | Request::Process { .. }
            | Request::Stats
            | Request::Groups { .. } => Ok(()),
        }
    }
}

/// The `lookup` arguments as they travel: strings, checked by [`LookupRequest::query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    /// One of `tcp`, `udp`, `udplite`, `sctp`, `icmp`, `icmpv6`.
    pub proto: String,
    /// The local end, `IP:PORT` (`[IPv6]:PORT`).
    pub local: String,
    /// The remote end, `IP:PORT` (`[IPv6]:PORT`).
    pub remote: String,
    /// The network namespace (inode of `/proc/<pid>/ns/net`) whose sockets to look in;
    /// absent: the namespace the local address belongs to, as for a captured packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// A checked `lookup`: what the daemon resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupQuery {
    /// The transport protocol.
    pub proto: TransportProto,
    /// The local end.
    pub local: SocketAddr,
    /// The remote end.
    pub remote: SocketAddr,
    /// The namespace named, if any.
    pub netns: Option<u64>,
}

impl LookupRequest {
    /// Builds the wire form of a lookup.
    pub fn new(proto: TransportProto, local: SocketAddr, remote: SocketAddr) -> Self {
        LookupRequest {
            proto: proto.as_str().to_owned(),
            local: local.to_string(),
            remote: remote.to_string(),
            netns: None,
        }
    }

    /// Parses the protocol name and both addresses; [`ProtoError::BadArgument`] names the
    /// field that failed.
    pub fn query(&self) -> Result<LookupQuery, ProtoError> {
        Ok(LookupQuery {
            proto: self.proto.parse()?,
            local: parse_addr("local", &self.local)?,
            remote: parse_addr("remote", &self.remote)?,
            netns: self.netns,
        })
    }
}

fn parse_addr(field: &str, text: &str) -> Result<SocketAddr, ProtoError> {
    text.parse().map_err(|_| {
        ProtoError::BadArgument(format!(
            "{field}: {text:?} is not an address; expected IP:PORT, e.g. 127.0.0.1:80 or [::1]:80"
        ))
    })
}

/// The `watch` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatchRequest {
    /// Milliseconds between frames; [`DEFAULT_INTERVAL_MS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

impl WatchRequest {
    /// The interval to use: the default when absent, [`ProtoError::BadArgument`] when outside
    /// [`MIN_INTERVAL_MS`]`..=`[`MAX_INTERVAL_MS`].
    pub fn interval_ms(&self) -> Result<u64, ProtoError> {
        let ms = self.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
        if (MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) {
            Ok(ms)
        } else {
            Err(ProtoError::BadArgument(format!(
                "interval_ms {ms} is out of range {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}"
            )))
        }
    }

    /// [`WatchRequest::interval_ms`] as a [`Duration`].
    pub fn interval(&self) -> Result<Duration, ProtoError> {
        self.interval_ms().map(Duration::from_millis)
    }
}

/// Transport protocols a `lookup` may name. Parsing is ASCII case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportProto {
    /// `tcp` (IP protocol 6).
    Tcp,
    /// `udp` (17).
    Udp,
    /// `udplite` (136).
    UdpLite,
    /// `sctp` (132).
    Sctp,
    /// `icmp` (1).
    Icmp,
    /// `icmpv6` (58).
    Icmpv6,
}

impl TransportProto {
    /// Every protocol, in the order the protocol documents them.
    pub const ALL: [TransportProto; 6] = [
        TransportProto::Tcp,
        TransportProto::Udp,
        TransportProto::UdpLite,
        TransportProto::Sctp,
        TransportProto::Icmp,
        TransportProto::Icmpv6,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportProto::Tcp => "tcp",
            TransportProto::Udp => "udp",
            TransportProto::UdpLite => "udplite",
            TransportProto::Sctp => "sctp",
            TransportProto::Icmp => "icmp",
            TransportProto::Icmpv6 => "icmpv6",
        }
    }

    /// The IANA IP protocol number.
    pub fn ip_number(self) -> u8 {
        match self {
            TransportProto::Tcp => 6,
            TransportProto::Udp => 17,
            TransportProto::UdpLite => 136,
            TransportProto::Sctp => 132,
            TransportProto::Icmp => 1,
            TransportProto::Icmpv6 => 58,
        }
    }
}

impl FromStr for TransportProto {
    type Err = ProtoError;

    fn from_str(text: &str) -> Result<Self, ProtoError> {
        TransportProto::ALL
            .into_iter()
            .find(|proto| proto.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                ProtoError::BadArgument(format!(
                    "proto: unknown protocol {text:?}; expected one of tcp, udp, udplite, sctp, icmp, icmpv6"
                ))
            })
    }
}

impl fmt::Display for TransportProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
