//! The refresher: reads the kernel's sockets, their holders and the host's addresses, and
//! publishes the tables that the table-assembly policy makes of them.
//!
//! This is the I/O shell. Sockets come from netlink sock_diag (or `/proc/net` text as a
//! fallback, [`SocketSource`]) on every pass; socket owners from a full fd scan at most every
//! [`FULL_SCAN_EVERY`] and, in between, a search for new inodes only ([`OwnerTracker`]).
//! What to keep between passes — closed, departed, kept and learned sockets, the grace periods
//! ([`CLOSE_GRACE`], [`BOUND_GRACE`]), "a live socket wins", which table parts to rebuild and
//! whether a pass publishes at all (only when something changed) — is
//! [`pidcap_core::TableAssembly`]'s, a pure state machine fed by [`TableBuilder`] with time
//! as a parameter.
//!
//! Runs on its own thread (blocking procfs reads never sit on a tokio worker). A full
//! refresh happens every `interval`. A lookup miss on the packet path posts the flow (a
//! bounded queue) and a wake-up (a one-slot channel, so misses coalesce): the refresher asks
//! the kernel for exactly those sockets (sock_diag by 4-tuple) and resolves their holders by
//! a targeted search, publishing a table at most every `TARGETED_GAP`; if that cannot
//! settle them, it does a full pass, at least `MIN_GAP` after the previous one. The packet
//! path never waits.

mod guests;
mod nat;
mod owners;
mod source;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{NetNsId, Pass, ProcessKey, Sighting, SocketEntry, SocketTable, TableAssembly};
use pidcap_sockets::{local_addresses, ProcRoot, ScanStats};
use pidcap_wire::{FlowKey, IpProto};
use tracing::{debug, warn};

use crate::inbox::{Learned, MissRequests, News, MISSED_FLOWS};
use crate::state::{DaemonState, Worker};

pub use guests::{GuestPass, Guests, DISCOVER_EVERY};
pub use nat::NatBook;
pub use owners::{OwnerTracker, OwnerUpdate};
pub use source::SocketSource;

/// The shortest time between two refreshes asked for by misses.
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// The full-pass period while no packet is captured.
pub const IDLE_INTERVAL: Duration = Duration::from_secs(30);

/// Warns that some processes' fds could not be read (see [`denied_warning`]).
fn warn_denied(stats: &ScanStats) {
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    let holds = crate::privileges::reads_every_process();
    warn!(
        processes = stats.permission_denied,
        "{} (reported once)",
        denied_warning(stats, holds, comm)
    );
}

/// What to tell when some processes' fds could not be read: the first one by pid and name,
/// and whether a capability is missing (`holds`: CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH are
/// held) or the kernel refuses anyway (a security module, or a sandbox whose pid 1 outranks
/// its root).
fn denied_warning(stats: &ScanStats, holds: bool, comm: impl Fn(u32) -> Option<String>) -> String {
    let first = match stats.first_denied {
        Some(pid) => match comm(pid) {
            Some(name) => format!(" (first: pid {pid}, {})", name.trim()),
            None => format!(" (first: pid {pid})"),
        },
        None => String::new(),
    };
    let n = stats.permission_denied;
    if holds {
        format!(
            "the kernel refuses to show the file descriptors of {n} process(es){first} although \
             pidcapd holds CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (a security module or the \
             sandbox forbids it); their traffic goes to unknown"
        )
    } else {
        format!(
            "the file descriptors of {n} process(es){first} are unreadable; their traffic goes \
             to unknown. pidcapd needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
        )
    }
}

/// While idle, how often the network namespaces are listed between full passes (a new one
/// triggers a pass that reads it: a container's own loopback capture opens within this).
pub const IDLE_DISCOVERY: Duration = Duration::from_secs(10);

/// The shortest time between two tables published by targeted lookups.
const TARGETED_GAP: Duration = Duration::from_millis(20);

/// The shortest time between two tables published for learned sockets alone.
const LEARNED_GAP: Duration = Duration::from_millis(50);
/// At most this many kept sockets are looked up in the kernel per unread bind (newest first).
const UNREAD_CHECKS: usize = 256;
/// How often the refresher looks whether missed flows it put off are due a pass.
const DEFERRED_POLL: Duration = Duration::from_millis(10);
/// The longest a missed flow's pass waits for the socket tracer to report how far it read.
const CLAIMS_PATIENCE: Duration = Duration::from_millis(250);
/// How long past a fork's window the socket tracer still reports how far it read: past
/// the table that takes the last claims of the window in (see [`LEARNED_GAP`]).
const FORK_SETTLE: Duration = Duration::from_millis(250);

/// Full scans of every process's fds happen at most this often; in between, only new
/// sockets are looked for.
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(10);

