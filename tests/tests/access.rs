//! The query socket opened to every user: who sees what (from the caller's credentials), and
//! the bounds that keep any number of clients from hurting the daemon.
//!
//! Other users are played by the real `pidcap` client run as `nobody` (uid 65534); the socket
//! group is a number no real group needs to have, so the tests touch no system database.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use pidcap_e2e::{bin_path, wait_until, Client, Daemon, Peer};
use serde_json::{json, Value};

const NOBODY: u32 = 65534;
/// The socket group of these tests (`--socket-group 4242`).
const GROUP: u32 = 4242;
const GROUP_ARG: &str = "4242";

/// Starts the daemon on loopback with `args`, its socket directory open to other users.
fn daemon(args: &[&str]) -> Daemon {
    let mut all = vec!["--interface", "lo", "--socket-group", GROUP_ARG];
    all.extend_from_slice(args);
    let daemon = Daemon::start(&all);
    fs::set_permissions(daemon.dir(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
    daemon
}

/// `pidcap --socket S args` as `uid`:`gid` (no supplementary groups).
fn pidcap_command(daemon: &Daemon, uid: u32, gid: u32, args: &[&str]) -> Command {
    let mut command = Command::new(bin_path("pidcap"));
    command
        .arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .env_remove("PIDCAP_SOCKET")
        .uid(uid)
        .gid(gid);
    command
}

fn pidcap_as(daemon: &Daemon, uid: u32, gid: u32, args: &[&str]) -> Output {
    pidcap_command(daemon, uid, gid, args)
        .output()
        .expect("run pidcap")
}

/// The JSON a successful `pidcap … --json` printed.
fn json_of(output: &Output, what: &str) -> Value {
    assert!(
        output.status.success(),
        "{what}: {:?}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn pids(reply: &Value) -> Vec<u64> {
    reply["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect()
}

/// A TCP exchange between two peers run as `uid`:`gid`; returns (server, client) once the
/// daemon credits the client's connection to it.
fn exchange_as(daemon: &Daemon, uid: u32, gid: u32) -> (Peer, Peer) {
    let server = Peer::spawn_as(
        uid,
        gid,
        &["tcp-server", "--bind", "127.0.0.1:0", "--recv", "1000"],
    );
    let remote = server.info.local;
    let mut client = Peer::spawn_as(
        uid,
        gid,
        &[
            "tcp-client",
            "--connect",
            &remote.to_string(),
            "--send",
            "1000",
        ],
    );
    let mut server = server;
    server.accepted();
    daemon.wait_owner("tcp", client.info.local, remote, client.pid());
    client.go();
    (server, client)
}

fn finish(mut server: Peer, mut client: Peer) {
    server.go();
    client.wait_done();
    server.wait_done();
    assert!(client.finish().success());
    assert!(server.finish().success());
}

/// Waits until root's `processes` lists `pid` with traffic.
fn wait_listed(daemon: &Daemon, pid: u32) {
    let listed = wait_until(Duration::from_secs(15), || {
        daemon
            .process(pid)
            .is_some_and(|p| p["tx_bytes_total"].as_u64().unwrap_or(0) > 0)
    });
    assert!(listed, "pid {pid} never listed with traffic");
}

#[test]
fn the_socket_is_open_to_all_and_owned_by_the_configured_group() {
    let daemon = daemon(&[]);
    let meta = fs::metadata(daemon.socket()).expect("socket metadata");
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    assert_eq!(meta.gid(), GROUP);
}

#[test]
fn nobody_sees_only_its_own_processes_and_a_group_member_sees_all() {
    let daemon = daemon(&[]);
    let (root_server, root_client) = exchange_as(&daemon, 0, 0);
    let (own_server, own_client) = exchange_as(&daemon, NOBODY, NOBODY);
    let (root_pid, own_pid) = (root_client.pid(), own_client.pid());
    wait_listed(&daemon, own_pid);
    wait_listed(&daemon, root_pid);

    let own = json_of(
        &pidcap_as(&daemon, NOBODY, NOBODY, &["ps", "--json"]),
        "ps as nobody",
    );
    assert_eq!(own["filtered_to_uid"], NOBODY, "{own}");
    assert!(pids(&own).contains(&u64::from(own_pid)), "{own}");
    assert!(!pids(&own).contains(&u64::from(root_pid)), "{own}");
    let uids: Vec<&Value> = own["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["uid"])
        .collect();
    assert!(uids.iter().all(|uid| **uid == NOBODY), "{own}");
    assert!(
        own["unknown"].is_object(),
        "the unknown aggregate is for everybody: {own}"
    );

    let member = json_of(
        &pidcap_as(&daemon, NOBODY, GROUP, &["ps", "--json"]),
        "ps as member",
    );
    assert!(member.get("filtered_to_uid").is_none(), "{member}");
    assert!(pids(&member).contains(&u64::from(root_pid)), "{member}");
    assert!(pids(&member).contains(&u64::from(own_pid)), "{member}");

    // A member through a supplementary group only (what `usermod -aG` makes): sees all too.
    let supplementary = Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
        ])
        .args(["--groups", GROUP_ARG, "--"])
        .arg(bin_path("pidcap"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["ps", "--json"])
        .env_remove("PIDCAP_SOCKET")
        .output()
        .expect("run setpriv (util-linux)");
    let supplementary = json_of(&supplementary, "ps as a supplementary member");
    assert!(
        supplementary.get("filtered_to_uid").is_none(),
        "{supplementary}"
    );
    assert!(
        pids(&supplementary).contains(&u64::from(root_pid)),
        "{supplementary}"
    );

    // Another user's process: no detail (cmdline, exe, connections), not even its existence.
    let other = pidcap_as(
        &daemon,
        NOBODY,
        NOBODY,
        &["process", &root_pid.to_string(), "--json"],
    );
    assert!(
        !other.status.success(),
        "process {root_pid} as nobody succeeded"
    );
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("not_found") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&other.stdout).contains("cmdline"));
    let mine = pidcap_as(
        &daemon,
        NOBODY,
        NOBODY,
        &["process", &own_pid.to_string(), "--json"],
    );
    let mine = json_of(&mine, "own process as nobody");
    assert!(
        !mine["process"]["cmdline"].as_array().unwrap().is_empty(),
        "{mine}"
    );
    // …and nobody cannot learn who owns root's connection.
    let (local, remote) = (
        root_client.info.local.to_string(),
        root_server.info.local.to_string(),
    );
    let lookup = pidcap_as(
        &daemon,
        NOBODY,
        NOBODY,
        &["lookup", "tcp", &local, &remote, "--json"],
    );
    let lookup: Value = serde_json::from_slice(&lookup.stdout).expect("lookup json");
    assert_eq!(lookup["found"], false, "{lookup}");
    assert_eq!(lookup["filtered_to_uid"], NOBODY, "{lookup}");
    assert_eq!(
        daemon.lookup("tcp", &local, &remote)["owner"]["pid"],
        root_pid
    );

    finish(root_server, root_client);
    finish(own_server, own_client);
}

/// Reads one reply line from a fresh connection and expects `code`, then EOF.
fn expect_closed_with(client: &mut Client, code: &str) -> Value {
    let reply = client.read_json().expect("an error line before the close");
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert!(
        client.read_line().expect("EOF").is_none(),
        "not closed after {reply}"
    );
    reply
}

#[test]
fn clients_beyond_the_limit_are_refused_and_idle_ones_are_closed() {
    let daemon = daemon(&["--max-clients", "4", "--client-idle-timeout", "2s"]);
    let mut held: Vec<Client> = (0..4).map(|_| admitted(&daemon)).collect();
    let mut fifth = daemon.connect();
    let refused = expect_closed_with(&mut fifth, "too_many_clients");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4 at once"),
        "{refused}"
    );
    // The idle ones are told why and closed; their slots come back.
    for client in &mut held {
        let reply = expect_closed_with(client, "timeout");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no request"),
            "{reply}"
        );
    }
    let stats = daemon.stats()["query_server"].clone();
    assert_eq!(stats["client_limit"], 4, "{stats}");
    assert_eq!(stats["client_limit_per_user"], 1, "{stats}");
    assert!(stats["clients_refused"].as_u64() >= Some(1), "{stats}");
    assert!(stats["clients_timed_out"].as_u64() >= Some(4), "{stats}");
}

