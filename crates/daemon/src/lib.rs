#![doc = include_str!("../README.md")]

pub mod config;
pub mod containers;
pub mod fault;
pub mod inbox;
pub mod metrics;
pub mod namespaces;
pub mod persist;
pub mod pipeline;
pub mod privileges;
pub mod process_side;
pub mod query;
pub mod refresh;
pub mod state;
pub mod tap;
pub mod threads;
pub mod users;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pidcap_capture::Source;
use pidcap_core::{NetNsId, ProcessKey};
use pidcap_sockets::ProcRoot;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::persist::checkpoint::Checkpointer;
use crate::persist::usage_log;
use crate::persist::usage_log::UsageLog;
use crate::pipeline::End;
use crate::query::{access, server};
use crate::refresh::TableBuilder;
use crate::state::DaemonState;
use crate::threads::Threads;

/// How long connection tasks get to finish at shutdown.
const GRACE: Duration = Duration::from_secs(2);

/// The handles opened with full privileges, before they are narrowed and the daemon serves.
#[derive(Debug)]
pub struct Handles {
    pub config: Config,
    pub source: Source,
    pub shared: Arc<DaemonState>,
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
    handles: Handles,
    listener: UnixListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let Handles {
        config,
        shared,
        socket_group,
        ..
    } = &handles;
    let (config, shared, socket_group) = (config.clone(), shared.clone(), socket_group.clone());
    // Before any thread starts: an address in use ends the daemon here, exit 1.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let threads = Threads::start(handles, stop.clone(), shutdown.clone())?;
    let log = Arc::new(Mutex::new(open_usage_log(&config, &shared)));
    // After capture, refresher, watcher and tracer have opened their fds: the client limit
    // is taken from what remains.
    let access = server::Access::new(
        socket_group,
        config.max_clients,
        server::Timeouts::new(config.client_idle_timeout),
    );
    let tasks = spawn_tasks(&config, &shared, &log, listener, access, &shutdown);
    if let Some(listener) = metrics_listener {
        let exporter = Arc::new(metrics::Exporter::new(shared.clone(), config.metrics_top));
        tasks.spawn(metrics::http::run(
            listener,
            exporter,
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    notify_ready();
    info!(interface = %config.interface, socket = %config.socket.display(), usage_log = %config.usage_log.display(), "pidcapd ready");

    shutdown.cancelled().await;
    stop.store(true, Ordering::Relaxed);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let captured = threads.join().await;
    wind_down(tasks, &shared, &log, &config).await;
    match captured? {
        End::EndOfFile => info!("end of the replayed file"),
        End::Stopped => info!("stopped"),
    }
    Ok(())
}

/// After the threads have stopped: gives query connections [`GRACE`] to finish, then writes
/// the last usage-log lines.
async fn wind_down(
    tasks: TaskTracker,
    shared: &DaemonState,
    log: &Mutex<UsageLog>,
    config: &Config,
) {
    tasks.close();
    if tokio::time::timeout(GRACE, tasks.wait()).await.is_err() {
        warn!("some query connections did not close in time");
    }
    if !write_usage(shared, &mut lock(log), config.retention) {
        error!(path = %config.usage_log.display(), "final usage-log write failed; the counts since the last successful write are lost");
    }
}

/// The tokio tasks: the query server, the usage-log writer, rates, watchdog and signals.
fn spawn_tasks(
    config: &Config,
    shared: &Arc<DaemonState>,
    log: &Arc<Mutex<UsageLog>>,
    listener: UnixListener,
    access: server::Access,
    shutdown: &CancellationToken,
) -> TaskTracker {
    let tasks = TaskTracker::new();
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
    tasks
}

/// Exited processes kept apart while the usage log cannot be written (a few hundred bytes
/// each); beyond, the oldest are folded into `unknown` (`Ledger::bound_exited`).
pub const MAX_EXITED_UNLOGGED: usize = 50_000;

fn lock(log: &Mutex<UsageLog>) -> std::sync::MutexGuard<'_, UsageLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes one usage-log batch; on success the ledger counts it as logged and forgets what
/// retention allows. Returns whether the write succeeded.
pub fn write_usage(shared: &DaemonState, log: &mut UsageLog, retention: Duration) -> bool {
    let now = Instant::now();
    let batch = shared.ledger().log_batch(now);
    let bytes = usage_log::render(
        &batch,
        SystemTime::now(),
        log.daemon_start(),
        crate::query::queries::Names::of(shared),
    );
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
fn open_usage_log(config: &Config, shared: &DaemonState) -> UsageLog {
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
fn restore_counters(checkpoints: &Checkpointer, config: &Config, shared: &DaemonState) {
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
    shared: Arc<DaemonState>,
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

async fn rate_task(shared: Arc<DaemonState>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            // tokio's clock (the real one in the daemon, the paused one in tests).
            _ = ticker.tick() => shared.ledger().sample_rates(tokio::time::Instant::now().into_std()),
        }
    }
}

/// Sends systemd keep-alives only while the capture loop is going round.
async fn watchdog_task(shared: Arc<DaemonState>, shutdown: CancellationToken) {
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

#[cfg(test)]
mod tests {
    use pidcap_core::{Credit, SocketTable, Tally, UnknownReason, Verdict};

    use super::*;
    use crate::config::Flags;

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
    }

    /// Counts `bytes` received by nobody into the ledger (the unknown bucket is logged).
    fn count_unknown(shared: &DaemonState, bytes: u32) {
        let mut tally = Tally::default();
        let verdict = Verdict {
            tx: None,
            rx: Some(Credit::Unknown(UnknownReason::NoSocket)),
        };
        tally.record(&verdict, bytes);
        shared.ledger().merge(&mut tally, &SocketTable::default());
    }

    /// Waits (in real time, bounded) for the blocking write the task started.
    fn wait_for_lines(path: &Path, n: usize) -> usize {
        for _ in 0..500 {
            if lines(path) >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        lines(path)
    }

    /// The rate task samples once a second: a second's bytes become that second's rate, and
    /// an idle second brings it back to zero.
    #[tokio::test(start_paused = true)]
    async fn the_rate_task_turns_each_second_into_a_rate() {
        let shared = DaemonState::new(
            SocketTable::default(),
            tokio::time::Instant::now().into_std(),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rate_task(shared.clone(), shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await; // after the first, immediate tick
        count_unknown(&shared, 3_000);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rx = shared.ledger().unknown().rate.rx_bps;
        assert!(
            (rx - 3_000.0).abs() < 1.0,
            "3,000 bytes in one second: {rx} B/s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(shared.ledger().unknown().rate.rx_bps, 0.0, "an idle second");
        shutdown.cancel();
        task.await.unwrap();
    }

    /// The usage-log task writes once per `log_interval` on the (paused) tokio clock, not
    /// before the first interval, and stops when the daemon shuts down.
    #[tokio::test(start_paused = true)]
    async fn the_log_task_writes_once_per_interval_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.jsonl");
        // An empty configuration file: the machine's own /etc/pidcap is not read.
        let file = dir.path().join("pidcap.toml");
        std::fs::write(&file, "").unwrap();
        let config = Config::load(Flags {
            usage_log: Some(path.clone()),
            state_dir: Some(dir.path().join("state")),
            log_interval: Some("10s".into()),
            config: Some(file),
            ..Flags::default()
        })
        .unwrap();
        let shared = DaemonState::new(SocketTable::default(), Instant::now());
        let log = Arc::new(Mutex::new(UsageLog::new(path.clone(), false)));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(log_task(shared.clone(), log, config, shutdown.clone()));
        count_unknown(&shared, 100);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(lines(&path), 0, "nothing before the first interval");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(wait_for_lines(&path, 1), 1, "one line at 10 s");
        count_unknown(&shared, 50);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(wait_for_lines(&path, 2), 2, "one more at 20 s");
        shutdown.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(lines(&path), 2, "nothing after shutdown");
    }
}
