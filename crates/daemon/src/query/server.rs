//! The query server: newline-delimited JSON on a unix socket.
//!
//! Invariants: each connection is its own task, so a slow or hostile client costs only its
//! own connection, and every connection is bounded (see [`crate::query::clients`] for the counts):
//! - who may see what is fixed at accept from the kernel's credentials ([`crate::query::access`]);
//! - a client beyond the server's or its user's limit gets `too_many_clients` and is closed;
//! - a connection with no request for the idle timeout, or with a line left half-sent for
//!   the line timeout, gets `timeout` and is closed;
//! - a line over `MAX_LINE` bytes gets a `line_too_long` reply and the connection is closed;
//! - a client that does not read its replies within `WRITE_TIMEOUT` is disconnected;
//! - a failing `accept` (out of fds) is retried after a growing pause and logged at most
//!   once per 10 s.
//!
//! Handlers never block the capture thread: they hold the ledger lock only to copy counters
//! out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_proto::{self as proto, ErrorCode, ProtoError, Request};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::query::access::{peer_credentials, SocketGroup, Viewer};
use crate::query::clients::{
    fd_budget, fd_usage, AcceptErrors, Clients, LogLimit, Slot, FD_RESERVE, LINE_TIMEOUT,
};
use crate::query::{capture, queries};
use crate::state::DaemonState;

/// How long a reply may wait for the client to read it before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may wait for a request: between requests, and within one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub idle: Duration,
    pub line: Duration,
}

impl Timeouts {
    /// `idle` between requests; a line gets [`LINE_TIMEOUT`], or `idle` if that is shorter.
    pub fn new(idle: Duration) -> Timeouts {
        Timeouts {
            idle,
            line: LINE_TIMEOUT.min(idle),
        }
    }
}

/// What the server needs besides the shared state: the access rule and the bounds.
#[derive(Debug, Clone)]
pub struct Access {
    /// Members see every process; `None` when no such group exists (then only root does).
    pub group: Option<SocketGroup>,
    pub clients: Arc<Clients>,
    pub timeouts: Timeouts,
}

impl Access {
    /// The access rule and bounds for this process: `max_clients`, lowered (warned once,
    /// with the fix) so that [`crate::query::clients::FD_RESERVE`] fds stay free beyond those open
    /// now. Call it once everything else has opened its fds.
    pub fn new(group: Option<SocketGroup>, max_clients: usize, timeouts: Timeouts) -> Access {
        let limit = match fd_usage() {
            Ok((soft_limit, open)) => {
                let limit = fd_budget(max_clients, soft_limit, open);
                if limit < max_clients {
                    warn!(
                        max_clients,
                        client_limit = limit,
                        nofile = soft_limit,
                        open_fds = open,
                        reserve = FD_RESERVE,
                        "the fd limit leaves room for fewer query clients than configured; raise it (LimitNOFILE= in the unit, ulimit -n)"
                    );
                }
                limit
            }
            Err(error) => {
                warn!(error = %error, "cannot read the fd limit; serving max_clients without checking it");
                max_clients
            }
        };
        Access {
            group,
            clients: Clients::new(limit),
            timeouts,
        }
    }
}

/// Accepts connections until `shutdown` is cancelled; connection tasks are tracked by
/// `tasks` so shutdown can wait for them.
pub async fn run(
    listener: UnixListener,
    shared: Arc<DaemonState>,
    access: Access,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let mut errors = AcceptErrors::default();
    let mut refusals = LogLimit::default();
    loop {
        let Some(stream) = accept(&listener, &mut errors, &access, &shutdown).await else {
            return;
        };
        errors.succeeded();
        match admit(&stream, &access) {
            Ok((viewer, slot)) => {
                let conn = Connection::new(stream, shared.clone(), &access, viewer, slot);
                tasks.spawn(conn.serve(shutdown.clone()));
            }
            Err((code, message)) => {
                if let Some(suppressed) = refusals.record(Instant::now()) {
                    info!(reason = %message, suppressed, "query client refused");
                }
                refuse(&stream, code, message);
            }
        }
    }
}

