//! This node's health now: what `netsky health` prints and writes to
//! `state/health.json`, the snapshot a beacon will carry.

use anyhow::{Context, Result};
use netsky_bus::{format_ts, parse_ts};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::constellation;
use crate::node::Node;

/// One agent in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentHealth {
    /// The agent.
    pub agent: String,
    /// Its pane's process runs.
    pub alive: bool,
    /// A hang is suspected (its pane has not changed for `hang_after_s`).
    pub hang_suspected: bool,
    /// When its pane last changed, as the heartbeat saw it.
    pub last_output_change: Option<String>,
    /// Envelopes waiting in its inbox.
    pub inbox: usize,
}

/// A node's health at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// The node.
    pub node: String,
    /// When the snapshot was taken.
    pub ts: String,
    /// The netsky version.
    pub version: String,
    /// Seconds the daemon has run, when one runs.
    pub uptime_s: Option<u64>,
    /// Each agent of the constellation.
    pub agents: Vec<AgentHealth>,
    /// Agents whose process runs.
    pub agents_up: usize,
    /// Agents of the constellation.
    pub agents_total: usize,
    /// Why the agents could not be read (tmux missing or hung), if so.
    pub agents_error: Option<String>,
    /// Envelopes waiting in all inboxes.
    pub inbox_depth: usize,
    /// Envelopes waiting in the outbox for another node.
    pub outbox_depth: usize,
    /// Bytes free for this user on the home's filesystem.
    pub disk_free_bytes: u64,
    /// The system's load average over a minute.
    pub load_1m: Option<f64>,
    /// Seconds since the heartbeat last ticked, if it ever did.
    pub tick_age_s: Option<f64>,
}

/// Takes this node's snapshot.
pub fn snapshot(node: &Node) -> Result<Health> {
    let now = OffsetDateTime::now_utc();
    let (agents, agents_error) = match constellation::status(node) {
        Ok(st) => (
            st.agents
                .into_iter()
                .map(|a| AgentHealth {
                    agent: a.agent,
                    alive: a.session_alive,
                    hang_suspected: a.hang_suspected,
                    last_output_change: a.last_output_change,
                    inbox: a.inbox,
                })
                .collect(),
            None,
        ),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let layout = node.home.layout();
    let mut inbox_depth = 0;
    for agent in layout.agents().context("cannot list the mailboxes")? {
        inbox_depth += netsky_bus::Mailbox::open(&layout, &node.config.node.name, agent)?.waiting()?.inbox;
    }
    let outbox_depth = match std::fs::read_dir(node.home.mesh_paths().outbox()) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json") && !n.starts_with('.')))
            .count(),
        Err(_) => 0,
    };
    let uptime_s = crate::daemon_state::running(&node.home)
        .and_then(|d| parse_ts(&d.started))
        .map(|s| (now - s).whole_seconds().max(0) as u64);
    let tick_age_s = std::fs::read(node.home.tick_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<constellation::TickStamp>(&b).ok())
        .and_then(|t| parse_ts(&t.ts))
        .map(|t| (now - t).as_seconds_f64().max(0.0));
    Ok(Health {
        node: node.config.node.name.to_string(),
        ts: format_ts(now),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s,
        agents_up: agents.iter().filter(|a| a.alive).count(),
        agents_total: agents.len(),
        agents,
        agents_error,
        inbox_depth,
        outbox_depth,
        disk_free_bytes: disk_free(node.home.root())?,
        load_1m: load_1m(),
        tick_age_s,
    })
}

/// Bytes available to this user on the filesystem holding `path`.
pub fn disk_free(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).context("a home path with a NUL byte")?;
    // SAFETY: statvfs writes only into the struct it is given; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", path.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The one-minute load average, where the OS tells it.
fn load_1m() -> Option<f64> {
    let mut l = [0f64; 1];
    // SAFETY: getloadavg writes at most the 1 element it is told of.
    (unsafe { libc::getloadavg(l.as_mut_ptr(), 1) } == 1).then_some(l[0])
}
