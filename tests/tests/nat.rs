//! Address translation on the host, the daemon on `any`: a container behind a bridge sends
//! to an outside network through MASQUERADE; an outside client, and a client on the host
//! itself, reach servers in the container through ports of the host's address forwarded by
//! DNAT (prerouting and output, as Docker publishes ports). Each packet is captured in two
//! forms (before and after translation), on up to three interfaces. Every process — the
//! container's, the outside namespace's and the host's — must be credited each packet once,
//! exactly as a reference capture on one interface the packet crosses once counts it; the
//! other copies are `transit`, and conservation is exact. The same scenario runs over IPv4
//! and over IPv6 (an `ip6` table, a dual-stack bridge, ULA addresses).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pidcap_e2e::check::{assert_conservation, assert_totals_match, Endpoint, TCP, UDP};
use pidcap_e2e::{Daemon, Nat, Peer, RefCapture};

const PUBLISHED: u16 = 18080;
const SERVED: u16 = 8080;
/// The port published for the host's own client.
const PUBLISHED_LOCAL: u16 = 18081;
const SERVED_LOCAL: u16 = 8081;

fn endpoint(name: &'static str, peer: &Peer, proto: u8) -> Endpoint {
    Endpoint {
        name,
        pid: peer.pid(),
        proto,
        local: peer.info.local,
    }
}

#[test]
fn masqueraded_and_port_forwarded_traffic_is_credited_to_its_processes_once() {
    nat_scenario(false);
}

/// IPv6 has no identification field: the sender's datagrams, all alike (one payload, one
/// length, one flow label), and the receiver's replies differ only in when they are sent, so
/// their copies must be told from the next datagram by other means than the IPv4 test's.
#[test]
fn ipv6_masqueraded_and_port_forwarded_traffic_is_credited_to_its_processes_once() {
    nat_scenario(true);
}

