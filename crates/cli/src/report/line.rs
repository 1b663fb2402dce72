//! One usage-log line (README "Usage log", schema `v` 1), parsed from untrusted bytes.
//!
//! Invariants: parsing never panics; fields this version does not know are ignored (the
//! schema grows additively within v1: `daemon_start`, then the placement fields); a line
//! whose `v` is not 1 is [`LineError::Version`], never read as if it were v1.

use serde::Deserialize;

use super::time;

/// The schema version this reader understands.
pub const SCHEMA_VERSION: u64 = 1;

/// Bytes and packets per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl Counters {
    /// Adds `other`, saturating (a sum over a log cannot reach `u64::MAX` bytes in practice).
    pub fn add(&mut self, other: &Counters) {
        self.rx_bytes = self.rx_bytes.saturating_add(other.rx_bytes);
        self.tx_bytes = self.tx_bytes.saturating_add(other.tx_bytes);
        self.rx_packets = self.rx_packets.saturating_add(other.rx_packets);
        self.tx_packets = self.tx_packets.saturating_add(other.tx_packets);
    }

    /// Received plus sent bytes.
    pub fn bytes(&self) -> u64 {
        self.rx_bytes.saturating_add(self.tx_bytes)
    }
}

/// A process as the log names it: a reused pid is another process (README counting rule 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

/// A parsed line.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The end of the line's interval, as written.
    pub ts: String,
    /// `ts` in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// `None` for the `unknown` line.
    pub process: Option<ProcessId>,
    pub comm: String,
    pub exe: Option<String>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub unit: Option<String>,
    /// `runtime:id`.
    pub container: Option<String>,
    /// Traffic since the previous line of this process (what a report sums).
    pub interval: Counters,
    /// Traffic since first seen; `None` if a field is missing.
    pub total: Option<Counters>,
    /// When the writing daemon started; `None` in lines older than the field.
    pub daemon_start: Option<String>,
}

/// Why a line was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Not a v1 line: skipped with a warning.
    Version(String),
    /// Not JSON, torn, or a required field missing or mistyped.
    Malformed(String),
}

#[derive(Debug, Deserialize)]
struct Wire {
    v: u64,
    ts: String,
    pid: Option<u32>,
    start_time: Option<u64>,
    comm: Option<String>,
    exe: Option<String>,
    uid: Option<u32>,
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    rx_bytes_total: Option<u64>,
    tx_bytes_total: Option<u64>,
    rx_packets_total: Option<u64>,
    tx_packets_total: Option<u64>,
    daemon_start: Option<String>,
    user: Option<String>,
    unit: Option<String>,
    container: Option<WireContainer>,
}

#[derive(Debug, Deserialize)]
struct WireContainer {
    runtime: String,
    id: String,
}

/// Just the version, to tell a line of another schema from a broken one.
#[derive(Debug, Deserialize)]
struct VersionOnly {
    v: serde_json::Value,
}

/// Parses one line (without its newline).
pub fn parse(bytes: &[u8]) -> Result<LogLine, LineError> {
    match serde_json::from_slice::<Wire>(bytes) {
        Ok(wire) if wire.v == SCHEMA_VERSION => from_wire(wire),
        Ok(wire) => Err(LineError::Version(wire.v.to_string())),
        Err(e) => Err(classify(bytes, e)),
    }
}

/// A line that failed to parse is of another version if it says so, else malformed.
fn classify(bytes: &[u8], error: serde_json::Error) -> LineError {
    match serde_json::from_slice::<VersionOnly>(bytes) {
        Ok(VersionOnly { v }) if v.as_u64() != Some(SCHEMA_VERSION) => {
            LineError::Version(v.to_string())
        }
        _ => LineError::Malformed(error.to_string()),
    }
}

fn from_wire(w: Wire) -> Result<LogLine, LineError> {
    let ts_ms = time::parse_timestamp(&w.ts)
        .ok_or_else(|| LineError::Malformed(format!("ts {:?} is not an RFC 3339 time", w.ts)))?;
    let process = match (w.pid, w.start_time) {
        (Some(pid), Some(start_time)) => Some(ProcessId { pid, start_time }),
        (None, _) => None,
        (Some(pid), None) => {
            return Err(LineError::Malformed(format!(
                "pid {pid} without a start_time"
            )))
        }
    };
    let total = match (
        w.rx_bytes_total,
        w.tx_bytes_total,
        w.rx_packets_total,
        w.tx_packets_total,
    ) {
        (Some(rx_bytes), Some(tx_bytes), Some(rx_packets), Some(tx_packets)) => Some(Counters {
            rx_bytes,
            tx_bytes,
            rx_packets,
            tx_packets,
        }),
        _ => None,
    };
    Ok(LogLine {
        ts: w.ts,
        ts_ms,
        comm: w.comm.unwrap_or_else(|| unnamed(process)),
        process,
        exe: w.exe,
        uid: w.uid,
        user: w.user,
        unit: w.unit,
        container: w.container.map(|c| format!("{}:{}", c.runtime, c.id)),
        interval: Counters {
            rx_bytes: w.rx_bytes,
            tx_bytes: w.tx_bytes,
            rx_packets: w.rx_packets,
            tx_packets: w.tx_packets,
        },
        total,
        daemon_start: w.daemon_start,
    })
}

