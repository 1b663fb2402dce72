//! Other network namespaces (containers, `ip netns`): which exist, and their sockets and
//! addresses, read as text through one process in each (`/proc/<pid>/net/*`). No
//! `setns(2)`, so no CAP_SYS_ADMIN: the daemon's five capabilities are enough.
//!
//! Invariants:
//! - The home namespace (the capture's) is never read here; the socket source reads it.
//! - A namespace is read through the lowest pid found in it at the last discovery. A read is
//!   kept only if that pid is still in that namespace afterwards (a process can move with
//!   `setns`, and `/proc/<pid>/net` follows it); otherwise, or when the pid is gone, the
//!   namespace is left out of this pass and discovery runs again at the next one.
//! - Discovery (one `readlink` per process) runs at most every [`DISCOVER_EVERY`], or at the
//!   next pass after a failed read. A namespace with no process left is forgotten then: its
//!   sockets have no holder to credit.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use pidcap_core::{NetNsId, SocketEntry};
use pidcap_sockets::ProcRoot;
use tracing::debug;

use crate::refresh::source::read_text_tables;

/// The longest time between two discoveries of network namespaces.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(2);

/// The other namespaces known from the last discovery, each with the process read through.
#[derive(Debug)]
pub struct Guests {
    proc: ProcRoot,
    /// The namespace not read here (set by each read).
    home: Option<NetNsId>,
    known: Vec<(NetNsId, u32)>,
    discovered_at: Option<Instant>,
    /// A read failed since the last discovery.
    stale: bool,
}

/// What one pass read from the other namespaces.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestPass {
    /// Every address of every namespace read, with its namespace.
    pub addrs: Vec<(NetNsId, IpAddr)>,
    /// Namespaces read.
    pub read: usize,
    /// Namespaces left out because their process exited or moved.
    pub skipped: usize,
}

impl Guests {
    pub fn new(proc: ProcRoot) -> Guests {
        Guests {
            proc,
            home: None,
            known: Vec::new(),
            discovered_at: None,
            stale: false,
        }
    }

    /// Appends the sockets of every namespace but `home` to `out`; their addresses in the
    /// result.
    pub fn read_into(
        &mut self,
        home: NetNsId,
        now: Instant,
        out: &mut Vec<SocketEntry>,
    ) -> GuestPass {
        let due = self
            .discovered_at
            .is_none_or(|at| now.saturating_duration_since(at) >= DISCOVER_EVERY);
        self.home = Some(home);
        if due || self.stale {
            self.discover(home, now);
        }
        let mut pass = GuestPass::default();
        for &(netns, pid) in &self.known {
            let from = out.len();
            match self.read_one(netns, pid, out) {
                Some(addrs) => {
                    pass.addrs.extend(addrs.into_iter().map(|ip| (netns, ip)));
                    pass.read += 1;
                }
                None => {
                    out.truncate(from);
                    pass.skipped += 1;
                }
            }
        }
        self.stale |= pass.skipped > 0;
        pass
    }

    /// `pid` was seen in `netns`: true when that namespace was not known (it is read from
    /// the next pass on, through `pid`, until the next discovery).
    pub fn note(&mut self, netns: NetNsId, pid: u32) -> bool {
        if self.home.is_some_and(|h| h == netns) || self.known.iter().any(|&(n, _)| n == netns) {
            return false;
        }
        self.known.push((netns, pid));
        true
    }

    /// The namespaces (and one pid in each) known now.
    pub fn known(&self) -> &[(NetNsId, u32)] {
        &self.known
    }

    fn discover(&mut self, home: NetNsId, now: Instant) {
        match self.proc.network_namespaces() {
            Ok(all) => {
                self.known = all.into_iter().filter(|&(n, _)| n != home).collect();
                self.discovered_at = Some(now);
                self.stale = false;
            }
            Err(error) => debug!(error = %error, "network namespaces not listed"),
        }
    }

    /// The sockets (appended to `out`) and addresses of `netns`, read through `pid`; `None`
    /// when `pid` exited or is not in `netns` any more.
    fn read_one(
        &self,
        netns: NetNsId,
        pid: u32,
        out: &mut Vec<SocketEntry>,
    ) -> Option<Vec<IpAddr>> {
        let root = self.proc.of_process(pid);
        let read = root
            .namespace_addresses()
            .and_then(|addrs| read_text_tables(&root, netns, out).map(|()| addrs));
        let still_there = self.proc.netns_of(pid).ok() == Some(netns);
        match read {
            Ok(addrs) if still_there => Some(addrs),
            Ok(_) => None,
            Err(error) => {
                debug!(pid, netns = netns.0, error = %error, "namespace not read");
                None
            }
        }
    }
}
