//! The socket tracer: tells the refresher which process used which TCP connection, from the
//! kernel's socket tracepoints (see `pidcap_sockets::trace`).
//!
//! This closes what fd scans and the process watcher cannot: a connection that lives a
//! millisecond in a process of any age (connection churn, parallel clients), and connections
//! accepted by one process and served by another. For a successful `connect()` of any IP
//! socket it also reads the socket at once (`pidfd_getfd`), which is how a connected UDP
//! socket that lives one round trip (a resolver's) gets its owner; when that socket is gone
//! before the read, the connecting thread's route lookups are traced for `ROUTES_FOR` (30 s) and
//! name its later connects' sockets in the kernel (at most
//! [`SockTracer::max_route_threads`] threads; each costs one event per route lookup). Each
//! claim goes to the refresher as a learned socket with the process's facts
//! ([`ProcessFacts`]: recorded at exec by the watcher, or read from `/proc` now), so the
//! flow's packets, read later, are credited to it even after the socket closed and the
//! process exited; a live socket whose holder is known still wins.
//!
//! Runs on its own thread. Optional: without tracefs or `CAP_PERFMON` the daemon warns once
//! and attributes as before. The tracepoints are system-wide: each claim is labelled with the
//! network namespace of the process that made it (containers included).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{
    canonical, NetNsId, PacketSend, ProcessInfo, ProcessKey, RouteThreads, SocketEntry, TcpState,
    CLOSE_GRACE, FORK_WINDOW, SEND_WINDOW,
};
use pidcap_sockets::trace::{
    instant_of, Bound, Connected, PacketSent, RouteLookup, RouteScope, SockTracer, SocketClaim,
};
use pidcap_sockets::{ProcRoot, ProcessHandle};
use pidcap_wire::IpProto;
use tracing::{debug, info, warn};

use crate::inbox::{Learned, MissSignal, News};
use crate::process_side::facts::{Known, ProcessFacts};
use crate::process_side::holders::Holders;
use crate::state::{DaemonState, Worker};

/// How long events may wait in the rings while TCP is busy (the latency of a claim, and of
/// learning who a new process is before it exits)…
const ACTIVE_WAIT: Duration = Duration::from_millis(5);
/// …and once nothing happened for [`ACTIVE_FOR`] (also how quickly `stop` is noticed).
const IDLE_WAIT: Duration = Duration::from_millis(200);
const ACTIVE_FOR: Duration = Duration::from_secs(1);
/// How often the tracer looks for CPUs brought online (each needs a ring of its own).
const CPUS_EVERY: Duration = Duration::from_secs(10);
/// How long past the [`SEND_WINDOW`] of the last packet send the read horizon is still
/// reported (the rings are read every [`ACTIVE_WAIT`] meanwhile): a frame is matched only
/// once the horizon is past its capture + the window, and a frame's capture may lag its send
/// (on loopback the received copy is captured in the softirq, which a busy CPU defers to
/// `ksoftirqd`). With 20 ms, the last frames of a burst stayed `unknown` in about one run
/// of scenario 17 in ten on a busy machine: no report came after their capture + window.
const SENDS_SETTLE: Duration = Duration::from_millis(250);
/// How long after the last claims the read horizon is still reported: past the table that
/// takes them in (the refresher gathers news for up to 50 ms), so every packet that waited
/// for them can be decided (`pidcap_core::Captured::late`).
const CLAIMS_SETTLE: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct Tracer {
    pub tracer: SockTracer,
    pub facts: ProcessFacts,
    pub proc: ProcRoot,
    pub netns: NetNsId,
    pub learned: SyncSender<News>,
    pub wake: MissSignal,
    pub stop: Arc<AtomicBool>,
    /// Where the claim counts are published (`stats`).
    pub shared: Arc<DaemonState>,
    /// Whether a thread's route lookups may be traced when its connected sockets close
    /// before they can be read (`route_tracing` in the configuration).
    pub route_tracing: bool,
    /// Threads whose route lookups are traced, and until when (the policy is core's).
    pub route_threads: RouteThreads,
    /// Holders told to the refresher, whose exits it is to be told (shared with the
    /// process watcher, which reads the exits).
    pub holders: Holders,
}

