//! Frame parsing: `pidcap_wire::parse` on any link type, captured bytes and wire length.
//!
//! Input: byte 0 picks the link type, bytes 1..3 (i16, little endian) are added to the
//! captured length to make `orig_len` (a snaplen cut when positive), the rest is the frame.
//! Besides never panicking, a parsed packet never counts more than the wire length.

use pidcap_wire::LinkType;

const LINKS: [LinkType; 8] = [
    LinkType::Null,
    LinkType::Ethernet,
    LinkType::Raw,
    LinkType::Ipv4,
    LinkType::Ipv6,
    LinkType::Loop,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
];

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&[pick, lo, hi], frame)) = data.split_first_chunk::<3>() else {
            return;
        };
        let link = LINKS
            .get(usize::from(pick))
            .copied()
            .unwrap_or(LinkType::from_dlt(i32::from(pick)));
        let delta = i64::from(i16::from_le_bytes([lo, hi]));
        let orig_len = (frame.len() as i64 + delta).clamp(0, i64::from(u32::MAX)) as u32;
        if let Ok(meta) = pidcap_wire::parse(link, frame, orig_len) {
            assert!(
                meta.ip_len <= orig_len,
                "ip_len {} > orig_len {orig_len}",
                meta.ip_len
            );
        }
    });
}
