//! Readiness: whether an agent's runtime has come up and takes input.
//!
//! `state/agents/<agent>/readiness.json` is written when netsky starts the
//! agent (its session identity, runtime, pid, start time) and brought up to
//! date by every tick that sees the pane (`seen`, its freshness). netsky
//! derives readiness from the pane, bounded to its last lines:
//!
//! - before the runtime is ready, a question in [`first_run::KNOWN`] is
//!   answered in the pane (at most [`MAX_ANSWERS`] times per session, then
//!   escalated), and anything else that looks like a question
//!   ([`first_run::UNKNOWN_SIGNS`]) is escalated once per session, never
//!   left waiting for someone who does not look;
//! - otherwise the runtime is ready when its `ready_when` text shows, or
//!   (without one) when the pane shows output that held still for a tick.
//!
//! `status` reads it as starting, ready, hung or dead. A record whose session
//! is not the pane's (a session netsky did not start) is not trusted: it is
//! started afresh from what the pane shows.

use std::path::PathBuf;

use anyhow::{Context, Result};
use netsky_bus::{AgentName, format_ts, parse_ts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::first_run::{self, Seen};
use super::tmux::{Pane, Tmux};
use crate::node::Node;
use crate::record::EventKind;

/// The record's file in the agent's state folder.
const FILE: &str = "readiness.json";

/// Answers to known questions per session before a person is asked instead.
pub const MAX_ANSWERS: u32 = 3;

/// `readiness.json`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Readiness {
    /// The tmux session's id and the pane's pid ([`Pane::identity`]).
    pub session: String,
    /// The runtime's name.
    pub runtime: String,
    /// The pane's process.
    pub pid: Option<u32>,
    /// When netsky started the session.
    pub started: String,
    /// When the runtime was seen ready; none while starting.
    pub ready_at: Option<String>,
    /// The last time a tick saw the pane (freshness).
    pub seen: String,
    /// The question the pane shows now, if any.
    pub prompt: Option<String>,
    /// Known questions answered in this session.
    pub answered: u32,
    /// The escalation raised about a question nobody answered.
    pub escalated: Option<String>,
    /// Text that means ready (the runtime's `ready_when`).
    #[serde(default)]
    pub ready_when: Option<String>,
    /// The rendered prompt, still to be pasted once ready (runtimes with `prompt = "paste"`).
    #[serde(default)]
    pub paste_prompt: Option<PathBuf>,
    /// SHA-256 of the pane at the last look.
    #[serde(default)]
    pub last_hash: Option<String>,
    /// The known question last answered, and the pane's hash when it was.
    #[serde(default)]
    pub answered_at: Option<(String, String)>,
}

/// What `status` says of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its session runs; the runtime is not ready yet.
    Starting,
    /// The runtime takes input.
    Ready,
    /// Its pane has not moved for `hang_after_s`, or it waits on a question nobody answered.
    Hung,
    /// No session, or its process exited.
    Dead,
}

fn path(node: &Node, agent: AgentName) -> PathBuf {
    node.home.agent_state_dir(agent).join(FILE)
}

