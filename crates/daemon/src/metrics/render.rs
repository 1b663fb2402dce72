//! An [`Exposition`] as text: OpenMetrics (prometheus-client's encoder), or the classic
//! Prometheus text format 0.0.4 derived from it for clients that do not ask for OpenMetrics
//! (curl, `promtool check metrics`, which reads a counter family's HELP and TYPE under its
//! `_total` name).
//!
//! Invariants: every label value passes through [`Text`], which escapes `\`, `"` and line
//! feeds and bounds its length, so a process name (untrusted: any byte but NUL) can neither
//! end a line nor forge a series; no line the encoder writes holds a raw line feed, which is
//! what makes the line-wise 0.0.4 rewrite safe. Nothing here does I/O or takes a lock.

use std::fmt::Write;
use std::sync::atomic::AtomicU64;

use pidcap_core::Counters;
use pidcap_proto as proto;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The longest label value kept, in bytes (unit names and cgroup-derived keys can be long).
pub const MAX_LABEL_VALUE: usize = 256;

/// The label value of the `other` series (`pid="other"`, `unit="other"`, …).
pub const OTHER: &str = "other";

/// What one scrape exports, copied out of the daemon's state and ranked.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub stats: proto::Stats,
    /// The top N processes, biggest first.
    pub processes: Vec<(ProcessLabels, Counters)>,
    /// Every other process (see [`crate::metrics::ranking`]).
    pub other_processes: Counters,
    /// Per unit, container and user.
    pub groups: Vec<GroupFamily>,
}

/// The labels of one process series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessLabels {
    pub pid: String,
    pub comm: String,
    pub unit: String,
    pub container: String,
    pub user: String,
}

/// One per-group family (`pidcap_unit_bytes_total{unit=…}`): its top N and `other`.
#[derive(Debug, Clone)]
pub struct GroupFamily {
    /// The family's name and its label: `unit`, `container` or `user`.
    pub label: &'static str,
    pub top: Vec<(String, Counters)>,
    pub other: Counters,
}

/// Which text format a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// A label value, escaped for the text formats and cut to [`MAX_LABEL_VALUE`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text(String);

impl Text {
    pub fn new(raw: &str) -> Text {
        let mut out = String::with_capacity(raw.len().min(MAX_LABEL_VALUE));
        for c in raw.chars() {
            let escaped: &str = match c {
                '\\' => "\\\\",
                '"' => "\\\"",
                '\n' => "\\n",
                _ => "",
            };
            let len = if escaped.is_empty() {
                c.len_utf8()
            } else {
                escaped.len()
            };
            if out.len() + len > MAX_LABEL_VALUE {
                break;
            }
            if escaped.is_empty() {
                out.push(c);
            } else {
                out.push_str(escaped);
            }
        }
        Text(out)
    }
}

impl EncodeLabelValue for Text {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

type Labels = Vec<(&'static str, Text)>;
type Counters64 = Family<Labels, Counter<u64>>;
type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;
type IntGauges = Family<Labels, Gauge<i64>>;

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, Text::new(v))).collect()
}

fn counters(registry: &mut Registry, name: &str, help: &str) -> Counters64 {
    let family = Counters64::default();
    registry.register(name, help, family.clone());
    family
}

fn gauges(registry: &mut Registry, name: &str, help: &str) -> Gauges {
    let family = Gauges::default();
    registry.register(name, help, family.clone());
    family
}

/// A counter without labels of its own.
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    counters(registry, name, help)
        .get_or_create(&Vec::new())
        .inc_by(value);
}

fn int_gauges(registry: &mut Registry, name: &str, help: &str) -> IntGauges {
    let family = IntGauges::default();
    registry.register(name, help, family.clone());
    family
}

/// An integer gauge without labels of its own (a count, or 0/1 for a state).
fn int_gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    int_gauges(registry, name, help)
        .get_or_create(&Vec::new())
        .set(i64::try_from(value).unwrap_or(i64::MAX));
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    gauges(registry, name, help)
        .get_or_create(&Vec::new())
        .set(value);
}

/// Adds `c` to the bytes and packets families, per direction, under `base` labels. Series
/// with equal labels add up (two processes whose pid was reused within the retention).
fn directions(bytes: &Counters64, packets: &Counters64, base: &Labels, c: &Counters) {
    for (direction, b, p) in [
        ("rx", c.rx_bytes, c.rx_packets),
        ("tx", c.tx_bytes, c.tx_packets),
    ] {
        let mut set = base.clone();
        set.push(("direction", Text::new(direction)));
        bytes.get_or_create(&set).inc_by(b);
        packets.get_or_create(&set).inc_by(p);
    }
}

