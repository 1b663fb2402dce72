//! The socket table: one consistent snapshot of sockets, their holders and the host's addresses.
//!
//! Invariants: a `SocketTable` is immutable once built, so readers never see half a refresh; the
//! daemon swaps whole tables. Addresses are canonical: IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`) are stored and looked up as IPv4, so a dual-stack socket matches IPv4
//! traffic. Lookups allocate nothing.
//!
//! Namespaces: a table covers its own network namespace (*home*: the capture's) and any
//! number of others (*guests*: containers). A packet's end is looked up in the namespace its
//! address belongs to — home for loopback addresses, home's own addresses and addresses no
//! namespace claims; a guest for that guest's addresses — and only among that namespace's
//! sockets, so a 4-tuple or port used in two namespaces is never credited across them. An
//! address local to more than one namespace (home and a guest, or two guests) finds no
//! socket: which process owns that end cannot be told, so it is `unknown`, never a guess.
//! Guests' loopback addresses are not theirs here: their loopback traffic never crosses
//! home's interfaces.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::{HashMap as FastMap, HashSet as FastSet};
use pidcap_wire::IpProto;

use crate::nat::{NatMap, NatView};
use crate::openings::{Currency, Seen};
use crate::packet_sends::PacketSends;
use crate::{NetNsId, ProcessInfo, ProcessKey, SocketEntry, TcpState};

/// How a packet's local end matched a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchKind {
    /// A connected socket with the same local and remote address and port, held by a process
    /// (per the fd tables), or still open and claimed by the process seen using it.
    Exact,
    /// A socket bound to the local address (or a wildcard address) and port with no peer:
    /// a listener or an unconnected datagram socket.
    Wildcard,
    /// A connected socket with the same addresses that closed (or lost its holder, as in
    /// TIME_WAIT) within the grace period: trailing FIN/ACK/RST and retransmits.
    Recent,
    /// No socket has the packet's addresses; the one process that sent a frame of its
    /// length through a packet socket (`AF_PACKET`) at its capture time
    /// ([`crate::PacketSends`]).
    PacketSender,
}

impl MatchKind {
    /// The name used in the query protocol.
    pub fn name(self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::Wildcard => "wildcard",
            MatchKind::Recent => "recent",
            MatchKind::PacketSender => "packet_sender",
        }
    }
}

/// A socket found for one end of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMatch {
    pub inode: u64,
    pub kind: MatchKind,
    /// The credited holder, by [`choose_owner`]; `None` when no process holds the inode.
    pub owner: Option<ProcessKey>,
    /// For a kept unconnected socket (matched by its bound address), the span its holder
    /// is known to have lived: it answers only for packets captured within (before its
    /// holder started, or after it exited, the port was another process's or nobody's).
    pub life: Life,
}

/// When a socket's holder started and exited, as far as known ([`SocketMatch::life`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Life {
    pub from: Option<Instant>,
    pub until: Option<Instant>,
    /// The kernel's listing does not show the socket (a sighting, or one a pass no longer
    /// lists): a holder that lives on may have closed it since it was seen, and its port
    /// be another process's (see [`SocketTable::with_claims_read_to`]).
    pub unlisted: bool,
}

impl Life {
    /// True when nothing is known (the socket answers whenever a packet was captured).
    pub fn is_unbounded(&self) -> bool {
        self.from.is_none() && self.until.is_none()
    }

    /// True when a packet captured at `at` falls outside the span.
    pub fn excludes(&self, at: Instant) -> bool {
        self.from.is_some_and(|from| at < from) || self.until.is_some_and(|until| at > until)
    }
}

/// A namespace as the indexes key it: [`HOME`] for the table's own (and for every socket
/// when the table names no namespace), else the other namespace's id.
type Ns = u64;
const HOME: Ns = 0;
/// The namespace of an address that is local in more than one: no socket is looked up.
const SHARED_ADDR: Ns = u64::MAX;
/// The sockets of [`NetNsId::UNPLACED`]: consulted in every namespace, after its own.
const UNPLACED: Ns = u64::MAX - 1;

/// The index key of `netns` in a table whose own namespace is `home`.
fn ns_key(home: Option<NetNsId>, netns: NetNsId) -> Ns {
    match home {
        _ if netns == NetNsId::UNPLACED => UNPLACED,
        Some(h) if h != netns => netns.0,
        _ => HOME,
    }
}

/// What one namespace's sockets say about a packet's end.
enum Answer {
    /// A record was seen past the packets read so far: no answer yet (the packet waits).
    Undecided,
    /// The best match, which may have no holder.
    Found(Option<SocketMatch>),
}

type ExactKey = (Ns, IpProto, SocketAddr, SocketAddr);
type BoundKey = (Ns, IpProto, SocketAddr);

/// Everything attribution needs from one refresh. Its three parts are shared (`Arc`) with
/// the tables before and after it that did not change them, so publishing a table that only
/// learned a few recently used sockets costs no rebuild of the live sockets' indexes.
#[derive(Debug, Default)]
pub struct SocketTable {
    generation: u64,
    netns: Option<NetNsId>,
    live: Arc<LiveSockets>,
    owners: Arc<OwnerMap>,
    recent: Arc<RecentSockets>,
    /// Connections the kernel translated (NAT): each end of their packets is looked up in its
    /// own form ([`crate::NatMap`]).
    nat: Arc<NatMap>,
    /// Recent sends through packet sockets: who sent a frame no socket owns.
    packet_sends: Arc<PacketSends>,
    /// Every traced claim made up to this time is in the table (`None`: claims are not
    /// traced, or nothing says how far; every answer is final).
    claims_read_to: Option<Instant>,
    /// Processes seen with connections that forked, by pid: when each last forked.
    forks: Arc<Forks>,
}

/// Processes that forked, by pid, and when each last did.
pub type Forks = FastMap<u32, Instant>;

/// How long after a process forked a packet of a connection it holds is not credited as it
/// is read (see [`SocketTable::with_forks`]): its child may use the connection, and claim
/// it a tracer round later.
pub const FORK_WINDOW: Duration = Duration::from_millis(500);

