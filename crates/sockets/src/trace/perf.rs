//! Reads the kernel's socket tracepoints through perf ring buffers (one per CPU).
//!
//! Three tracepoints, each filtered in the kernel to TCP: `sock:inet_sock_set_state` (only the
//! changes to `ESTABLISHED`, `SYN_SENT` and `CLOSE`), `sock:sock_send_length` (and packet
//! sockets: [`PacketSent`]) and `sock:sock_recv_length`; and `connect()` itself (`syscalls:sys_{enter,exit}_connect`), with
//! the route lookups inside it (`fib:fib_table_lookup`, `fib6:fib6_table_lookup`; off unless
//! asked for, see [`SockTracer::trace_routes`]). On each CPU they write into one ring
//! (`SET_OUTPUT`), so a CPU's events arrive in order. Only a connect or a bind wakes the
//! reader at once, once (the return of `connect()` or `bind()`; a TCP `SYN_SENT` where
//! syscalls are not traced); the rest wait for the ring to fill a
//! quarter or for the reader's poll timeout; across CPUs they are merged by their
//! `CLOCK_MONOTONIC` time.
//! An event is handed to [`Pairing`] only once it is older than [`REORDER`] at the moment the
//! rings were read, so an event another CPU recorded earlier, but had not yet written, is not
//! overtaken. No BPF, no kprobes: tracepoints and perf are in every distribution kernel
//! (`CONFIG_PERF_EVENTS`, `CONFIG_TRACEPOINTS`); reading them needs `CAP_PERFMON` (or
//! `CAP_SYS_ADMIN`) and tracefs.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use perf_event::data::{Record as Parsed, SampleRegsAbi};
use perf_event::events::Tracepoint;
use perf_event::{Builder, Clock, Counter, SampleFlag, Sampler};
use tracing::debug;

use super::format::{
    record_type, sockaddr_in_stack, BindLayout, RouteLayout, SetStateLayout, SockIoLayout,
    SyscallLayout, TraceFormat,
};
use super::pairing::{Bound, Connected, Connects, Pairing, SockEvent, SocketClaim, TCP_SYN_SENT};
use crate::error::{Error, Result};

/// How much older than the read an event must be to be paired.
pub const REORDER: Duration = Duration::from_millis(2);

/// Bytes of ring buffer per CPU (a power of two; an event takes about 100 bytes).
const RING_BYTES: usize = 256 * 1024;

/// Bytes of ring buffer per CPU for the binds (each record carries [`STACK_COPY`]).
const BIND_RING_BYTES: usize = 128 * 1024;

/// Bytes of the caller's stack copied with each bind: `bind()`'s `sockaddr` is usually a
/// local of the function that calls it, a few frames above the stack pointer at the syscall.
const STACK_COPY: u32 = 1024;

/// The user stack pointer among perf's sampled registers (`PERF_REG_X86_SP`,
/// `PERF_REG_ARM64_SP`); elsewhere binds are traced without their address.
#[cfg(target_arch = "x86_64")]
const SP_REGISTER: Option<u32> = Some(7);
#[cfg(target_arch = "aarch64")]
const SP_REGISTER: Option<u32> = Some(31);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SP_REGISTER: Option<u32> = None;

/// Sockets the pairing tracks at most, per kind.
const TRACKED: usize = 65_536;

const SET_STATE: &str = "sock/inet_sock_set_state";
const SEND: &str = "sock/sock_send_length";
const RECV: &str = "sock/sock_recv_length";
const CONNECT_ENTER: &str = "syscalls/sys_enter_connect";
const CONNECT_EXIT: &str = "syscalls/sys_exit_connect";
const BIND_ENTER: &str = "syscalls/sys_enter_bind";
const BIND_EXIT: &str = "syscalls/sys_exit_bind";
/// `connect()` of an IPv4 or IPv6 address (`sizeof(struct sockaddr_in{,6})`)…
const CONNECT_ENTER_FILTER: &str = "addrlen == 16 || addrlen == 28";
/// …that succeeded at once, or started (`EINPROGRESS`, 115: a non-blocking TCP connect).
/// TCP connects are dropped in between, at their `SYN_SENT`: they are claimed from their
/// state changes; the return only wakes the reader (one wakeup per connect, not two).
const CONNECT_EXIT_FILTER: &str = "ret == 0 || ret == -115";
/// A `bind()` that succeeded.
const BIND_EXIT_FILTER: &str = "ret == 0";
/// Threads remembered inside `connect()` at once.
const IN_CONNECT: usize = 4096;
const ROUTE4: &str = "fib/fib_table_lookup";
const ROUTE6: &str = "fib6/fib6_table_lookup";
/// Output route lookups (`iif` is the loopback index, 1, on the output path; input lookups
/// of other interfaces are dropped) of UDP and UDP-Lite flows that found a route, in process
/// context: `common_flags` below 8 has no hard/soft-IRQ or NMI bit (nor BH-off, which only
/// costs a claim), in both the pre-5.17 and the current numbering of those flags.
const ROUTE_FILTER: &str =
    "iif == 1 && (proto == 17 || proto == 136) && err == 0 && common_flags < 8";