fn unnamed(process: Option<ProcessId>) -> String {
    match process {
        Some(_) => "?".into(),
        None => pidcap_proto::UNKNOWN_COMM.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first example line of README "Usage log", as the daemon writes it.
    const README_LINE: &str = r#"{"v":1,"ts":"2026-11-29T17:14:53.774Z","interval_s":10.0,"pid":17434,"start_time":83037,"comm":"python3","exe":"/usr/bin/python3.11","uid":0,"rx_bytes":101184,"tx_bytes":101184,"rx_packets":42,"tx_packets":42,"rx_bytes_total":101184,"tx_bytes_total":101184,"rx_packets_total":42,"tx_packets_total":42,"exited":false,"daemon_start":"2026-11-29T17:02:11.402Z","netns":4026531840,"cgroup":"/system.slice/docker-3f4e.scope","unit":"docker-3f4e.scope","container":{"runtime":"docker","id":"3f4e","pod":null},"user":"root"}"#;

    /// The README's `unknown` line.
    const README_UNKNOWN: &str = r#"{"v":1,"ts":"2026-11-29T17:14:53.774Z","interval_s":10.0,"pid":null,"start_time":null,"comm":"<unknown>","exe":null,"uid":null,"rx_bytes":0,"tx_bytes":0,"rx_packets":0,"tx_packets":0,"rx_bytes_total":1224,"tx_bytes_total":1224,"rx_packets_total":4,"tx_packets_total":4,"exited":false,"daemon_start":"2026-11-29T17:02:11.402Z","netns":null,"cgroup":null,"unit":null,"container":null,"user":null}"#;

    #[test]
    fn reads_the_readme_lines() {
        let line = parse(README_LINE.as_bytes()).unwrap();
        assert_eq!(
            line.process,
            Some(ProcessId {
                pid: 17434,
                start_time: 83037
            })
        );
        assert_eq!(line.interval.rx_bytes, 101_184);
        assert_eq!(line.interval.tx_packets, 42);
        assert_eq!(line.container.as_deref(), Some("docker:3f4e"));
        assert_eq!(line.user.as_deref(), Some("root"));
        assert_eq!(line.total.unwrap().rx_packets, 42);
        let unknown = parse(README_UNKNOWN.as_bytes()).unwrap();
        assert_eq!(unknown.process, None);
        assert_eq!(unknown.comm, "<unknown>");
        assert_eq!(unknown.interval, Counters::default());
    }

    #[test]
    fn unknown_fields_are_ignored_and_later_fields_are_optional() {
        let text = r#"{"v":1,"ts":"2024-01-01T00:00:10Z","pid":5,"start_time":9,"comm":"a","rx_bytes":1,"tx_bytes":2,"rx_packets":3,"tx_packets":4,"future":{"x":[1,2]}}"#;
        let line = parse(text.as_bytes()).unwrap();
        assert_eq!(line.daemon_start, None);
        assert_eq!(line.total, None);
        assert_eq!(line.interval.tx_packets, 4);
    }

    #[test]
    fn other_versions_are_told_apart_from_broken_lines() {
        let v2 = r#"{"v":2,"ts":"2024-01-01T00:00:10Z","totally":"different"}"#;
        assert_eq!(parse(v2.as_bytes()), Err(LineError::Version("2".into())));
        let v2_like_v1 = README_LINE.replacen(r#""v":1"#, r#""v":2"#, 1);
        assert_eq!(
            parse(v2_like_v1.as_bytes()),
            Err(LineError::Version("2".into()))
        );
        let torn = &README_LINE[..README_LINE.len() / 2];
        assert!(matches!(
            parse(torn.as_bytes()),
            Err(LineError::Malformed(_))
        ));
        for bad in [
            &b"\xff\xfe"[..],
            b"",
            b"[]",
            b"null",
            br#"{"v":1}"#,
            br#"{"v":"1"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_time_or_a_pid_without_start_time_is_malformed() {
        let bad_ts = README_LINE.replace("2026-11-29T17:14:53.774Z", "yesterday");
        assert!(matches!(
            parse(bad_ts.as_bytes()),
            Err(LineError::Malformed(m)) if m.contains("yesterday")
        ));
        let no_start = README_LINE.replace(r#""start_time":83037"#, r#""start_time":null"#);
        assert!(matches!(
            parse(no_start.as_bytes()),
            Err(LineError::Malformed(m)) if m.contains("start_time")
        ));
    }

    #[test]
    fn negative_or_fractional_counters_are_malformed() {
        for bad in [
            r#""rx_bytes":-1"#,
            r#""rx_bytes":1.5"#,
            r#""rx_bytes":null"#,
        ] {
            let text = README_LINE.replace(r#""rx_bytes":101184"#, bad);
            assert!(
                matches!(parse(text.as_bytes()), Err(LineError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
