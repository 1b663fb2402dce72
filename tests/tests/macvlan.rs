//! Containers on a macvlan: a server in a namespace whose interface is a macvlan (bridge
//! mode) of a parent the host also has a macvlan on; host clients over TCP and UDP. With the
//! daemon on `any`, a packet from the host is captured on the host's macvlan and again on
//! the parent as it passes: both ends must be credited, each packet once (the copy is
//! `transit`), matched against a reference capture on the host's macvlan, which every
//! packet crosses exactly once.

use pidcap_e2e::check::{assert_conservation, assert_totals_match, Endpoint, TCP, UDP};
use pidcap_e2e::{Daemon, Macvlan, Peer, RefCapture};

#[test]
fn host_and_container_over_a_macvlan_are_credited_once_at_both_ends() {
    let net = Macvlan::new();
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let guest = |port: u16| format!("{}:{port}", net.guest_v4);
    let mut server = Peer::spawn_in(
        &net.ns,
        &[
            "tcp-server",
            "--bind",
            &guest(0),
            "--recv",
            "300000",
            "--send",
            "100000",
        ],
    );
    let mut receiver = Peer::spawn_in(
        &net.ns,
        &[
            "udp-recv",
            "--bind",
            &guest(0),
            "--count",
            "40",
            "--reply-size",
            "200",
        ],
    );
    let ports = [server.info.local.port(), receiver.info.local.port()];
    let cap = RefCapture::start(&net.host_if, &RefCapture::ports_filter(&ports));
    let remote = server.info.local.to_string();
    let mut client = Peer::spawn(&[
        "tcp-client",
        "--connect",
        &remote,
        "--send",
        "300000",
        "--recv",
        "100000",
    ]);
    server.accepted();
    let client_remote = client.info.remote.expect("connected");
    // Both ends known before traffic: a namespace is not known for its first moments.
    daemon.wait_owner("tcp", client.info.local, client_remote, client.pid());
    daemon.wait_owner("tcp", client_remote, client.info.local, server.pid());
    let to = receiver.info.local.to_string();
    let host = format!("{}:0", net.host_v4);
    let mut sender = Peer::spawn(&[
        "udp-send",
        "--bind",
        &host,
        "--to",
        &to,
        "--count",
        "40",
        "--size",
        "1000",
        "--await-reply",
    ]);
    for peer in [&mut server, &mut client, &mut receiver, &mut sender] {
        peer.go();
    }
    assert_eq!(client.wait_done().received, 100_000);
    assert_eq!(server.wait_done().received, 300_000);
    assert_eq!(sender.wait_done().received, 40 * 200);
    assert_eq!(receiver.wait_done().received, 40 * 1000);
    let endpoint = |name, peer: &Peer, proto| Endpoint {
        name,
        pid: peer.pid(),
        proto,
        local: peer.info.local,
    };
    assert_totals_match(
        &daemon,
        &cap,
        &[
            endpoint("tcp client on the host", &client, TCP),
            endpoint("tcp server in the namespace", &server, TCP),
            endpoint("udp sender on the host", &sender, UDP),
            endpoint("udp receiver in the namespace", &receiver, UDP),
        ],
    );
    let stats = daemon.stats();
    assert_conservation(&stats);
    // The parent's copies were captured and set apart (else this test would not test that).
    assert!(stats["transit_bytes"].as_u64() > Some(0), "{stats}");
    assert_eq!(daemon.stop().code(), 0);
    for peer in [server, client, receiver, sender] {
        assert!(peer.finish().success());
    }
}
