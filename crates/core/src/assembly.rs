//! Table assembly: the policy that turns passes over the kernel's socket tables, owner maps
//! and sightings into [`SocketTable`]s. No I/O; time is a parameter.
//!
//! Inputs: a pass's live sockets and the host's addresses with the owner map before and after
//! the pass's owner scan ([`Pass`]); [`Sighting`]s (sockets the process watcher or socket
//! tracer saw a process holding); the sockets a targeted lookup found
//! ([`TableAssembly::resolved`]). Output: a [`SocketTable`], its parts shared (`Arc`) with the
//! previous table when they did not change.
//!
//! Invariants:
//! - A live socket always wins: kept unconnected sockets are listed before the live ones (a
//!   later entry wins an address in [`LiveSockets`]), and a live connected socket held by a
//!   process is found before any closed one ([`SocketTable::lookup`]). A port reused by a live
//!   socket is never credited to a kept or closed one.
//! - A socket that leaves the list (or loses its inode, as in TIME_WAIT) while a process held
//!   it is kept: a connected one by its addresses for [`CLOSE_GRACE`]; an unconnected non-TCP
//!   one by its inode for [`BOUND_GRACE`] (a closed TCP listener has no trailing traffic of
//!   its own, its connections are kept instead). Its holder's facts are kept for
//!   [`CLOSE_GRACE`] from then, so they outlive every closed socket that names that holder.
//! - Sightings are kept the same way from when they were learned: connected sockets as closed
//!   ones, unconnected ones (listeners, UDP, ping, raw) as kept ones. The latest holder of an
//!   address wins: of two connected records of one 4-tuple, the one seen first later; of two
//!   kept sockets on one address, the one held since later (a socket that leaves the list
//!   is held since it was first listed, not since it left).
//! - The shared parts are derived from the inputs, never invalidated by hand: every edit of
//!   the inputs counts a change, and a part is rebuilt when its inputs changed since it was
//!   built ([`LiveSockets`]: the live list, the kept sockets, the addresses;
//!   [`RecentSockets`]: the closed sockets, the departed holders). A sighting is added to the
//!   current [`RecentSockets`] in place instead of rebuilding it.
//! - A pass yields a table only when something changed since the last table: its inputs, or
//!   the owner map (as the caller reports). Forgetting a departed holder's facts changes no
//!   lookup and is not counted; the next rebuild leaves them out.
//!
//! Bounded by what the kernel lists plus what was learned within the grace periods. Never
//! panics.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_wire::IpProto;

use crate::nat::NatMap;
use crate::openings::Seen;
use crate::packet_sends::{PacketSend, PacketSends};
use crate::table::{canonical, seen_both, socket_identity, succeed, Holders, Life};
use crate::{
    choose_owner, ClosedSocket, Forks, LiveSockets, NetNsId, OwnerMap, ProcessInfo, ProcessKey,
    RecentSockets, SocketEntry, SocketTable,
};

/// How long a closed connection keeps its owner for trailing packets (FIN/ACK/RST,
/// retransmits, packets still in the capture buffer).
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How long a closed (or learned, not yet dumped) unconnected socket keeps its owner: its
/// datagrams and echo replies still in the capture buffer or the pending buffer. Short,
/// because unlike a connection's 4-tuple a bound port is soon taken again (a restarted
/// server) and, until a dump lists the new socket, the kept one would answer for it.
pub const BOUND_GRACE: Duration = Duration::from_secs(2);

/// Sockets a process was seen holding (by the process watcher or the socket tracer), with
/// who it is. A socket the tracer claimed has inode 0 (tracepoints do not give it).
#[derive(Debug, Clone)]
pub struct Sighting {
    pub sockets: Vec<SocketEntry>,
    pub holder: ProcessInfo,
    /// When the process was seen with them (the traced event, the read of its fds): a time
    /// within each connection's life, which [`crate::Openings`] weighs. `None`: not known
    /// (such records are always current, as before openings were tracked).
    pub seen: Option<Instant>,
    /// When the holder started (at its start time's precision, never later than it did):
    /// its unconnected sockets answer for no packet captured before. `None`: not known.
    pub started: Option<Instant>,
}

