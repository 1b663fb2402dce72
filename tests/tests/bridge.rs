//! Containers behind a Linux bridge, the daemon on `any`: a packet between the host and a
//! container crosses the bridge and a bridge port, a packet between two containers crosses
//! two ports, so each is captured twice. Every process — the host's and both containers' —
//! must be credited each packet once (its counters match a reference capture on one
//! interface the packet crosses once), the extra copies counted as `transit`, and
//! conservation exact.

use pidcap_e2e::check::{assert_conservation, assert_totals_match, Endpoint, UDP};
use pidcap_e2e::{Bridge, Daemon, Peer, RefCapture};

/// `count` datagrams of 1000 bytes from `sender`, each answered with 200 bytes.
fn exchange(receiver: &mut Peer, sender: &mut Peer, count: u64) {
    receiver.go();
    sender.go();
    assert_eq!(sender.wait_done().received, count * 200);
    assert_eq!(receiver.wait_done().received, count * 1000);
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
fn host_and_containers_behind_a_bridge_are_each_credited_once() {
    let bridge = Bridge::new(2);
    let (a, b) = (&bridge.members[0], &bridge.members[1]);
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let recv = |m| {
        Peer::spawn_in_member(
            m,
            &[
                "udp-recv",
                "--bind",
                "0.0.0.0:0",
                "--count",
                "50",
                "--reply-size",
                "200",
            ],
        )
    };
    let mut in_a = recv(a);
    let mut in_b = recv(b);
    let to_a = format!("{}:{}", a.addr, in_a.info.local.port());
    let to_b = format!("{}:{}", b.addr, in_b.info.local.port());
    let send = |bind: String, to: &str| {
        [
            "udp-send".to_string(),
            "--bind".into(),
            bind,
            "--to".into(),
            to.into(),
            "--count".into(),
            "50".into(),
            "--size".into(),
            "1000".into(),
            "--await-reply".into(),
        ]
    };
    let args = send(format!("{}:0", bridge.host_addr), &to_a);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut host_sender = Peer::spawn(&args);
    let args = send(format!("{}:0", a.addr), &to_b);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut a_sender = Peer::spawn_in_member(a, &args);
    // Truth: B's port sees every B packet once; A's port every A packet once.
    let ports = [
        in_a.info.local.port(),
        in_b.info.local.port(),
        host_sender.info.local.port(),
        a_sender.info.local.port(),
    ];
    let cap_a = RefCapture::start(&a.port, &RefCapture::ports_filter(&ports));
    let cap_b = RefCapture::start(&b.port, &RefCapture::ports_filter(&ports));
    let from_host =
        std::net::SocketAddr::new(bridge.host_addr.into(), host_sender.info.local.port());
    daemon.wait_owner("udp", from_host, to_a.parse().unwrap(), host_sender.pid());
    daemon.wait_owner("udp", to_a.parse().unwrap(), from_host, in_a.pid());
    // B's namespace too must have been read, or its first packets count only at A's end
    // (README, "The first moments of a new namespace"): not what this test is about.
    let from_a = std::net::SocketAddr::new(a.addr.into(), a_sender.info.local.port());
    daemon.wait_owner("udp", to_b.parse().unwrap(), from_a, in_b.pid());
    daemon.wait_owner("udp", from_a, to_b.parse().unwrap(), a_sender.pid());
    exchange(&mut in_a, &mut host_sender, 50);
    exchange(&mut in_b, &mut a_sender, 50);

    assert_totals_match(
        &daemon,
        &cap_a,
        &[
            endpoint("receiver in A", &in_a),
            endpoint("host sender", &host_sender),
            endpoint("sender in A", &a_sender),
        ],
    );
    assert_totals_match(&daemon, &cap_b, &[endpoint("receiver in B", &in_b)]);
    let stats = daemon.stats();
    assert_conservation(&stats);
    // Each of the 100 packets host↔A crossed the bridge device and A's port; each of the
    // 100 A↔B crossed both ports: one copy each beyond the one counted.
    let transit = stats["transit_packets"].as_u64().unwrap();
    assert!(transit >= 200, "transit_packets {transit}: {stats}");
    assert_eq!(daemon.stop().code(), 0);
    for peer in [in_a, in_b, host_sender, a_sender] {
        assert!(peer.finish().success());
    }
}
