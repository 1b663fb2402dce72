//! Facts about one process, from `<root>/<pid>/{stat,status,cmdline,exe}`.
//!
//! Invariants: the parsers never panic; `comm` and `cmdline` are decoded lossily (a process
//! may name itself with any bytes). A process that exits while being read yields
//! [`Error::NotFound`]. The files are read one after the other, so if the pid is reused
//! between the reads the later facts could describe the successor; the key (pid + start
//! time) comes from `stat`, read first. Reading through one open `<pid>` directory fd would
//! close that window (planned with the openat-based scan).

use std::path::Path;
use std::time::{Duration, Instant};

use pidcap_core::{cgroup_path, Placement, ProcessInfo, ProcessKey};

use crate::error::{Error, Result};
use crate::root::{read_file, read_file_prefix, read_link, ProcRoot};
use crate::text::{dec, fields};

/// Index of `starttime` (field 22 of `stat`) among the fields after the `(comm)` field,
/// which begin with field 3 (`state`).
const START_TIME_AFTER_COMM: usize = 22 - 3;

/// `comm` and start time from `/proc/<pid>/stat`: `pid (comm) state ppid ... starttime ...`.
/// `comm` may contain spaces and parentheses, so it runs from the first `(` to the *last* `)`.
pub(crate) fn parse_stat(stat: &[u8]) -> std::result::Result<(String, u64), String> {
    let open = stat
        .iter()
        .position(|&b| b == b'(')
        .ok_or("no '(' before comm")?;
    let close = stat
        .iter()
        .rposition(|&b| b == b')')
        .ok_or("no ')' after comm")?;
    if close < open {
        return Err("')' before '('".into());
    }
    let comm = String::from_utf8_lossy(&stat[open + 1..close]).into_owned();
    let rest = fields::<{ START_TIME_AFTER_COMM + 1 }>(&stat[close + 1..])
        .ok_or("fewer than 22 fields")?;
    let start_time = dec(rest[START_TIME_AFTER_COMM]).ok_or("bad starttime (field 22)")?;
    Ok((comm, start_time))
}

/// The parent's pid from `/proc/<pid>/stat` (field 4, after `comm` and the state).
pub(crate) fn parse_stat_ppid(stat: &[u8]) -> std::result::Result<u32, String> {
    let close = stat
        .iter()
        .rposition(|&b| b == b')')
        .ok_or("no ')' after comm")?;
    let [_, ppid] = fields::<2>(&stat[close + 1..]).ok_or("fewer than 4 fields")?;
    dec(ppid)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| "bad ppid (field 4)".into())
}

/// True when `/proc/<pid>/stat` says the process has ended: a zombie (`Z`) or dead (`X`,
/// field 3, the first after `comm`), or of another start time than `start_time` (the pid
/// was reused).
pub(crate) fn parse_stat_ended(stat: &[u8], start_time: u64) -> std::result::Result<bool, String> {
    let (_, started) = parse_stat(stat)?;
    let close = stat.iter().rposition(|&b| b == b')').ok_or("no ')'")?;
    let [state] = fields::<1>(&stat[close + 1..]).ok_or("no state (field 3)")?;
    Ok(started != start_time || matches!(state, b"Z" | b"X" | b"x"))
}

/// The real uid: first number of the `Uid:` line of `/proc/<pid>/status`.
pub(crate) fn parse_status_uid(status: &[u8]) -> std::result::Result<u32, (usize, String)> {
    let mut lines = status.split(|&b| b == b'\n').enumerate();
    let (index, rest) = lines
        .find_map(|(i, line)| Some((i, line.strip_prefix(b"Uid:")?)))
        .ok_or_else(|| (0, "no Uid: line".to_string()))?;
    let [real] = fields::<1>(rest).ok_or_else(|| (index + 1, "empty Uid: line".into()))?;
    dec(real)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            (
                index + 1,
                format!("bad uid {:?}", String::from_utf8_lossy(real)),
            )
        })
}