/// One pass over the kernel's tables.
#[derive(Debug)]
pub struct Pass<'a> {
    /// Every live socket, as listed. Swapped with the previous pass's list, which is left
    /// here for the caller to reuse as its next buffer.
    pub sockets: &'a mut Vec<SocketEntry>,
    /// The addresses of the table's own namespace.
    pub addrs: Vec<IpAddr>,
    /// The addresses of the other namespaces whose sockets are in `sockets`.
    pub guest_addrs: Vec<(NetNsId, IpAddr)>,
    /// The owner map before this pass's owner scan: the holders of sockets that left.
    pub owners_before: &'a OwnerMap,
    /// The owner map after this pass's owner scan, for the table.
    pub owners: Arc<OwnerMap>,
    /// Whether the owner scan changed the map.
    pub owners_changed: bool,
    /// When the kernel's list was read (taken once it was read): every listed socket
    /// existed then, so its connection had opened (see [`crate::Openings`]).
    pub listed_at: Instant,
}

type ExactKey = (NetNsId, IpProto, SocketAddr, SocketAddr);

/// The change counts of the inputs: live, recent, translations, packet sends, claims read,
/// forks.
type Versions = (u64, u64, u64, u64, u64, u64);

/// Forks kept at most (the socket tracer reports only those of processes that made claims).
const FORKS_KEPT: usize = 65_536;

/// The state between passes from which tables are assembled (see the module doc).
#[derive(Debug, Default)]
pub struct TableAssembly {
    /// The tables' own namespace (the `netns` of the last call that named it).
    home: Option<NetNsId>,
    live: LiveInputs,
    recent: RecentInputs,
    live_part: Option<BuiltPart<LiveSockets>>,
    recent_part: Option<BuiltPart<RecentSockets>>,
    /// The known address translations, shared by every table until they change.
    nat: Arc<NatMap>,
    /// Counts every change of `nat`.
    nat_version: u64,
    /// Recent sends through packet sockets, shared by every table until more come.
    packet_sends: Arc<PacketSends>,
    /// Counts every change of `packet_sends`.
    sends_version: u64,
    /// Every traced claim made up to this time was taken in (`None`: not told).
    claims_read_to: Option<Instant>,
    /// Counts every change of `claims_read_to`.
    claims_version: u64,
    /// Forks of processes that made claims, shared by every table until more come.
    forks: Arc<Forks>,
    /// Counts every change of `forks`.
    forks_version: u64,
    /// The versions the last table was assembled from; `None` before the first.
    published: Option<Versions>,
}

/// A shared part and the version of the inputs it was built from.
#[derive(Debug)]
struct BuiltPart<T> {
    part: Arc<T>,
    from: u64,
}

/// What [`LiveSockets`] is built from.
#[derive(Debug, Default)]
struct LiveInputs {
    sockets: Vec<SocketEntry>,
    addrs: (Vec<IpAddr>, Vec<(NetNsId, IpAddr)>),
    /// Unconnected sockets kept for [`BOUND_GRACE`], by inode.
    kept: HashMap<u64, Kept>,
    /// Sockets whose holder exited, by inode, with when (see [`TableAssembly::ended`]);
    /// forgotten with the kept socket, or after [`BOUND_GRACE`] (a listed one leaves the
    /// list at the next pass).
    ended: HashMap<u64, Instant>,
    /// When each socket of `sockets` (by inode) was first listed or found (see
    /// [`crate::Openings`]), and when the list was last taken: each listed socket was seen
    /// from the one to the other.
    first_seen: HashMap<u64, Instant>,
    listed_at: Option<Instant>,
    /// Counts every change to the fields above.
    version: u64,
}

/// An unconnected socket kept after it left the list (or learned before any list had it).
#[derive(Debug, Clone, Copy)]
struct Kept {
    socket: SocketEntry,
    /// When it was kept: it goes [`BOUND_GRACE`] after.
    at: Instant,
    /// Since when its holder is known to have held it: of two on one address, the one
    /// held since later wins.
    since: Instant,
    /// When its holder started, if known ([`Sighting::started`]).
    from: Option<Instant>,
}

/// A socket of a table's live part, with when it was seen and when its holder lived.
type TableSocket = (SocketEntry, Option<Seen>, Life);

/// What [`RecentSockets`] is built from.
#[derive(Debug, Default)]
struct RecentInputs {
    /// Connected sockets kept for [`CLOSE_GRACE`], by canonical addresses: the latest
    /// holders (see [`RecentSockets::insert`]), with when each was kept.
    closed: HashMap<ExactKey, Holders<(ClosedSocket, Instant)>>,
    departed: HashMap<ProcessKey, (ProcessInfo, Instant)>,
    /// Counts every change to `closed` and every departure (not forgotten facts).
    version: u64,
}