/// Threads whose route lookups may be traced at once, at most…
pub const MAX_ROUTE_THREADS: usize = 64;
/// …and within this many counters (file descriptors) for all of them.
pub const ROUTE_COUNTERS: usize = 512;

/// Whose route lookups are traced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RouteScope {
    #[default]
    Off,
    /// Every thread's: the tracepoints then cost every thread's route lookups a record and
    /// a filter test (benchmarks and tests).
    All,
    /// These threads' (at most [`SockTracer::max_route_threads`]; none is the same as
    /// `Off`): a counter per thread, so other threads' lookups cost nothing.
    Threads(Vec<u32>),
}

/// Only TCP changes that matter: to ESTABLISHED (1) and CLOSE (7)…
const SET_STATE_FILTER: &str = "protocol == 6 && (newstate == 1 || newstate == 7)";
/// …and to SYN_SENT (2), in the connecting process, counted apart so that it wakes the
/// reader at once (who a process is must be read while it lives) where `connect()`'s return
/// is not traced; where it is, that return wakes it instead.
const CONNECT_FILTER: &str = "protocol == 6 && newstate == 2";
const IO_FILTER: &str = "protocol == 6";
/// Sends are traced on packet sockets too (`AF_PACKET`, 17): the sender of a frame that no
/// IP socket owns ([`PacketSent`]).
const SEND_FILTER: &str = "protocol == 6 || family == 17";
const AF_PACKET: u16 = 17;

/// When the kernel wakes the reader for an event of a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wakeup {
    /// At once (a connect: rare, and its process may live milliseconds).
    Each,
    /// Only once the ring is a quarter full: a wakeup per event would cost a self-IPI (a VM
    /// exit in a guest) inside every traced send and receive. The reader polls with a
    /// timeout instead.
    Watermark,
}

/// Where tracefs is mounted, mounting it at `/sys/kernel/tracing` if it is nowhere (as
/// systemd does at boot); `None` if it cannot be found or mounted.
pub fn find_tracefs() -> Option<PathBuf> {
    const PLACES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    let found = || {
        PLACES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("events").is_dir())
    };
    if let Some(p) = found() {
        return Some(p);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: static NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    debug!(mounted = rc == 0, "tracefs was not mounted");
    found()
}

/// The kernel's list of online CPUs.
pub const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";

/// The CPUs of a CPU-list file.
fn read_cpu_list(path: &Path) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::from_io(path, e))?;
    parse_cpu_list(&text).ok_or_else(|| Error::parse(path.display().to_string(), 1, "bad CPU list"))
}

/// Parses a kernel CPU list (`0-3,6,8-9`, as in `/sys/devices/system/cpu/online`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi): (usize, usize) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
            None => {
                let n = part.parse().ok()?;
                (n, n)
            }
        };
        if hi < lo || hi - lo > 65_536 {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    Some(cpus)
}

/// The connect records and the route lookups paired with them.
struct ConnectEvents {
    enter: SyscallLayout,
    exit: SyscallLayout,
    /// `syscalls:sys_{enter,exit}_bind`, when this kernel has them (read from their own
    /// rings: [`BindRing`]).
    bind: Option<(BindLayout, SyscallLayout)>,
    /// `fib:fib_table_lookup`, `fib6:fib6_table_lookup` (those this kernel has).
    routes: Vec<RouteLayout>,
    state: Connects,
}

impl ConnectEvents {
    /// Takes a connect enter or exit or a route lookup record; false for any other record.
    fn take(&mut self, raw: &[u8], tid: u32, pid: u32) -> bool {
        let Some(ty) = record_type(raw) else {
            return false;
        };
        if ty == self.enter.id {
            if let Some(fd) = self.enter.decode(raw).and_then(|f| i32::try_from(f).ok()) {
                self.state.enter(tid, pid, fd);
            }
        } else if ty == self.exit.id {
            if let Some(ret) = self.exit.decode(raw) {
                self.state.exit(tid, ret);
            }
        } else if let Some(layout) = self.routes.iter().find(|l| l.id == ty) {
            if let Some(lookup) = layout.decode(raw) {
                self.state.route(tid, lookup);
            }
        } else {
            return false;
        }
        true
    }

