//! Network namespaces, named by the inode in their `ns/net` link (`net:[4026531840]`).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use pidcap_core::NetNsId;

use crate::error::{Error, Result};
use crate::root::{read_link, ProcRoot};
use crate::text::bracketed;

/// The namespace named by an `ns/net` link target, `net:[N]`.
pub(crate) fn parse_ns_link(target: &[u8]) -> Option<NetNsId> {
    bracketed(target, b"net:[").map(NetNsId)
}

fn netns_at(link: &Path) -> Result<NetNsId> {
    let target = read_link(link)?;
    parse_ns_link(target.as_os_str().as_bytes()).ok_or_else(|| {
        let reason = format!("expected net:[N], got {:?}", target.display().to_string());
        Error::parse(link.display().to_string(), 0, reason)
    })
}

impl ProcRoot {
    /// The network namespace of the reading process (`<root>/self/ns/net`): the one whose
    /// sockets [`ProcRoot::read_sockets`] lists.
    pub fn self_netns(&self) -> Result<NetNsId> {
        netns_at(&self.path().join("self/ns/net"))
    }

    /// The network namespace of process `pid`. [`Error::NotFound`] if it exited.
    pub fn netns_of(&self, pid: u32) -> Result<NetNsId> {
        netns_at(&self.pid_dir(pid).join("ns/net"))
    }

    /// Every network namespace some process is in, with up to `per_namespace` of its
    /// lowest pids, ascending (one `readlink` per process; processes that exit or refuse
    /// meanwhile are skipped), sorted by namespace. An error only when `<root>` itself
    /// cannot be listed.
    pub fn network_namespaces(&self, per_namespace: usize) -> Result<Vec<(NetNsId, Vec<u32>)>> {
        let dir = std::fs::read_dir(self.path()).map_err(|e| Error::from_io(self.path(), e))?;
        let mut seen: std::collections::BTreeMap<NetNsId, Vec<u32>> = Default::default();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(netns) = self.netns_of(pid) {
                seen.entry(netns).or_default().push(pid);
            }
        }
        Ok(seen
            .into_iter()
            .map(|(netns, mut pids)| {
                pids.sort_unstable();
                pids.truncate(per_namespace.max(1));
                (netns, pids)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_namespace_inode() {
        assert_eq!(
            parse_ns_link(b"net:[4026531840]"),
            Some(NetNsId(4026531840))
        );
    }

    #[test]
    fn rejects_other_namespace_kinds() {
        assert_eq!(parse_ns_link(b"mnt:[4026531841]"), None);
        assert_eq!(parse_ns_link(b"net:[]"), None);
    }
}