/// The most bytes of a command line read and kept per process. Any user can start processes
/// with a megabyte of arguments, and the daemon keeps every process's facts for a while: the
/// cap keeps that memory proportional to the number of processes, not to what they pass.
/// (`ps` and `top` show less.)
pub const CMDLINE_LIMIT: usize = 4096;

/// Appended to the last argument kept when a command line was cut at [`CMDLINE_LIMIT`].
pub const CMDLINE_CUT_MARK: &str = "…";

/// `/proc/<pid>/cmdline`: arguments separated (and normally terminated) by NUL. Empty for
/// kernel threads and zombies. Of a longer input only the first [`CMDLINE_LIMIT`] bytes are
/// kept, and the last argument kept ends with [`CMDLINE_CUT_MARK`].
pub(crate) fn parse_cmdline(cmdline: &[u8]) -> Vec<String> {
    let cut = cmdline.len() > CMDLINE_LIMIT;
    let cmdline = &cmdline[..cmdline.len().min(CMDLINE_LIMIT)];
    let cmdline = cmdline.strip_suffix(b"\0").unwrap_or(cmdline);
    if cmdline.is_empty() {
        return Vec::new();
    }
    let mut args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    if let (true, Some(last)) = (cut, args.last_mut()) {
        last.push_str(CMDLINE_CUT_MARK);
    }
    args
}

fn stat_of(dir: &Path) -> Result<(String, u64)> {
    let path = dir.join("stat");
    parse_stat(&read_file(&path)?)
        .map_err(|reason| Error::parse(path.display().to_string(), 1, reason))
}

fn uid_of(dir: &Path) -> Result<u32> {
    let path = dir.join("status");
    parse_status_uid(&read_file(&path)?)
        .map_err(|(line, reason)| Error::parse(path.display().to_string(), line, reason))
}

/// The executable path, or `None` when it cannot be read: kernel threads have none, and
/// reading another user's `exe` needs ptrace access. Not knowing it is normal, not an error.
fn exe_of(dir: &Path) -> Option<String> {
    let target = read_link(&dir.join("exe")).ok()?;
    Some(target.to_string_lossy().into_owned())
}

/// When a process that started `start_ticks` clock ticks after boot (its
/// [`ProcessKey::start_time`]) started, on the monotonic clock of `Instant`, at the
/// ticks' precision (10 ms at the usual 100 Hz): `now` minus the time since its start on
/// the boot clock. After a suspend the boot clock has run ahead of the monotonic one, so
/// the instant found is earlier than the real one, never later. `None` when the clocks
/// cannot be read or the start lies before the monotonic clock's origin.
pub fn start_instant(start_ticks: u64, now: Instant) -> Option<Instant> {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let mut boot = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `boot` is a valid out-pointer for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut boot) } != 0 || hz == 0 {
        return None;
    }
    let boot = Duration::new(u64::try_from(boot.tv_sec).ok()?, boot.tv_nsec as u32);
    let started = Duration::from_nanos(start_ticks.checked_mul(1_000_000_000 / hz)?);
    now.checked_sub(boot.checked_sub(started)?)
}

impl ProcRoot {
    /// The start time of process `pid` (clock ticks after boot, as in its [`ProcessKey`]):
    /// one small read, for checking that a known process is still the one holding `pid`.
    /// [`Error::NotFound`] if it exited.
    pub fn start_time(&self, pid: u32) -> Result<u64> {
        stat_of(&self.pid_dir(pid)).map(|(_, start)| start)
    }

    /// True when the process `key` names has ended: gone, a zombie, or its pid held by
    /// another process since. An unreadable or malformed `stat` counts as not ended (what
    /// cannot be told is not taken as an exit).
    pub fn has_ended(&self, key: ProcessKey) -> bool {
        let path = self.pid_dir(key.pid).join("stat");
        match read_file(&path) {
            Ok(stat) => parse_stat_ended(&stat, key.start_time).unwrap_or(false),
            Err(e) => e.is_not_found(),
        }
    }