pub use pidcap_core::{BOUND_GRACE, CLOSE_GRACE};

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

/// Builds tables from the kernel: reads sockets, their holders and the host's addresses, and
/// feeds them to the table-assembly policy ([`TableAssembly`]), which keeps what does not
/// change between passes.
#[derive(Debug)]
pub struct TableBuilder {
    sockets: SocketSource,
    /// The other network namespaces' sockets and addresses.
    guests: Guests,
    owners: OwnerTracker,
    /// Address translations (NAT) from the connection tracker.
    nat: NatBook,
    /// The buffer the next pass reads the socket list into (the previous list, reused).
    scratch: Vec<SocketEntry>,
    assembly: TableAssembly,
}

/// One pass: a new table when anything changed, and what the owner scan saw.
#[derive(Debug)]
pub struct RefreshPass {
    pub table: Option<SocketTable>,
    pub stats: ScanStats,
    pub full_scan: bool,
}

impl TableBuilder {
    pub fn new(proc: ProcRoot, full_every: Duration) -> TableBuilder {
        TableBuilder {
            sockets: SocketSource::open(proc.clone()),
            guests: Guests::new(proc.clone()),
            owners: OwnerTracker::new(proc, full_every),
            nat: NatBook::new(),
            scratch: Vec::new(),
            assembly: TableAssembly::new(),
        }
    }

    /// Reads sockets, brings owners up to date, and returns a table only when sockets,
    /// owners or addresses changed (so the attribution cache survives quiet periods).
    pub fn build(
        &mut self,
        netns: NetNsId,
        generation: u64,
        now: Instant,
    ) -> anyhow::Result<RefreshPass> {
        self.sockets.read_into(netns, &mut self.scratch)?;
        let guests = self.guests.read_into(netns, now, &mut self.scratch);
        let listed_at = Instant::now();
        // The holders of sockets that left, before the scan forgets them.
        let owners_before = self.owners.map();
        let update = self.owners.update(&self.scratch, now)?;
        let addrs = local_addresses()?;
        if self.nat.verify(now) {
            self.assembly.set_nat(self.nat.map());
        }
        let listed = self.scratch.len();
        let pass = Pass {
            sockets: &mut self.scratch,
            addrs,
            guest_addrs: guests.addrs,
            owners_before: &owners_before,
            owners: self.owners.map(),
            owners_changed: update.changed,
            listed_at,
        };
        let table = self.assembly.pass(pass, netns, generation, now);
        debug!(
            sockets = listed,
            source = self.sockets.kind(),
            namespaces_read = guests.read,
            namespaces_skipped = guests.skipped,
            namespaces_reused = guests.reused,
            translations = self.nat.len(),
            full_scan = update.full,
            processes = update.stats.processes_scanned,
            vanished = update.stats.vanished,
            permission_denied = update.stats.permission_denied,
            unchanged = table.is_none(),
            "socket table read"
        );
        Ok(RefreshPass {
            table,
            stats: update.stats,
            full_scan: update.full,
        })
    }

    /// Looks up the sockets of `flows` one by one (netlink sock_diag) and, if every one was
    /// found with a known or resolvable holder, returns a table with them added; `None` when
    /// a full pass is needed instead (a flow not found, no netlink, a holder not found).
    pub fn resolve_flows(
        &mut self,
        flows: &[FlowKey],
        netns: NetNsId,
        generation: u64,
        now: Instant,
    ) -> anyhow::Result<Option<SocketTable>> {
        let mut found: Vec<SocketEntry> = Vec::new();
        // A translated flow's sockets are its ends' own views of it.
        if self.nat.learn(flows, now) {
            self.assembly.set_nat(self.nat.map());
        }
        let nat = self.nat.map();
        let ends: Vec<(IpProto, [(SocketAddr, SocketAddr); 2])> = flows
            .iter()
            .map(|f| (f.proto, socket_ends(&nat, f)))
            .collect();
        // A miss on a container's address: its namespace is read at the next full pass.
        let touched = ends
            .iter()
            .flat_map(|(_, e)| e.iter())
            .map(|(local, _)| self.guests.touch(local.ip()))
            .fold(false, |a, b| a | b);
        if touched {
            return Ok(None);
        }
        for (proto, ends) in &ends {
            if !self.find_flow(*proto, ends, netns, &mut found)? {
                return Ok(None);
            }
        }
        if !self.owners.place(&found)? {
            return Ok(None);
        }
        let owners = self.owners.map();
        Ok(Some(self.assembly.resolved(
            found,
            owners,
            netns,
            generation,
            Instant::now(),
        )))
    }

