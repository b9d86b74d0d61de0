//! Raising an escalation: an incident that needs the owner's attention.
//!
//! An escalation is recorded first: a durable `state/escalations/<id>.json`,
//! an `escalation-opened` event and a row in meta.db's `escalations` table.
//! On the root (or a node with no mesh) it then pages the owner through the
//! owner legs, in order, until one takes it (see [`crate::owner`]). On any
//! other node it stays recorded there: relaying it to the root, and
//! re-paging until acked, are not built yet.

use anyhow::{Context, Result};
use netsky_bus::{AgentName, format_ts};
use serde::Serialize;
use time::OffsetDateTime;
use ulid::Ulid;

use crate::node::Node;
use crate::record::EventKind;
use crate::store::EscalationRow;

/// One incident, as written to `state/escalations/<id>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Escalation {
    /// Incident id (ULID).
    pub id: String,
    /// One-line subject.
    pub subject: String,
    /// What happened, for a human.
    pub body: String,
    /// When it was opened (canonical UTC timestamp).
    pub opened: String,
    /// Who raised it: `watchdog`, ...
    pub source: &'static str,
    /// The agent concerned, if any.
    pub agent: Option<String>,
}

/// Opens an escalation: durable file first, then the event and the database row; returns it.
pub fn raise(
    node: &Node,
    source: &'static str,
    agent: Option<AgentName>,
    subject: &str,
    body: &str,
) -> Result<Escalation> {
    let e = Escalation {
        id: Ulid::new().to_string(),
        subject: subject.to_string(),
        body: body.to_string(),
        opened: format_ts(OffsetDateTime::now_utc()),
        source,
        agent: agent.map(|a| a.to_string()),
    };
    let dir = node.home.escalations_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_vec_pretty(&e).context("escalation to JSON")?;
    netsky_bus::write_durable(&dir, &format!("{}.json", e.id), &json)
        .with_context(|| format!("escalation {} not written", e.id))?;
    let rec = &node.recorder;
    rec.record(&[rec.event(EventKind::EscalationOpened, agent, None, Some(format!("{}: {subject}", e.id)))]);
    rec.with_store(|s| {
        s.insert_escalation(&EscalationRow {
            id: &e.id,
            subject: &e.subject,
            body: &e.body,
            opened: &e.opened,
            source: e.source,
            agent: e.agent.as_deref(),
        })
    });
    tracing::warn!(id = %e.id, subject, "escalation raised");
    page_owner(node, &e);
    Ok(e)
}

/// Pages the owner about `e` where this node is the one that talks to the
/// owner; a page that cannot be tried is logged, never a reason to lose the
/// escalation (it is on disk already).
fn page_owner(node: &Node, e: &Escalation) {
    if node.config.owner.legs.is_empty() || crate::owner::check_root(node).is_err() {
        return;
    }
    let page =
        crate::owner::Page::new(node, crate::owner::PageKind::Incident, e.id.clone(), &e.subject, &e.body);
    match crate::owner::page_in_order(node, &page) {
        Ok(attempts) if attempts.iter().any(|a| a.ok) => {}
        Ok(_) => tracing::error!(id = %e.id, "no owner leg took the page; see state/owner-pages.jsonl"),
        Err(err) => tracing::error!(id = %e.id, error = %format!("{err:#}"), "cannot page the owner"),
    }
}
