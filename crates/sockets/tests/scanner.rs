//! `OwnerScanner`: the same map as `ProcRoot::scan_socket_owners` (on a fixture root and on
//! live `/proc`), targeted resolution in the documented order, no allocation per fd, and an
//! informational timing against `ss -tunap`. Runs as root (CI does); all sockets stay on
//! loopback or in a network namespace the test creates; every child process is bounded in
//! time and reaped.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use pidcap_core::ProcessKey;
use pidcap_sockets::{OwnerScan, OwnerScanner, ProcRoot, ResolveStats};
use pidcap_wire::IpProto;

// ---------------------------------------------------------------------------------------
// A counting allocator: allocations made by the current thread.

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_allocation() {
    // try_with: the counter may already be gone while the thread exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// a const-initialised thread-local Cell, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// `f`'s result and the allocations (alloc, alloc_zeroed, realloc) it made on this thread.
fn allocations_during<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let value = f();
    (value, ALLOCATIONS.with(Cell::get) - before)
}

// ---------------------------------------------------------------------------------------
// Fixture roots (as in tests/fixture_root.rs).

/// A `/proc/<pid>/stat` line as Linux 6.18 prints it, with `comm` and `starttime` (field 22)
/// substituted.
fn stat_line(pid: u32, comm: &str, start_time: u64) -> String {
    format!(
        "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 1160 0 0 0 2 0 0 0 20 0 1 0 {start_time} \
         17137664 2304 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0\n"
    )
}

/// The head of `/proc/<pid>/status` (Linux 6.18) of thread `pid` of process `tgid`.
fn status(tgid: u32, pid: u32, uid: u32) -> String {
    format!(
        "Name:\tx\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{tgid}\nNgid:\t0\nPid:\t{pid}\n\
         PPid:\t1\nTracerPid:\t0\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
    )
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
    file(&p.join("status"), status(pid, pid, uid));
    file(&p.join("cmdline"), format!("{comm}\0--flag\0"));
    for (n, target) in fds.iter().enumerate() {
        symlink(target, p.join("fd").join(n.to_string())).unwrap();
    }
    p
}

/// The fixture of tests/fixture_root.rs:
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
    process(root, 200, "worker", 6000, 0, &["socket:[123]"]);
    let p300 = process(root, 300, "cat", 7000, 0, &["pipe:[9]", "/dev/null"]);
    fs::remove_file(p300.join("stat")).unwrap();
    let p400 = process(root, 400, "gone", 8000, 0, &[]);
    fs::remove_dir(p400.join("fd")).unwrap();
    let p500 = process(root, 500, "late", 9000, 0, &["socket:[789]"]);
    fs::remove_file(p500.join("stat")).unwrap();
    dir(&root.join("self/ns"));
    dir(&root.join("net"));
    dir(&root.join("sys"));
}

/// Holders sorted, so two scans compare whatever order processes were visited in.
fn normalized(scan: &OwnerScan) -> HashMap<u64, Vec<ProcessKey>> {
    let mut holders = scan.holders.clone();
    holders.values_mut().for_each(|keys| keys.sort());
    holders
}

fn assert_same_scan(new: &OwnerScan, old: &OwnerScan) {
    assert_eq!(normalized(new), normalized(old));
    assert_eq!(new.processes, old.processes);
    assert_eq!(new.stats, old.stats);
}

#[test]
fn scan_all_equals_scan_socket_owners_on_a_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    build_fixture(tmp.path());
    let root = ProcRoot::new(tmp.path());
    let old = root.scan_socket_owners().unwrap();
    let mut scanner = OwnerScanner::open(&root).unwrap();
    let new = scanner.scan_all().unwrap();
    assert_same_scan(&new, &old);
    // What the old scan is known to find (tests/fixture_root.rs), so equality is not vacuous.
    assert_eq!(new.holders.len(), 2);
    assert_eq!((new.stats.vanished, new.stats.sockets_found), (2, 3));
    // The open root serves later passes too.
    assert_same_scan(&scanner.scan_all().unwrap(), &old);
}

