//! `pidcap-accuracy`: runs every accuracy scenario against the real `pidcapd` and prints how
//! much traffic it credited to the right process, to a wrong one and to `unknown`, as a
//! markdown table (also written to `target/accuracy/results.md`).
//!
//! Exit status: 0 when every scenario ran (targets met or not: this reports), 1 when a
//! scenario could not run, 2 on bad usage or without root.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use pidcap_e2e::accuracy::contention::Hogs;
use pidcap_e2e::accuracy::measure::Status;
use pidcap_e2e::accuracy::{report, scenarios, Outcome, Size};

type Scenario = (&'static str, Box<dyn Fn() -> Outcome>);

fn scenarios(size: Size) -> Vec<Scenario> {
    vec![
        (
            "long-lived",
            Box::new(move || scenarios::long_lived_tcp(size)),
        ),
        (
            "short-lived",
            Box::new(move || scenarios::short_lived_tcp(size)),
        ),
        ("udp", Box::new(move || scenarios::udp(size))),
        ("ping", Box::new(move || scenarios::ping(size))),
        ("raw", Box::new(scenarios::raw_ip)),
        ("sctp", Box::new(scenarios::sctp)),
        ("loopback-pair", Box::new(scenarios::loopback_pair)),
        ("veth", Box::new(move || scenarios::veth(size))),
        ("bridge", Box::new(move || scenarios::bridge(size))),
        ("nat", Box::new(move || scenarios::nat(size))),
        (
            "container-loopback",
            Box::new(move || scenarios::container_loopback(size)),
        ),
        ("churn", Box::new(move || scenarios::churn(size))),
        (
            "churn-one-address",
            Box::new(move || scenarios::churn_one_address(size)),
        ),
        ("port-reuse", Box::new(move || scenarios::port_reuse(size))),
        (
            "port-reuse-udp",
            Box::new(move || scenarios::port_reuse_udp(size)),
        ),
        (
            "shared-after-fork",
            Box::new(move || scenarios::shared_after_fork(size)),
        ),
        ("af-packet", Box::new(scenarios::af_packet)),
        (
            "parallel",
            Box::new(move || scenarios::parallel_flows(size)),
        ),
        (
            "udp-queries",
            Box::new(move || scenarios::udp_queries(size)),
        ),
    ]
}

const USAGE: &str = "usage: pidcap-accuracy [--quick] [--contention] [--only NAME[,NAME…]]\n\
    names: long-lived short-lived udp ping raw sctp loopback-pair veth bridge nat \
    container-loopback churn churn-one-address port-reuse \
    port-reuse-udp shared-after-fork af-packet parallel udp-queries";

fn main() {
    let mut size = Size::Full;
    let mut only: Option<Vec<String>> = None;
    let mut contention = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => size = Size::Quick,
            "--contention" => contention = true,
            "--only" => match args.next() {
                Some(names) => only = Some(names.split(',').map(str::to_owned).collect()),
                None => usage_error(),
            },
            _ => usage_error(),
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("pidcap-accuracy needs root (packet capture, every process's fds, namespaces)");
        std::process::exit(2);
    }
    let hogs = contention.then(|| {
        Hogs::one_per_core().unwrap_or_else(|e| {
            eprintln!("pidcap-accuracy: could not start the CPU hogs: {e}");
            std::process::exit(1);
        })
    });
    let outcomes = run(size, only.as_deref());
    let load = hogs.as_ref().map(|h| h.count());
    drop(hogs);
    let text = format!("{}\n{}", header(load), report::markdown(&outcomes));
    println!("{text}");
    write_results(&text);
    let failed = outcomes
        .iter()
        .any(|o| matches!(o.status, Status::Failed(_)));
    std::process::exit(i32::from(failed));
}

fn usage_error() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn run(size: Size, only: Option<&[String]>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for (name, scenario) in scenarios(size) {
        if only.is_some_and(|only| !only.iter().any(|o| o == name)) {
            continue;
        }
        let started = Instant::now();
        eprintln!("pidcap-accuracy: {name} …");
        let outcome = catch_unwind(AssertUnwindSafe(scenario))
            .unwrap_or_else(|panic| Outcome::not_run(name, Status::Failed(panic_text(&panic))));
        eprintln!(
            "pidcap-accuracy: {name} took {:.1?}: {}",
            started.elapsed(),
            outcome.summary()
        );
        outcomes.push(outcome);
    }
    outcomes
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Date, machine, the daemon binary measured, and the CPU hogs (with `--contention`).
fn header(hogs: Option<usize>) -> String {
    let date = output("date", &["-u"]);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let head = output("git", &["rev-parse", "--short", "HEAD"]);
    let load = hogs.map_or_else(
        || "no CPU hogs".to_owned(),
        |n| format!("contention: {n} CPU hogs (one per core, same priority)"),
    );
    format!(
        "# pidcap accuracy\n\nRun: {date}; {cpus} CPUs; kernel {}; git HEAD {head}; {load}\n",
        kernel.trim()
    )
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

/// `target/accuracy/results.md`, next to the `release` directory holding this binary.
fn write_results(text: &str) {
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .parent()
        .and_then(|dir| dir.parent())
        .map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let dir = target.join("accuracy");
    let path = dir.join("results.md");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => eprintln!("pidcap-accuracy: wrote {}", path.display()),
        Err(e) => {
            eprintln!("pidcap-accuracy: could not write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
