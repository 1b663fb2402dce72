//! Runs the real `pidcap` binary against a fake daemon: a unix listener on a temporary socket
//! whose thread records the request lines it receives and answers with canned JSON lines.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

const PIDCAP: &str = env!("CARGO_BIN_EXE_pidcap");

/// Upper bound on how long the fake daemon waits for the client, so a hung client fails the
/// test instead of hanging it. Not a timing assertion.
const CLIENT_PATIENCE: Duration = Duration::from_secs(60);

struct FakeDaemon {
    _dir: TempDir,
    path: PathBuf,
    server: JoinHandle<Vec<Value>>,
}

impl FakeDaemon {
    /// Serves one connection: reads one request line, writes `replies` (one line each), closes
    /// its sending side, and records every line the client sent until the client leaves.
    fn serve(replies: Vec<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pidcap.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(CLIENT_PATIENCE)).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut received = vec![read_request(&mut reader).expect("a request line")];
            let mut writer = stream;
            for reply in replies {
                // A client that stopped early (top -n) makes later writes fail: fine.
                if writer.write_all(format!("{reply}\n").as_bytes()).is_err() {
                    break;
                }
            }
            let _ = writer.shutdown(Shutdown::Write);
            while let Some(request) = read_request(&mut reader) {
                received.push(request);
            }
            received
        });
        FakeDaemon {
            _dir: dir,
            path,
            server,
        }
    }

    /// Runs `pidcap --socket <this daemon> args…`.
    fn run(&self, args: &[&str]) -> Output {
        pidcap(&self.path, args)
    }

    /// The request lines the client sent, parsed.
    fn requests(self) -> Vec<Value> {
        self.server.join().expect("fake daemon thread")
    }
}

fn read_request(reader: &mut impl BufRead) -> Option<Value> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            assert!(
                line.ends_with('\n'),
                "request not newline-terminated: {line:?}"
            );
            Some(serde_json::from_str(&line).expect("request is JSON"))
        }
    }
}

