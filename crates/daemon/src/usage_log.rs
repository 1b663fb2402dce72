//! The usage log: JSON lines appended every interval.
//!
//! Invariants: a batch is rendered into one buffer and appended with one `write_all`; if the
//! write fails part-way, the file is cut back to its previous length, so a reader never sees
//! a torn line. The ledger's two-phase accounting keeps unwritten counts in memory; a failure
//! is reported once and writing resumes when it can. SIGHUP reopens the file (rotation).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pidcap_core::{Counters, LogBatch, LogRecord};
use serde::Serialize;
use tracing::{info, warn};

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
}

/// Renders a batch as JSON lines, each ending in `\n`.
pub fn render(batch: &LogBatch, now: SystemTime) -> Vec<u8> {
    let ts = humantime::format_rfc3339_millis(now).to_string();
    let interval_s = (batch.interval.as_secs_f64() * 1000.0).round() / 1000.0;
    let mut out = Vec::with_capacity(batch.records.len() * 320);
    for record in &batch.records {
        let line = line(record, &ts, interval_s);
        // Serialising plain structs of numbers and strings cannot fail.
        if serde_json::to_writer(&mut out, &line).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

fn line<'a>(r: &'a LogRecord, ts: &'a str, interval_s: f64) -> LogLine<'a> {
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
    }
}

/// The open log file, reopened lazily after a failure or a SIGHUP.
#[derive(Debug)]
pub struct UsageLog {
    path: PathBuf,
    file: Option<File>,
    failing: bool,
}

impl UsageLog {
    /// Does not open anything yet; the first write does.
    pub fn new(path: PathBuf) -> UsageLog {
        UsageLog {
            path,
            file: None,
            failing: false,
        }
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
        let written = file.write_all(bytes).and_then(|()| file.flush());
        if let Err(error) = written {
            // Cut a partial write back so no torn line stays; reopen next time.
            let _ = file.set_len(before);
            self.file = None;
            return Err(error);
        }
        Ok(())
    }
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
        let text = String::from_utf8(render(&batch(), SystemTime::UNIX_EPOCH)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"v":1,"ts":"1970-01-01T00:00:00.000Z","interval_s":10.0,"pid":42,"start_time":7,"comm":"curl","exe":"/usr/bin/curl","uid":1000,"rx_bytes":10,"tx_bytes":20,"rx_packets":1,"tx_packets":2,"rx_bytes_total":10,"tx_bytes_total":20,"rx_packets_total":1,"tx_packets_total":2,"exited":true}"#
        );
        assert!(lines[1].contains(r#""pid":null,"start_time":null,"comm":"<unknown>","exe":null,"uid":null,"rx_bytes":0"#), "{}", lines[1]);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_failed_write_reports_error_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("not-a-dir");
        std::fs::write(&blocked, b"x").unwrap();
        let mut log = UsageLog::new(blocked.join("usage.jsonl"));
        assert!(log.append(b"a\n").is_err());
        assert!(log.failing);
        let mut ok = UsageLog::new(dir.path().join("sub/usage.jsonl"));
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
        let mut log = UsageLog::new(PathBuf::from("/dev/full"));
        let err = log.append(b"{\"v\":1}\n").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }
}
