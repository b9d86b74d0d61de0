//! The constellation: this node's agents in tmux, driven by the heartbeat tick.
//!
//! [`tick`] is one synchronous, bounded heartbeat: revive dead agents (with
//! the crash-loop guard), deliver waiting envelopes into live panes, and hash
//! each pane to suspect or clear hangs. [`deliver_now`] is the delivery part
//! alone, for when new envelopes arrive between ticks. Both hold the
//! constellation lock, so they never race `up`, `down` or `restart`, and both
//! do nothing while the constellation is intentionally down.

pub mod agents;
pub mod deliver;
pub mod first_run;
pub mod handoff;
pub mod launch;
pub mod readiness;
pub mod tmux;
pub mod watchdog;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use netsky_bus::{AgentName, Mailbox, format_ts};
use serde::Serialize;
use time::OffsetDateTime;

use crate::node::Node;
use crate::record::EventKind;
use tmux::Pane;

/// How long a tick waits for `up`, `down` or `restart` to finish before skipping.
const TICK_LOCK_WAIT: Duration = Duration::from_secs(2);

/// What one tick did.
#[derive(Debug, Default)]
pub struct TickReport {
    /// Why the tick did nothing, if it did nothing.
    pub skipped: Option<&'static str>,
    /// Dead agents and what the watchdog did about each.
    pub revived: Vec<(AgentName, watchdog::Revival)>,
    /// The delivery round.
    pub delivered: deliver::Delivered,
}

/// Agents whose session exists with a live pane.
fn live_agents(sessions: &std::collections::BTreeMap<String, Pane>) -> BTreeSet<AgentName> {
    sessions.iter().filter(|(_, p)| !p.dead).filter_map(|(name, _)| name.parse::<AgentName>().ok()).collect()
}

/// One heartbeat: watchdog, delivery, hang detection.
pub fn tick(node: &Node) -> Result<TickReport> {
    let mut report = TickReport::default();
    let Some(_lock) = agents::try_lock(&node.home, TICK_LOCK_WAIT)? else {
        report.skipped = Some("busy");
        return Ok(report);
    };
    if agents::is_down(&node.home) {
        report.skipped = Some("down");
        return Ok(report);
    }
    let tmux = agents::tmux_of(node);
    let sessions = tmux.sessions()?;
    let mut live = live_agents(&sessions);
    if let Some(desired) = agents::load_desired(&node.home)? {
        for agent in desired.agents() {
            if live.contains(&agent) {
                continue;
            }
            let r = watchdog::revive(node, &tmux, agent, desired.clones)?;
            report.revived.push((agent, r));
        }
        // Sessions of agents `up` no longer asks for are left alone, not fed.
        live.retain(|a| desired.contains(*a));
    }
    // Freshly restarted runtimes are still starting; they get their mail next tick.
    report.delivered = deliver::deliver(node, &tmux, &live);
    for &agent in &live {
        let pane = sessions.get(&agent.to_string());
        match tmux.capture(&agent.to_string()) {
            Ok(Some(content)) => {
                if let Some(pane) = pane
                    && let Err(e) = readiness::observe(node, &tmux, agent, pane, &content)
                {
                    tracing::warn!(%agent, error = %format!("{e:#}"), "readiness not brought up to date");
                }
                // agentinfinity waits quietly by design: not a hang while its readiness holds.
                let idle = pane.is_some_and(|p| readiness::idle_by_design(node, agent, p));
                watchdog::observe(node, agent, &content, idle)?
            }
            Ok(None) => {}
            Err(e) => {
                let rec = &node.recorder;
                rec.record(&[rec.event(EventKind::CaptureFailed, Some(agent), None, Some(format!("{e:#}")))]);
            }
        }
    }
    Ok(report)
}

/// Delivery alone, for new envelopes between ticks.
pub fn deliver_now(node: &Node) -> Result<deliver::Delivered> {
    let Some(_lock) = agents::try_lock(&node.home, TICK_LOCK_WAIT)? else {
        return Ok(Default::default());
    };
    if agents::is_down(&node.home) {
        return Ok(Default::default());
    }
    let tmux = agents::tmux_of(node);
    let mut live = live_agents(&tmux.sessions()?);
    if let Some(desired) = agents::load_desired(&node.home)? {
        live.retain(|a| desired.contains(*a));
    }
    Ok(deliver::deliver(node, &tmux, &live))
}

