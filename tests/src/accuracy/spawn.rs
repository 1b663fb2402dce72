//! Runs many short-lived `pidcap-peer` processes (`tcp-burst`, `churn`), at most `parallel`
//! at a time, and collects the `flow` lines each printed before it exited.
//!
//! Invariants: the whole run is bounded by its timeout (children still running then are
//! killed and reported); each child's stdout is read by its own thread, so a chatty child
//! never blocks on a full pipe.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bin_path;

/// One connection a peer reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub pid: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub sent: u64,
    pub received: u64,
    /// When the peer reported it (µs since the epoch), after the connection ended: orders
    /// the connections of one 4-tuple that passed from process to process (0: not said).
    pub at_us: u64,
}

/// A peer that ran to its end.
#[derive(Debug)]
pub struct Exited {
    pub pid: u32,
    /// `None` if it was killed at the timeout.
    pub status: Option<ExitStatus>,
    /// From spawn to the exit being noticed (polled every millisecond).
    pub lifetime: Duration,
    pub flows: Vec<Flow>,
}

struct Running {
    child: Child,
    started: Instant,
    stdout: JoinHandle<String>,
}

/// Runs `pidcap-peer args` for every entry of `runs`, at most `parallel` at once, within
/// `timeout`.
pub fn run_peers(runs: &[Vec<String>], parallel: usize, timeout: Duration) -> Vec<Exited> {
    run_peers_in(None, runs, parallel, timeout)
}

/// [`run_peers`] inside network namespace `netns` (by name, through `ip netns exec`, which
/// execs: the pids are the peers' own), or on the host for `None`.
pub fn run_peers_in(
    netns: Option<&str>,
    runs: &[Vec<String>],
    parallel: usize,
    timeout: Duration,
) -> Vec<Exited> {
    let deadline = Instant::now() + timeout;
    let mut pending = runs.iter();
    let mut running: Vec<Running> = Vec::new();
    let mut exited = Vec::new();
    loop {
        while running.len() < parallel.max(1) {
            let Some(args) = pending.next() else { break };
            running.push(start(netns, args));
        }
        if running.is_empty() {
            return exited;
        }
        let timed_out = Instant::now() >= deadline;
        let mut i = 0;
        while i < running.len() {
            match running[i].child.try_wait().expect("try_wait") {
                Some(status) => exited.push(collect(running.swap_remove(i), Some(status))),
                None if timed_out => {
                    let mut r = running.swap_remove(i);
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    exited.push(collect(r, None));
                }
                None => i += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn start(netns: Option<&str>, args: &[String]) -> Running {
    let mut command = match netns {
        Some(name) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", name]).arg(bin_path("pidcap-peer"));
            c
        }
        None => Command::new(bin_path("pidcap-peer")),
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn pidcap-peer {args:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    Running {
        child,
        started: Instant::now(),
        stdout,
    }
}

fn collect(running: Running, status: Option<ExitStatus>) -> Exited {
    let pid = running.child.id();
    let lifetime = running.started.elapsed();
    let text = running.stdout.join().unwrap_or_default();
    Exited {
        pid,
        status,
        lifetime,
        flows: text.lines().filter_map(parse_flow).collect(),
    }
}

/// A `{"event":"flow",…}` line; `None` for any other line.
pub fn parse_flow(line: &str) -> Option<Flow> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["event"] != "flow" {
        return None;
    }
    Some(Flow {
        pid: u32::try_from(v["pid"].as_u64()?).ok()?,
        local: v["local"].as_str()?.parse().ok()?,
        remote: v["remote"].as_str()?.parse().ok()?,
        sent: v["sent"].as_u64()?,
        received: v["received"].as_u64()?,
        at_us: v["at_us"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_flow_reads_flow_lines_only() {
        let line = r#"{"event":"flow","pid":7,"proto":"tcp","local":"127.0.0.1:5","remote":"127.0.0.1:6","sent":1,"received":2}"#;
        let flow = parse_flow(line).expect("flow");
        assert_eq!((flow.pid, flow.sent, flow.received), (7, 1, 2));
        assert_eq!(parse_flow(r#"{"event":"done"}"#), None);
        assert_eq!(parse_flow("not json"), None);
    }
}
