//! Configuration in stages: parse flags, read the optional TOML file, apply flag overrides,
//! validate. All of it happens before anything is opened; any problem is a [`ConfigError`],
//! which `main` turns into a message and exit code 64.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Default configuration file; a missing default file is not an error.
pub const DEFAULT_CONFIG: &str = "/etc/pidcap/pidcap.toml";
pub const DEFAULT_USAGE_LOG: &str = "/var/log/pidcap/usage.jsonl";
/// Members of this group see every process on the query socket (created by
/// `systemd/pidcap.sysusers`); a missing default group is a warning, not an error.
pub const DEFAULT_SOCKET_GROUP: &str = "pidcap";
/// Anyone may connect; what each caller sees is decided from its credentials.
pub const DEFAULT_SOCKET_MODE: u32 = 0o666;
/// Query clients served at once (lowered at start if the fd limit needs it).
pub const DEFAULT_MAX_CLIENTS: usize = 256;
/// How long a query connection may sit without a request.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: &str = "60s";
/// Default state directory (counter checkpoints) when systemd gives none
/// (`$STATE_DIRECTORY`, set by the unit's `StateDirectory=`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pidcap";
/// Every interface (LINUX_SLL2).
pub const DEFAULT_INTERFACE: &str = "any";
/// Headers are enough: sizes come from the IP header.
pub const DEFAULT_SNAPLEN: i32 = 256;
pub const DEFAULT_CAPTURE_TIMEOUT: &str = "100ms";
/// The kernel capture ring.
pub const DEFAULT_BUFFER_SIZE: &str = "16MiB";
pub const DEFAULT_LOG_INTERVAL: &str = "10s";
pub const DEFAULT_REFRESH_INTERVAL: &str = "1s";
pub const DEFAULT_RETENTION: &str = "10m";
pub const DEFAULT_MAX_FLOWS: usize = 65_536;
pub const DEFAULT_PENDING_TIMEOUT: &str = "2s";
pub const DEFAULT_PENDING_MAX: usize = 100_000;
/// Processes (and units, containers, users) exported with a series of their own; the rest
/// are summed into one `other` series per family.
pub const DEFAULT_METRICS_TOP: usize = 100;
/// The port the README and the example config suggest for `metrics_listen`.
pub const METRICS_PORT: u16 = 9469;

// The help text and README's option table quote these defaults; `tests::defaults_are_quoted`
// fails when one of them says otherwise.

