//! Traffic that leaves the host's stack: a server inside a namespace the test creates, a
//! client on the host, over a veth pair. The client's counters must match a reference
//! capture on the veth's host side.

use pidcap_e2e::check::{assert_conservation, assert_totals_match, Endpoint, TCP};
use pidcap_e2e::{Daemon, Netns, Peer, RefCapture};

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
    assert_totals_match(&daemon, &cap, &[client_end]);
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
