//! `gen-pcap`: writes a headers-only pcap file of N packets across M flows, for replay
//! benchmarks (`pidcapd --pcap-file` against `tcpdump -r`).
//!
//! Flows mix TCP and UDP (2:1) and IPv4 and IPv6 (3:1), between addresses of the
//! benchmarking ranges (198.18.0.0/15, 2001:2::/48, RFC 2544/5180: never routed, and this
//! is a file: nothing is sent). The first M packets visit every flow once (so all M flows
//! exist even when N is close to M), later packets pick a flow at random, either direction.
//! IP lengths are mixed (40% pure ACK or small datagram, 40% full-size, 20% anywhere
//! between); each record keeps at most `--snaplen` bytes, like a headers-only capture.
//! Timestamps advance 1 µs per packet. Output is deterministic for a given seed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use pidcap_bench::Rng;

/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;
/// LINKTYPE_LINUX_SLL2.
const LINKTYPE_LINUX_SLL2: u32 = 276;
/// First capture timestamp (2026-01-01T00:00:00Z).
const START_SECS: u32 = 1_767_225_600;
/// Client ports per client address: flow `i` uses port `1024 + i % PORTS_PER_CLIENT`.
const PORTS_PER_CLIENT: u32 = 60_000;
const SERVER_PORTS: [u16; 6] = [443, 80, 53, 8080, 22, 5201];

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Link {
    Ethernet,
    Sll2,
}

/// Writes a synthetic headers-only pcap file.
#[derive(Debug, Parser)]
struct Args {
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Number of packets.
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Number of distinct flows (5-tuples).
    #[arg(long, default_value_t = 10_000)]
    flows: u32,
    /// Link-layer header type.
    #[arg(long, value_enum, default_value = "ethernet")]
    link: Link,
    /// Bytes kept per packet (96-256 is what a headers-only capture keeps).
    #[arg(long, default_value_t = 128)]
    snaplen: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One flow: client and server ends, protocol and family.
#[derive(Debug, Clone, Copy)]
struct Flow {
    index: u32,
    udp: bool,
    v6: bool,
    client_port: u16,
    server_port: u16,
}

impl Flow {
    fn new(index: u32) -> Flow {
        Flow {
            index,
            udp: index % 3 == 2,
            v6: index % 4 == 3,
            client_port: (1024 + index % PORTS_PER_CLIENT) as u16,
            server_port: SERVER_PORTS[(index as usize / 7) % SERVER_PORTS.len()],
        }
    }

    /// Client address: one per `PORTS_PER_CLIENT` flows.
    fn client_v4(&self) -> Ipv4Addr {
        let host = self.index / PORTS_PER_CLIENT;
        Ipv4Addr::new(198, 18, (host >> 8) as u8, (host as u8).wrapping_add(1))
    }

    fn server_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 0, 1 + (self.index % 200) as u8)
    }

    fn client_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(
            0x2001,
            2,
            0,
            1,
            0,
            0,
            0,
            1 + (self.index / PORTS_PER_CLIENT) as u16,
        )
    }

    fn server_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1 + (self.index % 200) as u16)
    }
}

/// The IP-layer length of the next packet of a flow.
fn ip_len(rng: &mut Rng, flow: &Flow) -> u16 {
    let (ip, l4) = (if flow.v6 { 40 } else { 20 }, if flow.udp { 8 } else { 20 });
    let min = ip + l4;
    match rng.below(10) {
        0..=3 => min + if flow.udp { 32 } else { 0 },
        4..=7 => 1500,
        _ => min + rng.below(u64::from(1500 - min)) as u16,
    }
}

