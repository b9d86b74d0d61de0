//! `netsky ticker` (hidden): the heartbeat alone, in the foreground, until a signal.
//!
//! `netsky up` runs it in tmux session `netsky-ticker` while no daemon keeps
//! the heartbeat. SIGTERM, SIGINT and SIGHUP (tmux sends it when the session
//! is killed) stop it after the current tick.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::Ctx;
use crate::ticker::Ticker;

/// Arguments of `netsky ticker`.
#[derive(Debug, Args)]
pub struct TickerArgs {}

/// Runs `netsky ticker`.
pub fn run(ctx: &Ctx, _a: TickerArgs) -> Result<ExitCode> {
    // Signals first: one arriving while the node opens must still stop us cleanly.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    let ticker = Ticker::start(ctx.home.clone())?;
    let waker = ticker.waker();
    std::thread::Builder::new()
        .name("netsky-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                waker.shutdown();
            }
        })
        .context("cannot spawn the signal thread")?;
    ticker.join()?;
    Ok(ExitCode::SUCCESS)
}