fn pidcap(socket: &Path, args: &[&str]) -> Output {
    Command::new(PIDCAP)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("PIDCAP_SOCKET")
        .output()
        .expect("run pidcap")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

fn usage(rx_total: u64, tx_total: u64, rx_bps: f64) -> Value {
    json!({
        "rx_bytes": 1, "tx_bytes": 2, "rx_packets": 3, "tx_packets": 4,
        "rx_bytes_total": rx_total, "tx_bytes_total": tx_total,
        "rx_packets_total": 5, "tx_packets_total": 6,
        "rx_bps": rx_bps, "tx_bps": 0.0
    })
}

fn process_row(pid: u32, comm: &str, rx_total: u64, tx_total: u64) -> Value {
    let mut row = json!({
        "pid": pid, "start_time": 777, "comm": comm, "exe": null, "uid": 4242, "alive": true
    });
    for (key, value) in usage(rx_total, tx_total, 1536.0).as_object().unwrap() {
        row[key] = value.clone();
    }
    row
}

fn processes_reply() -> String {
    json!({
        "v": 1, "ok": true,
        "processes": [
            process_row(101, "quiet", 10, 0),
            process_row(202, "chatty", 3 * 1024 * 1024, 512),
        ],
        "unknown": usage(2048, 0, 0.0),
    })
    .to_string()
}

fn stats_reply() -> String {
    json!({"v": 1, "ok": true, "stats": {
        "uptime_s": 65.0, "rx_packets": 10, "rx_bytes": 5000, "tx_packets": 20, "tx_bytes": 6000,
        "foreign_packets": 0, "foreign_bytes": 0,
        "credited_rx_bytes": 4000, "credited_tx_bytes": 5000,
        "credited_rx_packets": 8, "credited_tx_packets": 18,
        "unknown_rx_bytes": 1000, "unknown_tx_bytes": 1000,
        "unknown_rx_packets": 2, "unknown_tx_packets": 2,
        "non_ip_packets": 3, "malformed_packets": 4,
        "pcap_received": 30, "pcap_dropped": 5, "pcap_if_dropped": 6,
        "sockets_known": 12, "processes_known": 7, "refreshes": 99, "last_refresh_ms": 2.5,
        "interface": "lo", "link_type": "EN10MB"
    }})
    .to_string()
}

fn error_line(code: &str, message: &str) -> String {
    json!({"v": 1, "ok": false, "error": {"code": code, "message": message}}).to_string()
}

// ---- ps ----

#[test]
fn ps_sends_processes_and_prints_rows_busiest_first() {
    let daemon = FakeDaemon::serve(vec![processes_reply()]);
    let output = daemon.run(&["ps"]);
    assert_exit(&output, 0);
    assert_eq!(daemon.requests(), [json!({"cmd": "processes"})]);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for column in ["PID", "USER", "COMM", "RX", "TX", "RX/s", "TX/s", "ALIVE"] {
        assert!(lines[0].split_whitespace().any(|c| c == column), "{text}");
    }
    let words: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(words[0][0], "202");
    assert_eq!(words[0][2], "chatty");
    assert!(lines[1].contains("3.0 MiB"), "{text}");
    assert!(lines[1].contains("512 B"), "{text}");
    assert!(lines[1].contains("1.5 KiB"), "{text}");
    assert!(lines[1].ends_with("yes"), "{text}");
    assert_eq!(words[1][0], "101");
    assert_eq!(words[1][2], "quiet");
    assert_eq!(words[2][2], "<unknown>");
    assert!(lines[3].contains("2.0 KiB"), "{text}");
}

#[test]
fn ps_sort_and_limit() {
    let daemon = FakeDaemon::serve(vec![processes_reply()]);
    let output = daemon.run(&["ps", "--sort", "rx", "--limit", "1"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    let comms: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(comms, ["chatty", "<unknown>"]);
}

#[test]
fn ps_json_prints_the_reply() {
    let daemon = FakeDaemon::serve(vec![processes_reply()]);
    let output = daemon.run(&["ps", "--json"]);
    assert_exit(&output, 0);
    let printed: Value = serde_json::from_str(&stdout(&output)).expect("stdout is JSON");
    let sent: Value = serde_json::from_str(&processes_reply()).unwrap();
    assert_eq!(printed, sent);
}

// ---- top ----

/// Runs `pidcap top` with `env` set (and `TERM`, `COLUMNS` unset unless given).
fn top_with_env(daemon: &FakeDaemon, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(PIDCAP);
    command
        .arg("--socket")
        .arg(&daemon.path)
        .arg("top")
        .args(args)
        .env_remove("PIDCAP_SOCKET")
        .env_remove("TERM")
        .env_remove("COLUMNS");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run pidcap top")
}

#[test]
fn top_asks_processes_each_screen_and_prints_plain_screens_through_a_pipe() {
    let daemon = FakeDaemon::serve(vec![
        processes_reply(),
        processes_reply(),
        processes_reply(),
    ]);
    let output = top_with_env(
        &daemon,
        &["--interval", "100", "-n", "2"],
        &[("TERM", "xterm-256color")],
    );
    assert_exit(&output, 0);
    assert_eq!(
        daemon.requests(),
        [json!({"cmd": "processes"}), json!({"cmd": "processes"})]
    );
    let text = stdout(&output);
    assert!(
        !text.contains('\x1b'),
        "ANSI escapes in plain output: {text:?}"
    );
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pidcap top"))
        .collect();
    assert_eq!(headers.len(), 2, "{text}");
    assert!(headers[0].contains("every 100 ms  2 processes"), "{text}");
    let first_rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("chatty") || l.contains("quiet"))
        .collect();
    assert!(first_rows[0].contains("chatty"), "busiest first: {text}");
    assert!(first_rows[0].contains("1.5 KiB"), "{text}");
}

#[test]
fn top_cuts_lines_to_columns_and_sends_no_escapes_to_a_dumb_terminal() {
    for width in [40, 80] {
        let daemon = FakeDaemon::serve(vec![processes_reply()]);
        let columns = width.to_string();
        let output = top_with_env(
            &daemon,
            &["-n", "1", "--sort", "name"],
            &[("TERM", "dumb"), ("COLUMNS", &columns)],
        );
        assert_exit(&output, 0);
        let text = stdout(&output);
        assert!(!text.contains('\x1b'), "{text:?}");
        for line in text.lines() {
            assert!(
                line.chars().count() <= width,
                "{width}: {line:?} in\n{text}"
            );
        }
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| ["chatty", "quiet"].contains(w))
            })
            .collect();
        assert_eq!(names, ["chatty", "quiet"], "{text}");
    }
}

