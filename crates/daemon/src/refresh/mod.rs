//! The refresher: builds socket tables from the kernel and swaps them in.
//!
//! Sockets come from netlink sock_diag (or `/proc/net` text as a fallback) on every pass;
//! socket owners from a full fd scan at most every [`FULL_SCAN_EVERY`] and, in between, a
//! search for new inodes only. A table is published only when something changed.
//!
//! Runs on its own thread (blocking procfs reads never sit on a tokio worker). A full
//! refresh happens every `interval`. A lookup miss on the packet path posts the flow (a
//! bounded queue) and a wake-up (a one-slot channel, so misses coalesce): the refresher asks
//! the kernel for exactly those sockets (sock_diag by 4-tuple) and resolves their holders by
//! a targeted search, publishing a table at most every `TARGETED_GAP`; if that cannot
//! settle them, it does a full pass, at least `MIN_GAP` after the previous one. The packet
//! path never waits.

mod owners;
mod source;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{
    choose_owner, ClosedSocket, LiveSockets, NetNsId, ProcessInfo, ProcessKey, RecentSockets,
    SocketEntry, SocketTable,
};
use pidcap_sockets::{local_addresses, ProcRoot, ScanStats};
use pidcap_wire::{FlowKey, IpProto};
use tracing::{debug, warn};

use crate::state::{Shared, Worker};
use crate::watch::Learned;

pub use owners::{OwnerTracker, OwnerUpdate};
pub use source::SocketSource;

/// The shortest time between two refreshes asked for by misses.
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// Asks the refresher for an early refresh; never blocks. Concurrent requests coalesce into
/// at most one pending wake-up; missed flows queue (bounded, dropped when full) so the
/// refresher can ask the kernel for exactly those sockets.
#[derive(Debug, Clone)]
pub struct MissSignal {
    wake: SyncSender<()>,
    flows: SyncSender<FlowKey>,
}

impl MissSignal {
    /// Wakes the refresher for a pass.
    pub fn request(&self) {
        let _ = self.wake.try_send(());
    }

    /// Reports a flow no socket was found for, and wakes the refresher.
    pub fn missed(&self, flow: FlowKey) {
        let _ = self.flows.try_send(flow);
        self.request();
    }
}

/// The refresher's end of a [`MissSignal`].
#[derive(Debug)]
pub struct MissRequests {
    wake: Receiver<()>,
    flows: Receiver<FlowKey>,
}

/// The full-pass period while no packet is captured.
pub const IDLE_INTERVAL: Duration = Duration::from_secs(10);

/// The shortest time between two tables published by targeted lookups.
const TARGETED_GAP: Duration = Duration::from_millis(20);

/// The shortest time between two tables published for learnt sockets alone.
const LEARNED_GAP: Duration = Duration::from_millis(50);

/// Missed flows that may wait for the refresher at once.
const MISSED_FLOWS: usize = 1024;

/// A one-slot wake-up channel and a bounded queue of missed flows.
pub fn miss_channel() -> (MissSignal, MissRequests) {
    let (wake, wake_rx) = std::sync::mpsc::sync_channel(1);
    let (flows, flows_rx) = std::sync::mpsc::sync_channel(MISSED_FLOWS);
    (
        MissSignal { wake, flows },
        MissRequests {
            wake: wake_rx,
            flows: flows_rx,
        },
    )
}

/// Full scans of every process's fds happen at most this often; in between, only new
/// sockets are looked for.
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(10);

/// How long a closed connection keeps its owner for trailing packets (FIN/ACK/RST,
/// retransmits, packets still in the capture buffer).
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How long a closed (or learnt, not yet dumped) unconnected socket keeps its owner: its
/// datagrams and echo replies still in the capture buffer or the pending buffer. Short,
/// because unlike a connection's 4-tuple a bound port is soon taken again (a restarted
/// server) and, until a dump lists the new socket, the kept one would answer for it.
pub const BOUND_GRACE: Duration = Duration::from_secs(2);

