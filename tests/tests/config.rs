//! Configuration errors exit 64 before anything is opened; `--pcap-file` replays a file
//! through the same pipeline and exits 0 after a final flush.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pidcap_e2e::{pcapfile, run_pidcapd, usage_log, Counters, Finished};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs pidcapd with `args` plus a temp socket and log; returns how it ended and whether
/// the socket exists afterwards.
fn run_with_temp_paths(dir: &Path, args: &[&str]) -> (Finished, bool) {
    let socket = dir.join("pidcapd.sock");
    let log = dir.join("usage.jsonl");
    let mut all = vec![
        "--socket",
        socket.to_str().expect("utf-8 path"),
        "--usage-log",
        log.to_str().expect("utf-8 path"),
    ];
    all.extend_from_slice(args);
    let finished = run_pidcapd(&all, TIMEOUT);
    (finished, socket.exists())
}

fn assert_rejected(args: &[&str], mentions: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (finished, socket_exists) = run_with_temp_paths(dir.path(), args);
    assert_eq!(
        finished.code(),
        64,
        "pidcapd {args:?}; stderr:\n{}",
        finished.stderr
    );
    assert!(
        finished.stderr.contains(mentions),
        "pidcapd {args:?}: message does not mention {mentions:?}:\n{}",
        finished.stderr
    );
    assert!(
        !socket_exists,
        "pidcapd {args:?} created its socket before rejecting the config"
    );
}

#[test]
fn unknown_flag_exits_64_before_creating_the_socket() {
    assert_rejected(&["--interface", "lo", "--no-such-flag"], "--no-such-flag");
}

#[test]
fn bad_duration_exits_64_before_creating_the_socket() {
    assert_rejected(&["--interface", "lo", "--log-interval", "soon"], "soon");
}

#[test]
fn bad_filter_exits_64_before_creating_the_socket() {
    assert_rejected(
        &["--interface", "lo", "--filter", "tcp and and ("],
        "filter",
    );
}

#[test]
fn unknown_config_key_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pidcap.toml");
    std::fs::write(&config, "log_interval = \"1s\"\nbogus_key = 1\n").expect("write config");
    assert_rejected(
        &["--interface", "lo", "--config", config.to_str().unwrap()],
        "bogus_key",
    );
}

/// A UDP port on 127.0.0.1 that no socket holds (bound then released).
fn unused_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("local addr").port()
}

#[test]
fn pcap_file_replay_counts_every_ip_byte_as_unknown_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local: SocketAddr = format!("127.0.0.1:{}", unused_udp_port()).parse().unwrap();
    let remote: SocketAddr = "198.51.100.7:53".parse().unwrap();
    let rx_payloads = [100, 200, 300, 400, 500];
    let tx_payloads = [10, 1000, 50];
    let mut frames: Vec<Vec<u8>> = rx_payloads
        .iter()
        .map(|&n| pcapfile::ethernet_ipv4_udp(remote, local, n))
        .collect();
    frames.extend(
        tx_payloads
            .iter()
            .map(|&n| pcapfile::ethernet_ipv4_udp(local, remote, n)),
    );
    let file = dir.path().join("replay.pcap");
    pcapfile::write(&file, pcapfile::LINKTYPE_ETHERNET, &frames).expect("write pcap");

    let (finished, _) = run_with_temp_paths(dir.path(), &["--pcap-file", file.to_str().unwrap()]);
    assert_eq!(finished.code(), 0, "replay; stderr:\n{}", finished.stderr);
    let lines = usage_log::read(&dir.path().join("usage.jsonl"));
    let sums = usage_log::sum_by_pid(&lines);
    let ip_bytes = |payloads: &[usize]| payloads.iter().map(|n| 28 + *n as u64).sum::<u64>();
    let want = Counters {
        rx_bytes: ip_bytes(&rx_payloads),
        tx_bytes: ip_bytes(&tx_payloads),
        rx_packets: rx_payloads.len() as u64,
        tx_packets: tx_payloads.len() as u64,
    };
    assert_eq!(
        sums.get(&None).copied().unwrap_or_default(),
        want,
        "unknown in {lines:?}"
    );
    let credited: u64 = sums
        .iter()
        .filter(|(pid, _)| pid.is_some())
        .map(|(_, c)| c.rx_bytes + c.tx_bytes)
        .sum();
    assert_eq!(
        credited, 0,
        "replayed bytes credited to a process: {lines:?}"
    );
}

/// Issue #9: 100 minimum-size frames whose IPv4 header claims 65,535 bytes were logged as
/// 6,553,500 bytes. The counted size is never more than what was on the wire.
#[test]
fn lying_ip_lengths_count_the_wire_not_the_claim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local: SocketAddr = format!("127.0.0.1:{}", unused_udp_port()).parse().unwrap();
    let remote: SocketAddr = "198.51.100.7:53".parse().unwrap();
    // 14 Ethernet + 20 IPv4 + 8 UDP + 18 payload = 60 bytes on the wire, 46 at the IP layer.
    let honest = pcapfile::ethernet_ipv4_udp(remote, local, 18);
    assert_eq!(honest.len(), 60);
    let lying = pcapfile::with_declared_ipv4_length(honest.clone(), 65_535);
    let mut frames = vec![lying; 100];
    frames.push(honest);
    let file = dir.path().join("lying.pcap");
    pcapfile::write(&file, pcapfile::LINKTYPE_ETHERNET, &frames).expect("write pcap");

    let (finished, _) = run_with_temp_paths(dir.path(), &["--pcap-file", file.to_str().unwrap()]);
    assert_eq!(finished.code(), 0, "replay; stderr:\n{}", finished.stderr);
    let lines = usage_log::read(&dir.path().join("usage.jsonl"));
    let unknown = usage_log::sum_by_pid(&lines)
        .get(&None)
        .copied()
        .unwrap_or_default();
    assert_eq!(
        (unknown.rx_packets, unknown.rx_bytes),
        (101, 101 * 46),
        "lying headers inflated the count: {lines:?}"
    );
}

#[test]
fn pcap_file_that_does_not_exist_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (finished, socket_exists) =
        run_with_temp_paths(dir.path(), &["--pcap-file", "/nonexistent/replay.pcap"]);
    assert_ne!(finished.code(), 0, "stderr:\n{}", finished.stderr);
    assert!(
        finished.stderr.contains("/nonexistent/replay.pcap"),
        "{}",
        finished.stderr
    );
    assert!(!socket_exists);
}
