//! Grouping by user, unit, container and network namespace: senders placed in cgroups named
//! as Docker, Podman and Kubernetes (containerd) name theirs, one sender on the host, and
//! one in a network namespace. Every process row, the `groups` query and the usage log say
//! where each process is, and each group's bytes are the sum of its processes'.

use std::time::Duration;

use pidcap_e2e::{wait_until, Cgroup, Daemon, Netns, Peer};
use serde_json::{json, Value};

const ID_DOCKER: &str = "d0c4e2000000000000000000000000000000000000000000000000000000d0c4";
const ID_PODMAN: &str = "90d3a0000000000000000000000000000000000000000000000000000000090d";
const ID_CRI: &str = "c21000000000000000000000000000000000000000000000000000000000c210";
const POD: &str = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";

/// A UDP sender of `count` 1000-byte datagrams to `to`, spawned by `spawn`.
fn sender(spawn: impl FnOnce(&[&str]) -> Peer, to: &str, count: &str) -> Peer {
    spawn(&[
        "udp-send",
        "--bind",
        "127.0.0.1:0",
        "--to",
        to,
        "--count",
        count,
        "--size",
        "1000",
        // One datagram in flight at a time: 100 unread datagrams of 1000 B can overflow the
        // receiver's default buffer on a loaded machine, and a lost one fails the test.
        "--await-reply",
    ])
}

fn row_of(daemon: &Daemon, pid: u32) -> Value {
    daemon
        .process(pid)
        .unwrap_or_else(|| panic!("no process row for pid {pid}"))
}

#[test]
fn rows_groups_and_log_lines_say_where_each_process_is() {
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let docker = Cgroup::new(&format!("system.slice/docker-{ID_DOCKER}.scope"));
    let podman = Cgroup::new(&format!("machine.slice/libpod-{ID_PODMAN}.scope/container"));
    let pod = POD.replace('-', "_");
    let cri = Cgroup::new(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod}.slice/cri-containerd-{ID_CRI}.scope"
    ));
    let unit = Cgroup::new("system.slice/pidcap-e2e-web.service");
    let mut receiver = Peer::spawn(&[
        "udp-recv",
        "--bind",
        "127.0.0.1:0",
        "--count",
        "100",
        "--reply-size",
        "8",
    ]);
    let to = format!("127.0.0.1:{}", receiver.info.local.port());
    // 10, 20, 30 and 40 datagrams, so each group's sum is told apart.
    let mut senders = vec![
        sender(|a| Peer::spawn_in_cgroup(&docker, a), &to, "10"),
        sender(|a| Peer::spawn_in_cgroup(&podman, a), &to, "20"),
        sender(|a| Peer::spawn_in_cgroup(&cri, a), &to, "30"),
        sender(|a| Peer::spawn_in_cgroup(&unit, a), &to, "40"),
    ];
    receiver.go();
    for s in &mut senders {
        s.go();
        s.wait_done();
    }
    assert_eq!(receiver.wait_done().received, 100 * 1000);
    let pids: Vec<u32> = senders.iter().map(Peer::pid).collect();
    let sent = |pid: u32| {
        let row = daemon.process(pid).unwrap_or_default();
        row["tx_bytes_total"].as_u64().unwrap_or(0)
    };
    let all_counted = wait_until(Duration::from_secs(10), || {
        pids.iter()
            .zip([10, 20, 30, 40])
            .all(|(&p, n)| sent(p) == n * 1028)
    });
    assert!(
        all_counted,
        "senders' tx: {:?}",
        pids.iter().map(|&p| sent(p)).collect::<Vec<_>>()
    );

    let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let host_netns: u64 = host_netns.to_str().unwrap()[5..]
        .trim_end_matches(']')
        .parse()
        .unwrap();
    let expect = [
        (
            pids[0],
            Some(("docker", ID_DOCKER, None)),
            format!("docker-{ID_DOCKER}.scope"),
        ),
        (
            pids[1],
            Some(("podman", ID_PODMAN, None)),
            format!("libpod-{ID_PODMAN}.scope"),
        ),
        (
            pids[2],
            Some(("containerd", ID_CRI, Some(POD))),
            format!("cri-containerd-{ID_CRI}.scope"),
        ),
        (pids[3], None, "pidcap-e2e-web.service".to_string()),
    ];
    let named = wait_until(Duration::from_secs(10), || {
        pids.iter().all(|&p| row_of(&daemon, p)["user"] == "root")
    });
    assert!(
        named,
        "user names not resolved: {}",
        row_of(&daemon, pids[0])
    );
    for (pid, container, unit) in &expect {
        let row = row_of(&daemon, *pid);
        assert_eq!(row["comm"], "pidcap-peer", "{row}");
        assert_eq!(row["netns"], host_netns, "{row}");
        assert_eq!(row["unit"], json!(unit), "{row}");
        assert_eq!(row["user"], "root", "{row}");
        let want = container.map(
            |(runtime, id, pod)| json!({"runtime": runtime, "id": id, "pod": pod, "name": null}),
        );
        assert_eq!(row["container"], want.unwrap_or(Value::Null), "{row}");
        assert!(
            row["cgroup"].as_str().unwrap().contains(unit.as_str()),
            "{row}"
        );
    }

    // groups: each container's bytes are its sender's; the host group holds the rest.
    let groups = daemon.query(&json!({"cmd": "groups", "by": "container"}));
    let sum_of = |key: &str| {
        groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["key"] == key)
            .map(|g| g["tx_bytes_total"].as_u64().unwrap())
    };
    assert_eq!(
        sum_of(&format!("docker:{ID_DOCKER}")),
        Some(10 * 1028),
        "{groups}"
    );
    assert_eq!(
        sum_of(&format!("podman:{ID_PODMAN}")),
        Some(20 * 1028),
        "{groups}"
    );
    assert_eq!(
        sum_of(&format!("containerd:{ID_CRI}")),
        Some(30 * 1028),
        "{groups}"
    );
    let host = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"].is_null());
    let host = host.expect("a group for processes in no container");
    assert!(
        host["tx_bytes_total"].as_u64().unwrap() >= 40 * 1028,
        "{groups}"
    );
    let by_user = daemon.query(&json!({"cmd": "groups", "by": "user"}));
    let root = &by_user["groups"][0];
    assert_eq!(root["key"], "root", "{by_user}");
    assert!(root["processes"].as_u64().unwrap() >= 5, "{by_user}");
    let bad = daemon.query(&json!({"cmd": "groups", "by": "colour"}));
    assert_eq!(bad["ok"], false, "{bad}");

    // The usage log carries the same fields.
    let mut lines = Vec::new();
    let logged = wait_until(Duration::from_secs(10), || {
        lines = pidcap_e2e::usage_log::read(daemon.usage_log());
        lines.iter().any(|l| l["pid"] == pids[2])
    });
    assert!(logged, "no usage-log line for pid {}", pids[2]);
    let line = lines.iter().rev().find(|l| l["pid"] == pids[2]).unwrap();
    assert_eq!(line["container"]["id"], ID_CRI, "{line}");
    assert_eq!(line["container"]["pod"], POD, "{line}");
    assert_eq!(
        line["unit"],
        format!("cri-containerd-{ID_CRI}.scope"),
        "{line}"
    );
    assert_eq!(line["netns"], host_netns, "{line}");
    assert_eq!(daemon.stop().code(), 0);
    for s in senders {
        assert!(s.finish().success());
    }
    assert!(receiver.finish().success());
}

