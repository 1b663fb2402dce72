//! The query server: newline-delimited JSON on a unix socket.
//!
//! Invariants: each connection is its own task, so a slow or hostile client costs only its
//! own connection: a line over `MAX_LINE` bytes gets a `line_too_long` reply and the
//! connection is closed; a client that does not read its replies within `WRITE_TIMEOUT` is
//! disconnected. Handlers never block the capture thread: they hold the ledger lock only to
//! copy counters out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_proto::{self as proto, ErrorCode, ProtoError, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::queries;
use crate::state::Shared;

/// How long a reply may wait for the client to read it before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` is cancelled; connection tasks are tracked by
/// `tasks` so shutdown can wait for them.
pub async fn run(
    listener: UnixListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn = Connection::new(stream, shared.clone(), shutdown.clone());
        tasks.spawn(conn.serve());
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("client went away")]
    Gone,
    #[error("client did not read its replies in time")]
    Stalled,
    #[error("request line too long")]
    TooLong,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    line: Vec<u8>,
}

impl Connection {
    fn new(stream: UnixStream, shared: Arc<Shared>, shutdown: CancellationToken) -> Connection {
        let (read, write) = stream.into_split();
        Connection {
            reader: BufReader::new(read),
            writer: write,
            shared,
            shutdown,
            line: Vec::new(),
        }
    }

    async fn serve(mut self) {
        let result = self.serve_lines().await;
        if let Err(reason) = result {
            debug!(reason = %reason, "query connection closed");
        }
    }

    async fn serve_lines(&mut self) -> Result<(), Closed> {
        loop {
            let got = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                got = read_line(&mut self.reader, &mut self.line) => got,
            };
            match got {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(Closed::TooLong) => {
                    let reply = proto::encode_line(
                        &ProtoError::LineTooLong {
                            len: self.line.len(),
                        }
                        .to_reply(),
                    );
                    let _ = self.send(&reply).await;
                    return Err(Closed::TooLong);
                }
                Err(e) => return Err(e),
            }
            let request = proto::parse_request(&self.line);
            self.line.clear();
            match request {
                Ok(Request::Watch(w)) => {
                    let interval = w.interval().unwrap_or(Duration::from_secs(1));
                    return self.watch(interval).await;
                }
                Ok(request) => {
                    let reply = answer(&self.shared, &request);
                    self.send(&reply).await?;
                }
                Err(error) => self.send(&proto::encode_line(&error.to_reply())).await?,
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(bytes)).await {
            Ok(result) => result.map_err(Closed::from),
            Err(_) => Err(Closed::Stalled),
        }
    }

    /// Streams frames until the client leaves (EOF, an error, or it stops reading).
    async fn watch(&mut self, interval: Duration) -> Result<(), Closed> {
        let mut ticker = tokio::time::interval(interval);
        let mut scratch = [0u8; 512];
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {
                    let frame = queries::watch_frame(&self.shared, interval.as_millis() as u64);
                    self.send(&frame).await?;
                }
                read = self.reader.read(&mut scratch) => match read {
                    Ok(0) | Err(_) => return Err(Closed::Gone),
                    Ok(_) => {} // anything sent during a watch is ignored
                },
            }
        }
    }
}

/// Reads one line into `buf` (without growing past `MAX_LINE` + 1 bytes). Returns the
/// number of bytes read, 0 at EOF.
async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> Result<usize, Closed> {
    let limit = (proto::MAX_LINE + 2) as u64;
    let mut limited = (&mut *reader).take(limit);
    let n = limited.read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(0);
    }
    if !buf.ends_with(b"\n") && n as u64 >= limit {
        return Err(Closed::TooLong);
    }
    if buf.len() > proto::MAX_LINE + 1 {
        return Err(Closed::TooLong);
    }
    Ok(n)
}

/// The reply line for a one-shot request.
pub fn answer(shared: &Shared, request: &Request) -> Vec<u8> {
    let reply = match request {
        Request::Processes => queries::processes(shared),
        Request::Process { pid } => queries::process(shared, *pid),
        Request::Lookup(l) => match l.query() {
            Ok(q) => queries::lookup(shared, &q),
            Err(e) => Err((e.code(), e.to_string())),
        },
        Request::Stats => queries::stats(shared, Instant::now()),
        Request::Watch(_) => Err((ErrorCode::Internal, "watch is a stream".into())),
    };
    reply.unwrap_or_else(|(code, message)| proto::encode_line(&proto::error_reply(code, message)))
}
