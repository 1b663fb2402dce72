//! The order in which a targeted resolution visits processes: newest first. Pure.
//!
//! The kernel hands out pids upwards and wraps around at `pid_max` (32768 by default) back
//! to a low number (300), so "highest pid first" is newest first only until the first wrap.
//! After a wrap the newest processes have *low* pids. `/proc/loadavg` ends with the pid most
//! recently handed out (in the reader's pid namespace); with it the order is exact under
//! sequential allocation: that pid and those below it, descending, then those above it,
//! descending (the older part of the previous cycle). Without it (a fixture root without
//! `loadavg`, or an unparsable one) the order falls back to plain highest first. A wrong
//! last pid only changes how soon a process is visited, never whether it is.

use crate::text::{dec, fields};

/// The last field of `/proc/loadavg` (`0.37 0.80 0.99 1/87 4294`): the pid most recently
/// handed out. `None` if the text does not have that shape.
pub(super) fn parse_last_pid(loadavg: &[u8]) -> Option<u32> {
    let [_, _, _, _, last] = fields::<5>(loadavg)?;
    dec(last).and_then(|n| u32::try_from(n).ok())
}

/// Sorts `pids` newest first, given the most recently handed out pid (see the module docs).
pub(super) fn newest_first(pids: &mut [u32], last_pid: Option<u32>) {
    let last = last_pid.unwrap_or(u32::MAX);
    pids.sort_unstable_by_key(|&pid| (pid > last, std::cmp::Reverse(pid)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_pid_is_the_fifth_field_of_loadavg() {
        // Linux 6.18, this development VM.
        assert_eq!(parse_last_pid(b"0.37 0.80 0.99 1/87 4294\n"), Some(4294));
        assert_eq!(parse_last_pid(b"0.37 0.80 0.99 1/87\n"), None);
        assert_eq!(parse_last_pid(b"0.37 0.80 0.99 1/87 x\n"), None);
        assert_eq!(parse_last_pid(b""), None);
    }

    #[test]
    fn without_a_last_pid_highest_comes_first() {
        let mut pids = [3, 500, 1, 42];
        newest_first(&mut pids, None);
        assert_eq!(pids, [500, 42, 3, 1]);
    }

    #[test]
    fn after_a_wrap_the_low_pids_below_the_last_one_come_first() {
        let mut pids = [310, 32000, 305, 320, 31000, 400];
        newest_first(&mut pids, Some(320));
        assert_eq!(pids, [320, 310, 305, 32000, 31000, 400]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_loadavg_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let _ = parse_last_pid(&bytes);
        }
    }
}
