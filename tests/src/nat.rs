//! Address translation on the host, as Docker and Podman set it up: a container behind a
//! bridge reaches an "outside" network through MASQUERADE, and a port of the host is
//! forwarded (DNAT) to a port in the container; for IPv4 ([`Nat::new`]) or for IPv6
//! ([`Nat::new_v6`], on a dual-stack bridge, the outside's fd00:231:n::/64).
//!
//! The outside is a namespace behind a veth pair ([`Netns`]); the container is a member of
//! a [`Bridge`]. Rules live in an nftables table of this test process's own
//! (`pidcap_e2e_<pid>_<slot>`, family `ip` or `ip6`) that matches only the test's addresses,
//! deleted on drop; tables a killed test process left are deleted before new ones are made.
//!
//! Forwarding: IPv4 forwarding is decided by the interface a packet comes in on, so it is
//! switched on only on the test's own two interfaces, which go with the test: the host's
//! global setting is never touched, so tests in parallel cannot undo each other's. IPv6 is
//! different: the per-interface `forwarding` only makes the interface behave as a router's
//! (no RAs taken, the router flag in NAs); the kernel forwards nothing while
//! `conf/all/forwarding` is 0 (checked: with only the test's interfaces' `forwarding` set,
//! nothing crosses). Since Linux 6.17 `conf/<if>/force_forwarding` forwards what comes in on
//! that interface whatever `all` says; where it exists, it is set on the test's two
//! interfaces and, as for IPv4, nothing global is touched. On older kernels (Debian 12's 6.1)
//! [`Nat::new_v6`] must set `conf/all/forwarding`, which turns on IPv6 forwarding between
//! all the host's interfaces (and `forwarding` on each of them, so they stop taking router
//! advertisements unless `accept_ra` is 2) while any IPv6 NAT test runs. That is shared
//! between test processes: each holds a shared `flock` on
//! `/run/pidcap-e2e/ipv6-forwarding.users`; the first saves `all`, `default` and every
//! interface's value to `/run/pidcap-e2e/ipv6-forwarding.saved` and the last puts them back
//! and removes it (both under `/run/pidcap-e2e/ipv6-forwarding.lock`), so parallel tests
//! never switch it off under each other. A test process killed outright cannot restore; the
//! saved file survives it and the next last user restores what it holds.

use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Bridge, Netns};

/// The rules, the networks they join, and the forwarding setting to put back.
#[derive(Debug)]
pub struct Nat {
    pub bridge: Bridge,
    pub outside: Netns,
    v6: bool,
    table: String,
    /// Dropped after the table is deleted (fields drop after [`Nat`]'s own `drop`).
    _forwarding: Option<Ipv6Forwarding>,
}

impl Nat {
    /// A bridge with one container, an outside namespace, MASQUERADE from the bridge's
    /// subnet to the outside, and each `(published, forwarded_to)` port of the host's address
    /// on the outside link forwarded to that port in the container, for connections from the
    /// outside (prerouting) and from the host itself (output), as Docker publishes ports.
    /// The container's default route is the bridge.
    pub fn new(ports: &[(u16, u16)]) -> Nat {
        Nat::build(false, ports)
    }

    /// [`Nat::new`] for IPv6: the same topology on a dual-stack bridge, the rules in an `ip6`
    /// table matching the IPv6 addresses ([`Nat::container_ip`], [`Nat::host_ip`],
    /// [`Nat::outside_ip`]), the container's IPv6 default route the bridge too. No IPv4 rules
    /// are made.
    pub fn new_v6(ports: &[(u16, u16)]) -> Nat {
        Nat::build(true, ports)
    }