impl TableAssembly {
    pub fn new() -> TableAssembly {
        TableAssembly::default()
    }

    /// Takes in one pass at `now`: forgets what outlived its grace period, keeps the sockets
    /// that left, and returns a table when anything changed since the last table.
    pub fn pass(
        &mut self,
        pass: Pass<'_>,
        netns: NetNsId,
        generation: u64,
        now: Instant,
    ) -> Option<SocketTable> {
        self.set_home(netns);
        self.live.expire(now);
        self.recent.expire(now);
        self.expire_forks(now);
        let listed_changed = *pass.sockets != self.live.sockets;
        if listed_changed {
            self.remember_departed(pass.sockets, pass.owners_before, now);
        }
        self.live
            .take_sockets(pass.sockets, listed_changed, pass.listed_at);
        self.live.set_addrs((pass.addrs, pass.guest_addrs));
        if !pass.owners_changed && self.published == Some(self.versions()) {
            return None;
        }
        Some(self.table(pass.owners, netns, generation))
    }

    /// Takes in what a process was seen holding at `now` (the caller records the holders of
    /// its inodes in the owner map). The next table has it.
    pub fn learn(&mut self, sighting: Sighting, now: Instant) {
        let in_place = self.recent_is_current();
        let key = sighting.holder.key;
        let mut closed = Vec::new();
        for mut s in sighting.sockets {
            s.netns = self.namespace_of(&s);
            if s.is_wildcard_remote() {
                // Matched by their bound address: kept in the socket list itself.
                let kept = Kept {
                    socket: s,
                    at: now,
                    since: sighting.seen.unwrap_or(now),
                    from: sighting.started,
                };
                self.live.keep(kept);
            } else {
                let c = closed_socket(&s, key, sighting.seen.map(Seen::at));
                self.recent.close(c, now);
                closed.push(c);
            }
        }
        let holder = Arc::new(sighting.holder.clone());
        self.recent.depart(sighting.holder, now);
        if !in_place {
            return; // rebuilt with the rest at the next table
        }
        if let Some(recent) = self.recent_part_mut() {
            for c in closed {
                recent.insert(c);
            }
            recent.insert_departed(holder);
        }
    }

    /// Files what was learned of `key` under namespace `from` with loopback local addresses
    /// (which name no namespace: the one recorded for the process was used) under `to`: the
    /// process was in `to` all along (it moved with `setns` before it was seen again).
    /// Returns whether anything moved; the next table has it.
    pub fn refile(&mut self, key: ProcessKey, from: NetNsId, to: NetNsId) -> bool {
        // A move counts as a change of the inputs: the next table rebuilds the part.
        self.recent.refile(key, from, to)
    }

    /// The holder of the sockets `inodes` exited at `at` and nobody else holds them: listed
    /// (until the next pass) or kept, they answer only for packets captured before `at` (an
    /// unconnected socket's port may be taken by a new process at once; until that one is
    /// known, the port is nobody's). The next table has it.
    pub fn ended(&mut self, inodes: &[u64], at: Instant) {
        for &inode in inodes {
            self.live.ended.insert(inode, at);
        }
        if !inodes.is_empty() {
            self.live.version += 1;
        }
    }

    /// The kept unconnected sockets of `netns` (sightings, or sockets a pass no longer
    /// lists) kept since before `before` and not ended, newest first, at most `max`.
    pub fn kept_unended_before(
        &self,
        before: Instant,
        netns: NetNsId,
        max: usize,
    ) -> Vec<SocketEntry> {
        let mut kept: Vec<&Kept> = self
            .live
            .kept
            .values()
            .filter(|k| k.since < before && k.socket.netns == netns)
            .filter(|k| !self.live.ended.contains_key(&k.socket.inode))
            .collect();
        kept.sort_by_key(|k| std::cmp::Reverse(k.since));
        kept.iter().take(max).map(|k| k.socket).collect()
    }

    /// Adds sockets the kernel listed at `now` (their holders already in the owner map) to
    /// the live list; the next table has them. A live socket's known holder wins over any
    /// sighting of the same addresses.
    pub fn add_live(&mut self, found: Vec<SocketEntry>, now: Instant) {
        self.live.extend(found, now);
    }