    /// Adds the held sockets of either end of a flow (each end as (local, remote)) to
    /// `found`; false when the kernel has no socket for either end.
    fn find_flow(
        &mut self,
        proto: IpProto,
        ends: &[(SocketAddr, SocketAddr); 2],
        netns: NetNsId,
        found: &mut Vec<SocketEntry>,
    ) -> anyhow::Result<bool> {
        let mut any = false;
        for &(local, remote) in ends {
            match self.sockets.find(proto, local, remote, netns)? {
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
        Ok(any)
    }

    /// `key`, which the process side reported holding sockets, exited at `at`. Each of
    /// those sockets the kernel still has (`sock_diag`) is held by someone else — a parent
    /// or child that shares it after fork — whose holders are looked for again, so the
    /// exited process is not their newest holder any more. A socket that closed keeps its
    /// exited holder for its trailing packets, those captured before `at`; an unconnected
    /// one answers for none after (its port may pass to a new process at once). True when
    /// an owner changed or a socket ended.
    pub fn exited(&mut self, key: ProcessKey, uid: u32, netns: NetNsId, at: Instant) -> bool {
        let learned = self.owners.take_learned(key);
        let (mut open, mut ended) = (Vec::new(), Vec::new());
        for s in &learned {
            match self.still_open(s, netns) {
                Some(entry) => open.push(entry),
                None if s.is_wildcard_remote() && s.inode != 0 => ended.push(s.inode),
                None => {}
            }
        }
        debug!(
            pid = key.pid,
            learned = learned.len(),
            ended = ended.len(),
            open = open.len(),
            "holder exited"
        );
        self.assembly.ended(&ended, at);
        let inodes: Vec<u64> = open.iter().map(|s| s.inode).collect();
        let changed = match self.owners.recheck(&inodes, uid, key) {
            Ok(true) => {
                // Listed live with their holders now, they win over the exited process's
                // sighting of the same addresses.
                self.assembly.add_live(open, Instant::now());
                true
            }
            Ok(false) => false,
            Err(error) => {
                debug!(error = %error, "cannot look again for the holders of an exited process's sockets");
                false
            }
        };
        changed || !ended.is_empty()
    }

    /// A process bound a socket at `at` and could not be read (gone, or the socket closed):
    /// the port it took may be one a socket seen earlier held. Each kept UDP socket of this
    /// namespace seen before `at` (a sighting, or a socket a pass no longer lists)
    /// that the kernel no longer has answers only for packets captured before `at`, so the
    /// unread process's datagrams are never credited to a holder that let the port go —
    /// they stay `unknown`. True when one ended.
    pub fn bound_unread(&mut self, at: Instant, netns: NetNsId) -> bool {
        let kept = self.assembly.kept_unended_before(at, netns, UNREAD_CHECKS);
        // UDP only: sock_diag answers for it (a socket of another protocol it cannot be
        // asked about would count as closed).
        let gone: Vec<u64> = kept
            .iter()
            .filter(|s| s.proto == IpProto::Udp && self.still_open(s, netns).is_none())
            .map(|s| s.inode)
            .collect();
        debug!(
            checked = kept.len(),
            ended = gone.len(),
            "a bound socket was not read"
        );
        self.assembly.ended(&gone, at);
        !gone.is_empty()
    }

    /// The kernel's entry for `socket` if it still has it (asked by its addresses through
    /// sock_diag; a socket it cannot be asked about counts as closed: its exited holder
    /// stays).
    fn still_open(&mut self, socket: &SocketEntry, netns: NetNsId) -> Option<SocketEntry> {
        let (proto, local, remote) = (socket.proto, socket.local, socket.remote);
        match self.sockets.find(proto, local, remote, netns) {
            Ok(Some(e)) if e.inode == socket.inode => Some(e),
            _ => None,
        }
    }

    /// A table of everything the builder knows now, without reading the kernel (after
    /// [`TableBuilder::learn`]).
    pub fn current(&mut self, netns: NetNsId, generation: u64) -> SocketTable {
        self.assembly.table(self.owners.map(), netns, generation)
    }

    /// Takes in sockets the process watcher or socket tracer saw a process holding: their
    /// holders go in the owner map, the sockets to the assembly, which keeps them like
    /// recently closed sockets (the exact table entry wins while the socket lives), so the
    /// process's packets are credited to it even after it exited; the next pass publishes them.
    /// True when a socket is in a network namespace not known yet: it is read from the next
    /// pass on (through this process), which should come at once — until then its
    /// addresses are not known to be local.
    pub fn learn(&mut self, learned: Learned, now: Instant) -> bool {
        let key = learned.info.key;
        let mut new_namespace = false;
        for s in &learned.sockets {
            if s.inode != 0 {
                // The socket tracer's claims carry no inode (tracepoints do not give it).
                self.owners.learn(s, key);
            }
            new_namespace |= self.guests.note(s.netns, key.pid);
        }
        let started = pidcap_sockets::process::start_instant(key.start_time, Instant::now());
        let sighting = Sighting {
            sockets: learned.sockets,
            holder: learned.info,
            seen: Some(learned.seen),
            started,
        };
        self.assembly.learn(sighting, now);
        new_namespace
    }

    /// Takes in sockets a process bound at `learned.seen` and had ended by `by` before they
    /// could be read (see `News::BoundGone`): kept like any sighting from the bind (a newer
    /// holder of the port wins), each answers only for packets captured until `by` (their
    /// inodes, no kernel socket's, are each their own). True (the next table has them).
    pub fn learn_gone(&mut self, learned: Learned, by: Instant, now: Instant) -> bool {
        let inodes: Vec<u64> = learned.sockets.iter().map(|s| s.inode).collect();
        self.learn(learned, now);
        self.assembly.ended(&inodes, by);
        true
    }

    /// Takes in frames sent through packet sockets (all up to `read_to`) and who sent them;
    /// the next table has them.
    pub fn packet_sent(
        &mut self,
        sends: &[pidcap_core::PacketSend],
        senders: Vec<pidcap_core::ProcessInfo>,
        read_to: Instant,
        now: Instant,
    ) {
        self.assembly.packet_sent(sends, senders, read_to, now);
    }

    /// Every claim the socket tracer made up to `read_to` was taken in; the next table says
    /// so (see `pidcap_core::Captured::late`).
    pub fn claims_read(&mut self, read_to: Instant) {
        self.assembly.claims_read(read_to);
    }

    /// How far the socket tracer's claims were taken in (`None` without its reports).
    pub fn claims_read_to(&self) -> Option<Instant> {
        self.assembly.claims_read_to()
    }

    /// `pid`, a process that claimed connections, forked at `at`; the next table has it.
    pub fn forked(&mut self, pid: u32, at: Instant) {
        self.assembly.forked(pid, at);
    }

    /// Asks for namespace `netns` to be read at the next pass (a miss inside it); true when
    /// it is known.
    pub fn want_namespace(&mut self, netns: NetNsId) -> bool {
        self.guests.want(netns)
    }

    /// Lists the network namespaces if a discovery is due; true when a new one waits to be
    /// read by a pass.
    pub fn discover_namespaces(&mut self, now: Instant) -> bool {
        self.guests.discover_between_passes(now)
    }

    /// The other namespaces known now, each with the processes it is read through.
    pub fn namespaces(&self) -> Vec<(NetNsId, Vec<u32>)> {
        self.guests.known()
    }

    /// A process `pid` runs in `netns`: true when that namespace was not known (the next
    /// pass reads it).
    pub fn note_namespace(&mut self, netns: NetNsId, pid: u32) -> bool {
        self.guests.note(netns, pid)
    }

    /// `key` turned out to be in namespace `to`, not `from` (see [`News::Moved`]); true when
    /// something learned of it moved (the next table has it).
    pub fn moved(&mut self, key: ProcessKey, from: NetNsId, to: NetNsId) -> bool {
        self.assembly.refile(key, from, to)
    }
}

/// The two ends of `flow` as (local, remote), as a targeted lookup asks for their sockets:
/// for a form of a translated connection, each end's own view of it.
fn socket_ends(nat: &pidcap_core::NatMap, flow: &FlowKey) -> [(SocketAddr, SocketAddr); 2] {
    match nat.view(flow) {
        None => [(flow.src, flow.dst), (flow.dst, flow.src)],
        Some(view) => [view.tx, view.rx],
    }
}

/// What a targeted lookup of missed flows achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Missed {
    /// No flow was waiting.
    None,
    /// Every waiting flow was found, and a table published.
    Settled,
    /// Some of these flows need a full pass.
    Unsettled(Vec<FlowKey>),
}

/// The refresher's loop; returns when `stop` is set.
#[derive(Debug)]
pub struct Refresher {
    pub builder: TableBuilder,
    pub proc: ProcRoot,
    pub netns: NetNsId,
    pub interval: Duration,
    pub shared: Arc<DaemonState>,
    pub requests: MissRequests,
    pub learned: Receiver<News>,
    pub stop: Arc<AtomicBool>,
    /// A full pass is due at once (a socket of a namespace not read yet was learned).
    pub pass_due: bool,
    /// A fork of a process seen with connections was learned: a table is due at once.
    pub fork_due: bool,
}

/// The refresher loop's state between rounds.
#[derive(Debug)]
struct Round {
    generation: u64,
    /// When the last full pass started.
    last: Instant,
    /// The last pass failed (warned once per run of failures).
    failing: bool,
    denied_warned: bool,
    targeted_at: Instant,
    learned_at: Instant,
    /// Frames captured as of the last pass (none since: refresh seldom).
    seen_frames: u64,
    /// When namespaces were last listed between passes (idle only).
    discovered: Instant,
    /// Missed flows no targeted lookup found (at most [`MISSED_FLOWS`]), and when the
    /// first of them was put off: a pass comes for them only if the table still misses one
    /// once the socket tracer's claims up to then are in (see [`Refresher::deferred_ready`]).
    deferred: Vec<FlowKey>,
    deferred_at: Instant,
}

/// What the refresher does after a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing more this round.
    Done,
    /// A full pass now.
    Pass,
    /// The senders are gone: end.
    Stop,
}

