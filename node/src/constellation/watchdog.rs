//! The watchdog: revive dead agents, cool down crash loops, suspect hangs.
//!
//! Per agent it keeps, under `state/agents/<agent>/`:
//! - `restarts.json`: total restarts, the recent ones (inside the crash-loop
//!   window) and, during a cooldown, when it ends;
//! - `pane.json`: the hash of the pane's visible text and when it last changed;
//! - `hang-suspected`: present while the pane has not changed for
//!   `hang_after_s`; its one escalation is raised when it is set.
//!
//! Every change is also an event and an append-only row in meta.db
//! (`restarts`, `agent_markers`). A dead agent is revived at most
//! `crash_loop_restarts` times per `crash_loop_window_s`; one more death
//! starts a cooldown of `crash_cooldown_s` and raises an escalation instead
//! of spinning.

use std::path::PathBuf;

use anyhow::{Context, Result};
use netsky_bus::{AgentName, format_ts, parse_ts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use super::agents;
use super::tmux::Tmux;
use crate::escalation;
use crate::node::Node;
use crate::record::EventKind;

/// The marker name of a suspected hang, as a file and in meta.db.
pub const HANG_MARKER: &str = "hang-suspected";
/// The marker name of a crash-loop cooldown in meta.db.
pub const COOLDOWN_MARKER: &str = "crash-loop-cooldown";
/// The restart record's file in the agent's state folder.
const RESTARTS_FILE: &str = "restarts.json";
/// The last pane observation's file in the agent's state folder.
const PANE_FILE: &str = "pane.json";

/// `restarts.json`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Restarts {
    /// Restarts ever made by the watchdog or `netsky restart`.
    pub total: u64,
    /// Timestamps of restarts inside the crash-loop window.
    pub recent: Vec<String>,
    /// The end of the current cooldown, if one runs.
    pub cooldown_until: Option<String>,
    /// The last restart.
    pub last: Option<String>,
}

/// `pane.json`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaneState {
    /// SHA-256 of the pane's visible text, hex.
    pub hash: String,
    /// When that text was first seen.
    pub changed: String,
}

/// `hang-suspected`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HangMarker {
    /// When the hang was suspected.
    pub since: String,
    /// When the pane last changed.
    pub last_output_change: String,
    /// The escalation raised for it.
    pub escalation: Option<String>,
}

fn dir(node: &Node, agent: AgentName) -> PathBuf {
    node.home.agent_state_dir(agent)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &std::path::Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            // A damaged state file only loses watchdog memory; start afresh rather than stop.
            tracing::warn!(path = %path.display(), error = %e, "unreadable watchdog state, starting afresh");
            None
        }
    }
}

fn write_json<T: Serialize>(node: &Node, agent: AgentName, name: &str, v: &T) -> Result<()> {
    let d = dir(node, agent);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    let bytes = serde_json::to_vec_pretty(v).context("watchdog state to JSON")?;
    netsky_bus::write_durable(&d, name, &bytes)?;
    Ok(())
}

/// The agent's restart record (empty if none).
pub fn restarts(node: &Node, agent: AgentName) -> Restarts {
    read_json(&dir(node, agent).join(RESTARTS_FILE)).unwrap_or_default()
}

/// The agent's last pane observation, if any.
pub fn pane_state(node: &Node, agent: AgentName) -> Option<PaneState> {
    read_json(&dir(node, agent).join(PANE_FILE))
}

/// The agent's hang marker, if set.
pub fn hang_marker(node: &Node, agent: AgentName) -> Option<HangMarker> {
    let p = dir(node, agent).join(HANG_MARKER);
    if p.symlink_metadata().is_err() {
        return None;
    }
    // A marker that cannot be parsed is still a marker.
    Some(read_json(&p).unwrap_or(HangMarker {
        since: String::new(),
        last_output_change: String::new(),
        escalation: None,
    }))
}

fn marker_row(node: &Node, agent: AgentName, marker: &str, set: bool, detail: Option<&str>) {
    let now = format_ts(OffsetDateTime::now_utc());
    let a = agent.to_string();
    node.recorder.with_store(|s| s.insert_marker(&now, &a, marker, set, detail));
}