    /// The pid of `pid`'s parent (0 for the first process). [`Error::NotFound`] if it
    /// exited.
    pub fn parent_pid(&self, pid: u32) -> Result<u32> {
        let path = self.pid_dir(pid).join("stat");
        let stat = read_file(&path)?;
        parse_stat_ppid(&stat)
            .map_err(|message| Error::parse(path.display().to_string(), 1, message))
    }

    /// What is known of process `pid`: its key (pid + start time), `comm`, real uid,
    /// executable and command line. [`Error::NotFound`] if it exited.
    pub fn process(&self, pid: u32) -> Result<ProcessInfo> {
        let dir = self.pid_dir(pid);
        let (comm, start_time) = stat_of(&dir)?;
        let uid = uid_of(&dir)?;
        let cmdline = parse_cmdline(&read_file_prefix(&dir.join("cmdline"), CMDLINE_LIMIT + 1)?);
        Ok(ProcessInfo {
            key: ProcessKey { pid, start_time },
            comm,
            exe: exe_of(&dir),
            uid,
            cmdline,
            placement: Placement {
                netns: self.netns_of(pid).ok(),
                cgroup: cgroup_of(&dir),
            },
        })
    }
}

/// The process's cgroup path (see [`pidcap_core::cgroup_path`]); `None` when unreadable.
fn cgroup_of(dir: &Path) -> Option<String> {
    let text = read_file_prefix(&dir.join("cgroup"), CGROUP_LIMIT).ok()?;
    cgroup_path(&String::from_utf8_lossy(&text))
}

