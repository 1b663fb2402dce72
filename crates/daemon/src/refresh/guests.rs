//! Other network namespaces (containers, `ip netns`): which exist, and their sockets and
//! addresses, read as text through one process in each (`/proc/<pid>/net/*`). No
//! `setns(2)`, so no CAP_SYS_ADMIN: the daemon's five capabilities are enough.
//!
//! Invariants:
//! - The home namespace (the capture's) is never read here; the socket source reads it.
//! - A namespace is read through one of its oldest processes found at the last discovery
//!   (up to [`CANDIDATES`], tried in turn: a short-lived one may have exited; oldest by start
//!   time, as pids wrap). A read is kept
//!   only if that pid is still in that namespace afterwards (a process can move with
//!   `setns`, and `/proc/<pid>/net` follows it). When no candidate can be read, the
//!   namespace's last good read stands in for this pass (a namespace never drops out of the
//!   table for a failed read: its traffic would silently stop counting) and discovery runs
//!   again at the next pass.
//! - Discovery (one `readlink` per process) runs at most every [`DISCOVER_EVERY`], and at
//!   the next pass after a failed read (not in the same pass: rediscovering at once made a
//!   namespace whose long-lived process was briefly unreadable flap in and out of the table,
//!   measured in accuracy scenario 10). A namespace is forgotten when [`FORGET_AFTER`] discoveries in a row find no process in it
//!   (until then a new namespace with the same address makes that address `unknown`, never
//!   another's).
//! - Reads are rationed: reading a namespace's `tcp` and `tcp6` walks the kernel's whole
//!   TCP hash twice (milliseconds on a large host), so a namespace is read when it is new,
//!   when a miss names one of its addresses ([`Guests::touch`]), after a failed read, and
//!   otherwise every [`REREAD_EVERY`]; between reads its last read stands in. Its
//!   connections between reads are known from the process watcher and the socket tracer
//!   (their claims carry the namespace), and its listeners and bound sockets change little.
//!   Memory: the last read of each namespace (bounded by what the kernel lists).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use pidcap_core::{NetNsId, SocketEntry};
use pidcap_sockets::ProcRoot;
use tracing::debug;

use crate::refresh::source::read_text_tables;

/// The longest time between two discoveries of network namespaces.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(2);

/// Discoveries in a row that must find no process in a namespace before it is forgotten.
pub const FORGET_AFTER: u32 = 2;

/// The processes of a namespace a read may go through (its oldest).
pub const CANDIDATES: usize = 4;

/// The longest time a namespace's last read stands without being read again, when nothing
/// asks for it sooner (a miss on one of its addresses, a process that starts in it). A read
/// costs two walks of the kernel's whole TCP hash (`/proc/<pid>/net/tcp` and `tcp6`).
pub const REREAD_EVERY: Duration = Duration::from_secs(120);

/// The other namespaces known, each with the process read through.
#[derive(Debug)]
pub struct Guests {
    proc: ProcRoot,
    /// The namespace not read here (set by each read).
    home: Option<NetNsId>,
    known: Vec<Guest>,
    discovered_at: Option<Instant>,
    /// A read failed since the last discovery.
    stale: bool,
}

/// One other namespace.
#[derive(Debug)]
struct Guest {
    netns: NetNsId,
    /// The processes its tables are read through, the first that works.
    pids: Vec<u32>,
    /// Its addresses and sockets as last read.
    last: Option<(Vec<IpAddr>, Vec<SocketEntry>)>,
    /// Discoveries in a row that found no process in it.
    unseen: u32,
    /// The last read failed.
    failed: bool,
    /// When it was last read well; `None` before the first read.
    read_at: Option<Instant>,
    /// Asked to be read at the next pass (a miss on one of its addresses).
    wanted: bool,
}

