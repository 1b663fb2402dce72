//! Checks, before anything is opened, that the daemon has the capabilities it needs.

use std::fmt;

/// The capabilities pidcapd needs for live capture and attribution, with their bit numbers
/// (`include/uapi/linux/capability.h`).
pub const NEEDED: [(&str, u32); 4] = [
    ("CAP_NET_RAW", 13),
    ("CAP_NET_ADMIN", 12),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_DAC_READ_SEARCH", 2),
];

/// Capabilities missing from the effective set.
#[derive(Debug, PartialEq, Eq)]
pub struct Missing(pub Vec<&'static str>);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "missing capabilities: {}. pidcapd needs {} (capture and reading every process's sockets): \
             run it as root, under the systemd unit, or grant them with \
             `setcap cap_net_raw,cap_net_admin,cap_sys_ptrace,cap_dac_read_search,cap_perfmon+ep pidcapd` \
             (cap_perfmon is optional: without it the socket tracer is off)",
            self.0.join(", "),
            NEEDED.map(|(n, _)| n).join(", ")
        )
    }
}

/// Parses the `CapEff:` line of `/proc/self/status` text.
pub fn effective(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Which of [`NEEDED`] are absent from the capability mask `eff`.
pub fn missing(eff: u64) -> Option<Missing> {
    let absent: Vec<&'static str> = NEEDED
        .iter()
        .filter(|(_, bit)| eff & (1 << bit) == 0)
        .map(|(name, _)| *name)
        .collect();
    (!absent.is_empty()).then_some(Missing(absent))
}

/// Reads this process's effective capabilities and reports what is missing.
pub fn check() -> Result<(), Missing> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match effective(&status) {
        Some(eff) => missing(eff).map_or(Ok(()), Err),
        None => Err(Missing(NEEDED.map(|(n, _)| n).to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        let status = "Name:\tpidcapd\nCapEff:\t000001ffffffffff\n";
        assert_eq!(missing(effective(status).unwrap()), None);
    }

    #[test]
    fn an_unprivileged_user_is_told_what_to_grant() {
        let eff = effective("CapEff:\t0000000000000000\n").unwrap();
        let m = missing(eff).unwrap();
        assert_eq!(
            m.0,
            vec![
                "CAP_NET_RAW",
                "CAP_NET_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"
            ]
        );
        assert!(m.to_string().contains("setcap"));
    }

    #[test]
    fn partial_grants_name_only_the_gap() {
        let eff = (1 << 13) | (1 << 12);
        assert_eq!(
            missing(eff).unwrap().0,
            vec!["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"]
        );
    }
}