/// Reads the kernel's sockets, their holders and the host's addresses, in one go (used at
/// start-up and by benchmarks; the refresher keeps state between passes instead).
pub fn build_table(
    proc: &ProcRoot,
    netns: NetNsId,
    generation: u64,
) -> anyhow::Result<(SocketTable, ScanStats)> {
    let mut refresh = TableBuilder::new(proc.clone(), FULL_SCAN_EVERY);
    let built = refresh.build(netns, generation, Instant::now())?;
    Ok((built.table.unwrap_or_default(), built.stats))
}

/// Builds tables from the kernel, keeping what does not change between passes.
#[derive(Debug)]
pub struct TableBuilder {
    sockets: SocketSource,
    owners: OwnerTracker,
    last_sockets: Vec<SocketEntry>,
    last_addrs: Vec<IpAddr>,
    scratch: Vec<SocketEntry>,
    closed: HashMap<(IpProto, SocketAddr, SocketAddr), (ClosedSocket, Instant)>,
    departed: HashMap<ProcessKey, (ProcessInfo, Instant)>,
    /// Unconnected sockets (listeners, UDP, ping, raw) kept for [`BOUND_GRACE`] by inode:
    /// those the watcher or tracer learnt, and non-TCP ones that closed after a dump showed
    /// them. Listed before the live sockets, so a live socket on the same address wins.
    bound_kept: HashMap<u64, (SocketEntry, Instant)>,
    dirty: bool,
    /// The indexed live sockets of the last table, while `last_sockets`, `bound_kept` and
    /// `last_addrs` have not changed since.
    live: Option<Arc<LiveSockets>>,
    /// `closed` and `departed` as the last table had them, plus what was learnt since; `None`
    /// after something expired.
    recent: Option<Arc<RecentSockets>>,
}

/// One pass: a new table when anything changed, and what the owner scan saw.
#[derive(Debug)]
pub struct Built {
    pub table: Option<SocketTable>,
    pub stats: ScanStats,
    pub full_scan: bool,
}

impl TableBuilder {
    pub fn new(proc: ProcRoot, full_every: Duration) -> TableBuilder {
        TableBuilder {
            sockets: SocketSource::open(proc.clone()),
            owners: OwnerTracker::new(proc, full_every),
            last_sockets: Vec::new(),
            last_addrs: Vec::new(),
            scratch: Vec::new(),
            closed: HashMap::new(),
            departed: HashMap::new(),
            bound_kept: HashMap::new(),
            dirty: true,
            live: None,
            recent: None,
        }
    }

    /// Reads sockets, brings owners up to date, and returns a table only when sockets,
    /// owners or addresses changed (so the attribution cache survives quiet periods).
    pub fn build(
        &mut self,
        netns: NetNsId,
        generation: u64,
        now: Instant,
    ) -> anyhow::Result<Built> {
        self.sockets.read_into(netns, &mut self.scratch)?;
        let closed_changed = self.remember_closed(now);
        let update = self.owners.update(&self.scratch, now)?;
        let addrs = local_addresses()?;
        let live_changed = self.scratch != self.last_sockets || addrs != self.last_addrs;
        let same = !self.dirty && !update.changed && !closed_changed && !live_changed;
        debug!(
            sockets = self.scratch.len(),
            source = self.sockets.kind(),
            full_scan = update.full,
            processes = update.stats.processes_scanned,
            vanished = update.stats.vanished,
            permission_denied = update.stats.permission_denied,
            unchanged = same,
            "socket table read"
        );
        std::mem::swap(&mut self.scratch, &mut self.last_sockets);
        let built = |table| Built {
            table,
            stats: update.stats,
            full_scan: update.full,
        };
        if same {
            return Ok(built(None));
        }
        self.dirty = false;
        if live_changed {
            self.live = None;
        }
        self.last_addrs = addrs;
        Ok(built(Some(self.table(netns, generation))))
    }
}

