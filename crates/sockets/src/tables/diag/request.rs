//! sock_diag requests: a `struct nlmsghdr` followed by a `struct inet_diag_req_v2`, 72 bytes,
//! encoded by `netlink-packet-core` and `netlink-packet-sock-diag` (nothing hand-packed).
//!
//! The one thing those crates leave to the caller is which end of a 4-tuple goes where in
//! `inet_diag_sockid` for a single-socket lookup (no `NLM_F_DUMP`), and the kernel differs by
//! protocol:
//!
//! - TCP (`inet_diag_find_one_icsk`): `id.src`/`sport` is the socket's local end,
//!   `id.dst`/`dport` its peer.
//! - UDP and UDP-Lite (`udp_dump_one`, "src and dst are swapped for historical reasons"):
//!   `id.src`/`sport` is the peer, `id.dst`/`dport` the local end.
//!
//! Invariants: encoding never panics and never allocates; every request is [`REQUEST_LEN`]
//! bytes.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagMessage, AF_INET, AF_INET6};
use pidcap_wire::IpProto;

/// `sizeof(struct nlmsghdr) + sizeof(struct inet_diag_req_v2)`.
pub(crate) const REQUEST_LEN: usize = 16 + 56;

/// `INET_DIAG_NOCOOKIE`: match the socket by its addresses alone.
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// The address family of a request, which selects the kernel's IPv4 or IPv6 sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::V4 => "AF_INET",
            Family::V6 => "AF_INET6",
        }
    }
}

/// One `SOCK_DIAG_BY_FAMILY` request: a dump, or a lookup of one socket.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    family: Family,
    protocol: u8,
    states: u32,
    id: SocketId,
    dump: bool,
}

impl Request {
    /// Every socket of `protocol` in `family` whose state bit (`1 << state`) is in `states`.
    pub(crate) fn dump(family: Family, protocol: IpProto, states: u32) -> Self {
        let id = match family {
            Family::V4 => SocketId::new_v4(),
            Family::V6 => SocketId::new_v6(),
        };
        Request {
            family,
            protocol: protocol.into(),
            states,
            id,
            dump: true,
        }
    }

    /// The socket of `protocol` with this 4-tuple, asked in `family` (IPv4 addresses become
    /// `::ffff:a.b.c.d` in an `AF_INET6` request; see [`find_families`]).
    pub(crate) fn find(
        family: Family,
        protocol: IpProto,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Self {
        let (src, dst) = match protocol {
            IpProto::Tcp => (local, remote),
            // udp_dump_one hands id.src to the receive-path lookup as the packet's source.
            _ => (remote, local),
        };
        let id = SocketId {
            source_port: src.port(),
            destination_port: dst.port(),
            source_address: in_family(src.ip(), family),
            destination_address: in_family(dst.ip(), family),
            interface_id: 0,
            cookie: NO_COOKIE,
        };
        Request {
            family,
            protocol: protocol.into(),
            states: u32::MAX,
            id,
            dump: false,
        }
    }

    pub(crate) fn family(&self) -> Family {
        self.family
    }

    pub(crate) fn is_dump(&self) -> bool {
        self.dump
    }

    /// The request's bytes, with sequence number `seq`.
    pub(crate) fn encode(&self, seq: u32) -> [u8; REQUEST_LEN] {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if self.dump { NLM_F_DUMP } else { 0 };
        header.sequence_number = seq;
        let body = InetRequest {
            family: self.family.af(),
            protocol: self.protocol,
            extensions: ExtensionFlags::empty(),
            // from_bits_retain keeps bits the crate does not name (TCP_NEW_SYN_RECV, 12).
            states: StateFlags::from_bits_retain(self.states),
            socket_id: self.id.clone(),
        };
        let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(body).into());
        message.finalize();
        let mut bytes = [0u8; REQUEST_LEN];
        // Both lengths are fixed by the kernel ABI; the unit tests pin them.
        debug_assert_eq!(message.buffer_len(), REQUEST_LEN);
        message.serialize(&mut bytes);
        bytes
    }
}

/// The families to ask, in order, for a 4-tuple.
///
/// IPv6 addresses: `AF_INET6` only. IPv4 addresses (or both `::ffff:`-mapped): `AF_INET`
/// first, then `AF_INET6` with mapped addresses. The kernel's IPv4 lookup already finds IPv4
/// traffic of a dual-stack `AF_INET6` socket (its reply then says `AF_INET6` with mapped
/// addresses, as `/proc/net/tcp6` does); the second request is a fallback that costs a round
/// trip only when the first finds nothing.
pub(crate) fn find_families(local: SocketAddr, remote: SocketAddr) -> &'static [Family] {
    match (as_v4(local.ip()), as_v4(remote.ip())) {
        (true, true) => &[Family::V4, Family::V6],
        _ => &[Family::V6],
    }
}

fn as_v4(ip: IpAddr) -> bool {
    ip.to_canonical().is_ipv4()
}

