//! `ProcRoot` pointed at a proc tree built in a temporary directory: the owner scan, process
//! facts, namespaces and table reading, including the races the scan must tolerate.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pidcap_core::{NetNsId, ProcessKey};
use pidcap_sockets::{Error, ProcRoot, ScanStats};

/// A `/proc/<pid>/stat` line as Linux 6.18 prints it, with `comm` and `starttime` (field 22)
/// substituted.
fn stat_line(pid: u32, comm: &str, start_time: u64) -> String {
    format!(
        "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 1160 0 0 0 2 0 0 0 20 0 1 0 {start_time} \
         17137664 2304 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0\n"
    )
}

fn status(uid: u32) -> String {
    format!("Name:\tx\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
}

/// Directories 0755 and files 0644 whatever the umask, so an unprivileged child can read
/// the tree.
fn dir(path: &Path) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn file(path: &Path, contents: impl AsRef<[u8]>) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

/// A process dir with stat, status, cmdline, and the given fd links.
fn process(root: &Path, pid: u32, comm: &str, start_time: u64, uid: u32, fds: &[&str]) -> PathBuf {
    let p = root.join(pid.to_string());
    dir(&p.join("fd"));
    file(&p.join("stat"), stat_line(pid, comm, start_time));
    file(&p.join("status"), status(uid));
    file(&p.join("cmdline"), format!("{comm}\0--flag\0"));
    for (n, target) in fds.iter().enumerate() {
        symlink(target, p.join("fd").join(n.to_string())).unwrap();
    }
    p
}

const KEY_100: ProcessKey = ProcessKey {
    pid: 100,
    start_time: 5000,
};
const KEY_200: ProcessKey = ProcessKey {
    pid: 200,
    start_time: 6000,
};

/// - 100 holds sockets 123 (twice) and 456, plus /dev/null and a pipe;
/// - 200 shares socket 123;
/// - 300 holds only a pipe, and has no stat (its facts must never be read);
/// - 400 has no fd dir (exited between the root listing and the fd listing);
/// - 500 holds socket 789 but has no stat (exited before its facts were read);
/// - non-numeric entries: self, net, sys.
fn build_fixture(root: &Path) {
    dir(root);
    let p100 = process(
        root,
        100,
        "my (weird) comm",
        5000,
        1000,
        &[
            "/dev/null",
            "pipe:[9]",
            "socket:[123]",
            "socket:[456]",
            "socket:[123]",
        ],
    );
    symlink("/usr/bin/server", p100.join("exe")).unwrap();
    dir(&p100.join("ns"));
    symlink("net:[4026532001]", p100.join("ns/net")).unwrap();
    process(root, 200, "worker", 6000, 0, &["socket:[123]"]);
    let p300 = process(root, 300, "cat", 7000, 0, &["pipe:[9]", "/dev/null"]);
    fs::remove_file(p300.join("stat")).unwrap();
    let p400 = process(root, 400, "gone", 8000, 0, &[]);
    fs::remove_dir(p400.join("fd")).unwrap();
    let p500 = process(root, 500, "late", 9000, 0, &["socket:[789]"]);
    fs::remove_file(p500.join("stat")).unwrap();
    dir(&root.join("self/ns"));
    symlink("net:[4026531993]", root.join("self/ns/net")).unwrap();
    dir(&root.join("net"));
    dir(&root.join("sys"));
}

fn fixture() -> (tempfile::TempDir, ProcRoot) {
    let tmp = tempfile::tempdir().unwrap();
    build_fixture(tmp.path());
    let root = ProcRoot::new(tmp.path());
    (tmp, root)
}

fn sorted(mut keys: Vec<ProcessKey>) -> Vec<ProcessKey> {
    keys.sort();
    keys
}

#[test]
fn shared_socket_lists_every_holder_once() {
    let (_tmp, root) = fixture();
    let scan = root.scan_socket_owners().unwrap();
    assert_eq!(sorted(scan.holders[&123].clone()), [KEY_100, KEY_200]);
    assert_eq!(scan.holders[&456], [KEY_100]);
}

#[test]
fn non_socket_links_are_ignored() {
    let (_tmp, root) = fixture();
    let scan = root.scan_socket_owners().unwrap();
    let inodes: HashSet<u64> = scan.holders.keys().copied().collect();
    assert_eq!(inodes, HashSet::from([123, 456]));
}

#[test]
fn facts_are_read_only_for_socket_holders() {
    let (_tmp, root) = fixture();
    let scan = root.scan_socket_owners().unwrap();
    let keys: HashSet<ProcessKey> = scan.processes.keys().copied().collect();
    assert_eq!(keys, HashSet::from([KEY_100, KEY_200]));
    assert_eq!(scan.processes[&KEY_100].comm, "my (weird) comm");
    assert_eq!(scan.processes[&KEY_200].uid, 0);
}

#[test]
fn vanished_processes_are_counted_not_errors() {
    let (_tmp, root) = fixture();
    let stats = root.scan_socket_owners().unwrap().stats;
    let expected = ScanStats {
        processes_scanned: 5,
        vanished: 2, // 400 (no fd dir) and 500 (no stat); 300 needs no facts
        permission_denied: 0,
        first_denied: None,
        fds_read: 5 + 1 + 2 + 1, // 100, 200, 300, 500
        sockets_found: 3,        // (100, 123), (100, 456), (200, 123)
    };
    assert_eq!(stats, expected);
}

#[test]
fn missing_root_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let root = ProcRoot::new(tmp.path().join("absent"));
    assert!(root.scan_socket_owners().unwrap_err().is_not_found());
}

