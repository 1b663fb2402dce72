//! Replies: the typed bodies daemon and CLI share, inside an [`Envelope`].
//!
//! Invariant: every reply serializes as one JSON object that starts with `"v"` and `"ok"`.
//! Deserializing ignores unknown fields (a newer daemon may add some) but requires every field
//! this version defines.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// The `comm` the unknown bucket carries in a [`WatchFrame`].
pub const UNKNOWN_COMM: &str = "<unknown>";
/// [`Owner::matched`] when the socket's four-tuple matched exactly.
pub const MATCH_EXACT: &str = "exact";
/// [`Owner::matched`] when only a listening or unconnected socket (wildcard remote or local
/// address) matched.
pub const MATCH_WILDCARD: &str = "wildcard";

/// `Owner::matched` for a connected socket that closed within the grace period (trailing
/// packets keep the owner the socket had).
pub const MATCH_RECENT: &str = "recent";

/// `{"v":1,"ok":…}` followed by the body's own fields. Build it with [`crate::ok`] or
/// [`crate::error_reply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Protocol version, [`crate::VERSION`].
    pub v: u32,
    /// `true` for a result, `false` for an [`ErrorReply`].
    pub ok: bool,
    /// The reply's fields.
    #[serde(flatten)]
    pub body: T,
}

/// Byte and packet counters and current rates of one process or of the unknown bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes received since the last usage-log line (what the next line would report).
    pub rx_bytes: u64,
    /// Bytes sent since the last usage-log line.
    pub tx_bytes: u64,
    /// Packets received since the last usage-log line.
    pub rx_packets: u64,
    /// Packets sent since the last usage-log line.
    pub tx_packets: u64,
    /// Bytes received since first seen.
    pub rx_bytes_total: u64,
    /// Bytes sent since first seen.
    pub tx_bytes_total: u64,
    /// Packets received since first seen.
    pub rx_packets_total: u64,
    /// Packets sent since first seen.
    pub tx_packets_total: u64,
    /// Current receive rate, bytes per second.
    pub rx_bps: f64,
    /// Current send rate, bytes per second.
    pub tx_bps: f64,
}

/// The unknown bucket of `processes`: traffic of local addresses no socket owner was found for.
pub type UnknownRow = Usage;

/// One process in `processes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`); with `pid` it
    /// names the process even after the pid is reused.
    pub start_time: u64,
    /// Command name (`/proc/<pid>/comm`), as the process set it: untrusted text.
    pub comm: String,
    /// Executable path, `null` when it could not be read.
    #[serde(default)]
    pub exe: Option<String>,
    /// Real user id.
    pub uid: u32,
    /// Counters and rates.
    #[serde(flatten)]
    pub usage: Usage,
    /// `false` once the process has exited (its counters are kept until logged).
    pub alive: bool,
    /// Bytes credited since first seen, per match quality.
    #[serde(default)]
    pub matched: MatchBytes,
    /// Where the process is placed: network namespace, cgroup, unit, container, user.
    #[serde(flatten)]
    pub placement: PlacementFields,
}

/// Where a process is placed (all `null` when unknown). Added in 0.2 without a version bump:
/// readers of earlier replies get `null`s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementFields {
    /// Network namespace: the inode of `/proc/<pid>/ns/net`.
    #[serde(default)]
    pub netns: Option<u64>,
    /// Control-group path (cgroup v2, else v1 `name=systemd`).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// systemd unit, from the cgroup path (`nginx.service`, `user@1000.service`).
    #[serde(default)]
    pub unit: Option<String>,
    /// Container, from the cgroup path.
    #[serde(default)]
    pub container: Option<ContainerRef>,
    /// Name of `uid` in the host's user database.
    #[serde(default)]
    pub user: Option<String>,
}

/// A container as its cgroup path names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    /// `docker`, `podman`, `containerd`, `cri-o`, `kubernetes`, `systemd-nspawn` or `lxc`.
    pub runtime: String,
    /// The runtime's container id (64 hex digits), or the machine name.
    pub id: String,
    /// The Kubernetes pod uid, when in a pod.
    #[serde(default)]
    pub pod: Option<String>,
    /// The runtime's name for it, from its state on disk (Podman, Docker, containerd's CRI
    /// and nerdctl containers, CRI-O); `null` until read, or when the runtime keeps none there.
    #[serde(default)]
    pub name: Option<String>,
}

