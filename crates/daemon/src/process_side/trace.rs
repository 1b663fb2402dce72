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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{
    canonical, NetNsId, PacketSend, ProcessInfo, RouteThreads, SocketEntry, TcpState, CLOSE_GRACE,
    FORK_WINDOW, SEND_WINDOW,
};
use pidcap_sockets::trace::{
    instant_of, Connected, PacketSent, RouteLookup, RouteScope, SockTracer, SocketClaim,
};
use pidcap_sockets::{ProcRoot, ProcessHandle};
use pidcap_wire::IpProto;
use tracing::{debug, info, warn};

use crate::inbox::{Learned, MissSignal, News};
use crate::process_side::facts::{Known, ProcessFacts};
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
/// reported (a few rounds: the rings are read every [`ACTIVE_WAIT`] meanwhile).
const SENDS_SETTLE: Duration = Duration::from_millis(20);
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
    /// Processes that made claims, and when last (for [`CLOSE_GRACE`], as the claims are
    /// kept).
    claimants: HashMap<u32, Instant>,
    /// Forks not yet matched with a claim made before them (their claim may come a round
    /// later), for [`FORK_WINDOW`].
    forks: VecDeque<(u32, Instant)>,
}

/// Claimants and unmatched forks the tracer remembers at most.
const CLAIMANTS_KEPT: usize = 65_536;

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
            claims_until: None,
            claimants: HashMap::new(),
            forks: VecDeque::new(),
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
            self.learn_all_bound();
            let routed = self.learn_all_connected();
            self.expire_routes();
            // Learn who the actors are now: a 5 ms process is gone by the time its
            // connection's events are paired.
            for i in 0..self.tracer.actors().len() {
                let pid = self.tracer.actors()[i];
                self.who(pid);
            }
            let claimed = routed || !round.claims.is_empty();
            if !round.claims.is_empty() {
                self.send(&round.claims);
            }
            self.report_forks(&mut round);
            self.send_claims_read(&mut round, claimed);
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
        if self.tracer.has_waiting() || !round.claims.is_empty() || sending {
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
    fn learn_all_bound(&mut self) {
        let bound = self.tracer.bound().to_vec();
        let mut learned = 0;
        for b in bound {
            // The socket first (the process may exit any moment), then who it is.
            let mut entry = match self.read_bound(b.pid, b.fd, self.netns) {
                Ok(Some(entry)) => entry,
                Ok(None) => continue, // TCP: claimed from its state changes
                Err(why) => {
                    let age = instant_of(b.time).elapsed();
                    debug!(pid = b.pid, fd = b.fd, ?age, why, "bound socket not read");
                    continue;
                }
            };
            let Known::Process(info, netns) = self.who(b.pid) else {
                continue; // gone unnamed
            };
            entry.uid = info.uid;
            entry.netns = netns;
            debug!(pid = b.pid, fd = b.fd, local = %entry.local, "bound socket");
            let news = Learned {
                sockets: vec![entry],
                info,
                seen: Instant::now(),
            };
            match self.learned.try_send(news.into()) {
                Ok(()) => learned += 1,
                Err(_) => self.shared.process_side().learned_dropped += 1,
            }
        }
        if learned > 0 {
            self.wake.request();
        }
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

    /// Groups claims by time and process (each keeps the time of its own event) and hands
    /// them to the refresher in the kernel's order.
    fn send(&self, claims: &[SocketClaim]) {
        let mut by_pid: BTreeMap<(u64, u32), Vec<&SocketClaim>> = BTreeMap::new();
        for c in claims {
            by_pid.entry((c.time, c.pid)).or_default().push(c);
        }
        let (mut delivered, mut unknown, mut dropped) = (0, 0, 0);
        for ((time, pid), claims) in by_pid {
            let n = claims.len() as u64;
            match self.who(pid) {
                Known::Process(info, netns) => {
                    let news = self.claimed(info, netns, &claims, instant_of(time));
                    match self.learned.try_send(news) {
                        Ok(()) => delivered += n,
                        Err(_) => dropped += n,
                    }
                }
                Known::Unknown => {
                    unknown += n;
                    debug!(
                        pid,
                        sockets = n,
                        "connections claimed by a process nobody knew"
                    );
                }
            }
        }
        if delivered > 0 {
            self.wake.request();
        }
        // Only what reached the refresher counts as claimed.
        let mut side = self.shared.process_side();
        side.traced_claims += delivered;
        side.traced_unknown_process += unknown;
        side.learned_dropped += dropped;
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
        let sends = sent.iter().map(|s| packet_send(s, &senders)).collect();
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

    /// Tells the refresher of the forks of processes that claimed connections before them
    /// (their children may use those connections, and claim them only at their first send)
    /// and keeps reporting how far the rings were read until past the [`FORK_WINDOW`]:
    /// packets read in that window that rest on the parent's claims wait for the claims.
    fn report_forks(&self, round: &mut Round) {
        let now = Instant::now();
        for c in &round.claims {
            let at = instant_of(c.time);
            let last = round.claimants.entry(c.pid).or_insert(at);
            *last = (*last).max(at);
        }
        if round.claimants.len() >= CLAIMANTS_KEPT {
            let young = |at: &Instant| now.saturating_duration_since(*at) < CLOSE_GRACE;
            round.claimants.retain(|_, at| young(at));
            if round.claimants.len() >= CLAIMANTS_KEPT {
                round.claimants.clear(); // their forks' packets are decided as before
            }
        }
        round.forks.extend(self.facts.take_forks());
        let excess = round.forks.len().saturating_sub(CLAIMANTS_KEPT);
        round.forks.drain(..excess);
        let slack = pidcap_core::OPENING_SLACK;
        let claimants = &round.claimants;
        let mut reported = false;
        round.forks.retain(|&(pid, at)| {
            let before = claimants
                .get(&pid)
                .is_some_and(|&claim| claim <= at + slack);
            if before {
                debug!(pid, "a process that claimed connections forked");
                match self.learned.try_send(News::Forked { pid, at }) {
                    Ok(()) => reported = true,
                    Err(_) => self.shared.process_side().learned_dropped += 1,
                }
            }
            !before && now.saturating_duration_since(at) < FORK_WINDOW
        });
        if reported {
            let until = now + FORK_WINDOW + CLAIMS_SETTLE;
            round.claims_until = Some(round.claims_until.map_or(until, |u| u.max(until)));
        }
    }

    /// After claims (`claimed`: some this round), tells the refresher how far the rings were
    /// read, for [`CLAIMS_SETTLE`]: every claim made up to then is in the news before. A
    /// pending packet whose owner rests on a claim is decided only once that is past its
    /// capture (another process may have claimed the connection meanwhile: a child that
    /// forked off with it).
    fn send_claims_read(&self, round: &mut Round, claimed: bool) {
        let now = Instant::now();
        if claimed {
            let until = now + CLAIMS_SETTLE;
            round.claims_until = Some(round.claims_until.map_or(until, |u| u.max(until)));
        }
        let Some(until) = round.claims_until else {
            return;
        };
        if now > until {
            round.claims_until = None; // this is the last report
        }
        let news = News::ClaimsRead {
            read_to: instant_of(self.tracer.read_to()),
        };
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
    ) -> News {
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
        .into()
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