fn nat_scenario(v6: bool) {
    let forwards = [(PUBLISHED, SERVED), (PUBLISHED_LOCAL, SERVED_LOCAL)];
    let nat = match v6 {
        true => Nat::new_v6(&forwards),
        false => Nat::new(&forwards),
    };
    let (ctr, outside) = (&nat.bridge.members[0], &nat.outside);
    let (ctr_ip, host_ip, outside_ip) = (nat.container_ip(), nat.host_ip(), nat.outside_ip());
    let unspecified: IpAddr = match v6 {
        true => Ipv6Addr::UNSPECIFIED.into(),
        false => Ipv4Addr::UNSPECIFIED.into(),
    };
    let any = |port: u16| SocketAddr::new(unspecified, port).to_string();
    let mut daemon = Daemon::start(&["--interface", "any"]);

    // MASQUERADE: a UDP sender in the container, a receiver outside.
    let mut receiver = Peer::spawn_in(
        outside,
        &[
            "udp-recv",
            "--bind",
            &any(0),
            "--count",
            "50",
            "--reply-size",
            "200",
        ],
    );
    let to = SocketAddr::new(outside_ip, receiver.info.local.port()).to_string();
    let mut sender = Peer::spawn_in_member(
        ctr,
        &[
            "udp-send",
            "--bind",
            &SocketAddr::new(ctr_ip, 0).to_string(),
            "--to",
            &to,
            "--count",
            "50",
            "--size",
            "1000",
            "--await-reply",
        ],
    );
    // DNAT: a TCP server in the container, a client outside connecting to the host's port.
    let mut server = Peer::spawn_in_member(
        ctr,
        &[
            "tcp-server",
            "--bind",
            &any(SERVED),
            "--recv",
            "100000",
            "--send",
            "100000",
        ],
    );
    let mut client = Peer::spawn_in(
        outside,
        &[
            "tcp-client",
            "--connect",
            &SocketAddr::new(host_ip, PUBLISHED).to_string(),
            "--send",
            "100000",
            "--recv",
            "100000",
        ],
    );
    let (_, from_client) = server.accepted();
    assert_eq!(
        from_client, client.info.local,
        "DNAT only: the server sees the client's own address"
    );
    // DNAT in output: a host process connects to a published port of a host address.
    let mut local_server = Peer::spawn_in_member(
        ctr,
        &[
            "tcp-server",
            "--bind",
            &any(SERVED_LOCAL),
            "--recv",
            "60000",
            "--send",
            "60000",
        ],
    );
    let mut local_client = Peer::spawn(&[
        "tcp-client",
        "--connect",
        &SocketAddr::new(host_ip, PUBLISHED_LOCAL).to_string(),
        "--send",
        "60000",
        "--recv",
        "60000",
    ]);
    let (_, from_local) = local_server.accepted();
    let ports = [
        receiver.info.local.port(),
        sender.info.local.port(),
        client.info.local.port(),
        local_client.info.local.port(),
        PUBLISHED,
        SERVED,
        SERVED_LOCAL,
    ];
    let filter = RefCapture::ports_filter(&ports);
    // Truth: the container's port sees its packets once, untranslated; the outside link
    // sees the outside processes' packets once, translated.
    let cap_ctr = RefCapture::start(&ctr.port, &filter);
    let cap_out = RefCapture::start(&outside.host_if, &filter);
    let sender_to = to.parse().unwrap();
    daemon.wait_owner("udp", sender.info.local, sender_to, sender.pid());
    // The receiver is unconnected: any remote finds it.
    let anyone = match v6 {
        true => "[fd00:ffff::1]:1",
        false => "10.0.0.1:1",
    };
    daemon.wait_owner("udp", sender_to, anyone.parse().unwrap(), receiver.pid());
    let client_remote = client.info.remote.expect("connected");
    daemon.wait_owner("tcp", client.info.local, client_remote, client.pid());
    let served = SocketAddr::new(ctr_ip, SERVED);
    daemon.wait_owner("tcp", served, client.info.local, server.pid());
    let served_local = SocketAddr::new(ctr_ip, SERVED_LOCAL);
    daemon.wait_owner("tcp", served_local, from_local, local_server.pid());
    let local_remote = local_client.info.remote.expect("connected");
    daemon.wait_owner(
        "tcp",
        local_client.info.local,
        local_remote,
        local_client.pid(),
    );

    // The traffic starts once the daemon could have read the new namespaces (README: "the
    // first moments of a new namespace" are not what this test is about).
    std::thread::sleep(pidcap_e2e::NAMESPACE_SETTLE);
    receiver.go();
    sender.go();
    assert_eq!(sender.wait_done().received, 50 * 200);
    assert_eq!(receiver.wait_done().received, 50 * 1000);
    server.go();
    client.go();
    assert_eq!(client.wait_done().received, 100_000);
    assert_eq!(server.wait_done().received, 100_000);
    local_server.go();
    local_client.go();
    assert_eq!(local_client.wait_done().received, 60_000);
    assert_eq!(local_server.wait_done().received, 60_000);

    assert_totals_match(
        &daemon,
        &cap_ctr,
        &[
            endpoint("sender in the container (masqueraded)", &sender, UDP),
            endpoint("server in the container (port forwarded)", &server, TCP),
            endpoint(
                "server in the container (published to the host)",
                &local_server,
                TCP,
            ),
        ],
    );
    // The host client's packets cross the container's port once, translated: its own
    // address and port are unchanged (DNAT), so the truth is read there too.
    assert_totals_match(
        &daemon,
        &cap_ctr,
        &[endpoint(
            "client on the host (published port)",
            &local_client,
            TCP,
        )],
    );
    assert_totals_match(
        &daemon,
        &cap_out,
        &[
            endpoint("receiver outside", &receiver, UDP),
            endpoint("client outside", &client, TCP),
        ],
    );
    let stats = daemon.stats();
    assert_conservation(&stats);
    let transit = stats["transit_packets"].as_u64().unwrap();
    assert!(transit >= 100, "transit_packets {transit}: {stats}");
    assert_eq!(daemon.stop().code(), 0);
    for peer in [receiver, sender, server, client, local_server, local_client] {
        assert!(peer.finish().success());
    }
}