/// What `groups` groups processes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// User name (the uid when the user database has none).
    User,
    /// systemd unit.
    Unit,
    /// Container (`runtime:id`).
    Container,
    /// Network namespace inode.
    Netns,
}

impl GroupBy {
    /// Every value, as the wire and the CLI spell them.
    pub const ALL: [(&'static str, GroupBy); 4] = [
        ("user", GroupBy::User),
        ("unit", GroupBy::Unit),
        ("container", GroupBy::Container),
        ("netns", GroupBy::Netns),
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        GroupBy::ALL
            .iter()
            .find(|(_, g)| *g == self)
            .map_or("user", |(name, _)| name)
    }
}

/// One group in `groups`: the sum of its processes' counters and rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRow {
    /// The group's key (user name, unit, `runtime:id`, netns inode as text); `null` for the
    /// processes that have none (no unit, not in a container, not known).
    pub key: Option<String>,
    /// Processes in the group (alive or exited, with counters).
    pub processes: u64,
    /// Summed counters and rates.
    #[serde(flatten)]
    pub usage: Usage,
}

/// Body of the `groups` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupsReply {
    /// What the rows group by.
    pub by: GroupBy,
    /// One row per group, by descending total bytes.
    pub groups: Vec<GroupRow>,
    /// The unknown bucket (in no group).
    pub unknown: UnknownRow,
    /// Set when only the caller's own processes were grouped (see `processes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered_to_uid: Option<u32>,
}

/// Bytes credited per match quality: how sure each credit is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchBytes {
    /// The connected socket with both addresses.
    pub exact: u64,
    /// A listener or unconnected socket on the local address and port.
    pub wildcard: u64,
    /// A connected socket that closed within the grace period (trailing packets).
    pub recent: u64,
    /// Waited in the pending buffer; credited once a refresh found the owner.
    pub late: u64,
    /// No socket had the packet's addresses: the one process that sent a frame of its
    /// length through a packet socket (`AF_PACKET`) when it was captured. Absent in
    /// replies of daemons before it (read as 0).
    #[serde(default)]
    pub packet_sender: u64,
}

/// One socket of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// Protocol name (`tcp`, `udp`, …, as in [`crate::TransportProto`]).
    pub proto: String,
    /// Local end, `IP:PORT`.
    pub local: String,
    /// Remote end, `IP:PORT` (`0.0.0.0:0` or `[::]:0` when unconnected).
    pub remote: String,
    /// Kernel state, e.g. `ESTABLISHED`, `LISTEN`.
    pub state: String,
    /// Socket inode.
    pub inode: u64,
    /// The network namespace the socket is in (inode of its `ns/net`); absent from earlier
    /// daemons.
    #[serde(default)]
    pub netns: Option<u64>,
    /// Every pid holding the socket, this process included: more than one when it is shared
    /// (inherited across `fork`, passed over a unix socket). Which of them is credited is
    /// README rule 4. Empty from earlier daemons.
    #[serde(default)]
    pub holders: Vec<u32>,
}

/// `process`: a [`ProcessRow`] plus command line and sockets, all at the same level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessDetail {
    /// The row fields, flattened.
    #[serde(flatten)]
    pub row: ProcessRow,
    /// Arguments (`/proc/<pid>/cmdline`), empty for kernel threads or exited processes.
    pub cmdline: Vec<String>,
    /// Sockets the process holds.
    pub connections: Vec<Connection>,
}

/// The process a `lookup` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Process credited with the flow.
    pub pid: u32,
    /// Its start time (clock ticks after boot).
    pub start_time: u64,
    /// Its command name.
    pub comm: String,
    /// The socket inode that matched.
    pub inode: u64,
    /// [`MATCH_EXACT`] or [`MATCH_WILDCARD`].
    pub matched: String,
    /// Every pid holding the socket (the credited one included).
    pub holders: Vec<u32>,
}

