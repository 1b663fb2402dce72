//! Address translation on the host, as Docker and Podman set it up: a container behind a
//! bridge reaches an "outside" network through MASQUERADE, and a port of the host is
//! forwarded (DNAT) to a port in the container.
//!
//! The outside is a namespace behind a veth pair ([`Netns`]); the container is a member of
//! a [`Bridge`]. Rules live in an nftables table of this test process's own
//! (`pidcap_e2e_<pid>_<slot>`) that matches only the test's addresses, deleted on drop.
//! Forwarding is switched on only on the test's own two interfaces (IPv4 forwarding is
//! decided by the interface a packet comes in on), which go with the test: the host's
//! global setting is never touched, so tests in parallel cannot undo each other's.

use std::process::Command;

use crate::{Bridge, Netns};

/// The rules, the networks they join, and the forwarding setting to put back.
#[derive(Debug)]
pub struct Nat {
    pub bridge: Bridge,
    pub outside: Netns,
    table: String,
}

impl Nat {
    /// A bridge with one container, an outside namespace, MASQUERADE from the bridge's
    /// subnet to the outside, and each `(published, forwarded_to)` port of the host's address
    /// on the outside link forwarded to that port in the container, for connections from the
    /// outside (prerouting) and from the host itself (output), as Docker publishes ports.
    /// The container's default route is the bridge.
    pub fn new(ports: &[(u16, u16)]) -> Nat {
        let bridge = Bridge::new(1);
        let outside = Netns::new();
        let member = &bridge.members[0];
        crate::netns::ip(&[
            "-n",
            &member.name,
            "route",
            "add",
            "default",
            "via",
            &bridge.host_addr.to_string(),
        ]);
        for interface in [&bridge.name, &outside.host_if] {
            let knob = format!("/proc/sys/net/ipv4/conf/{interface}/forwarding");
            std::fs::write(&knob, "1").unwrap_or_else(|e| panic!("{knob}: {e}"));
        }
        let table = format!(
            "pidcap_e2e_{}_{}",
            std::process::id(),
            outside.host_v4.octets()[2]
        );
        let subnet = format!("{}/24", bridge.host_addr);
        let (host, ctr) = (outside.host_v4, member.addr);
        let forwards: String = ports
            .iter()
            .map(|(published, to)| {
                format!("ip daddr {host} tcp dport {published} dnat to {ctr}:{to}\n")
            })
            .collect();
        let rules = format!(
            "table ip {table} {{\n\
               chain post {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 ip saddr {subnet} oifname \"{out}\" masquerade\n\
               }}\n\
               chain pre {{\n\
                 type nat hook prerouting priority dstnat; policy accept;\n\
                 {forwards}\
               }}\n\
               chain out {{\n\
                 type nat hook output priority -100; policy accept;\n\
                 {forwards}\
               }}\n\
             }}\n",
            out = outside.host_if,
        );
        nft(&["-f", "-"], Some(&rules));
        Nat {
            bridge,
            outside,
            table,
        }
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status();
    }
}

fn nft(args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (apt-get install nftables; scripts/deps --test installs it)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write rules");
    }
    let status = child.wait().expect("nft");
    assert!(status.success(), "nft {args:?} failed");
}