    /// Takes a bind enter or exit record of a [`BindRing`]; `stack` is the stack pointer
    /// and the copy of the caller's stack from it, when the ring samples them.
    fn take_bind(
        &mut self,
        raw: &[u8],
        time: u64,
        tid: u32,
        pid: u32,
        stack: Option<(u64, &[u8])>,
    ) {
        let (Some((enter, exit)), Some(ty)) = (&self.bind, record_type(raw)) else {
            return;
        };
        if ty == enter.id {
            if let Some(args) = enter.decode(raw) {
                let addr = stack.and_then(|(sp, copy)| {
                    sockaddr_in_stack(copy, sp, args.addr_ptr, args.addr_len)
                });
                self.state.enter_bind(tid, pid, args.fd, addr);
            }
        } else if ty == exit.id {
            if let Some(ret) = exit.decode(raw) {
                self.state.exit_bind(tid, ret, time);
            }
        }
    }
}

/// A CPU's ring of `bind()` events, apart from the other events because each enter carries
/// a copy of the caller's stack (perf's `STACK_USER`, with the user stack pointer), where
/// the `sockaddr` the event only points to usually is: a process that binds and exits
/// within the reader's wakeup is still known by the address it bound.
struct BindRing {
    sampler: Sampler,
    _exit: Counter,
}

impl BindRing {
    /// The ring on `cpu`, with stack copies where the kernel and architecture give them,
    /// without otherwise.
    fn open(cpu: usize, enter: &BindLayout, exit: &SyscallLayout) -> Result<BindRing> {
        let with_stack = |stack| -> Result<BindRing> {
            let leader = open_counter(
                cpu,
                enter.id,
                CONNECT_ENTER_FILTER,
                Wakeup::Watermark,
                None,
                stack,
            )?;
            let sampler = leader
                .sampled(BIND_RING_BYTES)
                .map_err(|e| Error::from_io(Path::new("mmap(perf bind ring)"), e))?;
            // Like a connect's: the process may live milliseconds.
            let mut exit = open_into(
                cpu,
                exit.id,
                BIND_EXIT_FILTER,
                Wakeup::Each,
                None,
                &sampler,
                stack,
            )?;
            exit.enable()
                .map_err(|e| Error::from_io(Path::new("PERF_EVENT_IOC_ENABLE(bind)"), e))?;
            let mut ring = BindRing {
                sampler,
                _exit: exit,
            };
            ring.sampler
                .enable()
                .map_err(|e| Error::from_io(Path::new("PERF_EVENT_IOC_ENABLE(bind)"), e))?;
            Ok(ring)
        };
        match SP_REGISTER {
            Some(_) => with_stack(true).or_else(|e| {
                debug!(error = %e, "bind events without stack copies");
                with_stack(false)
            }),
            None => with_stack(false),
        }
    }

    /// Feeds every record in the ring to `events`; counts lost records into `lost`.
    fn drain(&mut self, events: &mut ConnectEvents, lost: &mut u64) {
        while let Some(record) = self.sampler.next_record() {
            match record.parse_record() {
                Ok(Parsed::Sample(sample)) => {
                    let Some((time, pid, tid, raw)) = sample_parts(&sample) else {
                        continue;
                    };
                    let sp = sample
                        .regs_user()
                        .filter(|r| r.abi != SampleRegsAbi::NONE)
                        .and_then(|r| r.regs.first().copied());
                    let stack = sp.zip(sample.stack_user());
                    events.take_bind(raw, time, tid, pid, stack);
                }
                // A lost bind is one socket not read at once (no pairing to forget).
                Ok(Parsed::Lost(l)) => *lost += l.lost,
                Ok(_) => {}
                Err(error) => debug!(error = %error, "unparsable perf bind record"),
            }
        }
    }
}

/// One CPU's ring and the counters that write into it.
struct Ring {
    cpu: usize,
    sampler: Sampler,
    _others: Vec<Counter>,
    binds: Option<BindRing>,
}

