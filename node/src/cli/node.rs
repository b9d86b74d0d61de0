//! `netsky node run`: the daemon, in the foreground.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::output::Ctx;

/// `netsky node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Run the daemon in the foreground (launchd/systemd run this); SIGTERM stops it cleanly.
    Run,
}

/// Runs `netsky node`.
pub fn run(ctx: &Ctx, cmd: NodeCmd) -> Result<ExitCode> {
    match cmd {
        NodeCmd::Run => crate::daemon::run(ctx),
    }
}
