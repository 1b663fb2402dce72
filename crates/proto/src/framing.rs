//! Line framing: parsing request lines, encoding reply lines, decoding them in the client.
//!
//! Nothing here panics on any input; every function is pure.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    Envelope, ErrorBody, ErrorCode, ErrorReply, ProtoError, ReplyError, Request, MAX_LINE, VERSION,
};

/// Serializes `value` as one JSON line ending in `\n`. Should serialization fail (it cannot
/// for this crate's types), the line is an `internal` error reply instead.
pub fn encode_line(value: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).unwrap_or_else(|e| {
        let reply = error_reply(ErrorCode::Internal, format!("cannot encode reply: {e}"));
        serde_json::to_vec(&reply).unwrap_or_default()
    });
    line.push(b'\n');
    line
}

/// A successful reply around `body`.
pub fn ok<T: Serialize>(body: T) -> Envelope<T> {
    Envelope {
        v: VERSION,
        ok: true,
        body,
    }
}

/// An error reply.
pub fn error_reply(code: ErrorCode, message: impl Into<String>) -> Envelope<ErrorReply> {
    let error = ErrorBody {
        code,
        message: message.into(),
    };
    Envelope {
        v: VERSION,
        ok: false,
        body: ErrorReply { error },
    }
}

/// Parses and validates one request line (a trailing `\n` or `\r\n` is allowed).
///
/// Classification: longer than [`MAX_LINE`] → `line_too_long`; not JSON → `bad_json`; JSON but
/// not an object, or `cmd` missing or not a string → `bad_request`; `cmd` not in
/// [`Request::COMMANDS`] → `unknown_command`; a field of a known command missing or ill-typed
/// → `bad_request`; a well-typed argument with a bad value → `bad_argument`.
pub fn parse_request(line: &[u8]) -> Result<Request, ProtoError> {
    let line = trim_newline(line);
    if line.len() > MAX_LINE {
        return Err(ProtoError::LineTooLong { len: line.len() });
    }
    let value: Value = serde_json::from_slice(line).map_err(ProtoError::BadJson)?;
    check_command(&value)?;
    let request: Request = serde_json::from_value(value)
        .map_err(|e| ProtoError::BadRequest(format!("invalid request: {e}")))?;
    request.validate()?;
    Ok(request)
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn check_command(value: &Value) -> Result<(), ProtoError> {
    let object = value.as_object().ok_or_else(|| {
        ProtoError::BadRequest("a request must be a JSON object with a \"cmd\" field".into())
    })?;
    match object.get("cmd") {
        None => Err(ProtoError::BadRequest("missing field `cmd`".into())),
        Some(Value::String(cmd)) if Request::COMMANDS.contains(&cmd.as_str()) => Ok(()),
        Some(Value::String(cmd)) => Err(ProtoError::UnknownCommand(cmd.clone())),
        Some(_) => Err(ProtoError::BadRequest(
            "field `cmd` must be a string".into(),
        )),
    }
}

/// Decodes one reply line into the body type `T` the request expects; an error reply becomes
/// [`ReplyError::Daemon`]. Unknown fields are ignored.
pub fn decode_reply<T: DeserializeOwned>(line: &[u8]) -> Result<T, ReplyError> {
    let value: Value = serde_json::from_slice(line).map_err(ReplyError::Malformed)?;
    let header = Header::deserialize(&value).map_err(ReplyError::Malformed)?;
    if header.v != u64::from(VERSION) {
        return Err(ReplyError::Version { got: header.v });
    }
    if !header.ok {
        let ErrorReply { error } = serde_json::from_value(value).map_err(ReplyError::Malformed)?;
        return Err(ReplyError::Daemon {
            code: error.code,
            message: error.message,
        });
    }
    serde_json::from_value(value).map_err(ReplyError::Malformed)
}

/// The two fields every reply starts with, read before the body.
#[derive(Deserialize)]
struct Header {
    v: u64,
    ok: bool,
}