/// Every setting, written once: as a command-line flag (clap) and as the same key of the
/// configuration file (serde; unknown keys are errors). A flag overrides the file's key.
/// `--config` is a flag only; the three on/off settings are `--no-…` flags and boolean keys.
#[derive(Debug, Default, Parser, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(
    name = "pidcapd",
    version,
    about = "Attributes every captured packet to the process that owns its socket."
)]
pub struct Flags {
    /// Interface to capture on, or `any` for all of them [default: any]
    #[arg(long, short = 'i', value_name = "IFACE|any")]
    pub interface: Option<String>,
    /// BPF filter applied in the kernel (tcpdump syntax)
    #[arg(long, value_name = "BPF")]
    pub filter: Option<String>,
    /// Bytes captured per packet; headers are enough, lengths come from the IP header [default: 256]
    #[arg(long, value_name = "N")]
    pub snaplen: Option<i32>,
    /// Longest time libpcap holds captured packets before handing them over [default: 100ms]
    #[arg(long, value_name = "DUR")]
    pub capture_timeout: Option<String>,
    /// Kernel capture buffer, in bytes or with a unit (e.g. 32MiB) [default: 16MiB]
    #[arg(long, value_name = "SIZE")]
    pub buffer_size: Option<Size>,
    /// Query socket path [default: /run/pidcap/pidcap.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Group owning the query socket; its members (and root) see every process, others only
    /// their own. Empty for none [default: pidcap]
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Query socket file mode, octal [default: 0666]
    #[arg(long, value_name = "MODE")]
    pub socket_mode: Option<String>,
    /// Query clients served at once [default: 256]
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,
    /// How long a query connection may wait without a request before it is closed [default: 60s]
    #[arg(long, value_name = "DUR")]
    pub client_idle_timeout: Option<String>,
    /// Usage log path (JSON lines) [default: /var/log/pidcap/usage.jsonl]
    #[arg(long, value_name = "PATH")]
    pub usage_log: Option<PathBuf>,
    /// Directory for counter checkpoints, so a restarted daemon continues its totals
    /// [default: $STATE_DIRECTORY, else /var/lib/pidcap]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Do not fsync the usage log and the checkpoint after each write (faster on slow
    /// disks; a power loss may then lose more than one interval)
    #[arg(long)]
    #[serde(skip)]
    pub no_log_fsync: bool,
    /// The file's spelling of `--no-log-fsync`: `log_fsync = false`.
    #[arg(skip)]
    pub log_fsync: Option<bool>,
    /// How often the usage log is written, e.g. 10s, 1m [default: 10s]
    #[arg(long, value_name = "DUR")]
    pub log_interval: Option<String>,
    /// How often the socket table is fully refreshed [default: 1s]
    #[arg(long, value_name = "DUR")]
    pub refresh_interval: Option<String>,
    /// How long an exited process's counters are kept after they are logged [default: 10m]
    #[arg(long, value_name = "DUR")]
    pub retention: Option<String>,
    /// Flows whose attribution is cached; bounds memory under a flood of new flows [default: 65536]
    #[arg(long, value_name = "N")]
    pub max_flows: Option<usize>,
    /// How long a packet whose owner is unknown waits for a refresh before it counts as unknown [default: 2s]
    #[arg(long, value_name = "DUR")]
    pub pending_timeout: Option<String>,
    /// Most packet directions waiting for their owner at once; 0 disables late credit [default: 100000]
    #[arg(long, value_name = "N")]
    pub pending_max: Option<usize>,
    /// Do not read the kernel's socket tracepoints (the socket tracer: credits TCP
    /// connections that live a millisecond; costs one kernel event per TCP send/receive)
    #[arg(long)]
    #[serde(skip)]
    pub no_socket_tracer: bool,
    /// The file's spelling of `--no-socket-tracer`: `socket_tracer = false`.
    #[arg(skip)]
    pub socket_tracer: Option<bool>,
    /// Never trace route lookups (by default a thread whose connected UDP sockets close
    /// before they can be read has them traced for 30 s: its later connects are then named
    /// in the kernel; costs that thread one kernel event per route lookup)
    #[arg(long)]
    #[serde(skip)]
    pub no_route_tracing: bool,
    /// The file's spelling of `--no-route-tracing`: `route_tracing = false`.
    #[arg(skip)]
    pub route_tracing: Option<bool>,
    /// Which network namespaces are captured: `home` (the host's interfaces, where every
    /// container's traffic to the host and the outside passes), or `all` (also each other
    /// namespace's own loopback; needs CAP_SYS_ADMIN) [default: home]
    #[arg(long, value_name = "home|all")]
    pub namespaces: Option<String>,
    /// Serve Prometheus metrics over HTTP on this address, e.g. 127.0.0.1:9469 (a
    /// non-loopback address is served, with a warning) [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Processes, units, containers and users with a metrics series of their own (by total
    /// bytes); the rest are summed into one `other` series per family [default: 100]
    #[arg(long, value_name = "N")]
    pub metrics_top: Option<usize>,
    /// Configuration file (TOML) [default: /etc/pidcap/pidcap.toml if it exists]
    #[arg(long, short = 'c', value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Replay a pcap/pcapng file through the pipeline instead of capturing, then exit
    #[arg(long, value_name = "FILE")]
    pub pcap_file: Option<PathBuf>,
}

/// A size: bytes, or text with a unit (`16MiB`); the file may give either, a flag text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(i64),
    Text(String),
}

impl std::str::FromStr for Size {
    type Err = std::convert::Infallible;

