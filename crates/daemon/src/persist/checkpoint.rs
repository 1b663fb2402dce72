//! Durable counters: a checkpoint of the ledger in the state directory, so that a daemon
//! killed at any moment and started again continues the totals of processes still running.
//!
//! # What is written, and when
//!
//! After every successful usage-log write (which is fsynced), the totals that write logged for
//! each live process and for `unknown` go to `<state_dir>/checkpoint.json`: written to a
//! temporary file, fsynced, renamed over the old one, and the directory fsynced. A reader
//! therefore sees either the old checkpoint or the new one, never a mix. The checkpoint also
//! records where the usage log ended (device, inode, length) and the kernel's boot id.
//!
//! # Restoring
//!
//! At start, a checkpoint of this boot (process start times are ticks since boot, so another
//! boot's are meaningless) is read; then the usage-log lines written after it (a crash between
//! the log write and the checkpoint rename) raise the totals to what the log last said. Each
//! process whose pid still has the same start time is restored into the ledger: its next log
//! line reports only new traffic, with `*_total` going on from the restored total. So nothing
//! logged is counted twice, and a SIGKILL loses only what was counted since the last log
//! write (at most one log interval) plus what was sent while no daemon ran.
//!
//! Invariants: a missing, unreadable or corrupt checkpoint is never fatal (warned once, the
//! daemon starts from zero); a checkpoint holds at most what the ledger holds.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pidcap_core::{Counters, Ledger, NetNsId, Placement, ProcessKey, ProcessMeta};
use serde::{Deserialize, Serialize};

/// The checkpoint's file name in the state directory.
pub const FILE_NAME: &str = "checkpoint.json";
/// Version of the checkpoint's format; another version is ignored (warned), not misread.
pub const FORMAT_VERSION: u32 = 1;
/// Most bytes of usage log read after the checkpoint's position at start: one interval's
/// lines are far less; more means the log is not the one the checkpoint knew.
const MAX_TAIL: u64 = 64 << 20;

/// [`Counters`] in the checkpoint, field for field (core has no serde).
#[derive(Serialize, Deserialize)]
#[serde(remote = "Counters")]
struct CountersDef {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
}

/// Where the usage log ended when a checkpoint was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    /// The file's birth time (ns since the epoch), where the filesystem records one: an inode
    /// number freed by a deleted log and reused by a new one must not pass for the old file.
    #[serde(default)]
    pub born_ns: Option<u64>,
}

impl LogPosition {
    /// The current end of the file at `path`.
    pub fn of(path: &Path) -> io::Result<LogPosition> {
        Ok(LogPosition::from_metadata(&fs::metadata(path)?))
    }

    fn from_metadata(meta: &fs::Metadata) -> LogPosition {
        let born_ns = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64);
        LogPosition {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            born_ns,
        }
    }

    /// Whether `other` describes the same file (its length aside).
    fn same_file(&self, other: &LogPosition) -> bool {
        let born = match (self.born_ns, other.born_ns) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        (self.dev, self.ino) == (other.dev, other.ino) && born
    }
}

/// One process as the usage log last wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessTotals {
    pub pid: u32,
    pub start_time: u64,
    pub comm: String,
    pub exe: Option<String>,
    pub uid: u32,
    /// Network namespace and cgroup path (absent in checkpoints of earlier versions).
    #[serde(default)]
    pub netns: Option<u64>,
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(with = "CountersDef")]
    pub total: Counters,
}