    /// Adds the sockets a targeted lookup found at `now` (their holders already in `owners`)
    /// to the live list, and returns a table.
    pub fn resolved(
        &mut self,
        found: Vec<SocketEntry>,
        owners: Arc<OwnerMap>,
        netns: NetNsId,
        generation: u64,
        now: Instant,
    ) -> SocketTable {
        self.live.extend(found, now);
        self.table(owners, netns, generation)
    }

    /// A table of everything known now; parts whose inputs did not change since they were
    /// built are shared with the previous table.
    pub fn table(&mut self, owners: Arc<OwnerMap>, netns: NetNsId, generation: u64) -> SocketTable {
        self.set_home(netns);
        let live = self.live_part();
        let recent = self.recent_part();
        self.published = Some(self.versions());
        SocketTable::from_shared(generation, Some(netns), live, owners, recent)
            .with_nat(Arc::clone(&self.nat))
            .with_packet_sends(Arc::clone(&self.packet_sends))
            .with_claims_read_to(self.claims_read_to)
            .with_forks(Arc::clone(&self.forks))
    }

    /// `pid`, a process that made claims, forked at `at` (see
    /// [`SocketTable::with_forks`]); kept for [`CLOSE_GRACE`], as its claims are. The next
    /// table has it.
    pub fn forked(&mut self, pid: u32, at: Instant) {
        let forks = Arc::make_mut(&mut self.forks);
        if forks.len() >= FORKS_KEPT && !forks.contains_key(&pid) {
            let oldest = forks.iter().min_by_key(|(_, at)| **at).map(|(pid, _)| *pid);
            if let Some(oldest) = oldest {
                forks.remove(&oldest);
            }
        }
        let last = forks.entry(pid).or_insert(at);
        *last = (*last).max(at);
        self.forks_version += 1;
    }

    /// Forgets the forks older than [`CLOSE_GRACE`] at `now`: the claims made before them
    /// are gone too.
    fn expire_forks(&mut self, now: Instant) {
        let old = |at: &Instant| now.saturating_duration_since(*at) >= CLOSE_GRACE;
        if self.forks.values().any(old) {
            Arc::make_mut(&mut self.forks).retain(|_, at| !old(at));
            self.forks_version += 1;
        }
    }

    /// Every claim the socket tracer made up to `read_to` was taken in ([`Self::learn`]):
    /// the pending packets captured up to then may rest on claims (see
    /// [`crate::Captured::late`]). The next table has it.
    pub fn claims_read(&mut self, read_to: Instant) {
        if self.claims_read_to.is_some_and(|known| known >= read_to) {
            return;
        }
        self.claims_read_to = Some(read_to);
        self.claims_version += 1;
    }

    /// How far the socket tracer's claims were taken in ([`Self::claims_read`]); `None`
    /// before its first report (or without the tracer).
    pub fn claims_read_to(&self) -> Option<Instant> {
        self.claims_read_to
    }

    /// Takes in frames sent through packet sockets, every one reported up to `read_to`
    /// (see [`crate::PacketSends`]), and the facts of their `senders`, kept like departed
    /// holders' so that credits name them after they exited. The next table has them.
    pub fn packet_sent(
        &mut self,
        sends: &[PacketSend],
        senders: Vec<ProcessInfo>,
        read_to: Instant,
        now: Instant,
    ) {
        let all = Arc::make_mut(&mut self.packet_sends);
        for send in sends {
            all.push(*send);
        }
        all.read_to(read_to);
        self.sends_version += 1;
        for holder in senders {
            let info = Arc::new(holder.clone());
            let in_place = self.recent_is_current();
            self.recent.depart(holder, now);
            if in_place {
                if let Some(recent) = self.recent_part_mut() {
                    recent.insert_departed(info);
                }
            }
        }
    }

    /// Replaces the known address translations; the next table has them.
    pub fn set_nat(&mut self, nat: Arc<NatMap>) {
        self.nat = nat;
        self.nat_version += 1;
    }

