#![doc = include_str!("../README.md")]

pub mod access;
pub mod checkpoint;
pub mod clients;
pub mod config;
pub mod facts;
pub mod fault;
pub mod pipeline;
pub mod privileges;
pub mod queries;
pub mod refresh;
pub mod server;
pub mod state;
pub mod trace;
pub mod usage_log;
pub mod watch;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pidcap_capture::Source;
use pidcap_core::{FragmentMap, NetNsId, Pending, ProcessKey};
use pidcap_sockets::trace::{find_tracefs, SockTracer};
use pidcap_sockets::ProcRoot;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::checkpoint::Checkpointer;
use crate::config::Config;
use crate::facts::ProcessFacts;
use crate::pipeline::{End, Pipeline};
use crate::refresh::{miss_channel, Refresher, TableBuilder};
use crate::state::Shared;
use crate::usage_log::UsageLog;

/// How long connection tasks get to finish at shutdown.
const GRACE: Duration = Duration::from_secs(2);

/// Everything opened before the daemon starts serving.
#[derive(Debug)]
pub struct Opened {
    pub config: Config,
    pub source: Source,
    pub shared: Arc<Shared>,
    pub proc: ProcRoot,
    pub netns: NetNsId,
    /// The builder that made the first table; it carries on refreshing.
    pub builder: TableBuilder,
    /// The query socket's group (its members see every process), if it exists.
    pub socket_group: Option<access::SocketGroup>,
}

/// Runs until `shutdown` is cancelled (signal) or the replayed file ends. Returns an error
/// if capture failed; the final usage-log flush happens either way.
pub async fn serve(
    opened: Opened,
    listener: UnixListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Opened {
        config,
        source,
        shared,
        proc,
        netns,
        builder,
        socket_group,
    } = opened;
    let stop = Arc::new(AtomicBool::new(false));
    let (misses, requests) = miss_channel();
    let (learned_tx, learned) = std::sync::mpsc::sync_channel(LEARNED_QUEUE);
    let facts = shared.facts.clone();
    let tracer = if config.socket_tracer && config.pcap_file.is_none() {
        let tracer = open_tracer(
            &proc,
            netns,
            &facts,
            &shared,
            learned_tx.clone(),
            misses.clone(),
            stop.clone(),
        );
        match tracer {
            Some(mut tracer) => {
                tracer.route_tracing = config.route_tracing;
                let thread = std::thread::Builder::new().name("trace".into());
                Some(thread.spawn(move || {
                    fault::inject("trace");
                    tracer.run()
                })?)
            }
            None => None,
        }
    } else {
        info!("socket tracer off (configured, or replaying a file)");
        None
    };
    let watcher = start_watcher(
        &proc,
        netns,
        facts,
        learned_tx,
        misses.clone(),
        stop.clone(),
        &shared,
    )?;
    shared.process_side().watcher = watcher.is_some();
    let refresher = Refresher {
        builder,
        proc,
        netns,
        interval: config.refresh_interval,
        shared: shared.clone(),
        requests,
        learned,
        stop: stop.clone(),
    };
    let refresher = std::thread::Builder::new()
        .name("refresh".into())
        .spawn(move || {
            fault::inject("refresh");
            refresher.run()
        })?;
    let pipeline = Pipeline {
        source,
        shared: shared.clone(),
        misses,
        pending: Pending::new(config.pending_max, config.pending_timeout),
        fragments: FragmentMap::new(FRAGMENTED_DATAGRAMS),
        stop: stop.clone(),
        reopen: config.live_capture(),
    };
    let capture_done = shutdown.clone();
    let capture = std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || {
            fault::inject("capture");
            let result = pipeline.run();
            capture_done.cancel();
            result
        })?;

    let tasks = TaskTracker::new();
    let log = Arc::new(Mutex::new(open_usage_log(&config, &shared)));
    // After capture, refresher, watcher and tracer have opened their fds: the client limit
    // is taken from what remains.
    let access = server::Access::new(
        socket_group,
        config.max_clients,
        server::Timeouts::new(config.client_idle_timeout),
    );
    tasks.spawn(server::run(
        listener,
        shared.clone(),
        access,
        shutdown.clone(),
        tasks.clone(),
    ));
    tasks.spawn(log_task(
        shared.clone(),
        log.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(rate_task(shared.clone(), shutdown.clone()));
    tasks.spawn(watchdog_task(shared.clone(), shutdown.clone()));
    tasks.spawn(signal_task(log.clone(), shutdown.clone()));
    notify_ready();
    info!(interface = %config.interface, socket = %config.socket.display(), usage_log = %config.usage_log.display(), "pidcapd ready");

    shutdown.cancelled().await;
    stop.store(true, Ordering::Relaxed);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let captured = tokio::task::spawn_blocking(move || capture.join()).await?;
    let _ = refresher.join();
    for thread in [watcher, tracer].into_iter().flatten() {
        let _ = thread.join();
    }
    tasks.close();
    if tokio::time::timeout(GRACE, tasks.wait()).await.is_err() {
        warn!("some query connections did not close in time");
    }
    let flushed = write_usage(&shared, &mut lock(&log), config.retention);
    if !flushed {
        error!(path = %config.usage_log.display(), "final usage-log write failed; the counts since the last successful write are lost");
    }
    match captured {
        Ok(Ok(End::EndOfFile)) => info!("end of the replayed file"),
        Ok(Ok(End::Stopped)) => info!("stopped"),
        Ok(Err(e)) => return Err(anyhow::Error::new(e).context("capture failed")),
        Err(_) => anyhow::bail!("the capture thread panicked"),
    }
    Ok(())
}

/// Exited processes kept apart while the usage log cannot be written (a few hundred bytes
/// each); beyond, the oldest are folded into `unknown` (`Ledger::bound_exited`).
pub const MAX_EXITED_UNLOGGED: usize = 50_000;

/// Fragmented datagrams whose first fragment's ports are remembered.
const FRAGMENTED_DATAGRAMS: usize = 4096;

/// Messages from the process watcher to the refresher that may wait at once.
const LEARNED_QUEUE: usize = 4096;

/// Starts the process watcher, unless the process-event connector is unavailable (then
/// short-lived processes rely on the refresh and the pending buffer alone; warned once).
fn start_watcher(
    proc: &ProcRoot,
    netns: NetNsId,
    facts: ProcessFacts,
    learned: std::sync::mpsc::SyncSender<watch::Learned>,
    wake: refresh::MissSignal,
    stop: Arc<AtomicBool>,
    shared: &Arc<Shared>,
) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
    let events = match pidcap_sockets::ProcEvents::open() {
        Ok(events) => events,
        Err(error) => {
            warn!(error = %error, "process-event connector unavailable; short-lived processes are learnt by refresh only");
            return Ok(None);
        }
    };
    let watcher = watch::Watcher {
        events,
        proc: proc.clone(),
        netns,
        learned,
        wake,
        stop,
        facts,
        shared: shared.clone(),
    };
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            fault::inject("watch");
            watcher.run()
        })
        .map(Some)
}

