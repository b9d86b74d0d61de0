//! Starting a Claude agent in `mcp` delivery mode: its MCP configuration
//! and the flags that make Claude Code load `netsky mcp serve` as a channel.
//!
//! An agent's delivery mode is its own `[constellation] delivery_for` entry;
//! else `[constellation] delivery`, unless the last `netsky up --delivery
//! MODE` said otherwise (`state/delivery.json`, so the watchdog's restarts
//! keep what `up` asked for). Only a Claude runtime (the agent's runtime
//! is the built-in kind, or its `argv[0]` is named `claude`) can take
//! channel notifications; any other runtime keeps the pane.
//!
//! Claude Code asks for consent on every launch with
//! `--dangerously-load-development-channels`, and no setting pre-accepts it.
//! Choosing `mcp` delivery is the operator's consent: the question is in
//! `first_run::KNOWN`, so the start-up check that answers known questions
//! (before the agent is ready, once per showing) takes its first option.

use std::path::PathBuf;

use anyhow::{Context, Result};
use netsky_bus::AgentName;
use serde::{Deserialize, Serialize};

use crate::config::Delivery;
use crate::home::Home;
use crate::node::Node;

/// The name Claude Code knows the server by (`server:netsky`, `<channel source="netsky">`).
pub const SERVER_NAME: &str = "netsky";

/// `state/delivery.json`: what the last `up --delivery` asked for.
#[derive(Debug, Serialize, Deserialize)]
struct Asked {
    delivery: Delivery,
}

fn asked_path(home: &Home) -> PathBuf {
    home.state_dir().join("delivery.json")
}

/// Records `up --delivery MODE` (or, with none, clears it: the config decides again).
pub fn save_asked(home: &Home, delivery: Option<Delivery>) -> Result<()> {
    let path = asked_path(home);
    match delivery {
        Some(d) => {
            crate::home::write_durable(&path, &serde_json::to_vec(&Asked { delivery: d })?)?;
        }
        None => match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        },
    }
    Ok(())
}

/// The constellation's delivery mode now.
pub fn delivery(node: &Node) -> Delivery {
    crate::home::read_bounded(&asked_path(&node.home), 1024)
        .ok()
        .and_then(|b| serde_json::from_slice::<Asked>(&b).ok())
        .map_or(node.config.constellation.delivery, |a| a.delivery)
}

/// Whether `argv` runs Claude Code.
pub fn is_claude(argv: &[String]) -> bool {
    argv.first().and_then(|p| std::path::Path::new(p).file_name()).is_some_and(|n| n == "claude")
}

/// `agent`'s delivery mode: its own (`delivery_for`), else the constellation's now.
pub fn delivery_of(node: &Node, agent: AgentName) -> Delivery {
    node.config.constellation.delivery_for.get(&agent).copied().unwrap_or_else(|| delivery(node))
}

/// Whether `runtime` is Claude Code: the built-in kind, or a program named `claude`.
pub fn runs_claude(runtime: &crate::runtimes::Runtime) -> bool {
    runtime.spec.first_run == crate::runtimes::FirstRun::Claude || is_claude(&runtime.spec.argv)
}

/// Whether `agent`'s mail goes through its MCP server rather than its pane.
pub fn uses_mcp(node: &Node, agent: AgentName) -> bool {
    delivery_of(node, agent) == Delivery::Mcp
        && crate::constellation::launch::runtime_for(node, agent).is_ok_and(|rt| runs_claude(&rt))
}

/// Whether `agent`, in `mcp` delivery, has run `mcp_server_grace_s` since
/// its session started with no channel server holding its mailbox: a server
/// that never came (the session was started in pane mode, Claude Code did not
/// start it) or that died. Its mail then goes into the pane, rather than wait
/// for a server that is not coming. A session netsky has no start for counts as overdue.
pub fn server_overdue(node: &Node, agent: AgentName) -> bool {
    let grace = time::Duration::seconds(node.config.constellation.mcp_server_grace_s as i64);
    crate::constellation::readiness::load(node, agent)
        .and_then(|r| netsky_bus::parse_ts(&r.started))
        .is_none_or(|started| time::OffsetDateTime::now_utc() - started > grace)
}

