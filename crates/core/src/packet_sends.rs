//! Frames sent through packet sockets (`AF_PACKET`): who sent a frame that no IP socket owns.
//!
//! A process that writes whole frames to a packet socket (a DHCP client, an ARP or
//! neighbour-discovery tool, a traffic generator, a userspace network stack) has no socket
//! for the frame's addresses, so address lookup finds nobody. The kernel reports every
//! `sendmsg` on a packet socket in the sender's own context (`sock:sock_send_length`, with
//! the bytes it took), which the socket tracer turns into [`PacketSend`]s. A frame with no
//! owner is then matched to them by length and capture time ([`PacketSends::sender_of`]).
//!
//! Invariants: never a guess between processes — a frame is credited only when every send
//! that could be it ([`SEND_WINDOW`] around its capture, a length that fits) was made by one
//! and the same known process, and only once every send up to the end of that window is
//! known ([`PacketSends::read_to`]: the tracer read its rings that far), so a send of
//! another process still on its way cannot be missed; otherwise the frame waits or stays
//! `unknown`. A send by a process nobody could name still counts as another process's.
//! Bounded: at most [`SENDS_KEPT`] runs of sends, none older than [`SENDS_FOR`] past the
//! newest by more than a second (they are swept once per second of send time). No I/O; time
//! is a parameter.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::{NetNsId, ProcessKey};

/// How far a send's time and the capture time of its frame may be apart. The send is
/// reported when `sendmsg` returns, after the frame was handed to the device (and, on
/// loopback, usually after it was received); a frame whose receive is deferred to
/// `ksoftirqd` on a busy CPU is captured later.
pub const SEND_WINDOW: Duration = Duration::from_millis(50);

/// Runs of sends remembered at most (the oldest is forgotten first; see [`PacketSends`]).
pub const SENDS_KEPT: usize = 8192;

/// How long a send is remembered after the newest one: its frame waits in the pending
/// buffer until a table has the send, which comes within a tracer round or two.
pub const SENDS_FOR: Duration = Duration::from_secs(5);

/// Link-layer header lengths a packet socket's `SOCK_RAW` send may include before the IP
/// packet: none (`SOCK_DGRAM`), Ethernet (also loopback and veth), Ethernet with one VLAN
/// tag.
const LINK_HEADERS: [u32; 3] = [0, 14, 18];

/// One `sendmsg` on a packet socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketSend {
    /// When the kernel reported it (the monotonic clock packets are judged on).
    pub at: Instant,
    /// The bytes the call took: the whole frame for `SOCK_RAW`, the packet for `SOCK_DGRAM`.
    pub len: u32,
    /// `None`: a process that exited before anyone could name it.
    pub sender: Option<ProcessKey>,
    /// The network namespace of the sending process.
    pub netns: NetNsId,
}

/// Consecutive sends of one length by one process, each within [`SEND_WINDOW`] of the one
/// before: every instant in `from..=to` is within the window of one of them, so a frame
/// captured within the window of the span fits one of its sends. A flood from one sender
/// is one span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    from: Instant,
    to: Instant,
    sender: Option<ProcessKey>,
    netns: NetNsId,
}

/// The spans of one length, ordered by `from`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Spans {
    spans: VecDeque<Span>,
    /// The longest `to - from` among them: how far before a time a span may start and
    /// still cover it.
    longest: Duration,
}

/// The recent packet-socket sends (see the module doc), by length.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PacketSends {
    by_len: HashMap<u32, Spans>,
    spans: usize,
    newest: Option<Instant>,
    /// The `newest` of the last sweep by age (a sweep visits every span: at most one per
    /// [`SWEEP_EVERY`] of send time).
    swept_at: Option<Instant>,
    /// Every send reported up to this instant is here.
    read_to: Option<Instant>,
}