/// Appends the link header for an IP packet of the given family.
fn push_link(frame: &mut Vec<u8>, link: Link, v6: bool) {
    let ethertype: [u8; 2] = if v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
    match link {
        Link::Ethernet => {
            frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]);
            frame.extend_from_slice(&ethertype);
        }
        Link::Sll2 => {
            frame.extend_from_slice(&ethertype); // protocol
            frame.extend_from_slice(&[0, 0]); // reserved
            frame.extend_from_slice(&2u32.to_be_bytes()); // interface index
            frame.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
            frame.push(0); // PACKET_HOST
            frame.push(6); // address length
            frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0, 0]);
        }
    }
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    !((folded & 0xffff) + (folded >> 16)) as u16
}

/// Appends the IP header; `from_client` picks the direction.
fn push_ip(frame: &mut Vec<u8>, flow: &Flow, from_client: bool, len: u16) {
    let proto = if flow.udp { 17 } else { 6 };
    if flow.v6 {
        let (c, s) = (flow.client_v6().octets(), flow.server_v6().octets());
        let (src, dst) = if from_client { (c, s) } else { (s, c) };
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&(len - 40).to_be_bytes());
        frame.extend_from_slice(&[proto, 64]);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&dst);
    } else {
        let (c, s) = (flow.client_v4().octets(), flow.server_v4().octets());
        let (src, dst) = if from_client { (c, s) } else { (s, c) };
        let start = frame.len();
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&dst);
        let sum = ipv4_checksum(&frame[start..]);
        frame[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
    }
}

/// Appends the transport header (checksums left zero: no reader here verifies them).
fn push_transport(frame: &mut Vec<u8>, flow: &Flow, from_client: bool, l4_len: u16) {
    let (sport, dport) = if from_client {
        (flow.client_port, flow.server_port)
    } else {
        (flow.server_port, flow.client_port)
    };
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&dport.to_be_bytes());
    if flow.udp {
        frame.extend_from_slice(&l4_len.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
    } else {
        frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]); // seq, ack
        frame.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]); // 20 bytes, PSH|ACK
    }
}

/// Builds one captured record's bytes into `frame`; returns the original (wire) length.
fn build(frame: &mut Vec<u8>, link: Link, flow: &Flow, from_client: bool, len: u16) -> u32 {
    frame.clear();
    push_link(frame, link, flow.v6);
    let link_len = frame.len() as u32;
    push_ip(frame, flow, from_client, len);
    let ip_header = if flow.v6 { 40 } else { 20 };
    push_transport(frame, flow, from_client, len - ip_header);
    link_len + u32::from(len)
}

fn write_global_header(out: &mut impl Write, snaplen: u32, link: Link) -> std::io::Result<()> {
    let network = match link {
        Link::Ethernet => LINKTYPE_ETHERNET,
        Link::Sll2 => LINKTYPE_LINUX_SLL2,
    };
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&[0; 8])?; // thiszone, sigfigs
    out.write_all(&snaplen.to_le_bytes())?;
    out.write_all(&network.to_le_bytes())
}

/// Writes a record: header, then the frame cut at `snaplen` and padded with zero payload.
fn write_record(
    out: &mut impl Write,
    n: u64,
    frame: &[u8],
    orig_len: u32,
    snaplen: u32,
) -> std::io::Result<()> {
    let caplen = orig_len.min(snaplen);
    let (secs, usecs) = (START_SECS + (n / 1_000_000) as u32, (n % 1_000_000) as u32);
    out.write_all(&secs.to_le_bytes())?;
    out.write_all(&usecs.to_le_bytes())?;
    out.write_all(&caplen.to_le_bytes())?;
    out.write_all(&orig_len.to_le_bytes())?;
    let kept = (caplen as usize).min(frame.len());
    out.write_all(&frame[..kept])?;
    const ZEROS: [u8; 256] = [0; 256];
    let mut pad = caplen as usize - kept;
    while pad > 0 {
        let step = pad.min(ZEROS.len());
        out.write_all(&ZEROS[..step])?;
        pad -= step;
    }
    Ok(())
}

