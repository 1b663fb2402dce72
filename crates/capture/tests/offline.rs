//! Replaying capture files the tests write byte by byte: classic pcap and pcapng, BPF filters,
//! and every way a file can be wrong.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pidcap_capture::{CaptureError, Frame, Next, Source};
use pidcap_wire::LinkType;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// One frame to write: capture time, on-wire bytes, and how many of them were captured.
struct Record {
    ts_sec: u32,
    ts_usec: u32,
    frame: Vec<u8>,
    caplen: usize,
}

impl Record {
    fn full(ts_sec: u32, ts_usec: u32, frame: Vec<u8>) -> Record {
        let caplen = frame.len();
        Record {
            ts_sec,
            ts_usec,
            frame,
            caplen,
        }
    }
}

/// An Ethernet II / IPv4 frame from 10.0.0.1:`sport` to 10.0.0.2:`dport`. Only the fields BPF
/// looks at are meaningful: checksums are zero, the TCP header is cut to its port fields.
fn eth_ipv4(proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ip_len = u16::try_from(20 + 8 + payload.len()).unwrap();
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    f.extend_from_slice(&[0x08, 0x00]); // EtherType IPv4
    f.extend_from_slice(&[0x45, 0x00]); // version 4, IHL 5; DSCP/ECN 0
    f.extend_from_slice(&ip_len.to_be_bytes()); // total length
    f.extend_from_slice(&[0, 0, 0x40, 0]); // identification 0; flags DF, fragment offset 0
    f.extend_from_slice(&[64, proto, 0, 0]); // TTL 64; protocol; header checksum (unchecked)
    f.extend_from_slice(&[10, 0, 0, 1]); // source address
    f.extend_from_slice(&[10, 0, 0, 2]); // destination address
    f.extend_from_slice(&sport.to_be_bytes()); // source port
    f.extend_from_slice(&dport.to_be_bytes()); // destination port
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes()); // UDP length / TCP seq hi
    f.extend_from_slice(&[0, 0]); // UDP checksum / TCP seq lo
    f.extend_from_slice(payload);
    f
}

/// A classic little-endian, microsecond pcap file with link type Ethernet.
fn pcap_bytes(records: &[Record]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic: microsecond time stamps
    b.extend_from_slice(&2u16.to_le_bytes()); // version major
    b.extend_from_slice(&4u16.to_le_bytes()); // version minor
    b.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    b.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    b.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    b.extend_from_slice(&1u32.to_le_bytes()); // network: LINKTYPE_ETHERNET
    for r in records {
        b.extend_from_slice(&r.ts_sec.to_le_bytes());
        b.extend_from_slice(&r.ts_usec.to_le_bytes());
        b.extend_from_slice(&(r.caplen as u32).to_le_bytes()); // incl_len
        b.extend_from_slice(&(r.frame.len() as u32).to_le_bytes()); // orig_len
        b.extend_from_slice(&r.frame[..r.caplen]);
    }
    b
}

/// A little-endian pcapng file: section header, one Ethernet interface (default microsecond
/// resolution), one enhanced packet block per record.
fn pcapng_bytes(records: &[Record]) -> Vec<u8> {
    let mut b = Vec::new();
    // Section Header Block.
    b.extend_from_slice(&0x0a0d_0d0au32.to_le_bytes()); // block type
    b.extend_from_slice(&28u32.to_le_bytes()); // block total length
    b.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes()); // byte-order magic
    b.extend_from_slice(&1u16.to_le_bytes()); // version major
    b.extend_from_slice(&0u16.to_le_bytes()); // version minor
    b.extend_from_slice(&(-1i64).to_le_bytes()); // section length: unspecified
    b.extend_from_slice(&28u32.to_le_bytes()); // block total length
                                               // Interface Description Block.
    b.extend_from_slice(&1u32.to_le_bytes()); // block type
    b.extend_from_slice(&20u32.to_le_bytes()); // block total length
    b.extend_from_slice(&1u16.to_le_bytes()); // link type: Ethernet
    b.extend_from_slice(&0u16.to_le_bytes()); // reserved
    b.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    b.extend_from_slice(&20u32.to_le_bytes()); // block total length
    for r in records {
        let padded = r.caplen.div_ceil(4) * 4;
        let total = (32 + padded) as u32;
        let ts = u64::from(r.ts_sec) * 1_000_000 + u64::from(r.ts_usec);
        // Enhanced Packet Block.
        b.extend_from_slice(&6u32.to_le_bytes()); // block type
        b.extend_from_slice(&total.to_le_bytes()); // block total length
        b.extend_from_slice(&0u32.to_le_bytes()); // interface id
        b.extend_from_slice(&((ts >> 32) as u32).to_le_bytes()); // time stamp, high
        b.extend_from_slice(&(ts as u32).to_le_bytes()); // time stamp, low
        b.extend_from_slice(&(r.caplen as u32).to_le_bytes()); // captured length
        b.extend_from_slice(&(r.frame.len() as u32).to_le_bytes()); // original length
        b.extend_from_slice(&r.frame[..r.caplen]);
        b.resize(b.len() + padded - r.caplen, 0); // pad to 32 bits
        b.extend_from_slice(&total.to_le_bytes()); // block total length
    }
    b
}

