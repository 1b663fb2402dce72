//! Non-first fragments are credited to the flow of their first fragment.

use pidcap_core::FragmentMap;
use pidcap_wire::{FlowKey, Fragment, IpProto, LinkDirection, PacketMeta};

fn meta(src: &str, dst: &str, id: u32, offset: u16, ports_known: bool) -> PacketMeta {
    PacketMeta {
        flow: FlowKey {
            proto: IpProto::Udp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        },
        ip_len: 1500,
        ports_known,
        fragment: Some(Fragment {
            id,
            offset,
            more: offset == 0,
        }),
        icmp_echo: false,
        tcp_opening: false,
        direction: LinkDirection::Unknown,
        ifindex: None,
    }
}

#[test]
fn later_fragments_take_the_ports_of_their_first_fragment() {
    let mut map = FragmentMap::new(16);
    let mut first = meta("10.0.0.1:5000", "10.0.0.2:53", 7, 0, true);
    map.resolve(&mut first);
    let mut later = meta("10.0.0.1:0", "10.0.0.2:0", 7, 185, false);
    map.resolve(&mut later);
    assert!(later.ports_known);
    assert_eq!(later.flow, first.flow);
}

#[test]
fn the_id_is_scoped_by_addresses_and_protocol() {
    let mut map = FragmentMap::new(16);
    map.resolve(&mut meta("10.0.0.1:5000", "10.0.0.2:53", 7, 0, true));
    let mut other_source = meta("10.0.0.9:0", "10.0.0.2:0", 7, 185, false);
    map.resolve(&mut other_source);
    assert!(
        !other_source.ports_known,
        "same id from another host is another datagram"
    );
    let mut unknown = meta("10.0.0.1:0", "10.0.0.2:0", 8, 185, false);
    map.resolve(&mut unknown);
    assert!(!unknown.ports_known);
    assert_eq!(unknown.flow.src.port(), 0);
}

#[test]
fn the_map_stays_within_its_capacity() {
    let mut map = FragmentMap::new(8);
    for id in 0..100 {
        map.resolve(&mut meta("10.0.0.1:5000", "10.0.0.2:53", id, 0, true));
        assert!(map.len() <= 8);
    }
    assert_eq!(
        map.forgotten() as usize + map.len(),
        100,
        "every datagram is remembered or counted forgotten"
    );
    let mut recent = meta("10.0.0.1:0", "10.0.0.2:0", 99, 185, false);
    map.resolve(&mut recent);
    assert!(recent.ports_known, "the newest datagrams are kept");
}
