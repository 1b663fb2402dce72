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

use pidcap_wire::IpProto;

use super::format::{RouteLookup, SetState};

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

/// A `connect()` that returned 0: the process, the fd it connected, and the flow the route
/// lookup inside the call gave (UDP and UDP-Lite only; `None` when route lookups were not
/// traced, or none usable was seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    pub pid: u32,
    /// The thread that called `connect()` (what route tracing is scoped to).
    pub tid: u32,
    pub fd: i32,
    pub route: Option<RouteLookup>,
}

/// A `bind()` of an IP address that returned 0: the process and the fd it bound. The socket
/// is read at once: a process that binds a port passed on by another (a chain of short-lived
/// processes on one UDP port) may live only milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    /// When `bind()` returned (`CLOCK_MONOTONIC` ns).
    pub time: u64,
    /// The address it was given, when the caller's `sockaddr` was in the stack copy taken at
    /// the call ([`crate::trace::format::sockaddr_in_stack`]): what the socket is known by
    /// when its process exits before the fd can be read.
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy)]
struct Inside {
    pid: u32,
    fd: i32,
    route: Option<RouteLookup>,
}

/// Which thread is inside `connect()` on which fd, and which connects succeeded, from the
/// `syscalls:sys_{enter,exit}_connect` events and the route lookups in between: for
/// datagram sockets, which have no state changes to pair. Pure, like [`Pairing`].
///
/// Invariants: a route lookup counts only while its thread is inside `connect()` (the
/// kernel records it in process context: softirq lookups are filtered out in the kernel), so
/// it is the connecting socket's own flow; the one with a chosen source address wins over
/// one without (IPv4 looks up twice, first without). Memory is bounded: at most `capacity`
/// threads are tracked (all are forgotten when that is reached: a connect missed that way is
/// simply not reported).
#[derive(Debug)]
pub struct Connects {
    inside: HashMap<u32, Inside>,
    connected: Vec<Connected>,
    /// Threads inside `bind()` (pid, fd, address), and the binds that succeeded.
    binding: HashMap<u32, (u32, i32, Option<SocketAddr>)>,
    bound: Vec<Bound>,
    capacity: usize,
}

impl Connects {
    pub fn new(capacity: usize) -> Connects {
        Connects {
            inside: HashMap::new(),
            connected: Vec::new(),
            binding: HashMap::new(),
            bound: Vec::new(),
            capacity: capacity.max(1),
        }
    }

    /// Thread `tid` of process `pid` entered `connect(fd, …)`.
    pub fn enter(&mut self, tid: u32, pid: u32, fd: i32) {
        if self.inside.len() >= self.capacity {
            self.inside.clear();
        }
        self.inside.insert(
            tid,
            Inside {
                pid,
                fd,
                route: None,
            },
        );
    }

    /// Thread `tid` looked up a route; kept if it is inside `connect()` of a UDP or
    /// UDP-Lite socket with a bound port.
    pub fn route(&mut self, tid: u32, lookup: RouteLookup) {
        let Some(inside) = self.inside.get_mut(&tid) else {
            return;
        };
        let datagram = matches!(lookup.proto, IpProto::Udp | IpProto::UdpLite);
        if !datagram || lookup.local.port() == 0 || lookup.remote.ip().is_unspecified() {
            return;
        }
        let chosen = |r: &RouteLookup| !r.local.ip().is_unspecified();
        if inside
            .route
            .is_none_or(|old| chosen(&lookup) || !chosen(&old))
        {
            inside.route = Some(lookup);
        }
    }

    /// Thread `tid` left `connect()` with `ret`; a success is reported by [`Connects::connected`].
    pub fn exit(&mut self, tid: u32, ret: i64) {
        if let (Some(inside), 0) = (self.inside.remove(&tid), ret) {
            self.connected.push(Connected {
                pid: inside.pid,
                tid,
                fd: inside.fd,
                route: inside.route,
            });
        }
    }

    /// Thread `tid`'s connect is a TCP one (its `SYN_SENT` comes inside the syscall): it is
    /// claimed from its state changes, so it is not reported.
    pub fn tcp(&mut self, tid: u32) {
        self.inside.remove(&tid);
    }

    /// The connects that succeeded since the last [`Connects::clear`].
    pub fn connected(&self) -> &[Connected] {
        &self.connected
    }

    /// Thread `tid` of process `pid` entered `bind(fd, addr)` with an IP address (`None`:
    /// not read from the caller's stack).
    pub fn enter_bind(&mut self, tid: u32, pid: u32, fd: i32, addr: Option<SocketAddr>) {
        if self.binding.len() >= self.capacity {
            self.binding.clear();
        }
        self.binding.insert(tid, (pid, fd, addr));
    }

    /// Thread `tid` left `bind()` with `ret` at `time`; a success is reported by
    /// [`Connects::bound`].
    pub fn exit_bind(&mut self, tid: u32, ret: i64, time: u64) {
        if let (Some((pid, fd, addr)), 0) = (self.binding.remove(&tid), ret) {
            self.bound.push(Bound {
                pid,
                tid,
                fd,
                time,
                addr,
            });
        }
    }

    /// The binds of IP addresses that succeeded since the last [`Connects::clear`].
    pub fn bound(&self) -> &[Bound] {
        &self.bound
    }

    pub fn clear(&mut self) {
        self.connected.clear();
        self.bound.clear();
    }
}