/// Three frames: DNS-like UDP, NTP-like UDP, HTTP-like TCP cut to 60 of 1000 bytes.
fn sample_records() -> Vec<Record> {
    let tcp = eth_ipv4(IPPROTO_TCP, 40000, 80, &[0xab; 958]);
    vec![
        Record::full(
            1_700_000_000,
            250_000,
            eth_ipv4(IPPROTO_UDP, 5353, 53, b"query"),
        ),
        Record::full(
            1_700_000_001,
            0,
            eth_ipv4(IPPROTO_UDP, 123, 123, &[0x1b; 48]),
        ),
        Record {
            ts_sec: 1_700_000_002,
            ts_usec: 999_999,
            frame: tcp,
            caplen: 60,
        },
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write capture file");
    path
}

/// (data, orig_len, ts) of every frame until `End`; bounded by `limit` reads.
fn read_all(source: &mut Source, limit: usize) -> Vec<(Vec<u8>, u32, SystemTime)> {
    let mut frames = Vec::new();
    for _ in 0..limit {
        match source.next().expect("read frame") {
            Next::Packet(Frame { data, orig_len, ts }) => {
                frames.push((data.to_vec(), orig_len, ts))
            }
            Next::End => return frames,
            Next::Timeout => panic!("a file never times out"),
        }
    }
    panic!("no End after {limit} reads");
}

fn at(sec: u64, usec: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(sec) + Duration::from_micros(usec)
}

fn assert_sample_frames(frames: &[(Vec<u8>, u32, SystemTime)], records: &[Record]) {
    assert_eq!(frames.len(), records.len());
    for ((data, orig_len, ts), r) in frames.iter().zip(records) {
        assert_eq!(data.as_slice(), &r.frame[..r.caplen]);
        assert_eq!(*orig_len as usize, r.frame.len());
        assert_eq!(*ts, at(r.ts_sec.into(), r.ts_usec.into()));
    }
}

#[test]
fn pcap_file_yields_every_frame_then_end() {
    let dir = tempfile::tempdir().unwrap();
    let records = sample_records();
    let path = write(dir.path(), "sample.pcap", &pcap_bytes(&records));

    let mut source = Source::open_file(&path, None).expect("open pcap");
    assert!(!source.is_live());
    assert_eq!(source.link_type(), LinkType::Ethernet);
    assert_eq!(source.datalink(), 1);
    assert_eq!(source.link_name(), "EN10MB");

    let frames = read_all(&mut source, 10);
    assert_sample_frames(&frames, &records);
    // The snapped TCP frame: 60 bytes captured of 1000 on the wire.
    assert_eq!((frames[2].0.len(), frames[2].1), (60, 1000));
    // End is sticky, and files report no kernel counters.
    assert_eq!(source.next().unwrap(), Next::End);
    assert_eq!(source.stats().unwrap(), Default::default());
}

#[test]
fn pcapng_file_yields_every_frame_then_end() {
    let dir = tempfile::tempdir().unwrap();
    let records = sample_records();
    let path = write(dir.path(), "sample.pcapng", &pcapng_bytes(&records));

    let mut source = Source::open_file(&path, None).expect("open pcapng");
    assert_eq!(source.link_type(), LinkType::Ethernet);
    assert_sample_frames(&read_all(&mut source, 10), &records);
}

#[test]
fn bpf_filter_selects_frames_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let records = sample_records();
    let path = write(dir.path(), "sample.pcap", &pcap_bytes(&records));

    let udp = read_all(&mut Source::open_file(&path, Some("udp")).unwrap(), 10);
    assert_sample_frames(&udp, &records[..2]);

    let dns = read_all(
        &mut Source::open_file(&path, Some("udp and port 53")).unwrap(),
        10,
    );
    assert_sample_frames(&dns, &records[..1]);

    let http = read_all(
        &mut Source::open_file(&path, Some("tcp dst port 80")).unwrap(),
        10,
    );
    assert_sample_frames(&http, &records[2..]);
}