/// What the watchdog did about a dead agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revival {
    /// A new session was started.
    Restarted,
    /// Starting failed; counted towards the crash loop, tried again next tick.
    Failed(String),
    /// The agent crash-looped: a cooldown began and an escalation was raised.
    CooledDown,
    /// A cooldown is running; nothing was done.
    Cooling,
}

/// Revives a dead `agent` unless it is crash-looping.
pub fn revive(node: &Node, tmux: &Tmux, agent: AgentName, clones: u16) -> Result<Revival> {
    let cfg = &node.config.constellation;
    let now = OffsetDateTime::now_utc();
    let mut r = restarts(node, agent);
    if let Some(until) = r.cooldown_until.as_deref().and_then(parse_ts) {
        if now < until {
            return Ok(Revival::Cooling);
        }
        // The cooldown is over: a fresh window, and one more chance.
        r.cooldown_until = None;
        r.recent.clear();
        marker_row(node, agent, COOLDOWN_MARKER, false, Some("cooldown over"));
    }
    let window = Duration::seconds(cfg.crash_loop_window_s as i64);
    r.recent.retain(|t| parse_ts(t).is_some_and(|t| now - t < window));
    if r.recent.len() as u64 >= u64::from(cfg.crash_loop_restarts) {
        let until = now + Duration::seconds(cfg.crash_cooldown_s as i64);
        r.cooldown_until = Some(format_ts(until));
        write_json(node, agent, RESTARTS_FILE, &r)?;
        let subject = format!("{agent} is crash-looping on node {}", node.config.node.name);
        let body = format!(
            "{agent} died {} times within {} s despite restarts; it is left down until {} \
             (crash_cooldown_s = {}). Check the runtime {} and run `netsky restart {agent}` once fixed.",
            r.recent.len() + 1,
            cfg.crash_loop_window_s,
            format_ts(until),
            cfg.crash_cooldown_s,
            super::launch::runtime_for(node, agent)
                .map(|r| format!("{} {:?}", r.name, r.spec.argv))
                .unwrap_or_else(|e| format!("{e:#}")),
        );
        let rec = &node.recorder;
        rec.record(&[rec.event(
            EventKind::CrashLoop,
            Some(agent),
            None,
            Some(format!("cooldown until {}", format_ts(until))),
        )]);
        marker_row(node, agent, COOLDOWN_MARKER, true, Some(&format!("until {}", format_ts(until))));
        escalation::raise(node, "watchdog", Some(agent), &subject, &body)?;
        return Ok(Revival::CooledDown);
    }
    let outcome = restart(node, tmux, agent, clones, "dead", &mut r);
    write_json(node, agent, RESTARTS_FILE, &r)?;
    Ok(outcome)
}

/// Starts `agent` again (killing any session left), counts it, records it.
fn restart(
    node: &Node,
    tmux: &Tmux,
    agent: AgentName,
    clones: u16,
    reason: &str,
    r: &mut Restarts,
) -> Revival {
    let now = format_ts(OffsetDateTime::now_utc());
    let name = agent.to_string();
    // Counted before the attempt: whoever sees the new session also sees it
    // counted, and a crash mid-restart still leaves the attempt on record.
    r.total += 1;
    r.recent.push(now.clone());
    r.last = Some(now.clone());
    if let Err(e) = write_json(node, agent, RESTARTS_FILE, r) {
        tracing::warn!(%agent, error = %format!("{e:#}"), "cannot record the restart before it");
    }
    let result = tmux.kill_session(&name).and_then(|_| agents::start_agent(node, tmux, agent, clones));
    forget_pane(node, agent, "restarted");
    let rec = &node.recorder;
    let (outcome, ev, detail) = match &result {
        Ok(()) => (Revival::Restarted, EventKind::Restarted, reason.to_string()),
        Err(e) => (Revival::Failed(format!("{e:#}")), EventKind::RestartFailed, format!("{reason}: {e:#}")),
    };
    rec.record(&[rec.event(ev, Some(agent), None, Some(detail.clone()))]);
    let ok = result.is_ok();
    node.recorder.with_store(|s| s.insert_restart(&now, &name, reason, ok, (!ok).then_some(detail.as_str())));
    outcome
}

