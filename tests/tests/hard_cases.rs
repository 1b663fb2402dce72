//! Fast versions of the accuracy suite's hardest scenarios (`pidcap-accuracy` runs them at
//! full size and reports against the targets: at least 99 % of the bytes that belong to a
//! process credited to it, at most 0.1 % to a wrong one). The truth comes from reference
//! captures and the endpoints the processes themselves report.
//!
//! What every scenario must guarantee here: conservation exactly, and at most 0.1 % of the
//! bytes credited to a wrong process. Unconnected UDP, ping and connection churn must also
//! meet the 99 % target (churn is the socket tracer's case: millisecond connections of
//! processes too old for the watcher). Short-lived processes must be fully credited in at least 80 % of
//! cases: with 30 processes one miss is already 3 % of the bytes, and a process that exits
//! within a few milliseconds of its exec, before anyone read who it was, is lost (see
//! ACCURACY.md); the full-size suite measures the share.

use pidcap_e2e::accuracy::contention::Hogs;
use pidcap_e2e::accuracy::measure::{Status, TARGET_WRONG};
use pidcap_e2e::accuracy::{scenarios, Outcome, Size};
use pidcap_e2e::require_root;

/// Conservation and no wrong credit: what pidcap guarantees in every scenario.
fn assert_sound(outcome: &Outcome) {
    assert_eq!(outcome.status, Status::Ran, "{}", outcome.summary());
    assert!(
        outcome.truth > 0,
        "no traffic measured: {}",
        outcome.summary()
    );
    assert!(
        outcome.conservation.is_ok(),
        "conservation broken: {}",
        outcome.summary()
    );
    assert!(
        outcome.wrong_fraction() <= TARGET_WRONG,
        "bytes credited to a wrong process: {}",
        outcome.summary()
    );
    eprintln!("{}", outcome.summary());
}

/// Sound, and both targets met (at least 99 % right as well).
fn assert_meets_targets(outcome: &Outcome) {
    assert_sound(outcome);
    assert!(outcome.meets_targets(), "{}", outcome.summary());
}

/// `run` with a spinning process per core at the daemon's priority, stopped before the
/// outcome is judged.
fn on_a_saturated_cpu(run: impl FnOnce() -> Outcome) -> Outcome {
    let hogs = Hogs::one_per_core().expect("start one CPU hog per core");
    let outcome = run();
    drop(hogs);
    outcome
}

/// At least 4 in 5 processes got all their bytes (the known limits of processes that live
/// milliseconds; see the module doc).
fn assert_mostly_fully_credited(outcome: &Outcome) {
    assert!(
        outcome.fully_credited * 5 >= outcome.processes * 4,
        "only {} of {} processes got all their bytes: {}",
        outcome.fully_credited,
        outcome.processes,
        outcome.summary()
    );
}

/// 30 client processes that connect, move 20–200 KB each way at once and exit within tens
/// of milliseconds, without waiting for the daemon to see their sockets. Without the
/// process watcher and the socket tracer none of them would get a byte.
#[test]
fn short_lived_client_processes_are_credited_to_themselves() {
    require_root();
    let outcome = scenarios::short_lived_tcp(Size::Quick);
    assert_sound(&outcome);
    assert_mostly_fully_credited(&outcome);
}

/// 10 processes reconnecting every 100 ms for 2 s, each connection living about a
/// millisecond: after the first few, the processes are too old for the watcher and every
/// connection has closed before any socket table or fd look could see it. Only the socket
/// tracer (connect and I/O tracepoints) credits them.
#[test]
fn connection_churn_of_older_processes_is_credited_by_the_socket_tracer() {
    require_root();
    let outcome = scenarios::churn(Size::Quick);
    assert_sound(&outcome);
    assert!(
        outcome.meets_targets(),
        "targets missed (is the socket tracer running? see `pidcap stats`): {}",
        outcome.summary()
    );
}

/// A resolver's pattern in older processes: a fresh connected UDP socket per query, living
/// one loopback round trip. The server's half is credited by its socket; the clients' half
/// only through the tracer's `connect()` events: the socket is read the moment its connect
/// returns, and once one of a thread's sockets has closed before that read (which on
/// loopback happens within the first few queries) the thread's route lookups are traced
/// and give every later connect's addresses. So a client loses about one query (1.25 % of
/// the bytes here); the floor leaves room for a few.
#[test]
fn connected_udp_queries_of_older_processes_are_credited_through_their_connects() {
    require_root();
    let outcome = scenarios::udp_queries(Size::Quick);
    assert_sound(&outcome);
    assert!(
        outcome.right_fraction() >= 0.95,
        "the clients' queries were not credited: {}",
        outcome.summary()
    );
}

/// Unconnected UDP on `0.0.0.0` and `::`, and IPv4 datagrams on dual-stack `::` sockets.
#[test]
fn unconnected_and_dual_stack_udp_is_credited_to_its_sockets() {
    require_root();
    let outcome = scenarios::udp(Size::Quick);
    assert_sound(&outcome);
    assert!(
        outcome.meets_targets(),
        "targets missed: {}",
        outcome.summary()
    );
}