/// Daemon-wide counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Seconds since the daemon started.
    pub uptime_s: f64,
    /// Packets captured towards a local address.
    pub rx_packets: u64,
    /// Bytes captured towards a local address.
    pub rx_bytes: u64,
    /// Packets captured from a local address.
    pub tx_packets: u64,
    /// Bytes captured from a local address.
    pub tx_bytes: u64,
    /// Packets with neither end local.
    pub foreign_packets: u64,
    /// Bytes with neither end local.
    pub foreign_bytes: u64,
    /// Copies of a local packet already counted on another interface (with `any`: a
    /// container's packet on its veth and again on the bridge or the uplink).
    #[serde(default)]
    pub transit_packets: u64,
    /// Bytes of those copies.
    #[serde(default)]
    pub transit_bytes: u64,
    /// Received bytes credited to a process.
    pub credited_rx_bytes: u64,
    /// Sent bytes credited to a process.
    pub credited_tx_bytes: u64,
    /// Received packets credited to a process.
    pub credited_rx_packets: u64,
    /// Sent packets credited to a process.
    pub credited_tx_packets: u64,
    /// Received bytes in the unknown bucket.
    pub unknown_rx_bytes: u64,
    /// Sent bytes in the unknown bucket.
    pub unknown_tx_bytes: u64,
    /// Received packets in the unknown bucket.
    pub unknown_rx_packets: u64,
    /// Sent packets in the unknown bucket.
    pub unknown_tx_packets: u64,
    /// Frames that carried no IP packet.
    pub non_ip_packets: u64,
    /// Frames too short or inconsistent to parse.
    pub malformed_packets: u64,
    /// libpcap's `ps_recv`.
    pub pcap_received: u64,
    /// libpcap's `ps_drop` (buffer full).
    pub pcap_dropped: u64,
    /// libpcap's `ps_ifdrop` (dropped by the interface).
    pub pcap_if_dropped: u64,
    /// Sockets in the socket table.
    pub sockets_known: u64,
    /// Processes with counters.
    pub processes_known: u64,
    /// Socket-table refreshes done.
    pub refreshes: u64,
    /// Refresh passes that failed (netlink or /proc errors); the previous table stays in use.
    #[serde(default)]
    pub refresh_failures: u64,
    /// Duration of the last refresh, milliseconds.
    pub last_refresh_ms: f64,
    /// Capture interface name.
    pub interface: String,
    /// Link type of the capture, e.g. `EN10MB`.
    pub link_type: String,
    /// The capture interface went away and has not come back yet (counting is paused).
    #[serde(default)]
    pub capture_down: bool,
    /// Times the capture was reopened after its interface went away (libpcap's
    /// received/dropped counters restart at each reopen).
    #[serde(default)]
    pub capture_reopens: u64,
    /// Credited bytes (both directions) per match quality.
    #[serde(default)]
    pub credited_matched: MatchBytes,
    /// Unknown bytes (both directions) per reason.
    #[serde(default)]
    pub unknown_reasons: UnknownReasons,
    /// Packet directions waiting for their owner in the pending buffer (not yet counted above).
    #[serde(default)]
    pub pending_packets: u64,
    /// Their bytes.
    #[serde(default)]
    pub pending_bytes: u64,
    /// Which process-side sources of attribution run, and what they did.
    #[serde(default)]
    pub process_side: ProcessSide,
    /// The query server's clients: how many, its limits, and what happened at them.
    #[serde(default)]
    pub query_server: QueryServer,
    /// The daemon's long-lived threads (`capture`, `refresh`, `watch`, `trace`,
    /// `namespaces`, in that order) and when each last went round its loop.
    #[serde(default)]
    pub threads: Vec<ThreadHealth>,
    /// What the process watcher and socket tracer remember about processes, and what
    /// happened at its bound.
    #[serde(default)]
    pub process_facts: ProcessFacts,
    /// The packet path's bounded structures and what happened at their bounds.
    #[serde(default)]
    pub bounds: Bounds,
    /// The captures inside other network namespaces (`namespaces = all`; all zero and
    /// `enabled: false` otherwise).
    #[serde(default)]
    pub namespace_capture: NamespaceCapture,
}

