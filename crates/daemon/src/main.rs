//! `pidcapd`: the binary. Owns configuration, the log subscriber, exit codes and the runtime.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use pidcap_capture::{CaptureError, Source};
use pidcap_core::NetNsId;
use pidcap_sockets::ProcRoot;
use pidcapd::config::{Config, Flags, Namespaces};
use pidcapd::query::access;
use pidcapd::refresh::{TableBuilder, FULL_SCAN_EVERY};
use pidcapd::state::DaemonState;
use pidcapd::{bind_socket, privileges, serve, Handles};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// sysexits.h: a usage or configuration error.
const EX_CONFIG: u8 = 64;
/// sysexits.h: missing permissions.
const EX_NOPERM: u8 = 77;

/// A startup failure with its exit code.
struct Fatal(u8, String);

fn main() -> ExitCode {
    match start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(code, message)) => {
            eprintln!("pidcapd: {message}");
            ExitCode::from(code)
        }
    }
}

fn start() -> Result<(), Fatal> {
    let Some(config) = load_config()? else {
        return Ok(()); // --help or --version
    };
    init_tracing();
    pidcapd::fault::exit_on_panic();
    if config.pcap_file.is_none() {
        privileges::check().map_err(|m| Fatal(EX_NOPERM, m.to_string()))?;
    }
    let all_namespaces = config.namespaces == Namespaces::All;
    if all_namespaces {
        privileges::check_namespace_capture().map_err(|m| Fatal(EX_NOPERM, m))?;
    }
    if config.socket_tracer && config.pcap_file.is_none() {
        // Mounts tracefs where it is not (a container, a minimal host), which needs
        // CAP_SYS_ADMIN: only before the capabilities are narrowed.
        let _ = pidcap_sockets::trace::find_tracefs();
    }
    let (handles, listener) = open(config)?;
    narrow_privileges(all_namespaces);
    run(handles, listener)
}

/// Flags, then the configuration file; `None` when the flags asked for help or the version
/// (printed). Nothing is opened yet: any problem exits 64.
fn load_config() -> Result<Option<Config>, Fatal> {
    let flags = match Flags::try_parse() {
        Ok(flags) => flags,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return Ok(None);
        }
        Err(e) => {
            let message = e.to_string();
            let message = message.trim_end().trim_start_matches("error: ");
            return Err(Fatal(EX_CONFIG, message.to_string()));
        }
    };
    Config::load(flags)
        .map(Some)
        .map_err(|e| Fatal(EX_CONFIG, e.to_string()))
}

/// Opens everything that needs privileges before they are narrowed: the capture, the first
/// socket table and the query socket.
fn open(config: Config) -> Result<(Handles, std::os::unix::net::UnixListener), Fatal> {
    let socket_group =
        access::configured_group(config.socket_group.as_deref(), config.socket_group_required)
            .map_err(|e| Fatal(EX_CONFIG, format!("socket_group: {e}")))?;
    let source = open_source(&config)?;
    let proc = ProcRoot::default();
    let netns = proc.self_netns().map_err(|e| {
        Fatal(
            1,
            format!("cannot read this process's network namespace: {e}"),
        )
    })?;
    let (builder, shared) = first_table(&proc, netns, &source)?;
    {
        let mut info = shared.capture_info();
        info.snaplen = match config.pcap_file {
            Some(_) => pidcap_proto::MAX_SNAPLEN,
            None => config.snaplen.unsigned_abs(),
        };
        info.pending_timeout = config.pending_timeout;
    }
    let gid = socket_group.as_ref().map(|g| g.gid);
    let listener = bind_socket(&config.socket, config.socket_mode, gid).map_err(|e| {
        Fatal(
            1,
            format!("cannot listen on {}: {e:#}", config.socket.display()),
        )
    })?;
    let handles = Handles {
        config,
        source,
        shared,
        proc,
        netns,
        builder,
        socket_group,
    };
    Ok((handles, listener))
}

/// The first socket table, read before capture starts, and the state it seeds; the builder
/// carries on refreshing.
fn first_table(
    proc: &ProcRoot,
    netns: NetNsId,
    source: &Source,
) -> Result<(TableBuilder, Arc<DaemonState>), Fatal> {
    let mut builder = TableBuilder::new(proc.clone(), FULL_SCAN_EVERY);
    let table = builder
        .build(netns, 1, Instant::now())
        .map_err(|e| Fatal(1, format!("first socket-table refresh failed: {e:#}")))?
        .table
        .unwrap_or_default();
    let shared = DaemonState::new(table, Instant::now());
    {
        let mut info = shared.capture_info();
        info.origin = source.origin().to_string();
        info.link_name = source.link_name();
        info.dlt = source.datalink();
    }
    Ok((builder, shared))
}

/// Serves on a tokio runtime until a signal or the end of a replayed file; removes the
/// query socket after.
fn run(handles: Handles, listener: std::os::unix::net::UnixListener) -> Result<(), Fatal> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("pidcapd-rt")
        .build()
        .map_err(|e| Fatal(1, format!("cannot start the runtime: {e}")))?;
    let socket_path = handles.config.socket.clone();
    let result = runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        serve(handles, listener, CancellationToken::new()).await
    });
    let _ = std::fs::remove_file(&socket_path);
    result.map_err(|e| Fatal(1, format!("{e:#}")))
}

/// Keeps only the capabilities the daemon still uses (see `privileges::KEPT`) and drops the
/// rest. It runs before the first thread starts, since capabilities are per thread and every
/// thread inherits its creator's: capture is open and the socket bound by now, and the
/// connector and tracer that `serve` opens need only kept capabilities.
fn narrow_privileges(all_namespaces: bool) {
    let extra = privileges::NAMESPACE_CAPTURE;
    let extra_mask = if all_namespaces { 1 << extra.bit } else { 0 };
    let narrowed = match privileges::narrow(extra_mask) {
        Ok(narrowed) => narrowed,
        Err(e) => {
            error!(error = %e, "could not drop unneeded capabilities; running with those it started with");
            return;
        }
    };
    let (before, after) = (narrowed.before, narrowed.after);
    for cap in privileges::KEPT.iter().chain([&extra]) {
        if after.effective & 1 << cap.bit != 0 {
            info!(capability = cap.name, why = cap.why, "capability kept");
        }
    }
    info!(
        dropped = (before.permitted & !after.permitted).count_ones(),
        bounding = ?privileges::names(after.bounding),
        inheritable = after.inheritable,
        ambient = after.ambient,
        "capabilities narrowed"
    );
    if narrowed.threads > 1 {
        warn!(
            threads = narrowed.threads,
            "threads started before narrowing keep their capabilities"
        );
    }
}

fn open_source(config: &Config) -> Result<Source, Fatal> {
    let opened = match (&config.pcap_file, config.live_capture()) {
        (Some(path), _) => Source::open_file(path, config.filter.as_deref()),
        (None, Some(live)) => Source::open_live(&live),
        (None, None) => unreachable!("live_capture is None only for a file"),
    };
    opened.map_err(|e| {
        let code = match &e {
            CaptureError::BadFilter { .. }
            | CaptureError::NoSuchDevice { .. }
            | CaptureError::File { .. } => EX_CONFIG,
            CaptureError::PermissionDenied { .. } => EX_NOPERM,
            _ => 1,
        };
        Fatal(code, e.to_string())
    })
}

/// Logs go to journald when systemd started us (JOURNAL_STREAM is set), else to stderr.
/// The level comes from RUST_LOG (default `info`).
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .init(),
    }
}
