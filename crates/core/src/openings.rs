//! Openings: when each TCP 4-tuple last started a new connection (a SYN without ACK was
//! captured), so that whoever held that 4-tuple before is never credited with the new
//! connection's packets.
//!
//! A port passes from process to process: a client re-binding its port with `SO_REUSEADDR`,
//! a reused ephemeral port (on loopback the kernel reuses TIME_WAIT ports), a restarted
//! server's connections. Until the socket table knows the new socket, the old one — a live
//! entry from the last dump, a closed one kept for its trailing packets, a process seen
//! using it — still answers for the addresses. Every such record carries the span of time in
//! which its holder was seen with the 4-tuple ([`Seen`]: the dumps that listed it, the
//! events that claimed it). The connection a packet captured at `at` belongs to is the one
//! the last opening at or before `at` started; the record answers for the connections
//! started by the last openings at or before the ends of its span (plus [`OPENING_SLACK`]),
//! and those between. A record is **current** for a packet whose connection is among them;
//! **stale** for any other: an opening between them means the record knew an earlier
//! connection (a packet after a reuse) or a later one (a packet of the previous connection
//! decided late, from the pending buffer, once the new holder was known). A stale record is
//! passed over; the packet waits (pending) until a record of its own connection arrives, or
//! goes to `unknown` — never to another holder.
//!
//! Openings are noted as packets are read, in capture order, so they are known up to the
//! last packet read (the horizon). A record whose span reaches past the horizon may hide an
//! opening not read yet: when that could change the answer the record is **undecided** and
//! the packet waits for later packets.
//!
//! Invariants: time is a parameter (capture times and record times on one monotonic clock);
//! at most [`KEPT_PER_TUPLE`] openings per 4-tuple, the latest (a packet older than those
//! kept, once some were dropped, cannot be told apart and is never credited: stale to every
//! record); at most `capacity` 4-tuples,
//! those whose last opening is older than [`OPENINGS_KEPT`] dropped first, and all of them
//! when none is (counted in [`Openings::forgotten`]: a record of a forgotten 4-tuple is
//! current again, as before this existed). Safe to share: `&self` methods, `dashmap` shards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use foldhash::fast::RandomState;
use pidcap_wire::{FlowKey, IpProto};

use crate::table::canonical;

/// How much earlier than its connection's opening a record may have been seen: the process's `connect()` is traced a few microseconds before its SYN is
/// captured, and the two clocks are converted into one with microsecond error.
pub const OPENING_SLACK: Duration = Duration::from_millis(1);

/// How long an opening is remembered: longer than any record of the connection before it
/// lives (a closed connection is kept 10 s; a dump lists live sockets every few seconds).
pub const OPENINGS_KEPT: Duration = Duration::from_secs(30);

/// Two openings of one 4-tuple closer than this are one: the copies of one SYN captured on
/// several interfaces (a container's veth, the bridge, the uplink). A new connection on the
/// same 4-tuple so soon after the last one opened is not told apart.
pub const SAME_OPENING: Duration = Duration::from_millis(10);

/// Openings remembered per 4-tuple (a packet retried from the pending buffer is judged by
/// the openings up to its own capture time, so a few are kept).
pub const KEPT_PER_TUPLE: usize = 8;

/// The openings of one 4-tuple: the latest, and the newest of those dropped to keep them.
#[derive(Debug, Default)]
struct History {
    kept: [Option<Instant>; KEPT_PER_TUPLE],
    dropped: Option<Instant>,
}

/// The connection a time falls in: the one the last opening at or before it started (none:
/// before every opening), or one whose opening was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Known(Option<Instant>),
    Forgotten,
}

impl History {
    fn note(&mut self, at: Instant) {
        let copy = |&t: &Instant| at.max(t) - at.min(t) < SAME_OPENING;
        if self.kept.iter().flatten().any(copy) {
            return;
        }
        // Keep the latest: replace the oldest (or an empty slot).
        if let Some(oldest) = self.kept.iter_mut().min_by_key(|t| **t) {
            if let Some(gone) = oldest.replace(at) {
                self.dropped = Some(self.dropped.map_or(gone, |d| d.max(gone)));
            }
        }
    }

