//! Where the socket list comes from: netlink sock_diag, or `/proc/net` text when netlink is
//! unavailable (no `inet_diag` module, a seccomp filter, an old kernel). Both fill the same
//! `SocketEntry` values (the sockets crate tests them against each other).

use std::net::SocketAddr;

use pidcap_core::{NetNsId, SocketEntry};
use pidcap_sockets::{NetTable, ProcRoot, SockDiag};
use pidcap_wire::IpProto;
use tracing::{info, warn};

#[derive(Debug)]
pub struct SocketSource {
    diag: Option<SockDiag>,
    proc: ProcRoot,
}

impl SocketSource {
    /// Prefers netlink; says once which source is used.
    pub fn open(proc: ProcRoot) -> SocketSource {
        let diag = match SockDiag::open() {
            Ok(diag) => Some(diag),
            Err(error) => {
                warn!(error = %error, "netlink sock_diag unavailable; reading /proc/net instead");
                None
            }
        };
        let source = SocketSource { diag, proc };
        info!(source = source.kind(), "socket tables");
        source
    }

    /// `"netlink"` or `"procfs"`.
    pub fn kind(&self) -> &'static str {
        if self.diag.is_some() {
            "netlink"
        } else {
            "procfs"
        }
    }

    /// Replaces `out` with every TCP, UDP, UDP-Lite, SCTP, ping (ICMP/ICMPv6) and raw socket
    /// of this namespace. A netlink failure switches to `/proc/net` for good (warned once).
    pub fn read_into(&mut self, netns: NetNsId, out: &mut Vec<SocketEntry>) -> anyhow::Result<()> {
        self.read_tcp_udp(netns, out)?;
        // Small tables, empty on most hosts: always read as text.
        for table in [
            NetTable::UdpLite,
            NetTable::UdpLite6,
            NetTable::Icmp,
            NetTable::Icmp6,
        ] {
            let from = out.len();
            self.proc.read_table_into(table, netns, out)?;
            if matches!(table, NetTable::Icmp | NetTable::Icmp6) {
                // A ping socket shows port 0 until its first send assigns its identifier;
                // keyed so, it would claim the kernel's side of every echo.
                retain_from(out, from, |s| s.local.port() != 0);
            }
        }
        self.proc.read_raw_into(netns, out)?;
        self.proc.read_sctp_into(netns, out)?;
        Ok(())
    }

    /// The socket that would receive a packet from `remote` to `local` (netlink only):
    /// `None` when the kernel has none, or when netlink is unavailable.
    pub fn find(
        &mut self,
        proto: IpProto,
        local: SocketAddr,
        remote: SocketAddr,
        netns: NetNsId,
    ) -> anyhow::Result<Option<SocketEntry>> {
        if !matches!(proto, IpProto::Tcp | IpProto::Udp | IpProto::UdpLite) {
            return Ok(None);
        }
        match self.diag.as_mut() {
            Some(diag) => Ok(diag.find(proto, local, remote, netns)?),
            None => Ok(None),
        }
    }

    fn read_tcp_udp(&mut self, netns: NetNsId, out: &mut Vec<SocketEntry>) -> anyhow::Result<()> {
        out.clear();
        if let Some(diag) = self.diag.as_mut() {
            match diag.read_sockets_into(netns, out) {
                Ok(()) => return Ok(()),
                Err(error) => {
                    warn!(error = %error, "netlink sock_diag failed; reading /proc/net from now on");
                    self.diag = None;
                    out.clear();
                }
            }
        }
        self.proc.read_sockets_into(netns, out)?;
        Ok(())
    }
}

/// Keeps, among `out[from..]`, only the entries `keep` accepts.
fn retain_from(out: &mut Vec<SocketEntry>, from: usize, keep: impl Fn(&SocketEntry) -> bool) {
    let mut i = from;
    while i < out.len() {
        if keep(&out[i]) {
            i += 1;
        } else {
            out.swap_remove(i);
        }
    }
}
