//! The `/proc/net/{tcp,tcp6,udp,udp6,udplite,udplite6,raw,raw6,icmp,icmp6}` tables.
//!
//! They share one format (`net/ipv4/tcp_ipv4.c`, `net/ipv4/udp.c`, `net/ipv4/ping.c`):
//!
//! ```text
//!   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ...
//!    0: 0100007F:AFC9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 8195 ...
//! ```
//!
//! Addresses are the in-memory 32-bit words printed with `%08X` (so host byte order: decode
//! each 8-digit group to a `u32` and take `to_ne_bytes()`); IPv6 addresses are four such
//! groups. Ports and the state are hex; uid and inode are decimal. Columns after the inode
//! differ between protocols and are ignored.
//!
//! Invariants: parsing never panics, whatever the bytes; one line buffer is reused for the
//! whole table; IPv4-mapped addresses in the v6 tables stay IPv6 (`::ffff:a.b.c.d`), with
//! flow info and scope id 0.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use pidcap_core::{NetNsId, SocketEntry, TcpState};
use pidcap_wire::IpProto;

use crate::error::{Error, Result};
use crate::root::ProcRoot;
use crate::text::{dec, fields, hex};

const LOCAL: usize = 1;
const REMOTE: usize = 2;
const STATE: usize = 3;
const UID: usize = 7;
const INODE: usize = 9;
/// Fields every data line has (through the inode).
const COLUMNS: usize = INODE + 1;
/// Sizes a kernel table read: fewer `read(2)` calls on busy hosts.
const READ_BUFFER: usize = 64 * 1024;

/// A socket table under `<root>/net/` whose entries map to a protocol this project attributes.
/// (`raw`/`raw6` share the format but their "port" is a protocol number; parse them with
/// [`parse_net_table`] and a protocol of your choice.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetTable {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
    UdpLite,
    UdpLite6,
    /// Ping sockets; the local "port" is the echo identifier.
    Icmp,
    Icmp6,
}

impl NetTable {
    /// The tables [`ProcRoot::read_sockets`] reads.
    pub const TCP_UDP: [NetTable; 4] =
        [NetTable::Tcp, NetTable::Tcp6, NetTable::Udp, NetTable::Udp6];

    /// The file name under `<root>/net/`.
    pub fn file_name(self) -> &'static str {
        match self {
            NetTable::Tcp => "tcp",
            NetTable::Tcp6 => "tcp6",
            NetTable::Udp => "udp",
            NetTable::Udp6 => "udp6",
            NetTable::UdpLite => "udplite",
            NetTable::UdpLite6 => "udplite6",
            NetTable::Icmp => "icmp",
            NetTable::Icmp6 => "icmp6",
        }
    }

    /// The protocol of every entry of this table.
    pub fn proto(self) -> IpProto {
        match self {
            NetTable::Tcp | NetTable::Tcp6 => IpProto::Tcp,
            NetTable::Udp | NetTable::Udp6 => IpProto::Udp,
            NetTable::UdpLite | NetTable::UdpLite6 => IpProto::UdpLite,
            NetTable::Icmp => IpProto::Icmp,
            NetTable::Icmp6 => IpProto::Icmpv6,
        }
    }

    /// True for the IPv6 tables.
    pub fn is_v6(self) -> bool {
        matches!(
            self,
            NetTable::Tcp6 | NetTable::Udp6 | NetTable::UdpLite6 | NetTable::Icmp6
        )
    }
}

/// Parses one `/proc/net/*` socket table: a header line, then one socket per line.
///
/// Every entry gets `proto` and `netns`; `v6` selects 32-hex-digit addresses. Empty input
/// yields no entries. A malformed line is an [`Error::Parse`] carrying its line number (the
/// header is line 1).
pub fn parse_net_table(
    reader: impl BufRead,
    proto: IpProto,
    v6: bool,
    netns: NetNsId,
) -> Result<Vec<SocketEntry>> {
    let mut out = Vec::new();
    parse_net_table_into(reader, proto, v6, netns, &mut out)?;
    Ok(out)
}

/// [`parse_net_table`], appending to `out` so a caller can reuse one vector across refreshes.
/// On error, `out` may hold the entries of the lines before the bad one.
pub fn parse_net_table_into(
    reader: impl BufRead,
    proto: IpProto,
    v6: bool,
    netns: NetNsId,
    out: &mut Vec<SocketEntry>,
) -> Result<()> {
    let what = format!("{}{} table", proto.name(), if v6 { "6" } else { "" });
    parse_table(reader, &what, Shape { proto, v6, netns }, out)
}

