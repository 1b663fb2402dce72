//! Traffic that leaves the host's stack: a server inside a namespace the test creates, a
//! client on the host, over a veth pair. Both ends are local processes, in two namespaces:
//! the client's counters and the namespaced server's must match a reference capture on the
//! veth's host side, each packet `tx` for one and `rx` for the other.

use pidcap_e2e::check::{assert_conservation, assert_totals_match, Endpoint, TCP, UDP};
use pidcap_e2e::{Daemon, Netns, Peer, RefCapture};

/// The process row of `pid` names the peer program, not `ip` (which `ip netns exec` ran
/// first, before it moved into the namespace and exec'd the peer).
fn assert_named_peer(daemon: &Daemon, pid: u32) {
    let row = daemon
        .process(pid)
        .expect("a process row for the namespaced server");
    let comm = row["comm"].as_str().unwrap_or("");
    assert!(comm.starts_with("pidcap-peer"), "comm {comm:?}: {row}");
}

fn veth_scenario(v6: bool, daemon_on_any: bool) {
    let ns = Netns::new();
    let interface = if daemon_on_any {
        "any"
    } else {
        ns.host_if.as_str()
    };
    let mut daemon = Daemon::start(&["--interface", interface]);
    let bind = std::net::SocketAddr::new(ns.ns_ip(v6), 0).to_string();
    let mut server = Peer::spawn_in(
        &ns,
        &[
            "tcp-server",
            "--bind",
            &bind,
            "--recv",
            "150000",
            "--send",
            "150000",
        ],
    );
    let port = server.info.local.port();
    let cap = RefCapture::start(&ns.host_if, &RefCapture::ports_filter(&[port]));
    let remote = server.info.local.to_string();
    let mut client = Peer::spawn(&[
        "tcp-client",
        "--connect",
        &remote,
        "--send",
        "150000",
        "--recv",
        "150000",
    ]);
    server.accepted();
    let client_remote = client.info.remote.expect("connected");
    daemon.wait_owner("tcp", client.info.local, client_remote, client.pid());
    // The namespace's own end too: a namespace is not known for its first moments.
    daemon.wait_owner("tcp", client_remote, client.info.local, server.pid());
    server.go();
    client.go();
    assert_eq!(client.wait_done().received, 150_000);
    assert_eq!(server.wait_done().received, 150_000);
    let client_end = Endpoint {
        name: "host client",
        pid: client.pid(),
        proto: TCP,
        local: client.info.local,
    };
    let server_end = Endpoint {
        name: "namespaced server",
        pid: server.pid(),
        proto: TCP,
        local: server.info.local,
    };
    assert_totals_match(&daemon, &cap, &[client_end, server_end]);
    assert_named_peer(&daemon, server.pid());
    assert_conservation(&daemon.stats());
    let finished = daemon.stop();
    assert_eq!(
        finished.code(),
        0,
        "pidcapd after SIGTERM; stderr:\n{}",
        finished.stderr
    );
    assert!(client.finish().success());
    assert!(server.finish().success());
}

#[test]
fn tcp_ipv4_over_veth_daemon_on_any_matches_reference_capture() {
    veth_scenario(false, true);
}

#[test]
fn tcp_ipv6_over_veth_daemon_on_veth_matches_reference_capture() {
    veth_scenario(true, false);
}

/// Unconnected UDP into the namespace: a receiver bound to the wildcard address inside, a
/// sender on the host; every datagram and every reply credited at both ends.
#[test]
fn udp_into_a_namespace_credits_both_ends() {
    let ns = Netns::new();
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let receiver = exchange_into(&daemon, &ns);
    assert_named_peer(&daemon, receiver);
    assert_conservation(&daemon.stats());
    assert_eq!(daemon.stop().code(), 0);
}

/// One UDP exchange into `ns`: a receiver inside, a sender on the host; both credited
/// (matched against a reference capture on the veth). The receiver's pid.
fn exchange_into(daemon: &Daemon, ns: &Netns) -> u32 {
    let mut receiver = Peer::spawn_in(
        ns,
        &[
            "udp-recv",
            "--bind",
            "0.0.0.0:0",
            "--count",
            "20",
            "--reply-size",
            "100",
        ],
    );
    let to = std::net::SocketAddr::new(ns.ns_ip(false), receiver.info.local.port());
    let bind = format!("{}:0", ns.host_v4);
    let mut sender = Peer::spawn(&[
        "udp-send",
        "--bind",
        &bind,
        "--to",
        &to.to_string(),
        "--count",
        "20",
        "--size",
        "500",
        "--await-reply",
    ]);
    let cap = RefCapture::start(
        &ns.host_if,
        &RefCapture::ports_filter(&[to.port(), sender.info.local.port()]),
    );
    daemon.wait_owner("udp", sender.info.local, to, sender.pid());
    daemon.wait_owner("udp", to, sender.info.local, receiver.pid());
    receiver.go();
    sender.go();
    assert_eq!(sender.wait_done().received, 20 * 100);
    let ends = [
        Endpoint {
            name: "namespaced receiver",
            pid: receiver.pid(),
            proto: UDP,
            local: receiver.info.local,
        },
        Endpoint {
            name: "host sender",
            pid: sender.pid(),
            proto: UDP,
            local: sender.info.local,
        },
    ];
    assert_totals_match(daemon, &cap, &ends);
    let pid = receiver.pid();
    assert!(sender.finish().success());
    assert!(receiver.finish().success());
    pid
}

/// Containers come and go, and a new one often gets the address of one just gone: a
/// namespace created, used and deleted during the run, then another on the same addresses.
/// The second one's processes are credited (not the first's, not `unknown`).
#[test]
fn namespaces_created_and_destroyed_during_the_run_are_followed() {
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let first = Netns::new();
    exchange_into(&daemon, &first);
    let first_addr = first.ns_v4;
    drop(first);
    let second = Netns::new();
    eprintln!(
        "second namespace at {} (the first was at {first_addr})",
        second.ns_v4
    );
    exchange_into(&daemon, &second);
    assert_conservation(&daemon.stats());
    assert_eq!(daemon.stop().code(), 0);
}

/// `lookup` with `netns` finds a socket on a container's own loopback, which a lookup by
/// address alone does not (the host's loopback is searched then).
#[test]
fn lookup_in_a_named_namespace_finds_its_loopback_socket() {
    let ns = Netns::new();
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let inside = Peer::spawn_in(&ns, &["udp-recv", "--bind", "127.0.0.1:0", "--count", "1"]);
    let link = std::fs::read_link(format!("/proc/{}/ns/net", inside.pid())).unwrap();
    let netns: u64 = link.to_str().unwrap()[5..]
        .trim_end_matches(']')
        .parse()
        .unwrap();
    let local = inside.info.local.to_string();
    let query = |netns: Option<u64>| {
        let mut q = serde_json::json!({"cmd": "lookup", "proto": "udp", "local": local, "remote": "127.0.0.1:9"});
        if let Some(n) = netns {
            q["netns"] = n.into();
        }
        daemon.query(&q)
    };
    let pid = u64::from(inside.pid());
    let found = pidcap_e2e::wait_until(std::time::Duration::from_secs(10), || {
        query(Some(netns))["owner"]["pid"].as_u64() == Some(pid)
    });
    assert!(found, "{}", query(Some(netns)));
    assert_ne!(
        query(None)["owner"]["pid"].as_u64(),
        Some(pid),
        "host loopback searched"
    );
    assert_eq!(daemon.stop().code(), 0);
    drop(inside); // killed: it waits for a datagram that never comes
}
