#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod cli;
mod client;
mod commands;
mod format;
mod names;
mod report;
mod terminal;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::client::Client;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match run(&cli, &mut out) {
        Ok(code) => code,
        // `pidcap ps | head`: the reader left, which is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("pidcap: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    // `report` reads files only: it works, and must not fail, while no daemon runs.
    if let Command::Report(args) = &cli.command {
        return commands::report::run(args, out);
    }
    let mut client = Client::connect(&cli.socket)?;
    match &cli.command {
        Command::Ps(args) => commands::ps::run(&mut client, args, out),
        Command::Top(args) => commands::top::run(&mut client, args, out),
        Command::Lookup(args) => commands::lookup::run(&mut client, args, out),
        Command::Stats(args) => commands::stats::run(&mut client, args, out),
        Command::Process(args) => commands::process::run(&mut client, args, out),
        Command::Capture(args) => commands::capture::run(&mut client, args),
        Command::Report(args) => commands::report::run(args, out),
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