/// `ip` as the address type of `family`. IPv6 in an `AF_INET` request only happens for
/// mapped addresses ([`find_families`]); anything else stays as it is.
fn in_family(ip: IpAddr, family: Family) -> IpAddr {
    match (family, ip) {
        (Family::V4, IpAddr::V6(_)) => ip.to_canonical(),
        (Family::V6, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        _ => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tcp_lookup_puts_the_local_end_in_src() {
        let request = Request::find(
            Family::V4,
            IpProto::Tcp,
            addr("127.0.0.1:4000"),
            addr("127.0.0.2:5000"),
        );
        #[rustfmt::skip]
        let expected: [u8; REQUEST_LEN] = [
            // struct nlmsghdr
            0x48, 0x00, 0x00, 0x00, // nlmsg_len = 72
            0x14, 0x00,             // nlmsg_type = SOCK_DIAG_BY_FAMILY (20)
            0x01, 0x00,             // nlmsg_flags = NLM_F_REQUEST (no NLM_F_DUMP)
            0x07, 0x00, 0x00, 0x00, // nlmsg_seq = 7
            0x00, 0x00, 0x00, 0x00, // nlmsg_pid = 0
            // struct inet_diag_req_v2
            0x02,                   // sdiag_family = AF_INET
            0x06,                   // sdiag_protocol = IPPROTO_TCP
            0x00,                   // idiag_ext = none
            0x00,                   // pad
            0xff, 0xff, 0xff, 0xff, // idiag_states = all
            // struct inet_diag_sockid
            0x0f, 0xa0,             // idiag_sport = 4000, big endian: the local port
            0x13, 0x88,             // idiag_dport = 5000, big endian: the peer's port
            127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // idiag_src = local, word 0
            127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // idiag_dst = peer, word 0
            0x00, 0x00, 0x00, 0x00, // idiag_if = 0
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // idiag_cookie = INET_DIAG_NOCOOKIE
        ];
        assert_eq!(request.encode(7), expected);
    }

    #[test]
    fn udp_lookup_puts_the_peer_in_src() {
        let request = Request::find(
            Family::V6,
            IpProto::Udp,
            addr("[::1]:4000"),
            addr("[2001:db8::2]:5000"),
        );
        #[rustfmt::skip]
        let expected: [u8; REQUEST_LEN] = [
            // struct nlmsghdr
            0x48, 0x00, 0x00, 0x00, // nlmsg_len = 72
            0x14, 0x00,             // nlmsg_type = SOCK_DIAG_BY_FAMILY
            0x01, 0x00,             // nlmsg_flags = NLM_F_REQUEST
            0x01, 0x00, 0x00, 0x00, // nlmsg_seq = 1
            0x00, 0x00, 0x00, 0x00, // nlmsg_pid = 0
            // struct inet_diag_req_v2
            0x0a,                   // sdiag_family = AF_INET6
            0x11,                   // sdiag_protocol = IPPROTO_UDP
            0x00, 0x00,             // idiag_ext, pad
            0xff, 0xff, 0xff, 0xff, // idiag_states = all
            // struct inet_diag_sockid, swapped for UDP
            0x13, 0x88,             // idiag_sport = 5000: the peer's port
            0x0f, 0xa0,             // idiag_dport = 4000: the local port
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // idiag_src = peer
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,             // idiag_dst = local
            0x00, 0x00, 0x00, 0x00, // idiag_if = 0
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // idiag_cookie = INET_DIAG_NOCOOKIE
        ];
        assert_eq!(request.encode(1), expected);
    }

    #[test]
    fn v4_lookup_as_af_inet6_uses_mapped_addresses() {
        let request = Request::find(
            Family::V6,
            IpProto::Tcp,
            addr("127.0.0.1:4000"),
            addr("127.0.0.2:5000"),
        );
        let bytes = request.encode(1);
        assert_eq!(bytes[16], 0x0a, "sdiag_family = AF_INET6");
        let src = &bytes[28..44];
        assert_eq!(
            src,
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        );
        let dst = &bytes[44..60];
        assert_eq!(
            dst,
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 2]
        );
    }

    #[test]
    fn dump_sets_nlm_f_dump_the_state_mask_and_a_zero_id() {
        let bytes = Request::dump(Family::V6, IpProto::UdpLite, 1 << 10 | 1 << 12).encode(9);
        assert_eq!(&bytes[6..8], &[0x01, 0x03], "NLM_F_REQUEST | NLM_F_DUMP");
        assert_eq!(&bytes[16..18], &[0x0a, 136], "AF_INET6, IPPROTO_UDPLITE");
        assert_eq!(&bytes[20..24], &(1u32 << 10 | 1 << 12).to_ne_bytes());
        assert!(
            bytes[24..72].iter().all(|&b| b == 0),
            "no ports, addresses, if, cookie"
        );
    }

    #[test]
    fn families_to_ask_for_a_tuple() {
        let v4 = addr("127.0.0.1:1");
        let mapped = addr("[::ffff:127.0.0.1]:2");
        let v6 = addr("[::1]:3");
        assert_eq!(find_families(v4, v4), [Family::V4, Family::V6]);
        assert_eq!(find_families(mapped, v4), [Family::V4, Family::V6]);
        assert_eq!(find_families(v6, v6), [Family::V6]);
        assert_eq!(find_families(v4, v6), [Family::V6]);
    }
}
