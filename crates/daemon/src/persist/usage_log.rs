//! The usage log: JSON lines appended every interval.
//!
//! Invariants: a batch is rendered into one buffer and appended with one `write_all`; if the
//! write fails part-way, the file is cut back to its previous length, so a reader never sees
//! a torn line. The ledger's two-phase accounting keeps unwritten counts in memory; a failure
//! is reported once and writing resumes when it can. SIGHUP reopens the file (rotation).
//! Each write is fsynced unless turned off, so a line the daemon counts as logged survives a
//! crash; a line torn by a SIGKILL in the middle of a write is cut away at the next start
//! ([`repair_torn_tail`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pidcap_core::{Counters, LogBatch, LogRecord};
use serde::Serialize;
use tracing::{info, warn};

use crate::query::queries::{placement, Names};

/// Schema version of every line.
pub const SCHEMA_VERSION: u32 = 1;

/// One line, in the documented field order.
#[derive(Debug, Serialize)]
pub struct LogLine<'a> {
    pub v: u32,
    pub ts: &'a str,
    pub interval_s: f64,
    pub pid: Option<u32>,
    pub start_time: Option<u64>,
    pub comm: &'a str,
    pub exe: Option<&'a str>,
    pub uid: Option<u32>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes_total: u64,
    pub tx_bytes_total: u64,
    pub rx_packets_total: u64,
    pub tx_packets_total: u64,
    pub exited: bool,
    /// When the daemon that wrote the line started: a new value marks a restart.
    pub daemon_start: &'a str,
    /// Network namespace, cgroup, unit, container and user name (all `null` for unknown).
    #[serde(flatten)]
    pub placement: pidcap_proto::PlacementFields,
}

/// Renders a batch as JSON lines, each ending in `\n`; `daemon_start` is the RFC 3339 time
/// the daemon started.
pub fn render(batch: &LogBatch, now: SystemTime, daemon_start: &str, names: Names<'_>) -> Vec<u8> {
    let ts = humantime::format_rfc3339_millis(now).to_string();
    let interval_s = (batch.interval.as_secs_f64() * 1000.0).round() / 1000.0;
    let mut out = Vec::with_capacity(batch.records.len() * 320);
    for record in &batch.records {
        let line = line(record, &ts, interval_s, daemon_start, names);
        // Serialising plain structs of numbers and strings cannot fail.
        if serde_json::to_writer(&mut out, &line).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

fn line<'a>(
    r: &'a LogRecord,
    ts: &'a str,
    interval_s: f64,
    daemon_start: &'a str,
    names: Names<'_>,
) -> LogLine<'a> {
    let (i, t): (&Counters, &Counters) = (&r.interval, &r.total);
    LogLine {
        v: SCHEMA_VERSION,
        ts,
        interval_s,
        pid: r.key.map(|k| k.pid),
        start_time: r.key.map(|k| k.start_time),
        comm: r
            .meta
            .as_ref()
            .map_or(pidcap_proto::UNKNOWN_COMM, |m| m.comm.as_str()),
        exe: r.meta.as_ref().and_then(|m| m.exe.as_deref()),
        uid: r.meta.as_ref().map(|m| m.uid),
        rx_bytes: i.rx_bytes,
        tx_bytes: i.tx_bytes,
        rx_packets: i.rx_packets,
        tx_packets: i.tx_packets,
        rx_bytes_total: t.rx_bytes,
        tx_bytes_total: t.tx_bytes,
        rx_packets_total: t.rx_packets,
        tx_packets_total: t.tx_packets,
        exited: r.exited,
        daemon_start,
        placement: r
            .meta
            .as_ref()
            .map_or_else(Default::default, |m| placement(&m.placement, names, m.uid)),
    }
}

/// The open log file, reopened lazily after a failure or a SIGHUP.
#[derive(Debug)]
pub struct UsageLog {
    path: PathBuf,
    file: Option<File>,
    failing: bool,
    fsync: bool,
    daemon_start: String,
    /// Takes a counter checkpoint after each successful write (live capture only).
    pub checkpoints: Option<crate::persist::checkpoint::Checkpointer>,
}

impl UsageLog {
    /// Does not open anything yet; the first write does. With `fsync`, every append is
    /// on disk before it counts as written.
    pub fn new(path: PathBuf, fsync: bool) -> UsageLog {
        UsageLog {
            path,
            file: None,
            failing: false,
            fsync,
            daemon_start: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            checkpoints: None,
        }
    }

    /// When this daemon started (RFC 3339), as every line says.
    pub fn daemon_start(&self) -> &str {
        &self.daemon_start
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the file so the next write opens the path afresh (after rotation).
    pub fn reopen(&mut self) {
        self.file = None;
        info!(path = %self.path.display(), "usage log reopened");
    }

    /// Appends `bytes` whole, or leaves the file as it was and returns the error. The first
    /// failure in a row is warned about; recovery is logged once.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let result = self.try_append(bytes);
        match (&result, self.failing) {
            (Err(error), false) => {
                warn!(path = %self.path.display(), error = %error, "cannot write the usage log; counters are kept in memory until it can be written");
                self.failing = true;
            }
            (Ok(()), true) => {
                info!(path = %self.path.display(), "usage log writable again; nothing was lost");
                self.failing = false;
            }
            _ => {}
        }
        result
    }

