//! The SCTP socket tables `/proc/net/sctp/eps` (endpoints) and `/proc/net/sctp/assocs`
//! (associations), printed by `net/sctp/proc.c`.
//!
//! ```text
//!  ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS
//! 00000000 00000000 2   10  31   5000      0 41296 127.0.0.1 10.0.0.1
//!  ASSOC     SOCK   STY SST ST HBKT ASSOC-ID TX_QUEUE RX_QUEUE UID INODE LPORT RPORT LADDRS <-> RADDRS HBINT INS OUTS ...
//! 00000000 00000000 2   1   3  0       3        0        0       0 41297 5000  40000  *127.0.0.1 <-> *127.0.0.1 \t    30000 ...
//! ```
//!
//! Unlike the TCP/UDP tables, addresses are text: `%pI4` (`127.0.0.1`) or `%pI6`
//! (`0000:0000:0000:0000:0000:0000:0000:0001`; compressed forms are accepted too), each followed
//! by a space and, in `assocs`, prefixed with `*` when it is the primary path. An
//! association's columns after its remote addresses start after a tab.
//!
//! A multi-homed socket becomes one [`SocketEntry`] per path, so a packet on any path matches:
//! one per local address for an endpoint (remote: the unspecified address of that family,
//! port 0), one per (local, remote) pair of the same family for an association (a pair of
//! mixed families is no path a packet can take). A socket listing no address yields nothing.
//! Endpoints are `Listen`, associations `Established`, whatever their SCTP state.
//!
//! Invariants: parsing never panics, whatever the bytes; a malformed line is an
//! [`Error::Parse`] with its line number (the header is line 1) and adds no entry.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use pidcap_core::{NetNsId, SocketEntry, TcpState};
use pidcap_wire::IpProto;

use crate::error::{Error, Result};
use crate::root::ProcRoot;
use crate::text::{dec, fields};

/// `sctp_eps_seq_show`: `ENDPT SOCK STY SST HBKT LPORT UID INODE LADDRS...`.
const EPS_LPORT: usize = 5;
const EPS_UID: usize = 6;
const EPS_INODE: usize = 7;
const EPS_COLUMNS: usize = EPS_INODE + 1;

/// `sctp_assocs_seq_show`: `ASSOC SOCK STY SST ST HBKT ASSOC-ID TX_QUEUE RX_QUEUE UID INODE
/// LPORT RPORT LADDRS... <-> RADDRS...`, then a tab and counters.
const ASSOCS_UID: usize = 9;
const ASSOCS_INODE: usize = 10;
const ASSOCS_LPORT: usize = 11;
const ASSOCS_RPORT: usize = 12;
const ASSOCS_COLUMNS: usize = ASSOCS_RPORT + 1;

/// Separates an association's local addresses from its remote ones.
const ARROW: &[u8] = b"<->";

/// Which of the two tables a reader holds.
#[derive(Clone, Copy)]
enum Table {
    Eps,
    Assocs,
}

impl Table {
    fn file_name(self) -> &'static str {
        match self {
            Table::Eps => "eps",
            Table::Assocs => "assocs",
        }
    }

    /// The first column of the header line.
    fn header(self) -> &'static [u8] {
        match self {
            Table::Eps => b"ENDPT",
            Table::Assocs => b"ASSOC",
        }
    }
}

/// Parses /proc/net/sctp/eps text.
///
/// Appends one `Listen` entry per local address of each endpoint, labelled `netns`. On error,
/// `out` may hold the entries of the lines before the bad one.
pub fn parse_sctp_eps(
    reader: impl BufRead,
    netns: NetNsId,
    out: &mut Vec<SocketEntry>,
) -> Result<()> {
    parse_table(reader, "sctp eps table", Table::Eps, netns, out)
}

/// Parses /proc/net/sctp/assocs text.
///
/// Appends one `Established` entry per (local, remote) address pair of each association,
/// labelled `netns`. On error, `out` may hold the entries of the lines before the bad one.
pub fn parse_sctp_assocs(
    reader: impl BufRead,
    netns: NetNsId,
    out: &mut Vec<SocketEntry>,
) -> Result<()> {
    parse_table(reader, "sctp assocs table", Table::Assocs, netns, out)
}

fn parse_table(
    mut reader: impl BufRead,
    what: &str,
    table: Table,
    netns: NetNsId,
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
        let parsed = match (number, table) {
            (1, _) => check_header(&line, table),
            _ if line.trim_ascii().is_empty() => Ok(()),
            (_, Table::Eps) => parse_endpoint(&line, netns, out),
            (_, Table::Assocs) => parse_association(&line, netns, out),
        };
        parsed.map_err(|reason| Error::parse(what, number, reason))?;
    }
    Ok(())
}

fn check_header(line: &[u8], table: Table) -> std::result::Result<(), String> {
    match fields::<1>(line) {
        Some([first]) if first == table.header() => Ok(()),
        _ => Err(format!(
            "expected a header starting with {}, got {:?}",
            String::from_utf8_lossy(table.header()),
            lossy(line)
        )),
    }
}

/// What every entry of one socket line shares.
struct Socket {
    uid: u32,
    inode: u64,
}