/// Writes the whole file (global header and `args.packets` records) to `out`.
fn generate(args: &Args, out: &mut impl Write) -> std::io::Result<()> {
    write_global_header(out, args.snaplen, args.link)?;
    let mut rng = Rng::new(args.seed);
    let mut frame = Vec::with_capacity(128);
    for n in 0..args.packets {
        let index = if n < u64::from(args.flows) {
            n as u32
        } else {
            rng.below(u64::from(args.flows)) as u32
        };
        let flow = Flow::new(index);
        let from_client = rng.below(2) == 0;
        let len = ip_len(&mut rng, &flow);
        let orig_len = build(&mut frame, args.link, &flow, from_client, len);
        write_record(out, n, &frame, orig_len, args.snaplen)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.flows > 0, "--flows must be at least 1");
    anyhow::ensure!(args.snaplen >= 64, "--snaplen must be at least 64");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&args.out)?);
    generate(&args, &mut out)?;
    out.flush()?;
    println!(
        "wrote {} packets across {} flows to {}",
        args.packets,
        u64::from(args.flows).min(args.packets),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use pidcap_wire::{parse, FlowKey, LinkType};

    use super::*;

    fn args(link: Link, packets: u64, flows: u32) -> Args {
        Args {
            out: PathBuf::new(),
            packets,
            flows,
            link,
            snaplen: 96,
            seed: 3,
        }
    }

    /// (link type, caplen, orig_len, data) of every record of a pcap file in memory.
    fn records(file: &[u8]) -> (u32, Vec<(u32, &[u8])>) {
        let network = u32::from_le_bytes(file[20..24].try_into().unwrap());
        let mut at = 24;
        let mut out = Vec::new();
        while at < file.len() {
            let word = |i: usize| u32::from_le_bytes(file[at + i..at + i + 4].try_into().unwrap());
            let (caplen, orig_len) = (word(8), word(12));
            out.push((orig_len, &file[at + 16..at + 16 + caplen as usize]));
            at += 16 + caplen as usize;
        }
        (network, out)
    }

    /// Every record parses as IP with known ports, its IP length matches its wire length,
    /// and the file holds exactly the flows asked for.
    fn check(link: Link, wire_link: LinkType, link_header: u32) {
        let mut file = Vec::new();
        generate(&args(link, 5_000, 700), &mut file).unwrap();
        let (network, recs) = records(&file);
        assert_eq!(LinkType::from_dlt(network as i32), wire_link);
        assert_eq!(recs.len(), 5_000);
        let mut flows = HashSet::new();
        let (mut v6, mut udp) = (0, 0);
        for (orig_len, data) in recs {
            assert!(data.len() <= 96);
            let meta = parse(wire_link, data, orig_len).expect("generated frames parse");
            assert!(meta.ports_known);
            assert_eq!(meta.ip_len, orig_len - link_header);
            v6 += usize::from(meta.flow.src.is_ipv6());
            udp += usize::from(meta.flow.proto == pidcap_wire::IpProto::Udp);
            let FlowKey { proto, src, dst } = meta.flow;
            flows.insert((u8::from(proto), src.min(dst), src.max(dst)));
        }
        assert_eq!(flows.len(), 700);
        assert!(v6 > 500 && v6 < 2_500, "mixed families: {v6} IPv6 of 5000");
        assert!(
            udp > 500 && udp < 3_000,
            "mixed protocols: {udp} UDP of 5000"
        );
    }

    #[test]
    fn ethernet_file_has_the_flows_asked_for() {
        check(Link::Ethernet, LinkType::Ethernet, 14);
    }

    #[test]
    fn sll2_file_has_the_flows_asked_for() {
        check(Link::Sll2, LinkType::LinuxSll2, 20);
    }

    #[test]
    fn same_seed_same_file() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        generate(&args(Link::Ethernet, 300, 50), &mut a).unwrap();
        generate(&args(Link::Ethernet, 300, 50), &mut b).unwrap();
        assert_eq!(a, b);
    }
}