/// How much send time passes between two sweeps of the spans by age.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl PacketSends {
    pub fn new() -> PacketSends {
        PacketSends::default()
    }

    /// Remembers `send`, forgetting the oldest sends past the bounds.
    pub fn push(&mut self, send: PacketSend) {
        let newest = self.newest.map_or(send.at, |n| n.max(send.at));
        self.newest = Some(newest);
        let list = self.by_len.entry(send.len).or_default();
        if list.extend(&send) {
            return;
        }
        list.insert(&send);
        self.spans += 1;
        self.expire(newest);
    }

    /// Forgets spans that ended [`SENDS_FOR`] before `newest`, then the oldest ones while
    /// there are more than [`SENDS_KEPT`].
    fn expire(&mut self, newest: Instant) {
        let due = self
            .swept_at
            .is_none_or(|at| newest.saturating_duration_since(at) >= SWEEP_EVERY);
        if let Some(cutoff) = newest.checked_sub(SENDS_FOR).filter(|_| due) {
            self.swept_at = Some(newest);
            let mut removed = 0;
            self.by_len.retain(|_, list| {
                let before = list.spans.len();
                list.spans.retain(|s| s.to >= cutoff);
                removed += before - list.spans.len();
                !list.spans.is_empty()
            });
            self.spans -= removed;
        }
        while self.spans > SENDS_KEPT {
            self.forget_oldest();
        }
    }

    /// Forgets the span that ended first (a scan of every span: only when over the bound).
    fn forget_oldest(&mut self) {
        let oldest = self
            .by_len
            .iter()
            .flat_map(|(&len, list)| {
                list.spans
                    .iter()
                    .enumerate()
                    .map(move |(i, s)| (s.to, len, i))
            })
            .min();
        let Some((_, len, i)) = oldest else {
            self.spans = 0;
            return;
        };
        if let Some(list) = self.by_len.get_mut(&len) {
            list.spans.remove(i);
            if list.spans.is_empty() {
                self.by_len.remove(&len);
            }
        }
        self.spans -= 1;
    }

    /// Every send reported up to `at` is known now (the tracer read its rings that far).
    pub fn read_to(&mut self, at: Instant) {
        self.read_to = Some(self.read_to.map_or(at, |r| r.max(at)));
    }

    /// Spans of sends remembered (one per run of sends by one process of one length).
    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// The process that sent an IP packet of `ip_len` bytes captured at `captured`, when
    /// every send that fits it was that known process's; `None` when none fits, several
    /// processes' (or an unnamed one's) do, or the sends up to `captured` +
    /// [`SEND_WINDOW`] are not all known yet. `netns`: only sends from that namespace (a
    /// capture inside it).
    pub fn sender_of(
        &self,
        ip_len: u32,
        captured: Instant,
        netns: Option<NetNsId>,
    ) -> Option<ProcessKey> {
        if self.read_to.is_none_or(|r| r < captured + SEND_WINDOW) {
            return None;
        }
        let mut found = None;
        for header in LINK_HEADERS {
            let Some(list) = self.by_len.get(&(ip_len + header)) else {
                continue;
            };
            for span in list.covering(captured) {
                // An unnamed sender's namespace is not known: it may be any.
                if span.sender.is_some() && netns.is_some_and(|ns| span.netns != ns) {
                    continue;
                }
                match found {
                    None => found = Some(span.sender?),
                    Some(k) if Some(k) != span.sender => return None,
                    Some(_) => {}
                }
            }
        }
        found
    }
}

impl Spans {
    /// Adds `send` to the newest span when it continues it; false when it does not.
    fn extend(&mut self, send: &PacketSend) -> bool {
        let Some(last) = self.spans.back_mut() else {
            return false;
        };
        let continues = last.sender == send.sender
            && last.netns == send.netns
            && send.at >= last.to
            && send.at - last.to <= SEND_WINDOW;
        if continues {
            last.to = send.at;
            self.longest = self.longest.max(last.to - last.from);
        }
        continues
    }

    /// Adds a span of `send` alone, in order (sends come in time order but for a few
    /// microseconds across CPUs).
    fn insert(&mut self, send: &PacketSend) {
        let at = self.spans.partition_point(|s| s.from <= send.at);
        let span = Span {
            from: send.at,
            to: send.at,
            sender: send.sender,
            netns: send.netns,
        };
        self.spans.insert(at, span);
    }

    /// The spans with a send within [`SEND_WINDOW`] of `at`.
    fn covering(&self, at: Instant) -> impl Iterator<Item = &Span> {
        let reach = SEND_WINDOW + self.longest;
        let first = match at.checked_sub(reach) {
            Some(earliest) => self.spans.partition_point(|s| s.from < earliest),
            None => 0,
        };
        let last = self.spans.partition_point(|s| s.from <= at + SEND_WINDOW);
        self.spans
            .range(first..last.max(first))
            .filter(move |s| s.to + SEND_WINDOW >= at)
    }
}

