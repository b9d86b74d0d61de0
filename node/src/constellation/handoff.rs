//! Handoffs: a note for an agent's next session, delivered before anything else.
//!
//! `netsky restart AGENT --handoff FILE` (and `up --restart --handoff FILE`)
//! reads the note (UTF-8, at most [`MAX_NOTE_BYTES`]), signs it as an
//! envelope of kind `handoff` from agent0, and keeps it in
//! `state/agents/<agent>/handoff.json` before the restart. While that file
//! exists, delivery to the agent holds its mailbox: once the new session is
//! ready (see `readiness`), the handoff is pasted first, recorded as
//! delivered, and the file removed; then the mailbox flows again. A crash
//! between the paste and the removal pastes the note again (at least once),
//! as for any envelope. A session that never looks ready is not waited on
//! for ever: after [`READY_WAIT`] the note is pasted anyway. A clone's brief takes the same path ([`store_first`]),
//! so it reaches the runtime only once the runtime can take it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use netsky_bus::{Address, AgentName, Envelope, Kind};

use super::readiness;
use super::tmux::Tmux;
use crate::node::Node;
use crate::record::EventKind;

/// The largest handoff note.
pub const MAX_NOTE_BYTES: u64 = 32 * 1024;

const FILE: &str = "handoff.json";

/// How long a first envelope waits for its session to look ready before it is pasted anyway.
pub const READY_WAIT: time::Duration = time::Duration::seconds(120);

fn path(node: &Node, agent: AgentName) -> PathBuf {
    node.home.agent_state_dir(agent).join(FILE)
}

/// Reads a handoff note: a non-empty UTF-8 file of at most [`MAX_NOTE_BYTES`].
pub fn read_note(file: &Path) -> Result<String> {
    let meta = std::fs::metadata(file).with_context(|| format!("handoff note {}", file.display()))?;
    if meta.len() > MAX_NOTE_BYTES {
        bail!(
            "handoff note {} is {} bytes, over the {MAX_NOTE_BYTES}-byte limit",
            file.display(),
            meta.len()
        );
    }
    let bytes = crate::home::read_bounded(file, MAX_NOTE_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "handoff note {} is not UTF-8 (byte {})",
            file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        bail!("handoff note {} is empty", file.display());
    }
    Ok(text)
}

/// The envelope a first `text` of `kind` for `agent` makes, signed; an error says what the text breaks.
fn first_envelope(node: &Node, agent: AgentName, kind: Kind, text: String) -> Result<Envelope> {
    let here = node.config.node.name.clone();
    Envelope::new(
        &node.key,
        kind,
        Address::agent(AgentName::ROOT, here.clone()),
        Address::agent(agent, here),
        text,
        None,
    )
    .with_context(|| format!("the {} cannot be an envelope", kind.as_str()))
}

/// Checks that `note` makes a handoff envelope, before anything is stopped for it.
pub fn check_note(node: &Node, note: &str) -> Result<()> {
    first_envelope(node, AgentName::ROOT, Kind::Handoff, format!("[handoff] {note}")).map(|_| ())
}

/// Signs `note` as `agent`'s handoff and keeps it for its next session; returns the envelope.
pub fn store(node: &Node, agent: AgentName, note: &str) -> Result<Envelope> {
    store_first(node, agent, Kind::Handoff, format!("[handoff] {note}"))
}

/// Signs `text` as an envelope of `kind` from agent0 to `agent`, kept to be
/// pasted first once its next session is ready (a handoff, or a clone's brief).
pub fn store_first(node: &Node, agent: AgentName, kind: Kind, text: String) -> Result<Envelope> {
    let env = first_envelope(node, agent, kind, text)?;
    // One first envelope at a time: a second would silently replace the first (a brief, say).
    if let Some(waiting) = pending(node, agent) {
        anyhow::bail!(
            "{agent} already has a {} waiting to be pasted first; try again once its session is ready",
            waiting.kind.as_str()
        );
    }
    let d = node.home.agent_state_dir(agent);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    netsky_bus::write_durable(&d, FILE, &env.to_json())?;
    let rec = &node.recorder;
    rec.record(&[rec.event(EventKind::HandoffStored, Some(agent), Some(&env), None)]);
    Ok(env)
}

/// `agent`'s first envelope still waiting to be pasted, if any.
pub fn pending(node: &Node, agent: AgentName) -> Option<Envelope> {
    read(&path(node, agent)).ok()
}

/// The first envelope kept at `p`.
fn read(p: &Path) -> Result<Envelope> {
    let bytes = crate::home::read_bounded(p, netsky_bus::MAX_ENVELOPE_BYTES as u64)?;
    Envelope::from_json(&bytes).with_context(|| format!("{} is not an envelope", p.display()))
}
/// Drops `agent`'s waiting first envelope, if any (a brief whose dispatch failed).
pub fn discard(node: &Node, agent: AgentName) {
    let _ = std::fs::remove_file(path(node, agent));
}

/// Whether delivery to an agent may go on this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// No handoff waits (or it was just pasted): deliver the mailbox.
    Open {
        /// A handoff was pasted this round.
        pasted: bool,
    },
    /// A handoff waits for the session to be ready: nothing else goes first.
    Hold,
}

/// Pastes `agent`'s waiting handoff if its session is ready.
pub fn deliver_pending(node: &Node, tmux: &Tmux, agent: AgentName) -> Result<Gate> {
    let p = path(node, agent);
    if !p.exists() {
        return Ok(Gate::Open { pasted: false });
    }
    let name = agent.to_string();
    let Some(pane) = tmux.sessions()?.remove(&name) else { return Ok(Gate::Hold) };
    let mut why = "pasted first";
    if !readiness::is_ready(node, agent, &pane) {
        // Never held for ever: a runtime that does not look ready within
        // READY_WAIT gets its note anyway (and its mail after it).
        let waited = readiness::load(node, agent)
            .filter(|r| r.session == pane.identity())
            .and_then(|r| netsky_bus::parse_ts(&r.started))
            .is_some_and(|t| time::OffsetDateTime::now_utc() - t > READY_WAIT);
        if !waited || pane.dead {
            return Ok(Gate::Hold);
        }
        why = "pasted first, before the runtime looked ready";
    }
    let env = read(&p)?;
    tmux.paste(&name, &format!("netsky-{}", env.id), &env.render_channel(), &node.home.paste_dir())?;
    std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
    let rec = &node.recorder;
    rec.record(&[rec.event(
        EventKind::Delivered,
        Some(agent),
        Some(&env),
        Some(format!("{} {why}", env.kind.as_str())),
    )]);
    Ok(Gate::Open { pasted: true })
}
