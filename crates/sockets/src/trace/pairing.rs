//! Who used which TCP connection: pairs the kernel's socket events into (connection, process)
//! claims. Pure: events in, claims out, no I/O.
//!
//! Two kinds of events name a socket by its kernel address (`sk`):
//! - **state changes** (`sock:inet_sock_set_state`) carry the connection's addresses but run
//!   wherever the kernel is (often softirq), so their pid means nothing — except the change
//!   to `SYN_SENT`, which `connect()` makes in the connecting process (its source port may
//!   still be 0 there);
//! - **I/O** (`sock:sock_send_length`, `sock:sock_recv_length`) runs in the process that
//!   sends or receives, but carries no addresses.
//!
//! A claim is made when an established connection's addresses meet a process-context event
//! for the same `sk` within that socket's life: the `SYN_SENT` that preceded its `ESTABLISHED`
//! (the connecting side), or the first send/receive of each process afterwards (either side,
//! so accepted connections and sockets passed between processes are claimed too).
//!
//! Invariants: events must be fed in time order (the perf reader sorts them). An `sk` is the
//! same socket from its `SYN_SENT`/`ESTABLISHED` to its `CLOSE`; the kernel may reuse the
//! address afterwards, so `CLOSE` forgets everything about it and a claim never spans two
//! sockets. Memory is bounded: at most `capacity` sockets are tracked in each map; when full,
//! the older half is forgotten (a connection forgotten that way can no longer be claimed;
//! nothing is ever claimed wrongly). When the kernel drops events, the reader calls
//! [`Pairing::forget_all`] for the same reason.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::format::SetState;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;

/// One socket event, with the time (ns, `CLOCK_MONOTONIC`) and the process (tgid) the kernel
/// recorded it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockEvent {
    State {
        time: u64,
        pid: u32,
        change: SetState,
    },
    Io {
        time: u64,
        pid: u32,
        sk: u64,
    },
}

impl SockEvent {
    pub fn time(&self) -> u64 {
        match self {
            SockEvent::State { time, .. } | SockEvent::Io { time, .. } => *time,
        }
    }
}

/// Process `pid` used the TCP connection `local` → `remote` (the socket's own view) at `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketClaim {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub pid: u32,
    pub time: u64,
}

#[derive(Debug)]
struct Established {
    local: SocketAddr,
    remote: SocketAddr,
    since: u64,
    /// Processes already claimed (a handful: usually one).
    claimed: Vec<u32>,
}

/// The pairing state; see the module doc.
#[derive(Debug)]
pub struct Pairing {
    connecting: HashMap<u64, (u32, u64)>,
    established: HashMap<u64, Established>,
    capacity: usize,
}

impl Pairing {
    /// Tracks at most `capacity` connecting and `capacity` established sockets.
    pub fn new(capacity: usize) -> Pairing {
        Pairing {
            connecting: HashMap::new(),
            established: HashMap::new(),
            capacity: capacity.max(2),
        }
    }

    /// Sockets currently tracked (connecting + established).
    pub fn len(&self) -> usize {
        self.connecting.len() + self.established.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every socket (after the kernel dropped events: a missed `CLOSE` must not let
    /// a reused address claim an old connection). Connections established before cannot be
    /// claimed afterwards.
    pub fn forget_all(&mut self) {
        self.connecting.clear();
        self.established.clear();
    }

    /// Feeds one event (in time order); appends any claim it completes to `out`.
    pub fn feed(&mut self, event: SockEvent, out: &mut Vec<SocketClaim>) {
        match event {
            SockEvent::State { time, pid, change } => self.state(time, pid, change, out),
            SockEvent::Io { time, pid, sk } => self.io(time, pid, sk, out),
        }
    }

    fn state(&mut self, time: u64, pid: u32, change: SetState, out: &mut Vec<SocketClaim>) {
        if change.protocol != IPPROTO_TCP {
            return;
        }
        match change.new {
            TCP_SYN_SENT => {
                self.established.remove(&change.sk);
                bounded_insert(
                    &mut self.connecting,
                    change.sk,
                    (pid, time),
                    self.capacity,
                    |v| v.1,
                );
            }
            TCP_ESTABLISHED => {
                let mut open = Established {
                    local: change.local,
                    remote: change.remote,
                    since: time,
                    claimed: Vec::new(),
                };
                if let Some((pid, _)) = self.connecting.remove(&change.sk) {
                    open.claimed.push(pid);
                    out.push(claim(&open, pid, time));
                }
                bounded_insert(&mut self.established, change.sk, open, self.capacity, |e| {
                    e.since
                });
            }
            TCP_CLOSE => {
                self.connecting.remove(&change.sk);
                self.established.remove(&change.sk);
            }
            _ => {}
        }
    }

    fn io(&mut self, time: u64, pid: u32, sk: u64, out: &mut Vec<SocketClaim>) {
        let Some(open) = self.established.get_mut(&sk) else {
            return;
        };
        if !open.claimed.contains(&pid) {
            open.claimed.push(pid);
            out.push(claim(open, pid, time));
        }
    }
}

fn claim(open: &Established, pid: u32, time: u64) -> SocketClaim {
    SocketClaim {
        local: open.local,
        remote: open.remote,
        pid,
        time,
    }
}

/// Inserts, first forgetting the older half of the map if it is full.
fn bounded_insert<V>(
    map: &mut HashMap<u64, V>,
    key: u64,
    value: V,
    capacity: usize,
    since: impl Fn(&V) -> u64,
) {
    if map.len() >= capacity && !map.contains_key(&key) {
        let mut times: Vec<u64> = map.values().map(&since).collect();
        let (_, &mut median, _) = times.select_nth_unstable(map.len() / 2);
        map.retain(|_, v| since(v) > median);
    }
    map.insert(key, value);
}