/// How long after a TCP connection was first seen (its claim, a look at its holder's fds)
/// its packets are not credited as they are read, while claims are traced: a process that
/// connects or accepts and forks at once hands the connection to a child, whose claim (its
/// first send) may reach the table after the parent's records and before the fork does.
/// They wait and are decided once every claim up to their capture is in (see
/// [`Captured::late`]).
pub const YOUNG_CONNECTION: Duration = Duration::from_millis(200);

/// The span of capture times around `at` in which a connection's answer stands: after it
/// was young (until `young`), and outside the window of its holder's `fork`. When `at`
/// itself is in neither, the span excludes it (the packet waits).
fn settled(at: Instant, fork: Option<Instant>, young: Option<Instant>) -> Life {
    let Some(fork) = fork else {
        return Life {
            from: young,
            ..Life::default()
        };
    };
    let start = fork
        .checked_sub(crate::openings::OPENING_SLACK)
        .unwrap_or(fork);
    match at < start {
        true => Life {
            from: young,
            until: Some(start),
            ..Life::default()
        },
        false => Life {
            from: Some((fork + FORK_WINDOW).max(young.unwrap_or(fork))),
            ..Life::default()
        },
    }
}

/// True for a bound socket the kernel's listing does not show whose holder has no known
/// end (see [`SocketTable::with_claims_read_to`]).
fn unlisted_unended_match(found: &SocketMatch) -> bool {
    found.kind == MatchKind::Wildcard && found.life.unlisted && found.life.until.is_none()
}

fn unlisted_unended(answer: &Answer) -> bool {
    matches!(answer, Answer::Found(Some(found)) if unlisted_unended_match(found))
}

/// When the packet a lookup is for was captured, and whether it is decided late.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Captured {
    /// `None`: any time.
    pub at: Option<Instant>,
    /// Decided late (from the pending buffer, where waiting costs nothing but time): an
    /// answer that rests on a traced claim is final only once the table holds every claim
    /// made up to `at` ([`SocketTable::with_claims_read_to`]). A child that forked off
    /// with a connection claims it at its first send, a tracer round after its parent's
    /// connect claim: decided between the two, its packets would be the parent's.
    pub late: bool,
}

impl Captured {
    /// A packet captured at `at`, decided as it is read.
    pub fn at(at: Instant) -> Captured {
        Captured {
            at: Some(at),
            late: false,
        }
    }

    /// A packet captured at `at`, decided late.
    pub fn late(at: Instant) -> Captured {
        Captured {
            at: Some(at),
            late: true,
        }
    }
}

/// The live sockets of a refresh, indexed, and the addresses of each namespace.
#[derive(Debug, Default)]
pub struct LiveSockets {
    home: Option<NetNsId>,
    sockets: Vec<SocketEntry>,
    /// When each socket was seen as the connection it lists (the dumps that listed it, the
    /// lookup that found it); `None` when not recorded (always current).
    seen: Vec<Option<Seen>>,
    /// When each kept socket's holder lived, as far as known ([`SocketMatch::life`]).
    life: Vec<Life>,
    exact: FastMap<ExactKey, usize>,
    /// The local ends of `exact`'s sockets.
    connected: FastSet<BoundKey>,
    bound: FastMap<BoundKey, usize>,
    /// For an address of `bound`, the earlier entries it displaced whose holder is known to
    /// have exited (a port passed from process to process), oldest first, at most
    /// [`HOLDERS_KEPT`]: a packet captured outside the winner's life is the holder's whose
    /// life it is in ([`SocketTable::lookup_captured`]). Never one whose holder lives: a
    /// socket it was seen with may have closed long ago (a port bound and let go).
    displaced: FastMap<BoundKey, Vec<usize>>,
    /// Home's addresses (loopback addresses are always home's, listed or not).
    local: FastSet<IpAddr>,
    /// Guests' addresses, each with its namespace, or [`SHARED_ADDR`] when more than one
    /// namespace (home included) has it.
    guests: FastMap<IpAddr, Ns>,
    /// Whether some socket is [`NetNsId::UNPLACED`] (else no second lookup is made).
    unplaced: bool,
    /// Every address an end may be local at, but loopback: `local`, `guests`' and the
    /// specific local addresses of `sockets` (a transparent proxy's socket may have one
    /// that is not the host's). An address not here is no socket's end: one lookup decides
    /// that a packet of a busy segment is foreign.
    known_ips: FastSet<IpAddr>,
}

/// Connected sockets that closed recently (or that a process was seen using), with their
/// last holder, and the facts of those holders. Plain data and `Arc`ed facts: cloning it is a
/// copy, so a refresher can keep one and add to it between tables (`Arc::make_mut`).
///
/// An entry whose local address is unspecified (`0.0.0.0:p`, `[::]:p`: a connect seen
/// through its route lookup before the kernel chose a source address) stands for port `p`
/// on every address of this host, with that remote.
#[derive(Debug, Default, Clone)]
pub struct RecentSockets {
    home: Option<NetNsId>,
    /// By addresses: the latest holders, newest first (a 4-tuple that changed hands: the
    /// earlier holders still answer for their own packets decided late).
    closed: FastMap<ExactKey, Holders<RecentRecord>>,
    /// The local ports of `closed`'s sockets (ports, not addresses: an entry may have an
    /// unspecified local address, which stands for every address of the host).
    closed_ports: FastSet<(IpProto, u16)>,
    departed: HashMap<ProcessKey, Arc<ProcessInfo>>,
    /// Whether some entry has an unspecified local address (else no second lookup is made).
    any_local: bool,
    /// Whether some entry is [`NetNsId::UNPLACED`] (else no second lookup is made).
    unplaced: bool,
    /// The specific local addresses of `closed`'s entries (not loopback, not unspecified):
    /// an address none has, and the host does not have, is no end of theirs.
    local_ips: FastSet<IpAddr>,
}

/// Holders of one 4-tuple remembered, newest first.
pub(crate) const HOLDERS_KEPT: usize = 8;
pub(crate) type Holders<T> = [Option<T>; HOLDERS_KEPT];