    /// The namespace a learned socket is in: the one its local address belongs to when
    /// exactly one namespace has that address (a socket's address is its namespace's),
    /// else the namespace of the process seen holding it. The process's may be stale: one
    /// that moved with `setns` and exec'd again (`ip netns exec`) can be reported before
    /// its second exec is.
    fn namespace_of(&self, s: &SocketEntry) -> NetNsId {
        let ip = crate::table::canonical_ip(s.local.ip());
        if ip.is_loopback() || ip.is_unspecified() {
            return s.netns;
        }
        let (home_addrs, guest_addrs) = &self.live.addrs;
        let mut owners = guest_addrs
            .iter()
            .filter(|(_, a)| crate::table::canonical_ip(*a) == ip)
            .map(|(n, _)| *n)
            .chain(self.home.filter(|_| {
                home_addrs
                    .iter()
                    .any(|a| crate::table::canonical_ip(*a) == ip)
            }));
        match (owners.next(), owners.next()) {
            (Some(only), None) => only,
            _ => s.netns,
        }
    }

    /// Parts built for another home are rebuilt (the daemon's never changes).
    fn set_home(&mut self, netns: NetNsId) {
        if self.home != Some(netns) {
            self.home = Some(netns);
            self.live.version += 1;
            self.recent.version += 1;
        }
    }

    fn versions(&self) -> Versions {
        (
            self.live.version,
            self.recent.version,
            self.nat_version,
            self.sends_version,
            self.claims_version,
            self.forks_version,
        )
    }

    /// Keeps the sockets of the previous list missing from `sockets` (or that lost their
    /// inode) whose holder is known.
    fn remember_departed(&mut self, sockets: &[SocketEntry], owners: &OwnerMap, now: Instant) {
        let present: HashSet<u64> = sockets
            .iter()
            .map(|s| s.inode)
            .filter(|&i| i != 0)
            .collect();
        let gone: Vec<(SocketEntry, ProcessKey)> = self
            .live
            .sockets
            .iter()
            .filter(|s| s.inode != 0 && !present.contains(&s.inode))
            .filter_map(|s| Some((*s, choose_owner(owners.holders.get(&s.inode)?)?)))
            .collect();
        for (socket, owner) in gone {
            self.depart(socket, owner, owners, now);
        }
    }

    fn depart(&mut self, s: SocketEntry, owner: ProcessKey, owners: &OwnerMap, now: Instant) {
        if let Some(info) = owners.processes.get(&owner) {
            self.recent.depart(info.clone(), now);
        }
        if !s.is_wildcard_remote() {
            let seen = self.live.seen_of(&s);
            self.recent.close(closed_socket(&s, owner, seen), now);
        } else if s.proto != IpProto::Tcp {
            // An unconnected socket's last datagrams or echo replies may still sit in the
            // capture buffer when its process exits. Held since it was first listed, not
            // since it left: a port taken meanwhile by a newer process is the newer's.
            let since = self.live.first_seen.get(&s.inode).copied().unwrap_or(now);
            let kept = Kept {
                socket: s,
                at: now,
                since,
                from: None,
            };
            self.live.keep(kept);
        }
    }

    fn live_part(&mut self) -> Arc<LiveSockets> {
        let version = self.live.version;
        match &self.live_part {
            Some(built) if built.from == version => built.part.clone(),
            _ => {
                let part = Arc::new(self.live.build(self.home));
                self.live_part = Some(BuiltPart {
                    part: part.clone(),
                    from: version,
                });
                part
            }
        }
    }

    fn recent_part(&mut self) -> Arc<RecentSockets> {
        if !self.recent_is_current() {
            self.recent_part = Some(BuiltPart {
                part: Arc::new(self.recent.build(self.home)),
                from: self.recent.version,
            });
        }
        self.recent_part
            .as_ref()
            .map(|built| built.part.clone())
            .unwrap_or_default()
    }

    fn recent_is_current(&self) -> bool {
        (self.recent_part.as_ref()).is_some_and(|built| built.from == self.recent.version)
    }

    /// The built [`RecentSockets`] (copied if a table shares it), marked as built from the
    /// current inputs: the caller makes the same edit to it as it just made to them.
    fn recent_part_mut(&mut self) -> Option<&mut RecentSockets> {
        let built = self.recent_part.as_mut()?;
        built.from = self.recent.version;
        Some(Arc::make_mut(&mut built.part))
    }
}