    fn build(v6: bool, ports: &[(u16, u16)]) -> Nat {
        let bridge = match v6 {
            true => Bridge::dual_stack(1),
            false => Bridge::new(1),
        };
        let outside = Netns::new();
        let member = &bridge.members[0];
        let gateways = [
            Some(IpAddr::V4(bridge.host_addr)),
            bridge.host_v6.map(IpAddr::V6),
        ];
        for via in gateways.into_iter().flatten() {
            let (flag, via) = (if via.is_ipv6() { "-6" } else { "-4" }, via.to_string());
            crate::netns::ip(&[
                "-n",
                &member.name,
                flag,
                "route",
                "add",
                "default",
                "via",
                &via,
            ]);
        }
        let interfaces = [bridge.name.as_str(), outside.host_if.as_str()];
        let forwarding = if v6 {
            Some(Ipv6Forwarding::enable(&interfaces))
        } else {
            for interface in interfaces {
                let knob = format!("/proc/sys/net/ipv4/conf/{interface}/forwarding");
                std::fs::write(&knob, "1").unwrap_or_else(|e| panic!("{knob}: {e}"));
            }
            None
        };
        remove_leftover_tables();
        let table = format!(
            "pidcap_e2e_{}_{}",
            std::process::id(),
            outside.host_v4.octets()[2]
        );
        let nat = Nat {
            bridge,
            outside,
            v6,
            table,
            _forwarding: forwarding,
        };
        let (subnet, prefix) = match v6 {
            true => (nat.bridge.host_v6.expect("dual-stack bridge").into(), 64),
            false => (IpAddr::V4(nat.bridge.host_addr), 24),
        };
        let (host, ctr) = (nat.host_ip(), nat.container_ip());
        let ctr = match ctr {
            IpAddr::V6(ctr) => format!("[{ctr}]"),
            IpAddr::V4(ctr) => ctr.to_string(),
        };
        let family = nat.family();
        let forwards: String = ports
            .iter()
            .map(|(published, to)| {
                format!("{family} daddr {host} tcp dport {published} dnat to {ctr}:{to}\n")
            })
            .collect();
        let rules = format!(
            "table {family} {table} {{\n\
               chain post {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 {family} saddr {subnet}/{prefix} oifname \"{out}\" masquerade\n\
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
            table = nat.table,
            out = nat.outside.host_if,
        );
        // `nft -f` is atomic: if it fails, there is no table for `drop` to delete.
        nft(&["-f", "-"], Some(&rules));
        nat
    }

    /// The container's address in the translated family.
    pub fn container_ip(&self) -> IpAddr {
        let member = &self.bridge.members[0];
        match self.v6 {
            true => member.addr_v6.expect("dual-stack bridge").into(),
            false => member.addr.into(),
        }
    }

    /// The host's address on the outside link: where ports are published, and what the
    /// container's packets are masqueraded as.
    pub fn host_ip(&self) -> IpAddr {
        match self.v6 {
            true => self.outside.host_v6.into(),
            false => self.outside.host_v4.into(),
        }
    }

    /// The outside namespace's address.
    pub fn outside_ip(&self) -> IpAddr {
        self.outside.ns_ip(self.v6)
    }