/// The exposition in `format`.
pub fn render(e: &Exposition, format: Format) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("pidcap");
    build_info(&mut registry);
    processes(&mut registry, e);
    for family in &e.groups {
        group(&mut registry, family);
    }
    capture(&mut registry, &e.stats);
    attribution(&mut registry, &e.stats);
    health(&mut registry, &e.stats);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(match format {
        Format::OpenMetrics => text,
        Format::Text => to_text_format(&text),
    })
}

fn build_info(registry: &mut Registry) {
    int_gauges(
        registry,
        "build_info",
        "The running pidcapd's version; always 1.",
    )
    .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
    .set(1);
}

fn processes(registry: &mut Registry, e: &Exposition) {
    let bytes = counters(
        registry,
        "process_bytes",
        "IP bytes credited to a process since it was first seen, per direction; the top \
         processes by total bytes (--metrics-top), and pid=\"other\" for all the rest.",
    );
    let packets = counters(
        registry,
        "process_packets",
        "IP packets credited to a process since it was first seen, per direction (the same \
         series as pidcap_process_bytes_total).",
    );
    for (p, c) in &e.processes {
        let base = labels(&[
            ("pid", &p.pid),
            ("comm", &p.comm),
            ("unit", &p.unit),
            ("container", &p.container),
            ("user", &p.user),
        ]);
        directions(&bytes, &packets, &base, c);
    }
    let other = labels(&[
        ("pid", OTHER),
        ("comm", ""),
        ("unit", ""),
        ("container", ""),
        ("user", ""),
    ]);
    directions(&bytes, &packets, &other, &e.other_processes);
}

fn group(registry: &mut Registry, family: &GroupFamily) {
    let label = family.label;
    let bytes = counters(
        registry,
        &format!("{label}_bytes"),
        &format!(
            "IP bytes credited to the processes of a {label}, per direction; the top \
             {label}s by total bytes, and {label}=\"other\" for all the rest."
        ),
    );
    let packets = counters(
        registry,
        &format!("{label}_packets"),
        &format!("IP packets credited to the processes of a {label}, per direction."),
    );
    for (key, c) in &family.top {
        directions(&bytes, &packets, &labels(&[(label, key)]), c);
    }
    directions(&bytes, &packets, &labels(&[(label, OTHER)]), &family.other);
}

fn captured(s: &proto::Stats) -> Counters {
    Counters {
        rx_bytes: s.rx_bytes,
        tx_bytes: s.tx_bytes,
        rx_packets: s.rx_packets,
        tx_packets: s.tx_packets,
    }
}

/// What was captured and how it was decided: captured = credited + unknown, per direction
/// (counting rule 5), since the daemon started.
fn capture(registry: &mut Registry, s: &proto::Stats) {
    let sets = [
        (
            "captured",
            "captured with a local source (tx) or destination (rx)",
            captured(s),
        ),
        (
            "credited",
            "credited to a process",
            Counters {
                rx_bytes: s.credited_rx_bytes,
                tx_bytes: s.credited_tx_bytes,
                rx_packets: s.credited_rx_packets,
                tx_packets: s.credited_tx_packets,
            },
        ),
        (
            "unknown",
            "in the unknown bucket (no owner found)",
            Counters {
                rx_bytes: s.unknown_rx_bytes,
                tx_bytes: s.unknown_tx_bytes,
                rx_packets: s.unknown_rx_packets,
                tx_packets: s.unknown_tx_packets,
            },
        ),
    ];
    for (name, what, c) in sets {
        let bytes = counters(
            registry,
            &format!("{name}_bytes"),
            &format!("IP bytes {what} since the daemon started, per direction."),
        );
        let packets = counters(
            registry,
            &format!("{name}_packets"),
            &format!("IP packets {what} since the daemon started, per direction."),
        );
        directions(&bytes, &packets, &Vec::new(), &c);
    }
    let libpcap = [
        ("pcap_received_packets", "libpcap's ps_recv (restarts when the capture is reopened).", s.pcap_received),
        ("pcap_dropped_packets", "libpcap's ps_drop: packets dropped because the capture buffer was full (restarts when the capture is reopened).", s.pcap_dropped),
        ("pcap_if_dropped_packets", "libpcap's ps_ifdrop: packets the interface dropped (restarts when the capture is reopened).", s.pcap_if_dropped),
        ("foreign_packets", "IP packets with neither end local.", s.foreign_packets),
        ("foreign_bytes", "IP bytes with neither end local.", s.foreign_bytes),
        ("transit_packets", "Copies of a local packet already counted on another interface.", s.transit_packets),
        ("transit_bytes", "Bytes of those copies.", s.transit_bytes),
        ("non_ip_packets", "Frames that carried no IP packet.", s.non_ip_packets),
        ("malformed_packets", "Frames too short or inconsistent to parse.", s.malformed_packets),
        ("capture_reopens", "Times the capture was reopened after its interface went away.", s.capture_reopens),
    ];
    for (name, help, value) in libpcap {
        counter(registry, name, help, value);
    }
    int_gauge(
        registry,
        "capture_down",
        "1 while the capture interface is gone (counting is paused).",
        u64::from(s.capture_down),
    );
}

