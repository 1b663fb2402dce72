//! The metrics listener: `GET /metrics` (and `HEAD`), a short text on `/`, 404 elsewhere.
//!
//! Hand-written rather than hyper: a scrape is one GET whose only inputs are the request line
//! and the `Accept` header, answered with `Connection: close`. Reading at most
//! [`MAX_REQUEST`] bytes of head, splitting one line and looking for one header is a much
//! smaller surface than an HTTP stack (keep-alive, pipelining, chunked bodies, upgrades)
//! that this endpoint would have to switch off or bound one by one, and it adds no
//! dependency to the daemon. Prometheus opens a connection per scrape happily.
//!
//! Invariants (every connection is bounded):
//! - at most [`MAX_SCRAPES`] connections are served at once; one more gets `503` and is
//!   closed without waiting (a non-blocking write to a fresh socket);
//! - a request head must arrive within [`REQUEST_TIMEOUT`] (else `408`) and fit in
//!   [`MAX_REQUEST`] bytes (else `431`); a body is never read;
//! - a reply not taken by the client within [`WRITE_TIMEOUT`] is abandoned;
//! - one request per connection; the connection is closed after the reply;
//! - the exposition is built on a blocking-pool thread, so rendering never sits on a tokio
//!   worker that serves the query socket;
//! - a failing `accept` (out of fds) pauses with a growing backoff, logged at most every 10 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::render::Format;
use crate::metrics::Exporter;
use crate::query::clients::AcceptErrors;

/// Connections served at once.
pub const MAX_SCRAPES: usize = 4;
/// The longest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reply may wait for the client to read it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const INDEX: &str = "pidcapd: Prometheus metrics are at /metrics\n";

/// Accepts scrapes until `shutdown` is cancelled; connection tasks are tracked by `tasks`.
pub async fn run(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                if let Some(suppressed) = errors.log.record(Instant::now()) {
                    warn!(error = %error, suppressed, "metrics accept failed; retrying");
                }
                let pause = errors.backoff();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        errors.succeeded();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tasks.spawn(serve(stream, exporter.clone(), slot, shutdown.clone()));
            }
            Err(_) => {
                let _ = stream.try_write(&response(
                    503,
                    "text/plain",
                    b"too many scrapes at once\n",
                    false,
                ));
            }
        }
    }
}

/// Serves one connection: one request, one reply, then close.
async fn serve(
    mut stream: TcpStream,
    exporter: Arc<Exporter>,
    _slot: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let reply = tokio::select! {
        () = shutdown.cancelled() => return,
        reply = answer(&mut stream, exporter) => reply,
    };
    let Some(reply) = reply else { return };
    let write = async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    };
    if let Err(error) = tokio::time::timeout(WRITE_TIMEOUT, write).await {
        debug!(error = %error, "metrics client did not read its reply in time");
    }
}

/// The reply to the request on `stream`; `None` when the client went away first.
async fn answer<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    exporter: Arc<Exporter>,
) -> Option<Vec<u8>> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(stream)).await {
        Err(_) => return Some(response(408, "text/plain", b"request timeout\n", false)),
        Ok(Err(Head::TooLarge)) => {
            return Some(response(
                431,
                "text/plain",
                b"request head too large\n",
                false,
            ))
        }
        Ok(Err(Head::Closed)) => return None,
        Ok(Ok(head)) => head,
    };
    Some(match Request::parse(&head) {
        Err((status, text)) => response(status, "text/plain", text.as_bytes(), false),
        Ok(request) => request.reply(exporter).await,
    })
}

