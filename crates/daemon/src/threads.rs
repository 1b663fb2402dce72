//! The daemon's long-lived threads: started in pipeline order (the process side — tracer and
//! watcher —, the refresher, then capture) and joined at shutdown.
//!
//! Each runs a blocking loop (procfs, netlink and libpcap reads never sit on a tokio worker),
//! beats its heartbeat each time round ([`crate::state::Worker`]) and ends when the shared
//! `stop` flag is set; the capture thread also ends the daemon (`shutdown`) when its source
//! does. Threads talk through two bounded queues made here: missed flows to the refresher
//! ([`miss_channel`]) and what the watcher and tracer learned (`LEARNED_QUEUE`, 4,096).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;

use pidcap_capture::{CaptureError, Source};
use pidcap_core::{AttributionCache, FragmentMap, NetNsId, Pending, RouteThreads};
use pidcap_sockets::trace::{find_tracefs, SockTracer};
use pidcap_sockets::ProcRoot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, Namespaces};
use crate::inbox::{miss_channel, MissSignal, News};
use crate::namespaces::NamespaceCapture;
use crate::pipeline::{End, Pipeline};
use crate::process_side::facts::ProcessFacts;
use crate::process_side::holders::Holders;
use crate::process_side::{trace, watch};
use crate::refresh::Refresher;
use crate::state::DaemonState;
use crate::{fault, Handles};

/// Fragmented datagrams whose first fragment's ports are remembered.
const FRAGMENTED_DATAGRAMS: usize = 4096;

/// Messages from the process watcher and tracer to the refresher that may wait at once.
const LEARNED_QUEUE: usize = 4096;

/// The running threads, to be joined at shutdown.
#[derive(Debug)]
pub struct Threads {
    capture: JoinHandle<Result<End, CaptureError>>,
    refresher: JoinHandle<()>,
    /// The watcher and the tracer, those that run, and the namespace captures'.
    process_side: Vec<JoinHandle<()>>,
}

/// The capture thread's loop, with its own cache, pending buffer and fragment map.
fn pipeline(
    config: &Config,
    source: Source,
    shared: Arc<DaemonState>,
    misses: MissSignal,
    stop: Arc<AtomicBool>,
) -> Pipeline {
    Pipeline {
        source,
        shared,
        misses,
        cache: AttributionCache::new(config.max_flows),
        pending: Pending::new(config.pending_max, config.pending_timeout),
        fragments: FragmentMap::new(FRAGMENTED_DATAGRAMS),
        stop,
        reopen: config.live_capture(),
    }
}

/// The captures inside other namespaces, with `namespaces = all` on a live capture.
fn namespace_capture(
    config: &Config,
    proc: &ProcRoot,
    shared: &Arc<DaemonState>,
    misses: &MissSignal,
    stop: &Arc<AtomicBool>,
) -> Option<NamespaceCapture> {
    let live = config.live_capture()?;
    (config.namespaces == Namespaces::All).then(|| NamespaceCapture {
        proc: proc.clone(),
        live,
        shared: shared.clone(),
        misses: misses.clone(),
        stop: stop.clone(),
        pending: Pending::new(config.pending_max, config.pending_timeout),
    })
}

/// What the process side sends to the refresher: learned sockets, and wake-ups for misses.
struct ToRefresher {
    learned: SyncSender<News>,
    wake: MissSignal,
}

impl Threads {
    /// Starts every thread; `shutdown` is cancelled when capture ends by itself.
    pub fn start(
        handles: Handles,
        stop: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Threads> {
        let Handles {
            config,
            source,
            shared,
            proc,
            netns,
            builder,
            ..
        } = handles;
        let (misses, requests) = miss_channel();
        let (learned_tx, learned) = std::sync::mpsc::sync_channel(LEARNED_QUEUE);
        let to_refresher = ToRefresher {
            learned: learned_tx,
            wake: misses.clone(),
        };
        let mut process_side =
            start_process_side(&config, &proc, netns, &shared, to_refresher, &stop)?;
        if let Some(namespaces) = namespace_capture(&config, &proc, &shared, &misses, &stop) {
            process_side.push(spawn("namespaces", move || namespaces.run())?);
        }
        let refresher = Refresher {
            builder,
            proc,
            netns,
            interval: config.refresh_interval,
            shared: shared.clone(),
            requests,
            learned,
            stop: stop.clone(),
            pass_due: false,
            fork_due: false,
        };
        let refresher = spawn("refresh", move || refresher.run())?;
        let pipeline = pipeline(&config, source, shared, misses, stop);
        let capture = spawn_capture(pipeline, shutdown)?;
        Ok(Threads {
            capture,
            refresher,
            process_side,
        })
    }

    /// Joins every thread (on a blocking thread, never a tokio worker) once `stop` is set;
    /// capture's outcome.
    pub async fn join(self) -> anyhow::Result<End> {
        let joined = tokio::task::spawn_blocking(move || {
            let captured = self.capture.join();
            let _ = self.refresher.join();
            for thread in self.process_side {
                let _ = thread.join();
            }
            captured
        })
        .await?;
        match joined {
            Ok(Ok(end)) => Ok(end),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("capture failed")),
            Err(_) => anyhow::bail!("the capture thread panicked"),
        }
    }
}