/// Unknown bytes by reason, credited bytes by match quality, and what waits for an owner.
fn attribution(registry: &mut Registry, s: &proto::Stats) {
    let reasons = counters(
        registry,
        "unknown_reason_bytes",
        "Unknown IP bytes (both directions) per reason.",
    );
    let r = &s.unknown_reasons;
    for (reason, value) in [
        ("no_socket", r.no_socket),
        ("no_process", r.no_process),
        ("pending_expired", r.pending_expired),
        ("unsupported", r.unsupported),
    ] {
        reasons
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(value);
    }
    let matched = counters(
        registry,
        "credited_match_bytes",
        "Credited IP bytes (both directions) per match quality.",
    );
    let m = &s.credited_matched;
    for (quality, value) in [
        ("exact", m.exact),
        ("wildcard", m.wildcard),
        ("recent", m.recent),
        ("late", m.late),
        ("packet_sender", m.packet_sender),
    ] {
        matched
            .get_or_create(&labels(&[("quality", quality)]))
            .inc_by(value);
    }
    let pending = [
        (
            "pending_packets",
            "Packet directions waiting in the pending buffer for their owner (not yet counted).",
            s.pending_packets,
        ),
        ("pending_bytes", "Their bytes.", s.pending_bytes),
        (
            "processes_known",
            "Processes with counters (alive, or exited and kept for the retention).",
            s.processes_known,
        ),
        (
            "sockets_known",
            "Sockets in the socket table.",
            s.sockets_known,
        ),
    ];
    for (name, help, value) in pending {
        int_gauge(registry, name, help, value);
    }
    counter(
        registry,
        "pending_evicted",
        "Packet directions decided early because the pending buffer was full.",
        s.bounds.pending_evicted,
    );
}

/// Refresher, tracer and thread health.
fn health(registry: &mut Registry, s: &proto::Stats) {
    gauge(
        registry,
        "uptime_seconds",
        "Seconds since the daemon started.",
        s.uptime_s,
    );
    counter(
        registry,
        "refreshes",
        "Socket-table refreshes done.",
        s.refreshes,
    );
    counter(
        registry,
        "refresh_failures",
        "Refresh passes that failed (the previous table stayed in use).",
        s.refresh_failures,
    );
    gauge(
        registry,
        "refresh_last_duration_seconds",
        "Duration of the last socket-table refresh.",
        s.last_refresh_ms / 1000.0,
    );
    let side = &s.process_side;
    int_gauge(
        registry,
        "tracer_running",
        "1 while the socket tracer runs.",
        u64::from(side.tracer),
    );
    int_gauge(
        registry,
        "watcher_running",
        "1 while the process watcher runs.",
        u64::from(side.watcher),
    );
    counter(
        registry,
        "traced_claims",
        "Connections the socket tracer claimed for a process.",
        side.traced_claims,
    );
    counter(
        registry,
        "trace_events_lost",
        "Trace events the kernel dropped because a ring buffer was full.",
        side.trace_events_lost,
    );
    threads(registry, &s.threads);
}

fn threads(registry: &mut Registry, threads: &[proto::ThreadHealth]) {
    let running = int_gauges(
        registry,
        "thread_running",
        "1 while the daemon thread runs its loop.",
    );
    let stale = int_gauges(
        registry,
        "thread_stale",
        "1 when a running thread has not gone round its loop for 10 s (half the watchdog period under systemd).",
    );
    let age = gauges(
        registry,
        "thread_last_beat_age_seconds",
        "Seconds since a running thread last went round its loop.",
    );
    for t in threads {
        let set = labels(&[("thread", &t.name)]);
        running.get_or_create(&set).set(i64::from(t.running));
        stale.get_or_create(&set).set(i64::from(t.stale));
        if let Some(ms) = t.last_beat_ms {
            age.get_or_create(&set).set(ms as f64 / 1000.0);
        }
    }
}

