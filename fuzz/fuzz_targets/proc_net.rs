//! /proc text parsers: the `/proc/net/{tcp,udp,raw,icmp}[6]` and `/proc/net/sctp/{eps,assocs}`
//! tables, from bytes.
//!
//! Input: byte 0 picks the table, the rest is its text. Besides never panicking, reading the
//! text through a tiny buffer (lines split across reads) gives the same entries and error.

use std::io::{BufRead, BufReader};

use pidcap_core::{NetNsId, SocketEntry};
use pidcap_sockets::{parse_net_table_into, parse_sctp_assocs, parse_sctp_eps};
use pidcap_wire::IpProto;

const NS: NetNsId = NetNsId(4026531840);

const TABLES: [IpProto; 6] = [
    IpProto::Tcp,
    IpProto::Udp,
    IpProto::UdpLite,
    IpProto::Icmp,
    IpProto::Icmpv6,
    IpProto::Unknown(255),
];

fn parse(pick: u8, reader: impl BufRead) -> (Vec<SocketEntry>, Option<String>) {
    let mut out = Vec::new();
    let result = match usize::from(pick) % (2 * TABLES.len() + 2) {
        12 => parse_sctp_eps(reader, NS, &mut out),
        13 => parse_sctp_assocs(reader, NS, &mut out),
        n => parse_net_table_into(reader, TABLES[n / 2], n % 2 == 1, NS, &mut out),
    };
    (out, result.err().map(|e| e.to_string()))
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&pick, text)) = data.split_first() else {
            return;
        };
        let whole = parse(pick, text);
        let pieces = parse(pick, BufReader::with_capacity(7, text));
        assert_eq!(whole, pieces);
    });
}