/// The holders of one 4-tuple after `new`: another sighting of a socket already kept
/// (`same` equal: one socket and holder, so one connection) widens it in place (`merge`);
/// anything else goes before every holder seen no later than it or not known when
/// (`seen`: when each was first seen; `None` keeps the order of arrival), so the holders
/// stay in the kernel's order whatever order their records arrived in (a traced claim
/// reaches the table after a look at a process's fds made later). When all are newer, it
/// is the one dropped; when full, the oldest that is not a `claim` goes (a process's own
/// events weigh more than fd tables: children holding an inherited socket must not push
/// out the claim of the process that uses it), else the oldest. Claims are never merged
/// but with themselves: the process may have held the 4-tuple for several connections,
/// with another's in between.
pub(crate) fn succeed<T: Copy, K: PartialEq>(
    slots: Holders<T>,
    new: T,
    same: impl Fn(&T) -> K,
    merge: impl Fn(T, T) -> T,
    seen: impl Fn(&T) -> Option<Seen>,
    claim: impl Fn(&T) -> bool,
) -> Holders<T> {
    let mut slots = slots;
    if let Some(slot) = slots
        .iter_mut()
        .flatten()
        .find(|kept| same(kept) == same(&new))
    {
        *slot = merge(*slot, new);
        return slots;
    }
    let when = |t: &T| seen(t).map(|s| s.first);
    let Some(at) = slots.iter().position(|slot| match (slot, when(&new)) {
        (None, _) | (_, None) => true,
        (Some(held), Some(new)) => when(held).is_none_or(|held| held <= new),
    }) else {
        return slots;
    };
    let mut held: Vec<T> = slots.iter().flatten().copied().collect();
    held.insert(at.min(held.len()), new);
    if held.len() > HOLDERS_KEPT {
        let victim = held
            .iter()
            .rposition(|h| !claim(h))
            .unwrap_or(held.len() - 1);
        held.remove(victim);
    }
    let mut held = held.into_iter();
    std::array::from_fn(|_| held.next())
}

/// One recent socket: its inode (0 for a claim), last holder, and when it was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecentRecord {
    inode: u64,
    owner: ProcessKey,
    seen: Option<Seen>,
}

/// What makes two records of one 4-tuple one socket: the holder and a known inode (a claim,
/// inode 0, is its own: the exact record again, or nothing).
pub(crate) fn socket_identity(
    owner: ProcessKey,
    inode: u64,
    seen: Option<Seen>,
) -> (ProcessKey, u64, Option<Seen>) {
    (owner, inode, if inode == 0 { seen } else { None })
}

/// Two sightings of one socket: the span of both (none when either has none).
pub(crate) fn seen_both(a: Option<Seen>, b: Option<Seen>) -> Option<Seen> {
    Some(a?.union(b?))
}

impl RecentRecord {
    fn socket(&self) -> (ProcessKey, u64, Option<Seen>) {
        socket_identity(self.owner, self.inode, self.seen)
    }

    fn merge(self, new: RecentRecord) -> RecentRecord {
        let seen = seen_both(self.seen, new.seen);
        RecentRecord { seen, ..new }
    }
}

impl RecentSockets {
    /// None yet, for a table whose own namespace is `home`.
    pub fn new(home: Option<NetNsId>) -> RecentSockets {
        RecentSockets {
            home,
            ..RecentSockets::default()
        }
    }

    /// Adds a recently closed socket: the latest holder of its addresses answers first, the
    /// one before it second (for packets a newer opening of the 4-tuple does not concern).
    pub fn insert(&mut self, c: ClosedSocket) {
        let ns = ns_key(self.home, c.netns);
        let key = (ns, c.proto, canonical(c.local), canonical(c.remote));
        self.any_local |= key.2.ip().is_unspecified();
        self.unplaced |= ns == UNPLACED;
        note_specific(&mut self.local_ips, key.2.ip());
        self.closed_ports.insert((key.1, key.2.port()));
        let record = RecentRecord {
            inode: c.inode,
            owner: c.owner,
            seen: c.seen,
        };
        let slots = self.closed.entry(key).or_default();
        let seen = |r: &RecentRecord| r.seen;
        let claim = |r: &RecentRecord| r.inode == 0;
        *slots = succeed(
            *slots,
            record,
            RecentRecord::socket,
            RecentRecord::merge,
            seen,
            claim,
        );
    }

    /// Adds the facts of a process that held a recent socket and may have exited.
    pub fn insert_departed(&mut self, info: Arc<ProcessInfo>) {
        self.departed.insert(info.key, info);
    }

    /// Recent sockets held.
    pub fn len(&self) -> usize {
        self.closed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.closed.is_empty()
    }
}

impl LiveSockets {
    /// Indexes `sockets` (addresses made canonical), home's addresses `local_addrs` and the
    /// guests' `guest_addrs`, for a table whose own namespace is `home`. No socket has a
    /// time it was seen (see [`LiveSockets::build_seen`]).
    pub fn build(
        home: Option<NetNsId>,
        sockets: Vec<SocketEntry>,
        local_addrs: Vec<IpAddr>,
        guest_addrs: &[(NetNsId, IpAddr)],
    ) -> LiveSockets {
        let seen = vec![None; sockets.len()];
        LiveSockets::build_seen(home, sockets, seen, Vec::new(), local_addrs, guest_addrs)
    }