/// Tells the owner, once per session, that `agent`'s mail goes into its pane
/// because its channel server is not running.
pub fn report_overdue(node: &Node, agent: AgentName) {
    let session = crate::constellation::readiness::load(node, agent).map(|r| r.started).unwrap_or_default();
    let marker = node.home.agent_state_dir(agent).join("mcp-overdue");
    if crate::home::read_bounded(&marker, 256).is_ok_and(|b| b == session.as_bytes()) {
        return;
    }
    if let Err(e) = crate::home::write_durable(&marker, session.as_bytes()) {
        tracing::warn!(%agent, error = %format!("{e:#}"), "cannot note the missing channel server");
    }
    let subject = format!("{agent}'s MCP channel server is not running");
    let body = format!(
        "{agent} is in mcp delivery, but no `netsky mcp serve {agent}` has held its mailbox for {} s since its \
         session started; its mail is pasted into its pane instead. `netsky restart {agent}` starts it with its server.",
        node.config.constellation.mcp_server_grace_s
    );
    if let Err(e) = crate::escalation::raise(node, "mcp", Some(agent), &subject, &body) {
        tracing::warn!(%agent, error = %format!("{e:#}"), "cannot escalate the missing channel server");
    }
}

/// Where `agent`'s MCP configuration lives: `state/agents/<agent>/mcp.json`.
pub fn config_path(home: &Home, agent: AgentName) -> PathBuf {
    home.agent_state_dir(agent).join("mcp.json")
}

/// The arguments that make a Claude runtime load `agent`'s channel server:
/// its MCP configuration and the development-channel flag naming it.
pub fn mcp_launch_args(home: &Home, agent: AgentName) -> Vec<String> {
    vec![
        "--mcp-config".into(),
        config_path(home, agent).display().to_string(),
        "--dangerously-load-development-channels".into(),
        format!("server:{SERVER_NAME}"),
    ]
}

/// Writes `agent`'s MCP configuration (`.mcp.json` form): one server,
/// `netsky --home HOME mcp serve AGENT` with `NETSKY_HOME` set.
pub fn write_config(node: &Node, agent: AgentName) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the netsky binary for the MCP configuration")?;
    let home = node.home.root().display().to_string();
    let cfg = serde_json::json!({
        "mcpServers": {
            SERVER_NAME: {
                "type": "stdio",
                "command": exe.display().to_string(),
                "args": ["--home", home, "mcp", "serve", agent.to_string()],
                "env": { "NETSKY_HOME": home },
            }
        }
    });
    let path = config_path(&node.home, agent);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::home::write_durable(&path, &serde_json::to_vec_pretty(&cfg)?)
}

/// `argv` (`runtime`'s, for `agent`), with the channel flags when its mail
/// goes over MCP (after writing its MCP configuration).
pub fn with_channel_flags(
    node: &Node,
    agent: AgentName,
    runtime: &crate::runtimes::Runtime,
    mut argv: Vec<String>,
) -> Result<Vec<String>> {
    if delivery_of(node, agent) == Delivery::Mcp && runs_claude(runtime) {
        write_config(node, agent)?;
        argv.extend(mcp_launch_args(&node.home, agent));
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_claude_runtime_takes_the_channel_flags() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_claude(&v(&["claude"])));
        assert!(is_claude(&v(&["/opt/bin/claude", "--model", "x"])));
        assert!(!is_claude(&v(&["codex"])));
        assert!(!is_claude(&v(&["claude-wrapper"])));
        assert!(!is_claude(&[]));
        let home = Home::resolve(Some("/h".into())).unwrap();
        let args = mcp_launch_args(&home, "agent3".parse().unwrap());
        assert_eq!(
            args,
            [
                "--mcp-config",
                "/h/state/agents/agent3/mcp.json",
                "--dangerously-load-development-channels",
                "server:netsky"
            ]
        );
    }
}
