//! A blocking connection to the daemon: one request line out, reply lines in.
//!
//! Bounded: every read waits at most the reply timeout, and one reply line is at most
//! [`MAX_REPLY`] bytes, so a stuck or hostile server cannot hang or exhaust the client.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use pidcap_proto::{decode_reply, encode_line, Request};
use serde::de::DeserializeOwned;

use crate::names;

/// How long a one-shot request waits for its reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest reply line accepted (a `processes` reply for thousands of processes fits easily).
pub const MAX_REPLY: u64 = 64 * 1024 * 1024;

/// A decoded reply and the line it came from (for `--json`).
#[derive(Debug)]
pub struct Reply<T> {
    pub body: T,
    pub raw: Vec<u8>,
}

#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: BufReader<UnixStream>,
    timeout: Duration,
}

impl Client {
    /// Connects, turning the usual failures into advice for the person at the terminal.
    pub fn connect(path: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(path)
            .map_err(|e| anyhow!(connect_error_message(path, &e, socket_group(path))))?;
        let mut client = Client {
            path: path.to_owned(),
            stream: BufReader::new(stream),
            timeout: REPLY_TIMEOUT,
        };
        client.set_timeout(REPLY_TIMEOUT)?;
        Ok(client)
    }

    /// Sets how long reads and writes may block.
    pub fn set_timeout(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let stream = self.stream.get_ref();
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Sends one request line. If the daemon closed the connection first, its reason (e.g.
    /// `too_many_clients`) is the error; a send failure is never a bare broken pipe, which
    /// `main` would take for a reader of our stdout leaving.
    pub fn send(&mut self, request: &Request) -> anyhow::Result<()> {
        let line = encode_line(request);
        match self.stream.get_mut().write_all(&line) {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .why_closed()
                .unwrap_or_else(|| anyhow!("cannot send to {}: {e}", self.path.display()))),
        }
    }

    /// The error reply a daemon left before closing the connection, if any.
    fn why_closed(&mut self) -> Option<anyhow::Error> {
        let line = self.next_line().ok()??;
        decode_reply::<serde::de::IgnoredAny>(&line)
            .err()
            .map(anyhow::Error::from)
    }

    /// Whether bytes the daemon sent are already read and waiting here (the next line may
    /// be returned without blocking).
    pub fn has_buffered(&self) -> bool {
        !self.stream.buffer().is_empty()
    }

    /// Reads the next reply line without its newline; `None` when the daemon closed the
    /// connection between lines.
    pub fn next_line(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let read = (&mut self.stream)
            .take(MAX_REPLY + 1)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => Ok(None),
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                Ok(Some(line))
            }
            Ok(_) if line.len() as u64 > MAX_REPLY => {
                bail!("the daemon sent a reply over {MAX_REPLY} bytes")
            }
            Ok(_) => bail!("the daemon closed the connection in the middle of a reply"),
            Err(e) if is_timeout(&e) => bail!(
                "the daemon at {} did not answer within {} s",
                self.path.display(),
                self.timeout.as_secs()
            ),
            Err(e) => Err(e).with_context(|| format!("cannot read from {}", self.path.display())),
        }
    }

    /// Sends `request` and decodes its single reply; an error reply becomes an error that
    /// prints as `<code>: <message>`.
    pub fn call<T: DeserializeOwned>(&mut self, request: &Request) -> anyhow::Result<Reply<T>> {
        self.send(request)?;
        let raw = self
            .next_line()?
            .ok_or_else(|| anyhow!("the daemon closed the connection without replying"))?;
        let body = decode_reply(&raw)?;
        Ok(Reply { body, raw })
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The name of the group owning the socket file, when it can be seen.
fn socket_group(path: &Path) -> Option<String> {
    let gid = fs::metadata(path).ok()?.gid();
    Some(names::load(names::GROUP_FILE).name(gid))
}

/// What to tell a person whose connection failed.
pub fn connect_error_message(path: &Path, error: &io::Error, group: Option<String>) -> String {
    let path = path.display();
    match error.kind() {
        io::ErrorKind::NotFound => format!(
            "cannot connect to {path}: no such file. Is pidcapd running? Start it with \
             `systemctl start pidcapd` or `scripts/run`, or point --socket at its socket."
        ),
        io::ErrorKind::PermissionDenied => permission_denied_message(&path, group),
        io::ErrorKind::ConnectionRefused => format!(
            "cannot connect to {path}: connection refused. The socket is stale: pidcapd is not \
             running. Start it with `systemctl start pidcapd` or `scripts/run`."
        ),
        _ => format!("cannot connect to {path}: {error}"),
    }
}

/// pidcapd opens its socket to every user by default (each sees their own processes), so a
/// refusal means the socket's mode or directory was tightened. Joining the owning group
/// helps only if that group is not root: nobody should be told to join root.
fn permission_denied_message(path: &impl std::fmt::Display, group: Option<String>) -> String {
    let join = match group.filter(|g| g != "root" && g != "0") {
        Some(group) => format!(
            ", or join the group that owns it, `{group}` (sudo usermod -aG {group} \"$USER\", \
             then log in again)"
        ),
        None => String::new(),
    };
    format!(
        "cannot connect to {path}: permission denied. The socket, or its directory, is closed \
         to you: run pidcap as root{join}. An administrator can open it to every user, each \
         seeing only their own processes: socket_mode = \"0666\" in /etc/pidcap/pidcap.toml, \
         and a directory others can enter (mode 0755)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: io::ErrorKind, group: Option<&str>) -> String {
        connect_error_message(
            Path::new("/run/pidcap/pidcap.sock"),
            &io::Error::from(kind),
            group.map(str::to_owned),
        )
    }

    #[test]
    fn missing_socket_says_how_to_start_the_daemon() {
        assert_eq!(
            message(io::ErrorKind::NotFound, None),
            "cannot connect to /run/pidcap/pidcap.sock: no such file. Is pidcapd running? \
             Start it with `systemctl start pidcapd` or `scripts/run`, or point --socket at \
             its socket."
        );
    }

    #[test]
    fn permission_denied_names_root_and_the_group() {
        let text = message(io::ErrorKind::PermissionDenied, Some("pidcap"));
        assert!(text.contains("permission denied"), "{text}");
        assert!(text.contains("run pidcap as root"), "{text}");
        assert!(text.contains("usermod -aG pidcap"), "{text}");
        assert!(text.contains("socket_mode = \"0666\""), "{text}");
        let text = message(io::ErrorKind::PermissionDenied, None);
        assert!(!text.contains("join"), "{text}");
    }

    #[test]
    fn permission_denied_never_says_join_root() {
        for group in ["root", "0"] {
            let text = message(io::ErrorKind::PermissionDenied, Some(group));
            assert!(!text.contains("join"), "{text}");
            assert!(!text.contains("usermod"), "{text}");
            assert!(text.contains("run pidcap as root"), "{text}");
        }
    }

    #[test]
    fn refused_says_stale_socket() {
        let text = message(io::ErrorKind::ConnectionRefused, None);
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.contains("stale"), "{text}");
        assert!(text.contains("not running"), "{text}");
    }

    #[test]
    fn other_errors_are_reported_verbatim() {
        let text = message(io::ErrorKind::InvalidInput, None);
        assert!(
            text.starts_with("cannot connect to /run/pidcap/pidcap.sock: "),
            "{text}"
        );
    }
}