/// `netsky restart`: restarts `agent` now, ending any cooldown (the operator stepped in).
pub fn restart_by_hand(node: &Node, tmux: &Tmux, agent: AgentName, clones: u16) -> Result<()> {
    let mut r = restarts(node, agent);
    if r.cooldown_until.take().is_some() {
        marker_row(node, agent, COOLDOWN_MARKER, false, Some("manual restart"));
    }
    // A manual restart starts a fresh crash-loop window.
    r.recent.clear();
    let outcome = restart(node, tmux, agent, clones, "manual", &mut r);
    write_json(node, agent, RESTARTS_FILE, &r)?;
    match outcome {
        Revival::Failed(e) => anyhow::bail!("{agent} did not start: {e}"),
        _ => Ok(()),
    }
}

/// Ends any cooldown and forgets recent restarts (`up` starts the agent on purpose).
pub fn forgive(node: &Node, agent: AgentName) -> Result<()> {
    let mut r = restarts(node, agent);
    if r.cooldown_until.is_none() && r.recent.is_empty() {
        return Ok(());
    }
    if r.cooldown_until.take().is_some() {
        marker_row(node, agent, COOLDOWN_MARKER, false, Some("netsky up"));
    }
    r.recent.clear();
    write_json(node, agent, RESTARTS_FILE, &r)
}

/// Forgets the pane's hash and clears a hang marker: a new session is a new pane.
fn forget_pane(node: &Node, agent: AgentName, why: &str) {
    let d = dir(node, agent);
    let _ = std::fs::remove_file(d.join(PANE_FILE));
    clear_hang(node, agent, why);
}

fn clear_hang(node: &Node, agent: AgentName, why: &str) {
    let p = dir(node, agent).join(HANG_MARKER);
    if std::fs::remove_file(&p).is_ok() {
        let _ = netsky_bus::fsync_dir(&dir(node, agent));
        let rec = &node.recorder;
        rec.record(&[rec.event(EventKind::HangCleared, Some(agent), None, Some(why.to_string()))]);
        marker_row(node, agent, HANG_MARKER, false, Some(why));
    }
}

/// Hashes the pane of a live `agent`; sets or clears its hang marker. An
/// agent `idle_by_design` (see `readiness::idle_by_design`) has its pane
/// followed but is not suspected of a hang.
pub fn observe(node: &Node, agent: AgentName, content: &[u8], idle_by_design: bool) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let hash = data_encoding::HEXLOWER.encode(&Sha256::digest(content));
    let prev = pane_state(node, agent);
    let changed = match &prev {
        Some(p) if p.hash == hash => parse_ts(&p.changed).unwrap_or(now),
        _ => {
            write_json(node, agent, PANE_FILE, &PaneState { hash, changed: format_ts(now) })?;
            if prev.is_some() {
                clear_hang(node, agent, "output moved");
            }
            return Ok(());
        }
    };
    let hang_after = Duration::seconds(node.config.constellation.hang_after_s as i64);
    if idle_by_design || now - changed < hang_after || hang_marker(node, agent).is_some() {
        return Ok(());
    }
    let mut marker =
        HangMarker { since: format_ts(now), last_output_change: format_ts(changed), escalation: None };
    // The marker first, so a failure to escalate never escalates again every tick.
    write_json(node, agent, HANG_MARKER, &marker)?;
    let quiet = (now - changed).whole_seconds();
    let rec = &node.recorder;
    rec.record(&[rec.event(
        EventKind::HangSuspected,
        Some(agent),
        None,
        Some(format!("no output change for {quiet} s")),
    )]);
    marker_row(
        node,
        agent,
        HANG_MARKER,
        true,
        Some(&format!("no output change since {}", format_ts(changed))),
    );
    let subject = format!("{agent} may be hung on node {}", node.config.node.name);
    let body = format!(
        "The pane of {agent} has not changed since {} ({quiet} s, hang_after_s = {}). \
         Look at it (`tmux attach -t {agent}`), nudge it with a message, or `netsky restart {agent}`.",
        format_ts(changed),
        node.config.constellation.hang_after_s
    );
    let e = escalation::raise(node, "watchdog", Some(agent), &subject, &body)?;
    marker.escalation = Some(e.id);
    write_json(node, agent, HANG_MARKER, &marker)?;
    Ok(())
}