/// The longest single wait (how quickly `stop` is noticed and the heartbeat goes round).
const MAX_WAIT: Duration = Duration::from_millis(200);

impl Refresher {
    pub fn run(mut self) {
        let now = Instant::now();
        let mut round = Round {
            generation: self.shared.generation(),
            last: now,
            failing: false,
            denied_warned: false,
            targeted_at: now,
            learned_at: now,
            seen_frames: self.shared.frames(),
            discovered: now,
            deferred: Vec::new(),
            deferred_at: now,
        };
        // The first table (read before capture started) already found the other
        // namespaces: their captures need not wait for the first pass.
        self.publish_guests();
        while !self.stop.load(Ordering::Relaxed) {
            self.shared.beat_worker(Worker::Refresh, Instant::now());
            crate::fault::stall_point("refresh", &self.stop);
            self.resolve_users();
            match self.wait(&mut round) {
                Step::Done => continue,
                Step::Stop => return,
                Step::Pass => {}
            }
            self.take_learned();
            self.pass_due = false;
            round.deferred.clear();
            round.seen_frames = self.shared.frames();
            round.generation += 1;
            round.last = Instant::now();
            round.discovered = round.last;
            round.failing =
                self.refresh_once(round.generation, round.failing, &mut round.denied_warned);
        }
    }

