//! Attribution on loopback: two real processes exchange a known amount of traffic; the
//! daemon's per-process totals and usage log must match an independent capture, every
//! loopback packet is tx for one and rx for the other, and conservation holds exactly.

use pidcap_e2e::check::{
    assert_conservation, assert_log_matches, assert_totals_match, Endpoint, TCP, UDP,
};
use pidcap_e2e::{usage_log, within_percent, Daemon, Peer, RefCapture};

const TCP_BYTES: &str = "200000";

/// Runs the checks shared by every scenario once the traffic is done, then stops
/// everything. `pair` is (a, b): two endpoints talking to each other over loopback.
fn verify(mut daemon: Daemon, cap: RefCapture, pair: [Endpoint; 2], peers: Vec<Peer>) {
    assert_totals_match(&daemon, &cap, &pair);
    assert_double_credit(&daemon, &pair);
    let stats = daemon.stats();
    assert_conservation(&stats);
    // As root both process-side sources must run; if not, the daemon lost accuracy silently.
    let side = &stats["process_side"];
    assert_eq!(side["watcher"], true, "process watcher not running: {side}");
    assert_eq!(
        side["tracer"],
        true,
        "socket tracer not running (tracefs? perf?): {side}\n{}",
        daemon.stderr()
    );
    assert!(
        side["traced_claims"].as_u64() > Some(0) || pair.iter().all(|e| e.proto != 6),
        "a TCP exchange claimed no connection: {side}"
    );
    let log_path = daemon.usage_log().to_path_buf();
    let finished = daemon.stop();
    assert_eq!(
        finished.code(),
        0,
        "pidcapd after SIGTERM; stderr:\n{}",
        finished.stderr
    );
    let truth = cap.stop();
    assert_log_matches(&usage_log::read(&log_path), &truth, &pair);
    for peer in peers {
        assert!(peer.finish().success(), "a peer failed");
    }
}

/// Each loopback packet is tx for its sender and rx for its receiver.
fn assert_double_credit(daemon: &Daemon, [a, b]: &[Endpoint; 2]) {
    let (ta, tb) = (daemon.totals(a.pid), daemon.totals(b.pid));
    for (rx_name, rx, tx_name, tx) in [
        (a.name, ta.rx_bytes, b.name, tb.tx_bytes),
        (b.name, tb.rx_bytes, a.name, ta.tx_bytes),
    ] {
        assert!(
            within_percent(rx, tx, 2.0),
            "{rx_name} rx {rx} B is not {tx_name} tx {tx} B (loopback double credit)"
        );
    }
}

fn tcp_scenario(bind: &str) {
    let daemon = Daemon::start(&["--interface", "lo"]);
    let mut server = Peer::spawn(&[
        "tcp-server",
        "--bind",
        bind,
        "--recv",
        TCP_BYTES,
        "--send",
        TCP_BYTES,
    ]);
    let cap = RefCapture::start("lo", &RefCapture::ports_filter(&[server.info.local.port()]));
    let remote = server.info.local.to_string();
    let mut client = Peer::spawn(&[
        "tcp-client",
        "--connect",
        &remote,
        "--send",
        TCP_BYTES,
        "--recv",
        TCP_BYTES,
    ]);
    let (server_local, server_remote) = server.accepted();
    // The sockets exist before their traffic: wait until the daemon knows both.
    daemon.wait_owner("tcp", server_local, server_remote, server.pid());
    let client_remote = client.info.remote.expect("client is connected");
    daemon.wait_owner("tcp", client.info.local, client_remote, client.pid());
    server.go();
    client.go();
    assert_eq!(client.wait_done().received, 200_000);
    assert_eq!(server.wait_done().received, 200_000);
    let pair = [
        Endpoint {
            name: "server",
            pid: server.pid(),
            proto: TCP,
            local: server_local,
        },
        Endpoint {
            name: "client",
            pid: client.pid(),
            proto: TCP,
            local: client.info.local,
        },
    ];
    verify(daemon, cap, pair, vec![server, client]);
}

#[test]
fn tcp_ipv4_on_loopback_matches_reference_capture() {
    tcp_scenario("127.0.0.1:0");
}

#[test]
fn tcp_ipv6_on_loopback_matches_reference_capture() {
    tcp_scenario("[::1]:0");
}

/// UDP ping-pong: 100 datagrams of 1000 bytes, each answered with 200 bytes.
fn udp_scenario(recv_bind: &str, send_bind: &str, connected: bool) {
    let daemon = Daemon::start(&["--interface", "lo"]);
    let mut receiver = Peer::spawn(&[
        "udp-recv",
        "--bind",
        recv_bind,
        "--count",
        "100",
        "--reply-size",
        "200",
    ]);
    let to = format!("127.0.0.1:{}", receiver.info.local.port());
    let target = if connected { "--connect" } else { "--to" };
    let mut sender = Peer::spawn(&[
        "udp-send",
        "--bind",
        send_bind,
        target,
        &to,
        "--count",
        "100",
        "--size",
        "1000",
        "--await-reply",
    ]);
    let cap = RefCapture::start(
        "lo",
        &RefCapture::ports_filter(&[receiver.info.local.port(), sender.info.local.port()]),
    );
    // Lookups use the addresses on the wire (127.0.0.1), whatever the sockets bound.
    let to = to.parse().expect("addr");
    let from = format!("127.0.0.1:{}", sender.info.local.port())
        .parse()
        .expect("addr");
    daemon.wait_owner("udp", from, to, sender.pid());
    daemon.wait_owner("udp", to, from, receiver.pid());
    receiver.go();
    sender.go();
    assert_eq!(sender.wait_done().received, 100 * 200);
    assert_eq!(receiver.wait_done().received, 100 * 1000);
    let pair = [
        Endpoint {
            name: "receiver",
            pid: receiver.pid(),
            proto: UDP,
            local: receiver.info.local,
        },
        Endpoint {
            name: "sender",
            pid: sender.pid(),
            proto: UDP,
            local: sender.info.local,
        },
    ];
    verify(daemon, cap, pair, vec![receiver, sender]);
}

#[test]
fn connected_udp_on_loopback_matches_reference_capture() {
    udp_scenario("127.0.0.1:0", "127.0.0.1:0", true);
}

#[test]
fn unconnected_udp_on_wildcard_sockets_matches_reference_capture() {
    udp_scenario("0.0.0.0:0", "0.0.0.0:0", false);
}
