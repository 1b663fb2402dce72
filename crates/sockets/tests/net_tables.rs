//! `parse_net_table` on kernel text captured from Linux 6.18.44 (x86_64), with python3
//! sockets on 127.0.0.1 and ::1: TCP listeners, established pairs, a dual-stack listener with
//! an IPv4-mapped connection, TIME_WAIT leftovers (inode 0), connected and unconnected UDP,
//! raw ICMP sockets, an empty ICMP table.
//!
//! The kernel prints addresses in host byte order, so this text decodes to the addresses
//! above only on a little-endian host (where it was captured).
#![cfg(target_endian = "little")]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use pidcap_core::{NetNsId, SocketEntry, TcpState};
use pidcap_sockets::{parse_net_table, Error};
use pidcap_wire::IpProto;

const NS: NetNsId = NetNsId(4026531833);

const TCP_LINUX_6_18: &str = include_str!("fixtures/linux-6.18/tcp");
const TCP6_LINUX_6_18: &str = include_str!("fixtures/linux-6.18/tcp6");
const UDP_LINUX_6_18: &str = include_str!("fixtures/linux-6.18/udp");
const UDP6_LINUX_6_18: &str = include_str!("fixtures/linux-6.18/udp6");
const RAW_LINUX_6_18: &str = include_str!("fixtures/linux-6.18/raw");
const RAW6_LINUX_6_18: &str = include_str!("fixtures/linux-6.18/raw6");
const ICMP_LINUX_6_18: &str = include_str!("fixtures/linux-6.18/icmp");

fn parse(text: &str, proto: IpProto, v6: bool) -> Vec<SocketEntry> {
    parse_net_table(text.as_bytes(), proto, v6, NS).expect("kernel text parses")
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddrV4::new(Ipv4Addr::from(a), port).into()
}

fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddrV6::new(ip, port, 0, 0).into()
}

fn find(entries: &[SocketEntry], local: SocketAddr, remote: SocketAddr) -> SocketEntry {
    *entries
        .iter()
        .find(|e| e.local == local && e.remote == remote)
        .unwrap_or_else(|| panic!("no entry {local} -> {remote} in {entries:#?}"))
}

#[test]
fn tcp_linux_6_18_every_line_is_an_entry() {
    let entries = parse(TCP_LINUX_6_18, IpProto::Tcp, false);
    assert_eq!(entries.len(), 9);
    assert!(entries
        .iter()
        .all(|e| e.proto == IpProto::Tcp && e.netns == NS && e.uid == 0));
}

#[test]
fn tcp_linux_6_18_listeners_have_wildcard_remote() {
    let entries = parse(TCP_LINUX_6_18, IpProto::Tcp, false);
    let any = v4([0, 0, 0, 0], 0);
    let wildcard = find(&entries, v4([0, 0, 0, 0], 2024), any);
    assert_eq!((wildcard.state, wildcard.inode), (TcpState::Listen, 1514));
    let loopback = find(&entries, v4([127, 0, 0, 1], 45001), any);
    assert_eq!((loopback.state, loopback.inode), (TcpState::Listen, 8260));
    assert!(loopback.is_wildcard_remote());
}

#[test]
fn tcp_linux_6_18_established_pair() {
    let entries = parse(TCP_LINUX_6_18, IpProto::Tcp, false);
    let client = find(
        &entries,
        v4([127, 0, 0, 1], 0xBA8C),
        v4([127, 0, 0, 1], 45001),
    );
    let server = find(
        &entries,
        v4([127, 0, 0, 1], 45001),
        v4([127, 0, 0, 1], 0xBA8C),
    );
    assert_eq!((client.state, client.inode), (TcpState::Established, 8261));
    assert_eq!((server.state, server.inode), (TcpState::Established, 8262));
}

#[test]
fn tcp_linux_6_18_time_wait_has_inode_0() {
    let entries = parse(TCP_LINUX_6_18, IpProto::Tcp, false);
    let tw = find(
        &entries,
        v4([127, 0, 0, 1], 0xB88A),
        v4([127, 0, 0, 1], 45001),
    );
    assert_eq!((tw.state, tw.inode), (TcpState::TimeWait, 0));
    let waiting = entries
        .iter()
        .filter(|e| e.state == TcpState::TimeWait)
        .count();
    assert_eq!(waiting, 4);
    assert!(entries
        .iter()
        .filter(|e| e.state == TcpState::TimeWait)
        .all(|e| e.inode == 0));
}

#[test]
fn tcp6_linux_6_18_dual_stack_listener_and_loopback_pair() {
    let entries = parse(TCP6_LINUX_6_18, IpProto::Tcp, true);
    assert_eq!(entries.len(), 5);
    let listener = find(
        &entries,
        v6(Ipv6Addr::UNSPECIFIED, 45002),
        v6(Ipv6Addr::UNSPECIFIED, 0),
    );
    assert_eq!((listener.state, listener.inode), (TcpState::Listen, 8263));
    let lo = Ipv6Addr::LOCALHOST;
    let client = find(&entries, v6(lo, 0x8880), v6(lo, 45002));
    assert_eq!((client.state, client.inode), (TcpState::Established, 8264));
}

