//! Against the real `/proc` of this machine (CI runs as root). All traffic stays on loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;

use pidcap_core::{SocketEntry, TcpState};
use pidcap_sockets::{local_addresses, ProcRoot};
use pidcap_wire::IpProto;

fn live_sockets() -> Vec<SocketEntry> {
    let root = ProcRoot::default();
    root.read_sockets(root.self_netns().unwrap()).unwrap()
}

fn entry(entries: &[SocketEntry], proto: IpProto, local: SocketAddr) -> SocketEntry {
    *entries
        .iter()
        .find(|e| e.proto == proto && e.local == local)
        .unwrap_or_else(|| panic!("{proto:?} {local} not in {} entries", entries.len()))
}

/// The inode's holders include this test process, with its facts.
fn assert_held_by_me(inode: u64) {
    let scan = ProcRoot::default().scan_socket_owners().unwrap();
    let me = std::process::id();
    let key = scan.holders[&inode]
        .iter()
        .find(|k| k.pid == me)
        .unwrap_or_else(|| panic!("pid {me} not among {:?}", scan.holders[&inode]));
    let info = &scan.processes[key];
    let exe = std::env::current_exe().unwrap();
    assert_eq!(info.exe.as_deref(), exe.to_str());
}

#[test]
fn live_tcp_listener_is_owned_by_this_process() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let found = entry(
        &live_sockets(),
        IpProto::Tcp,
        listener.local_addr().unwrap(),
    );
    assert_eq!(found.state, TcpState::Listen);
    assert!(found.is_wildcard_remote());
    assert_ne!(found.inode, 0);
    assert_held_by_me(found.inode);
}

#[test]
fn live_udp6_socket_is_owned_by_this_process() {
    let socket = UdpSocket::bind("[::1]:0").unwrap();
    let found = entry(&live_sockets(), IpProto::Udp, socket.local_addr().unwrap());
    assert_eq!(found.state, TcpState::Close);
    assert_held_by_me(found.inode);
}

#[test]
fn live_v4_client_of_dual_stack_listener_appears_v4_mapped() {
    let listener = TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let (_accepted, _) = listener.accept().unwrap();
    let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
    let server_side = entry(
        &live_sockets(),
        IpProto::Tcp,
        SocketAddr::new(mapped.into(), port),
    );
    let client_port = client.local_addr().unwrap().port();
    assert_eq!(
        server_side.remote,
        SocketAddr::new(mapped.into(), client_port)
    );
    assert_eq!(server_side.state, TcpState::Established);
}

#[test]
fn live_self_netns_is_the_ns_inode() {
    let ino = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_eq!(ProcRoot::default().self_netns().unwrap().0, ino);
}

#[test]
fn live_process_facts_of_this_process() {
    let info = ProcRoot::default().process(std::process::id()).unwrap();
    assert_eq!(info.uid, unsafe { libc::getuid() });
    assert_eq!(info.cmdline, std::env::args().collect::<Vec<_>>());
    let again = ProcRoot::default().process(std::process::id()).unwrap();
    assert_eq!(info.key, again.key);
    assert_ne!(info.key.start_time, 0);
    let root = ProcRoot::default();
    assert_eq!(
        root.start_time(std::process::id()).unwrap(),
        info.key.start_time
    );
    assert!(root.start_time(u32::MAX).unwrap_err().is_not_found());
}

#[test]
fn live_local_addresses_include_loopback() {
    let addrs = local_addresses().unwrap();
    assert!(
        addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "{addrs:?}"
    );
    let ipv6_on_lo = std::fs::read_to_string("/proc/net/if_inet6")
        .map(|t| {
            t.lines()
                .any(|l| l.starts_with("00000000000000000000000000000001"))
        })
        .unwrap_or(false);
    assert_eq!(
        addrs.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ipv6_on_lo,
        "{addrs:?}"
    );
    let mut unique = addrs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), addrs.len());
}