#[test]
fn top_filter_and_pid_select_rows() {
    let daemon = FakeDaemon::serve(vec![processes_reply()]);
    let output = top_with_env(&daemon, &["-n", "1", "--filter", "QUI"], &[]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    assert!(text.contains("quiet") && !text.contains("chatty"), "{text}");
    assert!(!text.contains("<unknown>"), "{text}");
    let daemon = FakeDaemon::serve(vec![processes_reply()]);
    let output = top_with_env(&daemon, &["-n", "1", "--pid", "202"], &[]);
    let text = stdout(&output);
    assert!(text.contains("chatty") && !text.contains("quiet"), "{text}");
}

#[test]
fn top_reports_the_end_of_the_stream() {
    let daemon = FakeDaemon::serve(vec![processes_reply()]);
    let output = daemon.run(&["top", "--interval", "100"]);
    assert_exit(&output, 1);
    assert_eq!(
        stderr(&output),
        "pidcap: the daemon closed the connection without replying\n"
    );
    assert_eq!(stdout(&output).matches("pidcap top").count(), 1);
}

#[test]
fn top_reports_an_error_frame() {
    let daemon = FakeDaemon::serve(vec![error_line("internal", "capture stopped")]);
    let output = daemon.run(&["top"]);
    assert_exit(&output, 1);
    assert_eq!(stderr(&output), "pidcap: internal: capture stopped\n");
}

// ---- lookup ----

fn owner_reply() -> String {
    json!({"v": 1, "ok": true, "found": true, "owner": {
        "pid": 202, "start_time": 777, "comm": "chatty", "inode": 31337,
        "matched": "exact", "holders": [202, 203]
    }})
    .to_string()
}

#[test]
fn lookup_sends_the_flow_and_prints_the_owner() {
    let daemon = FakeDaemon::serve(vec![owner_reply()]);
    let output = daemon.run(&["lookup", "tcp", "[::1]:5000", "127.0.0.1:80"]);
    assert_exit(&output, 0);
    assert_eq!(
        daemon.requests(),
        [json!({"cmd": "lookup", "proto": "tcp", "local": "[::1]:5000", "remote": "127.0.0.1:80"})]
    );
    let text = stdout(&output);
    assert!(text.contains("pid         202\n"), "{text}");
    assert!(text.contains("comm        chatty\n"), "{text}");
    assert!(text.contains("inode       31337\n"), "{text}");
    assert!(text.contains("matched     exact\n"), "{text}");
    assert!(text.contains("holders     202 203\n"), "{text}");
}

#[test]
fn lookup_without_owner_exits_1() {
    let daemon = FakeDaemon::serve(vec![r#"{"v":1,"ok":true,"found":false}"#.into()]);
    let output = daemon.run(&["lookup", "udp", "127.0.0.1:53", "127.0.0.1:4000"]);
    assert_exit(&output, 1);
    assert_eq!(stdout(&output), "no owner found\n");
    assert_eq!(stderr(&output), "");
}

#[test]
fn lookup_json_prints_the_reply() {
    let daemon = FakeDaemon::serve(vec![owner_reply()]);
    let output = daemon.run(&["lookup", "tcp", "127.0.0.1:1", "127.0.0.1:2", "--json"]);
    assert_exit(&output, 0);
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed["owner"]["pid"], 202);
}

#[test]
fn lookup_bad_argument_from_the_daemon_is_shown() {
    let daemon = FakeDaemon::serve(vec![error_line(
        "bad_argument",
        "proto: unknown protocol \"quic\"",
    )]);
    let output = daemon.run(&["lookup", "quic", "127.0.0.1:1", "127.0.0.1:2"]);
    assert_exit(&output, 1);
    assert_eq!(daemon.requests()[0]["proto"], "quic");
    assert_eq!(
        stderr(&output),
        "pidcap: bad_argument: proto: unknown protocol \"quic\"\n"
    );
}

// ---- stats ----

#[test]
fn stats_lists_the_counters() {
    let daemon = FakeDaemon::serve(vec![stats_reply()]);
    let output = daemon.run(&["stats"]);
    assert_exit(&output, 0);
    assert_eq!(daemon.requests(), [json!({"cmd": "stats"})]);
    let text = stdout(&output);
    for expected in [
        "lo (EN10MB)",
        "1m 05s",
        "10 packets, 4.9 KiB (5000 bytes)",
        "pcap dropped       5",
        "refreshes          99",
        "last refresh       2.5 ms",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
    }
}

#[test]
fn stats_json_prints_the_reply() {
    let daemon = FakeDaemon::serve(vec![stats_reply()]);
    let output = daemon.run(&["stats", "--json"]);
    assert_exit(&output, 0);
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed["stats"]["refreshes"], 99);
}

// ---- process ----

#[test]
fn process_prints_details_and_connections() {
    let mut detail = process_row(202, "chatty", 100, 200);
    detail["cmdline"] = json!(["chatty", "--port", "80"]);
    detail["connections"] = json!([{
        "proto": "tcp", "local": "127.0.0.1:80", "remote": "127.0.0.1:40000",
        "state": "ESTABLISHED", "inode": 31337, "holders": [202, 203]
    }]);
    let daemon = FakeDaemon::serve(vec![
        json!({"v": 1, "ok": true, "process": detail}).to_string()
    ]);
    let output = daemon.run(&["process", "202"]);
    assert_exit(&output, 0);
    assert_eq!(daemon.requests(), [json!({"cmd": "process", "pid": 202})]);
    let text = stdout(&output);
    assert!(text.contains("cmdline     chatty --port 80\n"), "{text}");
    assert!(text.contains("(uid 4242)\n"), "{text}");
    let connection = text.lines().last().unwrap();
    let cells: Vec<&str> = connection.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "tcp",
            "127.0.0.1:80",
            "127.0.0.1:40000",
            "ESTABLISHED",
            "31337",
            "203"
        ]
    );
}