    /// [`LiveSockets::build`] with the time each socket was last seen (`seen[i]` for
    /// `sockets[i]`; missing ones have none), which [`crate::Openings`] weighs, and when
    /// the holder of each kept socket lived (`life[i]`, see [`SocketMatch::life`]; missing
    /// ones unbounded).
    pub fn build_seen(
        home: Option<NetNsId>,
        sockets: Vec<SocketEntry>,
        mut seen: Vec<Option<Seen>>,
        mut life: Vec<Life>,
        local_addrs: Vec<IpAddr>,
        guest_addrs: &[(NetNsId, IpAddr)],
    ) -> LiveSockets {
        seen.resize(sockets.len(), None);
        life.resize(sockets.len(), Life::default());
        let local: FastSet<IpAddr> = local_addrs.into_iter().map(canonical_ip).collect();
        let mut guests: FastMap<IpAddr, Ns> = FastMap::default();
        for &(netns, ip) in guest_addrs {
            let (ns, ip) = (ns_key(home, netns), canonical_ip(ip));
            if ns == HOME || ip.is_loopback() {
                continue;
            }
            let shared = local.contains(&ip) || guests.get(&ip).is_some_and(|&n| n != ns);
            guests.insert(ip, if shared { SHARED_ADDR } else { ns });
        }
        let known_ips = local.iter().chain(guests.keys()).copied().collect();
        let mut live = LiveSockets {
            home,
            local,
            guests,
            seen,
            life,
            known_ips,
            ..LiveSockets::default()
        };
        live.sockets.reserve(sockets.len());
        for mut entry in sockets {
            entry.local = canonical(entry.local);
            entry.remote = canonical(entry.remote);
            live.index(entry);
        }
        live
    }

    fn index(&mut self, entry: SocketEntry) {
        let at = self.sockets.len();
        note_specific(&mut self.known_ips, entry.local.ip());
        let ns = ns_key(self.home, entry.netns);
        self.unplaced |= ns == UNPLACED;
        let wildcard = entry.is_wildcard_remote();
        if wildcard && entry.proto == IpProto::Tcp && entry.state == TcpState::Close {
            // Bound and not listening: no packet is its own (once it connects it is listed
            // with its peer). Not indexed, so it never answers for its port.
        } else if wildcard {
            let key = (ns, entry.proto, entry.local);
            let before = self.bound.get(&key).copied();
            index_at(&mut self.bound, key, at, &self.sockets, &entry);
            if let Some(old) = before.filter(|&old| self.bound.get(&key) != Some(&old)) {
                if self.life[old].until.is_some() {
                    let earlier = self.displaced.entry(key).or_default();
                    if earlier.len() == HOLDERS_KEPT {
                        earlier.remove(0);
                    }
                    earlier.push(old);
                }
            }
        } else {
            let key = (ns, entry.proto, entry.local, entry.remote);
            self.connected.insert((ns, entry.proto, entry.local));
            index_at(&mut self.exact, key, at, &self.sockets, &entry);
        }
        self.sockets.push(entry);
    }

    /// The namespace whose sockets answer for local address `ip`; `None` when more than one
    /// namespace has it.
    fn ns_of(&self, ip: IpAddr) -> Option<Ns> {
        if self.guests.is_empty() || ip.is_loopback() {
            return Some(HOME);
        }
        match self.guests.get(&ip) {
            None => Some(HOME),
            Some(&SHARED_ADDR) => None,
            Some(&ns) => Some(ns),
        }
    }

    /// True when `ip` (canonical) is an address of namespace `ns`.
    fn is_local_in(&self, ns: Ns, ip: IpAddr) -> bool {
        // Every namespace has its own loopback (a guest's is only ever asked for by a query
        // that names the namespace: packets on it are not captured).
        ip.is_loopback()
            || if ns == HOME {
                self.local.contains(&ip)
            } else {
                self.guests.get(&ip) == Some(&ns)
            }
    }
}

/// Adds `ip` to `ips` unless it is loopback or unspecified (those stand for the host's own).
fn note_specific(ips: &mut FastSet<IpAddr>, ip: IpAddr) {
    if !ip.is_loopback() && !ip.is_unspecified() {
        ips.insert(ip);
    }
}

/// Points `key` at `entry` (to be stored at `at`): a later entry wins, except that a socket
/// no process holds (inode 0) never hides one that a process holds.
fn index_at<K: std::hash::Hash + Eq>(
    map: &mut FastMap<K, usize>,
    key: K,
    at: usize,
    sockets: &[SocketEntry],
    entry: &SocketEntry,
) {
    let keep_old = map
        .get(&key)
        .is_some_and(|&old| sockets[old].inode != 0 && entry.inode == 0);
    if !keep_old {
        map.insert(key, at);
    }
}

/// A connected socket that closed recently, with the process that held it. Tables keep
/// these for a grace period so that trailing packets keep their owner; a live socket with
/// the same addresses always wins, so a reused port is never credited to a dead process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedSocket {
    /// The namespace the socket was in.
    pub netns: NetNsId,
    pub proto: IpProto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inode: u64,
    pub owner: ProcessKey,
    /// When its holder was seen with it (see [`crate::Openings`]); `None`: always current.
    pub seen: Option<Seen>,
}

/// Socket inode → holders, and the facts about every holder. Shared (`Arc`) between
/// successive tables, so a refresh that learned no new owner does not copy it.
#[derive(Debug, Default, Clone)]
pub struct OwnerMap {
    pub holders: HashMap<u64, Vec<ProcessKey>>,
    pub processes: HashMap<ProcessKey, ProcessInfo>,
}

/// The parts a refresh gathers, from which a [`SocketTable`] is built.
#[derive(Debug, Default)]
pub struct TableParts {
    pub netns: Option<NetNsId>,
    pub sockets: Vec<SocketEntry>,
    pub owners: Arc<OwnerMap>,
    pub closed: Vec<ClosedSocket>,
    /// Facts about processes that held recently closed sockets and may have exited, so late
    /// and trailing credits still name them.
    pub departed: Vec<ProcessInfo>,
    /// The addresses of the table's own namespace.
    pub local_addrs: Vec<IpAddr>,
    /// The addresses of other namespaces whose sockets are in `sockets`.
    pub guest_addrs: Vec<(NetNsId, IpAddr)>,
}

/// Maps `::ffff:a.b.c.d` to `a.b.c.d`; every other address is returned unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// [`canonical_ip`] for a socket address; IPv6 flow info and scope id are cleared.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// The deterministic rule for a socket held by several processes: the most recently started
/// holder is credited (after `fork` + `exec` the child is the one doing the I/O; a parent that
/// keeps a listener open hands connections to its newest worker). Start times are clock
/// ticks (10 ms): a child forked within its parent's tick ties with it, and the higher pid
/// — the later fork, pids being handed out in increasing order — is the newer one.
pub fn choose_owner(holders: &[ProcessKey]) -> Option<ProcessKey> {
    holders
        .iter()
        .copied()
        .max_by(|a, b| a.start_time.cmp(&b.start_time).then(a.pid.cmp(&b.pid)))
}

