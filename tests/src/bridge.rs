//! A Linux bridge with network namespaces attached, as a container runtime builds them
//! (Docker's `docker0`, Podman's `podman0`): each namespace has a veth whose host end is a
//! port of the bridge, and the host has an address on the bridge itself.
//!
//! Layout for slot `n` (1..=250): bridge `pcb<n>` with 10.232.n.1/24; namespace `i`
//! (0-based) is `pidcap-e2e-br-<pid>-<n>-<i>` with `pcb<n>p<i>` (host end, a bridge port) and
//! 10.232.n.(i+2)/24 on its side, lo up.
//!
//! Invariants: a slot is owned through an exclusive `flock` on `/run/pidcap-e2e/bridge-<n>`;
//! its leftovers are removed before reuse. Drop deletes the namespaces (their veths go with
//! them) and the bridge.

use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;

use crate::netns::{claim, ip, run_ip};

/// One namespace attached to the bridge.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    /// The veth end on the host: a port of the bridge.
    pub port: String,
    pub addr: Ipv4Addr,
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
    pub members: Vec<Member>,
    _slot: File,
}

impl Bridge {
    /// A bridge with `count` namespaces attached, every link up.
    pub fn new(count: usize) -> Bridge {
        crate::require_root();
        assert!(count <= 200, "at most 200 members");
        let (n, slot) = claim("bridge");
        remove_leftovers(n);
        let name = format!("pcb{n}");
        ip(&["link", "add", &name, "type", "bridge"]);
        let bridge = Bridge {
            host_addr: Ipv4Addr::new(10, 232, n, 1),
            members: (0..count)
                .map(|i| Member {
                    name: format!("pidcap-e2e-br-{}-{n}-{i}", std::process::id()),
                    port: format!("pcb{n}p{i}"),
                    addr: Ipv4Addr::new(10, 232, n, i as u8 + 2),
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