impl ProcessTotals {
    fn key(&self) -> ProcessKey {
        ProcessKey {
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

/// What `checkpoint.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub v: u32,
    /// `/proc/sys/kernel/random/boot_id` when written.
    pub boot_id: String,
    /// The usage log's end after the write this checkpoint follows.
    pub log: Option<LogPosition>,
    #[serde(with = "CountersDef")]
    pub unknown: Counters,
    pub processes: Vec<ProcessTotals>,
}

/// Why a checkpoint was not used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a pidcap checkpoint: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}, this pidcapd reads {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// What a restore did, for the log line that reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Processes whose totals go on.
    pub processes: usize,
    /// Processes in the checkpoint that have exited since (their lines were final).
    pub gone: usize,
    /// Usage-log lines written after the checkpoint that raised a total.
    pub tail_lines: usize,
}

impl Checkpoint {
    /// What the ledger has logged, as of now.
    pub fn of(ledger: &Ledger, boot_id: &str, log: Option<LogPosition>) -> Checkpoint {
        let (live, unknown) = ledger.logged_live();
        let processes = live
            .into_iter()
            .map(|(key, meta, total)| ProcessTotals {
                pid: key.pid,
                start_time: key.start_time,
                comm: meta.comm,
                exe: meta.exe,
                uid: meta.uid,
                netns: meta.placement.netns.map(|n| n.0),
                cgroup: meta.placement.cgroup,
                total,
            })
            .collect();
        Checkpoint {
            v: FORMAT_VERSION,
            boot_id: boot_id.to_string(),
            log,
            unknown,
            processes,
        }
    }

    /// Raises totals to what usage-log lines say (JSON lines as pidcapd writes them; other
    /// lines are skipped). Returns how many lines raised something.
    pub fn apply_log_lines(&mut self, lines: &[u8]) -> usize {
        let mut by_key: BTreeMap<ProcessKey, usize> = self
            .processes
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key(), i))
            .collect();
        let mut applied = 0;
        for line in lines.split(|&b| b == b'\n') {
            let Ok(line) = serde_json::from_slice::<LoggedLine>(line) else {
                continue;
            };
            applied += 1;
            let total = line.total();
            match (line.pid, line.start_time) {
                (Some(pid), Some(start_time)) => {
                    let key = ProcessKey { pid, start_time };
                    let i = *by_key.entry(key).or_insert_with(|| {
                        self.processes.push(line.process(key));
                        self.processes.len() - 1
                    });
                    let p = &mut self.processes[i];
                    p.total = p.total.max(&total);
                }
                _ => self.unknown = self.unknown.max(&total),
            }
        }
        applied
    }

    /// Puts the totals of processes that still run (`alive`) into `ledger`.
    pub fn restore_into(
        &self,
        ledger: &mut Ledger,
        mut alive: impl FnMut(ProcessKey) -> bool,
    ) -> Restored {
        let mut restored = Restored::default();
        for p in &self.processes {
            if !alive(p.key()) {
                restored.gone += 1;
                continue;
            }
            let meta = ProcessMeta {
                comm: p.comm.clone(),
                exe: p.exe.clone(),
                uid: p.uid,
                placement: Placement {
                    netns: p.netns.map(NetNsId),
                    cgroup: p.cgroup.clone(),
                },
            };
            ledger.restore(p.key(), meta, p.total);
            restored.processes += 1;
        }
        ledger.restore_unknown(self.unknown);
        restored
    }
}

/// The fields of a usage-log line a restore needs.
#[derive(Debug, Deserialize)]
struct LoggedLine {
    pid: Option<u32>,
    start_time: Option<u64>,
    #[serde(default)]
    comm: String,
    exe: Option<String>,
    uid: Option<u32>,
    #[serde(default)]
    netns: Option<u64>,
    #[serde(default)]
    cgroup: Option<String>,
    rx_bytes_total: u64,
    tx_bytes_total: u64,
    rx_packets_total: u64,
    tx_packets_total: u64,
}

impl LoggedLine {
    fn total(&self) -> Counters {
        Counters {
            rx_bytes: self.rx_bytes_total,
            tx_bytes: self.tx_bytes_total,
            rx_packets: self.rx_packets_total,
            tx_packets: self.tx_packets_total,
        }
    }

