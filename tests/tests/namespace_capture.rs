//! `--namespaces all`: traffic on a container's own loopback, which no interface of the
//! host carries, is captured inside the namespace and credited at both ends to the
//! container's processes — never to a host process on the same port — each packet once,
//! matched against a reference capture on the namespace's `lo`. Without it (the default),
//! that traffic is not seen at all.

use std::net::UdpSocket;
use std::time::Duration;

use pidcap_e2e::check::{assert_conservation, assert_totals_match, Endpoint, UDP};
use pidcap_e2e::{wait_until, Daemon, Netns, Peer, RefCapture};

/// 50 datagrams of 1000 B on the namespace's loopback, each answered with 200 B; the
/// receiver, the sender, the reference capture, and the decoy: a UDP socket of this test
/// process bound to the receiver's address on the host's loopback before any traffic, which
/// a lookup that strayed out of the namespace would credit.
fn loopback_exchange(daemon: &Daemon, ns: &Netns) -> (Peer, Peer, RefCapture, UdpSocket) {
    let mut receiver = Peer::spawn_in(
        ns,
        &[
            "udp-recv",
            "--bind",
            "127.0.0.1:0",
            "--count",
            "50",
            "--reply-size",
            "200",
        ],
    );
    let decoy = UdpSocket::bind(receiver.info.local).expect("bind the decoy on the host");
    // The daemon knows the decoy before any traffic: a stray lookup would find it at once.
    let anywhere = "127.0.0.1:9".parse().unwrap();
    daemon.wait_owner("udp", receiver.info.local, anywhere, std::process::id());
    let to = receiver.info.local.to_string();
    let mut sender = Peer::spawn_in(
        ns,
        &[
            "udp-send",
            "--bind",
            "127.0.0.1:0",
            "--to",
            &to,
            "--count",
            "50",
            "--size",
            "1000",
            "--await-reply",
        ],
    );
    let ports = [receiver.info.local.port(), sender.info.local.port()];
    let cap = RefCapture::start_in(&ns.name, "lo", &RefCapture::ports_filter(&ports));
    receiver.go();
    sender.go();
    assert_eq!(sender.wait_done().received, 50 * 200);
    assert_eq!(receiver.wait_done().received, 50 * 1000);
    (receiver, sender, cap, decoy)
}

fn endpoint(name: &'static str, peer: &Peer) -> Endpoint {
    Endpoint {
        name,
        pid: peer.pid(),
        proto: UDP,
        local: peer.info.local,
    }
}

#[test]
fn a_containers_own_loopback_is_credited_at_both_ends_with_namespaces_all() {
    let ns = Netns::new();
    let mut daemon = Daemon::start(&["--interface", "any", "--namespaces", "all"]);
    // A process in the namespace, so the daemon finds it and opens its capture.
    let mut resident = Peer::spawn_in(&ns, &["udp-recv", "--bind", "127.0.0.1:0", "--count", "1"]);
    let opened = wait_until(Duration::from_secs(15), || {
        daemon.stats()["namespace_capture"]["open"].as_u64() >= Some(1)
    });
    assert!(opened, "no namespace capture opened: {}", daemon.stats());
    let (receiver, sender, cap, _decoy) = loopback_exchange(&daemon, &ns);
    assert_totals_match(
        &daemon,
        &cap,
        &[
            endpoint("receiver in the namespace", &receiver),
            endpoint("sender in the namespace", &sender),
        ],
    );
    let stats = daemon.stats();
    assert_conservation(&stats);
    assert_eq!(stats["namespace_capture"]["enabled"], true, "{stats}");
    let me = daemon.totals(std::process::id());
    assert_eq!(
        me.rx_bytes + me.tx_bytes,
        0,
        "the test process (the decoy's holder) was credited the namespace's traffic"
    );
    assert_eq!(daemon.stop().code(), 0);
    for peer in [receiver, sender] {
        assert!(peer.finish().success());
    }
    resident.go();
    drop(resident);
}

#[test]
fn without_namespaces_all_a_containers_own_loopback_is_not_seen() {
    let ns = Netns::new();
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let (receiver, sender, cap, _decoy) = loopback_exchange(&daemon, &ns);
    let truth = cap.stop();
    assert!(truth.total().bytes > 0, "the reference saw the traffic");
    std::thread::sleep(Duration::from_millis(500));
    let stats = daemon.stats();
    assert_eq!(stats["namespace_capture"]["enabled"], false, "{stats}");
    for pid in [receiver.pid(), sender.pid()] {
        let got = daemon.totals(pid);
        assert_eq!(got.rx_bytes + got.tx_bytes, 0, "pid {pid}: {got:?}");
    }
    assert_eq!(daemon.stop().code(), 0);
    for peer in [receiver, sender] {
        assert!(peer.finish().success());
    }
}
