//! Tables that cover several network namespaces: each end of a packet is looked up among the
//! sockets of the namespace its address belongs to, and nowhere else.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use pidcap_core::{
    attribute, ClosedSocket, Credit, MatchKind, NetNsId, OwnerMap, ProcessInfo, ProcessKey,
    SocketEntry, SocketTable, TableParts, TcpState, UnknownReason,
};
use pidcap_wire::{FlowKey, IpProto};
use proptest::prelude::*;

/// The table's own namespace (the capture's), and two containers.
const HOME: NetNsId = NetNsId(4026531840);
const RED: NetNsId = NetNsId(4026532001);
const BLUE: NetNsId = NetNsId(4026532002);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A socket in `netns`, held by the process whose pid is its inode.
fn sock(netns: NetNsId, proto: IpProto, local: &str, remote: &str, inode: u64) -> SocketEntry {
    SocketEntry {
        netns,
        proto,
        local: addr(local),
        remote: addr(remote),
        state: TcpState::Established,
        inode,
        uid: 0,
    }
}

fn key(pid: u32) -> ProcessKey {
    ProcessKey {
        pid,
        start_time: u64::from(pid),
    }
}

/// A table whose every socket is held by the process with its inode as pid; home has
/// 10.0.0.1, RED 10.0.0.2 and BLUE 10.0.0.3 (and each its own loopback).
fn table(sockets: Vec<SocketEntry>, closed: Vec<ClosedSocket>) -> SocketTable {
    table_with(
        sockets,
        closed,
        guests(&[(RED, "10.0.0.2"), (BLUE, "10.0.0.3")]),
    )
}

fn guests(list: &[(NetNsId, &str)]) -> Vec<(NetNsId, IpAddr)> {
    let mut all: Vec<(NetNsId, IpAddr)> = list.iter().map(|&(n, a)| (n, ip(a))).collect();
    for &(n, _) in list {
        all.push((n, ip("127.0.0.1")));
    }
    all
}

fn table_with(
    sockets: Vec<SocketEntry>,
    closed: Vec<ClosedSocket>,
    guest_addrs: Vec<(NetNsId, IpAddr)>,
) -> SocketTable {
    let mut owners = OwnerMap {
        holders: HashMap::new(),
        processes: HashMap::new(),
    };
    let inodes = sockets.iter().map(|s| s.inode);
    for inode in inodes.chain(closed.iter().map(|c| c.inode)) {
        let k = key(inode as u32);
        owners.holders.insert(inode, vec![k]);
        owners.processes.insert(
            k,
            ProcessInfo {
                key: k,
                comm: format!("p{inode}"),
                exe: None,
                uid: 0,
                cmdline: Vec::new(),
                placement: Default::default(),
            },
        );
    }
    SocketTable::build(
        1,
        TableParts {
            netns: Some(HOME),
            sockets,
            owners: Arc::new(owners),
            closed,
            departed: Vec::new(),
            local_addrs: vec![ip("10.0.0.1"), ip("127.0.0.1")],
            guest_addrs,
        },
    )
}

fn flow(proto: IpProto, src: &str, dst: &str) -> FlowKey {
    FlowKey {
        proto,
        src: addr(src),
        dst: addr(dst),
    }
}

/// The pid credited, if any.
fn pid(c: Option<Credit>) -> Option<u32> {
    match c? {
        Credit::Process { key, .. } => Some(key.pid),
        Credit::Unknown(_) => None,
    }
}

#[test]
fn a_packet_between_home_and_a_container_is_tx_for_one_and_rx_for_the_other() {
    use IpProto::Tcp;
    let t = table(
        vec![
            sock(HOME, Tcp, "10.0.0.1:40000", "10.0.0.2:80", 1),
            sock(RED, Tcp, "0.0.0.0:80", "0.0.0.0:0", 2),
            sock(RED, Tcp, "10.0.0.2:80", "10.0.0.1:40000", 3),
        ],
        Vec::new(),
    );
    let out = attribute(&t, &flow(Tcp, "10.0.0.1:40000", "10.0.0.2:80"), true);
    assert_eq!((pid(out.tx), pid(out.rx)), (Some(1), Some(3)));
    let back = attribute(&t, &flow(Tcp, "10.0.0.2:80", "10.0.0.1:40000"), true);
    assert_eq!((pid(back.tx), pid(back.rx)), (Some(3), Some(1)));
    // A new connection to the container's server, before its socket is listed: the
    // container's listener, never anything of home's.
    let syn = attribute(&t, &flow(Tcp, "10.0.0.1:40001", "10.0.0.2:80"), true);
    assert_eq!(pid(syn.rx), Some(2));
    assert!(matches!(
        syn.rx,
        Some(Credit::Process {
            kind: MatchKind::Wildcard,
            ..
        })
    ));
}

