//! State shared by the capture thread, the refresher and the tokio tasks.
//!
//! Invariants: the socket table is swapped whole (`ArcSwap`), never edited in place; the
//! ledger's mutex is taken once per packet batch by the capture thread, never per packet,
//! and query handlers copy what they need out of it before doing any I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pidcap_capture::CaptureStats;
use pidcap_core::{Ledger, NetNsId, PendingLevel, SocketTable};

use crate::containers::ContainerNames;
use crate::process_side::facts::ProcessFacts;
use crate::tap::Tap;
use crate::users::UserNames;

/// What the refresher reports about itself.
#[derive(Debug, Default, Clone)]
pub struct RefreshInfo {
    pub count: u64,
    pub last_duration: Duration,
    pub failures: u64,
}

/// What runs on the process side of attribution (watcher, tracer), and their counts.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessSideInfo {
    pub watcher: bool,
    pub tracer: bool,
    pub traced_claims: u64,
    pub traced_unknown_process: u64,
    pub trace_events_lost: u64,
    pub route_threads: u64,
    pub traced_routes: u64,
    /// Messages from the watcher and tracer dropped because the refresher's queue was full.
    pub learned_dropped: u64,
}

/// The capture thread's bounded structures, published once per batch (they are its own,
/// never shared; this is the copy `stats` reads).
#[derive(Debug, Default, Clone, Copy)]
pub struct CaptureLevels {
    pub pending: PendingLevel,
    /// Flows in the attribution cache.
    pub flows_cached: u64,
    /// Times the attribution cache was emptied at its bound.
    pub flow_cache_clears: u64,
    /// Fragmented datagrams forgotten at the fragment map's bound.
    pub fragments_forgotten: u64,
    /// Packet sightings forgotten at the copy filter's bound.
    pub copies_forgotten: u64,
    /// TCP 4-tuples with openings remembered, and those forgotten at the bound.
    pub openings: u64,
    pub openings_forgotten: u64,
}

/// Facts about the capture handle, refreshed by the capture thread.
#[derive(Debug, Default, Clone)]
pub struct CaptureInfo {
    pub origin: String,
    pub link_name: String,
    /// The capture's link type (DLT number), for the `capture` stream's header.
    pub dlt: i32,
    /// Most bytes kept of a frame.
    pub snaplen: u32,
    /// How long a packet waits for its owner (`--pending-timeout`); the `capture` stream
    /// holds such frames as long.
    pub pending_timeout: Duration,
    pub stats: CaptureStats,
    /// Times the live capture was reopened after its interface went away.
    pub reopens: u64,
    /// The capture interface is gone and has not come back yet.
    pub down: bool,
}

/// The captures inside other namespaces (`namespaces = all`), published by their thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct NamespaceCaptureInfo {
    pub open: u64,
    pub opened: u64,
    pub closed: u64,
    pub open_failures: u64,
    pub received: u64,
    pub dropped: u64,
}

/// Other network namespaces with processes in them, each with its oldest processes.
pub type GuestList = Arc<Vec<(NetNsId, Vec<u32>)>>;

/// Without a systemd watchdog, a running thread that has not gone round its loop for this
/// long is reported `stale` in `stats`: every loop goes round at least every 300 ms, or once
/// per capture batch or refresh pass, which take milliseconds.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// How long a running thread may go without a beat before it is stale: half the systemd
/// watchdog's period when one runs (the keep-alive is withheld from then on), else
/// [`STALE_AFTER`].
pub fn stale_after() -> Duration {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Duration::from_micros(usec) / 2
    } else {
        STALE_AFTER
    }
}

/// The daemon's long-lived threads, each watched through its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worker {
    Capture,
    Refresh,
    Watch,
    Trace,
    /// The captures inside other namespaces (`namespaces = all`).
    Namespaces,
}

impl Worker {
    pub const ALL: [Worker; 5] = [
        Worker::Capture,
        Worker::Refresh,
        Worker::Watch,
        Worker::Trace,
        Worker::Namespaces,
    ];

    /// The thread's name, as in logs and `stats`.
    pub fn name(self) -> &'static str {
        match self {
            Worker::Capture => "capture",
            Worker::Refresh => "refresh",
            Worker::Watch => "watch",
            Worker::Trace => "trace",
            Worker::Namespaces => "namespaces",
        }
    }
}