/// The socket-event reader. See the module doc.
pub struct SockTracer {
    rings: Vec<Ring>,
    /// The CPU list the rings follow ([`SockTracer::add_online_cpus`]).
    online: PathBuf,
    /// The thread whose disabled route counters anchor the probe (`_route_anchor`).
    anchor_thread: u32,
    set_state: SetStateLayout,
    /// `sock:sock_send_length` and `sock:sock_recv_length` (Linux 6.4 and later); empty on
    /// older kernels, where only connects are claimed.
    io: Vec<SockIoLayout>,
    /// `syscalls:sys_{enter,exit}_connect` (kernels with `CONFIG_FTRACE_SYSCALLS`).
    connects: Option<ConnectEvents>,
    /// Whose route lookups are traced…
    routes: RouteScope,
    /// …by these counters (on every CPU, for each route tracepoint), per thread (`None`:
    /// every thread). They come inside the connect whose return wakes the reader.
    route_counters: HashMap<Option<u32>, Vec<Counter>>,
    /// Disabled route counters of the thread that opened the tracer, never enabled: they
    /// keep the kernel's perf probe on the route tracepoints registered, so scoping a thread
    /// in or out opens or closes its own counters and never re-patches the kernel's code
    /// (which takes tens of milliseconds, while connects go unrouted). Costs other threads
    /// a per-CPU list check per route lookup.
    _route_anchor: Vec<Counter>,
    /// Read, but not yet old enough to pair.
    waiting: Vec<SockEvent>,
    /// Processes seen acting on TCP sockets or sending through packet sockets in the last
    /// read (deduplicated).
    actors: Vec<u32>,
    /// Sends through packet sockets in the last read.
    packet_sends: Vec<PacketSent>,
    /// Every event up to this time (`CLOCK_MONOTONIC` ns) was in the rings at the last read.
    read_to: u64,
    pairing: Pairing,
    lost: u64,
}

impl std::fmt::Debug for SockTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockTracer")
            .field("cpus", &self.rings.len())
            .field("waiting", &self.waiting.len())
            .field("tracked", &self.pairing.len())
            .field("lost", &self.lost)
            .finish()
    }
}

impl SockTracer {
    /// Opens the tracepoints under `tracefs` on every online CPU and enables them.
    pub fn open(tracefs: &Path) -> Result<SockTracer> {
        SockTracer::open_with_cpu_list(tracefs, Path::new(ONLINE_CPUS))
    }

