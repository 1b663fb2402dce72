//! Trace records: tracefs `format` text and the raw records decoded with its layouts.
//!
//! Input: format text, a NUL, then one raw record. The text is parsed and every layout it
//! allows decodes the record; the record is also decoded with the layouts of the kernel's
//! real format files (the fixtures of `crates/sockets/tests`). Nothing may panic, and a
//! layout never decodes a record shorter than the fields it reads.

use pidcap_sockets::trace::format::{
    record_type, RouteLayout, SetStateLayout, SockIoLayout, SyscallLayout, TraceFormat,
};

const FIXTURES: [&str; 7] = [
    include_str!("../../crates/sockets/tests/fixtures/trace/inet_sock_set_state.format"),
    include_str!("../../crates/sockets/tests/fixtures/trace/sock_send_length.format"),
    include_str!("../../crates/sockets/tests/fixtures/trace/sock_recv_length.format"),
    include_str!("../../crates/sockets/tests/fixtures/trace/sys_enter_connect.format"),
    include_str!("../../crates/sockets/tests/fixtures/trace/sys_exit_connect.format"),
    include_str!("../../crates/sockets/tests/fixtures/trace/fib_table_lookup.format"),
    include_str!("../../crates/sockets/tests/fixtures/trace/fib6_table_lookup.format"),
];

fn decode_with(format: &TraceFormat, raw: &[u8]) {
    if let Ok(layout) = SetStateLayout::new(format) {
        let _ = layout.decode(raw);
    }
    if let Ok(layout) = SockIoLayout::new(format) {
        let _ = layout.decode(raw);
    }
    for field in ["fd", "ret"] {
        if let Ok(layout) = SyscallLayout::new(format, field) {
            let _ = layout.decode(raw);
        }
    }
    if let Ok(layout) = RouteLayout::new(format) {
        let _ = layout.decode(raw);
    }
    for field in &format.fields {
        let end = field.offset.saturating_add(field.size);
        if raw.len() < end {
            continue;
        }
        let _ = &raw[field.offset..end];
    }
}

fn main() {
    let real: Vec<TraceFormat> = FIXTURES
        .iter()
        .map(|text| TraceFormat::parse("fixture", text).expect("fixture format parses"))
        .collect();
    afl::fuzz!(|data: &[u8]| {
        let (text, raw) = match data.iter().position(|&b| b == 0) {
            Some(at) => (&data[..at], &data[at + 1..]),
            None => (data, &[][..]),
        };
        let _ = record_type(raw);
        for format in &real {
            decode_with(format, raw);
        }
        if let Ok(format) = TraceFormat::parse("fuzz", &String::from_utf8_lossy(text)) {
            decode_with(&format, raw);
        }
    });
}