impl TableBuilder {
    /// Remembers the owners of sockets that disappeared (or lost their inode, as in
    /// TIME_WAIT) since the last pass — connected ones by their addresses, unconnected
    /// non-TCP ones in `bound_kept` — and forgets those older than [`CLOSE_GRACE`] (and
    /// [`BOUND_GRACE`]).
    /// Returns whether the set changed.
    fn remember_closed(&mut self, now: Instant) -> bool {
        let before = self.closed.len();
        self.closed
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < CLOSE_GRACE);
        self.departed
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < CLOSE_GRACE);
        let learned = self.bound_kept.len();
        self.bound_kept
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < BOUND_GRACE);
        if self.bound_kept.len() != learned {
            self.live = None;
        }
        if self.closed.len() != before {
            self.recent = None;
        }
        let mut changed = self.closed.len() != before || self.bound_kept.len() != learned;
        if self.scratch == self.last_sockets {
            return changed;
        }
        let present: HashSet<u64> = self
            .scratch
            .iter()
            .map(|s| s.inode)
            .filter(|&i| i != 0)
            .collect();
        let owners = self.owners.map();
        for s in &self.last_sockets {
            if s.inode == 0 || present.contains(&s.inode) {
                continue;
            }
            let Some(owner) = owners.holders.get(&s.inode).and_then(|h| choose_owner(h)) else {
                continue;
            };
            if let Some(info) = owners.processes.get(&owner) {
                self.departed.insert(owner, (info.clone(), now));
            }
            self.recent = None;
            changed = true;
            if s.is_wildcard_remote() {
                // An unconnected socket's last datagrams or echo replies may still sit in the
                // capture buffer when its process exits. A closed TCP listener has no
                // trailing traffic of its own (its connections are remembered above).
                if s.proto != IpProto::Tcp {
                    self.bound_kept.insert(s.inode, (*s, now));
                    self.live = None;
                }
                continue;
            }
            let closed = ClosedSocket {
                proto: s.proto,
                local: s.local,
                remote: s.remote,
                inode: s.inode,
                owner,
            };
            self.closed
                .insert((s.proto, s.local, s.remote), (closed, now));
        }
        changed
    }

    /// Looks up the sockets of `flows` one by one (netlink sock_diag) and, if every one was
    /// found with a known or resolvable holder, returns a table with them added; `None` when
    /// a full pass is needed instead (a flow not found, no netlink, a holder not found).
    pub fn resolve_flows(
        &mut self,
        flows: &[FlowKey],
        netns: NetNsId,
        generation: u64,
    ) -> anyhow::Result<Option<SocketTable>> {
        let mut found: Vec<SocketEntry> = Vec::new();
        for flow in flows {
            let mut any = false;
            for (local, remote) in [(flow.src, flow.dst), (flow.dst, flow.src)] {
                match self.sockets.find(flow.proto, local, remote, netns)? {
                    Some(entry) if entry.inode != 0 => {
                        any = true;
                        if !found.iter().any(|e| e.inode == entry.inode) {
                            found.push(entry);
                        }
                    }
                    Some(_) => any = true,
                    None => {}
                }
            }
            if !any {
                return Ok(None);
            }
        }
        if !self.owners.place(&found)? {
            return Ok(None);
        }
        // One pass over the (possibly 20,000-entry) list, not one per found socket.
        let known: HashSet<u64> = self.last_sockets.iter().map(|e| e.inode).collect();
        let before = self.last_sockets.len();
        self.last_sockets
            .extend(found.into_iter().filter(|e| !known.contains(&e.inode)));
        if self.last_sockets.len() != before {
            self.live = None;
        }
        Ok(Some(self.table(netns, generation)))
    }

    /// A table of everything the builder knows now, without reading the kernel (after
    /// [`TableBuilder::learn`]).
    pub fn current(&mut self, netns: NetNsId, generation: u64) -> SocketTable {
        self.dirty = false;
        self.table(netns, generation)
    }

    /// A table of everything the builder knows now; parts that did not change since the
    /// last table are shared with it, not rebuilt.
    fn table(&mut self, netns: NetNsId, generation: u64) -> SocketTable {
        if self.live.is_none() {
            let live = LiveSockets::build(self.table_sockets(), self.last_addrs.clone());
            self.live = Some(Arc::new(live));
        }
        if self.recent.is_none() {
            let mut recent = RecentSockets::default();
            for (c, _) in self.closed.values() {
                recent.insert(*c);
            }
            for (info, _) in self.departed.values() {
                recent.insert_departed(Arc::new(info.clone()));
            }
            self.recent = Some(Arc::new(recent));
        }
        SocketTable::from_shared(
            generation,
            Some(netns),
            self.live.clone().unwrap_or_default(),
            self.owners.map(),
            self.recent.clone().unwrap_or_default(),
        )
    }

    /// The kept unconnected sockets that the last dump did not show, then the live sockets
    /// (later entries win an address in [`LiveSockets`], so a port reused by a live socket
    /// is never credited to a kept one).
    fn table_sockets(&self) -> Vec<SocketEntry> {
        let live: HashSet<u64> = self.last_sockets.iter().map(|s| s.inode).collect();
        let mut kept: Vec<&(SocketEntry, Instant)> = self
            .bound_kept
            .values()
            .filter(|(s, _)| !live.contains(&s.inode))
            .collect();
        kept.sort_by_key(|(_, at)| *at); // of two on one address, the newer wins
        let mut sockets: Vec<SocketEntry> = kept.into_iter().map(|(s, _)| *s).collect();
        sockets.extend_from_slice(&self.last_sockets);
        sockets
    }

    /// Takes in sockets the process watcher saw a new process holding. They are kept like
    /// recently closed sockets (the exact table entry wins while the socket lives), so the
    /// process's packets are credited to it even after it exited; the next pass publishes them.
    pub fn learn(&mut self, learned: Learned, now: Instant) {
        let key = learned.info.key;
        let mut recent = self.recent.as_mut().map(Arc::make_mut);
        for s in learned.sockets {
            if s.inode != 0 {
                // The socket tracer's claims carry no inode (tracepoints do not give it).
                self.owners.learn(s.inode, key);
            }
            if s.is_wildcard_remote() {
                // Listeners, unconnected UDP, ping and raw sockets are matched by their bound
                // address: keep them in the socket list itself for the grace period.
                self.bound_kept.insert(s.inode, (s, now));
                self.live = None;
                continue;
            }
            let closed = ClosedSocket {
                proto: s.proto,
                local: s.local,
                remote: s.remote,
                inode: s.inode,
                owner: key,
            };
            self.closed
                .insert((s.proto, s.local, s.remote), (closed, now));
            if let Some(recent) = recent.as_deref_mut() {
                recent.insert(closed);
            }
        }
        if let Some(recent) = recent {
            recent.insert_departed(Arc::new(learned.info.clone()));
        }
        self.departed.insert(key, (learned.info, now));
        self.dirty = true; // publish on the next pass even if the socket list is unchanged
    }
}