/// What one pass read from the other namespaces.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestPass {
    /// Every address of every namespace read, with its namespace.
    pub addrs: Vec<(NetNsId, IpAddr)>,
    /// Namespaces read.
    pub read: usize,
    /// Namespaces whose read failed (their process exited or moved).
    pub skipped: usize,
    /// Namespaces not due, whose last read stood in.
    pub reused: usize,
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
        self.read_all(now, out, &mut pass);
        self.stale |= self.known.iter().any(|g| g.failed);
        pass
    }

    /// Between passes (an idle refresher's): lists the namespaces when a discovery is due;
    /// true when one is found that no table has read yet (a pass should read it now).
    pub fn discover_between_passes(&mut self, now: Instant) -> bool {
        let Some(home) = self.home else {
            return false;
        };
        let due = self
            .discovered_at
            .is_none_or(|at| now.saturating_duration_since(at) >= DISCOVER_EVERY);
        if due {
            self.discover(home, now);
        }
        self.known.iter().any(|g| g.read_at.is_none())
    }

    /// Reads every namespace that is due (new, asked for, failed, or read over
    /// [`REREAD_EVERY`] ago); the others contribute their last read. True when a read failed.
    fn read_all(&mut self, now: Instant, out: &mut Vec<SocketEntry>, pass: &mut GuestPass) -> bool {
        let due: Vec<NetNsId> = self
            .known
            .iter()
            .filter(|g| g.due(now))
            .map(|g| g.netns)
            .collect();
        for guest in self.known.iter().filter(|g| !due.contains(&g.netns)) {
            if let Some((addrs, sockets)) = &guest.last {
                out.extend_from_slice(sockets);
                pass.addrs.extend(addrs.iter().map(|&ip| (guest.netns, ip)));
                pass.reused += 1;
            }
        }
        self.read_all_of(&due, now, out, pass)
    }

    /// Asks for the namespace that has address `ip` to be read at the next pass; true when
    /// one has it.
    pub fn touch(&mut self, ip: IpAddr) -> bool {
        let ip = pidcap_core::canonical_ip(ip);
        let mut touched = false;
        for guest in &mut self.known {
            let has = guest.last.as_ref().is_some_and(|(addrs, _)| {
                addrs.iter().any(|a| pidcap_core::canonical_ip(*a) == ip)
            });
            guest.wanted |= has;
            touched |= has;
        }
        touched
    }

    /// Asks for namespace `netns` to be read at the next pass (a miss on its own loopback);
    /// true when it is known.
    pub fn want(&mut self, netns: NetNsId) -> bool {
        let guest = self.known.iter_mut().find(|g| g.netns == netns);
        guest.map(|g| g.wanted = true).is_some()
    }

    /// Reads the namespaces `which`; a failed one contributes its last good read.
    fn read_all_of(
        &mut self,
        which: &[NetNsId],
        now: Instant,
        out: &mut Vec<SocketEntry>,
        pass: &mut GuestPass,
    ) -> bool {
        let mut failed = false;
        for guest in self.known.iter_mut().filter(|g| which.contains(&g.netns)) {
            let from = out.len();
            guest.failed = false;
            let read = guest
                .pids
                .iter()
                .find_map(|&pid| read_one(&self.proc, guest.netns, pid, out));
            match read {
                Some(addrs) => {
                    guest.last = Some((addrs, out[from..].to_vec()));
                    guest.read_at = Some(now);
                    guest.wanted = false;
                    pass.read += 1;
                }
                None => {
                    out.truncate(from);
                    pass.skipped += 1;
                    guest.failed = true;
                    failed = true;
                    if let Some((_, sockets)) = &guest.last {
                        out.extend_from_slice(sockets);
                    }
                }
            }
            if let Some((addrs, _)) = &guest.last {
                pass.addrs.extend(addrs.iter().map(|&ip| (guest.netns, ip)));
            }
        }
        failed
    }

    /// `pid` was seen in `netns`: true when that namespace was not known (it is read from
    /// the next pass on, through `pid`, until the next discovery).
    pub fn note(&mut self, netns: NetNsId, pid: u32) -> bool {
        if netns == NetNsId::UNPLACED
            || self.home.is_some_and(|h| h == netns)
            || self.known.iter().any(|g| g.netns == netns)
        {
            return false;
        }
        self.known.push(Guest::new(netns, vec![pid]));
        true
    }

    /// The namespaces (and the pids each is read through) known now.
    pub fn known(&self) -> Vec<(NetNsId, Vec<u32>)> {
        self.known
            .iter()
            .map(|g| (g.netns, g.pids.clone()))
            .collect()
    }

    fn discover(&mut self, home: NetNsId, now: Instant) {
        match self.proc.network_namespaces(CANDIDATES, Some(home)) {
            Ok(found) => {
                merge(&mut self.known, &found);
                self.discovered_at = Some(now);
                self.stale = false;
            }
            Err(error) => debug!(error = %error, "network namespaces not listed"),
        }
    }
}