/// The tracer loop's own state between rounds.
#[derive(Debug)]
struct Round {
    claims: Vec<SocketClaim>,
    /// Trace events lost so far, as last reported.
    lost: u64,
    /// When events last came (TCP busy): waits are short for [`ACTIVE_FOR`] after.
    active_at: Option<Instant>,
    /// The last poll failed (warned once per run of failures).
    failing: bool,
    cpus_at: Instant,
    /// Packet sends were seen: how far the rings were read is reported until then.
    sends_until: Option<Instant>,
    /// Claims were made: how far the rings were read is reported until then.
    claims_until: Option<Instant>,
    /// Binds whose socket could not be read while their process still ran (closed on the
    /// way out, or a port probed and let go), with when the bind was: looked at again each
    /// round for [`UNREAD_PATIENCE`], in case the process ends ([`Tracer::bound_by_ended`]).
    unread: Vec<(Bound, Instant)>,
    /// Processes that made claims, and their forks.
    claimants: Claimants,
}

/// Claimants and unmatched forks the tracer remembers at most.
const CLAIMANTS_KEPT: usize = 65_536;

/// The processes that claimed connections and the forks of theirs made after a claim: their
/// children may use those connections (see `pidcap_core::SocketTable::with_forks`).
#[derive(Debug, Default)]
struct Claimants {
    /// Processes that made claims, and when last (for [`CLOSE_GRACE`], as the claims are
    /// kept), at most [`CLAIMANTS_KEPT`].
    last_claim: HashMap<u32, Instant>,
    /// Forks not yet matched with a claim made before them (their claim may come a round
    /// later), for [`FORK_WINDOW`], at most [`CLAIMANTS_KEPT`].
    forks: VecDeque<(u32, Instant)>,
}

impl Claimants {
    /// `pid` claimed a connection at `at` (noted at `now`).
    fn claimed(&mut self, pid: u32, at: Instant, now: Instant) {
        if self.last_claim.len() >= CLAIMANTS_KEPT && !self.last_claim.contains_key(&pid) {
            let young = |at: &Instant| now.saturating_duration_since(*at) < CLOSE_GRACE;
            self.last_claim.retain(|_, at| young(at));
            if self.last_claim.len() >= CLAIMANTS_KEPT {
                self.last_claim.clear(); // their forks' packets are decided as before
            }
        }
        let last = self.last_claim.entry(pid).or_insert(at);
        *last = (*last).max(at);
    }

    /// Takes in the forks (parent, when) seen since the last call and returns those, new or
    /// kept, made by a process after one of its claims; the others are kept for
    /// [`FORK_WINDOW`].
    fn match_forks(&mut self, new: Vec<(u32, Instant)>, now: Instant) -> Vec<(u32, Instant)> {
        self.forks.extend(new);
        let excess = self.forks.len().saturating_sub(CLAIMANTS_KEPT);
        self.forks.drain(..excess);
        let slack = pidcap_core::OPENING_SLACK;
        let last_claim = &self.last_claim;
        let mut matched = Vec::new();
        self.forks.retain(|&(pid, at)| {
            if now.saturating_duration_since(at) >= FORK_WINDOW {
                return false; // its window is over: nothing waits for it
            }
            let after_claim = last_claim
                .get(&pid)
                .is_some_and(|&claim| claim <= at + slack);
            if after_claim {
                matched.push((pid, at));
            }
            !after_claim
        });
        matched
    }
}

/// How long to wait for events: not at all while some wait in the rings' reorder window,
/// briefly while TCP is busy, else long (also how quickly `stop` is noticed).
fn poll_wait(waiting: bool, active_at: Option<Instant>, now: Instant) -> Duration {
    if waiting {
        Duration::ZERO
    } else if active_at.is_some_and(|at| now.saturating_duration_since(at) < ACTIVE_FOR) {
        ACTIVE_WAIT
    } else {
        IDLE_WAIT
    }
}

