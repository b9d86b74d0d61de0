//! `netsky restart AGENT`: stop and start one agent's session now.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use netsky_bus::AgentName;
use serde::Serialize;

use crate::constellation::agents::{self, tmux_of};
use crate::constellation::watchdog;
use crate::node::Node;
use crate::output::{Ctx, emit};

/// Arguments of `netsky restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The agent: agent0..agentN or agentinfinity.
    agent: AgentName,
}

#[derive(Serialize)]
struct Out {
    agent: String,
    restarted: bool,
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
    let _lock = agents::lock(home, super::up::LOCK_WAIT)?;
    watchdog::restart_by_hand(&node, &tmux_of(&node), a.agent, desired.clones)?;
    let out = Out { agent: a.agent.to_string(), restarted: true };
    emit(ctx, &out, || format!("{} restarted", out.agent))?;
    Ok(ExitCode::SUCCESS)
}