    /// [`SockTracer::open`] on the CPUs listed in the file `online` (the kernel's
    /// [`ONLINE_CPUS`]; tests pass another to bring CPUs "online" later).
    pub fn open_with_cpu_list(tracefs: &Path, online: &Path) -> Result<SockTracer> {
        let format = |name: &str| -> Result<TraceFormat> {
            let path = tracefs.join("events").join(name).join("format");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::from_io(&path, e))?;
            TraceFormat::parse(&path.display().to_string(), &text)
        };
        let set_state = SetStateLayout::new(&format(SET_STATE)?)?;
        // Older kernels: connects only (accepted connections keep their listener).
        let io = optional_layouts(&format, &[SEND, RECV], SockIoLayout::new)?;
        let connects = match (format(CONNECT_ENTER), format(CONNECT_EXIT)) {
            (Ok(enter), Ok(exit)) => Some(ConnectEvents {
                enter: SyscallLayout::new(&enter, "fd")?,
                exit: SyscallLayout::new(&exit, "ret")?,
                bind: match (format(BIND_ENTER), format(BIND_EXIT)) {
                    (Ok(enter), Ok(exit)) => {
                        Some((BindLayout::new(&enter)?, SyscallLayout::new(&exit, "ret")?))
                    }
                    _ => None,
                },
                routes: optional_layouts(&format, &[ROUTE4, ROUTE6], RouteLayout::new)?,
                state: Connects::new(IN_CONNECT),
            }),
            (Err(e), _) | (_, Err(e)) if e.is_not_found() => None,
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let cpus = read_cpu_list(online)?;
        let rings = cpus
            .iter()
            .map(|&cpu| open_ring(cpu, &set_state, &io, connects.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let route_ids = route_ids(connects.as_ref());
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        // Without the anchor route tracing still works, only slower to start: not fatal.
        let route_anchor = open_routes(&rings, &route_ids, Some(me), false).unwrap_or_else(|e| {
            debug!(error = %e, "route tracepoints not anchored");
            Vec::new()
        });
        Ok(SockTracer {
            rings,
            online: online.to_path_buf(),
            anchor_thread: me,
            set_state,
            io,
            connects,
            routes: RouteScope::Off,
            route_counters: HashMap::new(),
            _route_anchor: route_anchor,
            waiting: Vec::new(),
            actors: Vec::new(),
            packet_sends: Vec::new(),
            read_to: 0,
            pairing: Pairing::new(TRACKED),
            lost: 0,
        })
    }

    /// Opens rings on the CPUs that came online since (the kernel does not extend a per-CPU
    /// counter to a new CPU), with the route counters of the current scope; returns how
    /// many. A CPU that went offline keeps its ring (it simply writes nothing).
    pub fn add_online_cpus(&mut self) -> Result<usize> {
        let cpus = read_cpu_list(&self.online)?;
        let known: Vec<usize> = self.rings.iter().map(|r| r.cpu).collect();
        let ids = route_ids(self.connects.as_ref());
        let mut added = 0;
        for cpu in cpus.into_iter().filter(|c| !known.contains(c)) {
            let ring = open_ring(cpu, &self.set_state, &self.io, self.connects.as_ref())?;
            let one = std::slice::from_ref(&ring);
            if let Ok(mut anchor) = open_routes(one, &ids, Some(self.anchor_thread), false) {
                self._route_anchor.append(&mut anchor);
            }
            for (&key, counters) in &mut self.route_counters {
                match open_routes(one, &ids, key, true) {
                    Ok(mut more) => counters.append(&mut more),
                    Err(e) if key.is_some() && e.is_not_found() => {} // thread gone
                    Err(e) => return Err(e),
                }
            }
            self.rings.push(ring);
            added += 1;
        }
        Ok(added)
    }

    /// The CPUs traced (one ring each).
    pub fn cpus(&self) -> Vec<usize> {
        self.rings.iter().map(|r| r.cpu).collect()
    }

    /// The sockets (pid, fd) whose `connect()` succeeded in the events the last [`poll`]
    /// read: a caller that wants their addresses must read them now, while they are open
    /// (a resolver's UDP socket lives one round trip).
    ///
    /// [`poll`]: SockTracer::poll
    pub fn connected(&self) -> &[Connected] {
        self.connects.as_ref().map_or(&[], |c| c.state.connected())
    }

    /// The `bind()`s of IP addresses that succeeded in the events the last [`poll`] read.
    ///
    /// [`poll`]: SockTracer::poll
    pub fn bound(&self) -> &[Bound] {
        self.connects.as_ref().map_or(&[], |c| c.state.bound())
    }

    /// True when this kernel has route-lookup tracepoints to pair with connects.
    pub fn can_trace_routes(&self) -> bool {
        self.connects.as_ref().is_some_and(|c| !c.routes.is_empty())
    }

    /// Sets which threads' route lookups are traced. While traced, a UDP connect is reported
    /// with its addresses ([`Connected::route`]), so it is known even if the socket closes
    /// before anyone reads it. The cost is one kernel event per route lookup of a traced
    /// thread — each of its connects, and each datagram it sends on an unconnected socket —
    /// which is why they are off unless asked for, and scoped to the threads that need it
    /// (with [`RouteScope::Threads`], other threads' lookups cost nothing: the counters are
    /// the threads' own). A thread that has exited is skipped.
    pub fn trace_routes(&mut self, scope: &RouteScope) -> Result<()> {
        if *scope == self.routes {
            return Ok(());
        }
        let want: Vec<Option<u32>> = match scope {
            RouteScope::Off => Vec::new(),
            RouteScope::All => vec![None],
            RouteScope::Threads(tids) => tids.iter().copied().map(Some).collect(),
        };
        if want.len() > self.max_route_threads() {
            return Err(Error::parse(
                "route scope",
                0,
                format!(
                    "{} threads, at most {}",
                    want.len(),
                    self.max_route_threads()
                ),
            ));
        }
        self.route_counters.retain(|k, _| want.contains(k));
        let ids = route_ids(self.connects.as_ref());
        for key in want {
            if self.route_counters.contains_key(&key) {
                continue;
            }
            match open_routes(&self.rings, &ids, key, true) {
                Ok(counters) => {
                    self.route_counters.insert(key, counters);
                }
                // The thread has exited.
                Err(e) if key.is_some() && e.is_not_found() => {}
                Err(e) => {
                    self.route_counters.clear();
                    self.routes = RouteScope::Off;
                    return Err(e);
                }
            }
        }
        self.routes = scope.clone();
        Ok(())
    }

    /// How many threads [`RouteScope::Threads`] may name here: a counter per thread, CPU
    /// and route tracepoint, within [`ROUTE_COUNTERS`] file descriptors and at most
    /// [`MAX_ROUTE_THREADS`].
    pub fn max_route_threads(&self) -> usize {
        let ids = route_ids(self.connects.as_ref()).len();
        let per_thread = (self.rings.len() * ids).max(1);
        (ROUTE_COUNTERS / per_thread).clamp(1, MAX_ROUTE_THREADS)
    }

    /// Whose route lookups are traced now.
    pub fn route_scope(&self) -> &RouteScope {
        &self.routes
    }

    /// True when sends and receives are traced (Linux 6.4 and later): accepted connections
    /// and sockets passed between processes are claimed too, not only connects.
    pub fn traces_io(&self) -> bool {
        !self.io.is_empty()
    }

    /// Events the kernel dropped because a ring was full (their sockets may go unclaimed).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Waits up to `timeout` for a connect or for a ring to fill a quarter (the kernel does
    /// not wake the reader per send or receive: that would cost the traced processes), reads
    /// every ring and appends the claims the events old enough complete to `out`.
    pub fn poll(&mut self, timeout: Duration, out: &mut Vec<SocketClaim>) -> Result<()> {
        if self.waiting.is_empty() {
            self.wait_rings(timeout)?;
        }
        let cutoff = monotonic_ns().saturating_sub(REORDER.as_nanos() as u64);
        self.read_rings();
        self.read_to = cutoff;
        self.waiting.sort_by_key(SockEvent::time);
        let ready = self.waiting.partition_point(|e| e.time() <= cutoff);
        for event in self.waiting.drain(..ready) {
            self.pairing.feed(event, out);
        }
        Ok(())
    }

    /// The processes that connected, sent or received in the events the last [`poll`] read
    /// (claims for them may come a few milliseconds later, once the events are paired: a
    /// caller that needs to know who they are should look now, while they live).
    ///
    /// [`poll`]: SockTracer::poll
    pub fn actors(&self) -> &[u32] {
        &self.actors
    }

    /// The sends through packet sockets the last [`poll`] read, in no particular order
    /// (they need no pairing).
    ///
    /// [`poll`]: SockTracer::poll
    pub fn packet_sends(&self) -> &[PacketSent] {
        &self.packet_sends
    }

    /// Every event up to this time (`CLOCK_MONOTONIC` ns; see [`instant_of`]) was read by
    /// the last [`poll`]: no packet send of an earlier time comes later.
    ///
    /// [`poll`]: SockTracer::poll
    pub fn read_to(&self) -> u64 {
        self.read_to
    }

    /// True when events wait for their turn (the caller should poll again soon).
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Waits up to `timeout` for an event that wakes the reader (a connect, a bind) or a
    /// quarter-full ring, without reading anything.
    pub fn wait(&self, timeout: Duration) {
        if let Err(error) = self.wait_rings(timeout) {
            debug!(error = %error, "waiting on the perf rings");
            std::thread::sleep(timeout);
        }
    }

    fn wait_rings(&self, timeout: Duration) -> Result<()> {
        let mut fds: Vec<libc::pollfd> = self
            .rings
            .iter()
            .flat_map(|r| {
                let binds = r.binds.as_ref().map(|b| &b.sampler);
                std::iter::once(&r.sampler).chain(binds)
            })
            .map(|sampler| libc::pollfd {
                fd: sampler.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::from_io(Path::new("poll(perf rings)"), e));
            }
        }
        Ok(())
    }

    fn read_rings(&mut self) {
        let first = self.waiting.len();
        self.actors.clear();
        self.packet_sends.clear();
        if let Some(c) = &mut self.connects {
            c.state.clear();
        }
        for ring in &mut self.rings {
            if let (Some(binds), Some(c)) = (&mut ring.binds, &mut self.connects) {
                binds.drain(c, &mut self.lost);
            }
            while let Some(record) = ring.sampler.next_record() {
                match record.parse_record() {
                    Ok(Parsed::Sample(sample)) => {
                        let Some((time, pid, tid, raw)) = sample_parts(&sample) else {
                            continue;
                        };
                        if let Some(c) = &mut self.connects {
                            if c.take(raw, tid, pid) {
                                continue;
                            }
                        }
                        let e = match decode(&self.set_state, &self.io, time, pid, raw) {
                            Some(Decoded::Sock(e)) => e,
                            Some(Decoded::PacketSent(sent)) => {
                                self.packet_sends.push(sent);
                                continue;
                            }
                            None => continue,
                        };
                        if let (SockEvent::State { change, .. }, Some(c)) = (&e, &mut self.connects)
                        {
                            if change.new == TCP_SYN_SENT {
                                c.state.tcp(tid);
                            }
                        }
                        self.waiting.push(e);
                    }
                    Ok(Parsed::Lost(lost)) => {
                        // A lost CLOSE could let a reused socket address inherit an old
                        // connection: forget every socket rather than risk a wrong claim.
                        self.lost += lost.lost;
                        self.pairing.forget_all();
                    }
                    Ok(_) => {}
                    Err(error) => debug!(error = %error, "unparsable perf record"),
                }
            }
        }
        self.actors
            .extend(self.waiting[first..].iter().filter_map(|e| match e {
                SockEvent::State { pid, change, .. } if change.new == TCP_SYN_SENT => Some(*pid),
                SockEvent::Io { pid, .. } => Some(*pid),
                SockEvent::State { .. } => None,
            }));
        self.actors.extend(self.packet_sends.iter().map(|s| s.pid));
        self.actors.sort_unstable();
        self.actors.dedup();
    }
}

/// A send through a packet socket (`AF_PACKET`): process `pid` handed the kernel a frame
/// (or, for `SOCK_DGRAM`, a packet) of `len` bytes at `time` (`CLOCK_MONOTONIC` ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketSent {
    pub time: u64,
    pub pid: u32,
    pub len: u32,
}

