//! `netsky`: the node binary, both the command line and (later) the daemon.
//!
//! `main` parses arguments, sets up logging and hands over to `cli`; errors
//! come out as one line on stderr with exit code 1 (usage errors: 2).

mod bench;
mod cli;
mod config;
mod constellation;
mod daemon;
mod daemon_state;
mod demo;
mod escalation;
mod home;
mod proc;
mod record;
mod store;
mod ticker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let default = match args.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("netsky: {line}");
            ExitCode::from(1)
        }
    }
}