#[test]
fn scan_all_sees_processes_that_appear_and_vanish_between_passes() {
    let tmp = tempfile::tempdir().unwrap();
    build_fixture(tmp.path());
    let root = ProcRoot::new(tmp.path());
    let mut scanner = OwnerScanner::open(&root).unwrap();
    scanner.scan_all().unwrap();
    process(tmp.path(), 700, "new", 11_000, 0, &["socket:[777]"]);
    fs::remove_dir_all(tmp.path().join("200")).unwrap();
    let new = scanner.scan_all().unwrap();
    assert_same_scan(&new, &root.scan_socket_owners().unwrap());
    assert!(new.holders.contains_key(&777));
    assert_eq!(new.holders[&123].len(), 1);
}

#[test]
fn missing_root_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let root = ProcRoot::new(tmp.path().join("absent"));
    assert!(OwnerScanner::open(&root).unwrap_err().is_not_found());
}

const CHILD_ROOT_ENV: &str = "PIDCAP_SOCKETS_SCANNER_FIXTURE_ROOT";
const NOBODY: u32 = 65534;

/// Runs [`scanner_as_nobody_child`] as user nobody against a fixture where one process's
/// fd dir is mode 000 (root ignores modes, so this needs a real unprivileged process).
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
            "scanner_as_nobody_child",
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
fn scanner_as_nobody_child() {
    let path = std::env::var_os(CHILD_ROOT_ENV).expect("only run by the parent test");
    let root = ProcRoot::new(path);
    let scan = OwnerScanner::open(&root).unwrap().scan_all().unwrap();
    assert_eq!(scan.stats.permission_denied, 1);
    assert_eq!(
        scan.stats.first_denied,
        Some(600),
        "the forbidden process is named"
    );
    assert!(!scan.holders.contains_key(&999));
    assert_same_scan(&scan, &root.scan_socket_owners().unwrap());

    // The real /proc as nobody: other users' fd dirs are off limits, yet the scan succeeds.
    let live = OwnerScanner::open(&ProcRoot::default())
        .unwrap()
        .scan_all()
        .unwrap();
    assert!(live.stats.permission_denied >= 1, "{:?}", live.stats);
}

// ---------------------------------------------------------------------------------------
// Targeted resolution on a fixture root: the visiting order, exactly.

/// Pids 10..=50, each holding socket 1000 + pid, owned (the `<pid>` directory's uid) by
/// 1000 for 10, 30, 50 and by root for 20, 40. With `last_pid`, a `loadavg` naming it.
fn order_fixture(last_pid: Option<u32>) -> (tempfile::TempDir, ProcRoot) {
    let tmp = tempfile::tempdir().unwrap();
    for pid in [10u32, 20, 30, 40, 50] {
        let uid = if pid % 20 == 0 { 0 } else { 1000 };
        let socket = format!("socket:[{}]", 1000 + pid);
        let p = process(tmp.path(), pid, "holder", u64::from(pid), uid, &[&socket]);
        std::os::unix::fs::chown(&p, Some(uid), None).unwrap();
    }
    if let Some(last) = last_pid {
        file(
            &tmp.path().join("loadavg"),
            format!("0.37 0.80 0.99 1/87 {last}\n"),
        );
    }
    let root = ProcRoot::new(tmp.path());
    (tmp, root)
}

fn resolve(root: &ProcRoot, wanted: &[u64], uids: &[u32]) -> (ResolveStats, OwnerScan) {
    let mut into = OwnerScan::default();
    let mut scanner = OwnerScanner::open(root).unwrap();
    let stats = scanner.resolve(wanted, uids, &mut into).unwrap();
    (stats, into)
}

fn visited(root: &ProcRoot, wanted: &[u64], uids: &[u32]) -> u64 {
    resolve(root, wanted, uids).0.processes_visited
}

#[test]
fn resolve_visits_matching_uids_first_then_the_rest_highest_pid_first() {
    // Order: 50, 30, 10 (uid 1000), then 40, 20.
    let (_tmp, root) = order_fixture(None);
    assert_eq!(visited(&root, &[1050], &[1000]), 1);
    assert_eq!(visited(&root, &[1010], &[1000]), 3);
    assert_eq!(visited(&root, &[1040], &[1000]), 4);
    assert_eq!(visited(&root, &[1020], &[1000]), 5);
    assert_eq!(visited(&root, &[1010, 1040], &[1000]), 4);
    // No uids: one group, 50, 40, 30, 20, 10.
    assert_eq!(visited(&root, &[1040], &[]), 2);
    assert_eq!(visited(&root, &[1010], &[]), 5);
}

