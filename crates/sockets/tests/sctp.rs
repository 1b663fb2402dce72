//! `parse_sctp_eps`, `parse_sctp_assocs` and `ProcRoot::read_sctp_into`.
//!
//! The test machine's kernel has no SCTP, so the fixtures are written by hand from the format
//! strings of `net/sctp/proc.c` (Linux 6.x), each line commented with the function and
//! format it follows. Pointers (`%8pK`) are shown hashed, as with `kptr_restrict`.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pidcap_core::{NetNsId, SocketEntry, TcpState};
use pidcap_sockets::{parse_sctp_assocs, parse_sctp_eps, Error, ProcRoot};
use pidcap_wire::IpProto;
use proptest::prelude::*;

const NS: NetNsId = NetNsId(4026531833);

/// `sctp_eps_seq_start`: `" ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS\n"`.
const EPS_HEADER: &str = " ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS\n";

/// Each data line: `sctp_eps_seq_show`, `"%8pK %8pK %-3d %-3d %-4d %-5d %5u %5lu "` (ENDPT,
/// SOCK, STY, SST, HBKT, LPORT, UID, INODE), then `sctp_seq_dump_local_addrs`, one
/// `"%pI4 "` / `"%pI6 "` per bound address, then `"\n"`.
const EPS: &str = concat!(
    " ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS\n",
    // SOCK_STREAM listener (STY 1, SST 10 = LISTEN) on port 5000, uid 1000, bound to two IPv4
    // addresses.
    "000000003a1b2c4d 00000000e5f6a7b8 1   10  5    5000   1000 41296 127.0.0.1 10.0.0.1 \n",
    // SOCK_SEQPACKET endpoint (STY 5) on port 36412, uid 0, bound to two IPv6 addresses
    // (%pI6 prints all eight groups).
    "00000000c0ffee01 00000000c0ffee02 5   10  17   36412     0 41300 ",
    "0000:0000:0000:0000:0000:0000:0000:0001 fd00:0000:0000:0000:0000:0000:0000:0002 \n",
);

/// `sctp_assocs_seq_show` for `SEQ_START_TOKEN`.
const ASSOCS_HEADER: &str = concat!(
    " ASSOC     SOCK   STY SST ST HBKT ASSOC-ID TX_QUEUE RX_QUEUE UID INODE LPORT RPORT ",
    "LADDRS <-> RADDRS HBINT INS OUTS MAXRT T1X T2X RTXC wmema wmemq sndbuf rcvbuf\n",
);

/// Each data line: `sctp_assocs_seq_show`, `"%8pK %8pK %-3d %-3d %-2d %-4d %4d %8d %8d %7u
/// %5lu %-5d %5d "` (ASSOC, SOCK, STY, SST, ST, HBKT, ASSOC-ID, TX_QUEUE, RX_QUEUE, UID, INODE,
/// LPORT, RPORT), `" "`, `sctp_seq_dump_local_addrs` (`"*"` before the primary path's source,
/// `"%pI4 "`/`"%pI6 "` each), `"<-> "`, `sctp_seq_dump_remote_addrs` (`"*"` before the primary
/// peer address), then `"\t%8lu %5d %5d %4d %4d %4d %8d %8d %8d %8d %8d"` (HBINT ... rcvbuf)
/// and `"\n"`.
const ASSOCS: &str = concat!(
    " ASSOC     SOCK   STY SST ST HBKT ASSOC-ID TX_QUEUE RX_QUEUE UID INODE LPORT RPORT ",
    "LADDRS <-> RADDRS HBINT INS OUTS MAXRT T1X T2X RTXC wmema wmemq sndbuf rcvbuf\n",
    // Single-homed IPv4: 127.0.0.1:5000 <-> 127.0.0.1:40000, uid 1000, inode 41297.
    "0000000011111111 0000000022222222 1   1   3  0       1        0        0    1000 41297 ",
    "5000  40000  *127.0.0.1 <-> *127.0.0.1 ",
    "\t   30000    10    10   10    0    0        0        1        0  2626560   131072\n",
    // Multi-homed IPv4: 10.0.0.1 and 192.168.1.1 (primary source) port 5000 <-> 10.0.0.2 and
    // 192.168.1.2 (primary) port 2905, uid 0, inode 41298.
    "0000000033333333 0000000044444444 5   10  3  0       2        0        0       0 41298 ",
    "5000   2905  10.0.0.1 *192.168.1.1 <-> 10.0.0.2 *192.168.1.2 ",
    "\t   30000    10    10   10    0    0        0        1        0   212992   212992\n",
);

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