#[test]
fn a_port_bound_in_two_namespaces_answers_for_each_namespace_s_addresses() {
    use IpProto::Udp;
    let t = table(
        vec![
            sock(HOME, Udp, "0.0.0.0:53", "0.0.0.0:0", 1),
            sock(RED, Udp, "0.0.0.0:53", "0.0.0.0:0", 2),
            sock(BLUE, Udp, "10.0.0.3:53", "0.0.0.0:0", 3),
        ],
        Vec::new(),
    );
    let to = |dst: &str| pid(attribute(&t, &flow(Udp, "192.0.2.9:5353", dst), true).rx);
    assert_eq!(to("10.0.0.1:53"), Some(1));
    assert_eq!(to("127.0.0.1:53"), Some(1), "loopback is home's");
    assert_eq!(to("10.0.0.2:53"), Some(2));
    assert_eq!(to("10.0.0.3:53"), Some(3));
    assert_eq!(to("192.0.2.1:53"), None, "not an address of this host");
}

#[test]
fn a_container_s_loopback_socket_never_answers_for_home_s_loopback() {
    use IpProto::Tcp;
    let t = table(
        vec![
            sock(RED, Tcp, "127.0.0.1:9000", "0.0.0.0:0", 2),
            sock(RED, Tcp, "127.0.0.1:9000", "127.0.0.1:41000", 3),
        ],
        Vec::new(),
    );
    let out = attribute(&t, &flow(Tcp, "127.0.0.1:41000", "127.0.0.1:9000"), true);
    assert_eq!(out.rx, Some(Credit::Unknown(UnknownReason::NoSocket)));
    assert_eq!(out.tx, Some(Credit::Unknown(UnknownReason::NoSocket)));
}

#[test]
fn an_address_two_namespaces_have_is_never_credited_to_either() {
    use IpProto::Udp;
    let both = guests(&[(RED, "10.0.0.2"), (BLUE, "10.0.0.2"), (BLUE, "10.0.0.1")]);
    let t = table_with(
        vec![
            sock(HOME, Udp, "0.0.0.0:53", "0.0.0.0:0", 1),
            sock(RED, Udp, "0.0.0.0:53", "0.0.0.0:0", 2),
            sock(BLUE, Udp, "0.0.0.0:53", "0.0.0.0:0", 3),
        ],
        Vec::new(),
        both,
    );
    for dst in ["10.0.0.2:53", "10.0.0.1:53"] {
        let out = attribute(&t, &flow(Udp, "192.0.2.9:5353", dst), true);
        assert_eq!(
            out.rx,
            Some(Credit::Unknown(UnknownReason::NoSocket)),
            "{dst}"
        );
    }
}

#[test]
fn a_closed_connection_keeps_its_owner_in_its_own_namespace_only() {
    use IpProto::Tcp;
    let closed = |netns, inode| ClosedSocket {
        netns,
        proto: Tcp,
        local: addr("10.0.0.2:80"),
        remote: addr("192.0.2.9:5000"),
        inode,
        owner: key(inode as u32),
        seen: None,
    };
    let t = table(Vec::new(), vec![closed(RED, 7)]);
    let fin = attribute(&t, &flow(Tcp, "192.0.2.9:5000", "10.0.0.2:80"), true);
    assert_eq!(pid(fin.rx), Some(7));
    // The same 4-tuple recorded in BLUE does not answer for RED's address.
    let t = table(Vec::new(), vec![closed(BLUE, 8)]);
    let fin = attribute(&t, &flow(Tcp, "192.0.2.9:5000", "10.0.0.2:80"), true);
    assert_eq!(pid(fin.rx), None);
}

/// The namespaces in the property test, with their addresses (home has 10.0.0.1).
const SPACES: [(NetNsId, &str); 3] = [(HOME, "10.0.0.1"), (RED, "10.0.0.2"), (BLUE, "10.0.0.3")];

fn arb_socket() -> impl Strategy<Value = (usize, bool, u16, u16, bool)> {
    // (namespace, wildcard address?, local port, remote port, connected?)
    (0..3usize, any::<bool>(), 1..4u16, 1..4u16, any::<bool>())
}

