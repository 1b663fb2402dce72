//! Where the socket list comes from: netlink sock_diag, or `/proc/net` text when netlink is
//! unavailable (no `inet_diag` module, a seccomp filter, an old kernel). Both fill the same
//! `SocketEntry` values (the sockets crate tests them against each other).
//!
//! A netlink failure falls back to `/proc/net` for that pass only: netlink is tried again
//! after a backoff ([`NetlinkRetry`]: 1 s, doubling up to 5 min), through a fresh socket, so
//! one transient error (ENOBUFS under load, a signal) does not cost every later pass the
//! slower text tables for good.

use std::net::SocketAddr;

use pidcap_core::{NetNsId, SocketEntry};
use pidcap_sockets::{NetTable, ProcRoot, SockDiag};
use pidcap_wire::IpProto;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// First wait before netlink is tried again after a failure.
pub const NETLINK_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two netlink tries.
pub const NETLINK_RETRY_MAX: Duration = Duration::from_secs(300);

/// When to try netlink again after failures: a pure policy, time as a parameter.
///
/// Invariant: while failing, the wait doubles per failure from [`NETLINK_RETRY_FIRST`] up to
/// [`NETLINK_RETRY_MAX`]; one success resets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetlinkRetry {
    /// `None` while netlink works.
    retry_at: Option<Instant>,
    wait: Duration,
}

impl NetlinkRetry {
    /// Whether netlink may be used at `now`.
    pub fn may_try(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    /// A failure at `now`; returns the wait before the next try.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.wait = if self.retry_at.is_none() {
            NETLINK_RETRY_FIRST
        } else {
            (self.wait * 2).min(NETLINK_RETRY_MAX)
        };
        self.retry_at = Some(now + self.wait);
        self.wait
    }

    /// A success; returns whether netlink had been failing.
    pub fn succeeded(&mut self) -> bool {
        let was_failing = self.retry_at.is_some();
        *self = NetlinkRetry::default();
        was_failing
    }
}

#[derive(Debug)]
pub struct SocketSource {
    diag: Option<SockDiag>,
    proc: ProcRoot,
    retry: NetlinkRetry,
}

impl SocketSource {
    /// Prefers netlink; says once which source is used.
    pub fn open(proc: ProcRoot) -> SocketSource {
        let mut retry = NetlinkRetry::default();
        let diag = match SockDiag::open() {
            Ok(diag) => Some(diag),
            Err(error) => {
                let wait = retry.failed(Instant::now());
                warn!(error = %error, retry_in_s = wait.as_secs(), "netlink sock_diag unavailable; reading /proc/net instead");
                None
            }
        };
        let source = SocketSource { diag, proc, retry };
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
    /// of this namespace. A netlink failure reads `/proc/net` instead, and netlink is tried
    /// again after a backoff (see the module doc).
    pub fn read_into(&mut self, netns: NetNsId, out: &mut Vec<SocketEntry>) -> anyhow::Result<()> {
        self.read_tcp_udp(netns, out)?;
        read_small_tables(&self.proc, netns, out)?;
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
        let now = Instant::now();
        if self.diag.is_none() && self.retry.may_try(now) {
            self.diag = SockDiag::open().ok();
        }
        if let Some(diag) = self.diag.as_mut().filter(|_| self.retry.may_try(now)) {
            match diag.read_sockets_into(netns, out) {
                Ok(()) => {
                    if self.retry.succeeded() {
                        info!("netlink sock_diag works again");
                    }
                    return Ok(());
                }
                Err(error) => {
                    let first = self.retry == NetlinkRetry::default();
                    let wait = self.retry.failed(now);
                    if first {
                        warn!(error = %error, retry_in_s = wait.as_secs(), "netlink sock_diag failed; reading /proc/net until it works again");
                    }
                    // A fresh socket at the next try: this one may hold a half-read dump.
                    self.diag = None;
                    out.clear();
                }
            }
        } else if self.diag.is_none() && self.retry.may_try(now) {
            self.retry.failed(now);
        }
        self.proc.read_sockets_into(netns, out)?;
        Ok(())
    }
}

/// Appends every socket of the namespace `proc`'s `net/` shows, all from text: what
/// [`SocketSource::read_into`] reads, for a namespace this process is not in.
pub fn read_text_tables(
    proc: &ProcRoot,
    netns: NetNsId,
    out: &mut Vec<SocketEntry>,
) -> pidcap_sockets::Result<()> {
    proc.read_sockets_into(netns, out)?;
    read_small_tables(proc, netns, out)
}

/// UDP-Lite, ping, raw and SCTP sockets: small tables, empty on most hosts, always read as
/// text.
fn read_small_tables(
    proc: &ProcRoot,
    netns: NetNsId,
    out: &mut Vec<SocketEntry>,
) -> pidcap_sockets::Result<()> {
    for table in [
        NetTable::UdpLite,
        NetTable::UdpLite6,
        NetTable::Icmp,
        NetTable::Icmp6,
    ] {
        let from = out.len();
        proc.read_table_into(table, netns, out)?;
        if matches!(table, NetTable::Icmp | NetTable::Icmp6) {
            // A ping socket shows port 0 until its first send assigns its identifier;
            // keyed so, it would claim the kernel's side of every echo.
            retain_from(out, from, |s| s.local.port() != 0);
        }
    }
    proc.read_raw_into(netns, out)?;
    proc.read_sctp_into(netns, out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_is_retried_with_a_doubling_backoff_that_a_success_resets() {
        let t0 = Instant::now();
        let mut retry = NetlinkRetry::default();
        assert!(retry.may_try(t0));
        assert_eq!(retry.failed(t0), NETLINK_RETRY_FIRST);
        assert!(!retry.may_try(t0 + NETLINK_RETRY_FIRST / 2));
        assert!(retry.may_try(t0 + NETLINK_RETRY_FIRST));
        let waits: Vec<Duration> = (0..12).map(|_| retry.failed(t0)).collect();
        assert_eq!(waits[0], 2 * NETLINK_RETRY_FIRST);
        assert_eq!(waits[1], 4 * NETLINK_RETRY_FIRST);
        assert_eq!(*waits.last().unwrap(), NETLINK_RETRY_MAX);
        assert!(retry.succeeded(), "it had been failing");
        assert!(retry.may_try(t0));
        assert!(!retry.succeeded());
        assert_eq!(
            retry.failed(t0),
            NETLINK_RETRY_FIRST,
            "a success resets the backoff"
        );
    }
}
