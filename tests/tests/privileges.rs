//! Least privilege: the real `pidcapd` run as the unit runs it (user pidcap, exactly the
//! unit's capabilities, ambient, no new privileges; set up with `setpriv` as systemd would)
//! still attributes traffic, and once started holds only the capabilities it keeps.
//!
//! The user comes from `systemd/pidcap.sysusers` (`systemd-sysusers` creates it when it is
//! missing). Traffic stays on loopback; every wait is bounded.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pidcap_e2e::{wait_until, Daemon, Launch, Peer};

const UNIT: &str = include_str!("../../systemd/pidcapd.service");

/// The capabilities the daemon keeps, with their bit numbers (`linux/capability.h`); the
/// unit's `AmbientCapabilities=` must name exactly these.
const KEPT: [(&str, u32); 5] = [
    ("CAP_NET_RAW", 13),
    ("CAP_NET_ADMIN", 12),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_PERFMON", 38),
];

const USER: &str = "pidcap";

fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |mask, (_, bit)| mask | 1 << bit)
}

/// The unit's value of `key` (set once).
fn unit_value(key: &str) -> &'static str {
    let prefix = format!("{key}=");
    let values: Vec<&str> = UNIT
        .lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .collect();
    assert_eq!(values.len(), 1, "{key} must be set once in the unit");
    values[0]
}

/// The unit's ambient capabilities, checked against [`KEPT`].
fn unit_capabilities() -> Vec<&'static str> {
    let mut caps: Vec<&str> = unit_value("AmbientCapabilities")
        .split_whitespace()
        .collect();
    caps.sort_unstable();
    let mut kept: Vec<&str> = KEPT.iter().map(|(name, _)| *name).collect();
    kept.sort_unstable();
    assert_eq!(caps, kept, "the unit's AmbientCapabilities");
    caps
}

/// uid and gid of `name`, if the user exists.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).expect("no NUL");
    // SAFETY: getpwnam reads a NUL-terminated name and returns NULL or a pointer to a static
    // record, read at once (the tests that call this hold no other passwd pointer).
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    // SAFETY: non-NULL, so it points to a valid passwd record.
    (!entry.is_null()).then(|| unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}

fn sysusers_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/pidcap.sysusers")
}

/// The daemon's user, created from the sysusers file if missing (as a package would).
fn daemon_user() -> (u32, u32) {
    pidcap_e2e::require_root();
    assert_eq!(unit_value("User"), USER, "the unit's User=");
    if let Some(ids) = lookup_user(USER) {
        return ids;
    }
    let file = sysusers_file()
        .canonicalize()
        .expect("systemd/pidcap.sysusers");
    let status = Command::new("systemd-sysusers")
        .arg(&file)
        .status()
        .expect("run systemd-sysusers: install the systemd package (scripts/deps installs it)");
    assert!(
        status.success(),
        "systemd-sysusers {}: {status}",
        file.display()
    );
    lookup_user(USER).expect("systemd-sysusers did not create user pidcap")
}

/// `setpriv` arguments that start a program as systemd starts the unit's: as user pidcap,
/// with the unit's capabilities inheritable, ambient and bounding, and no new privileges.
fn as_the_unit_runs_it() -> Launch {
    let (uid, gid) = daemon_user();
    let caps: Vec<String> = unit_capabilities()
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let set = format!("-all,{}", caps.join(","));
    let wrapper = [
        "setpriv",
        "--reuid",
        USER,
        "--regid",
        USER,
        "--init-groups",
        "--inh-caps",
        &set,
        "--ambient-caps",
        &set,
        "--bounding-set",
        &set,
        "--no-new-privs",
        "--",
    ];
    Launch {
        wrapper: wrapper.iter().map(|a| a.to_string()).collect(),
        dir_owner: Some((uid, gid)),
    }
}

/// The `Cap*:` sets of one `/proc/…/status` file, as (Inh, Prm, Eff, Bnd, Amb); `None` if
/// the thread exited meanwhile.
fn cap_sets(status_path: &Path) -> Option<[u64; 5]> {
    let status = std::fs::read_to_string(status_path).ok()?;
    Some(
        ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"].map(|key| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {}", status_path.display()));
            u64::from_str_radix(hex.trim(), 16).expect("hex capability mask")
        }),
    )
}

/// Every thread of `pid` holds exactly the kept capabilities, effective and permitted,
/// bounding set cut to them, nothing inheritable or ambient.
fn assert_only_kept_capabilities(daemon: &Daemon) {
    let tasks = PathBuf::from(format!("/proc/{}/task", daemon.pid()));
    let threads: Vec<PathBuf> = std::fs::read_dir(&tasks)
        .expect("read the daemon's task directory")
        .map(|entry| entry.expect("task entry").path().join("status"))
        .collect();
    assert!(threads.len() > 1, "capture, refresh, runtime threads exist");
    let five = kept_mask();
    for status in threads {
        let Some(sets) = cap_sets(&status) else {
            continue; // a runtime thread that ended since the listing
        };
        assert_eq!(
            sets,
            [0, five, five, five, 0],
            "{} (Inh, Prm, Eff, Bnd, Amb); daemon stderr:\n{}",
            status.display(),
            daemon.stderr()
        );
    }
}