/// The next connection; after a failed accept, a pause that grows with each failure in a row
/// (fd exhaustion must not spin). `None` once `shutdown` is cancelled.
async fn accept(
    listener: &UnixListener,
    errors: &mut AcceptErrors,
    access: &Access,
    shutdown: &CancellationToken,
) -> Option<UnixStream> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => return Some(stream),
            Err(error) => {
                access.clients.count_accept_error();
                if let Some(suppressed) = errors.log.record(Instant::now()) {
                    warn!(error = %error, suppressed, "accept failed; retrying (further failures are counted in stats, logged at most every 10 s)");
                }
                let pause = errors.backoff();
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Reads the client's credentials and takes a slot for it, or says why not.
fn admit(stream: &UnixStream, access: &Access) -> Result<(Viewer, Slot), (ErrorCode, String)> {
    let credentials = peer_credentials(stream).map_err(|e| {
        (
            ErrorCode::Internal,
            format!("cannot read the credentials of this connection: {e}"),
        )
    })?;
    let viewer = credentials.viewer(access.group.as_ref());
    let slot = access
        .clients
        .admit(viewer)
        .map_err(|refusal| (ErrorCode::TooManyClients, refusal.to_string()))?;
    Ok((viewer, slot))
}

/// Tells a client why it is turned away, without waiting: the socket is new, so its send
/// buffer has room for one short line. The connection closes when `stream` is dropped.
fn refuse(stream: &UnixStream, code: ErrorCode, message: String) {
    let line = proto::encode_line(&proto::error_reply(code, message));
    let _ = stream.try_write(&line);
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
    #[error("no request within the idle timeout")]
    Idle,
    #[error("a request line was left unfinished")]
    HalfLine,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One client: its stream, what it may see, and its slot (held until the task ends).
struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    shared: Arc<DaemonState>,
    clients: Arc<Clients>,
    viewer: Viewer,
    timeouts: Timeouts,
    line: Vec<u8>,
    _slot: Slot,
}

impl Connection {
    fn new(
        stream: UnixStream,
        shared: Arc<DaemonState>,
        access: &Access,
        viewer: Viewer,
        slot: Slot,
    ) -> Connection {
        let (read, write) = stream.into_split();
        Connection {
            reader: BufReader::new(read),
            writer: write,
            shared,
            clients: access.clients.clone(),
            viewer,
            timeouts: access.timeouts,
            line: Vec::new(),
            _slot: slot,
        }
    }

    async fn serve(mut self, shutdown: CancellationToken) {
        let result = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            result = self.serve_lines() => result,
        };
        if let Err(reason) = result {
            debug!(reason = %reason, viewer = ?self.viewer, "query connection closed");
        }
    }

    async fn serve_lines(&mut self) -> Result<(), Closed> {
        loop {
            match read_request(&mut self.reader, &mut self.line, self.timeouts).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(closed) => return self.close_with_reply(closed).await,
            }
            let request = proto::parse_request(&self.line);
            self.line.clear();
            match request {
                Ok(Request::Watch(w)) => {
                    let interval = w.interval().unwrap_or(Duration::from_secs(1));
                    return self.watch(interval).await;
                }
                Ok(Request::Capture(c)) => match self.start_capture(&c) {
                    Ok((stream, header)) => {
                        self.send(&header).await?;
                        return self.capture(stream).await;
                    }
                    Err(reply) => self.send(&reply).await?,
                },
                Ok(request) => {
                    let reply = answer(&self.shared, &request, self.viewer, &self.clients);
                    self.send(&reply).await?;
                }
                Err(error) => self.send(&proto::encode_line(&error.to_reply())).await?,
            }
        }
    }

    /// Counts why the connection ends and, where the client can act on it, tells it.
    async fn close_with_reply(&mut self, closed: Closed) -> Result<(), Closed> {
        let reply = match &closed {
            Closed::TooLong => {
                self.clients.count_too_long();
                ProtoError::LineTooLong {
                    len: self.line.len(),
                }
                .to_reply()
            }
            Closed::Idle | Closed::HalfLine => {
                self.clients.count_timeout();
                proto::error_reply(ErrorCode::Timeout, self.timeout_message(&closed))
            }
            _ => return Err(closed),
        };
        let _ = self.send(&proto::encode_line(&reply)).await;
        Err(closed)
    }

    fn timeout_message(&self, closed: &Closed) -> String {
        let (what, after) = match closed {
            Closed::HalfLine => ("a request line was left unfinished", self.timeouts.line),
            _ => ("no request arrived", self.timeouts.idle),
        };
        format!(
            "{what} for {}; closing the connection (reconnect to send more)",
            humantime::format_duration(after)
        )
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
                _ = ticker.tick() => {
                    let frame = queries::watch_frame(
                        &self.shared,
                        interval.as_millis() as u64,
                        self.viewer,
                    );
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

impl Connection {
    /// The client's stream state and the stream's first line, or the error reply (a filter
    /// that does not compile).
    fn start_capture(
        &self,
        request: &proto::CaptureRequest,
    ) -> Result<(capture::Stream, Vec<u8>), Vec<u8>> {
        let (dlt, snaplen, interface, hold_for) = {
            let info = self.shared.capture_info();
            (
                info.dlt,
                info.snaplen,
                info.origin.clone(),
                info.pending_timeout,
            )
        };
        let stream = capture::Stream::new(request, self.viewer, dlt, hold_for).map_err(|e| {
            proto::encode_line(&proto::error_reply(
                ErrorCode::BadArgument,
                format!("filter: {e}"),
            ))
        })?;
        let header = proto::CaptureHeader {
            link_type: dlt,
            snaplen,
            interface,
            filtered_to_uid: match self.viewer {
                Viewer::Own { uid } => Some(uid),
                Viewer::Full => None,
            },
        };
        let first = proto::encode_line(&proto::ok(proto::CaptureStart { capture: header }));
        Ok((stream, first))
    }

    /// Streams tapped frames until the client leaves (EOF, an error, or it stops reading).
    /// Frames that arrive together go out in one write; frames waiting for their owners
    /// are looked at again every [`CAPTURE_TICK`].
    async fn capture(&mut self, mut stream: capture::Stream) -> Result<(), Closed> {
        use tokio::sync::broadcast::error::RecvError;
        let mut listener = self.shared.tap().listen();
        let mut ticker = tokio::time::interval(CAPTURE_TICK);
        let mut scratch = [0u8; 512];
        let mut out = Vec::new();
        loop {
            tokio::select! {
                received = listener.receiver.recv() => match received {
                    Ok(tapped) => {
                        let now = Instant::now();
                        stream.push(&self.shared, tapped, now, &mut out);
                        while out.len() < CAPTURE_WRITE {
                            match listener.receiver.try_recv() {
                                Ok(tapped) => stream.push(&self.shared, tapped, now, &mut out),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(RecvError::Lagged(lost)) => capture::lost_line(lost, &mut out),
                    Err(RecvError::Closed) => return Ok(()),
                },
                _ = ticker.tick(), if stream.held() > 0 => {
                    stream.release(&self.shared, Instant::now(), &mut out);
                }
                read = self.reader.read(&mut scratch) => match read {
                    Ok(0) | Err(_) => return Err(Closed::Gone),
                    Ok(_) => {} // anything sent during a capture is ignored
                },
            }
            if !out.is_empty() {
                self.send(&out).await?;
                out.clear();
            }
        }
    }
}

/// How often a `capture` stream looks again at frames waiting for their owners.
const CAPTURE_TICK: Duration = Duration::from_millis(100);
/// Bytes of `capture` lines gathered before one write.
const CAPTURE_WRITE: usize = 64 * 1024;

/// Waits up to `timeouts.idle` for the first byte of a request, then up to `timeouts.line`
/// for the rest of its line. Returns the line's length, 0 at EOF.
async fn read_request<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    timeouts: Timeouts,
) -> Result<usize, Closed> {
    match tokio::time::timeout(timeouts.idle, reader.fill_buf()).await {
        Err(_) => return Err(Closed::Idle),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok([])) => return Ok(0),
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout(timeouts.line, read_line(reader, buf)).await {
        Err(_) => Err(Closed::HalfLine),
        Ok(read) => read,
    }
}

/// Reads one line into `buf` (without growing past `MAX_LINE` + 1 bytes). Returns the
/// number of bytes read, 0 at EOF.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
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

/// The reply line for a one-shot request, as `viewer` may see it.
pub fn answer(
    shared: &DaemonState,
    request: &Request,
    viewer: Viewer,
    clients: &Clients,
) -> Vec<u8> {
    let reply = match request {
        Request::Processes => queries::processes(shared, viewer),
        Request::Process { pid } => queries::process(shared, *pid, viewer),
        Request::Lookup(l) => match l.query() {
            Ok(q) => queries::lookup(shared, &q, viewer),
            Err(e) => Err((e.code(), e.to_string())),
        },
        Request::Stats => queries::stats(shared, Instant::now(), clients.snapshot()),
        Request::Groups { by } => queries::groups(shared, *by, viewer),
        Request::Watch(_) => Err((ErrorCode::Internal, "watch is a stream".into())),
        Request::Capture(_) => Err((ErrorCode::Internal, "capture is a stream".into())),
    };
    reply.unwrap_or_else(|(code, message)| proto::encode_line(&proto::error_reply(code, message)))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use pidcap_core::SocketTable;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn access(limit: usize) -> Access {
        Access {
            group: None,
            clients: Clients::new(limit),
            timeouts: Timeouts::new(IDLE),
        }
    }

    /// A connection served for a restricted viewer, and the client's end of it.
    fn served(access: &Access) -> (tokio::task::JoinHandle<()>, BufReader<UnixStream>) {
        let (server, client) = UnixStream::pair().unwrap();
        let shared = DaemonState::new(SocketTable::default(), Instant::now());
        let viewer = Viewer::Own { uid: 1000 };
        let slot = access.clients.admit(viewer).unwrap();
        let conn = Connection::new(server, shared, access, viewer, slot);
        let task = tokio::spawn(conn.serve(CancellationToken::new()));
        (task, BufReader::new(client))
    }

    async fn reply(client: &mut BufReader<UnixStream>) -> serde_json::Value {
        let mut line = String::new();
        client.read_line(&mut line).await.unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    #[test]
    fn a_line_gets_ten_seconds_or_the_idle_timeout_if_shorter() {
        assert_eq!(Timeouts::new(IDLE).line, LINE_TIMEOUT);
        let short = Timeouts::new(Duration::from_secs(1));
        assert_eq!(short.line, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_is_told_and_closed_after_the_idle_timeout() {
        let access = access(4);
        let (task, mut client) = served(&access);
        let started = tokio::time::Instant::now();
        let reply = reply(&mut client).await;
        assert_eq!(reply["error"]["code"], "timeout", "{reply}");
        assert!(started.elapsed() >= IDLE, "closed before the idle timeout");
        let mut rest = String::new();
        assert_eq!(client.read_line(&mut rest).await.unwrap(), 0, "then EOF");
        task.await.unwrap();
        let stats = access.clients.snapshot();
        assert_eq!(
            (stats.clients_timed_out, stats.clients),
            (1, 0),
            "slot freed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_sent_line_is_closed_after_the_line_timeout_not_held() {
        let access = access(4);
        let (task, mut client) = served(&access);
        client.get_mut().write_all(b"{\"cmd\":\"st").await.unwrap();
        let started = tokio::time::Instant::now();
        let reply = reply(&mut client).await;
        assert_eq!(reply["error"]["code"], "timeout", "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains("unfinished"), "{message}");
        let waited = started.elapsed();
        assert!(waited >= LINE_TIMEOUT && waited < IDLE, "{waited:?}");
        task.await.unwrap();
        assert_eq!(access.clients.snapshot().clients_timed_out, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_asking_is_never_idle() {
        let access = access(4);
        let (_task, mut client) = served(&access);
        for _ in 0..3 {
            tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
            client
                .get_mut()
                .write_all(b"{\"cmd\":\"stats\"}\n")
                .await
                .unwrap();
            let reply = reply(&mut client).await;
            assert_eq!(reply["ok"], true, "{reply}");
            assert_eq!(reply["stats"]["query_server"]["clients"], 1, "{reply}");
        }
        assert_eq!(access.clients.snapshot().clients_timed_out, 0);
    }

    #[tokio::test]
    async fn a_restricted_viewer_gets_a_list_marked_as_its_own() {
        let access = access(4);
        let (_task, mut client) = served(&access);
        client
            .get_mut()
            .write_all(b"{\"cmd\":\"processes\"}\n")
            .await
            .unwrap();
        let reply = reply(&mut client).await;
        assert_eq!(reply["filtered_to_uid"], 1000, "{reply}");
    }

    #[tokio::test]
    async fn a_client_over_the_limit_is_refused_with_a_reason() {
        let (server, client) = UnixStream::pair().unwrap();
        refuse(
            &server,
            ErrorCode::TooManyClients,
            crate::query::clients::Refusal::Server { limit: 2 }.to_string(),
        );
        drop(server);
        let mut client = BufReader::new(client);
        let reply = reply(&mut client).await;
        assert_eq!(reply["error"]["code"], "too_many_clients", "{reply}");
    }
}