#[test]
fn resolve_after_pid_wrap_visits_pids_up_to_the_last_one_first() {
    // loadavg says 30 was handed out last: 40 and 50 are older (before the wrap).
    // Order with uid 1000 first: 30, 10, 50, then 20, 40.
    let (_tmp, root) = order_fixture(Some(30));
    assert_eq!(visited(&root, &[1030], &[1000]), 1);
    assert_eq!(visited(&root, &[1050], &[1000]), 3);
    assert_eq!(visited(&root, &[1040], &[1000]), 5);
    // No uids: 30, 20, 10, 50, 40.
    assert_eq!(visited(&root, &[1050], &[]), 4);
}

#[test]
fn resolve_probes_the_newest_pids_without_listing_and_skips_threads() {
    // 35 is a thread of 30 (the kernel lets /proc/35 be opened, though the listing never
    // shows it): it shares 30's fd table, so its fd dir holds 30's socket too.
    let (tmp, root) = order_fixture(Some(35));
    let thread = process(tmp.path(), 35, "holder", 35, 1000, &["socket:[1030]"]);
    file(&thread.join("status"), status(30, 35, 1000));
    let (stats, into) = resolve(&root, &[1030], &[1000]);
    assert_eq!(stats.processes_visited, 1);
    let key = ProcessKey {
        pid: 30,
        start_time: 30,
    };
    assert_eq!(into.holders[&1030], [key]);
    assert_eq!(into.processes.keys().collect::<Vec<_>>(), [&key]);
}

#[test]
fn resolve_records_holders_and_facts_of_what_it_found() {
    let (_tmp, root) = order_fixture(None);
    let (stats, into) = resolve(&root, &[1030, 1030, 1010], &[1000]);
    let expected = ResolveStats {
        processes_visited: 3,
        found: 2,
        missing: 0,
    };
    assert_eq!(stats, expected);
    let key = |pid: u32| ProcessKey {
        pid,
        start_time: u64::from(pid),
    };
    assert_eq!(into.holders[&1030], [key(30)]);
    assert_eq!(into.holders[&1010], [key(10)]);
    // Only wanted inodes are recorded: 50 was visited, its socket 1050 was not asked for.
    assert_eq!(into.holders.len(), 2);
    assert_eq!(into.processes.len(), 2);
    assert_eq!(into.processes[&key(30)], root.process(30).unwrap());
    assert_eq!(into.stats.processes_scanned, 3);
    assert_eq!(into.stats.sockets_found, 2);
}

#[test]
fn resolve_merges_into_an_existing_scan() {
    let (_tmp, root) = order_fixture(None);
    let mut into = root.scan_socket_owners().unwrap();
    let stranger = ProcessKey {
        pid: 77,
        start_time: 1,
    };
    into.holders.insert(1030, vec![stranger]);
    into.holders.remove(&1050);
    let before = into.clone();
    let mut scanner = OwnerScanner::open(&root).unwrap();
    for _ in 0..2 {
        let stats = scanner.resolve(&[1030, 1050], &[], &mut into).unwrap();
        assert_eq!((stats.found, stats.missing), (2, 0));
    }
    let key = |pid: u32| ProcessKey {
        pid,
        start_time: u64::from(pid),
    };
    // Added once despite two resolutions; the holder already there is kept.
    assert_eq!(into.holders[&1030], [stranger, key(30)]);
    assert_eq!(into.holders[&1050], [key(50)]);
    assert_eq!(into.holders[&1010], before.holders[&1010]);
    assert_eq!(into.processes, before.processes);
}

#[test]
fn resolve_of_an_inode_nobody_holds_visits_everything() {
    let (tmp, root) = order_fixture(None);
    let gone = process(tmp.path(), 60, "gone", 60, 0, &[]);
    fs::remove_dir(gone.join("fd")).unwrap();
    let (stats, into) = resolve(&root, &[9999], &[1000]);
    let expected = ResolveStats {
        processes_visited: 6,
        found: 0,
        missing: 1,
    };
    assert_eq!(stats, expected);
    assert!(into.holders.is_empty() && into.processes.is_empty());
    assert_eq!(into.stats.vanished, 1);
}

#[test]
fn resolve_of_nothing_visits_nothing() {
    let (_tmp, root) = order_fixture(None);
    assert_eq!(resolve(&root, &[], &[0]).0, ResolveStats::default());
}

