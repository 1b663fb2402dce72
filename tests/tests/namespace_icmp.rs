//! ICMP between the host and a container, both ways, daemon on `any`: each pinger (a ping
//! socket, on the host or inside the namespace) is credited its echo requests as `tx` and
//! the replies as `rx`, byte for byte what it sent and received at the IP layer (the
//! answering kernel's side is nobody's). The truth is the pinger's own count: `count`
//! packets of 20 (IPv4 header) + 8 (ICMP header) + payload bytes each way.
//!
//! Runs alone (`.config/nextest.toml`): it opens the host's `net.ipv4.ping_group_range`
//! for its life, as the ping hard case does.

use std::time::Duration;

use pidcap_e2e::accuracy::sysctl::PingGroupRange;
use pidcap_e2e::check::assert_conservation;
use pidcap_e2e::{wait_until, Daemon, Nat, Netns, Peer};

const COUNT: u64 = 40;
const PAYLOAD: u64 = 500;

/// Waits until `pid`'s totals are exactly the echo exchange's, both ways.
fn assert_pinger_credited(daemon: &Daemon, name: &str, pid: u32) {
    let want = COUNT * (20 + 8 + PAYLOAD);
    let mut got = daemon.totals(pid);
    let exact = wait_until(Duration::from_secs(10), || {
        got = daemon.totals(pid);
        got.tx_bytes == want && got.rx_bytes == want
    });
    assert!(
        exact,
        "{name} (pid {pid}): want {want} B each way, daemon {got:?}; stats {}",
        daemon.stats()
    );
}

#[test]
fn icmp_echo_between_host_and_container_credits_each_pinger_both_ways() {
    pidcap_e2e::require_root();
    let _range = PingGroupRange::open_to_all().expect("open ping_group_range on the host");
    let ns = Netns::new();
    let opened = ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.ping_group_range=0 2147483647"])
        .status()
        .expect("sysctl in the namespace");
    assert!(opened.success(), "ping_group_range in the namespace");
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let (count, size) = (COUNT.to_string(), PAYLOAD.to_string());
    let args =
        |to: String| ["ping", "--to", &to, "--count", &count, "--size", &size].map(str::to_owned);
    let to_ns = args(ns.ns_v4.to_string());
    let to_host = args(ns.host_v4.to_string());
    let mut from_host = Peer::spawn(&to_ns.each_ref().map(String::as_str));
    let mut from_ns = Peer::spawn_in(&ns, &to_host.each_ref().map(String::as_str));
    // As below: the pings start once the daemon could have read the new namespace.
    std::thread::sleep(pidcap_e2e::NAMESPACE_SETTLE);
    for pinger in [&mut from_host, &mut from_ns] {
        pinger.go();
        let done = pinger.wait_done();
        assert_eq!(done.sent, COUNT * (8 + PAYLOAD));
        assert_eq!(done.received, COUNT * (8 + PAYLOAD));
    }
    assert_pinger_credited(&daemon, "pinger on the host", from_host.pid());
    assert_pinger_credited(&daemon, "pinger in the container", from_ns.pid());
    assert_conservation(&daemon.stats());
    assert_eq!(daemon.stop().code(), 0);
    for pinger in [from_host, from_ns] {
        assert!(pinger.finish().success());
    }
}

/// A container pinging an outside address through MASQUERADE (as a container's `ping` to
/// the internet): each echo is captured on the container's bridge port, on the bridge and,
/// translated to the host's address (and the echo identifier possibly rewritten), on the
/// outside link. The pinger is credited each request once as `tx` and each reply once as
/// `rx`, exactly.
#[test]
fn icmp_echo_from_a_container_through_masquerade_is_credited_once_each_way() {
    pidcap_e2e::require_root();
    let nat = Nat::new(&[]);
    let a = &nat.bridge.members[0];
    let opened = a
        .command("sysctl")
        .args(["-qw", "net.ipv4.ping_group_range=0 2147483647"])
        .status()
        .expect("sysctl in the container");
    assert!(opened.success(), "ping_group_range in the container");
    let mut daemon = Daemon::start(&["--interface", "any"]);
    let (count, size) = (COUNT.to_string(), PAYLOAD.to_string());
    let to = nat.outside.ns_v4.to_string();
    let mut pinger = Peer::spawn_in_member(
        a,
        &["ping", "--to", &to, "--count", &count, "--size", &size],
    );
    // The container's namespace has no process until the pinger; its addresses are known
    // once the daemon has read it: at the watcher's word, or at the next discovery (every
    // 2 s). Packets before that are `foreign` (README, "the first moments of a new
    // namespace"), which is not what this test is about: the pings start after a discovery.
    std::thread::sleep(pidcap_e2e::NAMESPACE_SETTLE);
    pinger.go();
    let done = pinger.wait_done();
    assert_eq!(done.received, COUNT * (8 + PAYLOAD));
    assert_pinger_credited(&daemon, "pinger in the container", pinger.pid());
    let stats = daemon.stats();
    assert_conservation(&stats);
    assert!(
        stats["transit_packets"].as_u64() >= Some(2 * COUNT),
        "{stats}"
    );
    assert_eq!(daemon.stop().code(), 0);
    assert!(pinger.finish().success());
}
