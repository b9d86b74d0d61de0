//! `netsky restart AGENT`: stop and start one agent's session now.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use netsky_bus::AgentName;
use serde::Serialize;

use crate::constellation::agents::{self, tmux_of};
use crate::constellation::{handoff, watchdog};
use crate::node::Node;
use crate::output::{Ctx, emit};

/// Arguments of `netsky restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The agent: agent0..agentN or agentinfinity.
    agent: AgentName,
    /// A note for the new session, delivered as its first envelope (kind `handoff`) once it is ready.
    #[arg(long, value_name = "FILE")]
    handoff: Option<PathBuf>,
}

#[derive(Serialize)]
struct Out {
    agent: String,
    restarted: bool,
    handoff: Option<String>,
}

/// Runs `netsky restart`.
pub fn run(ctx: &Ctx, a: RestartArgs) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let home = &node.home;
    let Some(desired) = agents::load_desired(home)? else {
        bail!("the constellation was never started in {}; run `netsky up` first", home.root().display());
    };
    if agents::is_down(home) {
        bail!("the constellation is down (netsky down); run `netsky up` to start it again");
    }
    if !desired.contains(a.agent) {
        bail!(
            "{} is not in this constellation ({}); `netsky up N` sets how many clones run",
            a.agent,
            desired.describe()
        );
    }
    let note = a.handoff.as_deref().map(handoff::read_note).transpose()?;
    let _lock = agents::lock(home, super::up::LOCK_WAIT)?;
    // Stored before the restart, under the lock: no tick can hand it to the old session.
    let env = note.map(|n| handoff::store(&node, a.agent, &n)).transpose()?;
    watchdog::restart_by_hand(&node, &tmux_of(&node), a.agent, desired.clones)?;
    let out = Out { agent: a.agent.to_string(), restarted: true, handoff: env.map(|e| e.id.to_string()) };
    emit(ctx, &out, || match &out.handoff {
        Some(id) => format!("{} restarted; handoff {id} goes first once it is ready", out.agent),
        None => format!("{} restarted", out.agent),
    })?;
    Ok(ExitCode::SUCCESS)
}