#[test]
fn process_reads_stat_status_cmdline_and_exe() {
    let (_tmp, root) = fixture();
    let info = root.process(100).unwrap();
    assert_eq!(info.key, KEY_100);
    assert_eq!(info.comm, "my (weird) comm");
    assert_eq!(info.uid, 1000);
    assert_eq!(info.exe.as_deref(), Some("/usr/bin/server"));
    assert_eq!(info.cmdline, ["my (weird) comm", "--flag"]);
}

#[test]
fn process_without_readable_exe_has_none() {
    let (_tmp, root) = fixture();
    assert_eq!(root.process(200).unwrap().exe, None);
}

#[test]
fn exited_process_is_not_found() {
    let (_tmp, root) = fixture();
    assert!(root.process(999).unwrap_err().is_not_found());
    assert!(root.process(500).unwrap_err().is_not_found());
}

#[test]
fn garbage_stat_is_a_parse_error_naming_the_file() {
    let (tmp, root) = fixture();
    file(&tmp.path().join("100/stat"), "100 (x");
    match root.process(100).unwrap_err() {
        Error::Parse { what, .. } => assert!(what.ends_with("100/stat"), "{what}"),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn namespaces_come_from_ns_net_links() {
    let (_tmp, root) = fixture();
    assert_eq!(root.self_netns().unwrap(), NetNsId(4026531993));
    assert_eq!(root.netns_of(100).unwrap(), NetNsId(4026532001));
    assert!(root.netns_of(200).unwrap_err().is_not_found());
}

#[test]
fn read_sockets_skips_missing_tables() {
    let (tmp, root) = fixture();
    // Lines from Linux 6.18: only tcp and udp6 exist in this root.
    file(
        &tmp.path().join("net/tcp"),
        include_str!("fixtures/linux-6.18/tcp"),
    );
    file(
        &tmp.path().join("net/udp6"),
        include_str!("fixtures/linux-6.18/udp6"),
    );
    let entries = root.read_sockets(NetNsId(7)).unwrap();
    assert_eq!(entries.len(), 9 + 2);
    assert!(entries.iter().all(|e| e.netns == NetNsId(7)));
}

#[test]
fn read_sockets_parse_error_names_the_file() {
    let (tmp, root) = fixture();
    file(
        &tmp.path().join("net/udp"),
        "  sl  local_address rem_address\n   0: nonsense\n",
    );
    match root.read_sockets(NetNsId(7)).unwrap_err() {
        Error::Parse { what, line, .. } => {
            assert!(what.ends_with("net/udp"), "{what}");
            assert_eq!(line, 2);
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

const CHILD_ROOT_ENV: &str = "PIDCAP_SOCKETS_TEST_FIXTURE_ROOT";
const NOBODY: u32 = 65534;

/// Runs [`scan_as_nobody_child`] as user nobody against a fixture where one process's fd dir
/// is mode 000 (root ignores modes, so this needs a real unprivileged process).
#[test]
fn unreadable_fd_dir_is_counted_as_permission_denied() {
    let tmp = tempfile::tempdir().unwrap();
    build_fixture(tmp.path());
    let forbidden = process(tmp.path(), 600, "secret", 10_000, 0, &["socket:[999]"]);
    fs::set_permissions(forbidden.join("fd"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();

    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "scan_as_nobody_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ROOT_ENV, tmp.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "child test did not run:\n{stdout}"
    );
}

/// Helper of [`unreadable_fd_dir_is_counted_as_permission_denied`], run by it as nobody.
#[test]
#[ignore = "run as user nobody by unreadable_fd_dir_is_counted_as_permission_denied"]
fn scan_as_nobody_child() {
    let path = std::env::var_os(CHILD_ROOT_ENV).expect("only run by the parent test");
    let scan = ProcRoot::new(path).scan_socket_owners().unwrap();
    assert_eq!(scan.stats.permission_denied, 1);
    assert_eq!(
        scan.stats.first_denied,
        Some(600),
        "the forbidden process is named"
    );
    assert_eq!(scan.stats.processes_scanned, 6);
    assert!(!scan.holders.contains_key(&999));
    assert_eq!(sorted(scan.holders[&123].clone()), [KEY_100, KEY_200]);

    // The real /proc as nobody: other users' fd dirs are off limits, yet the scan succeeds.
    let live = ProcRoot::default().scan_socket_owners().unwrap();
    assert!(live.stats.permission_denied >= 1, "{:?}", live.stats);
}