    fn process(&self, key: ProcessKey) -> ProcessTotals {
        ProcessTotals {
            pid: key.pid,
            start_time: key.start_time,
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            uid: self.uid.unwrap_or(u32::MAX),
            netns: self.netns,
            cgroup: self.cgroup.clone(),
            total: Counters::default(),
        }
    }
}

/// Writes `checkpoint` to `dir` atomically (temporary file, fsync, rename, fsync of `dir`).
pub fn write(dir: &Path, checkpoint: &Checkpoint) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let bytes = serde_json::to_vec(checkpoint).map_err(io::Error::other)?;
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

/// Reads the checkpoint in `dir`; `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Io { path, source }),
    };
    let checkpoint: Checkpoint =
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Corrupt {
            path: path.clone(),
            source,
        })?;
    if checkpoint.v != FORMAT_VERSION {
        return Err(CheckpointError::Version {
            path,
            found: checkpoint.v,
        });
    }
    Ok(Some(checkpoint))
}

/// The usage-log bytes written after `position`. While `log` is still that file: the rest of
/// it, or all of it if it was truncated below `position` (copytruncate). After a rotation
/// (another file at `log`): the rest of the old file, found by device and inode in `log`'s
/// directory (logrotate renames it there), then all of the new one, whose lines are all newer.
/// Lines carry running totals, so a line read twice or out of order raises nothing wrongly;
/// a rotated file that was compressed or moved elsewhere is simply not found. Each part is
/// bounded by `MAX_TAIL` (64 MiB).
pub fn log_tail(log: &Path, position: &LogPosition) -> io::Result<Vec<u8>> {
    let current = match LogPosition::of(log) {
        Ok(now) => Some(now),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut tail = Vec::new();
    match current {
        Some(now) if now.same_file(position) => {
            let from = if now.len < position.len {
                0
            } else {
                position.len
            };
            read_from(log, from, &mut tail)?;
        }
        _ => {
            if let Some(rotated) = find_by_inode(log, position) {
                read_from(&rotated, position.len, &mut tail)?;
            }
            if current.is_some() {
                read_from(log, 0, &mut tail)?;
            }
        }
    }
    Ok(tail)
}

/// Appends `path`'s bytes from `offset` (at most [`MAX_TAIL`]) to `out`, ending on a newline.
fn read_from(path: &Path, offset: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    file.take(MAX_TAIL).read_to_end(out)?;
    if out.last().is_some_and(|&b| b != b'\n') {
        out.push(b'\n');
    }
    Ok(())
}

/// Entries of a log's directory looked at for its rotated file.
const MAX_SIBLINGS: usize = 4096;

/// The file in `log`'s directory that is the one `position` was taken in, if any.
fn find_by_inode(log: &Path, position: &LogPosition) -> Option<PathBuf> {
    let dir = match log.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::read_dir(dir)
        .ok()?
        .take(MAX_SIBLINGS)
        .filter_map(Result::ok)
        .find(|entry| {
            entry
                .metadata()
                .is_ok_and(|m| m.is_file() && LogPosition::from_metadata(&m).same_file(position))
        })
        .map(|entry| entry.path())
}

/// Takes a checkpoint after each usage-log write and restores one at start; failures are
/// warned about once in a row (counters are then only as durable as the log).
#[derive(Debug)]
pub struct Checkpointer {
    dir: PathBuf,
    boot_id: String,
    failing: bool,
}

impl Checkpointer {
    pub fn new(dir: PathBuf) -> Checkpointer {
        Checkpointer {
            dir,
            boot_id: boot_id(),
            failing: false,
        }
    }

    /// Saves what `ledger` has logged, with the end of the usage log at `log`.
    pub fn save(&mut self, ledger: &Ledger, log: &Path) {
        let checkpoint = Checkpoint::of(ledger, &self.boot_id, LogPosition::of(log).ok());
        match (write(&self.dir, &checkpoint), self.failing) {
            (Err(error), false) => {
                tracing::warn!(dir = %self.dir.display(), error = %error, "cannot write the counter checkpoint; a restart will start totals from zero");
                self.failing = true;
            }
            (Ok(()), true) => {
                tracing::info!(dir = %self.dir.display(), "counter checkpoint written again");
                self.failing = false;
            }
            _ => {}
        }
    }

    /// Restores this boot's checkpoint, raised by the usage-log lines at `log` written after
    /// it, into `ledger` for the processes `alive` says still run. `Ok(None)`: nothing to
    /// restore (no checkpoint, or one from another boot).
    pub fn restore(
        &self,
        ledger: &mut Ledger,
        log: &Path,
        alive: impl FnMut(ProcessKey) -> bool,
    ) -> Result<Option<Restored>, CheckpointError> {
        let Some(mut checkpoint) = read(&self.dir)? else {
            return Ok(None);
        };
        if checkpoint.boot_id != self.boot_id || self.boot_id.is_empty() {
            return Ok(None);
        }
        let tail = match &checkpoint.log {
            Some(position) => log_tail(log, position).map_err(|source| CheckpointError::Io {
                path: log.to_path_buf(),
                source,
            })?,
            None => Vec::new(),
        };
        let tail_lines = checkpoint.apply_log_lines(&tail);
        let restored = checkpoint.restore_into(ledger, alive);
        Ok(Some(Restored {
            tail_lines,
            ..restored
        }))
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), or empty when it cannot be read
/// (then no checkpoint matches, and none is restored).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn totals(pid: u32, tx: u64) -> ProcessTotals {
        ProcessTotals {
            pid,
            start_time: 7,
            comm: format!("p{pid}"),
            exe: None,
            uid: 0,
            netns: None,
            cgroup: None,
            total: Counters {
                tx_bytes: tx,
                tx_packets: 1,
                ..Counters::default()
            },
        }
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            v: FORMAT_VERSION,
            boot_id: "b".into(),
            log: None,
            unknown: Counters {
                rx_bytes: 5,
                ..Counters::default()
            },
            processes: vec![totals(1, 100), totals(2, 200)],
        }
    }

    #[test]
    fn a_checkpoint_survives_the_round_trip_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &checkpoint()).unwrap();
        let mut newer = checkpoint();
        newer.processes.pop();
        write(dir.path(), &newer).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(newer));
        assert!(!dir.path().join("checkpoint.json.tmp").exists());
    }

    #[test]
    fn no_checkpoint_is_none_and_a_corrupt_one_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        fs::write(dir.path().join(FILE_NAME), b"{\"v\":1,\"boot").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(CheckpointError::Corrupt { .. })
        ));
        let mut other = checkpoint();
        other.v = 99;
        fs::write(
            dir.path().join(FILE_NAME),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(CheckpointError::Version { found: 99, .. })
        ));
    }

    #[test]
    fn log_lines_after_the_checkpoint_raise_totals_and_add_processes() {
        let mut c = checkpoint();
        let lines = br#"{"v":1,"pid":1,"start_time":7,"comm":"p1","exe":null,"uid":0,"rx_bytes_total":0,"tx_bytes_total":150,"rx_packets_total":0,"tx_packets_total":2,"exited":false}
{"v":1,"pid":3,"start_time":9,"comm":"new","exe":"/bin/new","uid":5,"rx_bytes_total":10,"tx_bytes_total":0,"rx_packets_total":1,"tx_packets_total":0,"exited":false}
{"v":1,"pid":null,"start_time":null,"comm":"<unknown>","exe":null,"uid":null,"rx_bytes_total":9,"tx_bytes_total":0,"rx_packets_total":1,"tx_packets_total":0,"exited":false}
{"v":1,"pid":2,"start_time":7,"comm":"p2","rx_bytes_to"#;
        assert_eq!(c.apply_log_lines(lines), 3, "the torn last line is skipped");
        assert_eq!(c.processes[0].total.tx_bytes, 150);
        assert_eq!(c.processes[1].total.tx_bytes, 200);
        assert_eq!(c.processes[2].comm, "new");
        assert_eq!(c.processes[2].uid, 5);
        assert_eq!(c.processes[2].total.rx_bytes, 10);
        assert_eq!(c.unknown.rx_bytes, 9);
    }

    #[test]
    fn only_processes_still_running_are_restored() {
        let mut ledger = Ledger::new(Instant::now());
        let restored = checkpoint().restore_into(&mut ledger, |key| key.pid == 2);
        assert_eq!((restored.processes, restored.gone), (1, 1));
        let key = ProcessKey {
            pid: 2,
            start_time: 7,
        };
        assert_eq!(ledger.process(&key).unwrap().usage.total.tx_bytes, 200);
        assert!(ledger
            .process(&ProcessKey {
                pid: 1,
                start_time: 7
            })
            .is_none());
        assert_eq!(ledger.unknown().total.rx_bytes, 5);
    }

    #[test]
    fn the_log_tail_is_read_only_from_the_same_file_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("usage.jsonl");
        fs::write(&log, b"one\n").unwrap();
        let at = LogPosition::of(&log).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"two\n")
            .unwrap();
        assert_eq!(log_tail(&log, &at).unwrap(), b"two\n");
        // Rotated: the old file renamed beside it, a new one at the path.
        fs::rename(&log, dir.path().join("usage.jsonl.1")).unwrap();
        fs::write(&log, b"three\n").unwrap();
        assert_eq!(log_tail(&log, &at).unwrap(), b"two\nthree\n");
        // The new file not written yet.
        fs::remove_file(&log).unwrap();
        assert_eq!(log_tail(&log, &at).unwrap(), b"two\n");
        // The old file compressed away: the new file's lines alone.
        fs::remove_file(dir.path().join("usage.jsonl.1")).unwrap();
        fs::write(&log, b"four").unwrap();
        assert_eq!(log_tail(&log, &at).unwrap(), b"four\n");
    }

    #[test]
    fn a_log_truncated_in_place_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("usage.jsonl");
        fs::write(&log, b"one\ntwo\n").unwrap();
        let at = LogPosition::of(&log).unwrap();
        // copytruncate: same inode, shorter, then new lines.
        let file = fs::OpenOptions::new().write(true).open(&log).unwrap();
        file.set_len(0).unwrap();
        drop(file);
        fs::write(&log, b"three\n").unwrap();
        assert_eq!(LogPosition::of(&log).unwrap().ino, at.ino);
        assert_eq!(log_tail(&log, &at).unwrap(), b"three\n");
    }

    /// A kill after a rotation: the lines written after the checkpoint, in the rotated file
    /// and the new one, still raise the totals (issue #9: totals never go back).
    #[test]
    fn totals_written_after_the_checkpoint_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("usage.jsonl");
        fs::write(&log, b"").unwrap();
        let mut checkpoint = checkpoint();
        checkpoint.log = Some(LogPosition::of(&log).unwrap());
        let line = |tx: u64| {
            format!(
                "{{\"pid\":1,\"start_time\":7,\"comm\":\"a\",\"uid\":0,\"rx_bytes_total\":0,\"tx_bytes_total\":{tx},\"rx_packets_total\":0,\"tx_packets_total\":1}}\n"
            )
        };
        fs::write(&log, line(500)).unwrap();
        fs::rename(&log, dir.path().join("usage.jsonl.1")).unwrap();
        fs::write(&log, line(900)).unwrap();
        let tail = log_tail(&log, checkpoint.log.as_ref().unwrap()).unwrap();
        assert_eq!(checkpoint.apply_log_lines(&tail), 2);
        let p = checkpoint
            .processes
            .iter()
            .find(|p| (p.pid, p.start_time) == (1, 7))
            .unwrap();
        assert_eq!(p.total.tx_bytes, 900);
    }
}