fn v6(s: &str, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(s.parse::<Ipv6Addr>().unwrap()), port)
}

fn entry(
    local: SocketAddr,
    remote: SocketAddr,
    state: TcpState,
    inode: u64,
    uid: u32,
) -> SocketEntry {
    SocketEntry {
        netns: NS,
        proto: IpProto::Sctp,
        local,
        remote,
        state,
        inode,
        uid,
    }
}

fn eps(text: &str) -> Result<Vec<SocketEntry>, Error> {
    let mut out = Vec::new();
    parse_sctp_eps(text.as_bytes(), NS, &mut out).map(|()| out)
}

fn assocs(text: &str) -> Result<Vec<SocketEntry>, Error> {
    let mut out = Vec::new();
    parse_sctp_assocs(text.as_bytes(), NS, &mut out).map(|()| out)
}

fn expected_eps() -> Vec<SocketEntry> {
    let any4 = v4([0, 0, 0, 0], 0);
    let any6 = v6("::", 0);
    vec![
        entry(
            v4([127, 0, 0, 1], 5000),
            any4,
            TcpState::Listen,
            41296,
            1000,
        ),
        entry(v4([10, 0, 0, 1], 5000), any4, TcpState::Listen, 41296, 1000),
        entry(v6("::1", 36412), any6, TcpState::Listen, 41300, 0),
        entry(v6("fd00::2", 36412), any6, TcpState::Listen, 41300, 0),
    ]
}

fn expected_assocs() -> Vec<SocketEntry> {
    let est = TcpState::Established;
    let (a, b) = ([10, 0, 0, 1], [192, 168, 1, 1]);
    let (c, d) = ([10, 0, 0, 2], [192, 168, 1, 2]);
    vec![
        entry(
            v4([127, 0, 0, 1], 5000),
            v4([127, 0, 0, 1], 40000),
            est,
            41297,
            1000,
        ),
        entry(v4(a, 5000), v4(c, 2905), est, 41298, 0),
        entry(v4(a, 5000), v4(d, 2905), est, 41298, 0),
        entry(v4(b, 5000), v4(c, 2905), est, 41298, 0),
        entry(v4(b, 5000), v4(d, 2905), est, 41298, 0),
    ]
}

#[test]
fn eps_one_entry_per_local_address_with_wildcard_remote() {
    let got = eps(EPS).unwrap();
    assert_eq!(got, expected_eps());
    assert!(got.iter().all(SocketEntry::is_wildcard_remote));
}

#[test]
fn assocs_one_entry_per_path_with_primary_markers_stripped() {
    assert_eq!(assocs(ASSOCS).unwrap(), expected_assocs());
}

#[test]
fn assocs_skip_pairs_of_mixed_families() {
    // Dual-stack association: 127.0.0.1 and ::1 on both sides (compressed %pI6c-style text
    // is accepted as well as the full form).
    let line = concat!(
        "0000000055555555 0000000066666666 2   1   3  0       4        0        0       0 41299 ",
        "7000  7001  *127.0.0.1 ::1 <-> *127.0.0.1 0000:0000:0000:0000:0000:0000:0000:0001 ",
        "\t   30000    10    10   10    0    0        0        1        0   212992   212992\n",
    );
    let got = assocs(&format!("{ASSOCS_HEADER}{line}")).unwrap();
    let est = TcpState::Established;
    assert_eq!(
        got,
        [
            entry(
                v4([127, 0, 0, 1], 7000),
                v4([127, 0, 0, 1], 7001),
                est,
                41299,
                0
            ),
            entry(v6("::1", 7000), v6("::1", 7001), est, 41299, 0),
        ]
    );
}