/// Starts the socket tracer, unless tracefs or the perf tracepoints are unavailable (then
/// connections that live a millisecond in older processes may go to unknown; warned once).
/// The socket tracer, ready to run; `None` (warned) when the kernel's tracepoints cannot be
/// read.
fn open_tracer(
    proc: &ProcRoot,
    netns: NetNsId,
    facts: &ProcessFacts,
    shared: &Arc<Shared>,
    learned: std::sync::mpsc::SyncSender<watch::Learned>,
    wake: refresh::MissSignal,
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
        learned,
        wake,
        stop,
        shared: shared.clone(),
        route_tracing: true,
        route_threads: HashMap::new(),
    })
}

fn lock(log: &Mutex<UsageLog>) -> std::sync::MutexGuard<'_, UsageLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes one usage-log batch; on success the ledger counts it as logged and forgets what
/// retention allows. Returns whether the write succeeded.
pub fn write_usage(shared: &Shared, log: &mut UsageLog, retention: Duration) -> bool {
    let now = Instant::now();
    let batch = shared.ledger().log_batch(now);
    let bytes = usage_log::render(&batch, SystemTime::now(), log.daemon_start());
    if log.append(&bytes).is_err() {
        let folded = shared.ledger().bound_exited(MAX_EXITED_UNLOGGED);
        if folded > 0 {
            warn!(folded, "usage log still unwritable: the oldest exited processes' counts were folded into unknown to bound memory");
        }
        return false;
    }
    let mut ledger = shared.ledger();
    ledger.commit_log(&batch, now);
    ledger.expire(now, retention);
    let path = log.path().to_path_buf();
    if let Some(checkpoints) = log.checkpoints.as_mut() {
        checkpoints.save(&ledger, &path);
    }
    true
}