/// The most of `/proc/<pid>/cgroup` read (a dozen lines of paths on a v1 host).
pub(crate) const CGROUP_LIMIT: usize = 16 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/<pid>/stat` of a python3 process, Linux 6.18, with its comm changed (via
    /// prctl(PR_SET_NAME)) to contain spaces and parentheses.
    const STAT_LINUX_6_18: &[u8] = b"7843 (my (weird) comm) R 7841 7841 4659 0 -1 4194304 2890 6497 2 1 7 4 7 2 20 0 1 0 57139 17133568 3442 18446744073709551615 93910699917312 93910699917653 140732038216256 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0 93910699929008 93910699929624 93911311872000 140732038219866 140732038220071 140732038220071 140732038221775 0\n";

    /// A child started now is placed between the instants taken around its spawn, within
    /// the ticks' precision (and never after the instant it is asked at).
    #[test]
    fn a_zombie_a_dead_process_and_a_reused_pid_have_ended() {
        let (_, start) = parse_stat(STAT_LINUX_6_18).unwrap();
        assert_eq!(
            parse_stat_ended(STAT_LINUX_6_18, start),
            Ok(false),
            "running (R)"
        );
        let zombie = String::from_utf8_lossy(STAT_LINUX_6_18).replacen(") R ", ") Z ", 1);
        assert_eq!(parse_stat_ended(zombie.as_bytes(), start), Ok(true));
        let dead = String::from_utf8_lossy(STAT_LINUX_6_18).replacen(") R ", ") X ", 1);
        assert_eq!(parse_stat_ended(dead.as_bytes(), start), Ok(true));
        assert_eq!(
            parse_stat_ended(STAT_LINUX_6_18, start + 1),
            Ok(true),
            "pid reused"
        );
        assert!(parse_stat_ended(b"7843 (x", start).is_err());
    }

    /// A live child has not ended; once it exited (a zombie until reaped) and once reaped
    /// (gone) it has.
    #[test]
    #[allow(clippy::disallowed_methods)] // a bounded wait for the kill
    fn a_child_has_ended_once_it_exits_reaped_or_not() {
        let proc = ProcRoot::default();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let key = ProcessKey {
            pid: child.id(),
            start_time: proc.start_time(child.id()).unwrap(),
        };
        assert!(!proc.has_ended(key));
        child.kill().unwrap();
        // Not reaped: a zombie once the kill is delivered (bounded wait).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !proc.has_ended(key) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(proc.has_ended(key), "a killed, unreaped child is a zombie");
        child.wait().unwrap();
        assert!(proc.has_ended(key), "a reaped child is gone");
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the test takes the instants around the spawn
    fn a_start_time_in_ticks_is_placed_on_the_monotonic_clock() {
        let before = Instant::now();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let after = Instant::now();
        let ticks = ProcRoot::default().start_time(child.id()).unwrap();
        let now = Instant::now();
        let started = start_instant(ticks, now).expect("the clocks read");
        child.kill().unwrap();
        child.wait().unwrap();
        let tick = Duration::from_millis(20); // a tick at 100 Hz, and rounding
        assert!(started <= now);
        assert!(
            started + tick >= before,
            "{:?} before the spawn",
            before - started
        );
        assert!(
            started <= after + tick,
            "{:?} after the spawn",
            started - after
        );
    }

    #[test]
    fn the_parent_comes_after_comm_and_state() {
        assert_eq!(parse_stat_ppid(STAT_LINUX_6_18), Ok(7841));
        assert!(parse_stat_ppid(b"7 (a) S").is_err());
        assert!(parse_stat_ppid(b"7 (a) S x 1").is_err());
    }

    #[test]
    fn comm_runs_to_the_last_paren() {
        let (comm, start) = parse_stat(STAT_LINUX_6_18).unwrap();
        assert_eq!(comm, "my (weird) comm");
        assert_eq!(start, 57139);
    }

    #[test]
    fn comm_with_a_closing_paren_and_field_like_words() {
        let stat = b"7 (a) S 1 2 3) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0\n";
        assert_eq!(parse_stat(stat).unwrap(), ("a) S 1 2 3".to_string(), 99));
    }

    #[test]
    fn truncated_stat_is_an_error_not_a_panic() {
        assert!(parse_stat(b"7 (sh) S 1 2").is_err());
        assert!(parse_stat(b"7 )sh( S").is_err());
        assert!(parse_stat(b"").is_err());
    }

    #[test]
    fn real_uid_is_the_first_uid_column() {
        let status = b"Name:\tsshd\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_status_uid(status), Ok(1000));
    }

    #[test]
    fn missing_or_bad_uid_line_is_an_error_with_its_line() {
        assert_eq!(parse_status_uid(b"Name:\tx\n").unwrap_err().0, 0);
        assert_eq!(parse_status_uid(b"Name:\tx\nUid:\tme\n").unwrap_err().0, 2);
    }

    #[test]
    fn cmdline_splits_on_nul_and_keeps_empty_arguments() {
        assert_eq!(
            parse_cmdline(b"python3\0-c\0\0x y\0"),
            ["python3", "-c", "", "x y"]
        );
        assert_eq!(parse_cmdline(b"rewritten title"), ["rewritten title"]);
        assert!(parse_cmdline(b"").is_empty());
    }

    /// Issue #9: 200 processes with 1 MiB of arguments each took the daemon from 24 to
    /// 270 MiB, since every exec's whole command line was kept.
    #[test]
    fn a_huge_cmdline_is_cut_and_marked() {
        let mut huge = b"hog\0".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 1 << 20));
        huge.push(0);
        let args = parse_cmdline(&huge);
        assert_eq!(args.len(), 2);
        assert_eq!(args[0], "hog");
        assert!(args[1].ends_with(CMDLINE_CUT_MARK));
        let kept: usize = args.iter().map(|a| a.len() + 1).sum();
        assert!(kept <= CMDLINE_LIMIT + CMDLINE_CUT_MARK.len() + 1, "{kept}");
        // Exactly the limit is not cut.
        let exact = vec![b'b'; CMDLINE_LIMIT];
        assert!(!parse_cmdline(&exact)[0].ends_with(CMDLINE_CUT_MARK));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse_stat(&bytes);
            let _ = parse_status_uid(&bytes);
            let _ = parse_cmdline(&bytes);
        }
    }
}