    fn try_append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(open(&self.path)?);
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("usage log not open"));
        };
        let before = file.metadata()?.len();
        let fsync = self.fsync;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.flush())
            .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
        if let Err(error) = written {
            // Cut a partial write back so no torn line stays; reopen next time.
            let _ = file.set_len(before);
            self.file = None;
            return Err(error);
        }
        Ok(())
    }
}

/// Cuts a torn last line (no final `\n`, left by a SIGKILL during a write) off the log at
/// `path`. Returns how many bytes were cut; a missing file is not an error.
pub fn repair_torn_tail(path: &Path) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // A line is at most a few hundred bytes (exe paths are the longest field); look back far
    // enough for any of them.
    let window = len.min(1 << 20);
    file.seek(SeekFrom::Start(len - window))?;
    let mut tail = Vec::with_capacity(window as usize);
    file.read_to_end(&mut tail)?;
    if tail.last().is_none_or(|&b| b == b'\n') {
        return Ok(0);
    }
    let keep = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let cut = window - keep as u64;
    file.set_len(len - cut)?;
    file.sync_data()?;
    Ok(cut)
}

fn open(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidcap_core::{ProcessKey, ProcessMeta};
    use std::time::Duration;

    fn batch() -> LogBatch {
        let c = Counters {
            rx_bytes: 10,
            tx_bytes: 20,
            rx_packets: 1,
            tx_packets: 2,
        };
        LogBatch {
            interval: Duration::from_millis(10_000),
            records: vec![
                LogRecord {
                    key: Some(ProcessKey {
                        pid: 42,
                        start_time: 7,
                    }),
                    meta: Some(ProcessMeta {
                        comm: "curl".into(),
                        exe: Some("/usr/bin/curl".into()),
                        uid: 1000,
                        placement: pidcap_core::Placement {
                            netns: Some(pidcap_core::NetNsId(4026532001)),
                            cgroup: Some(format!("/system.slice/docker-{}.scope", "ab".repeat(32))),
                        },
                    }),
                    interval: c,
                    total: c,
                    exited: true,
                },
                LogRecord {
                    key: None,
                    meta: None,
                    interval: Counters::default(),
                    total: c,
                    exited: false,
                },
            ],
        }
    }

    #[test]
    fn lines_have_the_documented_fields_in_order() {
        let text = String::from_utf8(render(
            &batch(),
            SystemTime::UNIX_EPOCH,
            "1970-01-01T00:00:00.000Z",
            Names {
                users: &crate::users::UserNames::default(),
                containers: &crate::containers::ContainerNames::default(),
            },
        ))
        .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"v":1,"ts":"1970-01-01T00:00:00.000Z","interval_s":10.0,"pid":42,"start_time":7,"comm":"curl","exe":"/usr/bin/curl","uid":1000,"rx_bytes":10,"tx_bytes":20,"rx_packets":1,"tx_packets":2,"rx_bytes_total":10,"tx_bytes_total":20,"rx_packets_total":1,"tx_packets_total":2,"exited":true,"daemon_start":"1970-01-01T00:00:00.000Z","netns":4026532001,"cgroup":"/system.slice/docker-abababababababababababababababababababababababababababababababab.scope","unit":"docker-abababababababababababababababababababababababababababababababab.scope","container":{"runtime":"docker","id":"abababababababababababababababababababababababababababababababab","pod":null,"name":null},"user":null}"#
        );
        assert!(lines[1].contains(r#""pid":null,"start_time":null,"comm":"<unknown>","exe":null,"uid":null,"rx_bytes":0"#), "{}", lines[1]);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_failed_write_reports_error_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("not-a-dir");
        std::fs::write(&blocked, b"x").unwrap();
        let mut log = UsageLog::new(blocked.join("usage.jsonl"), true);
        assert!(log.append(b"a\n").is_err());
        assert!(log.failing);
        let mut ok = UsageLog::new(dir.path().join("sub/usage.jsonl"), true);
        ok.append(b"one\n").unwrap();
        std::fs::rename(
            dir.path().join("sub/usage.jsonl"),
            dir.path().join("sub/old.jsonl"),
        )
        .unwrap();
        ok.reopen();
        ok.append(b"two\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/usage.jsonl")).unwrap(),
            "two\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/old.jsonl")).unwrap(),
            "one\n"
        );
    }

    #[test]
    fn a_full_disk_leaves_no_torn_line() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let mut log = UsageLog::new(PathBuf::from("/dev/full"), false);
        let err = log.append(b"{\"v\":1}\n").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn a_torn_last_line_is_cut_and_whole_lines_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        assert_eq!(repair_torn_tail(&path).unwrap(), 5);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(
            repair_torn_tail(&path).unwrap(),
            0,
            "a whole log is left alone"
        );
        std::fs::write(&path, b"torn").unwrap();
        assert_eq!(repair_torn_tail(&path).unwrap(), 4);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert_eq!(repair_torn_tail(&dir.path().join("absent")).unwrap(), 0);
    }
}