// ---------------------------------------------------------------------------------------
// Live /proc. These tests change this process's fd table, so they run one at a time.

static LIVE: Mutex<()> = Mutex::new(());

fn live_lock() -> MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The inode of an open socket: `/proc/self/fd/N` leads to the socket itself.
fn inode_of(fd: &impl AsRawFd) -> u64 {
    fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .ino()
}

fn me(scan: &OwnerScan) -> ProcessKey {
    let pid = std::process::id();
    *scan
        .processes
        .keys()
        .find(|k| k.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} not among the holders"))
}

#[test]
fn live_scan_all_maps_this_process_sockets_to_it() {
    let _live = live_lock();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("[::1]:0").unwrap();
    let scan = OwnerScanner::open(&ProcRoot::default())
        .unwrap()
        .scan_all()
        .unwrap();
    let key = me(&scan);
    for inode in [inode_of(&tcp), inode_of(&udp)] {
        assert!(
            scan.holders.get(&inode).is_some_and(|h| h.contains(&key)),
            "{inode} not held by {key:?}"
        );
    }
    let info = &scan.processes[&key];
    assert_eq!(
        info.exe.as_deref(),
        std::env::current_exe().unwrap().to_str()
    );
    assert_eq!(info, &ProcRoot::default().process(key.pid).unwrap());
}

/// The (inode, holder) pairs of a scan, and the facts, without counters (which change with
/// every process that starts or exits on the machine).
fn pairs(scan: &OwnerScan) -> HashSet<(u64, ProcessKey)> {
    scan.holders
        .iter()
        .flat_map(|(&inode, keys)| keys.iter().map(move |&k| (inode, k)))
        .collect()
}

/// Live `/proc` changes under the test (other processes open and close sockets), so the
/// comparison is made on a pass where two old scans around the new one agree.
#[test]
fn live_scan_all_equals_scan_socket_owners_when_nothing_changed() {
    let _live = live_lock();
    // At least one holder on any machine: this test's own socket.
    let _held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let root = ProcRoot::default();
    let mut scanner = OwnerScanner::open(&root).unwrap();
    for _ in 0..20 {
        let before = root.scan_socket_owners().unwrap();
        let new = scanner.scan_all().unwrap();
        let after = root.scan_socket_owners().unwrap();
        if pairs(&before) == pairs(&after) && before.processes == after.processes {
            assert_eq!(pairs(&new), pairs(&before));
            assert_eq!(new.processes, before.processes);
            assert!(!new.holders.is_empty());
            return;
        }
    }
    panic!("socket holders changed during each of 20 attempts");
}

const HOLDER_PY: &str = r#"
import os, select, socket, sys
mode = sys.argv[1]
keep = []
if mode == "listen":
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    keep.append(s)
    print(s.getsockname()[1], flush=True)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    keep.append(s)
    if mode == "dups":
        keep += [os.dup(s.fileno()) for _ in range(500)]
        keep += [os.pipe() for _ in range(250)]
    elif mode == "sockets":
        keep += [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(500)]
    print("ready", flush=True)
# Hold until stdin closes, 30 s at most.
select.select([sys.stdin], [], [], 30)
"#;

/// A `python3` child running [`HOLDER_PY`]; it exits when dropped (stdin closes) and is
/// reaped.
struct PyHolder {
    child: Child,
    stdin: Option<ChildStdin>,
    first_line: String,
}