/// The loopback captures opened inside other network namespaces (`namespaces = all`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceCapture {
    /// `namespaces = all` is set.
    pub enabled: bool,
    /// Namespaces whose loopback is captured now.
    pub open: u64,
    /// Captures opened since start (a namespace that comes back is opened again).
    pub opened: u64,
    /// Captures closed since start: their namespace emptied, or their read failed.
    pub closed: u64,
    /// Tries to open a namespace's capture that failed (its processes exited meanwhile, or
    /// the capture could not be opened); tried again after 5 s.
    pub open_failures: u64,
    /// Frames the open captures received, and dropped for want of buffer space (libpcap's
    /// counters, summed; a capture's count ends when it closes).
    pub received: u64,
    pub dropped: u64,
}

/// The packet path's bounded structures (`--max-flows`, `--pending-max`, 4,096 fragmented
/// datagrams) and what happened at their bounds, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    /// Flows whose verdict is cached now.
    pub flows_cached: u64,
    /// Times the attribution cache was emptied because it was full (each costs a re-lookup
    /// per live flow, nothing else).
    pub flow_cache_clears: u64,
    /// Packet directions decided before their time because the pending buffer was full
    /// (counted as usual: credited if their owner was known by then, else `pending_expired`).
    pub pending_evicted: u64,
    /// Fragmented datagrams forgotten because 4,096 were remembered (their later fragments
    /// are counted as `unsupported`).
    pub fragments_forgotten: u64,
    /// Packet sightings the copy filter forgot because 65,536 were remembered (a copy may
    /// then count twice).
    #[serde(default)]
    pub copies_forgotten: u64,
    /// TCP 4-tuples whose connection openings (SYNs) are remembered now, to keep a reused
    /// port from being credited to its previous holder.
    #[serde(default)]
    pub openings: u64,
    /// 4-tuples forgotten early because `--max-flows` recent ones were remembered (a packet of a
    /// reused port decided late may then go to its previous holder, as without openings).
    #[serde(default)]
    pub openings_forgotten: u64,
}

/// One long-lived daemon thread's health, from its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadHealth {
    /// `capture`, `refresh`, `watch`, `trace` or `namespaces`.
    pub name: String,
    /// The thread started its loop (false: configured off, or what it reads could not be
    /// opened; `stats.process_side` and the daemon's log say which).
    pub running: bool,
    /// Milliseconds since it last went round its loop; `null` when not running.
    pub last_beat_ms: Option<u64>,
    /// Running, but it has not gone round its loop for 10 s or more (half the watchdog
    /// period under systemd's watchdog): a stuck or dead thread, whose part of attribution is
    /// stale; under systemd the watchdog then restarts the daemon.
    pub stale: bool,
}

/// The process facts table (who each pid is or was, as the watcher and tracer learned it):
/// at most 65,536 entries and 32 MiB of strings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFacts {
    /// Processes remembered now.
    pub entries: u64,
    /// Heap bytes of their names, paths and command lines.
    pub bytes: u64,
    /// Times a bound made it forget facts early (exited processes first, then all).
    pub evictions: u64,
}

/// The query server's clients and what happened at its bounds. Every bound the server keeps
/// (client count, idle and half-line timeouts, line length) has a counter here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryServer {
    /// Clients connected now (this one included).
    pub clients: u64,
    /// Most clients served at once: the configured `max_clients`, lowered if needed so that
    /// the reserve of file descriptors for capture and refresh always remains.
    pub client_limit: u64,
    /// Most clients one user outside the socket group may hold at once.
    pub client_limit_per_user: u64,
    /// Clients turned away with `too_many_clients` (the server or the user was at its limit).
    pub clients_refused: u64,
    /// Clients closed with `timeout`: idle too long, or a request line left half-sent.
    pub clients_timed_out: u64,
    /// Clients closed for a request line over the length limit.
    pub lines_too_long: u64,
    /// `accept` failures (e.g. out of file descriptors); logged at most once per 10 s.
    pub accept_errors: u64,
}