#[test]
fn bad_filter_is_bad_filter() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "sample.pcap", &pcap_bytes(&sample_records()));
    let err = Source::open_file(&path, Some("udp and port")).unwrap_err();
    match &err {
        CaptureError::BadFilter { filter, message } => {
            assert_eq!(filter, "udp and port");
            assert!(!message.is_empty());
        }
        other => panic!("expected BadFilter, got {other:?}"),
    }
    assert!(err.to_string().contains("udp and port"), "{err}");
}

#[test]
fn missing_file_is_file_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("does-not-exist.pcap");
    let err = Source::open_file(&path, None).unwrap_err();
    assert!(
        matches!(&err, CaptureError::File { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains("does-not-exist.pcap"), "{err}");
}

#[test]
fn garbage_file_is_file_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "garbage.pcap",
        b"this is not a capture file at all",
    );
    let err = Source::open_file(&path, None).unwrap_err();
    assert!(matches!(err, CaptureError::File { .. }), "{err:?}");
}

#[test]
fn truncated_record_is_read_error_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let records = sample_records();
    let mut bytes = pcap_bytes(&records[..1]);
    bytes.truncate(bytes.len() - 5); // cut the first record's data short
    let path = write(dir.path(), "truncated.pcap", &bytes);

    let mut source = Source::open_file(&path, None).expect("header is intact");
    let err = source.next().unwrap_err();
    assert!(matches!(err, CaptureError::Read { .. }), "{err:?}");
}

#[test]
fn empty_pcap_file_ends_immediately() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "empty.pcap", &pcap_bytes(&[]));
    let mut source = Source::open_file(&path, None).unwrap();
    assert_eq!(source.next().unwrap(), Next::End);
}

/// Writes a whole capture file from records.
type FileBuilder = fn(&[Record]) -> Vec<u8>;

#[test]
fn every_truncation_of_a_file_is_an_error_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let records = sample_records();
    let builders: [(&str, FileBuilder); 2] =
        [("cut.pcap", pcap_bytes), ("cut.pcapng", pcapng_bytes)];
    for (name, build) in builders {
        let bytes = build(&records);
        // File length after k complete records (the builders are prefix-consistent).
        let boundaries: Vec<usize> = (0..=records.len())
            .map(|k| build(&records[..k]).len())
            .collect();
        for len in 0..bytes.len() {
            let path = write(dir.path(), name, &bytes[..len]);
            let Ok(mut source) = Source::open_file(&path, None) else {
                assert!(
                    len < boundaries[0],
                    "{name}[..{len}]: intact header rejected"
                );
                continue;
            };
            let mut frames = 0;
            let ended_cleanly = loop {
                match source.next() {
                    Ok(Next::Packet(_)) if frames < records.len() => frames += 1,
                    Ok(Next::Packet(_)) => panic!("{name}[..{len}]: more frames than written"),
                    Ok(Next::End) => break true,
                    Err(_) => break false,
                    Ok(Next::Timeout) => panic!("a file never times out"),
                }
            };
            let complete = boundaries.iter().filter(|&&b| b <= len).count() - 1;
            assert_eq!(frames, complete, "{name}[..{len}]: frames read");
            assert_eq!(
                ended_cleanly,
                boundaries.contains(&len),
                "{name}[..{len}]: only a cut between records ends without an error"
            );
        }
    }
}