proptest! {
    /// Whatever sockets each namespace holds on the same ports, every credit goes to a
    /// socket of the namespace whose address that end has.
    #[test]
    fn every_credit_stays_in_the_namespace_of_its_address(
        specs in prop::collection::vec(arb_socket(), 1..24),
        packets in prop::collection::vec((0..3usize, 1..4u16, 1..4u16), 1..24),
    ) {
        let mut sockets = Vec::new();
        let mut netns_of_inode = HashMap::new();
        for (i, &(space, wildcard, lport, rport, connected)) in specs.iter().enumerate() {
            let (netns, a) = SPACES[space];
            let inode = i as u64 + 1;
            let local = format!("{}:{lport}", if wildcard { "0.0.0.0" } else { a });
            let remote = if connected { format!("192.0.2.9:{rport}") } else { "0.0.0.0:0".into() };
            let local = if connected { format!("{a}:{lport}") } else { local };
            sockets.push(sock(netns, IpProto::Udp, &local, &remote, inode));
            netns_of_inode.insert(inode as u32, netns);
        }
        let t = table(sockets, Vec::new());
        for (space, lport, rport) in packets {
            let (netns, a) = SPACES[space];
            let f = flow(IpProto::Udp, &format!("192.0.2.9:{rport}"), &format!("{a}:{lport}"));
            if let Some(p) = pid(attribute(&t, &f, true).rx) {
                prop_assert_eq!(netns_of_inode[&p], netns);
            }
        }
    }
}

/// The socket tracer names the process that used a connection; the process's namespace may
/// be stale (`ip netns exec` moves a process and execs again, and the claim can come before
/// the second exec is seen). A claimed connection whose local address belongs to exactly
/// one namespace is that namespace's.
#[test]
fn a_claim_is_filed_under_the_namespace_of_its_local_address() {
    use pidcap_core::Sighting;
    let (mut assembly, owners, holder, now) = assembly_after_a_pass();
    // Claimed with the home namespace (stale), used from RED's address.
    let claim = SocketEntry {
        inode: 0,
        ..sock(HOME, IpProto::Tcp, "10.0.0.2:41000", "10.0.0.3:80", 0)
    };
    assembly.learn(
        Sighting {
            sockets: vec![claim],
            holder,
            seen: Some(now),
            started: None,
        },
        now,
    );
    let t = assembly.table(owners, HOME, 2);
    let out = attribute(
        &t,
        &flow(IpProto::Tcp, "10.0.0.2:41000", "10.0.0.3:80"),
        true,
    );
    assert_eq!(pid(out.tx), Some(9));
}

/// A query that names the namespace finds a container's loopback socket, which a packet
/// lookup never does (its loopback traffic is not captured from the host).
#[test]
fn a_lookup_in_a_named_namespace_finds_its_loopback_sockets() {
    use IpProto::Tcp;
    let t = table(
        vec![
            sock(RED, Tcp, "127.0.0.1:9000", "0.0.0.0:0", 2),
            sock(HOME, Tcp, "127.0.0.1:9000", "0.0.0.0:0", 5),
        ],
        Vec::new(),
    );
    let (local, remote) = (addr("127.0.0.1:9000"), addr("127.0.0.1:41000"));
    let owner = |m: Option<pidcap_core::SocketMatch>| m.and_then(|m| m.owner).map(|k| k.pid);
    assert_eq!(owner(t.lookup_in(RED, Tcp, local, remote)), Some(2));
    assert_eq!(owner(t.lookup_in(HOME, Tcp, local, remote)), Some(5));
    assert_eq!(
        owner(t.lookup(Tcp, local, remote)),
        Some(5),
        "packets: home's"
    );
    assert_eq!(owner(t.lookup_in(BLUE, Tcp, local, remote)), None);
}

/// A packet captured on a container's own loopback: both ends are that container's, found
/// among its sockets only — never home's or another container's with the same ports.
#[test]
fn a_packet_on_a_containers_own_loopback_is_credited_at_both_ends_in_that_container() {
    use IpProto::Tcp;
    let t = table(
        vec![
            sock(RED, Tcp, "127.0.0.1:9000", "127.0.0.1:41000", 2),
            sock(RED, Tcp, "127.0.0.1:41000", "127.0.0.1:9000", 3),
            sock(HOME, Tcp, "127.0.0.1:9000", "127.0.0.1:41000", 5),
            sock(HOME, Tcp, "127.0.0.1:41000", "127.0.0.1:9000", 6),
        ],
        Vec::new(),
    );
    let packet = flow(Tcp, "127.0.0.1:41000", "127.0.0.1:9000");
    let in_red = pidcap_core::attribute_in(&t, RED, &packet, true);
    assert_eq!((pid(in_red.tx), pid(in_red.rx)), (Some(3), Some(2)));
    let at_home = attribute(&t, &packet, true);
    assert_eq!((pid(at_home.tx), pid(at_home.rx)), (Some(6), Some(5)));
    let in_blue = pidcap_core::attribute_in(&t, BLUE, &packet, true);
    assert_eq!(
        (in_blue.tx, in_blue.rx),
        (
            Some(Credit::Unknown(UnknownReason::NoSocket)),
            Some(Credit::Unknown(UnknownReason::NoSocket))
        ),
        "a namespace without those sockets: both ends local, both a miss"
    );
    let fragment = pidcap_core::attribute_in(&t, RED, &packet, false);
    assert_eq!(
        fragment.tx,
        Some(Credit::Unknown(UnknownReason::Unsupported))
    );
}

