//! The addresses of another network namespace, read as text through one of its processes:
//! `<root>/net/fib_trie` (IPv4: the `/32 host LOCAL` leaves) and `<root>/net/if_inet6`
//! (IPv6: every line). With `<root>` = `/proc/<pid>` these describe `pid`'s namespace, with
//! no `setns(2)` (which needs CAP_SYS_ADMIN).
//!
//! `fib_trie` (`net/ipv4/fib_trie.c`, `fib_trie_seq_show`) prints each table as a tree; a
//! leaf is a `|-- a.b.c.d` line followed by one line per route alias, such as
//! `/32 host LOCAL` for an address of this namespace:
//!
//! ```text
//!      +-- 192.0.2.0/24 2 0 2
//!         |-- 192.0.2.2
//!            /32 host LOCAL
//! ```
//!
//! `if_inet6` (`net/ipv6/addrconf.c`, `if6_seq_show`): the address as 32 hex digits, then
//! ifindex, prefix length, scope and flags in hex, then the interface name.
//!
//! Invariants: parsing never panics, whatever the bytes; a line that does not parse is
//! skipped; each address is listed once, in the order first seen. A missing `if_inet6`
//! (IPv6 disabled) gives no IPv6 addresses, not an error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{Error, Result};
use crate::root::{read_file, ProcRoot};

/// The IPv4 addresses of the namespace, from `fib_trie` text.
pub fn parse_fib_trie_local(text: &[u8]) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.split(|&b| b == b'\n') {
        let line = trim(line);
        if let Some(rest) = line.strip_prefix(b"|-- ") {
            leaf = std::str::from_utf8(rest).ok().and_then(|s| s.parse().ok());
        } else if line.starts_with(b"+-- ") {
            leaf = None;
        } else if line.starts_with(b"/32 host LOCAL") {
            if let Some(ip) = leaf {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// The IPv6 addresses of the namespace, from `if_inet6` text.
pub fn parse_if_inet6(text: &[u8]) -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(hex) = trim(line).split(|&b| b == b' ').next() else {
            continue;
        };
        if let Some(ip) = ipv6_hex(hex) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

fn ipv6_hex(hex: &[u8]) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    let text = std::str::from_utf8(hex).ok()?;
    u128::from_str_radix(text, 16).ok().map(Ipv6Addr::from)
}

fn trim(line: &[u8]) -> &[u8] {
    let start = line.iter().position(|b| !b.is_ascii_whitespace());
    let end = line.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(s), Some(e)) => &line[s..=e],
        _ => &[],
    }
}

impl ProcRoot {
    /// A root whose `net/` is `pid`'s network namespace (`<root>/<pid>`): its socket tables
    /// and addresses read as that namespace's.
    pub fn of_process(&self, pid: u32) -> ProcRoot {
        ProcRoot::new(self.pid_dir(pid))
    }

    /// The IPv4 and IPv6 addresses of the namespace `<root>/net` shows (see the module doc).
    /// [`Error::NotFound`] when `fib_trie` is missing (the process exited).
    pub fn namespace_addresses(&self) -> Result<Vec<IpAddr>> {
        let net = self.path().join("net");
        let v4 = read_file(&net.join("fib_trie"))?;
        let v6 = match read_file(&net.join("if_inet6")) {
            Ok(text) => text,
            Err(Error::NotFound { .. }) => Vec::new(),
            Err(other) => return Err(other),
        };
        let v4 = parse_fib_trie_local(&v4).into_iter().map(IpAddr::V4);
        let v6 = parse_if_inet6(&v6).into_iter().map(IpAddr::V6);
        Ok(v4.chain(v6).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIB_TRIE: &[u8] = b"Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.1
              /32 host LOCAL
           |-- 192.0.2.2
              /32 host LOCAL
           |-- 10.9.0.1
              /32 link UNICAST
              /32 host LOCAL
";

    #[test]
    fn fib_trie_gives_each_local_host_address_once() {
        let v4: Vec<String> = parse_fib_trie_local(FIB_TRIE)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(v4, ["127.0.0.1", "192.0.2.2", "10.9.0.1"]);
    }

    #[test]
    fn if_inet6_gives_every_address() {
        let text = b"fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
nonsense
";
        let v6: Vec<String> = parse_if_inet6(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(v6, ["fd00::2", "fe80::fc:ff:fe00:1", "::1"]);
    }

    #[test]
    fn garbage_gives_nothing_and_never_panics() {
        for text in [
            &b""[..],
            b"|-- ",
            b"/32 host LOCAL",
            b"|-- 300.1.1.1\n/32 host LOCAL",
        ] {
            assert!(parse_fib_trie_local(text).is_empty());
            assert!(parse_if_inet6(text).is_empty());
        }
    }
}
