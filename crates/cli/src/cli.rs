//! Command-line syntax. Usage errors exit with 2 (clap's default).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pidcap_proto::{DEFAULT_INTERVAL_MS, DEFAULT_SOCKET, MAX_INTERVAL_MS, MIN_INTERVAL_MS};

/// Ask the pidcap daemon which processes use the network.
#[derive(Debug, Parser)]
#[command(name = "pidcap", version)]
pub struct Cli {
    /// The daemon's query socket.
    #[arg(
        long,
        global = true,
        env = "PIDCAP_SOCKET",
        default_value = DEFAULT_SOCKET,
        value_name = "PATH"
    )]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List processes with their traffic, busiest first.
    Ps(PsArgs),
    /// Show live rates, redrawn every interval, until Ctrl-C.
    Top(TopArgs),
    /// Find the process owning a flow: PROTO LOCAL REMOTE (exit 1 when none).
    Lookup(LookupArgs),
    /// Show the daemon's capture and attribution counters.
    Stats(StatsArgs),
    /// Show one process with its command line and sockets.
    Process(ProcessArgs),
    /// Write the packets the daemon sees, each with its process, to a pcapng file
    /// (Wireshark shows the process in each packet's comment).
    Capture(CaptureArgs),
    /// Sum usage-log files (rotated and gzipped ones too) per process, user, unit or
    /// container. Reads the files only: the daemon need not run.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Print the daemon's reply as JSON.
    #[arg(long)]
    pub json: bool,
    /// Sort by received, sent, or both (bytes since first seen), descending.
    #[arg(long, value_enum, default_value_t = SortKey::Total)]
    pub sort: SortKey,
    /// Show at most N processes (the unknown bucket is always shown).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Sum the processes per user, systemd unit, container or network namespace.
    #[arg(long, value_enum, value_name = "KEY")]
    pub by: Option<ByKey>,
}

/// What `--by` groups processes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ByKey {
    User,
    Unit,
    Container,
    Netns,
}

impl From<ByKey> for pidcap_proto::GroupBy {
    fn from(key: ByKey) -> Self {
        match key {
            ByKey::User => pidcap_proto::GroupBy::User,
            ByKey::Unit => pidcap_proto::GroupBy::Unit,
            ByKey::Container => pidcap_proto::GroupBy::Container,
            ByKey::Netns => pidcap_proto::GroupBy::Netns,
        }
    }
}

/// What `top --sort` orders rows by: current rates (descending), or name or pid (ascending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopSort {
    /// Receive rate.
    Rx,
    /// Send rate.
    Tx,
    /// Both rates (the default).
    Total,
    /// Command name (group name with --by).
    Name,
    /// Process id.
    Pid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    Rx,
    Tx,
    Total,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Milliseconds between updates.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = DEFAULT_INTERVAL_MS,
        value_parser = clap::value_parser!(u64).range(MIN_INTERVAL_MS..=MAX_INTERVAL_MS)
    )]
    pub interval: u64,
    /// Show at most N processes per screen (the unknown bucket is always shown).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Stop after N updates instead of running until Ctrl-C.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
    /// Sum the processes per user, systemd unit, container or network namespace.
    #[arg(long, value_enum, value_name = "KEY")]
    pub by: Option<ByKey>,
    /// Order rows by current rate (rx, tx, total: busiest first), or by name or pid.
    #[arg(long, value_enum, default_value_t = TopSort::Total)]
    pub sort: TopSort,
    /// Show only processes whose command name, executable, unit or container contains TEXT
    /// (ignoring case); with --by, only groups whose name contains it.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// Show only this process.
    #[arg(long, value_name = "PID", conflicts_with = "by")]
    pub pid: Option<u32>,
}

/// What `report --by` sums lines per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportBy {
    Process,
    User,
    Unit,
    Container,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Only lines written at or after WHEN: a time (2026-11-29, "2026-11-29 17:00",
    /// 2026-11-29T17:00:00Z; UTC unless an offset is given) or a duration before now (1h).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only lines written before WHEN (a time, or a duration before now).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// One row per process (pid and start time), or per user, systemd unit or container.
    #[arg(long, value_enum, default_value_t = ReportBy::Process)]
    pub by: ReportBy,
    /// Print one JSON object (rows, totals and what reading found).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV: a header line, then one line per row (the unknown row included).
    #[arg(long)]
    pub csv: bool,
    /// Usage-log files, plain or gzip, in any order. Default: /var/log/pidcap/usage.jsonl
    /// and its rotated siblings (usage.jsonl.N, usage.jsonl-DATE, each possibly .gz).
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LookupArgs {
    /// tcp, udp, udplite, sctp, icmp or icmpv6.
    pub proto: String,
    /// Local end, IP:PORT ([IPv6]:PORT).
    pub local: String,
    /// Remote end, IP:PORT ([IPv6]:PORT).
    pub remote: String,
    /// Look among the sockets of this network namespace (the inode of /proc/PID/ns/net, as
    /// `pidcap process` shows it) instead of the local address's own.
    #[arg(long, value_name = "INODE")]
    pub netns: Option<u64>,
    /// Print the daemon's reply as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print the daemon's reply as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Process id.
    pub pid: u32,
    /// Print the daemon's reply as JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn socket_is_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from(["pidcap", "stats", "--socket", "/tmp/s"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/s"));
        let cli = Cli::try_parse_from(["pidcap", "--socket", "/tmp/t", "ps"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/t"));
    }

    #[test]
    fn report_takes_files_and_refuses_two_formats() {
        let cli = Cli::try_parse_from(["pidcap", "report", "--by", "unit", "a", "b.gz"]).unwrap();
        let Command::Report(args) = cli.command else {
            panic!("not report")
        };
        assert_eq!(args.by, ReportBy::Unit);
        assert_eq!(args.files, [PathBuf::from("a"), PathBuf::from("b.gz")]);
        let err = Cli::try_parse_from(["pidcap", "report", "--json", "--csv"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn top_pid_and_by_exclude_each_other() {
        let err = Cli::try_parse_from(["pidcap", "top", "--pid", "1", "--by", "unit"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let cli = Cli::try_parse_from(["pidcap", "top", "--sort", "name", "--filter", "ssh"]);
        assert!(cli.is_ok());
    }

    #[test]
    fn top_interval_outside_the_protocol_range_is_a_usage_error() {
        for bad in ["99", "60001", "0"] {
            let err = Cli::try_parse_from(["pidcap", "top", "--interval", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
        let cli = Cli::try_parse_from(["pidcap", "top", "--interval", "100"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Top(TopArgs { interval: 100, .. })
        ));
    }
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The pcapng file to write; `-` for standard output (e.g. `| wireshark -k -i -`).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: PathBuf,
    /// Only packets to or from this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only packets to or from processes with this name (`comm`, exact).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only packets to or from processes of this systemd unit.
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,
    /// Only packets to or from processes of this container (name, or at least 4 characters
    /// of its id).
    #[arg(long, value_name = "CONTAINER")]
    pub container: Option<String>,
    /// Stop after N packets.
    #[arg(short = 'c', long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long (`10s`, `5m`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// A BPF filter in tcpdump syntax, e.g. `tcp port 443` (applied by the daemon).
    #[arg(value_name = "BPF", trailing_var_arg = true)]
    pub filter: Vec<String>,
}
