//! `netsky up [N]`: start agent0, agent1..agentN and agentinfinity, and the heartbeat.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::constellation::agents::{self, Desired, Heartbeat, TICKER_SESSION, tmux_of};
use crate::constellation::watchdog;
use crate::node::Node;
use crate::output::{Ctx, emit};
use crate::record::EventKind;

/// How long `up` waits for a running tick to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Arguments of `netsky up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of clones, agent1..agentN (default: `[constellation] clones`).
    #[arg(value_parser = clap::value_parser!(u16).range(0..=999))]
    clones: Option<u16>,
    /// Restart the agents that already run, too.
    #[arg(long)]
    restart: bool,
    /// A note for every agent's new session, delivered first once it is ready (with --restart).
    #[arg(long, value_name = "FILE", requires = "restart")]
    handoff: Option<std::path::PathBuf>,
    /// How mail reaches the agents (default: `[constellation] delivery`): `mcp` gives each Claude
    /// agent its `netsky mcp serve` channel server; other runtimes keep the pane.
    #[arg(long, value_enum)]
    delivery: Option<crate::config::Delivery>,
}

#[derive(Serialize)]
struct Out {
    node: String,
    clones: u16,
    started: Vec<String>,
    running: Vec<String>,
    stopped: Vec<String>,
    heartbeat: Heartbeat,
    heartbeat_started: bool,
}

use crate::runtimes::program_found;

/// Runs `netsky up`.
pub fn run(ctx: &Ctx, a: UpArgs) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let home = &node.home;
    let desired = Desired { clones: a.clones.unwrap_or(node.config.constellation.clones) };
    let tmux = tmux_of(&node);
    for agent in desired.agents() {
        // An unknown runtime name stops `up`; a missing program only warns, as before runtimes.
        let rt = crate::constellation::launch::runtime_for(&node, agent)?;
        if !program_found(rt.program()) {
            eprintln!(
                "netsky: warning: {agent}'s runtime {} ({:?}) is not found; it will exit at once, \
                 and the watchdog will cool it down and escalate",
                rt.name,
                rt.program()
            );
        }
    }
    let note = a.handoff.as_deref().map(crate::constellation::handoff::read_note).transpose()?;
    if let Some(n) = &note {
        // Refused now, not after the first agent was stopped for it.
        crate::constellation::handoff::check_note(&node, n)?;
    }
    let lock = agents::lock(home, LOCK_WAIT)?;
    // Every prompt first: a bad addendum stops `up` before anything starts.
    for agent in desired.agents() {
        agents::write_prompt(&node, agent, desired.clones)?;
    }
    // Asking tmux before writing any mark: a missing or hung tmux changes nothing.
    let sessions = tmux.sessions()?;
    agents::clear_down(home)?;
    agents::save_desired(home, desired)?;
    crate::mcp::launch::save_asked(home, a.delivery)?;
    let mut out = Out {
        node: node.config.node.name.to_string(),
        clones: desired.clones,
        started: vec![],
        running: vec![],
        stopped: vec![],
        heartbeat: Heartbeat::Ticker,
        heartbeat_started: false,
    };
    for name in sessions.keys() {
        if let Ok(agent) = name.parse()
            && !desired.contains(agent)
        {
            tmux.kill_session(name)?;
            out.stopped.push(name.clone());
        }
    }
    // The heartbeat first: if every agent's runtime exits at once, the tmux
    // server must still have a live session when the heartbeat's is made.
    out.heartbeat = match agents::heartbeat(home, &tmux)? {
        Some(h) => h,
        None => {
            agents::start_ticker(home, &tmux).context("cannot start the heartbeat")?;
            out.heartbeat_started = true;
            Heartbeat::Ticker
        }
    };
    for agent in desired.agents() {
        let name = agent.to_string();
        match sessions.get(&name) {
            Some(p) if !p.dead && !a.restart => out.running.push(name),
            other => {
                if other.is_some() {
                    tmux.kill_session(&name)?;
                }
                if let Some(n) = &note {
                    crate::constellation::handoff::store(&node, agent, n)?;
                }
                // The operator asked for it: an old crash-loop cooldown no longer holds.
                watchdog::forgive(&node, agent)?;
                agents::start_agent(&node, &tmux, agent, desired.clones)?;
                let rec = &node.recorder;
                rec.record(&[rec.event(EventKind::Started, Some(agent), None, Some("netsky up".into()))]);
                out.started.push(name);
            }
        }
    }
    drop(lock);
    emit(ctx, &out, || {
        let mut s = format!("constellation of {} up: {}", out.node, desired.describe());
        if !out.started.is_empty() {
            s.push_str(&format!("\nstarted: {}", out.started.join(", ")));
        }
        if !out.running.is_empty() {
            s.push_str(&format!("\nalready running: {}", out.running.join(", ")));
        }
        if !out.stopped.is_empty() {
            s.push_str(&format!("\nstopped (beyond agent{}): {}", desired.clones, out.stopped.join(", ")));
        }
        let hb = match (out.heartbeat, out.heartbeat_started) {
            (Heartbeat::Daemon, _) => "the running daemon".to_string(),
            (Heartbeat::Ticker, true) => format!("started in tmux session {TICKER_SESSION}"),
            (Heartbeat::Ticker, false) => format!("tmux session {TICKER_SESSION} (already running)"),
        };
        s.push_str(&format!("\nheartbeat: {hb}"));
        s
    })?;
    Ok(ExitCode::SUCCESS)
}