#[test]
fn daemon_error_reply_exits_1_with_code_and_message() {
    let daemon = FakeDaemon::serve(vec![error_line("not_found", "no process with pid 7")]);
    let output = daemon.run(&["process", "7"]);
    assert_exit(&output, 1);
    assert_eq!(daemon.requests(), [json!({"cmd": "process", "pid": 7})]);
    assert_eq!(
        stderr(&output),
        "pidcap: not_found: no process with pid 7\n"
    );
    assert_eq!(stdout(&output), "");
}

#[test]
fn daemon_error_reply_with_json_flag_is_still_an_error() {
    let daemon = FakeDaemon::serve(vec![error_line("not_found", "no process with pid 7")]);
    let output = daemon.run(&["process", "7", "--json"]);
    assert_exit(&output, 1);
    assert_eq!(
        stderr(&output),
        "pidcap: not_found: no process with pid 7\n"
    );
}

#[test]
fn malformed_reply_is_an_error() {
    let daemon = FakeDaemon::serve(vec![r#"{"v":1,"ok":true,"stats":{"uptime_s":1}}"#.into()]);
    let output = daemon.run(&["stats"]);
    assert_exit(&output, 1);
    assert!(stderr(&output).starts_with("pidcap: malformed reply from the daemon: "));
}

#[test]
fn daemon_leaving_without_reply_is_an_error() {
    let daemon = FakeDaemon::serve(vec![]);
    let output = daemon.run(&["stats"]);
    assert_exit(&output, 1);
    assert_eq!(
        stderr(&output),
        "pidcap: the daemon closed the connection without replying\n"
    );
}

// ---- choosing the socket ----

#[test]
fn socket_option_is_accepted_after_the_subcommand() {
    let daemon = FakeDaemon::serve(vec![stats_reply()]);
    let output = Command::new(PIDCAP)
        .args(["stats", "--socket"])
        .arg(&daemon.path)
        .env_remove("PIDCAP_SOCKET")
        .output()
        .unwrap();
    assert_exit(&output, 0);
    assert_eq!(daemon.requests(), [json!({"cmd": "stats"})]);
}

#[test]
fn socket_comes_from_pidcap_socket_env() {
    let daemon = FakeDaemon::serve(vec![stats_reply()]);
    let output = Command::new(PIDCAP)
        .arg("stats")
        .env("PIDCAP_SOCKET", &daemon.path)
        .output()
        .unwrap();
    assert_exit(&output, 0);
    assert_eq!(daemon.requests(), [json!({"cmd": "stats"})]);
}

// ---- connection failures ----

#[test]
fn missing_socket_explains_how_to_start_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    let output = pidcap(&path, &["ps"]);
    assert_exit(&output, 1);
    assert_eq!(
        stderr(&output),
        format!(
            "pidcap: cannot connect to {}: no such file. Is pidcapd running? Start it with \
             `systemctl start pidcapd` or `scripts/run`, or point --socket at its socket.\n",
            path.display()
        )
    );
}

#[test]
fn stale_socket_is_reported_as_daemon_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let output = pidcap(&path, &["stats"]);
    assert_exit(&output, 1);
    let text = stderr(&output);
    assert!(text.contains("connection refused"), "{text}");
    assert!(text.contains("stale"), "{text}");
    assert!(text.contains("not running"), "{text}");
}

