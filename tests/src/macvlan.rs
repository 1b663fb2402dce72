//! Two macvlans of one parent in bridge mode, as a container network of that kind: one
//! stays on the host, the other is moved into a [`Netns`]. Packets between them go from
//! macvlan to macvlan inside the driver; the host sees them on its own macvlan and, as they
//! pass, on the parent.
//!
//! Layout for the namespace's slot `n`: parent `pcm<n>p` (a veth, whose peer `pcm<n>q`
//! stays idle: the kernel of the test machines has no dummy device), host macvlan
//! `pcm<n>h` with 10.233.n.1/24, namespace macvlan `pcm<n>c` with 10.233.n.2/24.
//!
//! Invariants: the slot is the namespace's (its `flock`), so concurrent tests never share a
//! subnet or a name; a crashed owner's parent is removed before reuse; Drop removes the
//! parent (its macvlans go with it) and then the namespace.

use std::net::Ipv4Addr;

use crate::netns::{ip, run_ip};
use crate::Netns;

/// The macvlan pair and the namespace holding one of them.
#[derive(Debug)]
pub struct Macvlan {
    pub ns: Netns,
    pub parent: String,
    /// The host's macvlan.
    pub host_if: String,
    pub host_v4: Ipv4Addr,
    /// The namespace's macvlan's address.
    pub guest_v4: Ipv4Addr,
}

impl Macvlan {
    pub fn new() -> Macvlan {
        let ns = Netns::new();
        let n = ns.host_v4.octets()[2];
        let parent = format!("pcm{n}p");
        let _ = run_ip(&["link", "del", &parent]);
        let macvlan = Macvlan {
            parent,
            host_if: format!("pcm{n}h"),
            host_v4: Ipv4Addr::new(10, 233, n, 1),
            guest_v4: Ipv4Addr::new(10, 233, n, 2),
            ns,
        };
        macvlan.build(&format!("pcm{n}q"), &format!("pcm{n}c"));
        macvlan
    }

    fn build(&self, idle_peer: &str, guest_if: &str) {
        let (parent, host_if, name) = (&*self.parent, &*self.host_if, &*self.ns.name);
        ip(&[
            "link", "add", parent, "type", "veth", "peer", "name", idle_peer,
        ]);
        ip(&["link", "set", parent, "up"]);
        ip(&["link", "set", idle_peer, "up"]);
        for (dev, netns) in [(host_if, None), (guest_if, Some(name))] {
            ip(&[
                "link", "add", dev, "link", parent, "type", "macvlan", "mode", "bridge",
            ]);
            if let Some(netns) = netns {
                ip(&["link", "set", dev, "netns", netns]);
            }
        }
        let host_v4 = format!("{}/24", self.host_v4);
        let guest_v4 = format!("{}/24", self.guest_v4);
        ip(&["addr", "add", &host_v4, "dev", host_if]);
        ip(&["link", "set", host_if, "up"]);
        ip(&["-n", name, "addr", "add", &guest_v4, "dev", guest_if]);
        ip(&["-n", name, "link", "set", guest_if, "up"]);
    }
}

impl Default for Macvlan {
    fn default() -> Self {
        Macvlan::new()
    }
}

impl Drop for Macvlan {
    fn drop(&mut self) {
        let _ = run_ip(&["link", "del", &self.parent]);
    }
}
