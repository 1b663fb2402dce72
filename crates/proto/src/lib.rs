#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod capture;
mod error;
mod framing;
mod reply;
mod request;

pub use capture::{
    CaptureHeader, CaptureLine, CaptureLost, CaptureRequest, CaptureStart, CapturedPacket,
    CapturedProcess, PacketOwner, MAX_CAPTURE_FILTER, MAX_SNAPLEN,
};
pub use error::{ErrorCode, ProtoError, ReplyError};
pub use framing::{decode_reply, encode_line, error_reply, ok, parse_request};
pub use reply::{
    Bounds, Connection, ContainerRef, Envelope, ErrorBody, ErrorReply, GroupBy, GroupRow,
    GroupsReply, LookupReply, MatchBytes, NamespaceCapture, Owner, PlacementFields, ProcessDetail,
    ProcessFacts, ProcessReply, ProcessRow, ProcessSide, ProcessesReply, QueryServer, RateRow,
    Stats, StatsReply, ThreadHealth, UnknownReasons, UnknownRow, Usage, WatchFrame, MATCH_EXACT,
    MATCH_RECENT, MATCH_WILDCARD, UNKNOWN_COMM,
};
pub use request::{
    LookupQuery, LookupRequest, Request, TransportProto, WatchRequest, DEFAULT_INTERVAL_MS,
    MAX_INTERVAL_MS, MIN_INTERVAL_MS,
};

/// Protocol version carried as `"v"` in every response.
pub const VERSION: u32 = 1;

/// Longest request line (without its newline) a server accepts; a longer line costs the client
/// its connection after a `line_too_long` reply.
pub const MAX_LINE: usize = 64 * 1024;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/pidcap/pidcap.sock";

#[cfg(test)]
mod tests;