/// A TCP exchange between two peers run as root, so the daemon reads another user's
/// `/proc/<pid>/fd`; returns (server, client) once it credits the client's connection.
fn exchange(daemon: &Daemon) -> (Peer, Peer) {
    let mut server = Peer::spawn(&["tcp-server", "--bind", "127.0.0.1:0", "--recv", "1000"]);
    let remote = server.info.local;
    let mut client = Peer::spawn(&[
        "tcp-client",
        "--connect",
        &remote.to_string(),
        "--send",
        "1000",
    ]);
    server.accepted();
    daemon.wait_owner("tcp", client.info.local, remote, client.pid());
    client.go();
    (server, client)
}

#[test]
fn attribution_works_as_user_pidcap_with_only_the_units_capabilities() {
    let mut daemon = Daemon::start_with(&as_the_unit_runs_it(), &["--interface", "lo"]);
    let (mut server, mut client) = exchange(&daemon);
    server.go();
    let sent = client.wait_done().sent;
    server.wait_done();
    let credited = wait_until(Duration::from_secs(15), || {
        daemon.totals(client.pid()).tx_bytes >= sent
    });
    assert!(
        credited,
        "the client's {sent} B were never credited to pid {}: {:?}; stderr:\n{}",
        client.pid(),
        daemon.totals(client.pid()),
        daemon.stderr()
    );
    // The connector (CAP_NET_ADMIN) and the tracer (CAP_PERFMON, tracefs through
    // CAP_DAC_READ_SEARCH) must run unprivileged as they do as root.
    let side = daemon.stats()["process_side"].clone();
    assert_eq!(side["watcher"], true, "process watcher: {side}");
    assert_eq!(side["tracer"], true, "socket tracer: {side}");
    let log = daemon.usage_log().to_path_buf();
    let finished = daemon.stop();
    assert_eq!(finished.code(), 0, "stderr:\n{}", finished.stderr);
    let written = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(written > 0, "user pidcap wrote no usage log");
    assert!(client.finish().success() && server.finish().success());
}

#[test]
fn under_the_unit_only_the_kept_capabilities_remain_after_start() {
    let daemon = Daemon::start_with(&as_the_unit_runs_it(), &["--interface", "lo"]);
    assert_only_kept_capabilities(&daemon);
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let (uid, _) = daemon_user();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|id| id == uid.to_string()),
        "{uid_line}"
    );
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
}

#[test]
fn as_root_everything_but_the_kept_capabilities_is_dropped() {
    // Run by hand as root, the daemon starts with every capability and narrows itself,
    // bounding set included (it holds CAP_SETPCAP until then).
    let daemon = Daemon::start(&["--interface", "lo"]);
    assert_only_kept_capabilities(&daemon);
    let stderr = daemon.stderr();
    for (name, _) in KEPT {
        assert!(
            stderr.contains(&format!("capability kept capability=\"{name}\"")),
            "{name} not logged as kept:\n{stderr}"
        );
    }
}

/// `--namespaces all` enters other namespaces for as long as the daemon runs: started as
/// root it keeps CAP_SYS_ADMIN as well as the five (and says why), nothing more.
#[test]
fn with_all_namespaces_cap_sys_admin_is_kept_as_well() {
    let daemon = Daemon::start(&["--interface", "lo", "--namespaces", "all"]);
    let status = PathBuf::from(format!("/proc/{}/status", daemon.pid()));
    let sets = cap_sets(&status).expect("daemon status");
    let six = kept_mask() | 1 << 21;
    assert_eq!(sets, [0, six, six, six, 0], "(Inh, Prm, Eff, Bnd, Amb)");
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("capability kept capability=\"CAP_SYS_ADMIN\""),
        "{stderr}"
    );
}

/// Under the unit's five capabilities, `--namespaces all` cannot enter other namespaces:
/// the daemon says so and exits 77 before it opens anything.
#[test]
fn all_namespaces_without_cap_sys_admin_exits_77_with_the_fix() {
    pidcap_e2e::require_root();
    let caps: Vec<String> = unit_capabilities()
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let set = format!("-all,{}", caps.join(","));
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("pidcap.sock");
    let output = Command::new("setpriv")
        .args([
            "--inh-caps",
            &set,
            "--ambient-caps",
            &set,
            "--bounding-set",
            &set,
        ])
        .args(["--"])
        .arg(pidcap_e2e::bin_path("pidcapd"))
        .args(["--interface", "lo", "--namespaces", "all", "--socket"])
        .arg(&socket)
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("CAP_SYS_ADMIN"), "{stderr}");
    assert!(stderr.contains("namespaces"), "{stderr}");
    assert!(!socket.exists(), "nothing is opened before the check");
}