/// A connection the daemon has admitted (it answered `stats` on it). Connections closed
/// just before may still hold their slots for a moment, so a refusal is retried.
fn admitted(daemon: &Daemon) -> Client {
    let mut admitted = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let mut client = daemon.connect();
        let answered = client
            .try_request(&json!({"cmd": "stats"}))
            .is_ok_and(|r| r["ok"] == true);
        admitted = answered.then_some(client);
        answered
    });
    assert!(ok, "no connection admitted within 10 s");
    admitted.expect("admitted")
}

#[test]
fn one_user_cannot_take_every_slot() {
    let daemon = daemon(&["--max-clients", "4"]);
    // A watch stream is never idle: `pidcap top` keeps nobody's one slot (4 / 4) busy.
    let mut top = pidcap_command(&daemon, NOBODY, NOBODY, &["top", "--interval", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pidcap top");
    wait_for_output(&mut top);
    let second = pidcap_as(&daemon, NOBODY, NOBODY, &["stats"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "a second client of nobody was served"
    );
    assert!(
        stderr.contains("too_many_clients") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    // Others still get in (once slots of connections closed a moment ago are back).
    drop(admitted(&daemon));
    let member = wait_until(Duration::from_secs(10), || {
        pidcap_as(&daemon, NOBODY, GROUP, &["stats"])
            .status
            .success()
    });
    assert!(member, "a member of the socket group was not served");
    let _ = top.kill();
    let _ = top.wait();
}

/// Waits until `child` has printed something (its first frame): its connection is served.
fn wait_for_output(child: &mut Child) {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut byte = [0u8; 1];
    assert_eq!(
        stdout.read(&mut byte).expect("read top"),
        1,
        "pidcap top printed nothing"
    );
    // Keep draining so top never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
}

#[test]
fn a_half_sent_line_times_out_and_the_daemon_keeps_serving() {
    let daemon = daemon(&["--client-idle-timeout", "1s"]);
    let mut client = daemon.connect();
    client.send_raw(b"{\"cmd\":\"st").expect("send half a line");
    let reply = expect_closed_with(&mut client, "timeout");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unfinished"),
        "{reply}"
    );
    let stats = daemon.stats();
    assert!(
        stats["query_server"]["clients_timed_out"].as_u64() >= Some(1),
        "{stats}"
    );
}

/// Sets this process's soft fd limit (children started afterwards inherit it).
fn set_nofile(soft: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointers for both calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = soft.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What the daemon keeps free for capture and refresh (`clients::FD_RESERVE`).
const FD_RESERVE: usize = 512 + 128;

#[test]
fn a_flood_of_connections_never_takes_the_fds_capture_and_refresh_need() {
    const DAEMON_NOFILE: u64 = 900;
    set_nofile(DAEMON_NOFILE);
    let daemon = daemon(&[]);
    set_nofile(4096);
    let limit = daemon.stats()["query_server"]["client_limit"]
        .as_u64()
        .unwrap();
    assert!(
        limit < 256,
        "the fd budget did not lower max_clients: {limit}"
    );
    let refreshes = daemon.stats()["refreshes"].as_u64().unwrap();
    // More connections than the daemon has fds: without the budget it would run out.
    let flood: Vec<UnixStream> = (0..DAEMON_NOFILE + 100)
        .map(|_| UnixStream::connect(daemon.socket()).expect("connect"))
        .collect();
    let fds = open_fds(daemon.pid());
    // The clients leave the reserve free: what the daemon holds beyond it is the momentary
    // fd of a client being refused (1) and what the refresher, watcher, tracer and log
    // writer have open for a moment (a /proc directory, a checkpoint being written, the usage
    // log opened at its first write: a few), which is the reserve's very use. Without the
    // budget the flood would take every fd (hundreds over).
    const MOMENTARY: usize = 1 + 8;
    assert!(
        fds + FD_RESERVE <= DAEMON_NOFILE as usize + MOMENTARY,
        "the daemon holds {fds} fds during the flood, within {FD_RESERVE} of its limit"
    );
    // Capture, refresh and attribution go on while the flood holds every client slot (no
    // query gets in now, so the credit is checked afterwards).
    let server = Peer::spawn(&["tcp-server", "--bind", "127.0.0.1:0", "--recv", "1000"]);
    let remote = server.info.local.to_string();
    let mut server = server;
    let mut client = Peer::spawn(&["tcp-client", "--connect", &remote, "--send", "1000"]);
    let client_pid = client.pid();
    server.accepted();
    client.go();
    finish(server, client);
    drop(flood);
    let answered = wait_until(Duration::from_secs(15), || {
        Client::connect(daemon.socket())
            .and_then(|mut c| c.try_request(&json!({"cmd": "stats"})))
            .is_ok_and(|r| r["ok"] == true)
    });
    assert!(answered, "stats never answered after the flood");
    wait_listed(&daemon, client_pid);
    // The refresher came through the flood too: it goes on refreshing.
    let refreshed = wait_until(Duration::from_secs(15), || {
        daemon.stats()["refreshes"].as_u64() > Some(refreshes)
    });
    assert!(refreshed, "no refresh after the flood: {}", daemon.stats());
    let stats = daemon.stats();
    assert!(
        stats["query_server"]["clients_refused"].as_u64().unwrap() >= 100,
        "{stats}"
    );
    let stderr = daemon.stderr();
    assert!(!stderr.contains("Too many open files"), "{stderr}");
}

#[test]
fn a_socket_group_named_explicitly_must_exist_but_the_default_may_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("s.sock");
    let log = dir.path().join("usage.jsonl");
    let (socket, log) = (socket.to_str().unwrap(), log.to_str().unwrap());
    let finished = pidcap_e2e::run_pidcapd(
        &[
            "--interface",
            "lo",
            "--socket",
            socket,
            "--usage-log",
            log,
            "--socket-group",
            "no-such-group-pidcap-e2e",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(finished.code(), 64, "{}", finished.stderr);
    assert!(
        finished.stderr.contains("socket_group") && finished.stderr.contains("does not exist"),
        "{}",
        finished.stderr
    );
    assert!(
        !std::path::Path::new(socket).exists(),
        "bound before the check"
    );
}