/// OpenMetrics text as Prometheus text format 0.0.4: a counter family's HELP and TYPE
/// lines name it with its `_total` suffix, and there is no `# EOF`.
pub fn to_text_format(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len() + 1024);
    let mut lines = open_metrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            continue;
        }
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, text) = help.split_once(' ').unwrap_or((help, ""));
            let is_counter = lines
                .peek()
                .is_some_and(|next| *next == format!("# TYPE {name} counter"));
            if is_counter {
                let _ = writeln!(out, "# HELP {name}_total {text}");
                let _ = writeln!(out, "# TYPE {name}_total counter");
                lines.next();
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(rx: u64, tx: u64) -> Counters {
        Counters {
            rx_bytes: rx,
            tx_bytes: tx,
            rx_packets: 1,
            tx_packets: 2,
        }
    }

    fn stats() -> proto::Stats {
        let json = r#"{"uptime_s":1.5,"rx_packets":3,"rx_bytes":300,"tx_packets":2,"tx_bytes":200,
            "foreign_packets":0,"foreign_bytes":0,"credited_rx_bytes":250,"credited_tx_bytes":200,
            "credited_rx_packets":2,"credited_tx_packets":2,"unknown_rx_bytes":50,"unknown_tx_bytes":0,
            "unknown_rx_packets":1,"unknown_tx_packets":0,"non_ip_packets":0,"malformed_packets":0,
            "pcap_received":5,"pcap_dropped":0,"pcap_if_dropped":0,"sockets_known":4,
            "processes_known":2,"refreshes":7,"last_refresh_ms":1.25,"interface":"lo",
            "link_type":"EN10MB"}"#;
        serde_json::from_str(json).unwrap()
    }

    fn exposition() -> Exposition {
        Exposition {
            stats: stats(),
            processes: vec![(
                ProcessLabels {
                    pid: "42".into(),
                    comm: "evil\"}\nx 1".into(),
                    unit: "a.service".into(),
                    container: String::new(),
                    user: "root".into(),
                },
                bytes(250, 200),
            )],
            other_processes: bytes(0, 0),
            groups: ["unit", "container", "user"]
                .map(|label| GroupFamily {
                    label,
                    top: vec![("a.service".into(), bytes(250, 200))],
                    other: bytes(0, 0),
                })
                .into(),
        }
    }

    #[test]
    fn a_process_name_cannot_break_a_line_or_forge_a_series() {
        let text = render(&exposition(), Format::Text).unwrap();
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("pidcap_process_bytes_total{")
                    && l.contains("pid=\"42\"")
                    && l.contains("\"rx\"")
            })
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains(r#"comm="evil\"}\nx 1""#), "{line}");
        assert!(line.ends_with(" 250"), "{line}");
        assert!(!text.lines().any(|l| l.starts_with("x 1")), "{text}");
    }

    #[test]
    fn label_values_are_bounded() {
        let long = "x".repeat(1000);
        assert_eq!(Text::new(&long).0.len(), MAX_LABEL_VALUE);
        let quotes = "\"".repeat(1000);
        let cut = Text::new(&quotes).0;
        assert!(
            cut.len() <= MAX_LABEL_VALUE && cut.ends_with("\\\""),
            "an escape is never cut in half"
        );
    }

    #[test]
    fn open_metrics_ends_with_eof_and_the_text_format_names_counters_with_total() {
        let open = render(&exposition(), Format::OpenMetrics).unwrap();
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(
            open.contains("# TYPE pidcap_process_bytes counter"),
            "{open}"
        );
        let text = render(&exposition(), Format::Text).unwrap();
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE pidcap_process_bytes_total counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE pidcap_build_info gauge"), "{text}");
        assert!(
            text.contains(&format!(
                "pidcap_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(
            text.contains("pidcap_process_bytes_total{pid=\"other\""),
            "{text}"
        );
        assert!(
            text.contains("pidcap_unit_bytes_total{unit=\"other\",direction=\"rx\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("pidcap_unknown_reason_bytes_total{reason=\"no_socket\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("pidcap_captured_bytes_total{direction=\"rx\"} 300"),
            "{text}"
        );
    }

    #[test]
    fn conservation_holds_in_the_exported_counters() {
        let text = render(&exposition(), Format::Text).unwrap();
        let value = |name: &str| -> u64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name}: {text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        for dir in ["rx", "tx"] {
            let series =
                |family: &str| format!("pidcap_{family}_bytes_total{{direction=\"{dir}\"}}");
            assert_eq!(
                value(&series("captured")),
                value(&series("credited")) + value(&series("unknown")),
                "{dir}"
            );
        }
    }

    /// contrib/grafana/pidcap.json is valid JSON and queries only metrics pidcapd exports.
    #[test]
    fn the_grafana_dashboard_queries_exported_metrics() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../contrib/grafana/pidcap.json");
        let text = std::fs::read_to_string(path).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        let exposition = render(&exposition(), Format::Text).unwrap();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (at, _) in expr.match_indices("pidcap_") {
                    let name: String = expr[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        exposition.contains(&format!("# TYPE {name} ")),
                        "the dashboard queries {name}, which is not exported"
                    );
                    queried += 1;
                }
            }
        }
        assert!(queried >= 10, "{queried}");
    }
}