/// A sample's time, pid, thread id (the pid when absent) and raw record; `None` when one of
/// the others is missing.
fn sample_parts<'a>(sample: &'a perf_event::data::Sample<'_>) -> Option<(u64, u32, u32, &'a [u8])> {
    let (time, pid, raw) = (sample.time()?, sample.pid()?, sample.raw()?);
    Some((time, pid, sample.tid().unwrap_or(pid), raw))
}

/// What one record is.
enum Decoded {
    Sock(SockEvent),
    PacketSent(PacketSent),
}

/// Turns one raw tracepoint record into an event; `None` for a record this reader does not
/// know, that is too short, or a failed packet send.
fn decode(
    set_state: &SetStateLayout,
    io: &[SockIoLayout],
    time: u64,
    pid: u32,
    raw: &[u8],
) -> Option<Decoded> {
    let ty = record_type(raw)?;
    if ty == set_state.id {
        let change = set_state.decode(raw)?;
        return Some(Decoded::Sock(SockEvent::State { time, pid, change }));
    }
    let layout = io.iter().find(|l| l.id == ty)?;
    let io = layout.decode(raw)?;
    if io.family == AF_PACKET {
        let len = u32::try_from(io.ret).ok().filter(|&n| n > 0)?;
        return layout
            .send
            .then_some(Decoded::PacketSent(PacketSent { time, pid, len }));
    }
    Some(Decoded::Sock(SockEvent::Io {
        time,
        pid,
        sk: io.sk,
    }))
}

