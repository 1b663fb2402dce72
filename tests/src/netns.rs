//! A network namespace with a veth pair into it, for traffic that leaves the host's stack.
//!
//! Layout for slot `n` (1..=250): namespace `pidcap-e2e-<pid>-<n>`, host side `pce<n>h` with
//! 10.231.n.1/24 and fd00:231:n::1/64, namespace side `pce<n>n` with .2 and ::2, lo up.
//!
//! Invariants: a slot is owned through an exclusive `flock` on `/run/pidcap-e2e/slot-<n>`,
//! so concurrent test processes never share a subnet and a crashed test's slot is free again
//! (its leftovers are removed before reuse). Drop deletes the namespace, which removes the
//! veth pair.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;

const LOCK_DIR: &str = "/run/pidcap-e2e";

/// A namespace owned by this test process.
#[derive(Debug)]
pub struct Netns {
    /// The namespace's name (for `ip netns exec`).
    pub name: String,
    /// The veth end on the host.
    pub host_if: String,
    /// The veth end inside the namespace.
    pub ns_if: String,
    pub host_v4: Ipv4Addr,
    pub ns_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub ns_v6: Ipv6Addr,
    _slot: File,
}

impl Netns {
    /// Creates the namespace and veth pair, addressed and up.
    pub fn new() -> Netns {
        crate::require_root();
        let (n, slot) = claim_slot();
        remove_leftovers(n);
        let netns = Netns {
            name: format!("pidcap-e2e-{}-{n}", std::process::id()),
            host_if: format!("pce{n}h"),
            ns_if: format!("pce{n}n"),
            host_v4: Ipv4Addr::new(10, 231, n, 1),
            ns_v4: Ipv4Addr::new(10, 231, n, 2),
            host_v6: format!("fd00:231:{n}::1").parse().expect("v6"),
            ns_v6: format!("fd00:231:{n}::2").parse().expect("v6"),
            _slot: slot,
        };
        netns.build();
        netns
    }

    fn build(&self) {
        ip(&["netns", "add", &self.name]);
        self.add_link();
    }

    /// Deletes the veth pair (both ends go), as when a container stops.
    pub fn delete_link(&self) {
        ip(&["link", "del", &self.host_if]);
    }

    /// Creates the veth pair again, with the same names and addresses, up.
    pub fn add_link(&self) {
        let (name, host, ns) = (
            self.name.as_str(),
            self.host_if.as_str(),
            self.ns_if.as_str(),
        );
        let host_v4 = format!("{}/24", self.host_v4);
        let ns_v4 = format!("{}/24", self.ns_v4);
        let host_v6 = format!("{}/64", self.host_v6);
        let ns_v6 = format!("{}/64", self.ns_v6);
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", ns, "netns", name,
        ]);
        ip(&["addr", "add", &host_v4, "dev", host]);
        ip(&["-6", "addr", "add", &host_v6, "dev", host, "nodad"]);
        ip(&["link", "set", host, "up"]);
        ip(&["-n", name, "addr", "add", &ns_v4, "dev", ns]);
        ip(&["-n", name, "-6", "addr", "add", &ns_v6, "dev", ns, "nodad"]);
        ip(&["-n", name, "link", "set", ns, "up"]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// The namespace side's address of the given family.
    pub fn ns_ip(&self, v6: bool) -> IpAddr {
        match v6 {
            true => IpAddr::V6(self.ns_v6),
            false => IpAddr::V4(self.ns_v4),
        }
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_ip(&["netns", "del", &self.name]);
        // The kernel removes the veth with the namespace, asynchronously; do it now so the
        // next owner of this slot finds a clean host.
        let _ = run_ip(&["link", "del", &self.host_if]);
    }
}

fn claim_slot() -> (u8, File) {
    claim("slot")
}

/// Claims the first free `<kind>-<n>` lock (n in 1..=250): an exclusive `flock`, released
/// when the file is dropped or the process dies.
pub(crate) fn claim(kind: &str) -> (u8, File) {
    std::fs::create_dir_all(LOCK_DIR).expect("create lock dir");
    for n in 1..=250_u8 {
        let file = File::create(format!("{LOCK_DIR}/{kind}-{n}")).expect("create slot file");
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return (n, file);
        }
    }
    panic!("all 250 {kind} slots in {LOCK_DIR} are taken");
}

/// Removes what a crashed earlier owner of slot `n` may have left.
fn remove_leftovers(n: u8) {
    let _ = run_ip(&["link", "del", &format!("pce{n}h")]);
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let suffix = format!("-{n}");
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with("pidcap-e2e-") && name.ends_with(&suffix) {
            let _ = run_ip(&["netns", "del", name]);
        }
    }
}

pub(crate) fn run_ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"))
}

pub(crate) fn ip(args: &[&str]) {
    let out = run_ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