/// What every entry of one table shares.
#[derive(Clone, Copy)]
struct Shape {
    proto: IpProto,
    v6: bool,
    netns: NetNsId,
}

fn parse_table(
    mut reader: impl BufRead,
    what: &str,
    shape: Shape,
    out: &mut Vec<SocketEntry>,
) -> Result<()> {
    let mut line = Vec::with_capacity(256);
    for number in 1.. {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::from_io(Path::new(what), e))?;
        if n == 0 {
            break;
        }
        let parsed = match number {
            1 => check_header(&line).map(|()| None),
            _ if line.trim_ascii().is_empty() => Ok(None),
            _ => parse_line(&line, shape).map(Some),
        };
        match parsed {
            Ok(entry) => out.extend(entry),
            Err(reason) => return Err(Error::parse(what, number, reason)),
        }
    }
    Ok(())
}

fn check_header(line: &[u8]) -> std::result::Result<(), String> {
    let has_column = line
        .split(u8::is_ascii_whitespace)
        .any(|f| f == b"local_address");
    match has_column {
        true => Ok(()),
        false => Err(format!(
            "expected a header with local_address, got {:?}",
            String::from_utf8_lossy(line.trim_ascii())
        )),
    }
}

/// One data line to a socket. The error is a human-readable reason.
fn parse_line(line: &[u8], shape: Shape) -> std::result::Result<SocketEntry, String> {
    let f = fields::<COLUMNS>(line)
        .ok_or_else(|| format!("expected at least {COLUMNS} columns, got {:?}", lossy(line)))?;
    Ok(SocketEntry {
        netns: shape.netns,
        proto: shape.proto,
        local: endpoint(f[LOCAL], shape.v6).ok_or_else(|| bad("local address", f[LOCAL]))?,
        remote: endpoint(f[REMOTE], shape.v6).ok_or_else(|| bad("remote address", f[REMOTE]))?,
        state: state(f[STATE]).ok_or_else(|| bad("state", f[STATE]))?,
        uid: uid(f[UID]).ok_or_else(|| bad("uid", f[UID]))?,
        inode: dec(f[INODE]).ok_or_else(|| bad("inode", f[INODE]))?,
    })
}

fn bad(column: &str, value: &[u8]) -> String {
    format!("bad {column} {:?}", lossy(value))
}

fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes.trim_ascii())
}