    /// Waits for a wake-up or the next full pass, whichever comes first (at most
    /// [`MAX_WAIT`]).
    fn wait(&mut self, round: &mut Round) -> Step {
        // With nothing captured since the last pass, a table only serves queries: refresh
        // seldom (a miss still wakes the refresher at once when traffic resumes).
        let idle = self.shared.frames() == round.seen_frames;
        let period = if idle {
            self.interval.max(IDLE_INTERVAL)
        } else {
            self.interval
        };
        let mut wait = period.saturating_sub(round.last.elapsed()).min(MAX_WAIT);
        if !round.deferred.is_empty() {
            wait = wait.min(DEFERRED_POLL);
        }
        let step = match self.requests.wake.recv_timeout(wait) {
            Ok(()) => self.woken(round),
            Err(RecvTimeoutError::Timeout) if round.last.elapsed() < period => {
                match idle && round.discovered.elapsed() >= IDLE_DISCOVERY.min(period) {
                    true => self.discover_while_idle(round),
                    false => Step::Done,
                }
            }
            Err(RecvTimeoutError::Timeout) => Step::Pass,
            Err(RecvTimeoutError::Disconnected) => Step::Stop,
        };
        match step {
            Step::Done if !round.deferred.is_empty() => {
                // What came meanwhile (the tracer's reports wake it only once).
                if self.take_learned() {
                    self.publish_learned(round);
                }
                match self.deferred_ready(round) {
                    true => self.deferred_due(round),
                    false => Step::Done,
                }
            }
            step => step,
        }
    }

    /// True when the deferred flows' pass may be due: [`MIN_GAP`] after the last pass, once
    /// the socket tracer (if it runs) has reported every claim made up to their deferral, or
    /// [`CLAIMS_PATIENCE`] after it regardless.
    fn deferred_ready(&self, round: &Round) -> bool {
        let claims_in = self
            .builder
            .claims_read_to()
            .is_none_or(|read_to| read_to >= round.deferred_at);
        !round.deferred.is_empty()
            && round.last.elapsed() >= MIN_GAP
            && (claims_in || round.deferred_at.elapsed() >= CLAIMS_PATIENCE)
    }

    /// Lists the namespaces between idle passes; a pass when a new one waits to be read.
    fn discover_while_idle(&mut self, round: &mut Round) -> Step {
        let now = Instant::now();
        round.discovered = now;
        match self.builder.discover_namespaces(now) {
            true => Step::Pass,
            false => Step::Done,
        }
    }

