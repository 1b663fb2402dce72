//! Property tests: arbitrary input never panics and keeps the `PacketMeta` invariants; valid
//! packets built from arbitrary fields parse back to exactly those fields.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pidcap_wire::{parse, FlowKey, IpProto, LinkDirection, LinkType, PacketMeta};
use proptest::prelude::*;

/// DLTs worth hitting often, plus any other value.
fn any_link() -> impl Strategy<Value = LinkType> {
    prop_oneof![
        4 => prop::sample::select(vec![0, 1, 12, 14, 101, 108, 113, 228, 229, 276]),
        1 => any::<i32>(),
    ]
    .prop_map(LinkType::from_dlt)
}

/// The invariants every successful parse keeps, whatever the input.
fn check_invariants(link: LinkType, m: &PacketMeta, orig_len: u32) -> Result<(), TestCaseError> {
    let (src, dst) = (m.flow.src, m.flow.dst);
    prop_assert_eq!(src.is_ipv4(), dst.is_ipv4());
    if !m.ports_known {
        prop_assert_eq!((src.port(), dst.port(), m.icmp_echo), (0, 0, false));
    }
    if m.icmp_echo {
        // The identifier is the pinger's end; the other end's port is 0.
        prop_assert!(matches!(m.flow.proto, IpProto::Icmp | IpProto::Icmpv6));
        prop_assert!(src.port() == 0 || dst.port() == 0, "{m:?}");
    }
    if m.fragment.is_some_and(|f| f.offset != 0) {
        prop_assert!(!m.ports_known);
    }
    if let (SocketAddr::V6(s), SocketAddr::V6(d)) = (src, dst) {
        prop_assert_eq!(
            (s.flowinfo(), s.scope_id(), d.flowinfo(), d.scope_id()),
            (0, 0, 0, 0)
        );
    }
    prop_assert_eq!(m.ifindex.is_some(), link == LinkType::LinuxSll2);
    if !matches!(link, LinkType::LinuxSll | LinkType::LinuxSll2) {
        prop_assert_eq!(m.direction, LinkDirection::Unknown);
    }
    let min_header = if src.is_ipv4() { 20 } else { 40 };
    prop_assert!(m.ip_len >= min_header);
    // What a sender declares can never count for more than what was on the wire.
    prop_assert!(m.ip_len <= orig_len, "{} > orig_len {orig_len}", m.ip_len);
    Ok(())
}

/// A minimal valid link header for `link` announcing IPv4 or IPv6.
fn link_prefix(link: LinkType, v6: bool) -> Vec<u8> {
    let ethertype: [u8; 2] = if v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
    let family: u32 = if v6 { 10 } else { 2 };
    match link {
        LinkType::Ethernet => [&[0u8; 12][..], &ethertype].concat(),
        LinkType::Null => family.to_ne_bytes().to_vec(),
        LinkType::Loop => family.to_be_bytes().to_vec(),
        LinkType::LinuxSll => [&[0u8; 14][..], &ethertype].concat(),
        LinkType::LinuxSll2 => [&ethertype[..], &[0u8; 18]].concat(),
        _ => Vec::new(),
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        link in any_link(),
        frame in prop::collection::vec(any::<u8>(), 0..300),
        orig_len in any::<u32>(),
    ) {
        if let Ok(m) = parse(link, &frame, orig_len) {
            check_invariants(link, &m, orig_len)?;
        }
    }

    /// Arbitrary bytes behind a valid link header and IP version nibble, so the IP and
    /// transport parsers see most of the fuzzing.
    #[test]
    fn arbitrary_ip_headers_never_panic(
        link in any_link(),
        v6 in any::<bool>(),
        ihl in 0u8..16,
        body in prop::collection::vec(any::<u8>(), 0..300),
        orig_len in any::<u32>(),
    ) {
        let first = if v6 { 0x60 | ihl } else { 0x40 | ihl };
        let prefix = link_prefix(link, v6);
        let link_len = u32::try_from(prefix.len()).unwrap();
        let frame = [prefix, vec![first], body].concat();
        if let Ok(m) = parse(link, &frame, orig_len) {
            check_invariants(link, &m, orig_len)?;
            prop_assert!(m.ip_len <= orig_len.saturating_sub(link_len));
        }
    }
}

// ---- A small packet builder for the round-trip property ----

/// A link type and the parameters of its header.
#[derive(Debug, Clone)]
enum Link {
    /// Ethernet with these VLAN tag types (0x8100, 0x88a8, 0x9100) before the EtherType.
    Ethernet(Vec<u16>),
    Null,
    Loop,
    Sll {
        packet_type: u16,
    },
    Sll2 {
        ifindex: u32,
        packet_type: u8,
    },
    Raw,
    IpOnly,
}