/// One agent in `netsky status`.
#[derive(Debug, Serialize)]
pub struct AgentStatus {
    /// The agent.
    pub agent: String,
    /// Its session exists and its pane's process runs.
    pub session_alive: bool,
    /// The pid of the pane's process.
    pub pid: Option<u32>,
    /// When the pane's text last changed, as last seen by a tick.
    pub last_output_change: Option<String>,
    /// Envelopes waiting in the inbox.
    pub inbox: usize,
    /// Envelopes claimed, not yet delivered.
    pub claimed: usize,
    /// A hang is suspected.
    pub hang_suspected: bool,
    /// starting, ready, hung or dead.
    pub state: readiness::State,
    /// The runtime it runs (from its readiness record).
    pub runtime: Option<String>,
    /// The question its pane shows, if any.
    pub prompt: Option<String>,
    /// Restarts made so far.
    pub restarts: u64,
    /// The end of a crash-loop cooldown, while one runs.
    pub cooldown_until: Option<String>,
    /// How its mail reaches it: `pane`, or `mcp` (through its `netsky mcp serve`).
    pub delivery: &'static str,
    /// The `netsky mcp serve` that delivers its mail now, and since when.
    pub served: Option<crate::mcp::Served>,
}

/// The whole constellation in `netsky status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// This node.
    pub node: String,
    /// The tmux socket (empty: the default server).
    pub tmux_socket: String,
    /// Brought down on purpose with `netsky down`.
    pub down: bool,
    /// Who keeps the heartbeat: `daemon`, `ticker`, or null.
    pub heartbeat: Option<agents::Heartbeat>,
    /// The last tick, if known.
    pub last_tick: Option<String>,
    /// Each agent.
    pub agents: Vec<AgentStatus>,
}

/// Reads the constellation's state: tmux, markers, mailboxes.
pub fn status(node: &Node) -> Result<Status> {
    let home = &node.home;
    let tmux = agents::tmux_of(node);
    let sessions = tmux.sessions()?;
    let mut names: BTreeSet<AgentName> = match agents::load_desired(home)? {
        Some(d) => d.agents().into_iter().collect(),
        None => BTreeSet::new(),
    };
    names.extend(sessions.keys().filter_map(|n| n.parse::<AgentName>().ok()));
    // Agents served over MCP, with or without a session.
    let layout = home.layout();
    names.extend(
        layout.agents().unwrap_or_default().into_iter().filter(|a| crate::mcp::is_served(&layout, *a)),
    );
    let mut out = Vec::new();
    for agent in names {
        let pane = sessions.get(&agent.to_string());
        let counts = Mailbox::open(&home.layout(), &node.config.node.name, agent)?.waiting()?;
        let r = watchdog::restarts(node, agent);
        let now = OffsetDateTime::now_utc();
        let cooling = r.cooldown_until.filter(|u| netsky_bus::parse_ts(u).is_some_and(|u| u > now));
        let hang = watchdog::hang_marker(node, agent).is_some();
        let ready = readiness::load(node, agent);
        out.push(AgentStatus {
            state: readiness::state(node, agent, pane, hang),
            runtime: ready.as_ref().map(|r| r.runtime.clone()),
            prompt: ready.and_then(|r| r.prompt),
            agent: agent.to_string(),
            session_alive: pane.is_some_and(|p| !p.dead),
            pid: pane.map(|p| p.pid),
            last_output_change: watchdog::pane_state(node, agent).map(|p| p.changed),
            inbox: counts.inbox,
            claimed: counts.claimed,
            hang_suspected: hang,
            restarts: r.total,
            cooldown_until: cooling,
            delivery: if crate::mcp::launch::uses_mcp(node, agent) { "mcp" } else { "pane" },
            served: crate::mcp::served(&layout, agent),
        });
    }
    let last_tick = std::fs::read(home.tick_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<TickStamp>(&b).ok())
        .map(|t| t.ts);
    Ok(Status {
        node: node.config.node.name.to_string(),
        tmux_socket: node.config.constellation.tmux_socket.clone(),
        down: agents::is_down(home),
        heartbeat: agents::heartbeat(home, &tmux)?,
        last_tick,
        agents: out,
    })
}

/// `state/tick.json`: the heartbeat's last beat.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TickStamp {
    /// When.
    pub ts: String,
    /// Ticks since the heartbeat started.
    pub ticks: u64,
    /// The process keeping it.
    pub pid: u32,
}

/// Writes `state/tick.json` after a tick.
pub fn stamp_tick(node: &Node, ticks: u64) -> Result<()> {
    let t = TickStamp { ts: format_ts(OffsetDateTime::now_utc()), ticks, pid: std::process::id() };
    crate::home::write_durable(&node.home.tick_path(), &serde_json::to_vec(&t)?)?;
    Ok(())
}
