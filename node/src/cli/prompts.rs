//! `netsky prompts render AGENT`: the prompt an agent starts with.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use netsky_bus::AgentName;
use serde::Serialize;

use crate::constellation::agents;
use crate::node::Node;
use crate::output::{Ctx, emit};

/// `netsky prompts ...`
#[derive(Debug, Subcommand)]
pub enum PromptsCmd {
    /// Render AGENT's prompt into state/prompts/AGENT.md and print it.
    ///
    /// Layers: base, role (agent0, clone, agentinfinity), this node's and its
    /// mesh's facts, then the operator's prompts/addendum.md in the home, if any.
    Render {
        /// The agent: agent0..agent999 or agentinfinity.
        agent: AgentName,
    },
}

#[derive(Serialize)]
struct Out {
    agent: String,
    path: String,
    prompt: String,
}

/// Runs `netsky prompts`.
pub fn run(ctx: &Ctx, cmd: PromptsCmd) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let PromptsCmd::Render { agent } = cmd;
    let clones = match agents::load_desired(&node.home)? {
        Some(d) => d.clones,
        None => node.config.constellation.clones,
    };
    let (path, prompt) = agents::write_prompt(&node, agent, clones)?;
    let out = Out { agent: agent.to_string(), path: path.display().to_string(), prompt };
    emit(ctx, &out, || out.prompt.trim_end().to_string())?;
    Ok(ExitCode::SUCCESS)
}
