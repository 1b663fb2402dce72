//! A capture interface that goes away and comes back (a container's veth, a VPN tunnel):
//! the daemon reports it, keeps serving queries, and captures again once it returns
//! (issue #9: it used to exit, and the unit restarted it into exit 64 every 2 s).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use pidcap_e2e::{wait_until, Daemon, Netns};

#[test]
fn a_deleted_interface_is_reopened_when_it_returns() {
    let netns = Netns::new();
    let daemon = Daemon::start(&["--interface", &netns.host_if]);
    netns.delete_link();
    let down = wait_until(Duration::from_secs(10), || {
        daemon.stats()["capture_down"] == true
    });
    assert!(
        down,
        "the daemon did not report the interface gone: {}",
        daemon.stats()
    );

    netns.add_link();
    let back = wait_until(Duration::from_secs(20), || {
        let stats = daemon.stats();
        stats["capture_down"] == false && stats["capture_reopens"] == 1
    });
    assert!(
        back,
        "the capture was not reopened: {}\n{}",
        daemon.stats(),
        daemon.stderr()
    );

    // Traffic on the returned interface is captured and credited: datagrams from this test
    // to the namespace's discard port.
    let socket = UdpSocket::bind(SocketAddr::new(netns.host_v4.into(), 0)).expect("bind");
    let target = SocketAddr::new(netns.ns_v4.into(), 9);
    let me = std::process::id();
    let credited = wait_until(Duration::from_secs(10), || {
        let _ = socket.send_to(b"after the reopen", target);
        daemon.totals(me).tx_packets >= 5
    });
    assert!(
        credited,
        "nothing credited after the reopen: {}",
        daemon.stats()
    );
    assert!(
        daemon.stderr().contains("capture reopened"),
        "{}",
        daemon.stderr()
    );
}