    /// Text is checked when the configuration is validated, so that the error names its key.
    fn from_str(text: &str) -> Result<Size, Self::Err> {
        Ok(Size::Text(text.to_string()))
    }
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub interface: String,
    pub filter: Option<String>,
    pub snaplen: i32,
    pub capture_timeout: Duration,
    pub buffer_size: i32,
    pub socket: PathBuf,
    /// The query socket's group; `None` when configured empty (only root sees everything).
    pub socket_group: Option<String>,
    /// Whether `socket_group` was configured (a missing group is then an error, not a
    /// warning).
    pub socket_group_required: bool,
    pub socket_mode: u32,
    pub max_clients: usize,
    pub client_idle_timeout: Duration,
    pub usage_log: PathBuf,
    /// Where counter checkpoints go (live capture only).
    pub state_dir: PathBuf,
    /// fsync the usage log and the checkpoint after each write.
    pub log_fsync: bool,
    pub log_interval: Duration,
    pub refresh_interval: Duration,
    pub retention: Duration,
    pub max_flows: usize,
    pub pending_timeout: Duration,
    pub pending_max: usize,
    /// Read the kernel's socket tracepoints (live capture only).
    pub socket_tracer: bool,
    /// Let the socket tracer trace the route lookups of threads whose connected sockets
    /// close before they can be read.
    pub route_tracing: bool,
    /// Also capture each other network namespace's own loopback.
    pub namespaces: Namespaces,
    pub pcap_file: Option<PathBuf>,
    /// Where Prometheus metrics are served; `None`: not at all.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Series per metrics family besides `other`.
    pub metrics_top: usize,
}

/// Which network namespaces the daemon captures in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Namespaces {
    /// Its own only: every interface of the host, so every packet between a container and
    /// the host or the outside; not what stays inside a container (its own loopback).
    #[default]
    Home,
    /// Its own, and the loopback interface inside every other namespace a process is in.
    All,
}

/// Parses `home` or `all`.
fn namespaces(value: Option<String>) -> Result<Namespaces, ConfigError> {
    match value.as_deref().map(str::trim) {
        None | Some("home") => Ok(Namespaces::Home),
        Some("all") => Ok(Namespaces::All),
        Some(other) => Err(invalid(
            "namespaces",
            format!("{other:?} is neither \"home\" nor \"all\""),
        )),
    }
}