impl Tracer {
    pub fn run(mut self) {
        self.shared.process_side().tracer = true;
        let mut round = Round {
            claims: Vec::new(),
            lost: 0,
            active_at: None,
            failing: false,
            cpus_at: Instant::now(),
            sends_until: None,
            // Reported once at start: the tables then know that claims are traced (see
            // `pidcap_core::YOUNG_CONNECTION`).
            claims_until: Some(Instant::now()),
            claimants: Claimants::default(),
            unread: Vec::new(),
        };
        while !self.stop.load(Ordering::Relaxed) {
            self.shared.beat_worker(Worker::Trace, Instant::now());
            crate::fault::stall_point("trace", &self.stop);
            if round.cpus_at.elapsed() >= CPUS_EVERY {
                round.cpus_at = Instant::now();
                self.add_online_cpus();
            }
            if !self.poll(&mut round) {
                std::thread::sleep(IDLE_WAIT);
                continue;
            }
            // Bound and connected datagram sockets first: a link of a chain of processes on
            // one port may live a millisecond after its bind, a resolver one round trip.
            self.learn_all_bound(&mut round);
            let routed = self.learn_all_connected();
            self.expire_routes();
            // Learn who the actors are now: a 5 ms process is gone by the time its
            // connection's events are paired.
            for i in 0..self.tracer.actors().len() {
                let pid = self.tracer.actors()[i];
                self.who(pid);
            }
            self.send_claims(&mut round, routed);
            self.send_packet_sends(&mut round);
            self.report_lost(&mut round.lost);
            if self.tracer.has_waiting() {
                // Let events age past the reorder window, batching what comes meanwhile;
                // a connect or bind ends the wait at once (its process may be short-lived).
                self.tracer.wait(pidcap_sockets::trace::perf::REORDER / 2);
            }
        }
    }

    /// Reads the rings into `round.claims`; false (warned once in a row) when they cannot be
    /// read.
    fn poll(&mut self, round: &mut Round) -> bool {
        round.claims.clear();
        let wait = poll_wait(self.tracer.has_waiting(), round.active_at, Instant::now());
        if let Err(error) = self.tracer.poll(wait, &mut round.claims) {
            if !round.failing {
                warn!(error = %error, "socket tracepoints unreadable; short-lived connections may go to unknown");
            }
            round.failing = true;
            return false;
        }
        round.failing = false;
        let sending = round.sends_until.is_some() || !self.tracer.packet_sends().is_empty();
        // Packets wait for how far the rings were read: report it every short round.
        let reporting = round.claims_until.is_some()
            || self
                .shared
                .claims_read_wanted()
                .is_some_and(|until| until > Instant::now());
        if self.tracer.has_waiting() || !round.claims.is_empty() || sending || reporting {
            round.active_at = Some(Instant::now());
        }
        true
    }

    /// Reads every socket connected since the last round; route tracing for the threads
    /// whose sockets were gone. True when a socket was learned from its route lookup (a
    /// claim: no inode).
    fn learn_all_connected(&mut self) -> bool {
        let connected = self.tracer.connected().to_vec();
        let mut claims = 0;
        let mut routed = false;
        for c in connected {
            let (learned, missed) = self.learn_connected(c);
            claims += u64::from(learned);
            routed |= learned && missed;
            if missed {
                self.missed_connect(c.tid);
            }
        }
        if claims > 0 {
            self.wake.request();
            self.shared.process_side().traced_claims += claims;
        }
        routed
    }

    /// Reads every datagram (non-TCP) socket bound since the last round: a port passed from
    /// process to process (`SO_REUSEADDR`) is the new holder's from its first datagram,
    /// even when that process lives milliseconds and the watcher's looks miss it. A TCP
    /// socket is bound before it listens or connects: its state changes claim it.
    fn learn_all_bound(&mut self, round: &mut Round) {
        let bound = self.tracer.bound().to_vec();
        let mut learned = self.look_again_at_unread(round);
        for b in bound {
            // The socket first (the process may exit any moment), then who it is.
            let mut entry = match self.read_bound(b.pid, b.fd, self.netns) {
                Ok(Some(entry)) => entry,
                Ok(None) => continue, // TCP: claimed from its state changes
                Err(why) => {
                    let at = instant_of(b.time);
                    debug!(pid = b.pid, fd = b.fd, age = ?at.elapsed(), why, "bound socket not read");
                    // In order with the sightings: the refresher ends the sockets seen
                    // before it that the kernel no longer has…
                    let gone = self.bound_by_ended(&b, at);
                    if gone.is_none() && b.addr.is_some_and(|a| a.port() != 0) {
                        if round.unread.len() >= UNREAD_KEPT {
                            round.unread.remove(0);
                        }
                        round.unread.push((b, at));
                    }
                    for news in std::iter::once(News::BoundUnread { at }).chain(gone) {
                        learned += usize::from(self.tell(news));
                    }
                    continue;
                }
            };
            let Known::Process(info, netns) = self.who(b.pid) else {
                continue; // gone unnamed
            };
            entry.uid = info.uid;
            entry.netns = netns;
            debug!(pid = b.pid, fd = b.fd, local = %entry.local, "bound socket");
            let (key, uid) = (info.key, info.uid);
            let news = Learned {
                sockets: vec![entry],
                info,
                seen: Instant::now(),
            };
            learned += usize::from(self.tell(news.into()));
            learned += usize::from(self.note_holder(key, uid));
        }
        if learned > 0 {
            self.wake.request();
        }
    }

