//! Query request parsing: `pidcap_proto::parse_request` on any line.
//!
//! Besides never panicking: an accepted request passes its own validation (so the daemon's
//! `query()` / `interval_ms()` cannot fail on it), and encoding it gives a line that parses
//! back to the same request.

use pidcap_proto::{encode_line, parse_request, Request};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(request) = parse_request(data) else {
            return;
        };
        assert!(request.validate().is_ok(), "{request:?}");
        match &request {
            Request::Lookup(lookup) => assert!(lookup.query().is_ok(), "{lookup:?}"),
            Request::Watch(watch) => assert!(watch.interval().is_ok(), "{watch:?}"),
            Request::Capture(capture) => assert!(capture.validate().is_ok(), "{capture:?}"),
            Request::Processes
            | Request::Process { .. }
            | Request::Stats
            | Request::Groups { .. } => {}
        }
        let line = encode_line(&request);
        assert_eq!(parse_request(&line).ok(), Some(request));
    });
}
