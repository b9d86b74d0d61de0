//! `netsky harvest N [--onto BRANCH] [--check CMD]`: a clone's commits onto a target, through a check.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use netsky_bus::AgentName;

use super::agent::parse_agent;
use crate::harvest::{self, Request};
use crate::node::Node;
use crate::output::{Ctx, emit};

/// Arguments of `netsky harvest`.
#[derive(Debug, Args)]
pub struct HarvestArgs {
    /// The clone agent: 6 or agent6.
    #[arg(value_parser = parse_agent)]
    agent: AgentName,
    /// The target branch (default: the branch checked out in the repository when the clone was briefed).
    #[arg(long)]
    onto: Option<String>,
    /// A shell command run in the rebased tree; the target moves only if it passes.
    #[arg(long)]
    check: Option<String>,
    /// Seconds the check may run before it is killed (default `[constellation] check_timeout_s`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=604800))]
    check_timeout: Option<u64>,
}

/// Runs `netsky harvest`: exit 0 when the target moved, 1 when it did not (and why).
pub fn run(ctx: &Ctx, a: HarvestArgs) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let o = harvest::run(
        &node,
        Request { agent: a.agent, onto: a.onto, check: a.check, check_timeout: a.check_timeout },
    )?;
    emit(ctx, &o, || {
        let mut s = format!(
            "harvest of {} (workspace {}) onto {}: {}",
            o.agent,
            o.workspace,
            o.onto,
            if o.landed { "landed" } else { "NOT landed" }
        );
        s.push_str(&format!("\n{}", o.detail));
        if let Some(out) = o.check_output.as_deref().filter(|t| !t.is_empty()) {
            s.push_str(&format!("\ncheck output:\n{out}"));
        }
        s
    })?;
    if !o.landed {
        eprintln!("netsky: harvest of {} not landed: {}", o.agent, o.detail);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