/// A configuration problem, named precisely enough to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Reads the config file named by `flags` (or the default one if it exists), applies the
    /// flags over it and validates the result. Opens nothing but the config file.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read_file(Path::new(DEFAULT_CONFIG))?,
            None => Flags::default(),
        };
        Config::merge(file, flags)
    }

    fn merge(file: Flags, flags: Flags) -> Result<Config, ConfigError> {
        let buffer_size = match flags.buffer_size.or(file.buffer_size) {
            Some(Size::Bytes(n)) => i64_to_size(n)?,
            Some(Size::Text(text)) => parse_size(&text)?,
            None => parse_size(DEFAULT_BUFFER_SIZE)?,
        };
        let config = Config {
            interface: flags
                .interface
                .or(file.interface)
                .unwrap_or_else(|| DEFAULT_INTERFACE.into()),
            filter: flags.filter.or(file.filter),
            snaplen: flags.snaplen.or(file.snaplen).unwrap_or(DEFAULT_SNAPLEN),
            capture_timeout: duration(
                "capture_timeout",
                flags.capture_timeout.or(file.capture_timeout),
                DEFAULT_CAPTURE_TIMEOUT,
            )?,
            buffer_size,
            socket: flags
                .socket
                .or(file.socket)
                .unwrap_or_else(|| pidcap_proto::DEFAULT_SOCKET.into()),
            socket_group_required: flags.socket_group.is_some() || file.socket_group.is_some(),
            socket_group: socket_group(flags.socket_group.or(file.socket_group)),
            socket_mode: socket_mode(flags.socket_mode.or(file.socket_mode))?,
            max_clients: flags
                .max_clients
                .or(file.max_clients)
                .unwrap_or(DEFAULT_MAX_CLIENTS),
            client_idle_timeout: duration(
                "client_idle_timeout",
                flags.client_idle_timeout.or(file.client_idle_timeout),
                DEFAULT_CLIENT_IDLE_TIMEOUT,
            )?,
            usage_log: flags
                .usage_log
                .or(file.usage_log)
                .unwrap_or_else(|| DEFAULT_USAGE_LOG.into()),
            state_dir: flags
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(default_state_dir),
            log_fsync: !flags.no_log_fsync && file.log_fsync.unwrap_or(true),
            log_interval: duration(
                "log_interval",
                flags.log_interval.or(file.log_interval),
                DEFAULT_LOG_INTERVAL,
            )?,
            refresh_interval: duration(
                "refresh_interval",
                flags.refresh_interval.or(file.refresh_interval),
                DEFAULT_REFRESH_INTERVAL,
            )?,
            retention: duration(
                "retention",
                flags.retention.or(file.retention),
                DEFAULT_RETENTION,
            )?,
            max_flows: flags
                .max_flows
                .or(file.max_flows)
                .unwrap_or(DEFAULT_MAX_FLOWS),
            pending_timeout: duration(
                "pending_timeout",
                flags.pending_timeout.or(file.pending_timeout),
                DEFAULT_PENDING_TIMEOUT,
            )?,
            pending_max: flags
                .pending_max
                .or(file.pending_max)
                .unwrap_or(DEFAULT_PENDING_MAX),
            socket_tracer: !flags.no_socket_tracer && file.socket_tracer.unwrap_or(true),
            route_tracing: !flags.no_route_tracing && file.route_tracing.unwrap_or(true),
            namespaces: namespaces(flags.namespaces.or(file.namespaces))?,
            pcap_file: flags.pcap_file.or(file.pcap_file),
            metrics_listen: metrics_listen(flags.metrics_listen.or(file.metrics_listen))?,
            metrics_top: flags
                .metrics_top
                .or(file.metrics_top)
                .unwrap_or(DEFAULT_METRICS_TOP),
        };
        config.validate()?;
        Ok(config)
    }

    /// The bounds of every key, as a table: the first key out of bounds is the error.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.interface.is_empty() || self.interface.len() > 15 {
            return Err(invalid(
                "interface",
                "must be an interface name (1 to 15 characters) or `any`",
            ));
        }
        within("snaplen", self.snaplen, 64..=262_144)?;
        if self.buffer_size < (1 << 20) {
            return Err(invalid("buffer_size", "must be at least 1MiB"));
        }
        span_within("capture_timeout", self.capture_timeout, MS, SECOND)?;
        span_within("log_interval", self.log_interval, MS * 100, Duration::MAX)?;
        span_within(
            "refresh_interval",
            self.refresh_interval,
            MS * 100,
            Duration::MAX,
        )?;
        within("max_flows", self.max_flows, 1_024..=16_777_216)?;
        span_within(
            "pending_timeout",
            self.pending_timeout,
            Duration::ZERO,
            SECOND * 60,
        )?;
        within("pending_max", self.pending_max, 0..=10_000_000)?;
        within("max_clients", self.max_clients, 1..=65_536)?;
        within("metrics_top", self.metrics_top, 0..=10_000)?;
        span_within(
            "client_idle_timeout",
            self.client_idle_timeout,
            MS * 100,
            SECOND * 86_400,
        )?;
        check_path("socket", &self.socket)?;
        check_path("usage_log", &self.usage_log)?;
        check_dir("state_dir", &self.state_dir)?;
        if let Some(f) = &self.filter {
            if f.trim().is_empty() {
                return Err(invalid(
                    "filter",
                    "is empty; leave it out to capture everything",
                ));
            }
        }
        if self.namespaces == Namespaces::All && self.pcap_file.is_some() {
            return Err(invalid(
                "namespaces",
                "\"all\" captures live inside each namespace; it cannot go with pcap_file",
            ));
        }
        if let Some(p) = &self.pcap_file {
            if !p.is_file() {
                return Err(invalid(
                    "pcap_file",
                    format!("{} is not a readable file", p.display()),
                ));
            }
        }
        Ok(())
    }
}