impl LiveInputs {
    /// Swaps in the list a pass gave at `now`; `changed` is whether it differs from the
    /// current one.
    fn take_sockets(&mut self, sockets: &mut Vec<SocketEntry>, changed: bool, now: Instant) {
        std::mem::swap(sockets, &mut self.sockets);
        self.listed_at = Some(now);
        if changed {
            let before = std::mem::take(&mut self.first_seen);
            self.first_seen = self
                .sockets
                .iter()
                .filter(|s| s.inode != 0)
                .map(|s| (s.inode, before.get(&s.inode).copied().unwrap_or(now)))
                .collect();
        }
        self.version += u64::from(changed);
    }

    /// When a listed socket was seen (none for a socket no fd holds).
    fn seen_of(&self, s: &SocketEntry) -> Option<Seen> {
        let first = *self.first_seen.get(&s.inode)?;
        // Found after the last listing: seen once, when found.
        let last = self.listed_at.filter(|&l| l > first).unwrap_or(first);
        Some(Seen { first, last })
    }

    fn set_addrs(&mut self, addrs: (Vec<IpAddr>, Vec<(NetNsId, IpAddr)>)) {
        if addrs != self.addrs {
            self.addrs = addrs;
            self.version += 1;
        }
    }

    fn keep(&mut self, mut kept: Kept) {
        if let Some(earlier) = self.kept.get(&kept.socket.inode) {
            kept.since = earlier.since.min(kept.since);
            kept.from = kept.from.or(earlier.from);
        }
        self.kept.insert(kept.socket.inode, kept);
        self.version += 1;
    }

    fn expire(&mut self, now: Instant) {
        let before = self.kept.len();
        self.kept
            .retain(|_, k| now.saturating_duration_since(k.at) < BOUND_GRACE);
        self.version += u64::from(self.kept.len() != before);
        let kept = &self.kept;
        self.ended.retain(|inode, at| {
            kept.contains_key(inode) || now.saturating_duration_since(*at) < BOUND_GRACE
        });
    }

    /// Appends the sockets of `found` (found at `now`) whose inode is not listed yet.
    fn extend(&mut self, found: Vec<SocketEntry>, now: Instant) {
        // One pass over the (possibly 20,000-entry) list, not one per found socket.
        let known: HashSet<u64> = self.sockets.iter().map(|e| e.inode).collect();
        let before = self.sockets.len();
        for e in found.into_iter().filter(|e| !known.contains(&e.inode)) {
            self.first_seen.entry(e.inode).or_insert(now);
            self.sockets.push(e);
        }
        self.version += u64::from(self.sockets.len() != before);
    }

    fn build(&self, home: Option<NetNsId>) -> LiveSockets {
        let (local, guests) = &self.addrs;
        let mut sockets = Vec::new();
        let mut seen = Vec::new();
        let mut life = Vec::new();
        for (socket, s, l) in self.table_sockets() {
            sockets.push(socket);
            seen.push(s);
            life.push(l);
        }
        LiveSockets::build_seen(home, sockets, seen, life, local.clone(), guests)
    }

    /// Every socket of the table with when it was seen (kept ones: never, they are not
    /// connections) and when its holder lived as far as known, in the order in which later
    /// entries win an address in [`LiveSockets`]: first the sockets a newer one on their
    /// address may outdo — the kept ones the list does not show, and the listed ones whose
    /// holder exited since the list was taken ([`TableAssembly::ended`]) — the one held
    /// since later winning; then the other listed ones, which always win (their holder
    /// lives). A port passed from an exited process to a new one, seen by the watcher
    /// before the next pass lists it, is the new one's.
    fn table_sockets(&self) -> Vec<TableSocket> {
        let listed: HashSet<u64> = self.sockets.iter().map(|s| s.inode).collect();
        let until = |inode: &u64| self.ended.get(inode).copied();
        let mut outdone: Vec<(Instant, u64, TableSocket)> = self
            .kept
            .values()
            .filter(|k| !listed.contains(&k.socket.inode))
            .map(|k| {
                let inode = k.socket.inode;
                let life = Life {
                    from: k.from,
                    until: until(&inode),
                    unlisted: true,
                };
                (k.since, inode, (k.socket, None, life))
            })
            .collect();
        let mut current = Vec::with_capacity(self.sockets.len());
        for s in &self.sockets {
            let seen = self.seen_of(s);
            match until(&s.inode) {
                Some(ended) => {
                    let since = self.first_seen.get(&s.inode).copied().unwrap_or(ended);
                    let life = Life {
                        from: None,
                        until: Some(ended),
                        unlisted: false,
                    };
                    outdone.push((since, s.inode, (*s, seen, life)));
                }
                None => current.push((*s, seen, Life::default())),
            }
        }
        outdone.sort_by_key(|(since, inode, _)| (*since, *inode));
        let mut sockets: Vec<_> = outdone.into_iter().map(|(_, _, entry)| entry).collect();
        sockets.extend(current);
        sockets
    }
}