    fn family(&self) -> &'static str {
        if self.v6 {
            "ip6"
        } else {
            "ip"
        }
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        // Best effort: there is no table if `nft -f` failed.
        let _ = Command::new("nft")
            .args(["delete", "table", self.family(), &self.table])
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes the `pidcap_e2e_<pid>_<slot>` tables (any family) whose process is gone: a test
/// killed outright leaves its rules, which match addresses of slots others now own.
fn remove_leftover_tables() {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let (Some("table"), Some(family), Some(name)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("pidcap_e2e_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("nft")
                .args(["delete", "table", family, name])
                .status();
        }
    }
}

const IPV6_CONF: &str = "/proc/sys/net/ipv6/conf";
const FORWARDING_USERS: &str = "/run/pidcap-e2e/ipv6-forwarding.users";
const FORWARDING_LOCK: &str = "/run/pidcap-e2e/ipv6-forwarding.lock";
const FORWARDING_SAVED: &str = "/run/pidcap-e2e/ipv6-forwarding.saved";
/// How long a test may wait for another to finish switching IPv6 forwarding.
const FORWARDING_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// IPv6 forwarding through the test's interfaces, while this lives (see the module doc).
#[derive(Debug)]
enum Ipv6Forwarding {
    /// `force_forwarding` on the test's own interfaces: nothing to put back.
    PerInterface,
    /// `conf/all/forwarding`, with a shared lock on [`FORWARDING_USERS`].
    Global { users: File },
}

impl Ipv6Forwarding {
    fn enable(interfaces: &[&str]) -> Ipv6Forwarding {
        let forced = |interface: &str| format!("{IPV6_CONF}/{interface}/force_forwarding");
        if interfaces.iter().all(|i| Path::new(&forced(i)).exists()) {
            for interface in interfaces {
                write_knob(&forced(interface), "1");
            }
            return Ipv6Forwarding::PerInterface;
        }
        let _lock = lock_bounded(FORWARDING_LOCK);
        let users = open_lock_file(FORWARDING_USERS);
        if flock(&users, libc::LOCK_EX | libc::LOCK_NB) {
            // The first user. A saved file already there was left by a user killed before
            // it could restore: it, not the current state, is the host's own.
            if !Path::new(FORWARDING_SAVED).exists() {
                std::fs::write(FORWARDING_SAVED, snapshot())
                    .unwrap_or_else(|e| panic!("{FORWARDING_SAVED}: {e}"));
            }
        }
        // From exclusive (first user) or from nothing: no one holds it exclusively outside
        // the lock we hold, so this cannot fail.
        assert!(
            flock(&users, libc::LOCK_SH | libc::LOCK_NB),
            "shared lock on {FORWARDING_USERS}: {}",
            std::io::Error::last_os_error()
        );
        let forwarding = Ipv6Forwarding::Global { users };
        write_knob(&format!("{IPV6_CONF}/all/forwarding"), "1");
        forwarding
    }
}

impl Drop for Ipv6Forwarding {
    fn drop(&mut self) {
        let Ipv6Forwarding::Global { users } = self else {
            return;
        };
        let _lock = lock_bounded(FORWARDING_LOCK);
        // Converting to exclusive first drops our shared lock: it succeeds only if no other
        // test holds one, that is, if we are the last user.
        if flock(users, libc::LOCK_EX | libc::LOCK_NB) {
            if let Ok(saved) = std::fs::read_to_string(FORWARDING_SAVED) {
                restore(&saved);
                let _ = std::fs::remove_file(FORWARDING_SAVED);
            }
        }
        let _ = flock(users, libc::LOCK_UN);
    }
}

/// `forwarding` of `all`, `default` and every interface, one `name value` a line, `all`
/// first and `default` second (the order [`restore`] needs).
fn snapshot() -> String {
    let mut names: Vec<String> = std::fs::read_dir(IPV6_CONF)
        .unwrap_or_else(|e| panic!("{IPV6_CONF}: {e}"))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name != "all" && name != "default")
        .collect();
    names.sort();
    ["all".to_owned(), "default".to_owned()]
        .into_iter()
        .chain(names)
        .filter_map(|name| {
            let value = std::fs::read_to_string(format!("{IPV6_CONF}/{name}/forwarding")).ok()?;
            Some(format!("{name} {}\n", value.trim()))
        })
        .collect()
}

/// Puts back a [`snapshot`]: `all` first (writing it sets `default` and every interface),
/// then each value that now differs, skipping interfaces that are gone.
fn restore(saved: &str) {
    for line in saved.lines() {
        let Some((name, value)) = line.split_once(' ') else {
            continue;
        };
        let knob = format!("{IPV6_CONF}/{name}/forwarding");
        match std::fs::read_to_string(&knob) {
            Ok(now) if now.trim() != value => {
                let _ = std::fs::write(&knob, value);
            }
            _ => {}
        }
    }
}

fn write_knob(knob: &str, value: &str) {
    std::fs::write(knob, value).unwrap_or_else(|e| panic!("{knob}: {e}"));
}

fn open_lock_file(path: &str) -> File {
    std::fs::create_dir_all("/run/pidcap-e2e").expect("create lock dir");
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `flock(file, operation)`; whether it succeeded.
fn flock(file: &File, operation: libc::c_int) -> bool {
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), operation) == 0 }
}

/// An exclusive `flock` on `path`, held until the file is dropped; polls, bounded.
fn lock_bounded(path: &str) -> File {
    let file = open_lock_file(path);
    let deadline = Instant::now() + FORWARDING_LOCK_TIMEOUT;
    while !flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        assert!(
            Instant::now() < deadline,
            "{path} still locked after {FORWARDING_LOCK_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    file
}

fn nft(args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
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
