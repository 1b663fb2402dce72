//! A real container (podman, runc, a busybox root filesystem built here), on podman's own
//! bridge network: busybox `nc` listening inside, a TCP client on the host, the daemon on
//! `any`. Each segment crosses podman's bridge and the container's veth (two copies): both
//! processes must match a reference capture on the bridge (which each segment crosses
//! once), and the container's be named as podman's container (its id from the cgroup path,
//! as `podman inspect` gives it).

use std::time::Duration;

use pidcap_e2e::check::{assert_conservation, assert_totals_match, Endpoint, TCP};
use pidcap_e2e::container::{podman, Container};
use pidcap_e2e::{wait_until, Daemon, Peer, RefCapture};

#[test]
fn a_podman_container_s_process_is_credited_once_and_named_by_its_container() {
    let container = Container::run("exec nc -l -p 9000 > /dev/null");
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let inside = container.pid();
    let to = std::net::SocketAddr::new(container.ip, 9000);
    let bridge = podman(&[
        "network",
        "inspect",
        "podman",
        "--format",
        "{{.NetworkInterface}}",
    ]);
    // Before the client connects: its handshake is counted too.
    let cap = RefCapture::start(&bridge, &RefCapture::ports_filter(&[9000]));
    let mut client = Peer::spawn(&[
        "tcp-client",
        "--connect",
        &to.to_string(),
        "--send",
        "300000",
        "--recv",
        "0",
    ]);
    let named = wait_until(Duration::from_secs(15), || {
        let reply = daemon.lookup("tcp", &to.to_string(), &client.info.local.to_string());
        reply["owner"]["pid"].as_u64() == Some(u64::from(inside))
    });
    assert!(named, "nc in {} never attributed", container.name);
    client.go();
    client.wait_done();
    let ends = [
        Endpoint {
            name: "nc in the podman container",
            pid: inside,
            proto: TCP,
            local: to,
        },
        Endpoint {
            name: "host client",
            pid: client.pid(),
            proto: TCP,
            local: client.info.local,
        },
    ];
    assert_totals_match(&daemon, &cap, &ends);
    // The name comes from podman's own state on disk, read by the refresher.
    let named = wait_until(Duration::from_secs(10), || {
        daemon.process(inside).unwrap_or_default()["container"]["name"] == container.name.as_str()
    });
    let row = daemon.process(inside).expect("a row for nc");
    assert!(named, "container name: {row}");
    assert_eq!(row["container"]["runtime"], "podman", "{row}");
    assert_eq!(row["container"]["id"], container.id.as_str(), "{row}");
    let stats = daemon.stats();
    assert!(
        stats["transit_packets"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    assert_conservation(&stats);
    assert_eq!(daemon.stop().code(), 0);
    assert!(client.finish().success());
}