    /// The connection time `limit` falls in, from the openings up to `horizon`.
    fn conn(&self, limit: Instant, horizon: Instant) -> Conn {
        let limit = limit.min(horizon);
        if self.dropped.is_some_and(|d| d >= limit)
            || (self.dropped.is_some() && self.kept.iter().flatten().all(|&t| t > limit))
        {
            return Conn::Forgotten;
        }
        Conn::Known(
            self.kept
                .iter()
                .flatten()
                .filter(|&&t| t <= limit)
                .max()
                .copied(),
        )
    }

    fn latest(&self) -> Option<Instant> {
        self.kept.iter().flatten().max().copied()
    }
}

/// The span of time in which a holder was seen with a 4-tuple: from the first sighting (the
/// dump that first listed the socket, the first event that claimed it) to the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub first: Instant,
    pub last: Instant,
}

impl Seen {
    /// Seen once, at `at`.
    pub fn at(at: Instant) -> Seen {
        Seen {
            first: at,
            last: at,
        }
    }

    /// The span covering both.
    pub fn union(self, other: Seen) -> Seen {
        Seen {
            first: self.first.min(other.first),
            last: self.last.max(other.last),
        }
    }
}

/// What a record of a 4-tuple is to one packet of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Currency {
    /// The record knew the packet's connection.
    Current,
    /// The record knew another connection of the 4-tuple (an opening lies between them).
    Stale,
    /// The record was seen after the last packet noted: an opening between the packet and
    /// the record may still be unread. The packet waits and is judged again later.
    Undecided,
}

/// The two ends of a connection, ordered, so both directions share one entry.
type Tuple = (SocketAddr, SocketAddr);

/// See the module documentation.
#[derive(Debug)]
pub struct Openings {
    by_tuple: DashMap<Tuple, History, RandomState>,
    capacity: usize,
    forgotten: AtomicU64,
}

impl Openings {
    /// Remembers the openings of at most `capacity` 4-tuples (at least 1).
    pub fn new(capacity: usize) -> Openings {
        Openings {
            by_tuple: DashMap::with_hasher(RandomState::default()),
            capacity: capacity.max(1),
            forgotten: AtomicU64::new(0),
        }
    }

    /// Records that a packet of `flow` captured at `at` opened a connection (TCP only; the
    /// caller passes packets whose `tcp_opening` is set).
    pub fn note(&self, flow: &FlowKey, at: Instant) {
        if flow.proto != IpProto::Tcp {
            return;
        }
        let key = tuple(flow);
        if !self.by_tuple.contains_key(&key) && self.by_tuple.len() >= self.capacity {
            self.make_room(at);
        }
        self.by_tuple.entry(key).or_default().note(at);
    }

    /// True when some opening of `flow`'s 4-tuple is remembered.
    pub fn knows(&self, flow: &FlowKey) -> bool {
        flow.proto == IpProto::Tcp && self.by_tuple.contains_key(&tuple(flow))
    }

    /// Whether a record of `flow`'s 4-tuple seen over `seen` answers for a packet captured
    /// at `at` (see the module documentation), when every packet captured up to `horizon`
    /// has been read. Always current for other protocols and for a 4-tuple never opened.
    pub fn judge(&self, flow: &FlowKey, seen: Seen, at: Instant, horizon: Instant) -> Currency {
        if flow.proto != IpProto::Tcp {
            return Currency::Current;
        }
        let Some(history) = self.by_tuple.get(&tuple(flow)) else {
            return Currency::Current;
        };
        let conn = |limit: Instant| history.conn(limit, horizon);
        let (first, last) = (seen.first + OPENING_SLACK, seen.last + OPENING_SLACK);
        let Conn::Known(packet) = conn(at) else {
            return Currency::Stale; // its connection's opening was dropped: cannot tell
        };
        // A forgotten connection is older than every known one.
        let after_first = match conn(first) {
            Conn::Forgotten => true,
            Conn::Known(low) if packet == low && first > horizon => {
                // The record's first connection may start after an opening not read yet.
                return Currency::Undecided;
            }
            Conn::Known(low) => packet >= low,
        };
        let before_last = match conn(last) {
            Conn::Forgotten => false,
            Conn::Known(high) => packet <= high,
        };
        match (after_first, before_last, last > horizon) {
            (false, _, _) => Currency::Stale,
            (true, true, _) => Currency::Current,
            (true, false, true) => Currency::Undecided,
            (true, false, false) => Currency::Stale,
        }
    }