impl RecentInputs {
    /// See [`TableAssembly::refile`].
    fn refile(&mut self, key: ProcessKey, from: NetNsId, to: NetNsId) -> bool {
        let of_key = |c: &ClosedSocket| {
            c.owner == key && c.netns == from && canonical(c.local).ip().is_loopback()
        };
        let keys: Vec<ExactKey> = self
            .closed
            .iter()
            .filter(|(_, slots)| slots.iter().flatten().any(|(c, _)| of_key(c)))
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            let Some(slots) = self.closed.get_mut(k) else {
                continue;
            };
            let mut taken: Vec<(ClosedSocket, Instant)> = Vec::new();
            for slot in slots.iter_mut() {
                if slot.is_some_and(|(c, _)| of_key(&c)) {
                    taken.extend(slot.take());
                }
            }
            if slots.iter().all(Option::is_none) {
                self.closed.remove(k);
            }
            for (mut c, at) in taken.into_iter().rev() {
                c.netns = to;
                self.close(c, at);
            }
        }
        if !keys.is_empty() {
            self.version += 1;
        }
        !keys.is_empty()
    }

    /// Keeps (or replaces: the latest holder wins) a closed connected socket.
    fn close(&mut self, c: ClosedSocket, at: Instant) {
        let key = (c.netns, c.proto, canonical(c.local), canonical(c.remote));
        let slots = self.closed.entry(key).or_default();
        let merge = |(old, _): (ClosedSocket, Instant), (new, at): (ClosedSocket, Instant)| {
            let seen = seen_both(old.seen, new.seen);
            (ClosedSocket { seen, ..new }, at)
        };
        let socket = |(c, _): &(ClosedSocket, Instant)| socket_identity(c.owner, c.inode, c.seen);
        let claim = |(c, _): &(ClosedSocket, Instant)| c.inode == 0;
        *slots = succeed(*slots, (c, at), socket, merge, |(c, _)| c.seen, claim);
        self.version += 1;
    }

    fn depart(&mut self, info: ProcessInfo, at: Instant) {
        self.departed.insert(info.key, (info, at));
        self.version += 1;
    }

    fn expire(&mut self, now: Instant) {
        let fresh = |kept: &Option<(ClosedSocket, Instant)>| {
            kept.is_some_and(|(_, at)| now.saturating_duration_since(at) < CLOSE_GRACE)
        };
        let mut dropped = false;
        self.closed.retain(|_, slots| {
            // Holders are in the kernel's order, not the order they were kept in: each
            // goes when its own grace is over, the rest keep their order. Any holder gone
            // is a change (every claim of a 4-tuple weighs, not only the first).
            let before = slots.iter().flatten().count();
            let mut kept = slots.iter().copied().filter(fresh).flatten();
            *slots = std::array::from_fn(|_| kept.next());
            dropped |= slots.iter().flatten().count() != before;
            slots[0].is_some()
        });
        self.departed
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < CLOSE_GRACE);
        self.version += u64::from(dropped);
    }

    fn build(&self, home: Option<NetNsId>) -> RecentSockets {
        let mut recent = RecentSockets::new(home);
        for slots in self.closed.values() {
            // The one before first: the latest pushes it back, as it did when kept.
            for (c, _) in slots.iter().rev().flatten() {
                recent.insert(*c);
            }
        }
        for (info, _) in self.departed.values() {
            recent.insert_departed(Arc::new(info.clone()));
        }
        recent
    }
}

fn closed_socket(s: &SocketEntry, owner: ProcessKey, seen: Option<Seen>) -> ClosedSocket {
    ClosedSocket {
        netns: s.netns,
        proto: s.proto,
        local: s.local,
        remote: s.remote,
        inode: s.inode,
        owner,
        seen,
    }
}

#[cfg(test)]
// Tests pick their starting instant from the clock; the code under test never reads it.
#[allow(clippy::disallowed_methods)]
mod tests;
