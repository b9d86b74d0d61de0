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
    let level = match args.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    let fmt = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false);
    // RUST_LOG's directives when given; else a plain level, which skips
    // building an EnvFilter (tens of microseconds on every short command).
    match std::env::var_os("RUST_LOG") {
        Some(_) => fmt
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.as_str())),
            )
            .init(),
        None => fmt.with_max_level(level).init(),
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("netsky: {line}");
            ExitCode::from(1)
        }
    }
}