/// Needs root: it runs the client as `nobody` against a root-owned 0660 socket.
#[test]
fn permission_denied_says_run_as_root_and_never_join_root() {
    assert_eq!(
        fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test must run as root (it drops to nobody to be refused)"
    );
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("pidcap.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).unwrap();
    // The build tree may not be reachable by nobody; a copy beside the socket is.
    let binary = dir.path().join("pidcap");
    fs::copy(PIDCAP, &binary).unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    // Another test thread forking right now may hold the copy's write fd open for a moment
    // (until its child execs): the kernel then refuses to run the copy (ETXTBSY). Bounded retry.
    let mut tries = 0;
    let output = loop {
        let run = Command::new(&binary)
            .arg("--socket")
            .arg(&path)
            .arg("stats")
            .env_remove("PIDCAP_SOCKET")
            .uid(65534)
            .gid(65534)
            .output();
        match run {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.unwrap(),
        }
    };
    assert_exit(&output, 1);
    let text = stderr(&output);
    assert!(
        text.starts_with(&format!(
            "pidcap: cannot connect to {}: permission denied.",
            path.display()
        )),
        "{text}"
    );
    assert!(text.contains("run pidcap as root"), "{text}");
    // The socket's group here is root: nobody should be told to join root.
    assert!(!text.contains("join"), "{text}");
    assert!(text.contains("socket_mode = \"0666\""), "{text}");
}

// ---- usage ----

#[test]
fn usage_errors_exit_2_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    for args in [
        &["top", "--interval", "50"][..],
        &["ps", "--sort", "bogus"],
        &["lookup", "tcp", "127.0.0.1:1"],
        &["process", "notapid"],
        &[],
    ] {
        let output = pidcap(&path, args);
        assert_exit(&output, 2);
        assert!(!stderr(&output).contains("cannot connect"), "{args:?}");
    }
}