/// The agent's record, if any.
pub fn load(node: &Node, agent: AgentName) -> Option<Readiness> {
    let bytes = crate::home::read_bounded(&path(node, agent), 64 * 1024).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn save(node: &Node, agent: AgentName, r: &Readiness) -> Result<()> {
    let d = node.home.agent_state_dir(agent);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    let bytes = serde_json::to_vec_pretty(r).context("readiness to JSON")?;
    netsky_bus::write_durable(&d, FILE, &bytes)?;
    Ok(())
}

fn now() -> String {
    format_ts(OffsetDateTime::now_utc())
}

/// A fresh record for a session netsky just started.
pub fn started(
    node: &Node,
    agent: AgentName,
    pane: Option<&Pane>,
    runtime: &str,
    ready_when: Option<String>,
    paste_prompt: Option<PathBuf>,
) -> Result<()> {
    let t = now();
    save(
        node,
        agent,
        &Readiness {
            session: pane.map(Pane::identity).unwrap_or_default(),
            runtime: runtime.to_string(),
            pid: pane.map(|p| p.pid),
            started: t.clone(),
            ready_at: None,
            seen: t,
            prompt: None,
            answered: 0,
            escalated: None,
            ready_when,
            paste_prompt,
            last_hash: None,
            answered_at: None,
        },
    )
}

/// Whether `r` was seen recently enough to trust: within three ticks (and ten seconds at least).
pub fn fresh(node: &Node, r: &Readiness) -> bool {
    let limit = (3 * node.config.node.tick_interval_s).max(10) as i64;
    parse_ts(&r.seen).is_some_and(|s| (OffsetDateTime::now_utc() - s).whole_seconds() <= limit)
}

/// Whether `agent`'s runtime in `pane` is ready: a record of this very session, ready, fresh.
pub fn is_ready(node: &Node, agent: AgentName, pane: &Pane) -> bool {
    load(node, agent).is_some_and(|r| r.session == pane.identity() && r.ready_at.is_some() && fresh(node, &r))
}

/// Whether a quiet pane of `agent` is idle by design: agentinfinity only,
/// and only while its readiness is fresh and names the session in `pane`.
pub fn idle_by_design(node: &Node, agent: AgentName, pane: &Pane) -> bool {
    agent == AgentName::Infinity && is_ready(node, agent, pane)
}

/// The state `status` shows.
pub fn state(node: &Node, agent: AgentName, pane: Option<&Pane>, hang: bool) -> State {
    let Some(pane) = pane.filter(|p| !p.dead) else { return State::Dead };
    let r = load(node, agent).filter(|r| r.session == pane.identity());
    let stuck =
        r.as_ref().is_some_and(|r| r.ready_at.is_none() && r.prompt.is_some() && r.escalated.is_some());
    if hang || stuck {
        return State::Hung;
    }
    match r {
        Some(r) if r.ready_at.is_some() && fresh(node, &r) => State::Ready,
        _ => State::Starting,
    }
}

/// One tick's look at a live `agent`'s pane: questions answered or escalated, readiness noted.
pub fn observe(node: &Node, tmux: &Tmux, agent: AgentName, pane: &Pane, content: &[u8]) -> Result<()> {
    let identity = pane.identity();
    let mut r = match load(node, agent) {
        Some(r) if r.session == identity => r,
        // Not a session netsky started (or a record from before readiness): start afresh.
        other => Readiness {
            session: identity,
            runtime: other.map(|o| o.runtime).unwrap_or_else(|| "unknown".into()),
            pid: Some(pane.pid),
            started: now(),
            ready_at: None,
            seen: now(),
            prompt: None,
            answered: 0,
            escalated: None,
            ready_when: None,
            paste_prompt: None,
            last_hash: None,
            answered_at: None,
        },
    };
    r.seen = now();
    r.pid = Some(pane.pid);
    let text = String::from_utf8_lossy(content);
    let hash = data_encoding::HEXLOWER.encode(&Sha256::digest(content));
    let rec = &node.recorder;
    let name = agent.to_string();
    let mut seen = first_run::classify(&text);
    // A question answered, after which the pane moved: the runtime took the
    // answer (a plain terminal still shows the question above what follows).
    if let Seen::Known(k) = &seen
        && r.answered_at.as_ref().is_some_and(|(name, h)| name == k.name && *h != hash)
    {
        seen = Seen::Nothing;
    }
    // Once ready, what the pane shows is the agent's own conversation: no
    // key is pressed into it, nothing in it is taken for a start-up question.
    if r.ready_at.is_some() {
        seen = Seen::Nothing;
    }
    match seen {
        Seen::Known(k) => {
            r.prompt = Some(k.name.to_string());
            if r.answered < MAX_ANSWERS {
                tmux.send_keys(&name, k.keys)?;
                r.answered += 1;
                r.answered_at = Some((k.name.to_string(), hash.clone()));
                rec.record(&[rec.event(
                    EventKind::PromptAnswered,
                    Some(agent),
                    None,
                    Some(format!("{}: sent {}", k.name, k.keys.join(" "))),
                )]);
            } else if r.escalated.is_none() {
                r.escalated = Some(escalate(node, agent, k.name, &text)?);
            }
        }
        Seen::Unknown(line) => {
            r.prompt = Some(line.clone());
            if r.escalated.is_none() {
                r.escalated = Some(escalate(node, agent, &line, &text)?);
            }
        }
        _ => {
            r.prompt = None;
            if r.ready_at.is_none() {
                let ready = match &r.ready_when {
                    Some(w) => text.contains(w.as_str()),
                    None => !text.trim().is_empty() && r.last_hash.as_deref() == Some(hash.as_str()),
                };
                if ready {
                    r.ready_at = Some(now());
                    rec.record(&[rec.event(
                        EventKind::AgentReady,
                        Some(agent),
                        None,
                        Some(r.runtime.clone()),
                    )]);
                    if let Some(p) = r.paste_prompt.take() {
                        let prompt = crate::home::read_bounded(&p, 1 << 20)?;
                        let buffer = format!("netsky-prompt-{name}");
                        tmux.paste(
                            &name,
                            &buffer,
                            &String::from_utf8_lossy(&prompt),
                            &node.home.paste_dir(),
                        )?;
                    }
                }
            }
        }
    }
    r.last_hash = Some(hash);
    save(node, agent, &r)
}

/// Raises the escalation for a question `agent`'s pane shows that nobody answers; returns its id.
fn escalate(node: &Node, agent: AgentName, what: &str, pane: &str) -> Result<String> {
    let rec = &node.recorder;
    rec.record(&[rec.event(EventKind::PromptEscalated, Some(agent), None, Some(what.to_string()))]);
    let tail: Vec<&str> = pane.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(first_run::TAIL_LINES)..].join("\n");
    let subject = format!("{agent} waits on a question at start on node {}", node.config.node.name);
    let body = format!(
        "The pane of {agent} shows a question netsky does not answer by itself:\n{tail}\n\
         Answer it (`tmux attach -t {agent}`), or add the setting that skips it, then `netsky restart {agent}`."
    );
    Ok(crate::escalation::raise(node, "watchdog", Some(agent), &subject, &body)?.id)
}