impl Guest {
    /// Whether this pass reads it (see [`REREAD_EVERY`]).
    fn due(&self, now: Instant) -> bool {
        self.wanted
            || self.failed
            || self
                .read_at
                .is_none_or(|at| now.saturating_duration_since(at) >= REREAD_EVERY)
    }

    fn new(netns: NetNsId, pids: Vec<u32>) -> Guest {
        Guest {
            netns,
            pids,
            last: None,
            unseen: 0,
            failed: false,
            read_at: None,
            wanted: false,
        }
    }
}

/// Takes in a discovery: namespaces found are read through the pids found; one not found
/// is kept until [`FORGET_AFTER`] discoveries in a row miss it.
fn merge(known: &mut Vec<Guest>, found: &[(NetNsId, Vec<u32>)]) {
    for guest in known.iter_mut() {
        match found.iter().find(|(n, _)| *n == guest.netns) {
            Some((_, pids)) => {
                guest.pids.clone_from(pids);
                guest.unseen = 0;
            }
            None => guest.unseen += 1,
        }
    }
    known.retain(|g| g.unseen < FORGET_AFTER);
    for (netns, pids) in found {
        if !known.iter().any(|g| g.netns == *netns) {
            known.push(Guest::new(*netns, pids.clone()));
        }
    }
}