/// The process side of attribution: kernel sources that tell which process uses a socket
/// while it lives, so sockets that close in a millisecond are still credited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSide {
    /// The process watcher runs (netlink process-event connector): new processes' sockets
    /// are read while they are young.
    pub watcher: bool,
    /// The socket tracer runs (the kernel's `sock` tracepoints through perf): every TCP
    /// connection is claimed by the processes that connect, send or receive on it.
    pub tracer: bool,
    /// Connections the tracer claimed for a process.
    pub traced_claims: u64,
    /// Claims dropped because the process exited before its identity could be read.
    pub traced_unknown_process: u64,
    /// Trace events the kernel dropped because a ring buffer was full.
    pub trace_events_lost: u64,
    /// Threads whose route lookups are traced now: a thread is, for 30 s after one of its
    /// connected UDP sockets closed before the tracer could read it (its connects' addresses
    /// then come from the kernel).
    #[serde(default)]
    pub route_threads: u64,
    /// Connected sockets named from their route lookups (counted in `traced_claims` too).
    #[serde(default)]
    pub traced_routes: u64,
    /// What the watcher and tracer learned but could not hand to the refresher (its queue of
    /// 4,096 messages was full); those sockets wait for the next dump.
    #[serde(default)]
    pub learned_dropped: u64,
}

/// Unknown bytes per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownReasons {
    /// No socket matched the local end.
    pub no_socket: u64,
    /// A socket matched but no process held it.
    pub no_process: u64,
    /// Still unresolved when its time in the pending buffer ran out.
    pub pending_expired: u64,
    /// A packet that cannot be attributed (a non-first fragment whose first fragment was not
    /// seen, a truncated transport header).
    pub unsupported: u64,
}

/// One row of a `watch` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateRow {
    /// Process id; `null` for the unknown bucket.
    pub pid: Option<u32>,
    /// Command name; [`UNKNOWN_COMM`] for the unknown bucket.
    pub comm: String,
    /// Receive rate, bytes per second.
    pub rx_bps: f64,
    /// Send rate, bytes per second.
    pub tx_bps: f64,
    /// Bytes received since first seen.
    pub rx_bytes_total: u64,
    /// Bytes sent since first seen.
    pub tx_bytes_total: u64,
}

/// Body of the `processes` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessesReply {
    /// Every process with counters.
    pub processes: Vec<ProcessRow>,
    /// The unknown bucket.
    pub unknown: UnknownRow,
    /// Set when the list holds only the caller's own processes (those of this uid): the
    /// caller is neither root nor in the socket's group. Absent for a full list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered_to_uid: Option<u32>,
}

/// Body of the `process` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessReply {
    /// The process.
    pub process: ProcessDetail,
}

/// Body of the `lookup` reply: `{"found":true,"owner":…}` or `{"found":false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReply {
    /// Whether an owner was found.
    pub found: bool,
    /// The owner; absent when not found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Set when only the caller's own processes (those of this uid) were eligible: `found`
    /// is then `false` also when another user's process owns the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered_to_uid: Option<u32>,
}

impl LookupReply {
    /// The reply for a found owner.
    pub fn found(owner: Owner) -> Self {
        LookupReply {
            found: true,
            owner: Some(owner),
            filtered_to_uid: None,
        }
    }

    /// The reply when no owner was found.
    pub fn not_found() -> Self {
        LookupReply {
            found: false,
            owner: None,
            filtered_to_uid: None,
        }
    }
}

/// Body of the `stats` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// The counters.
    pub stats: Stats,
}

/// One line of a `watch` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchFrame {
    /// When the frame was taken, RFC 3339 (e.g. `2024-05-01T12:00:00.250Z`).
    pub ts: String,
    /// The interval in force, milliseconds.
    pub interval_ms: u64,
    /// Processes with their rates.
    pub processes: Vec<RateRow>,
    /// The unknown bucket (`pid` null, `comm` [`UNKNOWN_COMM`]).
    pub unknown: RateRow,
    /// Set when the frame lists only the caller's own processes (those of this uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered_to_uid: Option<u32>,
}

/// Body of an error reply (`"ok":false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong.
    pub error: ErrorBody,
}

/// `{"code":…,"message":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}
