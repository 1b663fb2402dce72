//! Least privilege. [`check`] says, before anything is opened, which capabilities the daemon
//! lacks; [`narrow`] then keeps exactly [`KEPT`] and drops everything else.
//!
//! Invariants: capabilities belong to threads, not processes, so [`narrow`] runs before the
//! daemon starts its first thread and every thread inherits the narrowed sets (it reports the
//! thread count, and warns when other threads exist). Narrowing only ever lowers sets; nothing
//! here can panic.

use std::fmt;
use std::io;

use thiserror::Error;

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
    match own_effective() {
        Some(eff) => missing(eff).map_or(Ok(()), Err),
        None => Err(Missing(NEEDED.map(|(n, _)| n).to_vec())),
    }
}

/// Whether this process holds CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, which reading every
/// process's fds needs.
pub fn reads_every_process() -> bool {
    const READ_FDS: [&str; 2] = ["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"];
    own_effective().is_some_and(|eff| match missing(eff) {
        Some(Missing(absent)) => !absent.iter().any(|name| READ_FDS.contains(name)),
        None => true,
    })
}

/// This process's effective capabilities, from `/proc/self/status`.
fn own_effective() -> Option<u64> {
    effective(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

/// A capability the daemon keeps for its whole life, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub name: &'static str,
    pub bit: u32,
    pub why: &'static str,
}

/// What [`narrow`] keeps: the unit's five, each still used after start.
pub const KEPT: [Kept; 5] = [
    Kept {
        name: "CAP_NET_RAW",
        bit: 13,
        why: "a capture re-open (the interface went away) needs a new packet socket",
    },
    Kept {
        name: "CAP_NET_ADMIN",
        bit: 12,
        why: "re-opening capture or the process-event connector (joining its group before Linux 6.6, SO_RCVBUFFORCE)",
    },
    Kept {
        name: "CAP_SYS_PTRACE",
        bit: 19,
        why:
            "every refresh reads other users' /proc/<pid>/fd; the tracer opens per-thread counters",
    },
    Kept {
        name: "CAP_DAC_READ_SEARCH",
        bit: 2,
        why: "every refresh lists other users' /proc/<pid>/fd directories (mode 0500)",
    },
    Kept {
        name: "CAP_PERFMON",
        bit: 38,
        why: "the tracer opens perf events later: route counters per thread, rings on new CPUs",
    },
];

/// Kept as well with `namespaces = all`, and needed at start then.
pub const NAMESPACE_CAPTURE: Kept = Kept {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    why: "namespaces = all: a namespace's loopback capture is opened after setns(2) into it",
};

/// Checks, before anything is opened, that CAP_SYS_ADMIN is there for `namespaces = all`.
pub fn check_namespace_capture() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let has = effective(&status).is_some_and(|eff| eff & 1 << NAMESPACE_CAPTURE.bit != 0);
    if has {
        return Ok(());
    }
    Err(
        "missing capability CAP_SYS_ADMIN: namespaces = \"all\" opens a capture inside each \
         network namespace (setns(2)). Run pidcapd as root, or add CAP_SYS_ADMIN to the unit's \
         AmbientCapabilities= and CapabilityBoundingSet= (systemctl edit pidcapd), or leave \
         namespaces at \"home\""
            .into(),
    )
}

/// CAP_SETPCAP: needed to drop capabilities from the bounding set.
const CAP_SETPCAP: u32 = 8;

/// The capability mask of [`KEPT`].
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |mask, cap| mask | 1 << cap.bit)
}

/// A thread's capability sets, as the `Cap*:` lines of `/proc/<pid>/status` show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

impl CapSets {
    /// Parses the five `Cap*:` lines of `/proc/<pid>/status` text; `None` if one is missing.
    pub fn parse(status: &str) -> Option<CapSets> {
        let field = |name: &str| {
            let hex = status.lines().find_map(|l| l.strip_prefix(name))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        };
        Some(CapSets {
            inheritable: field("CapInh:")?,
            permitted: field("CapPrm:")?,
            effective: field("CapEff:")?,
            bounding: field("CapBnd:")?,
            ambient: field("CapAmb:")?,
        })
    }