/// The sockets (appended to `out`) and addresses of `netns`, read through `pid`; `None`
/// when `pid` exited or is not in `netns` any more.
fn read_one(
    proc: &ProcRoot,
    netns: NetNsId,
    pid: u32,
    out: &mut Vec<SocketEntry>,
) -> Option<Vec<IpAddr>> {
    let root = proc.of_process(pid);
    let read = root
        .namespace_addresses()
        .and_then(|addrs| read_text_tables(&root, netns, out).map(|()| addrs));
    let still_there = proc.netns_of(pid).ok() == Some(netns);
    match read {
        Ok(addrs) if still_there => Some(addrs),
        Ok(_) => None,
        Err(error) => {
            debug!(pid, netns = netns.0, error = %error, "namespace not read");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NetNsId = NetNsId(4026532001);
    const B: NetNsId = NetNsId(4026532002);

    fn state(known: &[Guest]) -> Vec<(u64, u32, u32)> {
        known
            .iter()
            .map(|g| (g.netns.0, g.pids[0], g.unseen))
            .collect()
    }

    /// A namespace one discovery misses (its only process between two execs) stays; one
    /// that two discoveries in a row miss goes.
    #[test]
    fn a_namespace_is_forgotten_only_after_discoveries_in_a_row_miss_it() {
        let mut known = Vec::new();
        merge(&mut known, &[(A, vec![10]), (B, vec![20])]);
        assert_eq!(state(&known), [(A.0, 10, 0), (B.0, 20, 0)]);
        merge(&mut known, &[(B, vec![21])]);
        assert_eq!(state(&known), [(A.0, 10, 1), (B.0, 21, 0)]);
        merge(&mut known, &[(A, vec![11]), (B, vec![21])]);
        assert_eq!(state(&known), [(A.0, 11, 0), (B.0, 21, 0)]);
        merge(&mut known, &[(B, vec![21])]);
        merge(&mut known, &[(B, vec![21])]);
        assert_eq!(state(&known), [(B.0, 21, 0)]);
    }

    /// A namespace read well is not read again until a miss asks for it (or a while has
    /// passed); its last read stands in meanwhile.
    #[test]
    fn a_namespace_is_read_again_only_when_asked_or_after_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let mut guests = Guests::new(ProcRoot::new(dir.path()));
        let home = NetNsId(4026531840);
        let now = Instant::now();
        guests.home = Some(home);
        guests.discovered_at = Some(now);
        guests.known.push(Guest {
            last: Some((vec!["10.0.0.2".parse().unwrap()], Vec::new())),
            read_at: Some(now),
            ..Guest::new(A, vec![4_000_000])
        });
        let pass = guests.read_into(home, now, &mut Vec::new());
        assert_eq!((pass.read, pass.skipped, pass.reused), (0, 0, 1));
        assert!(
            !guests.touch("10.0.0.9".parse().unwrap()),
            "not its address"
        );
        assert!(guests.touch("10.0.0.2".parse().unwrap()));
        let pass = guests.read_into(home, now, &mut Vec::new());
        assert_eq!(
            pass.reused, 0,
            "asked for: read (here it fails: no such process)"
        );
        assert!(pass.skipped > 0);
    }

    /// Between idle passes a discovery finds a new namespace (a pass should read it), not
    /// one already read, and not before a pass has named the home namespace.
    #[test]
    fn a_discovery_between_passes_asks_for_a_pass_only_for_a_new_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let pid_dir = dir.path().join("4000000/ns");
        std::fs::create_dir_all(&pid_dir).unwrap();
        std::os::unix::fs::symlink("net:[4026532001]", pid_dir.join("net")).unwrap();
        let mut guests = Guests::new(ProcRoot::new(dir.path()));
        let now = Instant::now();
        assert!(
            !guests.discover_between_passes(now),
            "no pass yet: home unknown"
        );
        guests.home = Some(NetNsId(4026531840));
        assert!(
            guests.discover_between_passes(now),
            "a new namespace waits to be read"
        );
        guests.known[0].read_at = Some(now);
        let later = now + DISCOVER_EVERY;
        assert!(
            !guests.discover_between_passes(later),
            "read already: no pass"
        );
        assert_eq!(guests.known().len(), 1);
    }

    /// A failed read keeps the namespace's last good read in the pass while a process is
    /// still found in it; once none is, the namespace goes.
    #[test]
    fn a_failed_read_stands_in_with_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        // A process in A whose tables cannot be read: only its ns/net link exists.
        let pid_dir = dir.path().join("4000000/ns");
        std::fs::create_dir_all(&pid_dir).unwrap();
        std::os::unix::fs::symlink("net:[4026532001]", pid_dir.join("net")).unwrap();
        let mut guests = Guests::new(ProcRoot::new(dir.path()));
        let socket = SocketEntry {
            netns: A,
            proto: pidcap_wire::IpProto::Udp,
            local: "10.0.0.2:53".parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: pidcap_core::TcpState::Close,
            inode: 7,
            uid: 0,
        };
        let home = NetNsId(4026531840);
        let now = Instant::now();
        guests.home = Some(home);
        guests.discovered_at = Some(now);
        guests.known.push(Guest {
            last: Some((vec!["10.0.0.2".parse().unwrap()], vec![socket])),
            ..Guest::new(A, vec![4_000_000])
        });
        let mut out = Vec::new();
        let pass = guests.read_into(home, now, &mut out);
        assert_eq!(out, [socket]);
        assert_eq!(pass.addrs, [(A, "10.0.0.2".parse().unwrap())]);
        assert_eq!((pass.read, pass.skipped), (0, 1));
        assert!(guests.stale, "rediscovered at the next pass");
        // The process is gone: two discoveries without it, and the namespace is forgotten.
        std::fs::remove_dir_all(dir.path().join("4000000")).unwrap();
        for _ in 0..FORGET_AFTER {
            guests.read_into(home, now, &mut Vec::new());
        }
        assert!(guests.known().is_empty());
    }
}
