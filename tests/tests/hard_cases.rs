//! Fast versions of the accuracy suite's hardest scenarios (`pidcap-accuracy` runs them at
//! full size), asserting its targets: at least 99 % of the bytes that belong to a process are
//! credited to it, at most 0.1 % to a wrong one, and conservation holds exactly. The truth
//! comes from reference captures and the endpoints the processes themselves report.

use pidcap_e2e::accuracy::measure::Status;
use pidcap_e2e::accuracy::{scenarios, Outcome, Size};
use pidcap_e2e::require_root;

fn assert_targets(outcome: &Outcome) {
    assert_eq!(outcome.status, Status::Ran, "{}", outcome.summary());
    assert!(
        outcome.conservation.is_ok(),
        "conservation broken: {}",
        outcome.summary()
    );
    assert!(
        outcome.meets_targets(),
        "targets missed: {}",
        outcome.summary()
    );
}

/// 30 client processes that connect, move 20–200 KB each way at once and exit within tens
/// of milliseconds, without waiting for the daemon to see their sockets.
#[test]
fn short_lived_client_processes_are_credited_to_themselves() {
    require_root();
    assert_targets(&scenarios::short_lived_tcp(Size::Quick));
}

/// Unconnected UDP on `0.0.0.0` and `::`, and IPv4 datagrams on dual-stack `::` sockets.
#[test]
fn unconnected_and_dual_stack_udp_is_credited_to_its_sockets() {
    require_root();
    assert_targets(&scenarios::udp(Size::Quick));
}

/// ICMP echo to 127.0.0.1 and ICMPv6 echo to ::1 from ping sockets: requests are the
/// pinger's tx, replies its rx (the kernel's side of the exchange belongs to no process).
#[test]
fn icmp_echo_from_ping_sockets_is_credited_to_the_pinger() {
    require_root();
    assert_targets(&scenarios::ping(Size::Quick));
}