/// What a targeted lookup of missed flows achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missed {
    /// No flow was waiting.
    None,
    /// Every waiting flow was found, and a table published.
    Settled,
    /// Some flow needs a full pass.
    Unsettled,
}

/// The refresher's loop; returns when `stop` is set.
#[derive(Debug)]
pub struct Refresher {
    pub builder: TableBuilder,
    pub proc: ProcRoot,
    pub netns: NetNsId,
    pub interval: Duration,
    pub shared: Arc<Shared>,
    pub requests: MissRequests,
    pub learned: Receiver<Learned>,
    pub stop: Arc<AtomicBool>,
}

impl Refresher {
    pub fn run(mut self) {
        let mut generation = self.shared.table.load().generation();
        let mut last = Instant::now();
        let mut failing = false;
        let mut denied_warned = false;
        let mut targeted_at = Instant::now();
        let mut learned_at = Instant::now();
        let mut seen_frames = self.shared.frames();
        while !self.stop.load(Ordering::Relaxed) {
            self.shared.beat_worker(Worker::Refresh, Instant::now());
            crate::fault::stall_point("refresh", &self.stop);
            // With nothing captured since the last pass, a table only serves queries: refresh
            // seldom (a miss still wakes the refresher at once when traffic resumes).
            let period = if self.shared.frames() == seen_frames {
                self.interval.max(IDLE_INTERVAL)
            } else {
                self.interval
            };
            let wait = period
                .saturating_sub(last.elapsed())
                .min(Duration::from_millis(200));
            match self.requests.wake.recv_timeout(wait) {
                Ok(()) => {
                    let learned = self.take_learned();
                    match self.resolve_missed(&mut generation, &mut targeted_at) {
                        Missed::Settled => continue,
                        Missed::None if learned => {
                            // What the watcher or tracer learnt needs no dump: publish it,
                            // gathering for up to LEARNED_GAP (the packets wait in the
                            // pending buffer; each table costs a build and empties the
                            // attribution cache, and the tracer may learn thousands a second).
                            std::thread::sleep(LEARNED_GAP.saturating_sub(learned_at.elapsed()));
                            self.take_learned();
                            learned_at = Instant::now();
                            generation += 1;
                            let table = self.builder.current(self.netns, generation);
                            self.shared.publish(table);
                            continue;
                        }
                        Missed::None | Missed::Unsettled if learned => {}
                        Missed::None | Missed::Unsettled => {
                            std::thread::sleep(MIN_GAP.saturating_sub(last.elapsed()))
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) if last.elapsed() < period => continue,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.take_learned();
            seen_frames = self.shared.frames();
            generation += 1;
            last = Instant::now();
            failing = self.refresh_once(generation, failing, &mut denied_warned);
        }
    }

    /// Moves what the process watcher learnt into the builder; true if there was any (such
    /// a refresh is not delayed: the process may already be gone).
    fn take_learned(&mut self) -> bool {
        let now = Instant::now();
        let mut any = false;
        while let Ok(learned) = self.learned.try_recv() {
            self.builder.learn(learned, now);
            any = true;
        }
        any
    }

    /// Asks the kernel for exactly the sockets of missed flows and publishes what it
    /// learnt (with anything learnt from the process side). Tables published this way are
    /// at least [`TARGETED_GAP`] apart.
    fn resolve_missed(&mut self, generation: &mut u64, targeted_at: &mut Instant) -> Missed {
        // Each new table empties the attribution cache: under a flood of new flows, tables
        // must not follow each other faster than this.
        std::thread::sleep(TARGETED_GAP.saturating_sub(targeted_at.elapsed()));
        *targeted_at = Instant::now();
        let flows: Vec<FlowKey> = self.requests.flows.try_iter().take(MISSED_FLOWS).collect();
        if flows.is_empty() {
            return Missed::None;
        }
        match self
            .builder
            .resolve_flows(&flows, self.netns, *generation + 1)
        {
            Ok(Some(table)) => {
                *generation += 1;
                self.shared.publish(table);
                Missed::Settled
            }
            Ok(None) => Missed::Unsettled,
            Err(error) => {
                debug!(error = %error, "targeted socket lookup failed; doing a full pass");
                Missed::Unsettled
            }
        }
    }

    /// One refresh; returns whether it failed (so a persistent failure is warned once).
    fn refresh_once(
        &mut self,
        generation: u64,
        was_failing: bool,
        denied_warned: &mut bool,
    ) -> bool {
        let started = Instant::now();
        match self.builder.build(self.netns, generation, started) {
            Ok(built) => {
                if built.stats.permission_denied > 0 && !*denied_warned {
                    *denied_warned = true;
                    warn!(
                        processes = built.stats.permission_denied,
                        "some processes' file descriptors are unreadable; their traffic goes to unknown. \
                         pidcapd needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (reported once)"
                    );
                }
                if let Some(table) = built.table {
                    self.shared.publish(table);
                }
                self.mark_exits();
                let mut info = self.shared.refresh_info();
                info.count += 1;
                info.last_duration = started.elapsed();
                if was_failing {
                    warn!("socket table refresh works again");
                }
                false
            }
            Err(error) => {
                self.shared.refresh_info().failures += 1;
                if !was_failing {
                    warn!(error = %error, "socket table refresh failed; keeping the previous table");
                }
                true
            }
        }
    }

    /// Marks ledger processes that no longer exist (or whose pid now names another process).
    /// Only processes that had traffic are checked: one small read each.
    fn mark_exits(&self) {
        let live = self.shared.ledger().live_keys();
        let gone: Vec<ProcessKey> = live
            .into_iter()
            .filter(|k| !self.still_running(k))
            .collect();
        if gone.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut ledger = self.shared.ledger();
        for key in &gone {
            ledger.mark_exited(key, now);
        }
    }

    fn still_running(&self, key: &ProcessKey) -> bool {
        match self.proc.start_time(key.pid) {
            Ok(start) => start == key.start_time,
            Err(e) => !e.is_not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The builder against this process's real sockets (netlink or /proc, and its own fds).

    use std::net::{TcpListener, UdpSocket};

    use pidcap_core::MatchKind;

    use super::*;

    struct Builder {
        builder: TableBuilder,
        netns: NetNsId,
        generation: u64,
        start: Instant,
    }

    impl Builder {
        fn new() -> Builder {
            let proc = ProcRoot::default();
            Builder {
                netns: proc.self_netns().expect("own network namespace"),
                builder: TableBuilder::new(proc, FULL_SCAN_EVERY),
                generation: 0,
                start: Instant::now(),
            }
        }

        /// A fresh table as of `secs` after the start (forced, so an unchanged pass still
        /// yields one to look at).
        fn table_at(&mut self, secs: u64) -> SocketTable {
            self.generation += 1;
            let now = self.start + Duration::from_secs(secs);
            let built = self
                .builder
                .build(self.netns, self.generation, now)
                .expect("socket table");
            built
                .table
                .unwrap_or_else(|| self.builder.current(self.netns, self.generation))
        }
    }

    fn udp_owner(table: &SocketTable, local: SocketAddr) -> Option<(u64, u32)> {
        let peer: SocketAddr = "127.0.0.9:53".parse().unwrap();
        table.lookup(IpProto::Udp, local, peer).map(|m| {
            assert_eq!(m.kind, MatchKind::Wildcard, "{m:?}");
            (m.inode, m.owner.expect("an owner").pid)
        })
    }

    fn inode_of(socket: &UdpSocket) -> u64 {
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).unwrap();
        let link = link.to_string_lossy();
        link.trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse()
            .unwrap_or_else(|_| panic!("not a socket link: {link}"))
    }

    #[test]
    fn a_closed_unconnected_socket_keeps_its_owner_until_its_port_is_reused_or_grace_ends() {
        let me = std::process::id();
        let mut b = Builder::new();
        let first = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (addr, first_inode) = (first.local_addr().unwrap(), inode_of(&first));
        assert_eq!(udp_owner(&b.table_at(0), addr), Some((first_inode, me)));

        // Closed: its datagrams still in the capture buffer keep their owner.
        drop(first);
        assert_eq!(udp_owner(&b.table_at(1), addr), Some((first_inode, me)));

        // The port taken again: the live socket wins.
        let second = UdpSocket::bind(addr).unwrap();
        let second_inode = inode_of(&second);
        assert_ne!(second_inode, first_inode);
        assert_eq!(udp_owner(&b.table_at(2), addr), Some((second_inode, me)));

        // Both closed: the newer is kept; after the grace period, neither.
        drop(second);
        assert_eq!(udp_owner(&b.table_at(3), addr), Some((second_inode, me)));
        let after = 3 + BOUND_GRACE.as_secs();
        assert_eq!(udp_owner(&b.table_at(after), addr), None);
    }

    #[test]
    fn a_closed_tcp_listener_is_not_kept() {
        let mut b = Builder::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer: SocketAddr = "127.0.0.9:40000".parse().unwrap();
        let table = b.table_at(0);
        let found = table
            .lookup(IpProto::Tcp, addr, peer)
            .expect("the listener");
        assert_eq!(found.owner.map(|k| k.pid), Some(std::process::id()));
        drop(listener);
        assert_eq!(b.table_at(1).lookup(IpProto::Tcp, addr, peer), None);
    }
}