/// Parses `IP:PORT` (`127.0.0.1:9469`, `[::1]:9469`); no host names, so nothing is looked up
/// before the daemon starts. Unset or empty: metrics are off.
fn metrics_listen(value: Option<String>) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let Some(text) = value.filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    text.trim().parse().map(Some).map_err(|_| {
        invalid(
            "metrics_listen",
            format!(
                "{text:?} is not an IP address and port; use e.g. \"127.0.0.1:{METRICS_PORT}\" \
                 or \"[::1]:{METRICS_PORT}\""
            ),
        )
    })
}

/// The configured group, the default when unset, `None` when set empty.
fn socket_group(value: Option<String>) -> Option<String> {
    let name = value.unwrap_or_else(|| DEFAULT_SOCKET_GROUP.into());
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Parses an octal file mode (`0666`, `666` or `0o666`) of at most `0777`.
fn socket_mode(value: Option<String>) -> Result<u32, ConfigError> {
    let Some(text) = value else {
        return Ok(DEFAULT_SOCKET_MODE);
    };
    let digits = text.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => Err(invalid(
            "socket_mode",
            format!("{text:?} is not an octal file mode; use e.g. \"0666\" or \"0660\""),
        )),
    }
}

impl Config {
    /// How to (re)open the live capture; `None` when replaying a file.
    pub fn live_capture(&self) -> Option<pidcap_capture::LiveConfig> {
        self.pcap_file
            .is_none()
            .then(|| pidcap_capture::LiveConfig {
                interface: self.interface.clone(),
                snaplen: self.snaplen,
                buffer_size: self.buffer_size,
                timeout_ms: self.capture_timeout.as_millis() as i32,
                filter: self.filter.clone(),
                ..pidcap_capture::LiveConfig::default()
            })
    }
}

/// The first path of systemd's `$STATE_DIRECTORY` (colon-separated), else
/// [`DEFAULT_STATE_DIR`].
fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| {
            let first = dirs.to_str()?.split(':').next()?.to_string();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into())
}

fn read_file(path: &Path) -> Result<Flags, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.into(),
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

fn duration(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.into());
    humantime::parse_duration(&text).map_err(|e| {
        invalid(
            key,
            format!("{text:?} is not a duration ({e}); use e.g. 500ms, 10s, 1m"),
        )
    })
}

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

fn within<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    let (min, max) = range.into_inner();
    Err(invalid(
        key,
        format!("{value} is out of range {min}..={max}"),
    ))
}

/// `min..=max`; `Duration::MAX` means no upper bound.
fn span_within(
    key: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    let bound = if value < min {
        format!("must be at least {}", humantime::format_duration(min))
    } else if value > max {
        format!("must be at most {}", humantime::format_duration(max))
    } else {
        return Ok(());
    };
    Err(invalid(key, bound))
}

fn check_path(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return Err(invalid(
            key,
            format!("{:?} is not a file path", path.display().to_string()),
        ));
    }
    if path.is_dir() {
        return Err(invalid(key, format!("{} is a directory", path.display())));
    }
    Ok(())
}

/// A directory path: not empty, and not an existing file (it is created when missing).
fn check_dir(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(key, "is empty"));
    }
    if path.exists() && !path.is_dir() {
        return Err(invalid(
            key,
            format!("{} exists and is not a directory", path.display()),
        ));
    }
    Ok(())
}

fn i64_to_size(n: i64) -> Result<i32, ConfigError> {
    i32::try_from(n).map_err(|_| {
        invalid(
            "buffer_size",
            format!("{n} is out of range (at most 2GiB - 1)"),
        )
    })
}

