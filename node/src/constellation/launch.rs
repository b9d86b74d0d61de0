//! How one agent is launched: its runtime and working directory, when they
//! differ from the constellation's.
//!
//! `state/agents/<agent>/launch.json` holds what `netsky agent N --type` and
//! `netsky clone brief` chose, so that the watchdog revives the agent the
//! same way. Without it, the agent runs `[constellation] agent_runtimes`'s
//! entry for it or `[constellation] runtime`, in the operator's home directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use netsky_bus::AgentName;
use serde::{Deserialize, Serialize};

use crate::node::Node;
use crate::runtimes::{self, Runtime};

const FILE: &str = "launch.json";

/// `launch.json`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// The runtime's name, over the config's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Where the session starts (a clone's workspace checkout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
}

/// The agent's launch choices (none made: the default).
pub fn load(node: &Node, agent: AgentName) -> Launch {
    let p = node.home.agent_state_dir(agent).join(FILE);
    crate::home::read_bounded(&p, 64 * 1024)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records the agent's launch choices.
pub fn save(node: &Node, agent: AgentName, l: &Launch) -> Result<()> {
    let d = node.home.agent_state_dir(agent);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    netsky_bus::write_durable(&d, FILE, &serde_json::to_vec_pretty(l).context("launch to JSON")?)?;
    Ok(())
}

/// The runtime `agent` runs: its own choice, else its config entry, else the constellation's.
pub fn runtime_for(node: &Node, agent: AgentName) -> Result<Runtime> {
    let cfg = &node.config;
    let own = load(node, agent).runtime;
    let configured = cfg.constellation.agent_runtimes.get(&agent.to_string()).cloned();
    match own.or(configured) {
        Some(name) => runtimes::by_name(&cfg.runtimes, &name),
        None => runtimes::of_choice(&cfg.runtimes, &cfg.constellation.runtime),
    }
}
