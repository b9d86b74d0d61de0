//! `netsky agent N --type RUNTIME`: give one agent another runtime, and restart it with it.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use netsky_bus::AgentName;
use serde::Serialize;

use crate::constellation::agents::{self, tmux_of};
use crate::constellation::{launch, watchdog};
use crate::node::Node;
use crate::output::{Ctx, emit};
use crate::record::EventKind;
use crate::runtimes;

/// Arguments of `netsky agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent: a number (4), agent4, or infinity.
    #[arg(value_parser = parse_agent)]
    agent: AgentName,
    /// The runtime: claude, codex, or a name under [runtimes] in config.toml.
    #[arg(long = "type", value_name = "RUNTIME")]
    runtime: String,
}

/// `4`, `agent4`, `infinity` or `agentinfinity`.
pub fn parse_agent(s: &str) -> Result<AgentName, String> {
    let full = if s.starts_with("agent") { s.to_string() } else { format!("agent{s}") };
    full.parse::<AgentName>().map_err(|e| e.to_string())
}

#[derive(Serialize)]
struct Out {
    agent: String,
    runtime: String,
    restarted: bool,
}

/// Runs `netsky agent`.
pub fn run(ctx: &Ctx, a: AgentArgs) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let rt = runtimes::by_name(&node.config.runtimes, &a.runtime)?;
    runtimes::ensure_found(&rt)?;
    let home = &node.home;
    let _lock = agents::lock(home, super::up::LOCK_WAIT)?;
    let mut l = launch::load(&node, a.agent);
    l.runtime = Some(rt.name.clone());
    launch::save(&node, a.agent, &l)?;
    let rec = &node.recorder;
    rec.record(&[rec.event(EventKind::RuntimeChosen, Some(a.agent), None, Some(rt.name.clone()))]);
    // Restarted now when the constellation runs it; else the choice waits for `up`.
    let running = match agents::load_desired(home)? {
        Some(d) if !agents::is_down(home) && d.contains(a.agent) => Some(d),
        Some(d) if !agents::is_down(home) => {
            bail!(
                "{} is not in this constellation ({}); the runtime is recorded for when it is",
                a.agent,
                d.describe()
            )
        }
        _ => None,
    };
    if let Some(d) = running {
        watchdog::restart_by_hand(&node, &tmux_of(&node), a.agent, d.clones)?;
    }
    let out = Out { agent: a.agent.to_string(), runtime: rt.name, restarted: running.is_some() };
    emit(ctx, &out, || match out.restarted {
        true => format!("{} restarted with runtime {}", out.agent, out.runtime),
        false => format!("{} will run runtime {} from the next `netsky up`", out.agent, out.runtime),
    })?;
    Ok(ExitCode::SUCCESS)
}
