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