#[test]
fn a_process_in_another_network_namespace_is_grouped_apart() {
    let ns = Netns::new();
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let mut receiver = Peer::spawn_in(&ns, &["udp-recv", "--bind", "0.0.0.0:0", "--count", "5"]);
    let to = format!("{}:{}", ns.ns_v4, receiver.info.local.port());
    let mut sender = Peer::spawn(&[
        "udp-send",
        "--bind",
        "0.0.0.0:0",
        "--to",
        &to,
        "--count",
        "5",
        "--size",
        "500",
    ]);
    // A namespace that just appeared is not known for its first moments (README, "Not
    // supported"): wait until the daemon knows the receiver.
    let from = std::net::SocketAddr::new(ns.host_v4.into(), 9);
    daemon.wait_owner("udp", to.parse().unwrap(), from, receiver.pid());
    receiver.go();
    sender.go();
    assert_eq!(receiver.wait_done().received, 5 * 500);
    let inside = std::fs::read_link(format!("/proc/{}/ns/net", receiver.pid())).unwrap();
    let inside: u64 = inside.to_str().unwrap()[5..]
        .trim_end_matches(']')
        .parse()
        .unwrap();
    let inside_key = inside.to_string();
    let grouped = wait_until(Duration::from_secs(10), || {
        let groups = daemon.query(&json!({"cmd": "groups", "by": "netns"}));
        groups["groups"].as_array().unwrap().iter().any(|g| {
            g["key"] == inside_key.as_str() && g["rx_bytes_total"].as_u64() == Some(5 * 528)
        })
    });
    assert!(
        grouped,
        "{}",
        daemon.query(&json!({"cmd": "groups", "by": "netns"}))
    );
    assert_eq!(row_of(&daemon, receiver.pid())["netns"], inside);
    assert_eq!(daemon.stop().code(), 0);
    assert!(sender.finish().success());
    assert!(receiver.finish().success());
}