/// The capture thread; it ends the daemon (`shutdown`) when its source ends by itself.
fn spawn_capture(
    pipeline: Pipeline,
    shutdown: CancellationToken,
) -> std::io::Result<JoinHandle<Result<End, CaptureError>>> {
    spawn("capture", move || {
        let result = pipeline.run();
        shutdown.cancel();
        result
    })
}

/// Spawns the thread `name` (fault injection points first, in debug builds).
fn spawn<T: Send + 'static>(
    name: &'static str,
    run: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            fault::inject(name);
            run()
        })
}

/// Starts the tracer and the watcher, those that can run; records which do.
fn start_process_side(
    config: &Config,
    proc: &ProcRoot,
    netns: NetNsId,
    shared: &Arc<DaemonState>,
    to: ToRefresher,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let facts = shared.facts().clone();
    let holders = Holders::default();
    let mut threads = Vec::new();
    if config.socket_tracer && config.pcap_file.is_none() {
        let tracer = open_tracer(proc, netns, &facts, shared, &to, stop.clone());
        if let Some(mut tracer) = tracer {
            tracer.route_tracing = config.route_tracing;
            tracer.holders = holders.clone();
            threads.push(spawn("trace", move || tracer.run())?);
        }
    } else {
        info!("socket tracer off (configured, or replaying a file)");
    }
    let watcher = start_watcher(proc, netns, facts, holders, to, stop.clone(), shared)?;
    shared.process_side().watcher = watcher.is_some();
    threads.extend(watcher);
    Ok(threads)
}

/// Starts the process watcher, unless the process-event connector is unavailable (then
/// short-lived processes rely on the refresh and the pending buffer alone; warned once).
fn start_watcher(
    proc: &ProcRoot,
    netns: NetNsId,
    facts: ProcessFacts,
    holders: Holders,
    to: ToRefresher,
    stop: Arc<AtomicBool>,
    shared: &Arc<DaemonState>,
) -> std::io::Result<Option<JoinHandle<()>>> {
    let events = match pidcap_sockets::ProcEvents::open() {
        Ok(events) => events,
        Err(error) => {
            warn!(error = %error, "process-event connector unavailable; short-lived processes are learned by refresh only");
            return Ok(None);
        }
    };
    let watcher = watch::Watcher {
        events,
        proc: proc.clone(),
        netns,
        learned: to.learned,
        wake: to.wake,
        stop,
        facts,
        shared: shared.clone(),
        reported: holders,
        namespaces_told: Default::default(),
        forks: HashMap::new(),
    };
    spawn("watch", move || watcher.run()).map(Some)
}

/// The socket tracer, ready to run; `None` (warned) when tracefs or the perf tracepoints
/// are unavailable (then connections that live a millisecond in older processes may go to
/// unknown).
fn open_tracer(
    proc: &ProcRoot,
    netns: NetNsId,
    facts: &ProcessFacts,
    shared: &Arc<DaemonState>,
    to: &ToRefresher,
    stop: Arc<AtomicBool>,
) -> Option<trace::Tracer> {
    let Some(tracefs) = find_tracefs() else {
        warn!("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing); connections that live a millisecond may go to unknown");
        return None;
    };
    let tracer = match SockTracer::open(&tracefs) {
        Ok(tracer) if tracer.traces_io() => tracer,
        Ok(tracer) => {
            info!("this kernel has no sock_send_length/sock_recv_length tracepoints (Linux < 6.4): the socket tracer claims connects only");
            tracer
        }
        Err(error) => {
            warn!(error = %error, "socket tracepoints unavailable (needs CAP_PERFMON); connections that live a millisecond may go to unknown");
            return None;
        }
    };
    Some(trace::Tracer {
        tracer,
        facts: facts.clone(),
        proc: proc.clone(),
        netns,
        learned: to.learned.clone(),
        wake: to.wake.clone(),
        stop,
        shared: shared.clone(),
        route_tracing: true,
        route_threads: RouteThreads::default(),
        holders: Holders::default(),
    })
}