impl PyHolder {
    fn spawn(mode: &str) -> PyHolder {
        let mut child = Command::new("python3")
            .args(["-c", HOLDER_PY, mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed by these tests");
        let stdin = child.stdin.take();
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first_line)
            .unwrap();
        assert!(!first_line.is_empty(), "python holder died");
        PyHolder {
            child,
            stdin,
            first_line,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PyHolder {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"bye\n");
        }
        let _ = self.child.wait();
    }
}

fn live_process_count() -> u64 {
    fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_str().is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count() as u64
}

#[test]
fn live_resolve_finds_a_new_child_socket_visiting_few_processes() {
    let _live = live_lock();
    let child = PyHolder::spawn("listen");
    let port: u16 = child.first_line.trim().parse().unwrap();
    let root = ProcRoot::default();
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let inode = root
        .read_sockets(root.self_netns().unwrap())
        .unwrap()
        .into_iter()
        .find(|e| e.proto == IpProto::Tcp && e.local == local)
        .unwrap_or_else(|| panic!("no tcp socket on {local}"))
        .inode;
    let uid = fs::metadata(format!("/proc/{}", child.pid()))
        .unwrap()
        .uid();

    let mut scanner = OwnerScanner::open(&root).unwrap();
    let mut into = OwnerScan::default();
    let stats = scanner.resolve(&[inode], &[uid], &mut into).unwrap();
    let total = live_process_count();
    println!(
        "resolve visited {} of {total} processes",
        stats.processes_visited
    );
    assert_eq!((stats.found, stats.missing), (1, 0));
    let holders = &into.holders[&inode];
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].pid, child.pid());
    let info = &into.processes[&holders[0]];
    assert_eq!(info.cmdline[1..3], ["-c", HOLDER_PY]);
    // The child is among the newest processes: only those started after it come before.
    assert!(
        stats.processes_visited * 2 < total,
        "visited {} of {total}",
        stats.processes_visited
    );
}

#[test]
fn live_resolve_of_an_inode_nobody_holds_is_missing_after_visiting_all() {
    let _live = live_lock();
    let before = live_process_count();
    let mut scanner = OwnerScanner::open(&ProcRoot::default()).unwrap();
    let mut into = OwnerScan::default();
    // Socket inodes are allocated upwards from small numbers; this one is never reached.
    let stats = scanner.resolve(&[u64::MAX - 7], &[0], &mut into).unwrap();
    assert_eq!((stats.found, stats.missing), (0, 1));
    assert!(into.holders.is_empty() && into.processes.is_empty());
    // Every process that still exists was visited (a few may have exited meanwhile).
    assert!(
        stats.processes_visited + 20 >= before,
        "visited {} of {before}",
        stats.processes_visited
    );
    assert_eq!(
        into.stats.processes_scanned, stats.processes_visited,
        "{:?}",
        into.stats
    );
}

// ---------------------------------------------------------------------------------------
// No allocation per fd.

/// A root whose only entry `<pid>` links to `/proc/<pid>`: a scan of it reads exactly one
/// live process.
fn root_of_one(pid: u32) -> (tempfile::TempDir, ProcRoot) {
    let tmp = tempfile::tempdir().unwrap();
    symlink(format!("/proc/{pid}"), tmp.path().join(pid.to_string())).unwrap();
    let root = ProcRoot::new(tmp.path());
    (tmp, root)
}

/// Allocations of the second `scan_all` of a root holding only `pid` (the first one grows
/// the reused buffers), and of `scan_socket_owners` on it; with the scan, for checks.
fn scan_allocations(pid: u32) -> (u64, u64, OwnerScan) {
    let (_tmp, root) = root_of_one(pid);
    let mut scanner = OwnerScanner::open(&root).unwrap();
    scanner.scan_all().unwrap();
    let (scan, new) = allocations_during(|| scanner.scan_all().unwrap());
    let (_, old) = allocations_during(|| root.scan_socket_owners().unwrap());
    (new, old, scan)
}

#[test]
fn scan_all_allocates_per_process_and_socket_never_per_fd() {
    let _live = live_lock();
    let one = PyHolder::spawn("one"); // 1 socket
    let dups = PyHolder::spawn("dups"); // 1 socket in 501 fds, plus 500 pipe fds
    let sockets = PyHolder::spawn("sockets"); // 501 sockets
    let (new_one, old_one, scan_one) = scan_allocations(one.pid());
    let (new_dups, old_dups, scan_dups) = scan_allocations(dups.pid());
    let (new_sockets, _, scan_sockets) = scan_allocations(sockets.pid());
    println!(
        "allocations of one scan_all: 1 socket {new_one}, +1000 fds {new_dups}, +500 sockets \
         {new_sockets}; scan_socket_owners: 1 socket {old_one}, +1000 fds {old_dups}"
    );
    assert_eq!(scan_one.holders.len(), 1);
    assert_eq!(scan_dups.holders.len(), 1);
    assert!(scan_dups.stats.fds_read >= scan_one.stats.fds_read + 1000);
    assert_eq!(scan_sockets.holders.len(), 501);
    // The counter sees per-fd allocations where there are some (one path per fd).
    assert!(old_dups >= old_one + 1000, "{old_one} -> {old_dups}");
    // 1,000 more fds: no more allocations.
    assert!(new_dups <= new_one + 2, "{new_one} -> {new_dups}");
    // 500 more sockets: one holder list each, plus the map's growth; still not per fd.
    assert!(
        (new_one + 500..=new_one + 500 + 32).contains(&new_sockets),
        "{new_one} -> {new_sockets}"
    );
}

