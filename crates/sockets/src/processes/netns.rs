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

    /// Every network namespace some process is in but `skip` (one `readlink` per process;
    /// processes that exit or refuse meanwhile are skipped), sorted by namespace, each with up
    /// to `per_namespace` of its processes, oldest first (by start time: the one likeliest to
    /// live on; pids wrap, so the lowest pid may be the newest process). An error only when
    /// `<root>` itself cannot be listed.
    pub fn network_namespaces(
        &self,
        per_namespace: usize,
        skip: Option<NetNsId>,
    ) -> Result<Vec<(NetNsId, Vec<u32>)>> {
        let dir = std::fs::read_dir(self.path()).map_err(|e| Error::from_io(self.path(), e))?;
        let mut seen: std::collections::BTreeMap<NetNsId, Vec<u32>> = Default::default();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            match self.netns_of(pid) {
                Ok(netns) if Some(netns) != skip => seen.entry(netns).or_default().push(pid),
                _ => {}
            }
        }
        Ok(seen
            .into_iter()
            .map(|(netns, mut pids)| {
                pids.sort_by_key(|&pid| (self.start_time(pid).unwrap_or(u64::MAX), pid));
                pids.truncate(per_namespace.max(1));
                (netns, pids)
            })
            .collect())
    }
}

/// The calling thread, moved into another network namespace ([`ProcRoot::enter_netns`])
/// until [`InNamespace::leave`] or drop moves it back. Sockets it opens meanwhile (a packet
/// capture, a netlink socket) stay bound to that namespace for their whole life.
///
/// Invariant: only the calling thread moves (`setns(2)` acts on the thread), and it always
/// comes back: if it cannot (which needs the thread's own namespace to vanish or
/// CAP_SYS_ADMIN to be dropped meanwhile), drop panics rather than let the thread go on in
/// the wrong namespace.
#[derive(Debug)]
pub struct InNamespace {
    back: Option<std::fs::File>,
}

impl InNamespace {
    /// Moves the thread back to the namespace it came from.
    pub fn leave(mut self) -> Result<()> {
        self.go_back()
    }

    fn go_back(&mut self) -> Result<()> {
        match self.back.take() {
            Some(home) => set_netns(&home, Path::new("setns (back)")),
            None => Ok(()),
        }
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        if let Err(error) = self.go_back() {
            panic!("cannot move this thread back to its network namespace: {error}");
        }
    }
}

/// `setns(2)` into the network namespace `file` refers to.
fn set_netns(file: &std::fs::File, what: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is an open descriptor, borrowed for the call; setns reads nothing else.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::from_io(what, std::io::Error::last_os_error()))
    }
}

impl ProcRoot {
    /// Moves the calling thread into the network namespace of process `pid`, which must be
    /// `netns` (a pid can be reused, and a process can move with `setns`). Needs
    /// CAP_SYS_ADMIN. [`Error::NotFound`] when `pid` exited or is in another namespace now.
    pub fn enter_netns(&self, pid: u32, netns: NetNsId) -> Result<InNamespace> {
        use std::os::unix::fs::MetadataExt;
        let back_path = self.path().join("thread-self/ns/net");
        let back = std::fs::File::open(&back_path).map_err(|e| Error::from_io(&back_path, e))?;
        let path = self.pid_dir(pid).join("ns/net");
        let target = std::fs::File::open(&path).map_err(|e| Error::from_io(&path, e))?;
        let inode = target
            .metadata()
            .map_err(|e| Error::from_io(&path, e))?
            .ino();
        if inode != netns.0 {
            return Err(Error::NotFound { path });
        }
        set_netns(&target, &path)?;
        Ok(InNamespace { back: Some(back) })
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

#[cfg(test)]
mod discovery_tests {
    use super::*;

    /// `<root>/<pid>/ns/net` → `net:[netns]`, `<root>/<pid>/stat` with `start`.
    fn process(root: &Path, pid: u32, netns: u64, start: u64) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        std::os::unix::fs::symlink(format!("net:[{netns}]"), dir.join("ns/net")).unwrap();
        let stat = format!("{pid} (p) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0\n");
        std::fs::write(dir.join("stat"), stat).unwrap();
    }

    /// Oldest first, whatever the pids (they wrap); the skipped namespace is left out; at
    /// most `per_namespace` each.
    #[test]
    fn each_namespace_lists_its_oldest_processes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        process(root, 300, 7, 900); // a young process with a low pid, after a wrap
        process(root, 32_000, 7, 100); // the container's long-lived one
        process(root, 31_000, 7, 500);
        process(root, 1, 1, 1); // the daemon's own namespace
        process(root, 12, 9, 50);
        let found = ProcRoot::new(root)
            .network_namespaces(2, Some(NetNsId(1)))
            .unwrap();
        assert_eq!(
            found,
            [(NetNsId(7), vec![32_000, 31_000]), (NetNsId(9), vec![12]),]
        );
    }
}