/// The process that used a shared connection rather than `holder` (the one the fds or a
/// record name): the latest traced claim (an event in the process's own context: its
/// `connect`, its first send or receive) among `records` that are current, when it is
/// another process's and either `holder` has an earlier claim of its own (a child that
/// forked off with the connection and did the I/O while its idle parent outlives it), or
/// the claimant is itself among `holders`, the processes holding this very socket (a
/// parent that goes on using the connection while a child that inherited it idles: the
/// newest holder would otherwise be credited). Without either, the holder stands: a
/// claim of an earlier connection on the 4-tuple never outranks it.
fn used_by_another(
    records: &Holders<RecentRecord>,
    holder: ProcessKey,
    holders: &[ProcessKey],
    judged: &dyn Fn(Option<Seen>) -> Currency,
) -> Option<ProcessKey> {
    let mut claims = records
        .iter()
        .flatten()
        .filter(|r| r.inode == 0 && judged(r.seen) == Currency::Current);
    let latest = claims.next()?;
    let other = latest.owner != holder;
    (other && (holders.contains(&latest.owner) || claims.any(|r| r.owner == holder)))
        .then_some(latest.owner)
}

impl SocketTable {
    /// Builds the lookup indexes. `generation` must grow with every refresh.
    pub fn build(generation: u64, parts: TableParts) -> SocketTable {
        let mut recent = RecentSockets::new(parts.netns);
        for info in parts.departed {
            recent.insert_departed(Arc::new(info));
        }
        for c in parts.closed {
            recent.insert(c);
        }
        SocketTable::from_shared(
            generation,
            parts.netns,
            Arc::new(LiveSockets::build(
                parts.netns,
                parts.sockets,
                parts.local_addrs,
                &parts.guest_addrs,
            )),
            parts.owners,
            Arc::new(recent),
        )
    }

    /// A table of already built parts (see [`SocketTable`]). `generation` must grow with
    /// every table.
    pub fn from_shared(
        generation: u64,
        netns: Option<NetNsId>,
        live: Arc<LiveSockets>,
        owners: Arc<OwnerMap>,
        recent: Arc<RecentSockets>,
    ) -> SocketTable {
        SocketTable {
            generation,
            netns,
            live,
            owners,
            recent,
            nat: Arc::default(),
            packet_sends: Arc::default(),
            claims_read_to: None,
            forks: Arc::default(),
        }
    }

    /// This table with the forks of processes seen with connections (their claims, their
    /// fds). A packet of such a connection read within [`FORK_WINDOW`] after its holder
    /// forked is credited to nobody as it is read: the child holds the connection too, may
    /// be the one that uses it, and claims it only at its first send or receive, a tracer
    /// round (or, under CPU load, many milliseconds) later. It waits (pending) and is
    /// decided once the table holds every claim made up to its capture (see
    /// [`Captured::late`]). Packets before the fork and after the window are credited as
    /// before, but per packet (not cached per flow).
    pub fn with_forks(self, forks: Arc<Forks>) -> SocketTable {
        SocketTable { forks, ..self }
    }

    /// This table, holding every traced claim made up to `read_to` (see [`Captured::late`]).
    ///
    /// The tracer reads binds as it reads claims, so the table also holds every traced
    /// `bind()` made up to `read_to`: a bound socket the kernel's listing does not show
    /// ([`Life::unlisted`]), whose holder lives on, answers as read only for packets
    /// captured up to `read_to` (in the table's own namespace). Its holder may have closed
    /// it since it was seen (a port bound once to find it free) and a new process bound
    /// the port, whose bind is not in the table yet: a later packet waits, and is decided
    /// once every bind up to its capture is in (the newer holder wins the port).
    pub fn with_claims_read_to(self, read_to: Option<Instant>) -> SocketTable {
        SocketTable {
            claims_read_to: read_to,
            ..self
        }
    }

    /// Every traced claim made up to this time is in the table (`None`: not known).
    pub fn claims_read_to(&self) -> Option<Instant> {
        self.claims_read_to
    }

    /// True when a packet of `flow` captured at `captured` may wait, decided late, for the
    /// claims made up to then ([`Captured::late`]): captured after the claims read so far,
    /// with a connection, live or recently closed or claimed, at either end (only those
    /// answers wait for claims; a flow no socket is known for waits for a table with one).
    pub fn may_wait_for_claims(&self, flow: &pidcap_wire::FlowKey, captured: Instant) -> bool {
        let unread = self
            .claims_read_to
            .is_some_and(|read_to| read_to < captured);
        unread
            && [(flow.src, flow.dst), (flow.dst, flow.src)]
                .into_iter()
                .any(|(local, remote)| {
                    self.has_connection(flow.proto, local, remote)
                        || self.has_unlisted_bound(flow.proto, local)
                })
    }

    /// True when the bound socket that answers for `local` in the table's own namespace is
    /// one the kernel's listing does not show, of a holder with no known end (see
    /// [`SocketTable::with_claims_read_to`]).
    fn has_unlisted_bound(&self, proto: IpProto, local: SocketAddr) -> bool {
        let local = canonical(local);
        self.live.ns_of(local.ip()) == Some(HOME)
            && self
                .lookup_bound(HOME, proto, local, None)
                .is_some_and(|at| {
                    let life = self.live.life[at];
                    life.unlisted && life.until.is_none()
                })
    }

    /// True when a connection, live or recently closed (or claimed), has these ends, in the
    /// local end's namespace or among the unplaced sockets; also when the local address is
    /// several namespaces' (not looked up by address).
    fn has_connection(&self, proto: IpProto, local: SocketAddr, remote: SocketAddr) -> bool {
        let local = canonical(local);
        let Some(ns) = self.live.ns_of(local.ip()) else {
            return true;
        };
        [ns, UNPLACED].into_iter().any(|ns| {
            let key = (ns, proto, local, canonical(remote));
            self.live.exact.contains_key(&key) || self.recently_closed(&key).is_some()
        })
    }

