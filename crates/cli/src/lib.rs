//! The `pidcap` command line as a library, for build-time generators only: `xtask` renders
//! the man pages and shell completions from it, so they carry every subcommand and flag the
//! binary has. `cli.rs` must therefore stay self-contained (clap, pidcap-proto and this
//! crate's dependencies, no `crate::` paths).
#![forbid(unsafe_code)]

pub mod cli;

/// The `pidcap` command, as `pidcap --help` shows it.
pub fn command() -> clap::Command {
    <cli::Cli as clap::CommandFactory>::command()
}
