//! The daemon's memory stays bounded whatever local users do (issue #9): hostile processes
//! with huge command lines that send a packet and exit must not grow it by what they pass.

use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use pidcap_e2e::{wait_until, Daemon};

/// The kernel's limit on one argument (MAX_ARG_STRLEN, 32 pages), less its NUL.
const ARG_BYTES: usize = 32 * 4096 - 1;
/// Eight such arguments: 1 MiB of command line per process.
const ARGS: usize = 8;
const HOGS: usize = 200;
/// What 200 hogs may add to the daemon's resident memory: the facts table's byte budget
/// (32 MiB) is its bound; with command lines cut at 4 KiB they need far less. Before the cut,
/// this workload took the daemon from 24 MiB to 270 MiB.
const MAX_GROWTH_KIB: u64 = 32 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS line")
}

/// Runs one hog: bash with 1 MiB of arguments sends a datagram to `port` and exits.
fn hog(port: u16, arg: &str) {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!("echo hog > /dev/udp/127.0.0.1/{port}"))
        .arg("hog");
    for _ in 0..ARGS {
        command.arg(arg);
    }
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run a hog");
    assert!(status.success(), "hog failed: {status}");
}

#[test]
fn huge_command_lines_do_not_grow_the_daemon() {
    let daemon = Daemon::start(&["--interface", "lo"]);
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let port = sink.local_addr().expect("sink addr").port();
    // Let start-up allocations settle before the baseline.
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kib(daemon.pid());
    let arg = "a".repeat(ARG_BYTES);
    for _ in 0..HOGS {
        hog(port, &arg);
    }
    // Every hog's datagram is decided (credited or unknown) once nothing is pending.
    let drained = wait_until(Duration::from_secs(10), || {
        let stats = daemon.stats();
        stats["pending_packets"] == 0 && stats["rx_packets"].as_u64() >= Some(HOGS as u64)
    });
    assert!(
        drained,
        "the hogs' packets were not all decided: {}",
        daemon.stats()
    );
    let after = rss_kib(daemon.pid());
    assert_facts_cut(&daemon.stats());
    eprintln!(
        "pidcapd RSS {before} KiB -> {after} KiB after {HOGS} processes with 1 MiB of arguments"
    );
    assert!(
        after.saturating_sub(before) < MAX_GROWTH_KIB,
        "pidcapd grew from {before} KiB to {after} KiB"
    );
    assert_live_hog_cmdline_is_cut(&daemon, port, &arg);
}

/// `stats.process_facts`: the watcher remembered the hogs (exited less than 30 s ago), each
/// with at most 4 KiB of command line, and no bound was reached.
fn assert_facts_cut(stats: &serde_json::Value) {
    let facts = &stats["process_facts"];
    let entries = facts["entries"].as_u64().expect("process_facts.entries");
    let bytes = facts["bytes"].as_u64().expect("process_facts.bytes");
    eprintln!("process facts: {facts}");
    assert!(entries >= HOGS as u64 / 2, "hogs not remembered: {facts}");
    // A cut command line, an executable path and a name: well under 8 KiB per process
    // (uncut, the hogs alone would hold 200 MiB).
    assert!(bytes <= entries * 8192, "{facts}");
    assert!(
        bytes >= (HOGS as u64 / 2) * 4096,
        "the hogs' cut command lines: {facts}"
    );
    assert_eq!(facts["evictions"], 0, "{facts}");
}

/// A live hog holding a UDP socket: `process` shows its command line cut to 4 KiB and marked.
/// (Its `sleep` does not inherit the socket: a socket shared after fork is credited to the
/// newest holder, which is not what this test is about.)
fn assert_live_hog_cmdline_is_cut(daemon: &Daemon, port: u16, arg: &str) {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/udp/127.0.0.1/{port}; echo hog >&3; sleep 20 3>&-; true"
        ))
        .arg("hog")
        .args(std::iter::repeat_n(arg, ARGS))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so its `sleep` goes with it.
        .process_group(0)
        .spawn()
        .expect("spawn a live hog");
    let pid = child.id();
    let mut reply = serde_json::Value::Null;
    wait_until(Duration::from_secs(10), || {
        reply = daemon.query(&serde_json::json!({"cmd": "process", "pid": pid}));
        reply["process"]["cmdline"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    let cmdline = reply["process"]["cmdline"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // SAFETY: kill has no memory preconditions; the group is the hog's own.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    let _ = child.wait();
    let args: Vec<&str> = cmdline.iter().filter_map(|a| a.as_str()).collect();
    assert!(
        !args.is_empty(),
        "the daemon never listed the live hog {pid}: {reply}"
    );
    let kept: usize = args.iter().map(|a| a.len() + 1).sum();
    assert!(kept <= 4096 + 8, "{kept} bytes of command line kept");
    assert!(args.last().is_some_and(|a| a.ends_with('…')), "{args:?}");
}
