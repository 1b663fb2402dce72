//! Error codes on the wire, and the errors of parsing requests and decoding replies.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{MAX_LINE, VERSION};

/// The `"code"` of an error reply. Serialized in snake_case; a code this version does not know
/// (from a newer daemon) deserializes to [`ErrorCode::Other`] with its text kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ErrorCode {
    /// The line is not JSON.
    BadJson,
    /// JSON, but not a valid request: not an object, `cmd` missing, a field missing or
    /// ill-typed.
    BadRequest,
    /// `cmd` names no command this server knows.
    UnknownCommand,
    /// A well-typed argument with a bad value: unparsable address, unknown proto, interval
    /// out of range.
    BadArgument,
    /// The thing asked about does not exist (e.g. no such pid).
    NotFound,
    /// The request line exceeds [`MAX_LINE`]; the server closes the connection after replying.
    LineTooLong,
    /// The server failed; not the client's fault.
    Internal,
    /// The server, or the caller's user, already has as many clients as allowed; the server
    /// closes the connection after replying. Try again later.
    TooManyClients,
    /// No complete request line arrived in time (the connection sat idle, or a line was left
    /// half-sent); the server closes the connection after replying.
    Timeout,
    /// A code this version does not know.
    Other(String),
}

impl ErrorCode {
    /// The wire text of this code.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::BadArgument => "bad_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::Internal => "internal",
            ErrorCode::TooManyClients => "too_many_clients",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Other(code) => code,
        }
    }
}

impl From<String> for ErrorCode {
    fn from(code: String) -> Self {
        match code.as_str() {
            "bad_json" => ErrorCode::BadJson,
            "bad_request" => ErrorCode::BadRequest,
            "unknown_command" => ErrorCode::UnknownCommand,
            "bad_argument" => ErrorCode::BadArgument,
            "not_found" => ErrorCode::NotFound,
            "line_too_long" => ErrorCode::LineTooLong,
            "internal" => ErrorCode::Internal,
            "too_many_clients" => ErrorCode::TooManyClients,
            "timeout" => ErrorCode::Timeout,
            _ => ErrorCode::Other(code),
        }
    }
}

impl From<ErrorCode> for String {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Other(code) => code,
            known => known.as_str().to_owned(),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request line was refused. The server answers it with
/// [`ProtoError::to_reply`] and, for [`ProtoError::LineTooLong`] only, then closes the
/// connection; every other error leaves the connection usable.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The line is longer than [`MAX_LINE`] bytes.
    #[error("request line of {len} bytes exceeds the limit of {MAX_LINE} bytes")]
    LineTooLong {
        /// The length seen (at least `MAX_LINE + 1`).
        len: usize,
    },
    /// The line is not JSON (or not UTF-8).
    #[error("request is not JSON: {0}")]
    BadJson(serde_json::Error),
    /// JSON, but not a request of this protocol.
    #[error("{0}")]
    BadRequest(String),
    /// `cmd` names no known command.
    #[error("unknown command {0:?}; known commands: processes, process, lookup, stats, watch")]
    UnknownCommand(String),
    /// An argument has a value the server cannot use.
    #[error("{0}")]
    BadArgument(String),
}

impl ProtoError {
    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::LineTooLong { .. } => ErrorCode::LineTooLong,
            ProtoError::BadJson(_) => ErrorCode::BadJson,
            ProtoError::BadRequest(_) => ErrorCode::BadRequest,
            ProtoError::UnknownCommand(_) => ErrorCode::UnknownCommand,
            ProtoError::BadArgument(_) => ErrorCode::BadArgument,
        }
    }

    /// The error reply to send for this error.
    pub fn to_reply(&self) -> crate::Envelope<crate::ErrorReply> {
        crate::error_reply(self.code(), self.to_string())
    }
}

/// Why a client could not use a reply line.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The daemon answered with an error reply.
    #[error("{code}: {message}")]
    Daemon {
        /// The error code.
        code: ErrorCode,
        /// The daemon's explanation.
        message: String,
    },
    /// The daemon speaks another protocol version.
    #[error("the daemon speaks protocol version {got}, this client speaks version {VERSION}")]
    Version {
        /// The `"v"` the daemon sent.
        got: u64,
    },
    /// The line is not a reply of this protocol.
    #[error("malformed reply from the daemon: {0}")]
    Malformed(#[source] serde_json::Error),
}
