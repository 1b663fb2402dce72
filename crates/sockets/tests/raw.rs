//! Raw IP sockets: the protocol number the kernel prints in the port column becomes the
//! entry's protocol, and ports become 0 (how portless packets are keyed).
#![cfg(target_endian = "little")]

use std::net::SocketAddr;

use pidcap_core::NetNsId;
use pidcap_sockets::ProcRoot;
use pidcap_wire::IpProto;

const RAW: &str = include_str!("fixtures/linux-6.18/raw");
const RAW6: &str = include_str!("fixtures/linux-6.18/raw6");

#[test]
fn raw_tables_key_entries_by_protocol_with_port_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("net")).unwrap();
    std::fs::write(dir.path().join("net/raw"), RAW).unwrap();
    std::fs::write(dir.path().join("net/raw6"), RAW6).unwrap();
    let mut out = Vec::new();
    ProcRoot::new(dir.path())
        .read_raw_into(NetNsId(7), &mut out)
        .unwrap();
    assert!(!out.is_empty());
    for e in &out {
        assert_eq!(e.local.port(), 0);
        assert_eq!(e.remote.port(), 0);
        assert_eq!(e.netns, NetNsId(7));
    }
    let icmp: Vec<_> = out.iter().filter(|e| e.proto == IpProto::Icmp).collect();
    assert_eq!(icmp.len(), 1, "{out:?}");
    assert_eq!(icmp[0].local, "0.0.0.0:0".parse::<SocketAddr>().unwrap());
    assert_eq!(icmp[0].inode, 8274);
    assert!(
        out.iter().any(|e| e.local.is_ipv6()),
        "raw6 entries are read too"
    );
}

#[test]
fn missing_raw_tables_are_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    ProcRoot::new(dir.path())
        .read_raw_into(NetNsId(1), &mut out)
        .unwrap();
    assert!(out.is_empty());
}

#[test]
fn a_live_raw_socket_is_listed_with_its_protocol() {
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 253) };
    assert!(
        fd >= 0,
        "raw sockets need root (CAP_NET_RAW): {}",
        std::io::Error::last_os_error()
    );
    let mut out = Vec::new();
    ProcRoot::default()
        .read_raw_into(NetNsId(1), &mut out)
        .unwrap();
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    assert!(
        out.iter().any(|e| e.proto == IpProto::Unknown(253)),
        "{out:?}"
    );
}
