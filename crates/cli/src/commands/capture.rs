//! `pidcap capture -w FILE`: the daemon's `capture` stream written as pcapng, each packet
//! with its processes in the packet's comment (Wireshark's `frame.comment`, tshark
//! `-e frame.comment`).
//!
//! The file is written in whole blocks: output is flushed only when no more of the stream is
//! waiting, and only block by block, so a capture ended by Ctrl-C leaves a readable file.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use pidcap_proto::{
    decode_reply, CaptureHeader, CaptureLine, CaptureRequest, CaptureStart, CapturedPacket,
    CapturedProcess, PacketOwner, Request,
};

use crate::cli::CaptureArgs;
use crate::client::Client;

/// How long the stream may stay silent (no packet matches) before a read gives up and
/// looks again; only `--duration` ends a silent capture.
const QUIET_READ: Duration = Duration::from_secs(3600);

pub fn run(client: &mut Client, args: &CaptureArgs) -> anyhow::Result<ExitCode> {
    let request = CaptureRequest {
        pid: args.pid,
        comm: args.comm.clone(),
        unit: args.unit.clone(),
        container: args.container.clone(),
        filter: (!args.filter.is_empty()).then(|| args.filter.join(" ")),
    };
    client.set_timeout(args.duration.unwrap_or(QUIET_READ))?;
    client.send(&Request::Capture(request))?;
    let first = client
        .next_line()?
        .context("the daemon closed the connection without replying")?;
    let start: CaptureStart = decode_reply(&first)?;
    let sink: Box<dyn Write> = if args.write.as_os_str() == "-" {
        Box::new(io::stdout().lock())
    } else {
        let file = File::create(&args.write)
            .with_context(|| format!("cannot create {}", args.write.display()))?;
        Box::new(file)
    };
    let mut writer = AnnotatedWriter::new(BufWriter::with_capacity(1 << 16, sink), &start.capture)?;
    let summary = stream(client, args, &mut writer)?;
    writer.finish()?;
    if args.write.as_os_str() != "-" {
        eprintln!(
            "pidcap: {} packets written to {}{}",
            summary.written,
            args.write.display(),
            match summary.lost {
                0 => String::new(),
                n => format!(", {n} lost (this client read too slowly)"),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a capture wrote.
#[derive(Debug, Default)]
struct Summary {
    written: u64,
    lost: u64,
}

fn stream(
    client: &mut Client,
    args: &CaptureArgs,
    writer: &mut AnnotatedWriter<impl Write>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut summary = Summary::default();
    loop {
        if args.count.is_some_and(|n| summary.written >= n) {
            return Ok(summary);
        }
        if let Some(duration) = args.duration {
            let left = duration.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(summary);
            }
            if !client.has_buffered() {
                client.set_timeout(left)?;
            }
        }
        if !client.has_buffered() {
            writer.flush()?;
        }
        let line = match client.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => bail!("the daemon closed the capture stream"),
            Err(_) if args.duration.is_some_and(|d| started.elapsed() >= d) => return Ok(summary),
            Err(e) => return Err(e),
        };
        let line: CaptureLine = decode_reply(&line)?;
        if let Some(process) = line.process {
            writer.describe(process);
        }
        if let Some(packet) = line.packet {
            writer.packet(packet)?;
            summary.written += 1;
        }
        if let Some(lost) = line.lost {
            summary.lost += lost.packets;
        }
    }
}

/// The owners and note of a packet: what its comment says.
type Annotation = (Option<PacketOwner>, Option<PacketOwner>, Option<String>);

/// Most distinct comments kept (the cache is emptied when full).
const COMMENTS_KEPT: usize = 4096;

/// A pcapng writer that knows the processes the stream described.
struct AnnotatedWriter<W: Write> {
    pcapng: PcapNgWriter<W>,
    processes: HashMap<u32, CapturedProcess>,
    /// Each annotation's comment, made once (emptied when a process is described anew).
    comments: HashMap<Annotation, String>,
}

impl<W: Write> AnnotatedWriter<W> {
    /// Writes the section header and the one interface.
    fn new(sink: W, header: &CaptureHeader) -> anyhow::Result<Self> {
        let section = SectionHeaderBlock {
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "pidcap {}",
                env!("CARGO_PKG_VERSION")
            )))],
            ..SectionHeaderBlock::default()
        };
        let mut pcapng = PcapNgWriter::with_section_header(sink, section)?;
        let interface = InterfaceDescriptionBlock {
            linktype: DataLink::from(header.link_type as u32),
            snaplen: header.snaplen,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(header.interface.clone())),
                // pcap-file writes packet times in nanoseconds.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        pcapng.write_pcapng_block(interface)?;
        Ok(AnnotatedWriter {
            pcapng,
            processes: HashMap::new(),
            comments: HashMap::new(),
        })
    }

    fn describe(&mut self, process: CapturedProcess) {
        self.processes.insert(process.pid, process);
        self.comments.clear();
    }

    fn packet(&mut self, packet: CapturedPacket) -> anyhow::Result<()> {
        let data = packet.bytes()?;
        let (ts_us, original_len) = (packet.ts_us, packet.orig_len);
        let text = cached_comment(&mut self.comments, &self.processes, packet);
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_micros(ts_us),
            original_len,
            data: Cow::Owned(data),
            options: vec![EnhancedPacketOption::Comment(Cow::Borrowed(text))],
        };
        self.pcapng.write_pcapng_block(block)?;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pcapng.get_mut().flush()
    }

    fn finish(mut self) -> io::Result<()> {
        self.flush()
    }
}

