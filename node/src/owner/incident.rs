//! Incidents on the root: one per origin and subject while it is open, as
//! operators know them from PagerDuty and Opsgenie.
//!
//! An escalation with the key (origin node, subject) of an open incident
//! joins it: its count grows and nobody is paged again. Otherwise it opens a
//! new incident, paged at once and again every `repage_after_s` until acked,
//! at most `max_repages` times, then once more through every leg, and then it
//! stops. `ack` silences it; `resolve` closes it, and the key then opens a
//! new incident. Each incident is `state/escalations/<id>.json`, written
//! durably; only the owner's desk (the root's daemon) writes them.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::home::Home;

/// An incident file is small; a bigger one is not ours.
const MAX_INCIDENT_BYTES: u64 = 256 * 1024;

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Paged, and re-paged until acked.
    Open,
    /// Someone took it: no more pages.
    Acked,
    /// Closed: the next escalation with its key opens a new incident.
    Resolved,
}

/// One incident, as `state/escalations/<id>.json` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Incident {
    /// The id of the escalation that opened it (a ULID).
    pub id: String,
    /// The node where it happened.
    pub origin: String,
    /// One line; with `origin`, the dedupe key.
    pub subject: String,
    /// What happened, for a human.
    pub body: String,
    /// Who raised it (`watchdog`, `cli`, ...).
    pub source: Option<String>,
    /// The agent concerned, if any.
    pub agent: Option<String>,
    /// When it was opened.
    pub opened: String,
    /// Escalations it holds (the first and every one that joined it).
    pub count: u64,
    /// Open, acked or resolved.
    pub state: State,
    /// Who acked it, and when.
    pub acked_by: Option<String>,
    /// Who resolved it, and when.
    pub resolved_by: Option<String>,
    /// Pages that reached the owner (a round where no leg took it does not count).
    pub pages: u32,
    /// When the next page is due (none once acked, resolved, or done re-paging).
    pub next_page: Option<String>,
}

/// Every incident in `home`, oldest first; a file that is not one is skipped with a warning.
pub fn list(home: &Home) -> Result<Vec<Incident>> {
    let dir = home.escalations_dir();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| n.ends_with(".json") && !n.starts_with('.')) else {
            continue;
        };
        match read(&dir.join(name)) {
            Ok(i) => out.push(i),
            Err(err) => tracing::warn!(file = name, error = %format!("{err:#}"), "not an incident; skipped"),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The root's incidents from any node: read here on the root, asked over the mesh elsewhere.
pub fn incidents_anywhere(node: &crate::node::Node) -> Result<Vec<Incident>> {
    if super::check_root(node).is_ok() {
        return list(&node.home);
    }
    let charter = node.current_charter()?.context("this node is in no mesh")?;
    let root = charter.charter.root_member().context("the charter names no root member")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let relay = node.config.node.relay.to_mesh();
    let json = rt
        .block_on(netsky_mesh::ask(&node.key, root, "incidents", &relay, node.config.node.mdns))
        .with_context(|| format!("cannot ask the root {} for its incidents", root.name))?;
    serde_json::from_slice(&json).context("the root's answer is not a list of incidents")
}

fn read(path: &Path) -> Result<Incident> {
    let buf = crate::home::read_bounded(path, MAX_INCIDENT_BYTES)?;
    serde_json::from_slice(&buf).with_context(|| format!("{} is not an incident", path.display()))
}

/// Writes `i` durably as `state/escalations/<id>.json`.
pub fn save(home: &Home, i: &Incident) -> Result<()> {
    let dir = home.escalations_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_vec_pretty(i).context("incident to JSON")?;
    netsky_bus::write_durable(&dir, &format!("{}.json", i.id), &json)
        .with_context(|| format!("incident {} not written", i.id))?;
    Ok(())
}

/// The open (or acked: still not resolved) incident with this key, if any.
pub fn find_unresolved<'a>(all: &'a mut [Incident], origin: &str, subject: &str) -> Option<&'a mut Incident> {
    all.iter_mut().find(|i| i.state != State::Resolved && i.origin == origin && i.subject == subject)
}