    /// True when a late answer for a packet `captured` must not rest on a traced claim yet:
    /// claims made up to its capture may still be on their way to the table.
    pub(crate) fn claims_unread(&self, captured: Captured) -> bool {
        match (captured.late, captured.at, self.claims_read_to) {
            (true, Some(at), Some(read_to)) => read_to < at,
            _ => false,
        }
    }

    /// This table with the recent packet-socket sends `sends`.
    pub fn with_packet_sends(self, packet_sends: Arc<PacketSends>) -> SocketTable {
        SocketTable {
            packet_sends,
            ..self
        }
    }

    /// The process that sent, through a packet socket, the IP packet of `ip_len` bytes
    /// captured at `captured` (see [`PacketSends::sender_of`]; `netns`: a capture inside
    /// that namespace).
    pub fn packet_sender(
        &self,
        ip_len: u32,
        captured: Instant,
        netns: Option<NetNsId>,
    ) -> Option<ProcessKey> {
        if self.packet_sends.is_empty() {
            return None;
        }
        self.packet_sends.sender_of(ip_len, captured, netns)
    }

    /// This table with the known address translations `nat`.
    pub fn with_nat(self, nat: Arc<NatMap>) -> SocketTable {
        SocketTable { nat, ..self }
    }

    /// The known address translations.
    pub fn nat(&self) -> &Arc<NatMap> {
        &self.nat
    }

    /// How a packet of `flow` is attributed when it is a form of a translated connection.
    pub fn nat_view(&self, flow: &pidcap_wire::FlowKey) -> Option<NatView> {
        self.nat.view(flow)
    }

    /// The shared parts (live sockets, owners, recent sockets): two tables share a part when
    /// `Arc::ptr_eq` says so.
    pub fn parts(&self) -> (&Arc<LiveSockets>, &Arc<OwnerMap>, &Arc<RecentSockets>) {
        (&self.live, &self.owners, &self.recent)
    }

    /// The refresh generation this table came from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The network namespace whose sockets this table holds.
    pub fn netns(&self) -> Option<NetNsId> {
        self.netns
    }

    /// Every socket in the table, with canonical addresses.
    pub fn sockets(&self) -> &[SocketEntry] {
        &self.live.sockets
    }

    /// Number of processes known to hold sockets.
    pub fn process_count(&self) -> usize {
        self.owners.processes.len()
    }

    /// Facts about a process that held a socket at refresh time (or, for a recently closed
    /// socket, when it was last seen).
    pub fn process(&self, key: &ProcessKey) -> Option<&ProcessInfo> {
        self.owners
            .processes
            .get(key)
            .or_else(|| self.recent.departed.get(key).map(|i| &**i))
    }

