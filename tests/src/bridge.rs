//! A Linux bridge with network namespaces attached, as a container runtime builds them
//! (Docker's `docker0`, Podman's `podman0`): each namespace has a veth whose host end is a
//! port of the bridge, and the host has an address on the bridge itself.
//!
//! Layout for slot `n` (1..=250): bridge `pcb<n>` with 10.232.n.1/24; namespace `i`
//! (0-based) is `pidcap-e2e-br-<pid>-<n>-<i>` with `pcb<n>p<i>` (host end, a bridge port) and
//! 10.232.n.(i+2)/24 on its side, lo up. A dual-stack bridge ([`Bridge::dual_stack`]) also
//! has fd00:232:n::1/64, and member `i` fd00:232:n::(i+2)/64, both added with `nodad` so
//! they are usable at once; the bridge's link-local address skips duplicate address detection
//! too (`accept_dad` 0): the host solicits the neighbour of a packet it forwards into the
//! bridge from that address, and sends no solicitation while it is tentative; with detection,
//! what it forwarded there in the bridge's first second or so was dropped (a connection's
//! first SYN, which cost it a one-second retransmission).
//!
//! Invariants: a slot is owned through an exclusive `flock` on `/run/pidcap-e2e/bridge-<n>`;
//! its leftovers are removed before reuse. Drop deletes the namespaces (their veths go with
//! them) and the bridge.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use crate::netns::{claim, ip, run_ip};

/// One namespace attached to the bridge.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    /// The veth end on the host: a port of the bridge.
    pub port: String,
    pub addr: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack bridge only.
    pub addr_v6: Option<Ipv6Addr>,
}

impl Member {
    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

/// A bridge and its members.
#[derive(Debug)]
pub struct Bridge {
    pub name: String,
    /// The host's address on the bridge.
    pub host_addr: Ipv4Addr,
    /// The host's IPv6 address on the bridge, on a dual-stack bridge only.
    pub host_v6: Option<Ipv6Addr>,
    pub members: Vec<Member>,
    _slot: File,
}

impl Bridge {
    /// A bridge with `count` namespaces attached, every link up, IPv4 only.
    pub fn new(count: usize) -> Bridge {
        Bridge::build(count, false)
    }

    /// [`Bridge::new`] with IPv6 addresses too, on the bridge and on every member.
    pub fn dual_stack(count: usize) -> Bridge {
        Bridge::build(count, true)
    }

    fn build(count: usize, v6: bool) -> Bridge {
        crate::require_root();
        assert!(count <= 200, "at most 200 members");
        let (n, slot) = claim("bridge");
        remove_leftovers(n);
        let name = format!("pcb{n}");
        let v6_addr =
            |host: usize| v6.then(|| format!("fd00:232:{n}::{host:x}").parse().expect("v6"));
        ip(&["link", "add", &name, "type", "bridge"]);
        let bridge = Bridge {
            host_addr: Ipv4Addr::new(10, 232, n, 1),
            host_v6: v6_addr(1),
            members: (0..count)
                .map(|i| Member {
                    name: format!("pidcap-e2e-br-{}-{n}-{i}", std::process::id()),
                    port: format!("pcb{n}p{i}"),
                    addr: Ipv4Addr::new(10, 232, n, i as u8 + 2),
                    addr_v6: v6_addr(i + 2),
                })
                .collect(),
            name,
            _slot: slot,
        };
        ip(&[
            "addr",
            "add",
            &format!("{}/24", bridge.host_addr),
            "dev",
            &bridge.name,
        ]);
        if let Some(host_v6) = bridge.host_v6 {
            let knob = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", bridge.name);
            std::fs::write(&knob, "0").unwrap_or_else(|e| panic!("{knob}: {e}"));
            let addr = format!("{host_v6}/64");
            ip(&["-6", "addr", "add", &addr, "dev", &bridge.name, "nodad"]);
        }
        ip(&["link", "set", &bridge.name, "up"]);
        for m in &bridge.members {
            ip(&["netns", "add", &m.name]);
            ip(&[
                "link", "add", &m.port, "type", "veth", "peer", "name", "eth0", "netns", &m.name,
            ]);
            ip(&["link", "set", &m.port, "master", &bridge.name]);
            ip(&["link", "set", &m.port, "up"]);
            ip(&[
                "-n",
                &m.name,
                "addr",
                "add",
                &format!("{}/24", m.addr),
                "dev",
                "eth0",
            ]);
            if let Some(addr_v6) = m.addr_v6 {
                let addr = format!("{addr_v6}/64");
                ip(&[
                    "-n", &m.name, "-6", "addr", "add", &addr, "dev", "eth0", "nodad",
                ]);
            }
            ip(&["-n", &m.name, "link", "set", "eth0", "up"]);
            ip(&["-n", &m.name, "link", "set", "lo", "up"]);
        }
        bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for m in &self.members {
            let _ = run_ip(&["netns", "del", &m.name]);
            let _ = run_ip(&["link", "del", &m.port]);
        }
        let _ = run_ip(&["link", "del", &self.name]);
    }
}

/// Removes what a crashed earlier owner of slot `n` may have left.
fn remove_leftovers(n: u8) {
    let _ = run_ip(&["link", "del", &format!("pcb{n}")]);
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let infix = format!("-{n}-");
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with("pidcap-e2e-br-") && name.contains(&infix) {
            let _ = run_ip(&["netns", "del", name]);
        }
    }
}