    /// A miss or the process side woke the refresher: targeted lookups first, then what was
    /// learned, and a full pass only when those cannot settle it.
    fn woken(&mut self, round: &mut Round) -> Step {
        let (received, learned) = self.take_news();
        if std::mem::take(&mut self.fork_due) {
            // At once, not gathered: until the table has the fork, the child's packets are
            // credited to its parent as they are read.
            self.publish(round);
        }
        for netns in self.requests.namespaces.try_iter() {
            // A miss inside a namespace: only a read of that namespace can settle it.
            self.pass_due |= self.builder.want_namespace(netns);
        }
        if self.pass_due {
            return Step::Pass;
        }
        match self.resolve_missed(&mut round.generation, &mut round.targeted_at) {
            Missed::Settled => Step::Done,
            Missed::None if learned => {
                self.publish_learned(round);
                Step::Done
            }
            Missed::Unsettled(flows) => {
                // Under connection churn most misses are connections that closed before
                // their lookup (no lookup or pass finds them) and that the socket tracer
                // claims a round later: publish what was learned, and pass only if a flow
                // is still missed once the claims up to now are in.
                if learned {
                    self.publish_learned(round);
                }
                if round.deferred.is_empty() {
                    round.deferred_at = Instant::now();
                }
                let room = MISSED_FLOWS.saturating_sub(round.deferred.len());
                round.deferred.extend(flows.into_iter().take(room));
                Step::Done
            }
            // Woken for news that needed no table (the tracer's report of how far it read).
            Missed::None if received => Step::Done,
            Missed::None => {
                std::thread::sleep(MIN_GAP.saturating_sub(round.last.elapsed()));
                Step::Pass
            }
        }
    }

    /// The deferred flows' pass is due: done without it when the newest table (with what
    /// was learned meanwhile) names a socket for every one of them.
    fn deferred_due(&mut self, round: &mut Round) -> Step {
        if self.take_learned() {
            self.publish(round);
        }
        let table = self.shared.table();
        let missed = |flow: &FlowKey| pidcap_core::attribute(&table, flow, true).has_miss();
        let unsettled = round.deferred.iter().filter(|f| missed(f)).count();
        debug!(
            deferred = round.deferred.len(),
            unsettled, "missed flows' pass due"
        );
        round.deferred.clear();
        match unsettled {
            0 => Step::Done,
            _ => Step::Pass,
        }
    }

    /// What the watcher or tracer learned needs no dump: publish it, gathering for up to
    /// [`LEARNED_GAP`] (the packets wait in the pending buffer; each table costs a build and
    /// empties the attribution cache, and the tracer may learn thousands a second).
    fn publish_learned(&mut self, round: &mut Round) {
        std::thread::sleep(LEARNED_GAP.saturating_sub(round.learned_at.elapsed()));
        self.take_learned();
        self.publish(round);
    }

    /// Publishes a table of everything known now.
    fn publish(&mut self, round: &mut Round) {
        self.fork_due = false;
        round.learned_at = Instant::now();
        round.generation += 1;
        let table = self.builder.current(self.netns, round.generation);
        self.shared.publish(table);
    }

    /// Moves what the process watcher learned into the builder; true if there was any (such
    /// a refresh is not delayed: the process may already be gone).
    fn take_learned(&mut self) -> bool {
        self.take_news().1
    }

    /// [`Refresher::take_learned`], also saying whether any news came at all (some need
    /// no table of their own: how far the tracer read while nothing waits for it).
    fn take_news(&mut self) -> (bool, bool) {
        let now = Instant::now();
        let mut any = false;
        let mut received = false;
        while let Ok(news) = self.learned.try_recv() {
            received = true;
            any |= match news {
                News::Learned(learned) => {
                    self.pass_due |= self.builder.learn(learned, now);
                    true
                }
                News::Exited { key, uid, at } => self.builder.exited(key, uid, self.netns, at),
                News::Namespace { netns, pid } => {
                    self.pass_due |= self.builder.note_namespace(netns, pid);
                    false
                }
                News::Moved { key, from, to } => self.builder.moved(key, from, to),
                News::PacketSent {
                    sends,
                    senders,
                    read_to,
                } => {
                    self.builder.packet_sent(&sends, senders, read_to, now);
                    true
                }
                News::Claimed {
                    claims,
                    forks,
                    read_to,
                } => {
                    let (claims_empty, forks_empty) = (claims.is_empty(), forks.is_empty());
                    for learned in claims {
                        self.pass_due |= self.builder.learn(learned, now);
                    }
                    for (pid, at) in forks {
                        self.forked(pid, at);
                    }
                    self.builder.claims_read(read_to);
                    // How far the tracer read needs a table of its own only while packets
                    // wait for it (the pipeline asks); a table costs a retry of every
                    // waiting packet, and a flood of misses may fill the pending buffer.
                    let news = !claims_empty || !forks_empty;
                    news || self
                        .shared
                        .claims_read_wanted()
                        .is_some_and(|until| until > now)
                }
                News::Forked { pid, at } => {
                    self.forked(pid, at);
                    true
                }
                News::BoundUnread { at } => self.builder.bound_unread(at, self.netns),
                News::BoundGone { learned, by } => self.builder.learn_gone(learned, by, now),
            };
        }
        (received, any)
    }