#[test]
fn tcp6_linux_6_18_v4_mapped_stays_v6() {
    let entries = parse(TCP6_LINUX_6_18, IpProto::Tcp, true);
    let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
    let accepted = find(&entries, v6(mapped, 45002), v6(mapped, 0x9E86));
    assert_eq!(
        (accepted.state, accepted.inode),
        (TcpState::Established, 8267)
    );
    assert!(accepted.local.is_ipv6());
}

#[test]
fn tcp6_linux_6_18_time_wait_has_inode_0() {
    let entries = parse(TCP6_LINUX_6_18, IpProto::Tcp, true);
    let lo = Ipv6Addr::LOCALHOST;
    let tw = find(&entries, v6(lo, 0xD0E2), v6(lo, 45002));
    assert_eq!((tw.state, tw.inode), (TcpState::TimeWait, 0));
}

#[test]
fn udp_linux_6_18_unconnected_and_connected() {
    let entries = parse(UDP_LINUX_6_18, IpProto::Udp, false);
    assert_eq!(entries.len(), 2);
    let bound = find(&entries, v4([127, 0, 0, 1], 45003), v4([0, 0, 0, 0], 0));
    assert_eq!(
        (bound.state, bound.inode, bound.proto),
        (TcpState::Close, 8270, IpProto::Udp)
    );
    let connected = find(
        &entries,
        v4([127, 0, 0, 1], 0xB03C),
        v4([127, 0, 0, 1], 45003),
    );
    assert_eq!(
        (connected.state, connected.inode),
        (TcpState::Established, 8271)
    );
}

#[test]
fn udp6_linux_6_18_unconnected_and_connected() {
    let entries = parse(UDP6_LINUX_6_18, IpProto::Udp, true);
    let lo = Ipv6Addr::LOCALHOST;
    let bound = find(&entries, v6(lo, 45004), v6(Ipv6Addr::UNSPECIFIED, 0));
    assert_eq!((bound.state, bound.inode), (TcpState::Close, 8272));
    let connected = find(&entries, v6(lo, 0xA939), v6(lo, 45004));
    assert_eq!(
        (connected.state, connected.inode),
        (TcpState::Established, 8273)
    );
}

#[test]
fn raw_linux_6_18_port_column_is_the_protocol() {
    let raw = parse(RAW_LINUX_6_18, IpProto::Icmp, false);
    assert_eq!(raw.len(), 1);
    assert_eq!((raw[0].local, raw[0].inode), (v4([0, 0, 0, 0], 1), 8274));
    let raw6 = parse(RAW6_LINUX_6_18, IpProto::Icmpv6, true);
    assert_eq!(
        (raw6[0].local, raw6[0].inode),
        (v6(Ipv6Addr::UNSPECIFIED, 58), 8275)
    );
}

#[test]
fn icmp_linux_6_18_empty_table_is_header_only() {
    assert_eq!(ICMP_LINUX_6_18.lines().count(), 1);
    assert!(parse(ICMP_LINUX_6_18, IpProto::Icmp, false).is_empty());
}

#[test]
fn no_input_is_an_empty_table() {
    assert!(parse("", IpProto::Tcp, false).is_empty());
}

#[test]
fn malformed_line_is_an_error_with_its_line_number() {
    // Line 4 of the real table (`2: 0100007F:B88A 0100007F:AFC9 06 ...`), with its local
    // port split in two.
    let mut lines: Vec<String> = TCP_LINUX_6_18.lines().map(str::to_owned).collect();
    assert!(lines[3].contains(" 0100007F:B88A "));
    lines[3] = lines[3].replacen(":B88A", ":B8:8A", 1);
    let text = lines.join("\n");
    let err = parse_net_table(text.as_bytes(), IpProto::Tcp, false, NS).unwrap_err();
    match err {
        Error::Parse { what, line, reason } => {
            assert_eq!((what.as_str(), line), ("tcp table", 4));
            assert!(reason.contains("local address"), "{reason}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn truncated_last_line_is_an_error_with_its_line_number() {
    let cut = TCP6_LINUX_6_18.len() - 40;
    let err = parse_net_table(&TCP6_LINUX_6_18.as_bytes()[..cut], IpProto::Tcp, true, NS);
    assert!(matches!(err, Err(Error::Parse { line: 6, .. })), "{err:?}");
}

#[test]
fn wrong_family_is_an_error_on_the_first_data_line() {
    let err = parse_net_table(TCP_LINUX_6_18.as_bytes(), IpProto::Tcp, true, NS);
    assert!(matches!(err, Err(Error::Parse { line: 2, .. })), "{err:?}");
}

#[test]
fn missing_header_is_an_error_on_line_1() {
    let data_only: String = TCP_LINUX_6_18
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n");
    let err = parse_net_table(data_only.as_bytes(), IpProto::Tcp, false, NS);
    assert!(matches!(err, Err(Error::Parse { line: 1, .. })), "{err:?}");
}