/// The packet's comment, made once per distinct annotation.
fn cached_comment<'a>(
    comments: &'a mut HashMap<Annotation, String>,
    processes: &HashMap<u32, CapturedProcess>,
    packet: CapturedPacket,
) -> &'a str {
    if comments.len() >= COMMENTS_KEPT {
        comments.clear();
    }
    comments
        .entry((packet.tx, packet.rx, packet.note))
        .or_insert_with_key(|(tx, rx, note)| annotation_text(tx, rx, note, processes))
}

/// A packet's comment: `tx: curl[4242] exe=/usr/bin/curl unit=… container=… (exact); rx:
/// unknown (no_socket)`, or its note (`foreign`, `copy`, `not_ip`, `malformed`).
#[cfg(test)]
fn comment(packet: &CapturedPacket, processes: &HashMap<u32, CapturedProcess>) -> String {
    annotation_text(&packet.tx, &packet.rx, &packet.note, processes)
}

fn annotation_text(
    tx: &Option<PacketOwner>,
    rx: &Option<PacketOwner>,
    note: &Option<String>,
    processes: &HashMap<u32, CapturedProcess>,
) -> String {
    let sides: Vec<String> = [("tx", tx), ("rx", rx)]
        .into_iter()
        .filter_map(|(side, owner)| {
            owner
                .as_ref()
                .map(|o| format!("{side}: {}", owner_text(o, processes)))
        })
        .collect();
    match (note, sides.is_empty()) {
        (Some(note), _) => format!("pidcap: {note}"),
        (None, true) => "pidcap: no local end".to_owned(),
        (None, false) => format!("pidcap {}", sides.join("; ")),
    }
}

fn owner_text(owner: &PacketOwner, processes: &HashMap<u32, CapturedProcess>) -> String {
    let Some(pid) = owner.pid else {
        return format!("unknown ({})", owner.unknown.as_deref().unwrap_or("?"));
    };
    let matched = owner.matched.as_deref().unwrap_or("?");
    let Some(p) = processes.get(&pid) else {
        return format!("pid {pid} ({matched})");
    };
    let mut text = format!("{}[{pid}]", p.comm);
    if let Some(exe) = &p.exe {
        text.push_str(&format!(" exe={exe}"));
    }
    if let Some(unit) = &p.unit {
        text.push_str(&format!(" unit={unit}"));
    }
    if let Some(c) = &p.container {
        let name = c.name.as_deref().unwrap_or(&c.id);
        text.push_str(&format!(" container={}:{name}", c.runtime));
    }
    text.push_str(&format!(" ({matched})"));
    text
}

#[cfg(test)]
mod tests {
    use pidcap_proto::ContainerRef;

    use super::*;

    fn packet(tx: Option<PacketOwner>, rx: Option<PacketOwner>) -> CapturedPacket {
        CapturedPacket {
            ts_us: 1_700_000_000_123_456,
            orig_len: 4,
            data: CapturedPacket::encode_data(&[1, 2, 3, 4]),
            tx,
            rx,
            note: None,
        }
    }