fn any_builder_link() -> impl Strategy<Value = Link> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(vec![0x8100u16, 0x88a8, 0x9100]), 0..=4)
            .prop_map(Link::Ethernet),
        Just(Link::Null),
        Just(Link::Loop),
        (0u16..8).prop_map(|packet_type| Link::Sll { packet_type }),
        (any::<u32>(), 0u8..8).prop_map(|(ifindex, packet_type)| Link::Sll2 {
            ifindex,
            packet_type
        }),
        Just(Link::Raw),
        Just(Link::IpOnly),
    ]
}

fn direction(packet_type: u16) -> LinkDirection {
    match packet_type {
        0..=3 => LinkDirection::Incoming,
        4 => LinkDirection::Outgoing,
        _ => LinkDirection::Unknown,
    }
}

impl Link {
    /// The link type, header bytes, direction and ifindex for an IP packet of this family.
    fn header(&self, v6: bool) -> (LinkType, Vec<u8>, LinkDirection, Option<u32>) {
        let ethertype: u16 = if v6 { 0x86dd } else { 0x0800 };
        let family: u32 = if v6 { 30 } else { 2 };
        let unknown = LinkDirection::Unknown;
        match self {
            Link::Ethernet(tags) => {
                let mut h = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
                for tpid in tags {
                    h.extend_from_slice(&tpid.to_be_bytes());
                    h.extend_from_slice(&[0x00, 0x0a]); // TCI: VLAN 10
                }
                h.extend_from_slice(&ethertype.to_be_bytes());
                (LinkType::Ethernet, h, unknown, None)
            }
            Link::Null => (LinkType::Null, family.to_ne_bytes().to_vec(), unknown, None),
            Link::Loop => (LinkType::Loop, family.to_be_bytes().to_vec(), unknown, None),
            Link::Sll { packet_type } => {
                let mut h = packet_type.to_be_bytes().to_vec();
                h.extend_from_slice(&[0, 1, 0, 6, 2, 0, 0, 0, 0, 2, 0, 0]);
                h.extend_from_slice(&ethertype.to_be_bytes());
                (LinkType::LinuxSll, h, direction(*packet_type), None)
            }
            Link::Sll2 {
                ifindex,
                packet_type,
            } => {
                let mut h = ethertype.to_be_bytes().to_vec();
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&ifindex.to_be_bytes());
                h.extend_from_slice(&[0, 1, *packet_type, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
                let dir = direction(u16::from(*packet_type));
                (LinkType::LinuxSll2, h, dir, Some(*ifindex))
            }
            Link::Raw => (LinkType::Raw, Vec::new(), unknown, None),
            Link::IpOnly if v6 => (LinkType::Ipv6, Vec::new(), unknown, None),
            Link::IpOnly => (LinkType::Ipv4, Vec::new(), unknown, None),
        }
    }
}

/// TCP (20-byte header) or UDP (8-byte header) with the given ports and payload size.
fn transport(tcp: bool, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut t = [sport.to_be_bytes(), dport.to_be_bytes()].concat();
    if tcp {
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        let len = u16::try_from(8 + payload).unwrap();
        t.extend_from_slice(&len.to_be_bytes());
        t.extend_from_slice(&[0, 0]);
    }
    t.resize(t.len() + payload, 0xa5);
    t
}

/// An IPv4 header with `option_words` × 4 bytes of NOP options; length 0 when `tso`.
fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    option_words: u8,
    upper: &[u8],
    tso: bool,
) -> Vec<u8> {
    let header_len = 20 + 4 * usize::from(option_words);
    let total = if tso {
        0
    } else {
        u16::try_from(header_len + upper.len()).unwrap()
    };
    let mut h = vec![0x45 + option_words, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.resize(header_len, 0x01);
    [h, upper.to_vec()].concat()
}

/// An IPv6 header followed by `ext` destination-options headers (each `8 × (n + 1)` bytes).
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, ext: &[u8], upper: &[u8], tso: bool) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, &n) in ext.iter().enumerate() {
        let next = if i + 1 == ext.len() { proto } else { 60 };
        let start = chain.len();
        chain.extend_from_slice(&[next, n]);
        chain.resize(start + 8 * (usize::from(n) + 1), 0); // Pad1 options
    }
    let payload = u16::try_from(chain.len() + upper.len()).unwrap();
    let first_next = if ext.is_empty() { proto } else { 60 };
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(if tso { 0 } else { payload }).to_be_bytes());
    h.extend_from_slice(&[first_next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    [h, chain, upper.to_vec()].concat()
}

/// Everything the round trip varies.
#[derive(Debug, Clone)]
struct Case {
    link: Link,
    src: IpAddr,
    dst: IpAddr,
    tcp: bool,
    sport: u16,
    dport: u16,
    payload: usize,
    option_words: u8,
    ext: Vec<u8>,
    tso: bool,
    /// Bytes of payload left in the capture (a snaplen cut after the transport header).
    captured_payload: usize,
}

fn any_case() -> impl Strategy<Value = Case> {
    let addrs = prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(a, b)| (IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b)))),
        (any::<u128>(), any::<u128>())
            .prop_map(|(a, b)| (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)))),
    ];
    (
        any_builder_link(),
        addrs,
        (any::<bool>(), any::<u16>(), any::<u16>(), 0usize..1400),
        (
            0u8..=10,
            prop::collection::vec(0u8..4, 0..=4),
            any::<bool>(),
            any::<usize>(),
        ),
    )
        .prop_map(
            |(link, (src, dst), (tcp, sport, dport, payload), (option_words, ext, tso, cut))| {
                Case {
                    link,
                    src,
                    dst,
                    tcp,
                    sport,
                    dport,
                    payload,
                    option_words,
                    ext,
                    tso,
                    captured_payload: cut % (payload + 1),
                }
            },
        )
}

