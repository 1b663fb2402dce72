//! Proc connector datagrams: `pidcap_sockets::parse_datagram` on any bytes.
//!
//! Besides never panicking: the events of a datagram are those of its valid prefix, so on an
//! error the events kept are exactly those read before the bad message's offset, and parsing
//! appends to what `out` already holds.

use pidcap_sockets::{parse_datagram, ProcEvent};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut out = Vec::new();
        match parse_datagram(data, &mut out) {
            Ok(()) => {}
            Err(e) => {
                assert!(
                    e.offset < data.len().max(1),
                    "{e:?} of {} bytes",
                    data.len()
                );
                let mut prefix = Vec::new();
                assert!(parse_datagram(&data[..e.offset], &mut prefix).is_ok());
                assert_eq!(prefix, out);
            }
        }
        let mut appended: Vec<ProcEvent> = out.clone();
        let _ = parse_datagram(data, &mut appended);
        assert_eq!(appended.len(), 2 * out.len());
    });
}