/// The usage log, its torn last line (if a SIGKILL left one) cut away; for live capture,
/// with checkpoints in the state directory, whose last one is restored into the ledger first.
fn open_usage_log(config: &Config, shared: &Shared) -> UsageLog {
    match usage_log::repair_torn_tail(&config.usage_log) {
        Ok(0) => {}
        Ok(cut) => {
            warn!(path = %config.usage_log.display(), bytes = cut, "cut a torn last line off the usage log (the daemon was killed while writing it)")
        }
        Err(error) => {
            warn!(path = %config.usage_log.display(), error = %error, "cannot check the usage log's last line")
        }
    }
    let mut log = UsageLog::new(config.usage_log.clone(), config.log_fsync);
    if config.pcap_file.is_none() {
        let checkpoints = Checkpointer::new(config.state_dir.clone());
        restore_counters(&checkpoints, config, shared);
        log.checkpoints = Some(checkpoints);
    }
    log
}

/// Continues the totals of processes that still run from the last checkpoint.
fn restore_counters(checkpoints: &Checkpointer, config: &Config, shared: &Shared) {
    let proc = ProcRoot::default();
    let alive = |key: ProcessKey| proc.start_time(key.pid).ok() == Some(key.start_time);
    match checkpoints.restore(&mut shared.ledger(), &config.usage_log, alive) {
        Ok(Some(r)) => info!(
            processes = r.processes,
            exited = r.gone,
            log_lines_after = r.tail_lines,
            "restarted: totals continue from the last checkpoint"
        ),
        Ok(None) => {}
        Err(error) => warn!(error = %error, "counter checkpoint not used; totals start from zero"),
    }
}

async fn log_task(
    shared: Arc<Shared>,
    log: Arc<Mutex<UsageLog>>,
    config: Config,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(config.log_interval);
    ticker.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (shared, log) = (shared.clone(), log.clone());
        let retention = config.retention;
        let _ =
            tokio::task::spawn_blocking(move || write_usage(&shared, &mut lock(&log), retention))
                .await;
    }
}

async fn rate_task(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => shared.ledger().sample_rates(Instant::now()),
        }
    }
}

/// Sends systemd keep-alives only while the capture loop is going round.
async fn watchdog_task(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = state::stale_after();
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let stale = shared.stale_workers(Instant::now(), period);
        if stale.is_empty() {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            for (thread, since) in stale {
                warn!(
                    thread,
                    stale_ms = since.as_millis() as u64,
                    "a daemon thread is not going round its loop; withholding the watchdog keep-alive"
                );
            }
        }
    }
}

async fn signal_task(log: Arc<Mutex<UsageLog>>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = term.recv() => { info!(signal = "SIGTERM", "shutting down"); shutdown.cancel(); }
            _ = int.recv() => { info!(signal = "SIGINT", "shutting down"); shutdown.cancel(); }
            _ = hup.recv() => lock(&log).reopen(),
        }
    }
}

fn notify_ready() {
    if let Err(error) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %error, "cannot notify systemd");
    }
}

/// Binds the query socket: creates its directory, refuses to steal the socket of a running
/// daemon, removes a stale one, gives it to `gid` (if any) and sets `mode`. The socket is
/// created inaccessible to others and only then opened up, so it is never more open than
/// `mode`. Warns when its directory keeps out the users `mode` lets in.
pub fn bind_socket(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another pidcapd is already answering on {}", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let listener = bind_private(path)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    listener.set_nonblocking(true)?;
    if let Some(dir) = dir {
        warn_if_unreachable(dir, mode);
    }
    Ok(listener)
}

/// Binds with umask 077, so the socket starts as 0700. Called before any other thread
/// exists (the umask is per process).
fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    // SAFETY: umask only swaps the process's file-mode mask; it cannot fail.
    let old = unsafe { libc::umask(0o077) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    bound
}

/// A socket of mode 0666 in a directory of mode 0750 is still closed to other users: say so.
fn warn_if_unreachable(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let dir_mode = meta.permissions().mode();
    if mode & 0o002 != 0 && dir_mode & 0o001 == 0 {
        warn!(
            dir = %dir.display(),
            dir_mode = format!("{:04o}", dir_mode & 0o7777),
            "the query socket is open to every user but its directory is not searchable by them; \
             make the directory mode 0755 (RuntimeDirectoryMode= in the unit)"
        );
    }
}