// ---------------------------------------------------------------------------------------
// Timing (informational).

#[test]
#[ignore = "informational timing (forks 1,000 processes); run with --ignored --nocapture"]
fn timing_full_refresh_and_resolve_with_20000_sockets_in_1000_processes() {
    timing::run(1000, 10, 10);
}

/// Forked socket holders in a private network namespace, and the measurements.
mod timing {
    use std::io;
    use std::mem;
    use std::net::UdpSocket;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::process::{Command, Stdio};
    use std::thread;
    use std::time::{Duration, Instant};

    use pidcap_core::NetNsId;
    use pidcap_sockets::{OwnerScan, OwnerScanner, ProcRoot, SockDiag};

    /// Children forked from this test, each holding sockets until the release pipe closes
    /// (or 120 s pass: `alarm`). Dropping closes it and reaps them all.
    pub(super) struct ForkedHolders {
        pids: Vec<libc::pid_t>,
        release: Option<OwnedFd>,
        release_read: OwnedFd,
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we own.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: both fds are fresh and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn loopback_any_port() -> libc::sockaddr_in {
        // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        addr
    }

    /// The forked child: only async-signal-safe calls, no allocation. Never returns.
    ///
    /// SAFETY (caller): call only in a freshly forked child.
    unsafe fn hold(
        tcp: usize,
        udp: usize,
        addr: &libc::sockaddr_in,
        ready: RawFd,
        release: RawFd,
        release_w: RawFd,
    ) -> ! {
        // SAFETY: plain system calls on fds this child inherited and memory it owns.
        unsafe {
            libc::alarm(120);
            libc::close(release_w);
            let mut status = b'y';
            for i in 0..tcp + udp {
                let kind = if i < tcp {
                    libc::SOCK_STREAM
                } else {
                    libc::SOCK_DGRAM
                };
                let fd = libc::socket(libc::AF_INET, kind, 0);
                let len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                let bound =
                    fd >= 0 && libc::bind(fd, (addr as *const libc::sockaddr_in).cast(), len) == 0;
                if !bound || (i < tcp && libc::listen(fd, 1) != 0) {
                    status = b'n';
                    break;
                }
            }
            libc::write(ready, (&status as *const u8).cast(), 1);
            let mut byte = 0u8;
            while libc::read(release, (&mut byte as *mut u8).cast(), 1) > 0 {}
            libc::_exit(0)
        }
    }

    impl ForkedHolders {
        pub(super) fn new() -> Self {
            let (release_read, release) = pipe();
            ForkedHolders {
                pids: Vec::new(),
                release: Some(release),
                release_read,
            }
        }

        /// Forks `children` processes holding `tcp` listeners and `udp` bound sockets each
        /// (on 127.0.0.1, in the calling thread's network namespace), and waits until all
        /// report them open.
        pub(super) fn spawn(&mut self, children: usize, tcp: usize, udp: usize) {
            let (ready_read, ready) = pipe();
            let addr = loopback_any_port();
            let release_w = self.release.as_ref().unwrap().as_raw_fd();
            for _ in 0..children {
                // SAFETY: the child runs only `hold`, which is async-signal-safe.
                match unsafe { libc::fork() } {
                    -1 => panic!("fork: {}", io::Error::last_os_error()),
                    0 => unsafe {
                        hold(
                            tcp,
                            udp,
                            &addr,
                            ready.as_raw_fd(),
                            self.release_read.as_raw_fd(),
                            release_w,
                        )
                    },
                    pid => self.pids.push(pid),
                }
            }
            drop(ready);
            let mut statuses = vec![0u8; children];
            let mut got = 0;
            while got < children {
                // SAFETY: reads into the unfilled tail of a buffer we own.
                let n = unsafe {
                    libc::read(
                        ready_read.as_raw_fd(),
                        statuses[got..].as_mut_ptr().cast(),
                        children - got,
                    )
                };
                assert!(
                    n > 0,
                    "a holder died before reporting: {}",
                    io::Error::last_os_error()
                );
                got += n as usize;
            }
            assert!(
                statuses.iter().all(|&s| s == b'y'),
                "a holder could not open its sockets"
            );
        }