/// `ADDR:PORT`, `ADDR` being 8 (IPv4) or 32 (IPv6) hex digits and `PORT` up to 4.
fn endpoint(field: &[u8], v6: bool) -> Option<SocketAddr> {
    let colon = field.iter().position(|&b| b == b':')?;
    let (addr, port) = (&field[..colon], &field[colon + 1..]);
    let ip = match v6 {
        false => IpAddr::V4(ipv4(addr)?),
        true => IpAddr::V6(ipv6(addr)?),
    };
    let port = u16::try_from(hex(port, 4)?).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// One in-memory 32-bit word, printed by the kernel with `%08X`.
fn word(digits: &[u8]) -> Option<[u8; 4]> {
    if digits.len() != 8 {
        return None;
    }
    Some(u32::try_from(hex(digits, 8)?).ok()?.to_ne_bytes())
}

fn ipv4(digits: &[u8]) -> Option<Ipv4Addr> {
    word(digits).map(Ipv4Addr::from)
}

fn ipv6(digits: &[u8]) -> Option<Ipv6Addr> {
    if digits.len() != 32 {
        return None;
    }
    let mut octets = [0u8; 16];
    for (chunk, group) in octets.chunks_exact_mut(4).zip(digits.chunks_exact(8)) {
        chunk.copy_from_slice(&word(group)?);
    }
    Some(Ipv6Addr::from(octets))
}

fn state(digits: &[u8]) -> Option<TcpState> {
    Some(TcpState::from(u8::try_from(hex(digits, 2)?).ok()?))
}

fn uid(digits: &[u8]) -> Option<u32> {
    u32::try_from(dec(digits)?).ok()
}

impl ProcRoot {
    /// Every TCP and UDP socket (IPv4 and IPv6) of the reading process's network namespace,
    /// from `<root>/net/{tcp,tcp6,udp,udp6}`, labelled `netns`. A missing table (IPv6
    /// disabled) is skipped, not an error.
    pub fn read_sockets(&self, netns: NetNsId) -> Result<Vec<SocketEntry>> {
        let mut out = Vec::new();
        self.read_sockets_into(netns, &mut out)?;
        Ok(out)
    }

    /// [`ProcRoot::read_sockets`], appending to `out`.
    pub fn read_sockets_into(&self, netns: NetNsId, out: &mut Vec<SocketEntry>) -> Result<()> {
        for table in NetTable::TCP_UDP {
            if !self.read_table_into(table, netns, out)? {
                tracing::debug!(table = table.file_name(), "socket table absent, skipped");
            }
        }
        Ok(())
    }

    /// Appends the entries of `<root>/net/<table>` to `out`. Returns `Ok(false)` when the
    /// table does not exist (protocol disabled or not built).
    pub fn read_table_into(
        &self,
        table: NetTable,
        netns: NetNsId,
        out: &mut Vec<SocketEntry>,
    ) -> Result<bool> {
        let path = self.path().join("net").join(table.file_name());
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => match Error::from_io(&path, e) {
                Error::NotFound { .. } => return Ok(false),
                other => return Err(other),
            },
        };
        let reader = BufReader::with_capacity(READ_BUFFER, file);
        let shape = Shape {
            proto: table.proto(),
            v6: table.is_v6(),
            netns,
        };
        parse_table(reader, &path.display().to_string(), shape, out)?;
        Ok(true)
    }

    /// Appends the raw IP sockets of `<root>/net/raw` and `raw6`. The kernel prints a raw
    /// socket's protocol number where other tables have the local port: each entry gets that
    /// protocol as `proto` and port 0 on both ends, which is how packets of protocols without
    /// ports are keyed. Missing tables are skipped.
    pub fn read_raw_into(&self, netns: NetNsId, out: &mut Vec<SocketEntry>) -> Result<()> {
        for (name, v6) in [("raw", false), ("raw6", true)] {
            let path = self.path().join("net").join(name);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) => match Error::from_io(&path, e) {
                    Error::NotFound { .. } => continue,
                    other => return Err(other),
                },
            };
            let from = out.len();
            let shape = Shape {
                proto: IpProto::Unknown(255),
                v6,
                netns,
            };
            let reader = BufReader::with_capacity(READ_BUFFER, file);
            parse_table(reader, &path.display().to_string(), shape, out)?;
            for entry in &mut out[from..] {
                entry.proto = IpProto::from(entry.local.port() as u8);
                entry.local.set_port(0);
                entry.remote.set_port(0);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: NetNsId = NetNsId(4026531840);

    fn one(line: &str, v6: bool) -> std::result::Result<SocketEntry, String> {
        let shape = Shape {
            proto: IpProto::Tcp,
            v6,
            netns: NS,
        };
        parse_line(line.as_bytes(), shape)
    }

    #[test]
    fn words_are_host_order_memory() {
        // 127.0.0.1 is stored as bytes 7F 00 00 01; a little-endian u32 load of that is
        // 0x0100007F, which is what the kernel prints.
        let printed = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]));
        assert_eq!(ipv4(printed.as_bytes()), Some(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn ipv6_is_four_words() {
        let printed: String = Ipv6Addr::LOCALHOST
            .octets()
            .chunks_exact(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        assert_eq!(ipv6(printed.as_bytes()), Some(Ipv6Addr::LOCALHOST));
        assert_eq!(ipv6(&printed.as_bytes()[..31]), None);
    }

    #[test]
    fn short_line_names_the_problem() {
        let err = one("   0: 0100007F:AFC9 00000000:0000 0A", false).unwrap_err();
        assert!(err.contains("at least 10 columns"), "{err}");
    }

    #[test]
    fn v6_address_in_v4_table_is_rejected() {
        let line = "   0: 00000000000000000000000001000000:AFCA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 8198";
        assert!(one(line, false).unwrap_err().contains("local address"));
    }

    #[test]
    fn port_wider_than_16_bits_is_rejected() {
        let line = "   0: 0100007F:1AFC9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 8198";
        assert!(one(line, false).unwrap_err().contains("local address"));
    }

    #[test]
    fn uid_wider_than_32_bits_is_rejected() {
        let line = "   0: 0100007F:AFC9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     4294967296        0 8198";
        assert!(one(line, false).unwrap_err().contains("uid"));
    }

    #[test]
    fn error_from_reader_names_the_table() {
        let err = parse_net_table(&b"garbage\n"[..], IpProto::Udp, true, NS).unwrap_err();
        assert!(
            matches!(&err, Error::Parse { what, line: 1, .. } if what == "udp6 table"),
            "{err:?}"
        );
    }
}