impl Socket {
    fn entry(&self, netns: NetNsId, local: SocketAddr, remote: SocketAddr) -> SocketEntry {
        SocketEntry {
            netns,
            proto: IpProto::Sctp,
            local,
            remote,
            state: TcpState::Established,
            inode: self.inode,
            uid: self.uid,
        }
    }
}

/// One `eps` line: entries for every local address, appended only if the whole line parses.
fn parse_endpoint(
    line: &[u8],
    netns: NetNsId,
    out: &mut Vec<SocketEntry>,
) -> std::result::Result<(), String> {
    let f = fields::<EPS_COLUMNS>(line).ok_or_else(|| columns(EPS_COLUMNS, line))?;
    let socket = socket(f[EPS_UID], f[EPS_INODE])?;
    let port = port(f[EPS_LPORT]).ok_or_else(|| bad("LPORT", f[EPS_LPORT]))?;
    let locals = addresses(tokens(line).skip(EPS_COLUMNS))?;
    out.extend(locals.into_iter().map(|ip| SocketEntry {
        state: TcpState::Listen,
        ..socket.entry(netns, SocketAddr::new(ip, port), unspecified(ip))
    }));
    Ok(())
}

/// One `assocs` line: entries for every same-family address pair, appended only if the whole
/// line parses.
fn parse_association(
    line: &[u8],
    netns: NetNsId,
    out: &mut Vec<SocketEntry>,
) -> std::result::Result<(), String> {
    // The counters after the tab are not needed; dropping them keeps them out of RADDRS.
    let head = line.split(|&b| b == b'\t').next().unwrap_or_default();
    let f = fields::<ASSOCS_COLUMNS>(head).ok_or_else(|| columns(ASSOCS_COLUMNS, line))?;
    let socket = socket(f[ASSOCS_UID], f[ASSOCS_INODE])?;
    let lport = port(f[ASSOCS_LPORT]).ok_or_else(|| bad("LPORT", f[ASSOCS_LPORT]))?;
    let rport = port(f[ASSOCS_RPORT]).ok_or_else(|| bad("RPORT", f[ASSOCS_RPORT]))?;
    let mut rest = tokens(head).skip(ASSOCS_COLUMNS);
    let locals = addresses(rest.by_ref().take_while(|&t| t != ARROW))?;
    let remotes = addresses(rest)?;
    if !tokens(head).any(|t| t == ARROW) {
        return Err(format!("no {:?} between the addresses", "<->"));
    }
    for &l in &locals {
        let same_family = remotes.iter().filter(|r| r.is_ipv4() == l.is_ipv4());
        out.extend(
            same_family.map(|&r| {
                socket.entry(netns, SocketAddr::new(l, lport), SocketAddr::new(r, rport))
            }),
        );
    }
    Ok(())
}

fn socket(uid: &[u8], inode: &[u8]) -> std::result::Result<Socket, String> {
    Ok(Socket {
        uid: dec(uid)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("UID", uid))?,
        inode: dec(inode).ok_or_else(|| bad("INODE", inode))?,
    })
}

fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace)
        .filter(|t| !t.is_empty())
}

/// Address tokens as `%pI4`/`%pI6` print them, a leading `*` (primary path) stripped.
fn addresses<'a>(
    tokens: impl Iterator<Item = &'a [u8]>,
) -> std::result::Result<Vec<IpAddr>, String> {
    tokens
        .map(|t| address(t).ok_or_else(|| bad("address", t)))
        .collect()
}

fn address(token: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(token.strip_prefix(b"*").unwrap_or(token)).ok()?;
    text.parse().ok()
}

/// `%-5d`/`%5d` of a `u16`.
fn port(digits: &[u8]) -> Option<u16> {
    u16::try_from(dec(digits)?).ok()
}

/// The peer of a socket with none: the unspecified address of `local`'s family, port 0.
fn unspecified(local: IpAddr) -> SocketAddr {
    let ip = match local {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

fn columns(expected: usize, line: &[u8]) -> String {
    format!(
        "expected at least {expected} columns, got {:?}",
        lossy(line)
    )
}

fn bad(column: &str, value: &[u8]) -> String {
    format!("bad {column} {:?}", lossy(value))
}

fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes.trim_ascii())
}

impl ProcRoot {
    /// Appends both tables; missing files (no SCTP module) are not an error.
    ///
    /// Reads `<root>/net/sctp/eps` then `<root>/net/sctp/assocs`, labelling entries `netns`.
    pub fn read_sctp_into(&self, netns: NetNsId, out: &mut Vec<SocketEntry>) -> Result<()> {
        for table in [Table::Eps, Table::Assocs] {
            let path = self.path().join("net/sctp").join(table.file_name());
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) => match Error::from_io(&path, e) {
                    Error::NotFound { .. } => {
                        tracing::debug!(path = %path.display(), "sctp table absent, skipped");
                        continue;
                    }
                    other => return Err(other),
                },
            };
            let what = path.display().to_string();
            parse_table(BufReader::new(file), &what, table, netns, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pi6_full_form_parses() {
        // %pI6 prints all eight groups with leading zeros.
        let ip = address(b"*0000:0000:0000:0000:0000:0000:0000:0001");
        assert_eq!(ip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn bad_tokens_are_rejected() {
        assert_eq!(address(b"**127.0.0.1"), None);
        assert_eq!(address(b"\xff"), None);
        assert_eq!(port(b"65536"), None);
        assert_eq!(port(b"-1"), None);
    }
}