#[test]
fn header_only_tables_yield_nothing() {
    assert_eq!(eps(EPS_HEADER).unwrap(), []);
    assert_eq!(assocs(ASSOCS_HEADER).unwrap(), []);
    assert_eq!(eps("").unwrap(), []);
}

#[test]
fn malformed_eps_line_is_an_error_with_its_line_number() {
    let text = format!(
        "{EPS}{}",
        "000000003a1b2c4d 00000000e5f6a7b8 1   10  5    5000   1000 41301 127.0.0.999 \n"
    );
    let err = eps(&text).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { what, line: 4, reason } if what == "sctp eps table" && reason.contains("127.0.0.999")),
        "{err:?}"
    );
}

#[test]
fn malformed_assocs_lines_are_errors_with_their_line_number() {
    let no_arrow = "0000000011111111 0000000022222222 1   1   3  0       1        0        0    1000 41297 5000  40000  127.0.0.1 127.0.0.2 \n";
    let err = assocs(&format!("{ASSOCS}{no_arrow}")).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { line: 4, reason, .. } if reason.contains("<->")),
        "{err:?}"
    );

    let short = "0000000011111111 0000000022222222 1   1   3\n";
    let err = assocs(&format!("{ASSOCS_HEADER}{short}")).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { line: 2, reason, .. } if reason.contains("columns")),
        "{err:?}"
    );

    let err = assocs("garbage\n").unwrap_err();
    assert!(matches!(&err, Error::Parse { line: 1, .. }), "{err:?}");
}

#[test]
fn read_sctp_into_reads_both_tables_under_the_root() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("net/sctp");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("eps"), EPS).unwrap();
    fs::write(dir.join("assocs"), ASSOCS).unwrap();

    let mut out = Vec::new();
    ProcRoot::new(root.path())
        .read_sctp_into(NS, &mut out)
        .unwrap();
    let mut expected = expected_eps();
    expected.extend(expected_assocs());
    assert_eq!(out, expected);
}

#[test]
fn read_sctp_into_without_sctp_tables_is_ok_and_empty() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("net")).unwrap();
    let mut out = Vec::new();
    ProcRoot::new(root.path())
        .read_sctp_into(NS, &mut out)
        .unwrap();
    assert_eq!(out, []);
}

#[test]
fn read_sctp_into_reports_parse_errors_with_the_path() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("net/sctp");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("assocs"), "not a header\n").unwrap();
    let err = ProcRoot::new(root.path())
        .read_sctp_into(NS, &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Parse { what, line: 1, .. } if what.ends_with("net/sctp/assocs")),
        "{err:?}"
    );
}

/// Lines built from the pieces a table line is made of, so mutations reach the field parsers.
fn table_like_line() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        "[0-9a-f]{0,17}",
        "[0-9]{1,21}",
        "\\*?[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,4}",
        "\\*?[0-9a-f:]{0,40}",
        Just("<->".to_owned()),
        Just("\t".to_owned()),
        "[ -~]{0,6}",
        Just(String::new()),
    ];
    prop::collection::vec(token, 0..24).prop_map(|t| t.join(" "))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_sctp_eps(&bytes[..], NS, &mut Vec::new());
        let _ = parse_sctp_assocs(&bytes[..], NS, &mut Vec::new());
    }

    #[test]
    fn arbitrary_lines_after_a_header_never_panic(lines in prop::collection::vec(table_like_line(), 0..6)) {
        let body = lines.join("\n");
        let _ = parse_sctp_eps(format!("{EPS_HEADER}{body}").as_bytes(), NS, &mut Vec::new());
        let mut out = Vec::new();
        if parse_sctp_assocs(format!("{ASSOCS_HEADER}{body}").as_bytes(), NS, &mut out).is_ok() {
            prop_assert!(out.iter().all(|e| e.proto == IpProto::Sctp && e.netns == NS));
        }
    }
}
