//! Property: `parse_net_table` returns (Ok or Err) on any input; it never panics.

use pidcap_core::NetNsId;
use pidcap_sockets::parse_net_table;
use pidcap_wire::IpProto;
use proptest::prelude::*;

const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

/// Lines built from the pieces a table line is made of, so that mutations reach the field
/// parsers rather than failing on the column count.
fn table_like_line() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        "[0-9A-Fa-f]{0,33}",
        "[0-9A-F]{8}:[0-9A-F]{1,5}",
        "[0-9A-F]{32}:[0-9A-F]{4}",
        "[0-9]{1,21}",
        "[0-9]+:",
        "[ -~]{0,6}",
        Just(String::new()),
    ];
    prop::collection::vec(token, 0..14).prop_map(|t| t.join(" "))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), v6: bool) {
        let _ = parse_net_table(&bytes[..], IpProto::Tcp, v6, NetNsId(1));
    }

    #[test]
    fn arbitrary_lines_after_a_header_never_panic(
        lines in prop::collection::vec(table_like_line(), 0..8),
        v6: bool,
    ) {
        let text = format!("{HEADER}{}", lines.join("\n"));
        let result = parse_net_table(text.as_bytes(), IpProto::Udp, v6, NetNsId(1));
        if let Ok(entries) = result {
            prop_assert!(entries.len() <= lines.len());
        }
    }
}