// Tests pick their starting instant from the clock; the code under test never reads it.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    const NS: NetNsId = NetNsId(1);

    fn key(pid: u32) -> ProcessKey {
        ProcessKey { pid, start_time: 1 }
    }

    fn send(at: Instant, len: u32, pid: u32) -> PacketSend {
        PacketSend {
            at,
            len,
            sender: Some(key(pid)),
            netns: NS,
        }
    }

    /// Every send up to long after `t` is known.
    fn read_long_after(sends: &mut PacketSends, t: Instant) {
        sends.read_to(t + SENDS_FOR * 10);
    }

    #[test]
    fn a_frame_goes_to_the_one_process_whose_sends_fit_it() {
        let t = Instant::now();
        let mut sends = PacketSends::new();
        read_long_after(&mut sends, t);
        sends.push(send(t, 342, 7)); // SOCK_RAW: 14 + 328
        sends.push(send(t + Duration::from_millis(1), 328, 7)); // SOCK_DGRAM
        sends.push(send(t, 500, 8)); // another length
        assert_eq!(sends.sender_of(328, t, None), Some(key(7)));
        assert_eq!(sends.sender_of(328, t, Some(NS)), Some(key(7)));
        assert_eq!(sends.sender_of(328, t, Some(NetNsId(2))), None);
        assert_eq!(sends.sender_of(486, t, None), Some(key(8)));
        assert_eq!(sends.sender_of(100, t, None), None);
    }

    #[test]
    fn two_processes_sending_the_same_length_at_once_leave_the_frame_unknown() {
        let t = Instant::now();
        let mut sends = PacketSends::new();
        read_long_after(&mut sends, t);
        sends.push(send(t, 342, 7));
        sends.push(send(t + Duration::from_millis(2), 342, 8));
        assert_eq!(sends.sender_of(328, t, None), None);
        // Far enough apart in time, each is its own.
        let later = t + SEND_WINDOW * 3;
        sends.push(send(later, 342, 8));
        assert_eq!(sends.sender_of(328, later, None), Some(key(8)));
    }

    #[test]
    fn a_send_fits_only_within_the_window_either_side() {
        let t = Instant::now() + SEND_WINDOW * 2;
        let mut sends = PacketSends::new();
        read_long_after(&mut sends, t);
        sends.push(send(t, 342, 7));
        assert_eq!(sends.sender_of(328, t - SEND_WINDOW, None), Some(key(7)));
        assert_eq!(sends.sender_of(328, t + SEND_WINDOW, None), Some(key(7)));
        let just = Duration::from_micros(1);
        assert_eq!(sends.sender_of(328, t - SEND_WINDOW - just, None), None);
        assert_eq!(sends.sender_of(328, t + SEND_WINDOW + just, None), None);
    }

    #[test]
    fn old_sends_are_forgotten_and_the_count_is_bounded() {
        let t = Instant::now();
        let mut sends = PacketSends::new();
        read_long_after(&mut sends, t);
        sends.push(send(t, 342, 7));
        sends.push(send(t + SENDS_FOR + Duration::from_millis(1), 100, 8));
        assert_eq!(sends.len(), 1);
        assert_eq!(sends.sender_of(328, t, None), None);
        // A flood from one process of one length is one span…
        let flood = t + SENDS_FOR + Duration::from_millis(2);
        for i in 0..1000 {
            sends.push(send(flood + Duration::from_micros(i), 60, 9));
        }
        assert_eq!(sends.len(), 2);
        assert_eq!(sends.sender_of(86, flood, None), Some(key(8)));
        assert_eq!(
            sends.sender_of(60, flood + Duration::from_micros(500), None),
            Some(key(9))
        );
        // …and alternating senders make a span each, up to the bound.
        for i in 0..SENDS_KEPT as u64 + 10 {
            let pid = 10 + (i % 2) as u32;
            sends.push(send(flood + Duration::from_micros(i), 70, pid));
        }
        assert_eq!(sends.len(), SENDS_KEPT);
        assert_eq!(
            sends.sender_of(86, flood, None),
            None,
            "the oldest went first"
        );
    }

    #[test]
    fn a_frame_waits_until_every_send_up_to_the_end_of_its_window_is_known() {
        let t = Instant::now();
        let mut sends = PacketSends::new();
        sends.push(send(t, 342, 7));
        assert_eq!(sends.sender_of(328, t, None), None, "nothing read yet");
        sends.read_to(t + SEND_WINDOW - Duration::from_micros(1));
        assert_eq!(
            sends.sender_of(328, t, None),
            None,
            "another's may still come"
        );
        sends.read_to(t + SEND_WINDOW);
        assert_eq!(sends.sender_of(328, t, None), Some(key(7)));
        sends.read_to(t); // the horizon never goes back
        assert_eq!(sends.sender_of(328, t, None), Some(key(7)));
    }

    #[test]
    fn a_fitting_send_by_a_process_nobody_named_leaves_the_frame_unknown() {
        let t = Instant::now();
        let mut sends = PacketSends::new();
        read_long_after(&mut sends, t);
        sends.push(send(t, 342, 7));
        let unnamed = PacketSend {
            sender: None,
            ..send(t + Duration::from_millis(1), 342, 0)
        };
        sends.push(unnamed);
        assert_eq!(sends.sender_of(328, t, None), None);
    }
}