/// What the daemon's threads publish for each other and for queries: the socket table (the
/// refresher's), the ledger (the capture thread's counts), each thread's report and
/// heartbeat. Every field is private; each has one writer, named on its accessor.
#[derive(Debug)]
pub struct DaemonState {
    table: ArcSwap<SocketTable>,
    ledger: Mutex<Ledger>,
    capture: Mutex<CaptureInfo>,
    levels: Mutex<CaptureLevels>,
    refresh: Mutex<RefreshInfo>,
    process_side: Mutex<ProcessSideInfo>,
    namespace_capture: Mutex<NamespaceCaptureInfo>,
    /// Other network namespaces with processes in them, each with its oldest processes (the
    /// refresher's last discovery).
    guests: Mutex<GuestList>,
    /// Who each pid is, as the watcher and tracer learned it (shared by both, sized in `stats`).
    facts: ProcessFacts,
    /// Frames for `capture` stream clients.
    tap: Arc<Tap>,
    /// User names of the uids with traffic (resolved by the refresher).
    users: UserNames,
    /// Names of the containers with traffic (resolved by the refresher).
    containers: ContainerNames,
    /// Generation of the table in `table`, readable with one atomic load per packet.
    generation: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` when the capture loop last went round.
    /// Per [`Worker`]: 1 + milliseconds after `started` of its last beat; 0 = not running.
    heartbeats: [AtomicU64; Worker::ALL.len()],
    /// Frames handled by the capture loop since start (published once per batch).
    frames: AtomicU64,
    /// Until when (µs after `started`) the socket tracer is to report how far it read its
    /// rings: the refresher learned of a fork whose packets wait for the claims up to their
    /// capture (`pidcap_core::SocketTable::with_forks`).
    claims_wanted: AtomicU64,
}

impl DaemonState {
    pub fn new(table: SocketTable, now: Instant) -> Arc<DaemonState> {
        Arc::new(DaemonState {
            generation: AtomicU64::new(table.generation()),
            table: ArcSwap::from_pointee(table),
            ledger: Mutex::new(Ledger::new(now)),
            capture: Mutex::new(CaptureInfo::default()),
            levels: Mutex::new(CaptureLevels::default()),
            refresh: Mutex::new(RefreshInfo::default()),
            process_side: Mutex::new(ProcessSideInfo::default()),
            namespace_capture: Mutex::new(NamespaceCaptureInfo::default()),
            guests: Mutex::new(Arc::default()),
            facts: ProcessFacts::default(),
            tap: Arc::default(),
            users: UserNames::default(),
            containers: ContainerNames::default(),
            started: now,
            heartbeats: Default::default(),
            frames: AtomicU64::new(0),
            claims_wanted: AtomicU64::new(0),
        })
    }

    /// The newest socket table (written by the refresher through [`DaemonState::publish`]).
    pub fn table(&self) -> Arc<SocketTable> {
        self.table.load_full()
    }

    /// Who each pid is (written by the watcher and the tracer).
    pub fn facts(&self) -> &ProcessFacts {
        &self.facts
    }

    /// Frames for `capture` stream clients (sent by the capture thread).
    pub fn tap(&self) -> &Arc<Tap> {
        &self.tap
    }

    /// User names (resolved by the refresher, read by queries and the usage log).
    pub fn users(&self) -> &UserNames {
        &self.users
    }

    /// Container names (resolved by the refresher, read by queries and the usage log).
    pub fn containers(&self) -> &ContainerNames {
        &self.containers
    }

    /// Swaps in a new table; the capture thread picks it up before its next packet.
    pub fn publish(&self, table: SocketTable) {
        let generation = table.generation();
        self.table.store(Arc::new(table));
        self.generation.store(generation, Ordering::Release);
    }

    /// Generation of the current table.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The capture thread's bounded structures (published by it once per batch).
    pub fn set_levels(&self, levels: CaptureLevels) {
        *self.levels.lock().unwrap_or_else(|e| e.into_inner()) = levels;
    }

    pub fn levels(&self) -> CaptureLevels {
        *self.levels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ledger (written by the capture thread, read by queries and the log), even if a
    /// thread panicked while holding it (counters stay usable).
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Written by the capture thread.
    pub fn capture_info(&self) -> MutexGuard<'_, CaptureInfo> {
        self.capture.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Written by the refresher.
    pub fn refresh_info(&self) -> MutexGuard<'_, RefreshInfo> {
        self.refresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Written by the watcher and the tracer.
    pub fn process_side(&self) -> MutexGuard<'_, ProcessSideInfo> {
        self.process_side.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The namespace captures' report (written by their thread).
    pub fn namespace_capture(&self) -> MutexGuard<'_, NamespaceCaptureInfo> {
        self.namespace_capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Other network namespaces and their oldest processes (written by the refresher after
    /// each discovery).
    pub fn set_guests(&self, guests: Vec<(NetNsId, Vec<u32>)>) {
        *self.guests.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(guests);
    }

    pub fn guests(&self) -> GuestList {
        Arc::clone(&self.guests.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Adds a batch's frame count.
    pub fn count_frames(&self, n: u64) {
        self.frames.fetch_add(n, Ordering::Relaxed);
    }

    /// Frames handled since start.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Asks the socket tracer to report how far it read its rings until `until`.
    pub fn want_claims_read(&self, until: Instant) {
        let us = until.saturating_duration_since(self.started).as_micros() as u64;
        self.claims_wanted.fetch_max(us, Ordering::Relaxed);
    }

    /// Until when the socket tracer is asked to report how far it read its rings.
    pub fn claims_read_wanted(&self) -> Option<Instant> {
        match self.claims_wanted.load(Ordering::Relaxed) {
            0 => None,
            us => Some(self.started + Duration::from_micros(us)),
        }
    }

    /// Called by the capture loop each time round.
    pub fn beat(&self, now: Instant) {
        self.beat_worker(Worker::Capture, now);
    }

    /// Called by each long-lived thread each time round its loop (and once at its start, which
    /// makes the watchdog watch it).
    pub fn beat_worker(&self, worker: Worker, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        self.heartbeats[worker as usize].store(ms + 1, Ordering::Relaxed);
    }

    /// How long ago `worker` last went round its loop; `None` if it never started (it is
    /// off, or could not open what it reads).
    pub fn since_beat(&self, worker: Worker, now: Instant) -> Option<Duration> {
        let beat = self.heartbeats[worker as usize].load(Ordering::Relaxed);
        let at = self.started + Duration::from_millis(beat.checked_sub(1)?);
        Some(now.saturating_duration_since(at))
    }

    /// The running threads that have not gone round their loop for `max` or more, with how
    /// long it has been.
    pub fn stale_workers(&self, now: Instant, max: Duration) -> Vec<(&'static str, Duration)> {
        Worker::ALL
            .iter()
            .filter_map(|&w| {
                let since = self.since_beat(w, now)?;
                (since >= max).then_some((w.name(), since))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::{DaemonState, Worker};
    use pidcap_core::SocketTable;

    /// A thread is stale once its last beat is `max` old; a thread that never beat (off, or
    /// could not start) is not reported, and a new beat clears it.
    #[test]
    fn stale_workers_are_those_whose_last_beat_is_too_old() {
        let start = Instant::now();
        let state = DaemonState::new(SocketTable::default(), start);
        let max = Duration::from_secs(10);
        state.beat_worker(Worker::Capture, start);
        state.beat_worker(Worker::Refresh, start + Duration::from_secs(5));
        assert!(state
            .stale_workers(start + Duration::from_secs(9), max)
            .is_empty());
        let stale = state.stale_workers(start + Duration::from_secs(12), max);
        assert_eq!(stale, vec![("capture", Duration::from_secs(12))]);
        assert_eq!(state.since_beat(Worker::Trace, start + max * 9), None);
        state.beat(start + Duration::from_secs(12));
        assert!(state
            .stale_workers(start + Duration::from_secs(13), max)
            .is_empty());
    }

    /// The `pub` field names of `pub struct NAME` in `source`.
    fn fields_of<'a>(source: &'a str, name: &str) -> Vec<&'a str> {
        let start = source
            .find(&format!("pub struct {name} {{"))
            .unwrap_or_else(|| panic!("struct {name} not found"));
        let body = &source[start..];
        let body = &body[..body.find("\n}").expect("struct end")];
        body.lines()
            .filter_map(|l| l.trim().strip_prefix("pub ")?.split_once(':'))
            .map(|(field, _)| field.trim())
            .collect()
    }

    /// Whether some `NAME { ... }` literal in `source` sets `field`.
    fn built_with(source: &str, name: &str, field: &str) -> bool {
        source
            .match_indices(&format!("{name} {{\n"))
            .any(|(at, _)| {
                let body = &source[at..];
                let body = &body[..body.find("\n    }").unwrap_or(body.len())];
                body.lines()
                    .any(|l| l.trim().starts_with(&format!("{field}:")))
            })
    }

    /// Every daemon source file but this one and the query answers (which only read).
    fn writers() -> String {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = String::new();
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src dir").flatten() {
                let path = entry.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if path.is_dir() {
                    dirs.push(path);
                } else if name.ends_with(".rs") && !["state.rs", "queries.rs"].contains(&name) {
                    all.push_str(&std::fs::read_to_string(&path).expect("read source"));
                }
            }
        }
        all
    }

    /// A `stats` counter that no thread ever writes reads 0 forever and looks healthy (this
    /// is how `trace_events_lost` and refresh failures went unreported): every field of the
    /// structs the threads publish into must be assigned somewhere outside this file.
    #[test]
    fn every_published_field_is_written_by_some_thread() {
        let state = include_str!("state.rs");
        let writers = writers();
        for name in [
            "RefreshInfo",
            "ProcessSideInfo",
            "CaptureInfo",
            "CaptureLevels",
            "NamespaceCaptureInfo",
        ] {
            let fields = fields_of(state, name);
            assert!(fields.len() >= 3, "{name}: {fields:?}");
            for field in fields {
                let assigned = [" =", " +=", " |="]
                    .iter()
                    .any(|op| writers.contains(&format!(".{field}{op}")));
                let written = assigned || built_with(&writers, name, field);
                assert!(
                    written,
                    "{name}::{field} is published in stats but never written"
                );
            }
        }
    }
}
