//! `refresh`: times one full socket-table refresh of pidcapd against `ss -tunap` on the
//! same state, side by side, alternating in each round; then the parts of a refresh
//! (`SockDiag::read_sockets_into` vs `ProcRoot::read_sockets`, `OwnerScanner::scan_all` vs
//! `ProcRoot::scan_socket_owners`), and the targeted resolution of one missed flow
//! (`SockDiag::find`, then `OwnerScanner::resolve` for the inode it names).
//!
//! Prints one line per figure: `figure=NAME median_ms=… min_ms=… max_ms=… runs=…` and
//! for the side-by-side pair also `cpu_median_ms=…` (user+system CPU: of this process for
//! the in-process refresh, of the `ss` child for `ss`). Run it in the network namespace
//! whose sockets you want counted (bench/run uses its own).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use pidcap_bench::{cpu_time, ms, summarize};
use pidcap_core::{NetNsId, SocketEntry};
use pidcap_sockets::{OwnerScan, OwnerScanner, ProcRoot, SockDiag};
use pidcap_wire::IpProto;

/// Times pidcapd's refresh against `ss -tunap`; see the module docs.
#[derive(Debug, Parser)]
struct Args {
    /// Side-by-side rounds (each: one refresh, one `ss -tunap`).
    #[arg(long, default_value_t = 11)]
    rounds: usize,
    /// Runs of each part and of the targeted lookup.
    #[arg(long, default_value_t = 100)]
    lookups: usize,
    /// Path of `ss`.
    #[arg(long, default_value = "ss")]
    ss: String,
}

/// Wall and CPU time of one measured call.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn measure<T>(who: libc::c_int, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<Sample> {
    let (cpu0, t0) = (cpu_time(who), Instant::now());
    f()?;
    Ok(Sample {
        wall: t0.elapsed(),
        cpu: cpu_time(who).saturating_sub(cpu0),
    })
}

fn run_ss(ss: &str) -> anyhow::Result<()> {
    let status = Command::new(ss)
        .arg("-tunap")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "{ss} -tunap failed: {status}");
    Ok(())
}

fn print(name: &str, samples: &[Sample]) {
    let walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    let cpus: Vec<Duration> = samples.iter().map(|s| s.cpu).collect();
    let (Some(wall), Some(cpu)) = (summarize(&walls), summarize(&cpus)) else {
        return;
    };
    println!(
        "figure={name} median_ms={:.3} min_ms={:.3} max_ms={:.3} runs={} cpu_median_ms={:.3}",
        ms(wall.median),
        ms(wall.min),
        ms(wall.max),
        wall.runs,
        ms(cpu.median)
    );
}

/// Full refresh (`pidcapd::refresh::build_table`) against `ss -tunap`, alternating.
fn side_by_side(args: &Args, proc: &ProcRoot, netns: NetNsId) -> anyhow::Result<()> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut sockets = 0;
    for round in 0..args.rounds {
        let one = || {
            let (table, _) = pidcapd::refresh::build_table(proc, netns, 1)?;
            sockets = table.sockets().len();
            Ok(())
        };
        let ss = || run_ss(&args.ss);
        // Alternate which goes first, so neither always runs on a warmer cache.
        if round % 2 == 0 {
            ours.push(measure(libc::RUSAGE_SELF, one)?);
            theirs.push(measure(libc::RUSAGE_CHILDREN, ss)?);
        } else {
            theirs.push(measure(libc::RUSAGE_CHILDREN, ss)?);
            ours.push(measure(libc::RUSAGE_SELF, one)?);
        }
    }
    println!("sockets_in_table={sockets}");
    print("refresh_full", &ours);
    print("ss_tunap", &theirs);
    Ok(())
}