    /// Every process holding `inode`, in no particular order.
    pub fn holders(&self, inode: u64) -> &[ProcessKey] {
        self.owners
            .holders
            .get(&inode)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// True when `ip` is an address of this host, in any namespace the table covers (any
    /// loopback address counts).
    pub fn is_local(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        ip.is_loopback() || self.live.local.contains(&ip) || self.live.guests.contains_key(&ip)
    }

    /// False only when no socket of this table, live or recently closed, can have `ip` as
    /// its local address and `ip` is none of the host's: an end at `ip` is not local.
    pub fn may_be_local(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        ip.is_loopback()
            || self.live.known_ips.contains(&ip)
            || (!self.recent.local_ips.is_empty() && self.recent.local_ips.contains(&ip))
    }

    /// True when `ip` is one of the table's own namespace's addresses (loopback included).
    pub fn is_home(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        ip.is_loopback() || self.live.local.contains(&ip)
    }

    /// True when either end of `flow` is an address of another namespace than the table's
    /// own (a container's): such packets may be captured once per interface they cross.
    pub fn touches_guest(&self, flow: &pidcap_wire::FlowKey) -> bool {
        let guests = &self.live.guests;
        !guests.is_empty()
            && (guests.contains_key(&canonical_ip(flow.src.ip()))
                || guests.contains_key(&canonical_ip(flow.dst.ip())))
    }

    /// Finds the socket for the local end `local` of a packet exchanged with `remote`, among
    /// the sockets of the namespace `local`'s address belongs to (none when several have
    /// it; see the module doc), in the documented lookup order: exact connected socket held by a process; then a recently
    /// closed connected socket with those addresses (its last holder; one recorded with an
    /// unspecified local address matches any of this host's, see [`RecentSockets`]); then a socket bound to
    /// the local address and port with no peer (for protocols without ports, and ICMP echo
    /// not sent from a ping socket: a raw socket of that protocol, keyed with port 0); then
    /// one bound to the wildcard address of the family (for IPv4, also `::` of a dual-stack
    /// IPv6 socket), but only when `local` is one of this host's addresses. A connected
    /// socket that no process holds (TIME_WAIT) is the answer only when none of these finds
    /// a holder. When the namespace's sockets name no holder, the same order among the
    /// [`NetNsId::UNPLACED`] sockets.
    pub fn lookup(
        &self,
        proto: IpProto,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<SocketMatch> {
        self.lookup_current(proto, local, remote, &|_| Currency::Current)
    }

    /// [`SocketTable::lookup`] for one packet, each connected record (live or recently
    /// closed) judged by `judge` from when it was seen ([`crate::Openings::judge`]): a
    /// stale one is passed over (the one before it, or the bound sockets, answer); an
    /// undecided one makes the lookup find nothing for now (the packet waits).
    pub fn lookup_current(
        &self,
        proto: IpProto,
        local: SocketAddr,
        remote: SocketAddr,
        judge: &dyn Fn(Seen) -> Currency,
    ) -> Option<SocketMatch> {
        self.lookup_captured(proto, local, remote, judge, Captured::default())
    }

    /// [`SocketTable::lookup_current`] for a packet captured at `captured` (`None`: any
    /// time): when the socket bound to the local address has a holder whose life excludes
    /// that time, the latest earlier holder of the address whose life includes it answers
    /// (a port passed on: a packet read late is still its sender's). The caller still
    /// checks the answer's [`SocketMatch::life`].
    pub fn lookup_captured(
        &self,
        proto: IpProto,
        local: SocketAddr,
        remote: SocketAddr,
        judge: &dyn Fn(Seen) -> Currency,
        captured: Captured,
    ) -> Option<SocketMatch> {
        let local = canonical(local);
        let ns = self.live.ns_of(local.ip())?;
        self.lookup_at(ns, proto, local, remote, judge, captured)
    }

    /// [`SocketTable::lookup`] among the sockets of `netns` whatever the address (a query
    /// that names the namespace: a container's own loopback, an address two namespaces
    /// share).
    pub fn lookup_in(
        &self,
        netns: NetNsId,
        proto: IpProto,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<SocketMatch> {
        let ns = ns_key(self.live.home, netns);
        let current = &|_| Currency::Current;
        let any_time = Captured::default();
        self.lookup_at(ns, proto, canonical(local), remote, current, any_time)
    }

    /// The answer of namespace `ns`'s sockets; when none has a holder, that of the
    /// [`NetNsId::UNPLACED`] ones (a process whose namespace was not read: its socket is
    /// in some namespace, and this one has no other explanation for the packet).
    fn lookup_at(
        &self,
        ns: Ns,
        proto: IpProto,
        local: SocketAddr,
        remote: SocketAddr,
        judge: &dyn Fn(Seen) -> Currency,
        captured: Captured,
    ) -> Option<SocketMatch> {
        let found = match self.answer_in(ns, proto, local, remote, judge, captured) {
            Answer::Undecided => return None,
            Answer::Found(found) => found,
        };
        let held = found.is_some_and(|f| f.owner.is_some());
        if held || ns == UNPLACED || !(self.live.unplaced || self.recent.unplaced) {
            return found;
        }
        match self.answer_in(UNPLACED, proto, local, remote, judge, captured) {
            Answer::Found(Some(unplaced)) if unplaced.owner.is_some() => Some(unplaced),
            Answer::Undecided => None,
            Answer::Found(_) => found,
        }
    }

    fn answer_in(
        &self,
        ns: Ns,
        proto: IpProto,
        local: SocketAddr,
        remote: SocketAddr,
        judge: &dyn Fn(Seen) -> Currency,
        captured: Captured,
    ) -> Answer {
        let key = (ns, proto, local, canonical(remote));
        let records = self.recently_closed(&key).unwrap_or_default();
        let fork = match self.forks.is_empty() {
            true => None,
            false => self.holder_fork(&key, &records),
        };
        // Until when the connection is young: only while claims are traced, and in the
        // table's own namespace (a guest's packets may be captured once per interface they
        // cross, and wait whole: they are credited as they are read, as before).
        let young = match (proto, self.claims_read_to) {
            (IpProto::Tcp, Some(_)) if ns == HOME => records
                .iter()
                .flatten()
                .filter_map(|r| r.seen)
                .map(|seen| seen.first + YOUNG_CONNECTION)
                .max(),
            _ => None,
        };
        let claimed = || records.iter().flatten().any(|r| r.inode == 0);
        if self.claims_unread(captured) && (fork.is_some() || young.is_some() || claimed()) {
            // Another process's claim of this connection may still come (see
            // [`Captured::late`]).
            return Answer::Undecided;
        }
        let (false, Some(at)) = (captured.late, captured.at) else {
            let answer = self.answer_of(&key, &records, judge, captured);
            if self.claims_unread(captured) && ns == HOME && unlisted_unended(&answer) {
                return Answer::Undecided; // a newer holder's bind may be on its way
            }
            return answer;
        };
        if fork.is_none() && young.is_none_or(|young| at >= young) {
            let mut answer = self.answer_of(&key, &records, judge, captured);
            if let (Answer::Found(Some(found)), Some(read_to), HOME) =
                (&mut answer, self.claims_read_to, ns)
            {
                if unlisted_unended_match(found) && read_to < at {
                    // Timed: the packets after `read_to` wait (see `with_claims_read_to`).
                    found.life.until = Some(read_to);
                }
            }
            return answer;
        }
        match self.answer_of(&key, &records, judge, captured) {
            // Timed, so that no cache keeps it for the packets it does not answer for: those
            // wait, and are decided late (see [`SocketTable::with_forks`]).
            Answer::Found(Some(mut found)) if found.life.is_unbounded() => {
                found.life = settled(at, fork, young);
                Answer::Found(Some(found))
            }
            answer => answer,
        }
    }

    /// The answer of the sockets of `key` (a namespace, protocol and both ends), live,
    /// recently closed (`records`) and bound, each connected record judged by `judge`.
    fn answer_of(
        &self,
        key: &ExactKey,
        records: &Holders<RecentRecord>,
        judge: &dyn Fn(Seen) -> Currency,
        captured: Captured,
    ) -> Answer {
        let &(ns, proto, local, _) = key;
        let judged = |seen: Option<Seen>| seen.map_or(Currency::Current, judge);
        // A connected socket with no holder (TIME_WAIT, orphaned) is the last resort: its
        // last holder, or the listener that accepted it, is a better answer.
        let mut holderless = None;
        let mut open = false;
        let used_by = |holder, holders: &[ProcessKey]| {
            used_by_another(records, holder, holders, &judged).unwrap_or(holder)
        };
        if let Some(&at) = self.live.exact.get(key) {
            match judged(self.live.seen[at]) {
                Currency::Undecided => return Answer::Undecided,
                Currency::Stale => {}
                Currency::Current => {
                    let mut found = self.matched(at, MatchKind::Exact);
                    if let Some(holder) = found.owner {
                        found.owner = Some(used_by(holder, self.holders(found.inode)));
                        return Answer::Found(Some(found));
                    }
                    holderless = Some(found);
                    // An inode means some fd still holds it (TIME_WAIT and orphans have none).
                    open = found.inode != 0;
                }
            }
        }
        for record in records.iter().flatten() {
            let found = SocketMatch {
                life: Life::default(),
                inode: record.inode,
                kind: MatchKind::Recent,
                owner: Some(used_by(record.owner, self.holders(record.inode))),
            };
            match judged(record.seen) {
                Currency::Undecided => return Answer::Undecided,
                Currency::Stale => continue,
                // Still held by some fd, its holder not yet found in the fd tables, but a
                // process was seen using it: that is the connected socket, with its owner.
                Currency::Current => {
                    return Answer::Found(Some(match holderless {
                        Some(live) if open => SocketMatch {
                            life: Life::default(),
                            inode: live.inode,
                            kind: MatchKind::Exact,
                            owner: found.owner,
                        },
                        _ => found,
                    }))
                }
            }
        }
        let bound = self
            .lookup_bound(ns, proto, local, captured.at)
            .or_else(|| {
                // Raw sockets (and raw ICMP sockets) are keyed by protocol with port 0.
                let port_based = matches!(
                    proto,
                    IpProto::Tcp | IpProto::Udp | IpProto::UdpLite | IpProto::Sctp
                );
                (!port_based && local.port() != 0)
                    .then(|| {
                        let any_port = SocketAddr::new(local.ip(), 0);
                        self.lookup_bound(ns, proto, any_port, captured.at)
                    })
                    .flatten()
            });
        Answer::Found(
            match bound.map(|at| self.matched(at, MatchKind::Wildcard)) {
                Some(found) if found.owner.is_some() => Some(found),
                other => holderless.or(other),
            },
        )
    }

    /// The latest fork of a process that was seen with the connection `key` (`records`) or
    /// holds its live socket: its child holds the socket too (see
    /// [`SocketTable::with_forks`]).
    fn holder_fork(&self, key: &ExactKey, records: &Holders<RecentRecord>) -> Option<Instant> {
        let live = self
            .live
            .exact
            .get(key)
            .map(|&at| self.live.sockets[at].inode);
        let holders = live.map_or(&[][..], |inode| self.holders(inode));
        let owners = records.iter().flatten().map(|r| &r.owner);
        owners
            .chain(holders)
            .filter_map(|owner| self.forks.get(&owner.pid).copied())
            .max()
    }

    /// True when no connected socket, live or recently closed, has `local` as its local
    /// end: then [`SocketTable::lookup`] gives the same answer for `local` whatever the
    /// remote end (only bound sockets and the host's addresses are consulted).
    pub fn remote_independent(&self, proto: IpProto, local: SocketAddr) -> bool {
        let local = canonical(local);
        let Some(ns) = self.live.ns_of(local.ip()) else {
            return true; // no lookup is made for an address several namespaces have
        };
        let unplaced =
            self.live.unplaced && self.live.connected.contains(&(UNPLACED, proto, local));
        !unplaced
            && !self.live.connected.contains(&(ns, proto, local))
            && !self.recent.closed_ports.contains(&(proto, local.port()))
    }

    /// The recently closed (or claimed) sockets with `key`'s addresses, latest first.
    fn recently_closed(&self, key: &ExactKey) -> Option<Holders<RecentRecord>> {
        let slots = self.recent.closed.get(key).or_else(|| {
            let (ns, proto, local, remote) = *key;
            let unspecified = local.ip().is_unspecified();
            if !self.recent.any_local || unspecified || !self.live.is_local_in(ns, local.ip()) {
                return None;
            }
            let any = match local {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            let any = SocketAddr::new(any, local.port());
            self.recent.closed.get(&(ns, proto, any, remote))
        })?;
        Some(*slots)
    }

    fn lookup_bound(
        &self,
        ns: Ns,
        proto: IpProto,
        local: SocketAddr,
        captured: Option<Instant>,
    ) -> Option<usize> {
        let key = self.bound_key(ns, proto, local)?;
        let at = *self.live.bound.get(&key)?;
        let Some(captured) = captured.filter(|&t| self.live.life[at].excludes(t)) else {
            return Some(at);
        };
        let earlier = self
            .live
            .displaced
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        // Only a socket whose end is known: one whose holder lives on may have closed it
        // long ago (a port probed and let go), and the packet be an unread new holder's.
        let lived = earlier.iter().rev().find(|&&i| {
            let life = self.live.life[i];
            life.until.is_some() && !life.excludes(captured)
        });
        Some(lived.copied().unwrap_or(at))
    }

    /// The key of the bound socket that answers for `local`: its own address, else (for an
    /// address of the namespace) the wildcard address of its family, IPv4 then IPv6.
    fn bound_key(&self, ns: Ns, proto: IpProto, local: SocketAddr) -> Option<BoundKey> {
        let found = |addr| {
            let key = (ns, proto, addr);
            self.live.bound.contains_key(&key).then_some(key)
        };
        if let Some(key) = found(local) {
            return Some(key);
        }
        if !self.live.is_local_in(ns, local.ip()) {
            return None;
        }
        let port = local.port();
        if local.is_ipv4() {
            let any_v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            if let Some(key) = found(any_v4) {
                return Some(key);
            }
        }
        found(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
    }

    fn matched(&self, at: usize, kind: MatchKind) -> SocketMatch {
        let inode = self.live.sockets[at].inode;
        let owner = if inode == 0 {
            None
        } else {
            choose_owner(self.holders(inode))
        };
        SocketMatch {
            inode,
            kind,
            owner,
            life: self.live.life[at],
        }
    }

    /// The sockets held by `pid` (any holder, not just the credited one).
    pub fn connections_of(&self, pid: u32) -> impl Iterator<Item = &SocketEntry> {
        self.live
            .sockets
            .iter()
            .filter(move |s| s.inode != 0 && self.holders(s.inode).iter().any(|k| k.pid == pid))
    }

    /// The process identity of `pid` if it held sockets at refresh time.
    pub fn key_of_pid(&self, pid: u32) -> Option<ProcessKey> {
        self.owners.processes.keys().find(|k| k.pid == pid).copied()
    }
}