    /// 4-tuples remembered.
    pub fn len(&self) -> usize {
        self.by_tuple.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tuple.is_empty()
    }

    /// 4-tuples forgotten early because the map was full of recent openings, since start.
    pub fn forgotten(&self) -> u64 {
        self.forgotten.load(Ordering::Relaxed)
    }

    /// Drops the 4-tuples whose openings all expired; when that is not enough, all of them.
    fn make_room(&self, now: Instant) {
        self.by_tuple.retain(|_, history| {
            history
                .latest()
                .is_some_and(|t| now.saturating_duration_since(t) < OPENINGS_KEPT)
        });
        if self.by_tuple.len() >= self.capacity {
            let dropped = self.by_tuple.len() as u64;
            self.by_tuple.clear();
            self.forgotten.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

fn tuple(flow: &FlowKey) -> Tuple {
    let (a, b) = (canonical(flow.src), canonical(flow.dst));
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

#[cfg(test)]
// Tests pick their starting instant from the clock; the code under test never reads it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn flow(src: &str, dst: &str) -> FlowKey {
        FlowKey {
            proto: IpProto::Tcp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// Judged once every packet up to an hour later was read.
    fn current(openings: &Openings, f: &FlowKey, seen: Instant, at: Instant) -> bool {
        let horizon = seen.max(at) + 3600 * 1000 * MS;
        openings.judge(f, Seen::at(seen), at, horizon) == Currency::Current
    }

    #[test]
    fn a_record_seen_before_an_opening_does_not_answer_after_it() {
        let t0 = Instant::now();
        let openings = Openings::new(16);
        let out = flow("127.0.0.1:5000", "127.0.0.1:80");
        openings.note(&out, t0 + 100 * MS);
        assert!(
            current(&openings, &out, t0, t0 + 50 * MS),
            "before the opening"
        );
        assert!(
            !current(&openings, &out, t0, t0 + 100 * MS),
            "the opening itself"
        );
        assert!(!current(&openings, &out, t0, t0 + 200 * MS), "after it");
        let back = flow("127.0.0.1:80", "127.0.0.1:5000");
        assert!(
            !current(&openings, &back, t0, t0 + 200 * MS),
            "the other direction"
        );
        // The other way round: a record of the new connection does not answer for a packet
        // of the previous one (decided late).
        assert!(!current(&openings, &out, t0 + 150 * MS, t0 + 50 * MS));
        assert!(current(&openings, &out, t0 + 150 * MS, t0 + 120 * MS));
        let other = flow("127.0.0.1:5001", "127.0.0.1:80");
        assert!(
            current(&openings, &other, t0, t0 + 200 * MS),
            "another 4-tuple"
        );
    }

    #[test]
    fn a_record_seen_just_before_or_after_the_opening_is_the_new_connection() {
        let t0 = Instant::now();
        let openings = Openings::new(16);
        let f = flow("[::1]:5000", "[::1]:80");
        openings.note(&f, t0 + 100 * MS);
        // A connect traced a moment before its SYN was captured.
        let traced = t0 + 100 * MS - Duration::from_micros(30);
        assert!(current(&openings, &f, traced, t0 + 150 * MS));
        assert!(current(&openings, &f, t0 + 120 * MS, t0 + 150 * MS));
    }

    #[test]
    fn a_record_seen_after_the_last_packet_read_waits() {
        let t0 = Instant::now();
        let openings = Openings::new(16);
        let f = flow("127.0.0.1:5000", "127.0.0.1:80");
        openings.note(&f, t0);
        // A claim seen at 40 ms, a packet of 35 ms, packets read up to 35 ms: an opening at
        // 36..40 ms may still be unread.
        let claim = Seen::at(t0 + 40 * MS);
        let judged = openings.judge(&f, claim, t0 + 35 * MS, t0 + 35 * MS);
        assert_eq!(judged, Currency::Undecided);
        let later = openings.judge(&f, claim, t0 + 35 * MS, t0 + 60 * MS);
        assert_eq!(later, Currency::Current);
        openings.note(&f, t0 + 38 * MS);
        let reused = openings.judge(&f, claim, t0 + 35 * MS, t0 + 60 * MS);
        assert_eq!(reused, Currency::Stale);
    }

    #[test]
    fn a_holder_seen_across_openings_answers_for_each_of_its_connections() {
        let t0 = Instant::now();
        let openings = Openings::new(16);
        let f = flow("127.0.0.1:5000", "127.0.0.1:80");
        for opened in [0, 100, 200] {
            openings.note(&f, t0 + opened * MS);
        }
        // One process reconnecting on its fixed port, seen at 10 ms and at 110 ms.
        let span = Seen::at(t0 + 10 * MS).union(Seen::at(t0 + 110 * MS));
        let horizon = t0 + 300 * MS;
        let judge = |at: u32| openings.judge(&f, span, t0 + at * MS, horizon);
        assert_eq!(judge(5), Currency::Current);
        assert_eq!(judge(150), Currency::Current);
        assert_eq!(
            judge(250),
            Currency::Stale,
            "the connection opened at 200 ms is not its"
        );
        // Read only up to 120 ms: a packet of 120 ms is its; one at 115 ms with the span
        // reaching 130 ms could belong to a connection opened at 125 ms, not read yet.
        let long = Seen::at(t0 + 10 * MS).union(Seen::at(t0 + 130 * MS));
        let at = openings.judge(&f, long, t0 + 115 * MS, t0 + 115 * MS);
        assert_eq!(
            at,
            Currency::Current,
            "its own connection up to the horizon"
        );
    }

    #[test]
    fn copies_of_one_syn_are_one_opening() {
        let t0 = Instant::now();
        let openings = Openings::new(16);
        let f = flow("10.0.0.2:5000", "192.0.2.9:80");
        openings.note(&f, t0);
        // The same SYN on the bridge and on the uplink, microseconds later.
        openings.note(&f, t0 + Duration::from_micros(15));
        openings.note(&f, t0 + Duration::from_micros(40));
        // The claim (the connection established) is current for the first copy.
        assert!(current(&openings, &f, t0 + 2 * MS, t0));
    }

    #[test]
    fn udp_and_unknown_tuples_are_always_current() {
        let t0 = Instant::now();
        let openings = Openings::new(16);
        let udp = FlowKey {
            proto: IpProto::Udp,
            ..flow("127.0.0.1:5000", "127.0.0.1:53")
        };
        openings.note(&udp, t0 + MS);
        assert!(!openings.knows(&udp));
        assert!(current(&openings, &udp, t0, t0 + 2 * MS));
        assert!(current(
            &openings,
            &flow("127.0.0.1:1", "127.0.0.1:2"),
            t0,
            t0 + MS
        ));
    }

    #[test]
    fn only_the_latest_openings_are_kept_and_the_map_is_bounded() {
        let t0 = Instant::now();
        let openings = Openings::new(2);
        let f = flow("127.0.0.1:5000", "127.0.0.1:80");
        for i in 1..=10 {
            openings.note(&f, t0 + i * 100 * MS);
        }
        // Openings at 100 and 200 ms were dropped: a packet of 250 ms cannot be told apart
        // (stale to every record); one of 1 s is told from a record of 50 ms.
        assert!(!current(&openings, &f, t0 + 250 * MS, t0 + 250 * MS));
        assert!(!current(&openings, &f, t0 + 50 * MS, t0 + 1000 * MS));
        assert!(current(&openings, &f, t0 + 950 * MS, t0 + 980 * MS));
        openings.note(&flow("127.0.0.1:5001", "127.0.0.1:80"), t0 + 1000 * MS);
        openings.note(&flow("127.0.0.1:5002", "127.0.0.1:80"), t0 + 1000 * MS);
        assert!(openings.len() <= 2, "{}", openings.len());
        assert!(openings.forgotten() > 0);
        // Expired ones make room without counting as forgotten early.
        let late = Openings::new(1);
        late.note(&f, t0);
        late.note(
            &flow("127.0.0.1:5001", "127.0.0.1:80"),
            t0 + OPENINGS_KEPT + MS,
        );
        assert_eq!((late.len(), late.forgotten()), (1, 0));
    }
}