    /// Looks again at the unread binds of processes that still ran: those that ended since
    /// are told ([`Tracer::bound_by_ended`]), those older than [`UNREAD_PATIENCE`] are
    /// dropped (a process that lives on closed the socket: its port may be anyone's).
    /// Returns how many news were sent.
    fn look_again_at_unread(&self, round: &mut Round) -> usize {
        if round.unread.is_empty() {
            return 0;
        }
        round.active_at = Some(Instant::now()); // short polls while they wait
        let mut sent = 0;
        round
            .unread
            .retain(|(b, at)| match self.bound_by_ended(b, *at) {
                Some(news) => {
                    sent += usize::from(self.tell(news));
                    false
                }
                None => at.elapsed() < UNREAD_PATIENCE,
            });
        sent
    }

    /// Queues `news` for the refresher; false (counted) when its queue is full.
    fn tell(&self, news: News) -> bool {
        let told = self.learned.try_send(news).is_ok();
        if !told {
            self.shared.process_side().learned_dropped += 1;
        }
        told
    }

    /// `key` was told holding a socket: its exit is to be told, so that the port it bound
    /// is not its own after (the next process on it may be one nobody reads). A process
    /// that exited before it was noted — the watcher read its exit first — is told exited
    /// here, at the time the watcher read. True when an exit was sent.
    fn note_holder(&self, key: ProcessKey, uid: u32) -> bool {
        self.holders.note(key, uid);
        if !self.proc.has_ended(key) {
            return false;
        }
        let Some((key, uid)) = self.holders.take(key.pid) else {
            return false; // the watcher told
        };
        let at = self.facts.exited_at(key.pid).unwrap_or_else(Instant::now);
        debug!(pid = key.pid, "a holder read at its bind had exited");
        self.tell(News::Exited { key, uid, at })
    }

    /// …and a process that bound an address and ended before its socket could be read (it
    /// may live 100 µs after its `bind()`: a link of a chain of processes on one port) is
    /// still its holder from the bind until it ended, known by the address it gave
    /// `bind()` (from the caller's stack, [`pidcap_sockets::trace::Bound::addr`]). Only a
    /// process that ended: one that lives on closed the socket (it may have bound a port
    /// to find it free), and its port may be anyone's now. The socket's protocol is not
    /// known (`bind()` does not say): a TCP socket is bound before it listens or connects,
    /// and those claim it, so an unread bound socket is taken for a UDP one. `None` when
    /// the address (or its port) is not known, the process still runs, or was never named.
    fn bound_by_ended(&self, b: &Bound, at: Instant) -> Option<News> {
        let local = b.addr.filter(|a| a.port() != 0)?;
        // A zombie (not reaped yet) can still be named.
        let Known::Process(info, netns) = self.who(b.pid) else {
            return None; // never named: nobody to credit
        };
        if !self.proc.has_ended(info.key) {
            return None;
        }
        let by = self.facts.exited_at(b.pid).unwrap_or_else(Instant::now);
        let socket = SocketEntry {
            netns,
            proto: IpProto::Udp,
            local: canonical(local),
            remote: SocketAddr::new(unspecified_like(local.ip()), 0),
            state: TcpState::Close,
            inode: next_unread_inode(),
            uid: info.uid,
        };
        debug!(
            pid = b.pid,
            local = %socket.local,
            bound_ago = ?at.elapsed(),
            ended_ago = ?by.elapsed(),
            "bound socket of an ended process, by its address"
        );
        let learned = Learned {
            sockets: vec![socket],
            info,
            seen: at,
        };
        Some(News::BoundGone { learned, by })
    }