    fn found(pid: u32, matched: &str) -> PacketOwner {
        PacketOwner {
            pid: Some(pid),
            start_time: Some(7),
            matched: Some(matched.into()),
            unknown: None,
        }
    }

    fn curl() -> HashMap<u32, CapturedProcess> {
        let p = CapturedProcess {
            pid: 42,
            start_time: 7,
            comm: "curl".into(),
            exe: Some("/usr/bin/curl".into()),
            uid: 1000,
            unit: Some("session-1.scope".into()),
            container: Some(ContainerRef {
                runtime: "podman".into(),
                id: "abcd".into(),
                pod: None,
                name: Some("web".into()),
            }),
        };
        HashMap::from([(42, p)])
    }

    #[test]
    fn a_comment_names_each_end_with_its_process_and_match() {
        let unknown = PacketOwner {
            pid: None,
            start_time: None,
            matched: None,
            unknown: Some("no_socket".into()),
        };
        let text = comment(&packet(Some(found(42, "exact")), Some(unknown)), &curl());
        assert_eq!(
            text,
            "pidcap tx: curl[42] exe=/usr/bin/curl unit=session-1.scope container=podman:web \
             (exact); rx: unknown (no_socket)"
        );
        let undescribed = comment(&packet(None, Some(found(9, "late"))), &curl());
        assert_eq!(undescribed, "pidcap rx: pid 9 (late)");
    }

    #[test]
    fn a_comment_made_once_is_made_anew_when_its_process_is_described_again() {
        let mut out = Vec::new();
        {
            let mut w = AnnotatedWriter::new(&mut out, &header()).unwrap();
            let mut process = curl().remove(&42).unwrap();
            w.describe(process.clone());
            w.packet(packet(Some(found(42, "exact")), None)).unwrap();
            process.comm = "wget".into(); // an exec: same pid, same start time
            w.describe(process);
            w.packet(packet(Some(found(42, "exact")), None)).unwrap();
            w.finish().unwrap();
        }
        let comments: Vec<String> = read_back(&out)
            .iter()
            .map(|epb| match &epb.options[..] {
                [EnhancedPacketOption::Comment(c)] => c.to_string(),
                other => panic!("options {other:?}"),
            })
            .collect();
        assert!(comments[0].contains("curl[42]"), "{comments:?}");
        assert!(comments[1].contains("wget[42]"), "{comments:?}");
    }

    #[test]
    fn a_packet_without_owners_says_why() {
        let mut p = packet(None, None);
        p.note = Some("foreign".into());
        assert_eq!(comment(&p, &HashMap::new()), "pidcap: foreign");
    }

    fn header() -> CaptureHeader {
        CaptureHeader {
            link_type: 1,
            snaplen: 256,
            interface: "lo".into(),
            filtered_to_uid: None,
        }
    }

    fn read_back(file: &[u8]) -> Vec<EnhancedPacketBlock<'static>> {
        let mut reader = pcap_file::pcapng::PcapNgReader::new(file).unwrap();
        let mut packets = Vec::new();
        while let Some(block) = reader.next_block() {
            if let pcap_file::pcapng::Block::EnhancedPacket(epb) = block.unwrap() {
                packets.push(epb.into_owned());
            }
        }
        packets
    }

    #[test]
    fn the_file_reads_back_with_its_comments_times_and_link_type() {
        let mut out = Vec::new();
        {
            let mut w = AnnotatedWriter::new(&mut out, &header()).unwrap();
            for (pid, process) in curl() {
                assert_eq!(pid, process.pid);
                w.describe(process);
            }
            w.packet(packet(Some(found(42, "exact")), None)).unwrap();
            w.finish().unwrap();
        }
        let packets = read_back(&out);
        assert_eq!(packets.len(), 1);
        let epb = &packets[0];
        assert_eq!(&epb.data[..], &[1, 2, 3, 4]);
        assert_eq!(epb.original_len, 4);
        assert_eq!(
            epb.timestamp,
            Duration::from_micros(1_700_000_000_123_456),
            "nanosecond resolution declared, so times read back exactly"
        );
        assert!(matches!(
            &epb.options[..],
            [EnhancedPacketOption::Comment(c)] if c.starts_with("pidcap tx: curl[42]")
        ));
    }
}
