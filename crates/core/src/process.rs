//! Processes, identified so that a reused pid is never confused with its predecessor.

/// A process identity: pid plus start time (clock ticks after boot, field 22 of
/// `/proc/<pid>/stat`). Two processes with the same pid never share a start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub pid: u32,
    pub start_time: u64,
}

use crate::Placement;

/// What pidcap knows of a process. `cmdline` is kept for queries but never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub key: ProcessKey,
    pub comm: String,
    pub exe: Option<String>,
    pub uid: u32,
    pub cmdline: Vec<String>,
    /// Its network namespace and control group, as read with the rest.
    pub placement: Placement,
}

impl ProcessInfo {
    /// The heap bytes this value holds (strings and the argument vector), for byte bounds on
    /// tables of process facts.
    pub fn heap_bytes(&self) -> usize {
        let args: usize = self.cmdline.iter().map(String::capacity).sum();
        self.comm.capacity()
            + self.exe.as_ref().map_or(0, String::capacity)
            + self.placement.cgroup.as_ref().map_or(0, String::capacity)
            + args
            + self.cmdline.capacity() * std::mem::size_of::<String>()
    }
}