    /// The datagram (non-TCP) IP socket behind `pid`'s `fd`; `Ok(None)` for a TCP socket,
    /// an error saying why when it cannot be read (closed or replaced already, the process
    /// gone).
    fn read_bound(&self, pid: u32, fd: i32, netns: NetNsId) -> Result<Option<SocketEntry>, String> {
        let entry = self.read_socket(pid, fd, netns)?;
        Ok((entry.proto != IpProto::Tcp).then_some(entry))
    }

    /// The IP socket with a port behind `pid`'s `fd` (a duplicate through `pidfd_getfd`),
    /// or why it cannot be read: closed or replaced already, the process gone.
    fn read_socket(&self, pid: u32, fd: i32, netns: NetNsId) -> Result<SocketEntry, String> {
        let inode = match self.proc.socket_inode(pid, fd) {
            Ok(Some(inode)) => inode,
            Ok(None) => return Err("not a socket any more".into()),
            Err(e) => return Err(e.to_string()),
        };
        let handle = ProcessHandle::open(pid).map_err(|e| e.to_string())?;
        match handle.ip_socket(fd, inode, 0, netns) {
            Ok(Some(entry)) => Ok(entry),
            Ok(None) => Err("not an IP socket with a port".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Publishes and warns about events the kernel dropped since `lost` was last seen.
    fn report_lost(&self, lost: &mut u64) {
        if self.tracer.lost() == *lost {
            return;
        }
        *lost = self.tracer.lost();
        self.shared.process_side().trace_events_lost = *lost;
        warn!(
            lost = *lost,
            "socket trace events lost (ring full); some connections may go to unknown"
        );
    }

    /// Hands the round's claims to the refresher in one message, with the forks of the
    /// processes that claimed connections before them and how far the rings were read (so
    /// that no table holds a claim without them). Also sent, without claims, for
    /// [`CLAIMS_SETTLE`] after the last claims (`routed`: a connected datagram socket was
    /// learned from its route lookup this round, a claim too) and for [`FORK_WINDOW`] after
    /// a claimant's fork: packets that wait for the claims up to their capture are decided
    /// as the horizon passes them (`pidcap_core::Captured::late`).
    fn send_claims(&self, round: &mut Round, routed: bool) {
        let now = Instant::now();
        let claims = self.claims_news(&round.claims);
        let forks = self.claimant_forks(round, now);
        let mut until = round.claims_until;
        if routed || !claims.is_empty() {
            until = until.max(Some(now + CLAIMS_SETTLE));
        }
        if !forks.is_empty() {
            until = until.max(Some(now + FORK_WINDOW + CLAIMS_SETTLE));
        }
        // The refresher's forks (of processes the watcher saw holding sockets) too.
        until = until.max(self.shared.claims_read_wanted().filter(|&w| w > now));
        let Some(until) = until else {
            return;
        };
        // The last report once past its time.
        round.claims_until = (now <= until).then_some(until);
        let n = claims.iter().map(|l| l.sockets.len() as u64).sum::<u64>();
        let news = News::Claimed {
            claims,
            forks,
            read_to: instant_of(self.tracer.read_to()),
        };
        let mut side = self.shared.process_side();
        match self.learned.try_send(news) {
            Ok(()) => {
                self.wake.request();
                // Only what reached the refresher counts as claimed.
                side.traced_claims += n;
            }
            Err(_) => side.learned_dropped += n.max(1),
        }
    }

    /// The news of the round's claims: grouped by time and process (each keeps the time of
    /// its own event), in the kernel's order. Claims of processes nobody knew are counted.
    fn claims_news(&self, claims: &[SocketClaim]) -> Vec<Learned> {
        let mut by_pid: BTreeMap<(u64, u32), Vec<&SocketClaim>> = BTreeMap::new();
        for c in claims {
            by_pid.entry((c.time, c.pid)).or_default().push(c);
        }
        let mut news = Vec::new();
        let mut unknown = 0;
        for ((time, pid), claims) in by_pid {
            match self.who(pid) {
                Known::Process(info, netns) => {
                    news.push(self.claimed(info, netns, &claims, instant_of(time)));
                }
                Known::Unknown => {
                    unknown += claims.len() as u64;
                    debug!(
                        pid,
                        sockets = claims.len(),
                        "connections claimed by a process nobody knew"
                    );
                }
            }
        }
        self.shared.process_side().traced_unknown_process += unknown;
        news
    }

    /// The forks (pid, when) of processes that claimed connections before them, among those
    /// the watcher saw since the last round and those of the last [`FORK_WINDOW`] not
    /// matched yet (their claims may come a round later): their children may use those
    /// connections, and claim them only at their first send or receive.
    fn claimant_forks(&self, round: &mut Round, now: Instant) -> Vec<(u32, Instant)> {
        for c in &round.claims {
            round.claimants.claimed(c.pid, instant_of(c.time), now);
        }
        let matched = round.claimants.match_forks(self.facts.take_forks(), now);
        for (pid, _) in &matched {
            debug!(pid, "a process that claimed connections forked");
        }
        matched
    }

    /// Hands the sends through packet sockets of the last read, with who sent them, to the
    /// refresher; after the last ones, keeps telling it how far the rings were read until
    /// that is past their [`SEND_WINDOW`] (a frame is credited to its sender only once no
    /// other process's send of its window can still come).
    fn send_packet_sends(&self, round: &mut Round) {
        let now = Instant::now();
        let sent = self.tracer.packet_sends();
        if !sent.is_empty() {
            round.sends_until = Some(now + SEND_WINDOW + SENDS_SETTLE);
        } else if round.sends_until.is_none() {
            return;
        }
        let mut senders: BTreeMap<u32, Option<(ProcessInfo, NetNsId)>> = BTreeMap::new();
        for s in sent {
            senders
                .entry(s.pid)
                .or_insert_with(|| match self.who(s.pid) {
                    Known::Process(info, netns) => Some((info, netns)),
                    Known::Unknown => None,
                });
        }
        let sends: Vec<PacketSend> = sent.iter().map(|s| packet_send(s, &senders)).collect();
        debug!(
            sends = sends.len(),
            unnamed = sends.iter().filter(|s| s.sender.is_none()).count(),
            read_to_ago = ?instant_of(self.tracer.read_to()).elapsed(),
            last = round.sends_until.is_some_and(|until| now > until),
            "packet sends"
        );
        let news = News::PacketSent {
            sends,
            senders: senders.into_values().flatten().map(|(i, _)| i).collect(),
            read_to: instant_of(self.tracer.read_to()),
        };
        if round.sends_until.is_some_and(|until| now > until) {
            round.sends_until = None; // this was the last report
        }
        match self.learned.try_send(news) {
            Ok(()) => self.wake.request(),
            Err(_) => self.shared.process_side().learned_dropped += 1,
        }
    }

    /// The news that `info`'s process, in `netns`, used the connections of `claims` at `seen`
    /// (no inode: the tracepoints do not give it).
    fn claimed(
        &self,
        info: ProcessInfo,
        netns: NetNsId,
        claims: &[&SocketClaim],
        seen: Instant,
    ) -> Learned {
        let sockets = claims
            .iter()
            .map(|c| SocketEntry {
                netns,
                proto: IpProto::Tcp,
                local: c.local,
                remote: c.remote,
                state: TcpState::Established,
                inode: 0,
                uid: info.uid,
            })
            .collect();
        debug!(pid = info.key.pid, comm = %info.comm, sockets = claims.len(), "connections claimed by trace");
        Learned {
            sockets,
            info,
            seen,
        }
    }

    /// Reads the socket a process just connected (a duplicate of its fd through
    /// `pidfd_getfd`, then its addresses) and hands it to the refresher. When the socket is
    /// gone (closed before the read: a resolver's on loopback) or the fd already holds
    /// another one, the route lookup inside the connect, if traced, gives the addresses
    /// instead. Returns (learned, missed): `missed` when the socket could not be read as it
    /// was connected, which is what turns route tracing on. TCP connects are claimed from
    /// their state changes and never come here.
    fn learn_connected(&self, c: Connected) -> (bool, bool) {
        let Known::Process(info, netns) = self.who(c.pid) else {
            return (false, false); // gone unnamed
        };
        let read = self.read_connected(c.pid, c.fd, netns);
        let (entry, missed) = match (read, c.route) {
            (Some(entry), Some(route)) if !same_flow(&entry, &route) => {
                (routed(route, netns), true)
            }
            (Some(entry), _) => (Some(entry), false),
            (None, Some(route)) => (routed(route, netns), true),
            (None, None) => (None, true),
        };
        let Some(mut entry) = entry else {
            return (false, missed);
        };
        entry.uid = info.uid;
        debug!(pid = c.pid, fd = c.fd, local = %entry.local, remote = %entry.remote, routed = c.route.is_some(), "connected socket");
        let learned = Learned {
            sockets: vec![entry],
            info,
            seen: Instant::now(),
        };
        let sent = self.learned.try_send(learned.into()).is_ok();
        if !sent {
            self.shared.process_side().learned_dropped += 1;
        }
        if sent && missed {
            // Learnt, though the read missed: from the route lookup.
            self.shared.process_side().traced_routes += 1;
        }
        (sent, missed)
    }

    /// The connected IP socket behind `pid`'s `fd` (a socket of `netns`), if it is still
    /// there.
    fn read_connected(&self, pid: u32, fd: i32, netns: NetNsId) -> Option<SocketEntry> {
        let entry = self.read_socket(pid, fd, netns).ok()?;
        (!entry.is_wildcard_remote()).then_some(entry)
    }

    /// A connected socket of thread `tid` closed before it could be read: trace that
    /// thread's route lookups (each of its connects' addresses, from the kernel) for the
    /// next [`pidcap_core::ROUTES_FOR`]. At most [`SockTracer::max_route_threads`] threads: the one due
    /// to expire first makes room.
    fn missed_connect(&mut self, tid: u32) {
        if !self.route_tracing || !self.tracer.can_trace_routes() {
            return;
        }
        let max = self.tracer.max_route_threads();
        if !self.route_threads.missed(tid, Instant::now(), max) {
            return;
        }
        debug!(
            tid,
            threads = self.route_threads.len(),
            "a connected socket closed before it was read; tracing the thread's route lookups"
        );
        self.apply_route_scope();
    }

    /// Stops tracing the route lookups of threads that missed no connect for [`pidcap_core::ROUTES_FOR`].
    fn expire_routes(&mut self) {
        if self.route_threads.expire(Instant::now()) {
            self.apply_route_scope();
        }
    }

    fn apply_route_scope(&mut self) {
        let tids = self.route_threads.tids();
        if let Err(error) = self.tracer.trace_routes(&RouteScope::Threads(tids)) {
            warn!(error = %error, "route lookups cannot be traced");
            self.route_threads.clear(); // the tracer traces none after a failure
        }
        self.shared.process_side().route_threads = self.route_threads.len() as u64;
    }

    fn add_online_cpus(&mut self) {
        match self.tracer.add_online_cpus() {
            Ok(0) => {}
            Ok(added) => info!(
                added,
                cpus = self.tracer.cpus().len(),
                "tracing CPUs brought online"
            ),
            Err(error) => warn!(error = %error, "CPUs brought online cannot be traced"),
        }
    }

    /// Who `pid` is (or was), reading `/proc` if nobody recorded it yet. `Unknown`: it
    /// exited before anyone learned who it was.
    fn who(&self, pid: u32) -> Known {
        self.facts
            .get_or_read(&self.proc, self.netns, pid, Instant::now())
    }
}

/// How long an unread bind of a process that still ran is looked at again: a process that
/// closes its socket on its way out ends within this; one that lives on is not its holder.
const UNREAD_PATIENCE: Duration = Duration::from_millis(100);
/// Unread binds looked at again at most (the oldest go first).
const UNREAD_KEPT: usize = 256;

/// Inode numbers of sockets known only by the address their process bound
/// ([`Tracer::bound_by_ended`]): above any the kernel gives (socket inodes are 32-bit),
/// unique within a run, so the table keeps and ends each on its own.
const UNREAD_INODES: u64 = 1 << 63;
static NEXT_UNREAD: AtomicU64 = AtomicU64::new(UNREAD_INODES);

fn next_unread_inode() -> u64 {
    NEXT_UNREAD.fetch_add(1, Ordering::Relaxed)
}

/// The unspecified address of `ip`'s family (a bound socket's remote end).
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// A traced packet send as the tables keep it: by a process nobody knew (it exited unnamed)
/// when `senders` has none for its pid.
fn packet_send(
    s: &PacketSent,
    senders: &BTreeMap<u32, Option<(ProcessInfo, NetNsId)>>,
) -> PacketSend {
    let named = senders.get(&s.pid).and_then(Option::as_ref);
    PacketSend {
        at: instant_of(s.time),
        len: s.len,
        sender: named.map(|(info, _)| info.key),
        // An unnamed sender's namespace is not known: the home one stands in.
        netns: named.map_or(NetNsId(0), |&(_, netns)| netns),
    }
}

/// A connected socket of `netns` as a route lookup inside its `connect()` described it (no
/// inode: it may be closed already).
fn routed(route: RouteLookup, netns: NetNsId) -> Option<SocketEntry> {
    if !matches!(route.proto, IpProto::Udp | IpProto::UdpLite) {
        return None;
    }
    Some(SocketEntry {
        netns,
        proto: route.proto,
        local: route.local,
        remote: route.remote,
        state: TcpState::Established,
        inode: 0,
        uid: 0,
    })
}

/// True when `entry` (read from the fd) is the connection `route` describes; a route lookup
/// without a chosen source address matches any local address.
fn same_flow(entry: &SocketEntry, route: &RouteLookup) -> bool {
    let (local, remote) = (canonical(entry.local), canonical(entry.remote));
    let (r_local, r_remote) = (canonical(route.local), canonical(route.remote));
    remote == r_remote
        && local.port() == r_local.port()
        && (r_local.ip().is_unspecified() || local.ip() == r_local.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fork counts when its process claimed a connection before it, whichever of the
    /// two the tracer learns first; a fork before any claim, or of another process, never.
    #[test]
    fn forks_of_claimants_after_their_claims_are_matched_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut c = Claimants::default();
        c.claimed(10, t0, t0);
        let matched = c.match_forks(vec![(10, t0 + ms), (11, t0 + ms)], t0 + 2 * ms);
        assert_eq!(matched, vec![(10, t0 + ms)]);
        assert!(c.match_forks(vec![], t0 + 3 * ms).is_empty(), "once");
        // The fork read a round before the claim that preceded it.
        let matched = c.match_forks(vec![(12, t0 + 5 * ms)], t0 + 6 * ms);
        assert!(matched.is_empty());
        c.claimed(12, t0 + 4 * ms, t0 + 7 * ms);
        assert_eq!(c.match_forks(vec![], t0 + 8 * ms), vec![(12, t0 + 5 * ms)]);
        // A fork before the process's only claim: its child never had that connection.
        c.claimed(13, t0 + 20 * ms, t0 + 20 * ms);
        assert!(c
            .match_forks(vec![(13, t0 + 10 * ms)], t0 + 21 * ms)
            .is_empty());
        // Unmatched forks are forgotten after the window: 11's never matches.
        c.claimed(11, t0, t0 + FORK_WINDOW + 10 * ms);
        let later = t0 + FORK_WINDOW + 11 * ms;
        assert!(c.match_forks(vec![], later).is_empty());
    }

    #[test]
    fn the_wait_is_none_while_events_wait_short_while_busy_and_long_when_idle() {
        let now = Instant::now();
        assert_eq!(poll_wait(true, None, now), Duration::ZERO);
        assert_eq!(poll_wait(false, Some(now), now), ACTIVE_WAIT);
        let busy_until = now + ACTIVE_FOR;
        assert_eq!(
            poll_wait(false, Some(now), busy_until - Duration::from_millis(1)),
            ACTIVE_WAIT
        );
        assert_eq!(poll_wait(false, Some(now), busy_until), IDLE_WAIT);
        assert_eq!(poll_wait(false, None, now), IDLE_WAIT);
    }
}
