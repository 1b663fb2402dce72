//! Drives `pidcap-peer` processes: spawn, read their describe line, say "go", wait for
//! "done", close stdin so they exit.
//!
//! Invariants: every read from a peer is bounded by [`PEER_TIMEOUT`] (stdout is read by a
//! thread feeding a channel); Drop kills a peer that was not finished.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use serde_json::Value;

use crate::{bin_path, Netns};

/// How long a peer may take to print its next line.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// What a peer says about itself once its sockets exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub pid: u32,
    /// `"tcp"` or `"udp"`.
    pub proto: String,
    pub local: SocketAddr,
    pub remote: Option<SocketAddr>,
}

/// Application-level bytes a peer moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub sent: u64,
    pub received: u64,
}

/// A running `pidcap-peer`.
#[derive(Debug)]
pub struct Peer {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub info: PeerInfo,
}

impl Peer {
    /// Runs `pidcap-peer args` on the host and reads its describe line.
    pub fn spawn(args: &[&str]) -> Peer {
        let mut command = Command::new(bin_path("pidcap-peer"));
        command.args(args);
        Peer::spawn_command(command)
    }

    /// Runs `pidcap-peer args` inside a bridge member's namespace (via `ip netns exec`).
    pub fn spawn_in_member(member: &crate::bridge::Member, args: &[&str]) -> Peer {
        let mut command = member.command(bin_path("pidcap-peer"));
        command.args(args);
        Peer::spawn_command(command)
    }

    /// Runs `pidcap-peer args` on the host inside `cgroup` (from its exec on).
    pub fn spawn_in_cgroup(cgroup: &crate::Cgroup, args: &[&str]) -> Peer {
        Peer::spawn_command(cgroup.command(&bin_path("pidcap-peer"), args))
    }

    /// Runs `pidcap-peer args` on the host as `uid`:`gid`, with no supplementary groups.
    pub fn spawn_as(uid: u32, gid: u32, args: &[&str]) -> Peer {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(bin_path("pidcap-peer"));
        command.args(args).uid(uid).gid(gid);
        Peer::spawn_command(command)
    }

    /// Runs `pidcap-peer args` inside `netns` (via `ip netns exec`, which execs, so the pid
    /// is the peer's own).
    pub fn spawn_in(netns: &Netns, args: &[&str]) -> Peer {
        let mut command = netns.command(bin_path("pidcap-peer"));
        command.args(args);
        Peer::spawn_command(command)
    }

    fn spawn_command(mut command: Command) -> Peer {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdin = child.stdin.take();
        let lines = read_lines(BufReader::new(child.stdout.take().expect("piped stdout")));
        let mut peer = Peer {
            child: Some(child),
            stdin,
            lines,
            info: PeerInfo {
                pid: 0,
                proto: String::new(),
                local: "0.0.0.0:0".parse().expect("addr"),
                remote: None,
            },
        };
        let ready = peer.next_event("ready");
        peer.info = parse_info(&ready);
        peer
    }

    /// The peer's pid.
    pub fn pid(&self) -> u32 {
        self.info.pid
    }

    /// The next stdout line, which must be an event named `event`.
    pub fn next_event(&mut self, event: &str) -> Value {
        let line = match self.lines.recv_timeout(PEER_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "peer {:?}: no {event:?} line within {PEER_TIMEOUT:?}",
                    self.info
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("peer {:?} exited before its {event:?} line", self.info)
            }
        };
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("peer printed non-JSON {line:?}: {e}"));
        assert_eq!(
            value["event"], event,
            "peer {:?}: unexpected line {line}",
            self.info
        );
        value
    }

    /// For servers: waits for the accepted connection; returns its (local, remote).
    pub fn accepted(&mut self) -> (SocketAddr, SocketAddr) {
        let v = self.next_event("accepted");
        (addr(&v["local"]), addr(&v["remote"]))
    }

    /// Tells the peer to move its traffic.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("peer already finished");
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("peer {:?}: writing go: {e}", self.info));
    }

    /// Waits for the peer's done line.
    pub fn wait_done(&mut self) -> Done {
        let v = self.next_event("done");
        Done {
            sent: v["sent"].as_u64().expect("sent"),
            received: v["received"].as_u64().expect("received"),
        }
    }

    /// Closes stdin (the peer closes its sockets and exits) and waits, bounded.
    pub fn finish(mut self) -> ExitStatus {
        self.stdin.take();
        let child = self.child.take().expect("peer already finished");
        crate::daemon::wait_bounded(child, PEER_TIMEOUT, "pidcap-peer after stdin EOF")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_lines(reader: impl BufRead + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn addr(v: &Value) -> SocketAddr {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a socket address: {v}"))
}

fn parse_info(v: &Value) -> PeerInfo {
    PeerInfo {
        pid: v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .expect("pid"),
        proto: v["proto"].as_str().expect("proto").to_owned(),
        local: addr(&v["local"]),
        remote: (!v["remote"].is_null()).then(|| addr(&v["remote"])),
    }
}

/// A connected UDP exchange on loopback that `daemon` knows the sender of before it starts:
/// `count` datagrams of `size` bytes, each answered with 64 bytes. Returns (receiver,
/// sender) once both are done; crediting is the caller's to wait for.
pub fn udp_exchange(daemon: &crate::Daemon, count: u64, size: u64) -> (Peer, Peer) {
    let (count, size) = (count.to_string(), size.to_string());
    let mut receiver = Peer::spawn(&[
        "udp-recv",
        "--bind",
        "127.0.0.1:0",
        "--count",
        &count,
        "--reply-size",
        "64",
    ]);
    let to = receiver.info.local.to_string();
    let mut sender = Peer::spawn(&[
        "udp-send",
        "--bind",
        "127.0.0.1:0",
        "--connect",
        &to,
        "--count",
        &count,
        "--size",
        &size,
        "--await-reply",
    ]);
    daemon.wait_owner("udp", sender.info.local, receiver.info.local, sender.pid());
    receiver.go();
    sender.go();
    sender.wait_done();
    receiver.wait_done();
    (receiver, sender)
}