/// Parses `123`, `64KiB`, `16MiB`, `1GiB` (also KB/MB/GB as powers of 1000, K/M/G as binary).
fn parse_size(text: &str) -> Result<i32, ConfigError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().map_err(|_| {
        invalid(
            "buffer_size",
            format!("{text:?} is not a size; use e.g. 16MiB"),
        )
    })?;
    let mult: i64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(invalid(
                "buffer_size",
                format!("unknown unit {other:?}; use B, KiB, MiB or GiB"),
            ))
        }
    };
    i64_to_size(n.saturating_mul(mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("pidcapd").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_sensible() {
        let c = Config::merge(Flags::default(), Flags::default()).unwrap();
        assert_eq!(c.interface, "any");
        assert_eq!(c.snaplen, 256);
        assert_eq!(c.buffer_size, 16 << 20);
        assert_eq!(c.log_interval, Duration::from_secs(10));
        assert_eq!(c.refresh_interval, Duration::from_secs(1));
        assert_eq!(c.retention, Duration::from_secs(600));
        assert_eq!(c.socket, PathBuf::from("/run/pidcap/pidcap.sock"));
        assert_eq!(c.usage_log, PathBuf::from(DEFAULT_USAGE_LOG));
        assert!(c.socket_tracer);
        assert!(c.route_tracing);
    }

    #[test]
    fn the_socket_tracer_is_turned_off_by_the_file_or_the_flag() {
        let off: Flags = toml::from_str("socket_tracer = false").unwrap();
        assert!(!Config::merge(off, Flags::default()).unwrap().socket_tracer);
        let on: Flags = toml::from_str("socket_tracer = true").unwrap();
        assert!(
            !Config::merge(on, flags(&["--no-socket-tracer"]))
                .unwrap()
                .socket_tracer
        );
        assert!(toml::from_str::<Flags>("socket_tracer = \"off\"").is_err());
    }

    #[test]
    fn route_tracing_is_turned_off_by_the_file_or_the_flag() {
        let off: Flags = toml::from_str("route_tracing = false").unwrap();
        let c = Config::merge(off, Flags::default()).unwrap();
        assert!(!c.route_tracing && c.socket_tracer);
        let on: Flags = toml::from_str("route_tracing = true").unwrap();
        let c = Config::merge(on, flags(&["--no-route-tracing"])).unwrap();
        assert!(!c.route_tracing && c.socket_tracer);
        assert!(toml::from_str::<Flags>("route_tracing = 1").is_err());
    }

    #[test]
    fn namespaces_are_home_unless_all_is_asked_for() {
        let c = Config::merge(Flags::default(), Flags::default()).unwrap();
        assert_eq!(c.namespaces, Namespaces::Home);
        let file: Flags = toml::from_str("namespaces = \"all\"").unwrap();
        let c = Config::merge(file, Flags::default()).unwrap();
        assert_eq!(c.namespaces, Namespaces::All);
        let file: Flags = toml::from_str("namespaces = \"all\"").unwrap();
        let c = Config::merge(file, flags(&["--namespaces", "home"])).unwrap();
        assert_eq!(c.namespaces, Namespaces::Home, "the flag wins");
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        let c = Config::merge(Flags::default(), Flags::default()).unwrap();
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.metrics_top, DEFAULT_METRICS_TOP);
        let file: Flags =
            toml::from_str("metrics_listen = \"127.0.0.1:9469\"\nmetrics_top = 5").unwrap();
        let c = Config::merge(file, flags(&["--metrics-listen", "[::1]:0"])).unwrap();
        assert_eq!(
            c.metrics_listen,
            Some("[::1]:0".parse().unwrap()),
            "the flag wins"
        );
        assert_eq!(c.metrics_top, 5);
        let empty: Flags = toml::from_str("metrics_listen = \"\"").unwrap();
        assert_eq!(
            Config::merge(empty, Flags::default())
                .unwrap()
                .metrics_listen,
            None
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file: Flags = toml::from_str(
            "interface = \"eth0\"\nsnaplen = 128\nbuffer_size = \"32MiB\"\nlog_interval = \"5s\"",
        )
        .unwrap();
        let c = Config::merge(file, flags(&["--snaplen", "512", "--log-interval", "2s"])).unwrap();
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.snaplen, 512);
        assert_eq!(c.buffer_size, 32 << 20);
        assert_eq!(c.log_interval, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(&[&str], &str)] = &[
            (&["--snaplen", "10"], "snaplen"),
            (&["--log-interval", "soon"], "log_interval"),
            (&["--refresh-interval", "1ms"], "refresh_interval"),
            (&["--buffer-size", "12 parsecs"], "buffer_size"),
            (&["--interface", "an-interface-name-too-long"], "interface"),
            (&["--socket", "/"], "socket"),
            (&["--pcap-file", "/nonexistent/file.pcap"], "pcap_file"),
            (&["--max-flows", "10"], "max_flows"),
            (&["--capture-timeout", "5s"], "capture_timeout"),
            (&["--pending-timeout", "5m"], "pending_timeout"),
            (&["--pending-max", "99999999"], "pending_max"),
            (&["--max-clients", "0"], "max_clients"),
            (&["--client-idle-timeout", "1ms"], "client_idle_timeout"),
            (&["--client-idle-timeout", "2d"], "client_idle_timeout"),
            (&["--socket-mode", "0999"], "socket_mode"),
            (&["--socket-mode", "01777"], "socket_mode"),
            (&["--socket-mode", "rw"], "socket_mode"),
            (&["--namespaces", "containers"], "namespaces"),
            (&["--metrics-listen", "localhost:9469"], "metrics_listen"),
            (&["--metrics-listen", "127.0.0.1"], "metrics_listen"),
            (&["--metrics-listen", "127.0.0.1:99999"], "metrics_listen"),
            (&["--metrics-top", "10001"], "metrics_top"),
            (
                &["--namespaces", "all", "--pcap-file", "/dev/null"],
                "namespaces",
            ),
        ];
        for (args, key) in cases {
            let err = Config::merge(Flags::default(), flags(args)).unwrap_err();
            assert!(err.to_string().starts_with(key), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_query_socket_is_open_to_all_with_a_group_that_sees_everything() {
        let c = Config::merge(Flags::default(), Flags::default()).unwrap();
        assert_eq!(c.socket_group.as_deref(), Some(DEFAULT_SOCKET_GROUP));
        assert!(
            !c.socket_group_required,
            "a missing default group only warns"
        );
        assert_eq!(c.socket_mode, 0o666);
        assert_eq!(c.max_clients, DEFAULT_MAX_CLIENTS);
        assert_eq!(c.client_idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn socket_access_keys_come_from_the_file_or_the_flags() {
        let file: Flags = toml::from_str(
            "socket_group = \"adm\"\nsocket_mode = \"0660\"\nmax_clients = 16\nclient_idle_timeout = \"5s\"",
        )
        .unwrap();
        let c = Config::merge(file, flags(&["--socket-mode", "0o640"])).unwrap();
        assert_eq!(c.socket_group.as_deref(), Some("adm"));
        assert!(c.socket_group_required);
        assert_eq!(c.socket_mode, 0o640);
        assert_eq!(c.max_clients, 16);
        assert_eq!(c.client_idle_timeout, Duration::from_secs(5));
        let none = Config::merge(Flags::default(), flags(&["--socket-group", ""])).unwrap();
        assert_eq!(none.socket_group, None);
        assert!(toml::from_str::<Flags>("socket_mode = 438").is_err());
    }

    /// One struct holds both spellings: the file accepts keys, not the `--no-…` flags or
    /// `--config`, and the command line accepts flags, not the file's boolean keys.
    #[test]
    fn flags_and_file_keys_are_one_list_with_their_own_spellings() {
        for flag_only in [
            "no_log_fsync = true",
            "no_socket_tracer = true",
            "config = \"x\"",
        ] {
            assert!(toml::from_str::<Flags>(flag_only).is_err(), "{flag_only}");
        }
        for key_only in [["--log-fsync", "false"], ["--socket-tracer", "false"]] {
            let args = std::iter::once("pidcapd").chain(key_only);
            assert!(Flags::try_parse_from(args).is_err(), "{key_only:?}");
        }
        let ints: Flags = toml::from_str("buffer_size = 2097152").unwrap();
        let text: Flags = toml::from_str("buffer_size = \"2MiB\"").unwrap();
        for file in [ints, text] {
            let c = Config::merge(file, Flags::default()).unwrap();
            assert_eq!(c.buffer_size, 2 << 20);
        }
        let err = toml::from_str::<Flags>("buffer_size = true").unwrap_err();
        assert!(err.to_string().contains("buffer_size"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pidcap.toml");
        std::fs::write(&path, "interfce = \"lo\"\n").unwrap();
        let err = read_file(&path).unwrap_err();
        assert!(err.to_string().contains("interfce"), "{err}");
    }

    /// Each flag's help text and README's option table quote the default the code uses.
    #[test]
    fn defaults_are_quoted() {
        use clap::CommandFactory;
        let defaults: &[(&str, String)] = &[
            ("interface", DEFAULT_INTERFACE.into()),
            ("snaplen", DEFAULT_SNAPLEN.to_string()),
            ("capture-timeout", DEFAULT_CAPTURE_TIMEOUT.into()),
            ("buffer-size", DEFAULT_BUFFER_SIZE.into()),
            ("socket", pidcap_proto::DEFAULT_SOCKET.into()),
            ("socket-group", DEFAULT_SOCKET_GROUP.into()),
            ("socket-mode", format!("0{DEFAULT_SOCKET_MODE:o}")),
            ("max-clients", DEFAULT_MAX_CLIENTS.to_string()),
            ("client-idle-timeout", DEFAULT_CLIENT_IDLE_TIMEOUT.into()),
            ("usage-log", DEFAULT_USAGE_LOG.into()),
            ("log-interval", DEFAULT_LOG_INTERVAL.into()),
            ("refresh-interval", DEFAULT_REFRESH_INTERVAL.into()),
            ("retention", DEFAULT_RETENTION.into()),
            ("max-flows", DEFAULT_MAX_FLOWS.to_string()),
            ("pending-timeout", DEFAULT_PENDING_TIMEOUT.into()),
            ("pending-max", DEFAULT_PENDING_MAX.to_string()),
            ("namespaces", "home".into()),
            ("metrics-listen", "off".into()),
            ("metrics-top", DEFAULT_METRICS_TOP.to_string()),
        ];
        let command = Flags::command();
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
                .unwrap();
        for (flag, default) in defaults {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("no --{flag}"));
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(
                help.contains(&format!("[default: {default}]")),
                "--{flag}: help says {help:?}, the code's default is {default}"
            );
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{flag}` |")))
                .unwrap_or_else(|| panic!("README has no row for --{flag}"));
            let cell = row.split('|').nth(2).unwrap_or("").trim().trim_matches('`');
            assert_eq!(cell, default, "README's default for --{flag}: {row}");
        }
        let defaults = Config::merge(Flags::default(), Flags::default()).unwrap();
        assert_eq!(defaults.buffer_size, 16 << 20, "{DEFAULT_BUFFER_SIZE}");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("4GiB").is_err());
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// The shipped example must stay loadable: it is what the README tells people to install.
    #[test]
    fn the_shipped_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../systemd/pidcap.toml.example");
        let flags = Flags {
            config: Some(path),
            ..Flags::default()
        };
        let config = Config::load(flags).unwrap();
        assert_eq!(config.interface, "any");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../systemd/pidcap.toml.example"),
        )
        .unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n");
        let uncommented: String = uncommented
            .lines()
            .filter(|l| l.contains(" = "))
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string() + "\n")
            .collect();
        let file: Flags = toml::from_str(&uncommented).unwrap();
        let c = Config::merge(file, Flags::default()).unwrap();
        assert_eq!(c.filter.as_deref(), Some("not port 22"));
        assert_eq!(c.buffer_size, 16 << 20);
    }
}