fn open_ring(
    cpu: usize,
    set_state: &SetStateLayout,
    io: &[SockIoLayout],
    connects: Option<&ConnectEvents>,
) -> Result<Ring> {
    let leader = open_counter(
        cpu,
        set_state.id,
        SET_STATE_FILTER,
        Wakeup::Watermark,
        None,
        false,
    )?;
    let mut sampler = leader
        .sampled(RING_BYTES)
        .map_err(|e| Error::from_io(Path::new("mmap(perf ring)"), e))?;
    // Each wakeup costs a self-IPI (a VM exit in a guest) inside the connecting thread:
    // one per connect, from the return of `connect()` when it is traced.
    let syn_sent = match connects {
        Some(_) => Wakeup::Watermark,
        None => Wakeup::Each,
    };
    let connect = (set_state.id, CONNECT_FILTER, syn_sent);
    let io = io.iter().map(|l| {
        let filter = if l.send { SEND_FILTER } else { IO_FILTER };
        (l.id, filter, Wakeup::Watermark)
    });
    // The exit of a connect wakes the reader at once: the socket may close in microseconds.
    let syscalls = connects.into_iter().flat_map(|c| {
        [
            (c.enter.id, CONNECT_ENTER_FILTER, Wakeup::Watermark),
            (c.exit.id, CONNECT_EXIT_FILTER, Wakeup::Each),
        ]
    });
    let mut others = Vec::new();
    for (id, filter, wakeup) in std::iter::once(connect).chain(io).chain(syscalls) {
        let mut counter = open_into(cpu, id, filter, wakeup, None, &sampler, false)?;
        counter
            .enable()
            .map_err(|e| Error::from_io(Path::new("PERF_EVENT_IOC_ENABLE"), e))?;
        others.push(counter);
    }
    sampler
        .enable()
        .map_err(|e| Error::from_io(Path::new("PERF_EVENT_IOC_ENABLE"), e))?;
    let binds = connects
        .and_then(|c| c.bind.as_ref())
        .map(|(enter, exit)| BindRing::open(cpu, enter, exit))
        .transpose()?;
    Ok(Ring {
        cpu,
        sampler,
        _others: others,
        binds,
    })
}

/// The tracepoint ids of the route lookups this kernel has (none without connect tracing).
fn route_ids(connects: Option<&ConnectEvents>) -> Vec<u16> {
    connects.map_or_else(Vec::new, |c| c.routes.iter().map(|l| l.id).collect())
}

/// Route counters for `thread` (`None`: every thread) on every ring's CPU, one per
/// tracepoint in `ids`, enabled if `enable`.
fn open_routes(
    rings: &[Ring],
    ids: &[u16],
    thread: Option<u32>,
    enable: bool,
) -> Result<Vec<Counter>> {
    let mut counters = Vec::with_capacity(rings.len() * ids.len());
    for ring in rings {
        for &id in ids {
            let wakeup = Wakeup::Watermark;
            let mut counter = open_into(
                ring.cpu,
                id,
                ROUTE_FILTER,
                wakeup,
                thread,
                &ring.sampler,
                false,
            )?;
            if enable {
                counter
                    .enable()
                    .map_err(|e| Error::from_io(Path::new("PERF_EVENT_IOC_ENABLE(route)"), e))?;
            }
            counters.push(counter);
        }
    }
    Ok(counters)
}

