//! `netsky`: the node binary: the command line, the daemon, the constellation
//! of agents in tmux, and the record of what happened.
//!
//! Modules import only those beneath them: `cli` on top; `daemon`, `mcp`
//! (the channel server), `bench` and `demo`, which `cli` runs; the heartbeat
//! (`ticker`) and the `constellation`; `channel` (the bus operations the CLI
//! and the MCP tools share); then `escalation`, `receipts`, `node` (a node
//! opened from its home), `record`, `store`, `daemon_state`, `output`, and at
//! the bottom `home` (the catalog of paths), `config` and `proc`. One
//! exception: the constellation reads `mcp::served` (who holds a mailbox)
//! and `mcp::launch` (an agent's argv in mcp delivery), two modules that
//! import nothing above the constellation.
//!
//! `main` parses arguments, sets up logging and hands over to `cli`; errors
//! come out as one line on stderr with exit code 1 (usage errors: 2).

mod beacon;
mod bench;
mod channel;
mod cli;
mod clone;
mod config;
mod constellation;
mod daemon;
mod daemon_state;
mod demo;
mod doctor;
mod escalation;
mod git;
mod harvest;
mod health;
mod home;
mod mcp;
mod node;
mod output;
mod owner;
mod proc;
mod receipts;
mod record;
mod runtimes;
mod status_page;
mod store;
mod supervise;
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
    // Colours only for a person at a terminal, never into a daemon's log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
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
            eprintln!("netsky: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes on one line, each cause once: library errors
/// that name their cause in their own message are not followed by it again.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;
    use anyhow::Context;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(30);
        let bus = netsky_bus::BusError::Io { op: "lock", path: "/h/.lock".into(), source: io };
        let e = Err::<(), _>(bus).context("envelope X not sent").unwrap_err();
        assert_eq!(one_line(&e), "envelope X not sent: lock /h/.lock: Read-only file system (os error 30)");
        let plain = Err::<(), _>(std::io::Error::other("disk\ngone")).context("cannot write").unwrap_err();
        assert_eq!(one_line(&plain), "cannot write: disk gone");
    }
}