/// ICMP echo to 127.0.0.1 and ICMPv6 echo to ::1 from ping sockets of short-lived pingers:
/// requests are the pinger's tx, replies its rx (the kernel's side of the exchange belongs
/// to no process and must stay in `unknown`). A pinger exits right after its last reply,
/// often before the daemon has read those packets: its closed socket must keep its owner.
#[test]
fn icmp_echo_from_ping_sockets_is_credited_to_the_pinger() {
    require_root();
    let outcome = scenarios::ping(Size::Quick);
    assert_sound(&outcome);
    assert!(
        outcome.meets_targets(),
        "targets missed: {}",
        outcome.summary()
    );
}

/// Containers behind a bridge, daemon on `any`: 5 short-lived clients on the host and 5
/// inside container A (started with `ip netns exec`, which moves a process and execs again)
/// burst 200 KB to sinks in A and B. Every packet is captured twice (bridge and port, or two
/// ports): each end must be credited once, and the container's clients by the namespace
/// their sockets are in.
#[test]
fn containers_behind_a_bridge_are_credited_once_at_both_ends() {
    require_root();
    let outcome = scenarios::bridge(Size::Quick);
    assert_meets_targets(&outcome);
}

/// Containers behind NAT, daemon on `any`: 5 short-lived clients in container A through
/// MASQUERADE, 5 outside and 5 on the host through published (DNAT) ports. Every packet is
/// captured before and after translation: each end must be credited once, in its own form.
#[test]
fn containers_behind_nat_are_credited_once_at_both_ends() {
    require_root();
    let outcome = scenarios::nat(Size::Quick);
    assert_meets_targets(&outcome);
}

/// A container's own loopback with `--namespaces all`: 10 short-lived TCP clients and a UDP
/// exchange on `127.0.0.1` inside a namespace, a host decoy bound to the same address and
/// port. Both ends credited, each packet once, and never the decoy. The clients are started
/// with `ip netns exec` (exec in the host's namespace, `setns`, exec again) and many exit
/// before the watcher reads their second exec: their claims must still reach the
/// namespace's loopback (unplaced, not filed under the host's).
#[test]
fn a_containers_own_loopback_is_credited_at_both_ends() {
    require_root();
    let outcome = scenarios::container_loopback(Size::Quick);
    assert_meets_targets(&outcome);
}

/// A local port reused by a new process over TCP: two chains of 6 processes, each binding
/// the port the one before used (`SO_REUSEADDR`) and connecting to the same server, the
/// connection closed by the server or by RST. Each link's bytes go to it alone, never to
/// the previous or the next holder of the 4-tuple.
#[test]
fn a_reused_port_is_never_credited_to_its_previous_or_next_holder() {
    require_root();
    let outcome = scenarios::port_reuse(Size::Quick);
    assert_meets_targets(&outcome);
}

/// Processes on one local UDP port, one after another (`SO_REUSEADDR`), each exchanging
/// datagrams with one server and exiting (about 100 µs after its `bind()`, often before
/// the tracer reads its fd: then it is known by the address it bound): each credited with
/// its own datagrams, never the previous or the next holder, nor the suite's process, which
/// bound the port once to find it free.
#[test]
fn a_udp_port_passed_along_a_chain_is_credited_to_each_link() {
    require_root();
    let outcome = scenarios::port_reuse_udp(Size::Quick);
    assert_meets_targets(&outcome);
}

/// The same on a saturated CPU: the tracer reads binds later, so more links are gone by
/// then.
#[test]
fn a_udp_port_passed_along_a_chain_is_credited_to_each_link_on_a_saturated_cpu() {
    require_root();
    let outcome = on_a_saturated_cpu(|| scenarios::port_reuse_udp(Size::Quick));
    assert_meets_targets(&outcome);
}

/// Frames written whole to a packet socket (scenario 17), on a saturated CPU: every frame is
/// its sender's, though its capture may lag its send (the received copy on loopback is
/// captured in a softirq a busy CPU may defer). (This does not reproduce the lag that a
/// concurrent build caused, see ACCURACY.md; the accuracy suite's runs measured that.)
#[test]
fn frames_sent_through_a_packet_socket_are_credited_on_a_saturated_cpu() {
    require_root();
    let outcome = on_a_saturated_cpu(scenarios::af_packet);
    assert_meets_targets(&outcome);
}

/// Parents that connect and fork; each child does all the traffic on the inherited
/// connection while its parent sleeps holding it. Every byte is the child's.
#[test]
fn a_connection_shared_after_fork_is_credited_to_the_child_that_uses_it() {
    require_root();
    let outcome = scenarios::shared_after_fork(Size::Quick);
    assert_meets_targets(&outcome);
}

/// The same, with a spinning process per core at the daemon's priority: the child's claim
/// reaches the table tens of milliseconds after its first packets, which wait for it
/// (README, rule 4) instead of going to the idle parent.
#[test]
fn a_connection_shared_after_fork_goes_to_the_child_on_a_saturated_cpu() {
    require_root();
    let outcome = on_a_saturated_cpu(|| scenarios::shared_after_fork(Size::Quick));
    assert_meets_targets(&outcome);
}

/// Port reuse over TCP on a saturated CPU: a stale holder never wins under load either.
#[test]
fn a_reused_port_is_never_credited_to_another_holder_on_a_saturated_cpu() {
    require_root();
    let outcome = on_a_saturated_cpu(|| scenarios::port_reuse(Size::Quick));
    assert_sound(&outcome);
}
