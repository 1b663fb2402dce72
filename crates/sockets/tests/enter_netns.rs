//! Moving a thread into another process's network namespace and back (needs root:
//! CAP_SYS_ADMIN; CI runs as root). The namespace is one `unshare -n` makes for a child.

use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pidcap_core::NetNsId;
use pidcap_sockets::ProcRoot;

/// This thread's network namespace.
fn thread_netns() -> NetNsId {
    NetNsId(std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino())
}

/// A child in a network namespace of its own, and that namespace.
fn child_in_new_netns() -> (Child, NetNsId) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (CAP_SYS_ADMIN for unshare and setns): run it as root, as CI does"
    );
    let child = Command::new("unshare")
        .args(["--net", "sleep", "30"])
        .spawn()
        .expect("unshare (util-linux)");
    let root = ProcRoot::default();
    let home = root.self_netns().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // `unshare` execs `sleep` in the new namespace: wait until the pid is there.
        match root.netns_of(child.id()) {
            Ok(ns) if ns != home => return (child, ns),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            other => panic!("child never left the namespace: {other:?}"),
        }
    }
}

#[test]
fn a_thread_enters_a_namespace_and_comes_back() {
    let (mut child, netns) = child_in_new_netns();
    let pid = child.id();
    let (inside, after) = std::thread::spawn(move || {
        let root = ProcRoot::default();
        let entered = root.enter_netns(pid, netns).expect("enter");
        let inside = thread_netns();
        entered.leave().expect("leave");
        (inside, thread_netns())
    })
    .join()
    .unwrap();
    assert_eq!(inside, netns);
    assert_eq!(after, ProcRoot::default().self_netns().unwrap());
    assert_eq!(thread_netns(), after, "other threads never moved");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_pid_in_another_namespace_than_expected_is_not_entered() {
    let (mut child, netns) = child_in_new_netns();
    let root = ProcRoot::default();
    let wrong = NetNsId(netns.0 + 1);
    let error = root.enter_netns(child.id(), wrong).unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert_eq!(thread_netns(), root.self_netns().unwrap());
    let _ = child.kill();
    let _ = child.wait();
}