/// A disabled counter (see [`open_counter`]) writing into `sampler`'s ring.
fn open_into(
    cpu: usize,
    id: u16,
    filter: &str,
    wakeup: Wakeup,
    thread: Option<u32>,
    sampler: &Sampler,
    stack: bool,
) -> Result<Counter> {
    let counter = open_counter(cpu, id, filter, wakeup, thread, stack)?;
    ioctl(&counter, "PERF_EVENT_IOC_SET_OUTPUT", |fd| {
        // SAFETY: both are perf event fds opened on the same CPU.
        unsafe { perf_event_open_sys::ioctls::SET_OUTPUT(fd, sampler.as_raw_fd()) }
    })?;
    Ok(counter)
}

/// The layouts of those of `names` this kernel has (an absent tracepoint is skipped; an
/// unreadable or malformed one is an error).
fn optional_layouts<L>(
    format: &impl Fn(&str) -> Result<TraceFormat>,
    names: &[&str],
    layout: impl Fn(&TraceFormat) -> Result<L>,
) -> Result<Vec<L>> {
    let mut found = Vec::new();
    for &name in names {
        match format(name) {
            Ok(f) => found.push(layout(&f)?),
            Err(e) if e.is_not_found() => debug!(tracepoint = name, "not in this kernel"),
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// A disabled, filtered, sampled tracepoint counter on `cpu`, for every thread or one; with
/// `stack`, each sample also carries the user stack pointer and [`STACK_COPY`] bytes of the
/// stack from it (needs [`SP_REGISTER`]).
fn open_counter(
    cpu: usize,
    id: u16,
    filter: &str,
    wakeup: Wakeup,
    thread: Option<u32>,
    stack: bool,
) -> Result<Counter> {
    let mut builder = Builder::new(Tracepoint::with_id(id.into()));
    builder.one_cpu(cpu);
    match thread {
        // perf takes a thread id for its pid: that thread alone, not its process.
        Some(tid) => builder.observe_pid(tid as libc::pid_t),
        None => builder.any_pid(),
    };
    builder
        .include_kernel()
        .sample_period(1)
        .sample(SampleFlag::TID | SampleFlag::TIME | SampleFlag::RAW)
        .clockid(Clock::MONOTONIC)
        .enabled(false);
    if let (true, Some(sp)) = (stack, SP_REGISTER) {
        builder
            .sample(
                SampleFlag::TID
                    | SampleFlag::TIME
                    | SampleFlag::RAW
                    | SampleFlag::REGS_USER
                    | SampleFlag::STACK_USER,
            )
            .sample_regs_user(1 << sp)
            .sample_stack_user(STACK_COPY);
    }
    match wakeup {
        Wakeup::Each => builder.wakeup_events(1),
        Wakeup::Watermark => builder.wakeup_watermark(RING_BYTES / 4),
    };
    let counter = builder
        .build()
        .map_err(|e| Error::from_io(Path::new("perf_event_open(sock tracepoint)"), e))?;
    set_filter(&counter, filter)?;
    Ok(counter)
}

fn set_filter(counter: &Counter, filter: &str) -> Result<()> {
    let filter = std::ffi::CString::new(filter).expect("filters have no NUL");
    ioctl(counter, "PERF_EVENT_IOC_SET_FILTER", |fd| {
        // SAFETY: a valid NUL-terminated string the kernel only reads.
        unsafe { perf_event_open_sys::ioctls::SET_FILTER(fd, filter.as_ptr().cast_mut()) }
    })
}

fn ioctl(counter: &impl AsRawFd, what: &str, f: impl FnOnce(RawFd) -> libc::c_int) -> Result<()> {
    if f(counter.as_raw_fd()) < 0 {
        return Err(Error::from_io(
            Path::new(what),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The [`Instant`] of an event time in `CLOCK_MONOTONIC` nanoseconds (what the events
/// carry): `Instant` is that clock on Linux, so this is exact up to the two clock reads.
pub fn instant_of(ns: u64) -> Instant {
    let (now_ns, now) = (monotonic_ns(), Instant::now());
    match now_ns.checked_sub(ns) {
        Some(ago) => now.checked_sub(Duration::from_nanos(ago)).unwrap_or(now),
        None => now + Duration::from_nanos(ns - now_ns),
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
