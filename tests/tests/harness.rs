//! Checks the harness itself without pidcapd: the peer moves what it says, the reference
//! capture sees it with the right IP-layer sizes, the namespace carries traffic.

use std::time::Duration;

use pidcap_e2e::{require_root, wait_until, Netns, Peer, RefCapture};

const TCP: u8 = 6;
const UDP: u8 = 17;

#[test]
fn peer_udp_ping_pong_is_seen_by_reference_capture() {
    require_root();
    let mut recv = Peer::spawn(&[
        "udp-recv",
        "--bind",
        "127.0.0.1:0",
        "--count",
        "5",
        "--reply-size",
        "100",
    ]);
    let to = recv.info.local.to_string();
    let mut send = Peer::spawn(&[
        "udp-send",
        "--bind",
        "127.0.0.1:0",
        "--to",
        &to,
        "--count",
        "5",
        "--size",
        "300",
        "--await-reply",
    ]);
    let cap = RefCapture::start("lo", &RefCapture::ports_filter(&[recv.info.local.port()]));
    recv.go();
    send.go();
    let sent = send.wait_done();
    let got = recv.wait_done();
    assert_eq!((sent.sent, sent.received), (1500, 500));
    assert_eq!((got.sent, got.received), (500, 1500));
    // IP length = 20 (IPv4) + 8 (UDP) + payload.
    let expect_tx = 5 * (28 + 300);
    let complete = wait_until(Duration::from_secs(5), || {
        cap.snapshot().tx_of(UDP, send.info.local).bytes == expect_tx
    });
    let truth = cap.stop();
    assert!(complete, "truth: {truth:?}");
    assert_eq!(truth.tx_of(UDP, send.info.local).packets, 5);
    assert_eq!(truth.rx_of(UDP, send.info.local).bytes, 5 * (28 + 100));
    assert_eq!(
        truth.rx_of(UDP, recv.info.local),
        truth.tx_of(UDP, send.info.local)
    );
    assert!(send.finish().success());
    assert!(recv.finish().success());
}

#[test]
fn peer_tcp_over_ipv6_moves_the_requested_bytes() {
    require_root();
    let mut server = Peer::spawn(&[
        "tcp-server",
        "--bind",
        "[::1]:0",
        "--recv",
        "50000",
        "--send",
        "7000",
    ]);
    let cap = RefCapture::start("lo", &RefCapture::ports_filter(&[server.info.local.port()]));
    let remote = server.info.local.to_string();
    let mut client = Peer::spawn(&[
        "tcp-client",
        "--connect",
        &remote,
        "--send",
        "50000",
        "--recv",
        "7000",
    ]);
    let (local, peer) = server.accepted();
    assert_eq!(peer, client.info.local);
    assert_eq!(local, server.info.local);
    server.go();
    client.go();
    assert_eq!(client.wait_done().sent, 50000);
    assert_eq!(server.wait_done().received, 50000);
    let truth = cap.stop();
    let tx = truth.tx_of(TCP, client.info.local);
    // At least the payload plus a 60-byte IPv6+TCP header per packet.
    assert!(tx.bytes >= 50000 + 60 * tx.packets, "{truth:?}");
    assert_eq!(truth.unparsed, 0);
    assert!(client.finish().success());
    assert!(server.finish().success());
}

#[test]
fn netns_carries_tcp_over_the_veth() {
    require_root();
    let ns = Netns::new();
    let bind = format!("{}:0", ns.ns_v4);
    let mut server = Peer::spawn_in(&ns, &["tcp-server", "--bind", &bind, "--recv", "10000"]);
    assert_ne!(server.pid(), 0);
    let cap = RefCapture::start(
        &ns.host_if,
        &RefCapture::ports_filter(&[server.info.local.port()]),
    );
    let remote = server.info.local.to_string();
    let mut client = Peer::spawn(&["tcp-client", "--connect", &remote, "--send", "10000"]);
    server.accepted();
    server.go();
    client.go();
    client.wait_done();
    assert_eq!(server.wait_done().received, 10000);
    let truth = cap.stop();
    assert!(
        truth.tx_of(TCP, client.info.local).bytes > 10000,
        "{truth:?}"
    );
    assert!(truth.rx_of(TCP, client.info.local).packets > 0, "{truth:?}");
    assert!(client.finish().success());
    assert!(server.finish().success());
}