    /// The sets after narrowing (see `extra` below): permitted and effective cut to [`KEPT`], nothing
    /// inheritable or ambient (the daemon starts no programs), and the bounding set cut to
    /// [`KEPT`] when CAP_SETPCAP allows it (run as root); under the unit it already is.
    /// `extra`: capabilities kept beyond [`KEPT`] (the mask of [`NAMESPACE_CAPTURE`] with
    /// `namespaces = all`).
    pub fn narrowed(self, extra: u64) -> CapSets {
        let keep = kept_mask() | extra;
        let may_drop_bounding = self.effective & 1 << CAP_SETPCAP != 0;
        CapSets {
            inheritable: 0,
            permitted: self.permitted & keep,
            effective: self.effective & keep,
            bounding: if may_drop_bounding {
                self.bounding & keep
            } else {
                self.bounding
            },
            ambient: 0,
        }
    }
}

/// The `Threads:` count of `/proc/<pid>/status` text.
pub fn threads(status: &str) -> Option<u32> {
    let count = status.lines().find_map(|l| l.strip_prefix("Threads:"))?;
    count.trim().parse().ok()
}

/// Capability names of the bits in `mask`, `cap_<n>` for bits this module does not name.
pub fn names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & 1 << bit != 0)
        .map(|bit| {
            match KEPT
                .iter()
                .chain([&NAMESPACE_CAPTURE])
                .find(|cap| cap.bit == bit)
            {
                Some(cap) => cap.name.to_owned(),
                None => format!("cap_{bit}"),
            }
        })
        .collect()
}

/// Why narrowing failed; the daemon then runs with the sets it had (and says so).
#[derive(Debug, Error)]
pub enum NarrowError {
    #[error("cannot read /proc/self/status: {0}")]
    Status(#[source] io::Error),
    #[error("/proc/self/status has no Cap*: lines")]
    NoCapLines,
    #[error("{call} failed: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel kept other sets than asked: asked {asked:x?}, got {got:x?}")]
    NotApplied { asked: CapSets, got: CapSets },
}

/// The sets before and after a successful [`narrow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Narrowed {
    pub before: CapSets,
    pub after: CapSets,
    /// Threads of the process when it narrowed: any but this one kept `before`.
    pub threads: u32,
}

/// Keeps exactly [`KEPT`] and `extra` (of what this thread has) and drops everything else, in the order
/// the kernel requires: bounding set first (while CAP_SETPCAP is still effective), then
/// permitted, effective and inheritable together, then the ambient set.
pub fn narrow(extra: u64) -> Result<Narrowed, NarrowError> {
    let (before, threads) = read_status()?;
    let asked = before.narrowed(extra);
    for bit in (0..64).filter(|bit| (before.bounding & !asked.bounding) & 1 << bit != 0) {
        sys::drop_bounding(bit).map_err(|source| NarrowError::Call {
            call: "prctl(PR_CAPBSET_DROP)",
            source,
        })?;
    }
    sys::set(asked).map_err(|source| NarrowError::Call {
        call: "capset",
        source,
    })?;
    sys::clear_ambient().map_err(|source| NarrowError::Call {
        call: "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
        source,
    })?;
    let (after, _) = read_status()?;
    if after != asked {
        return Err(NarrowError::NotApplied { asked, got: after });
    }
    Ok(Narrowed {
        before,
        after,
        threads,
    })
}

/// This thread's sets and the process's thread count.
fn read_status() -> Result<(CapSets, u32), NarrowError> {
    // thread-self: capabilities are per thread, and this is the thread that narrows.
    let status =
        std::fs::read_to_string("/proc/thread-self/status").map_err(NarrowError::Status)?;
    let sets = CapSets::parse(&status).ok_or(NarrowError::NoCapLines)?;
    Ok((sets, threads(&status).unwrap_or(1)))
}

/// The three system calls, on the calling thread.
mod sys {
    use std::io;

    use super::CapSets;

    /// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit halves.
    const VERSION_3: u32 = 0x2008_0522;

    /// `struct __user_cap_header_struct`.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }

    /// `struct __user_cap_data_struct`, one per 32-bit half.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    fn half(sets: &CapSets, shift: u32) -> Data {
        Data {
            effective: (sets.effective >> shift) as u32,
            permitted: (sets.permitted >> shift) as u32,
            inheritable: (sets.inheritable >> shift) as u32,
        }
    }

    /// capset(2) of permitted, effective and inheritable for this thread (pid 0).
    pub(super) fn set(sets: CapSets) -> io::Result<()> {
        let header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let data = [half(&sets, 0), half(&sets, 32)];
        // SAFETY: both pointers are to live, correctly laid out structs of the sizes the
        // version-3 ABI reads (one header, two data halves); the kernel only reads them.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(super) fn drop_bounding(bit: u32) -> io::Result<()> {
        prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(bit))
    }

    pub(super) fn clear_ambient() -> io::Result<()> {
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        )
    }

    fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
        let zero: libc::c_ulong = 0;
        // SAFETY: these prctl options take integer arguments only; no memory is passed.
        let rc = unsafe { libc::prctl(option, arg, zero, zero, zero) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
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

    /// `/proc/self/status` of a process started as the unit starts pidcapd (setpriv, user
    /// pidcap, the five capabilities ambient), Linux 6.18.
    const UNDER_THE_UNIT: &str = "Name:\tpidcapd\nThreads:\t1\n\
        CapInh:\t0000004000083004\nCapPrm:\t0000004000083004\nCapEff:\t0000004000083004\n\
        CapBnd:\t0000004000083004\nCapAmb:\t0000004000083004\nNoNewPrivs:\t1\n";

    /// The same, for root started from a shell (every capability of Linux 6.18).
    const AS_ROOT: &str = "Threads:\t1\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
        CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";

    #[test]
    fn kept_is_the_units_five() {
        assert_eq!(kept_mask(), 0x0000_0040_0008_3004);
        assert_eq!(
            names(kept_mask()),
            [
                "CAP_DAC_READ_SEARCH",
                "CAP_NET_ADMIN",
                "CAP_NET_RAW",
                "CAP_SYS_PTRACE",
                "CAP_PERFMON"
            ]
        );
    }

    #[test]
    fn status_lines_parse_into_the_five_sets() {
        let sets = CapSets::parse(UNDER_THE_UNIT).unwrap();
        assert_eq!(sets.ambient, kept_mask());
        assert_eq!(sets.bounding, kept_mask());
        assert_eq!(threads(UNDER_THE_UNIT), Some(1));
        assert_eq!(CapSets::parse("CapEff:\t0\n"), None, "a missing line");
    }

    #[test]
    fn under_the_unit_only_inheritable_and_ambient_go() {
        // No CAP_SETPCAP: the bounding set stays as systemd made it (already the five).
        let before = CapSets::parse(UNDER_THE_UNIT).unwrap();
        let after = before.narrowed(0);
        assert_eq!(after.effective, kept_mask());
        assert_eq!(after.permitted, kept_mask());
        assert_eq!(after.bounding, before.bounding);
        assert_eq!((after.inheritable, after.ambient), (0, 0));
    }

    #[test]
    fn with_all_namespaces_cap_sys_admin_is_kept_too() {
        let extra = 1 << NAMESPACE_CAPTURE.bit;
        let after = CapSets::parse(AS_ROOT).unwrap().narrowed(extra);
        assert_eq!(after.effective, kept_mask() | extra);
        assert_eq!(after.bounding, kept_mask() | extra);
        assert!(names(after.effective).contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn as_root_everything_but_the_five_goes_bounding_set_included() {
        let after = CapSets::parse(AS_ROOT).unwrap().narrowed(0);
        let five = kept_mask();
        assert_eq!(
            after,
            CapSets {
                inheritable: 0,
                permitted: five,
                effective: five,
                bounding: five,
                ambient: 0
            }
        );
    }

    #[test]
    fn narrowing_never_adds_a_capability() {
        // An unprivileged replay of a pcap file has nothing, and keeps nothing.
        let none = CapSets::parse(
            "CapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t000001ffffffffff\nCapAmb:\t0\n",
        )
        .unwrap();
        assert_eq!(none.narrowed(0), none);
        // Only CAP_NET_RAW of the five: only it is kept.
        let partial = CapSets {
            permitted: 1 << 13 | 1 << 21,
            effective: 1 << 13,
            ..CapSets::default()
        };
        assert_eq!(partial.narrowed(0).permitted, 1 << 13);
        assert_eq!(partial.narrowed(0).effective, 1 << 13);
    }

    #[test]
    fn narrow_applies_to_the_calling_thread() {
        // Capabilities are per thread: narrowing in a thread of its own leaves the test
        // process (and the other tests) as they were.
        let narrowed = std::thread::spawn(|| narrow(0)).join().unwrap().unwrap();
        assert_eq!(narrowed.after, narrowed.before.narrowed(0));
        assert!(narrowed.threads >= 2, "the test's own thread and this one");
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert_eq!(CapSets::parse(&status).unwrap(), narrowed.before);
    }
}