/// A loopback claim filed under the namespace recorded at the process's first `exec` (the
/// host's, before `ip netns exec` moved it) is refiled under the namespace it was found in
/// at its next `exec`: a lookup in that namespace finds it, the host's no longer does.
#[test]
fn a_loopback_claim_follows_a_process_that_moved() {
    use pidcap_core::{attribute_in, Sighting};
    let (mut assembly, owners, holder, now) = assembly_after_a_pass();
    let claim = SocketEntry {
        inode: 0,
        ..sock(HOME, IpProto::Tcp, "127.0.0.1:41000", "127.0.0.1:80", 0)
    };
    let sighting = Sighting {
        sockets: vec![claim],
        holder,
        seen: Some(now),
        started: None,
    };
    assembly.learn(sighting, now);
    let f = flow(IpProto::Tcp, "127.0.0.1:41000", "127.0.0.1:80");
    let before = assembly.table(owners.clone(), HOME, 2);
    assert_eq!(pid(attribute_in(&before, RED, &f, true).tx), None);
    assert!(assembly.refile(key(9), HOME, RED));
    let after = assembly.table(owners, HOME, 3);
    assert_eq!(pid(attribute_in(&after, RED, &f, true).tx), Some(9));
    assert_eq!(pid(attribute_in(&after, HOME, &f, true).tx), None);
    assert!(!assembly.refile(key(9), HOME, RED), "nothing left to move");
}

/// A process whose namespace was never read (it went to another namespace with `setns`,
/// exec'd again and exited before its second exec was read): its loopback claim, refiled as
/// unplaced, answers in whichever namespace has no socket of its own for the packet — and
/// in none where one does.
#[test]
fn an_unplaced_claim_answers_only_where_no_socket_of_the_namespace_does() {
    use pidcap_core::{attribute_in, Sighting};
    let (mut assembly, owners, holder, now) = assembly_after_a_pass();
    let claim = SocketEntry {
        inode: 0,
        ..sock(HOME, IpProto::Tcp, "127.0.0.1:41000", "127.0.0.1:80", 0)
    };
    let of = |holder: &ProcessInfo, socket: SocketEntry| Sighting {
        sockets: vec![socket],
        holder: holder.clone(),
        seen: Some(now),
        started: None,
    };
    assembly.learn(of(&holder, claim), now);
    assert!(assembly.refile(key(9), HOME, NetNsId::UNPLACED));
    let f = flow(IpProto::Tcp, "127.0.0.1:41000", "127.0.0.1:80");
    let t = assembly.table(owners.clone(), HOME, 2);
    assert_eq!(pid(attribute_in(&t, RED, &f, true).tx), Some(9));
    assert_eq!(pid(attribute_in(&t, HOME, &f, true).tx), Some(9));
    // The other end of the packet is not the claim's: nothing answers for it.
    assert_eq!(pid(attribute_in(&t, RED, &f, true).rx), None);

    // RED's own record of the same 4-tuple (another process) wins there; home still has
    // no other explanation.
    let other = ProcessInfo {
        key: key(10),
        ..holder.clone()
    };
    let red_claim = SocketEntry {
        inode: 0,
        ..sock(RED, IpProto::Tcp, "127.0.0.1:41000", "127.0.0.1:80", 0)
    };
    assembly.learn(of(&other, red_claim), now);
    let t = assembly.table(owners, HOME, 3);
    assert_eq!(pid(attribute_in(&t, RED, &f, true).tx), Some(10));
    assert_eq!(pid(attribute_in(&t, HOME, &f, true).tx), Some(9));
}

/// An assembly after one pass (home 10.0.0.1, RED 10.0.0.2), its owner map, the facts of a
/// client process (pid 9) and the instant of the pass.
fn assembly_after_a_pass() -> (
    pidcap_core::TableAssembly,
    Arc<OwnerMap>,
    ProcessInfo,
    std::time::Instant,
) {
    use pidcap_core::{Pass, TableAssembly};
    #[allow(clippy::disallowed_methods)] // the start instant; the code under test takes it
    let now = std::time::Instant::now();
    let mut assembly = TableAssembly::new();
    let mut sockets = Vec::new();
    let owners = Arc::new(OwnerMap::default());
    let pass = Pass {
        sockets: &mut sockets,
        addrs: vec![ip("10.0.0.1")],
        guest_addrs: vec![(RED, ip("10.0.0.2"))],
        owners_before: &OwnerMap::default(),
        owners: owners.clone(),
        owners_changed: true,
        listed_at: now,
    };
    assembly.pass(pass, HOME, 1, now);
    let holder = ProcessInfo {
        key: key(9),
        comm: "client".into(),
        exe: None,
        uid: 0,
        cmdline: Vec::new(),
        placement: Default::default(),
    };
    (assembly, owners, holder, now)
}