        /// Forks one child that inherits `socket` (and holds nothing else of its own).
        pub(super) fn spawn_holding(&mut self, socket: UdpSocket) {
            self.spawn(1, 0, 0);
            drop(socket);
        }

        pub(super) fn pids(&self) -> &[libc::pid_t] {
            &self.pids
        }
    }

    impl Drop for ForkedHolders {
        fn drop(&mut self) {
            drop(self.release.take());
            for &pid in &self.pids {
                // SAFETY: waits for our own child; the status pointer may be null.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
        }
    }

    /// Runs `f` on a new thread in a new network namespace with loopback up (so the tables
    /// hold only the sockets of this test, and children forked from the thread join it).
    fn in_private_netns<T: Send + 'static>(f: impl FnOnce(NetNsId) -> T + Send + 'static) -> T {
        let worker = thread::spawn(move || {
            // SAFETY: unshare only changes the calling thread's namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) needs root: {}",
                io::Error::last_os_error()
            );
            loopback_up();
            let ino = std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata("/proc/thread-self/ns/net").unwrap(),
            );
            f(NetNsId(ino))
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// `ip link set lo up` for the calling thread's namespace (SIOCGIFFLAGS / SIOCSIFFLAGS).
    fn loopback_up() {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: both ioctls read and write an ifreq we own, on an open socket.
        unsafe {
            assert_eq!(
                libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr),
                0
            );
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr), 0);
        }
    }

    /// CPU time (user + system, and system alone) used so far by this thread, or by reaped
    /// children.
    fn cpu_time(who: libc::c_int) -> (Duration, Duration) {
        // SAFETY: rusage is plain data; getrusage fills the one we own.
        let mut usage: libc::rusage = unsafe { mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrusage(who, &mut usage) }, 0);
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        (tv(usage.ru_utime) + tv(usage.ru_stime), tv(usage.ru_stime))
    }

    /// Wall-clock median and minimum, and CPU-time median, of `runs` runs of `f`. CPU time
    /// is this thread's, or with `children` that of the child processes `f` runs and reaps
    /// (the machine is shared: wall time includes waiting for a core, CPU time does not).
    struct Timing {
        wall: Duration,
        wall_min: Duration,
        cpu: Duration,
        sys: Duration,
    }

    impl std::fmt::Display for Timing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "wall median {:.1?} (min {:.1?}), CPU median {:.1?} (system {:.1?})",
                self.wall, self.wall_min, self.cpu, self.sys
            )
        }
    }

    fn time<T>(runs: usize, children: bool, mut f: impl FnMut() -> T) -> Timing {
        let who = if children {
            libc::RUSAGE_CHILDREN
        } else {
            libc::RUSAGE_THREAD
        };
        let mut taken: Vec<[Duration; 3]> = (0..runs)
            .map(|_| {
                let (t, (cpu, sys)) = (Instant::now(), cpu_time(who));
                std::hint::black_box(f());
                let (cpu_after, sys_after) = cpu_time(who);
                [t.elapsed(), cpu_after - cpu, sys_after - sys]
            })
            .collect();
        let mut median = |column: usize| {
            taken.sort_by_key(|run| run[column]);
            taken[runs / 2][column]
        };
        let (wall, cpu, sys) = (median(0), median(1), median(2));
        taken.sort_by_key(|run| run[0]);
        Timing {
            wall,
            wall_min: taken[0][0],
            cpu,
            sys,
        }
    }

    fn held_by(scan: &OwnerScan, pids: &[libc::pid_t]) -> usize {
        scan.holders
            .values()
            .filter(|keys| keys.iter().any(|k| pids.contains(&(k.pid as libc::pid_t))))
            .count()
    }

    pub(super) fn run(children: usize, tcp: usize, udp: usize) {
        in_private_netns(move |ns| {
            let mut holders = ForkedHolders::new();
            let t = Instant::now();
            holders.spawn(children, tcp, udp);
            println!(
                "forked {children} holders of {} sockets each in {:?}",
                tcp + udp,
                t.elapsed()
            );

            let proc_root = ProcRoot::default();
            let tables_root = ProcRoot::new("/proc/thread-self");
            let mut diag = SockDiag::open().unwrap();
            let mut scanner = OwnerScanner::open(&proc_root).unwrap();
            let mut entries = Vec::with_capacity(32 * 1024);

            let new_scan = scanner.scan_all().unwrap();
            let old_scan = proc_root.scan_socket_owners().unwrap();
            let expected = children * (tcp + udp);
            assert_eq!(held_by(&new_scan, holders.pids()), expected);
            assert_eq!(held_by(&old_scan, holders.pids()), expected);
            println!("scan stats: {:?}", new_scan.stats);

            let runs = 7;
            let new = time(runs, false, || {
                entries.clear();
                diag.read_sockets_into(ns, &mut entries).unwrap();
                scanner.scan_all().unwrap()
            });
            assert!(entries.len() >= expected);
            let old = time(runs, false, || {
                let sockets = tables_root.read_sockets(ns).unwrap();
                (sockets, proc_root.scan_socket_owners().unwrap())
            });
            let owners = time(runs, false, || scanner.scan_all().unwrap());
            let fds_only = time(runs, false, || {
                scanner
                    .resolve(&[u64::MAX - 7], &[], &mut OwnerScan::default())
                    .unwrap()
            });
            let ss = time(runs, true, || {
                let status = Command::new("ss")
                    .arg("-tunap")
                    .stdout(Stdio::null())
                    .status()
                    .expect("ss (iproute2) is needed");
                assert!(status.success());
            });
            let processes = new_scan.stats.processes_scanned;
            println!(
                "{} sockets, {processes} processes (debug build):",
                entries.len()
            );
            println!("  full refresh, SockDiag::read_sockets_into + OwnerScanner::scan_all: {new}");
            println!("    of which scan_all: {owners}");
            println!("    fd links only (resolve of an inode nobody holds, no uids): {fds_only}");
            println!(
                "  full refresh, ProcRoot::read_sockets + ProcRoot::scan_socket_owners: {old}"
            );
            println!("  ss -tunap: {ss}");
            let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
            println!(
                "  full refresh / ss -tunap: wall {:.2}, CPU {:.2}",
                ratio(new.wall, ss.wall),
                ratio(new.cpu, ss.cpu)
            );

            // Targeted resolution of one new socket, held by a process forked just before.
            let mut resolve_times = Vec::new();
            let mut visited = Vec::new();
            for _ in 0..21 {
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                let inode = std::os::unix::fs::MetadataExt::ino(
                    &std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd())).unwrap(),
                );
                holders.spawn_holding(socket);
                let mut into = OwnerScan::default();
                let t = Instant::now();
                let stats = scanner.resolve(&[inode], &[0], &mut into).unwrap();
                resolve_times.push(t.elapsed());
                assert_eq!(stats.found, 1);
                visited.push(stats.processes_visited);
            }
            resolve_times.sort();
            println!("  resolve (one new socket, newest holder): median {:?} (min {:?}, max {:?}), processes visited {visited:?}",
                resolve_times[10], resolve_times[0], resolve_times[20]);
            let miss = time(runs, false, || {
                let mut into = OwnerScan::default();
                scanner.resolve(&[u64::MAX - 7], &[0], &mut into).unwrap()
            });
            println!("  resolve (inode nobody holds, uid 0 first, visits all): {miss}");
        });
    }
}

/// A second full pass reuses the facts of unchanged holders (only `stat` is read for them)
/// and still gives the same answer.
#[test]
fn a_second_full_pass_reuses_facts_and_agrees() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut scanner =
        pidcap_sockets::OwnerScanner::open(&pidcap_sockets::ProcRoot::default()).unwrap();
    let first = scanner.scan_all().unwrap();
    let second = scanner.scan_all().unwrap();
    let me = std::process::id();
    let mine = |scan: &pidcap_sockets::OwnerScan| {
        scan.processes
            .values()
            .find(|p| p.key.pid == me)
            .cloned()
            .expect("this test process holds a socket")
    };
    assert_eq!(mine(&first), mine(&second));
    let inode_holders = |scan: &pidcap_sockets::OwnerScan| {
        scan.holders
            .iter()
            .filter(|(_, h)| h.iter().any(|k| k.pid == me))
            .count()
    };
    assert_eq!(inode_holders(&first), inode_holders(&second));
    drop(listener);
}
