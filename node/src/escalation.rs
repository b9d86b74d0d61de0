//! Raising an escalation: a failure somewhere that needs the owner.
//!
//! The origin keeps its own evidence (an `escalation-opened` event and a row
//! in meta.db's `escalations` table), then sends the escalation to the
//! owner's desk on the root as a signed envelope: into its own desk when it
//! is the root, else durably into the outbox, kept until the root acks. The
//! root turns it into an incident and pages (see [`crate::owner`]).

use anyhow::Result;
use netsky_bus::{AgentName, format_ts};
use time::OffsetDateTime;

use crate::node::Node;
use crate::owner::{self, EscalationOp};
use crate::record::EventKind;
use crate::store::EscalationRow;

/// One raised escalation, as its origin knows it.
#[derive(Debug, Clone)]
pub struct Escalation {
    /// The envelope's id: the incident's id if it opens one on the root.
    pub id: String,
}

/// Raises an escalation from `source` (about `agent`, if any); returns its id.
pub fn raise(
    node: &Node,
    source: &'static str,
    agent: Option<AgentName>,
    subject: &str,
    body: &str,
) -> Result<Escalation> {
    let op = EscalationOp::Open {
        subject: subject.to_string(),
        body: body.to_string(),
        source: Some(source.to_string()),
        agent: agent.map(|a| a.to_string()),
    };
    // The watchdog speaks for the node; anything else for agent0.
    let from = if source == "watchdog" { AgentName::Infinity } else { AgentName::ROOT };
    let (env, sent) = owner::escalate(node, from, &op)?;
    let id = env.id.to_string();
    let whither = match sent {
        owner::Sent::Desk => "the owner's desk here".to_string(),
        owner::Sent::Queued(root) => format!("the root {root}"),
    };
    let rec = &node.recorder;
    let detail = format!("{id}: {subject} (to {whither})");
    rec.record(&[rec.event(EventKind::EscalationOpened, agent, Some(&env), Some(detail))]);
    let opened = format_ts(OffsetDateTime::now_utc());
    let agent_name = agent.map(|a| a.to_string());
    rec.with_store(|s| {
        s.insert_escalation(&EscalationRow {
            id: &id,
            subject,
            body,
            opened: &opened,
            source,
            agent: agent_name.as_deref(),
        })
    });
    tracing::warn!(id = %id, subject, "escalation raised");
    Ok(Escalation { id })
}