    /// `pid`, a process with claims or sockets, forked at `at`: the tables have it, and the
    /// socket tracer reports how far it read until past the fork's window (packets of the
    /// window wait for the claims up to their capture).
    fn forked(&mut self, pid: u32, at: Instant) {
        self.builder.forked(pid, at);
        self.fork_due = true;
        self.shared
            .want_claims_read(at + pidcap_core::FORK_WINDOW + FORK_SETTLE);
    }

    /// Asks the kernel for exactly the sockets of missed flows and publishes what it
    /// learned (with anything learned from the process side). Tables published this way are
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
            .resolve_flows(&flows, self.netns, *generation + 1, Instant::now())
        {
            Ok(Some(table)) => {
                *generation += 1;
                self.shared.publish(table);
                Missed::Settled
            }
            Ok(None) => Missed::Unsettled(flows),
            Err(error) => {
                debug!(error = %error, "targeted socket lookup failed; doing a full pass");
                Missed::Unsettled(flows)
            }
        }
    }

    /// Tells the namespace-capture thread which other namespaces are known (when changed).
    fn publish_guests(&self) {
        let namespaces = self.builder.namespaces();
        if *self.shared.guests() != namespaces {
            self.shared.set_guests(namespaces);
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
                    warn_denied(&built.stats);
                }
                if let Some(table) = built.table {
                    self.shared.publish(table);
                }
                self.publish_guests();
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

    /// Looks up the names of the uids with traffic not named yet (the user database may
    /// block: this thread, never a query's, asks it).
    fn resolve_users(&self) {
        let (uids, containers) = {
            let ledger = self.shared.ledger();
            let uids: std::collections::HashSet<u32> =
                ledger.processes().map(|p| p.meta.uid).collect();
            let containers: std::collections::HashSet<(&'static str, String)> = ledger
                .processes()
                .filter_map(|p| p.meta.placement.container())
                .map(|c| (c.runtime, c.id.to_string()))
                .collect();
            (uids, containers)
        };
        self.shared.users().resolve(uids);
        let ids = containers
            .iter()
            .map(|(runtime, id)| (*runtime, id.as_str()));
        self.shared.containers().resolve(ids, Instant::now());
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
    //! The builder against this process's real sockets (netlink or /proc, and its own fds):
    //! the shell feeds the assembly what the kernel shows. The policy itself is tested with
    //! fixtures and properties in `pidcap_core`'s assembly tests.

    use std::net::{SocketAddr, TcpListener, UdpSocket};

    use pidcap_core::{Captured, MatchKind, ProcessInfo};
    use pidcap_wire::IpProto;

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
    fn the_denied_warning_names_the_first_process_and_the_likely_cause() {
        let stats = ScanStats {
            permission_denied: 2,
            first_denied: Some(1),
            ..ScanStats::default()
        };
        let named = |_| Some("init\n".to_string());
        let refused = denied_warning(&stats, true, named);
        assert!(
            refused.contains("2 process(es) (first: pid 1, init) although"),
            "{refused}"
        );
        assert!(!refused.contains("needs"), "{refused}");
        let missing = denied_warning(&stats, false, |_| None);
        assert!(
            missing.contains("2 process(es) (first: pid 1) are unreadable"),
            "{missing}"
        );
        assert!(
            missing.contains("needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"),
            "{missing}"
        );
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

    fn info(key: ProcessKey) -> ProcessInfo {
        ProcessInfo {
            key,
            comm: "test".into(),
            exe: None,
            uid: 0,
            cmdline: Vec::new(),
            placement: Default::default(),
        }
    }

    fn sighting(netns: NetNsId, local: SocketAddr, inode: u64, key: ProcessKey) -> Learned {
        let socket = SocketEntry {
            netns,
            proto: IpProto::Udp,
            local,
            remote: "0.0.0.0:0".parse().unwrap(),
            state: pidcap_core::TcpState::Close,
            inode,
            uid: 0,
        };
        Learned {
            sockets: vec![socket],
            info: info(key),
            seen: Instant::now(),
        }
    }

    /// The socket and holder a late lookup finds for a datagram captured at `at` from
    /// `local` to a peer no socket uses (`None` when none answers for that time).
    fn udp_owner_at(t: &SocketTable, local: SocketAddr, at: Instant) -> Option<(u64, u32)> {
        let peer: SocketAddr = "127.0.0.9:53".parse().unwrap();
        let current = &|_| pidcap_core::Currency::Current;
        t.lookup_captured(IpProto::Udp, local, peer, current, Captured::late(at))
            .filter(|m| !m.life.excludes(at))
            .and_then(|m| Some((m.inode, m.owner?.pid)))
    }

    /// Issue #12, scenario 15 (7.5 % credited to the wrong link): a process whose socket a
    /// pass listed with it as the holder before the watcher's sighting of it came in exits;
    /// its socket must end then, or it keeps the port from the next processes (seen by the
    /// watcher or their traced bind) until the next pass.
    #[test]
    fn a_socket_listed_before_its_sighting_ends_with_its_holder() {
        let me = ProcessKey {
            pid: std::process::id(),
            start_time: ProcRoot::default().start_time(std::process::id()).unwrap(),
        };
        let mut b = Builder::new();
        let first = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (addr, first_inode) = (first.local_addr().unwrap(), inode_of(&first));
        assert_eq!(udp_owner(&b.table_at(0), addr), Some((first_inode, me.pid)));
        let now = Instant::now();
        b.builder
            .learn(sighting(b.netns, addr, first_inode, me), now);
        drop(first);
        assert!(b.builder.exited(me, 0, b.netns, Instant::now()));
        let next = ProcessKey {
            pid: 1,
            start_time: 1,
        };
        b.builder
            .learn(sighting(b.netns, addr, 999_999_999, next), Instant::now());
        let table = b.builder.current(b.netns, 99);
        assert_eq!(udp_owner(&table, addr), Some((999_999_999, 1)));
    }

    /// Issue #12, scenario 15 (a link credited to the suite's own process): a process that
    /// lives on binds a port and lets it go; the next holder binds it and is gone before the
    /// tracer reads which socket it bound. Its datagrams must not go to the first process:
    /// the kept sighting the kernel no longer has ends at the unread bind.
    #[test]
    fn a_port_let_go_by_a_live_process_is_not_its_own_after_an_unread_bind() {
        let me = ProcessKey {
            pid: std::process::id(),
            start_time: ProcRoot::default().start_time(std::process::id()).unwrap(),
        };
        let mut b = Builder::new();
        let kept = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let seen = Instant::now();
        for s in [&kept, &other, &probe] {
            let (addr, inode) = (s.local_addr().unwrap(), inode_of(s));
            b.builder.learn(sighting(b.netns, addr, inode, me), seen);
        }
        let (addr, inode) = (probe.local_addr().unwrap(), inode_of(&probe));
        drop(probe);
        let ms = Duration::from_millis(1);
        let (before, bound, after) = (seen + ms, seen + 2 * ms, seen + 3 * ms);
        let owner = udp_owner_at;
        let t = b.builder.current(b.netns, 1);
        assert_eq!(
            owner(&t, addr, after),
            Some((inode, me.pid)),
            "kept until then"
        );

        assert!(b.builder.bound_unread(bound, b.netns));
        let t = b.builder.current(b.netns, 2);
        assert_eq!(
            owner(&t, addr, before),
            Some((inode, me.pid)),
            "its own datagrams"
        );
        assert_eq!(owner(&t, addr, after), None, "not the unread process's");
        // Sockets the kernel still has keep answering.
        let open = kept.local_addr().unwrap();
        assert_eq!(owner(&t, open, after), Some((inode_of(&kept), me.pid)));
        // Nothing more to end: no new table needed.
        assert!(!b.builder.bound_unread(after, b.netns));
        drop(other);
    }

    /// Issue #12, scenario 15 (a link `unknown` in one run of four): a process that binds
    /// a port and exits before the tracer can read its fd is known by the address it gave
    /// `bind()` — its holder from the bind until it ended, and only then: the next holder's
    /// datagrams are not its own.
    #[test]
    fn a_socket_bound_by_a_process_that_ended_unread_answers_from_its_bind_to_its_end() {
        let mut b = Builder::new();
        let addr: SocketAddr = "127.0.0.1:45155".parse().unwrap();
        let link = ProcessKey {
            pid: 7,
            start_time: 1,
        };
        let now = Instant::now();
        let ms = Duration::from_millis(1);
        let (bound, ended) = (now + ms, now + 3 * ms);
        let mut learned = sighting(b.netns, addr, (1 << 63) + 5, link);
        learned.seen = bound;
        b.builder.bound_unread(bound, b.netns); // sent first, as the tracer does
        assert!(b.builder.learn_gone(learned, ended, now));
        let owner = |t: &SocketTable, at: Instant| udp_owner_at(t, addr, at).map(|(_, pid)| pid);
        let t = b.builder.current(b.netns, 1);
        assert_eq!(owner(&t, now + 2 * ms), Some(7), "in its life");
        assert_eq!(owner(&t, now + 4 * ms), None, "after it ended");
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