/// Why no request head was read.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends a request head.
async fn read_head<R: AsyncReadExt + Unpin>(stream: &mut R) -> Result<Vec<u8>, Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| Head::Closed)?;
        if n == 0 {
            return Err(Head::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = end_of_head(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() >= MAX_REQUEST {
            return Err(Head::TooLarge);
        }
    }
}

fn end_of_head(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Metrics,
    Index,
    NotFound,
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    target: Target,
    head_only: bool,
    format: Format,
}

impl Request {
    /// The request line (`GET /metrics HTTP/1.1`) and the `Accept` header.
    fn parse(head: &[u8]) -> Result<Request, (u16, &'static str)> {
        let text = std::str::from_utf8(head).map_err(|_| (400, "bad request\n"))?;
        let mut lines = text.lines();
        let line = lines.next().unwrap_or_default();
        let mut words = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err((400, "bad request line\n"));
        };
        if !version.starts_with("HTTP/1.") {
            return Err((505, "HTTP/1.x only\n"));
        }
        let head_only = match method {
            "GET" => false,
            "HEAD" => true,
            _ => return Err((405, "only GET and HEAD\n")),
        };
        let path = target.split('?').next().unwrap_or_default();
        let target = match path {
            "/metrics" => Target::Metrics,
            "/" => Target::Index,
            _ => Target::NotFound,
        };
        Ok(Request {
            target,
            head_only,
            format: format(lines),
        })
    }

    async fn reply(self, exporter: Arc<Exporter>) -> Vec<u8> {
        match self.target {
            Target::NotFound => response(
                404,
                "text/plain",
                b"not found; try /metrics\n",
                self.head_only,
            ),
            Target::Index => response(200, "text/plain", INDEX.as_bytes(), self.head_only),
            Target::Metrics => {
                let format = self.format;
                let scraped =
                    tokio::task::spawn_blocking(move || exporter.scrape(Instant::now(), format))
                        .await;
                match scraped {
                    Ok(Ok(text)) => {
                        response(200, format.content_type(), text.as_bytes(), self.head_only)
                    }
                    _ => {
                        warn!("a metrics scrape failed to render");
                        response(500, "text/plain", b"rendering failed\n", self.head_only)
                    }
                }
            }
        }
    }
}

/// OpenMetrics for clients that ask for it (Prometheus does), the 0.0.4 text otherwise.
fn format<'a>(headers: impl Iterator<Item = &'a str>) -> Format {
    for header in headers {
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("accept")
            && value.contains("application/openmetrics-text")
        {
            return Format::OpenMetrics;
        }
    }
    Format::Text
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A complete reply with `Connection: close`; `head_only` leaves the body out (HEAD).
fn response(status: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use pidcap_core::SocketTable;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::state::DaemonState;

    #[test]
    fn requests_are_parsed_from_the_request_line_and_accept() {
        let get =
            Request::parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain").unwrap();
        assert_eq!(
            (get.target, get.head_only, get.format),
            (Target::Metrics, false, Format::Text)
        );
        let prometheus = Request::parse(
            b"GET /metrics?x=1 HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .unwrap();
        assert_eq!(prometheus.format, Format::OpenMetrics);
        assert_eq!(
            Request::parse(b"HEAD / HTTP/1.0").unwrap().target,
            Target::Index
        );
        assert_eq!(
            Request::parse(b"GET /secret HTTP/1.1").unwrap().target,
            Target::NotFound
        );
        assert_eq!(
            Request::parse(b"POST /metrics HTTP/1.1").unwrap_err().0,
            405
        );
        assert_eq!(Request::parse(b"GET /metrics").unwrap_err().0, 400);
        assert_eq!(Request::parse(b"GET /metrics HTTP/2").unwrap_err().0, 505);
        assert_eq!(Request::parse(b"\xff\xfe").unwrap_err().0, 400);
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_refused_without_reading_on() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(&vec![b'a'; MAX_REQUEST + 10])
            .await
            .unwrap();
        assert_eq!(read_head(&mut server).await, Err(Head::TooLarge));
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\nbody")
            .await
            .unwrap();
        assert_eq!(read_head(&mut server).await.unwrap(), b"GET / HTTP/1.1");
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn the_server_answers_metrics_index_and_404_and_goes_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = DaemonState::new(SocketTable::default(), Instant::now());
        let exporter = Arc::new(Exporter::new(shared, 10));
        let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
        let server = tokio::spawn(run(listener, exporter, shutdown.clone(), tasks.clone()));
        let missing = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let index = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(index.ends_with(INDEX), "{index}");
        let metrics = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(
            metrics.contains("Content-Type: text/plain; version=0.0.4"),
            "{metrics}"
        );
        assert!(metrics.contains("pidcap_build_info{version="), "{metrics}");
        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.ends_with("\r\n\r\n"), "no body: {head}");
        shutdown.cancel();
        server.await.unwrap();
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_finishes_its_request_gets_408() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let shared = DaemonState::new(SocketTable::default(), Instant::now());
        let exporter = Arc::new(Exporter::new(shared, 10));
        let started = tokio::time::Instant::now();
        let reply = answer(&mut server, exporter).await.unwrap();
        assert!(
            reply.starts_with(b"HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        assert!(started.elapsed() >= REQUEST_TIMEOUT);
    }
}