impl Case {
    /// The captured frame, the original length, and the metadata parse must return.
    fn build(&self) -> (LinkType, Vec<u8>, u32, PacketMeta) {
        let proto: u8 = if self.tcp { 6 } else { 17 };
        let upper = transport(self.tcp, self.sport, self.dport, self.payload);
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ipv4(s, d, proto, self.option_words, &upper, self.tso)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d, proto, &self.ext, &upper, self.tso),
            _ => unreachable!("the strategy pairs addresses of one family"),
        };
        let (link, mut frame, direction, ifindex) = self.link.header(self.src.is_ipv6());
        let ip_len = u32::try_from(ip.len()).unwrap();
        frame.extend_from_slice(&ip);
        let orig_len = u32::try_from(frame.len()).unwrap();
        frame.truncate(frame.len() - (self.payload - self.captured_payload));
        let meta = PacketMeta {
            flow: FlowKey {
                proto: IpProto::from(proto),
                src: SocketAddr::new(self.src, self.sport),
                dst: SocketAddr::new(self.dst, self.dport),
            },
            ip_len,
            ports_known: true,
            fragment: None,
            icmp_echo: false,
            tcp_opening: false,
            direction,
            ifindex,
        };
        (link, frame, orig_len, meta)
    }
}

proptest! {
    #[test]
    fn built_packets_parse_back_to_their_fields(case in any_case()) {
        let (link, frame, orig_len, want) = case.build();
        prop_assert_eq!(parse(link, &frame, orig_len), Ok(want));
    }

    /// A header that declares more than the wire carried counts the wire, not the claim, on
    /// every link type; a wire shorter than the IP header is malformed, never a panic.
    #[test]
    fn lying_lengths_count_at_most_the_wire(case in any_case(), wire in any::<u32>()) {
        let (link, frame, orig_len, want) = case.build();
        let link_len = orig_len - want.ip_len;
        let wire = wire % (orig_len + 1);
        match parse(link, &frame, wire) {
            Ok(m) => {
                prop_assert_eq!(m.ip_len, want.ip_len.min(wire - link_len));
                prop_assert_eq!((m.flow.proto, m.flow.src.ip(), m.flow.dst.ip()),
                    (want.flow.proto, want.flow.src.ip(), want.flow.dst.ip()));
                // A wire that ends inside the transport header leaves the ports unknown.
                let same_but_length = PacketMeta { ip_len: m.ip_len, ..want };
                prop_assert!(m == same_but_length || !m.ports_known, "{:?}", m);
            }
            Err(e) => {
                prop_assert!(matches!(e, pidcap_wire::WireError::Malformed(_)), "{e:?}");
                // IP header, options and extension headers: all but transport and payload.
                let upper = if case.tcp { 20 } else { 8 } + u32::try_from(case.payload).unwrap();
                let ip_header = want.ip_len - upper;
                prop_assert!(wire < link_len + ip_header, "wire {} {:?}", wire, e);
            }
        }
    }

    /// Cutting a valid frame anywhere gives `Truncated` or the same flow with the ports
    /// either intact or unknown: never another error, never a panic.
    #[test]
    fn built_packets_cut_anywhere_degrade_gracefully(case in any_case(), cut in any::<usize>()) {
        let (link, frame, orig_len, want) = case.build();
        let n = cut % (frame.len() + 1);
        match parse(link, &frame[..n], orig_len) {
            Err(e) => prop_assert_eq!(e, pidcap_wire::WireError::Truncated),
            Ok(m) => {
                prop_assert_eq!((m.flow.proto, m.ip_len), (want.flow.proto, want.ip_len));
                prop_assert_eq!((m.flow.src.ip(), m.flow.dst.ip()), (want.flow.src.ip(), want.flow.dst.ip()));
                prop_assert!(m == want || !m.ports_known);
            }
        }
    }
}
