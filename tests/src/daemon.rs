//! Runs the real `pidcapd` on a temp socket and usage log, and talks to it.
//!
//! Invariants: the daemon's stderr goes to a file (never a pipe that could fill and block
//! it); start and stop are bounded; Drop kills a daemon that was not stopped.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{bin_path, wait_until};

/// How long the daemon may take to answer its first `stats`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Read timeout on query connections.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `pidcapd`.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    usage_log: PathBuf,
    /// The program and arguments it was started with, for [`Daemon::kill_and_restart`].
    launched: (std::ffi::OsString, Vec<std::ffi::OsString>),
}

/// How a process ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stderr: String,
}

/// rx/tx bytes and packets, as one set of daemon counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl Counters {
    /// Reads `rx_bytes{suffix}` etc. from a JSON object; missing fields read as 0.
    pub fn from_json(value: &Value, suffix: &str) -> Counters {
        let field = |name: &str| {
            value
                .get(format!("{name}{suffix}"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Counters {
            rx_bytes: field("rx_bytes"),
            tx_bytes: field("tx_bytes"),
            rx_packets: field("rx_packets"),
            tx_packets: field("tx_packets"),
        }
    }

    pub fn add(&mut self, other: &Counters) {
        self.rx_bytes += other.rx_bytes;
        self.tx_bytes += other.tx_bytes;
        self.rx_packets += other.rx_packets;
        self.tx_packets += other.tx_packets;
    }
}

/// How [`Daemon::start_with`] runs `pidcapd`.
#[derive(Debug, Default, Clone)]
pub struct Launch {
    /// A program and its arguments that exec `pidcapd` (appended, with its flags) in the same
    /// process, such as `setpriv … --`, so [`Daemon::pid`] stays the daemon's.
    pub wrapper: Vec<String>,
    /// The (uid, gid) given the temp directory first, so that a daemon run as another user
    /// can create its socket and usage log there.
    pub dir_owner: Option<(u32, u32)>,
}

impl Daemon {
    /// Starts `pidcapd` with `args` (which should include `--interface`), plus a temp
    /// `--socket`, `--usage-log`, `--log-interval 1s` and `--refresh-interval 1s`; returns
    /// once it answers `stats`.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_with(&Launch::default(), args)
    }

    /// Like [`Daemon::start`], with `pidcapd` run as `launch` says.
    pub fn start_with(launch: &Launch, args: &[&str]) -> Daemon {
        crate::require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some((uid, gid)) = launch.dir_owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown tempdir");
        }
        let socket = dir.path().join("pidcapd.sock");
        let usage_log = dir.path().join("usage.jsonl");
        let state_dir = dir.path().join("state");
        let mut command = match launch.wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(bin_path("pidcapd"));
                command
            }
            None => Command::new(bin_path("pidcapd")),
        };
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--usage-log")
            .arg(&usage_log)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--log-interval", "1s", "--refresh-interval", "1s"])
            .args(args)
            // For experiments (never set in CI): extra flags, e.g. `--no-socket-tracer`.
            .args(
                std::env::var("PIDCAP_E2E_DAEMON_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            );
        let launched = (
            command.get_program().to_owned(),
            command.get_args().map(ToOwned::to_owned).collect(),
        );
        let child = spawn_logged(&mut command, &dir.path().join("stderr.log"));
        let mut daemon = Daemon {
            child: Some(child),
            dir,
            socket,
            usage_log,
            launched,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                panic!(
                    "pidcapd exited ({status}) before answering; stderr:\n{}",
                    self.stderr()
                );
            }
            if self.socket.exists() && self.try_query(&json!({"cmd": "stats"})).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "pidcapd did not answer stats on {} within {START_TIMEOUT:?}; stderr:\n{}",
            self.socket.display(),
            self.stderr()
        );
    }

    /// Kills the daemon with SIGKILL (no flush, no clean-up: as a crash or the OOM killer
    /// would) and starts it again with the same arguments, socket, log and state directory;
    /// returns once it answers. The new daemon's stderr goes to `stderr-restarted.log`.
    pub fn kill_and_restart(&mut self) {
        let mut child = self.child.take().expect("daemon already stopped");
        child.kill().expect("SIGKILL pidcapd");
        let _ = child.wait();
        let (program, args) = &self.launched;
        let mut command = Command::new(program);
        command.args(args);
        let stderr = self.dir.path().join("stderr-restarted.log");
        self.child = Some(spawn_logged(&mut command, &stderr));
        self.wait_ready();
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("daemon already stopped")
    }

    /// The query socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The usage log's path.
    pub fn usage_log(&self) -> &Path {
        &self.usage_log
    }

    /// The temp directory holding socket, log and stderr.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon already stopped").id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Opens a new query connection.
    pub fn connect(&self) -> Client {
        Client::connect(&self.socket).unwrap_or_else(|e| {
            panic!(
                "connect {}: {e}; stderr:\n{}",
                self.socket.display(),
                self.stderr()
            )
        })
    }

    /// Sends one request on a fresh connection and returns the parsed response.
    pub fn query(&self, request: &Value) -> Value {
        self.try_query(request)
            .unwrap_or_else(|e| panic!("query {request}: {e}; daemon stderr:\n{}", self.stderr()))
    }

    fn try_query(&self, request: &Value) -> std::io::Result<Value> {
        Client::connect(&self.socket)?.try_request(request)
    }

    /// Every `processes` row the daemon lists.
    pub fn processes(&self) -> Vec<Value> {
        let reply = self.query(&json!({"cmd": "processes"}));
        assert_eq!(reply["ok"], true, "processes failed: {reply}");
        reply["processes"]
            .as_array()
            .expect("processes is an array")
            .clone()
    }

    /// The `processes` entry for `pid`, if the daemon lists it.
    pub fn process(&self, pid: u32) -> Option<Value> {
        self.processes()
            .into_iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
    }

    /// The since-first-seen totals of `pid` (zero if the daemon does not list it).
    pub fn totals(&self, pid: u32) -> Counters {
        self.process(pid)
            .map(|p| Counters::from_json(&p, "_total"))
            .unwrap_or_default()
    }

    /// The `stats` object.
    pub fn stats(&self) -> Value {
        let reply = self.query(&json!({"cmd": "stats"}));
        assert_eq!(reply["ok"], true, "stats failed: {reply}");
        reply["stats"].clone()
    }

    /// The `lookup` reply for a socket.
    pub fn lookup(&self, proto: &str, local: &str, remote: &str) -> Value {
        self.query(&json!({"cmd": "lookup", "proto": proto, "local": local, "remote": remote}))
    }

    /// Waits until `lookup` attributes the flow to `pid`; panics after `timeout`.
    pub fn wait_owner(&self, proto: &str, local: SocketAddr, remote: SocketAddr, pid: u32) {
        let (local, remote) = (local.to_string(), remote.to_string());
        let mut last = Value::Null;
        let found = wait_until(Duration::from_secs(15), || {
            last = self.lookup(proto, &local, &remote);
            last["owner"]["pid"].as_u64() == Some(u64::from(pid))
        });
        assert!(
            found,
            "pidcapd never attributed {proto} {local} -> {remote} to pid {pid}; last lookup: \
             {last}"
        );
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits");
        // SAFETY: kill has no memory preconditions; the pid is our own live child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// SIGTERM, then waits (bounded) for the exit; returns status and stderr. The temp
    /// directory (usage log, stderr) lives on until the `Daemon` is dropped.
    pub fn stop(&mut self) -> Finished {
        self.signal(libc::SIGTERM);
        let child = self.child.take().expect("daemon already stopped");
        let status = wait_bounded(child, STOP_TIMEOUT, "pidcapd after SIGTERM");
        Finished {
            status,
            stderr: self.stderr(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // For debugging a failure: keep socket dir, usage log and stderr.
        if std::env::var_os("PIDCAP_E2E_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("pidcap-e2e: kept {}", dir.keep().display());
        }
    }
}

/// Spawns `command` with stdin closed, stdout discarded and stderr to `stderr_file`.
fn spawn_logged(command: &mut Command, stderr_file: &Path) -> Child {
    let stderr = std::fs::File::create(stderr_file).expect("create stderr file");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"))
}

/// Waits up to `timeout` for `child`; kills it and panics if it is still running.
pub fn wait_bounded(mut child: Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--socket`, `--usage-log` and `--state-dir` inside `dir`: the flags that keep a pidcapd a
/// test starts by hand away from the system's paths and from other tests' daemons.
pub fn private_paths(dir: &Path) -> Vec<std::ffi::OsString> {
    [
        ("--socket", "sock"),
        ("--usage-log", "usage.jsonl"),
        ("--state-dir", "state"),
    ]
    .into_iter()
    .flat_map(|(flag, name)| [flag.into(), dir.join(name).into_os_string()])
    .collect()
}

/// Runs `pidcapd args` to completion (bounded by `timeout`), without any default flags.
pub fn run_pidcapd(args: &[&str], timeout: Duration) -> Finished {
    crate::require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr_file = dir.path().join("stderr.log");
    let mut command = Command::new(bin_path("pidcapd"));
    command.args(args);
    let child = spawn_logged(&mut command, &stderr_file);
    let status = wait_bounded(child, timeout, "pidcapd");
    Finished {
        status,
        stderr: std::fs::read_to_string(stderr_file).unwrap_or_default(),
    }
}

impl Finished {
    /// The exit code, or a panic naming the signal that killed the process.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| {
            panic!(
                "killed by signal {:?}; stderr:\n{}",
                self.status.signal(),
                self.stderr
            )
        })
    }
}

/// One query connection (newline-delimited JSON).
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(socket: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(QUERY_TIMEOUT))?;
        stream.set_write_timeout(Some(QUERY_TIMEOUT))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// The underlying stream (for socket options and polling).
    pub fn stream(&self) -> &UnixStream {
        &self.writer
    }

    /// Writes raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    /// Reads one line (without its newline); `Ok(None)` at EOF.
    pub fn read_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line)? {
            0 => Ok(None),
            _ => Ok(Some(line.trim_end_matches('\n').to_owned())),
        }
    }

    /// Sends `request` as one line and parses the one-line response.
    pub fn try_request(&mut self, request: &Value) -> std::io::Result<Value> {
        self.send_raw(format!("{request}\n").as_bytes())?;
        self.read_json()
    }

    /// Reads and parses one response line.
    pub fn read_json(&mut self) -> std::io::Result<Value> {
        let line = self.read_line()?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")
        })?;
        serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}: {line:?}"))
        })
    }

    /// Like [`Client::try_request`], panicking on I/O errors.
    pub fn request(&mut self, request: &Value) -> Value {
        self.try_request(request)
            .unwrap_or_else(|e| panic!("request {request}: {e}"))
    }
}
