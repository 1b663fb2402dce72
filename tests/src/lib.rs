#![doc = include_str!("../README.md")]
//!
//! Invariants: every wait in this harness is bounded and panics with a message saying what
//! it waited for; every process and namespace it creates is removed on Drop.

pub mod accuracy;
pub mod bridge;
pub mod cgroup;
pub mod check;
pub mod container;
pub mod daemon;
pub mod frame;
pub mod macvlan;
pub mod nat;
pub mod netns;
pub mod pcapfile;
pub mod peer;
pub mod refcap;
pub mod usage_log;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use bridge::Bridge;
pub use cgroup::Cgroup;
pub use daemon::{
    private_paths, run_pidcapd, wait_bounded, Client, Counters, Daemon, Finished, Launch,
};
pub use macvlan::Macvlan;
pub use nat::Nat;
pub use netns::Netns;
pub use peer::{udp_exchange, Done, Peer, PeerInfo};
pub use refcap::{RefCapture, Tally, Truth};

/// The path of a workspace binary (`pidcapd`, `pidcap`, `pidcap-peer`).
///
/// Looks in `$PIDCAP_BIN_DIR` if set, else next to the running test executable's directory
/// (`target/debug/deps/..`). Panics if the binary is missing.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("PIDCAP_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => default_bin_dir(),
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} does not exist: run cargo build --workspace --bins first (or set PIDCAP_BIN_DIR)",
        path.display()
    );
    path
}

fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("test executable has a directory");
    // Integration tests live in target/debug/deps; binaries in target/debug.
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Fails loudly unless the tests run as root (capture, every process's fds, namespaces).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the pidcap end-to-end tests need root (packet capture, /proc/<pid>/fd of every \
         process, network namespaces); run them as root, as CI does"
    );
}

/// How long a test lets the daemon find a network namespace that had no process before the
/// test's (its discovery runs every 2 s, `pidcap_daemon`'s `DISCOVER_EVERY`), when the
/// test is not about those first moments (README: "the first moments of a new namespace").
pub const NAMESPACE_SETTLE: Duration = Duration::from_millis(2500);

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a packet address belongs to a socket bound to `local`: same port, and the same IP
/// or a wildcard bind (`0.0.0.0` / `::`; `::` also takes IPv4 on dual-stack sockets).
pub fn addr_matches(local: SocketAddr, packet: SocketAddr) -> bool {
    if local.port() != packet.port() {
        return false;
    }
    match (local.ip(), packet.ip()) {
        (l, p) if l == p => true,
        (std::net::IpAddr::V4(l), std::net::IpAddr::V4(_)) => l.is_unspecified(),
        (std::net::IpAddr::V6(l), _) => l.is_unspecified(),
        _ => false,
    }
}

/// `actual` is within `percent` % of `expected` (and both are zero, or both are not).
pub fn within_percent(actual: u64, expected: u64, percent: f64) -> bool {
    let diff = actual.abs_diff(expected) as f64;
    diff <= expected as f64 * percent / 100.0 && (actual == 0) == (expected == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_matches_wildcards_and_ports() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(addr_matches(a("0.0.0.0:5"), a("127.0.0.1:5")));
        assert!(addr_matches(a("[::]:5"), a("127.0.0.1:5")));
        assert!(addr_matches(a("127.0.0.1:5"), a("127.0.0.1:5")));
        assert!(!addr_matches(a("127.0.0.1:5"), a("127.0.0.2:5")));
        assert!(!addr_matches(a("0.0.0.0:5"), a("127.0.0.1:6")));
        assert!(!addr_matches(a("0.0.0.0:5"), a("[::1]:5")));
    }

    #[test]
    fn within_percent_bounds() {
        assert!(within_percent(102, 100, 2.0));
        assert!(!within_percent(103, 100, 2.0));
        assert!(!within_percent(0, 1, 2.0));
        assert!(within_percent(0, 0, 2.0));
    }
}