fn repeat(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<Sample>> {
    (0..n).map(|_| measure(libc::RUSAGE_SELF, &mut f)).collect()
}

/// The parts of a refresh: socket tables by netlink and by `/proc/net` text, owner scans.
fn parts(args: &Args, proc: &ProcRoot, netns: NetNsId) -> anyhow::Result<()> {
    let n = args.lookups.clamp(1, 20);
    let mut diag = SockDiag::open()?;
    let mut out = Vec::new();
    print(
        "sockets_sock_diag",
        &repeat(n, || {
            out.clear();
            Ok(diag.read_sockets_into(netns, &mut out)?)
        })?,
    );
    println!("sockets_listed={}", out.len());
    print(
        "sockets_proc_net",
        &repeat(n, || Ok(proc.read_sockets(netns).map(drop)?))?,
    );
    print(
        "owners_scan_socket_owners",
        &repeat(n, || Ok(proc.scan_socket_owners().map(drop)?))?,
    );
    let mut scanner = OwnerScanner::open(proc)?;
    print(
        "owners_scanner_scan_all",
        &repeat(n, || Ok(scanner.scan_all().map(drop)?))?,
    );
    Ok(())
}

/// Bound UDP sockets on 127.0.0.1 from the dump: targets of the targeted lookups.
fn udp_targets(entries: &[SocketEntry]) -> Vec<&SocketEntry> {
    entries
        .iter()
        .filter(|e| e.proto == IpProto::Udp && e.local.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST))
        .collect()
}

/// A miss resolved without a full refresh: `SockDiag::find` for the flow's 4-tuple, then
/// `OwnerScanner::resolve` for the inode it names. Returns whether a holder was found.
fn resolve_one(
    diag: &mut SockDiag,
    scanner: &mut OwnerScanner,
    local: SocketAddr,
    netns: NetNsId,
) -> anyhow::Result<bool> {
    let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);
    let Some(entry) = diag.find(IpProto::Udp, local, remote, netns)? else {
        return Ok(false);
    };
    let mut into = OwnerScan::default();
    let stats = scanner.resolve(&[entry.inode], &[entry.uid], &mut into)?;
    Ok(stats.found == 1)
}

/// Targeted resolution: `find` alone on one socket; `find` + `resolve` for the socket of the
/// newest holder (a new connection's usual case) and for sockets spread over all holders
/// (one different socket per run: the holder's age is anywhere).
fn targeted(args: &Args, proc: &ProcRoot, netns: NetNsId) -> anyhow::Result<()> {
    let mut diag = SockDiag::open()?;
    let mut scanner = OwnerScanner::open(proc)?;
    let mut all = Vec::new();
    diag.read_sockets_into(netns, &mut all)?;
    let targets = udp_targets(&all);
    if targets.is_empty() {
        println!("figure=miss_find skipped=no_sockets");
        return Ok(());
    }
    let local = targets[targets.len() / 4].local;
    let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);
    let mut found = 0;
    let samples = repeat(args.lookups, || {
        found += usize::from(diag.find(IpProto::Udp, local, remote, netns)?.is_some());
        Ok(())
    })?;
    anyhow::ensure!(
        found == args.lookups,
        "find missed {local}: {found}/{}",
        args.lookups
    );
    print("miss_find", &samples);

    let owners = scanner.scan_all()?;
    let newest = targets
        .iter()
        .filter_map(|e| {
            Some((
                owners.holders.get(&e.inode)?.iter().map(|k| k.pid).max()?,
                e.local,
            ))
        })
        .max()
        .map(|(_, local)| local)
        .unwrap_or(local);
    let mut resolved = 0;
    let samples = repeat(args.lookups, || {
        resolved += usize::from(resolve_one(&mut diag, &mut scanner, newest, netns)?);
        Ok(())
    })?;
    println!("miss_resolve_newest_found={resolved}/{}", args.lookups);
    print("miss_find_resolve_newest", &samples);

    let step = (targets.len() / args.lookups.max(1)).max(1);
    let mut spread = targets.iter().step_by(step).map(|e| e.local).cycle();
    let mut resolved = 0;
    let samples = repeat(args.lookups, || {
        let local = spread.next().unwrap_or(local);
        resolved += usize::from(resolve_one(&mut diag, &mut scanner, local, netns)?);
        Ok(())
    })?;
    println!("miss_resolve_spread_found={resolved}/{}", args.lookups);
    print("miss_find_resolve_spread", &samples);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let proc = ProcRoot::default();
    let netns = proc.self_netns()?;
    // Warm-up: page in the code and the kernel's dentries once, for both tools.
    pidcapd::refresh::build_table(&proc, netns, 0)?;
    run_ss(&args.ss)?;
    side_by_side(&args, &proc, netns)?;
    parts(&args, &proc, netns)?;
    targeted(&args, &proc, netns)?;
    Ok(())
}
