//! `net.ipv4.ping_group_range`, set for the duration of a scenario and restored on Drop (it
//! also governs ICMPv6 ping sockets).

use std::path::Path;

const PING_GROUP_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

/// While alive, every group may open ping sockets.
#[derive(Debug)]
pub struct PingGroupRange {
    previous: String,
}

impl PingGroupRange {
    /// Sets the range to `0 2147483647`, remembering the old value.
    pub fn open_to_all() -> std::io::Result<PingGroupRange> {
        let path = Path::new(PING_GROUP_RANGE);
        let previous = std::fs::read_to_string(path)?.trim().replace('\t', " ");
        std::fs::write(path, "0 2147483647")?;
        Ok(PingGroupRange { previous })
    }
}

impl Drop for PingGroupRange {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(PING_GROUP_RANGE, &self.previous) {
            eprintln!(
                "pidcap-accuracy: could not restore {PING_GROUP_RANGE} to {:?}: {e}",
                self.previous
            );
        }
    }
}
