//! Mail for the owner, from any node: into the owner's desk on the root,
//! here when this node is the root (or in no mesh), else durably into the
//! outbox, which the mesh ships to the root and keeps until it acks.

use anyhow::{Context, Result};
use netsky_bus::{Address, AgentName, Envelope, Holder, Kind, Mailbox};
use serde::{Deserialize, Serialize};

use crate::node::Node;
use crate::record::EventKind;

/// What an escalation envelope's text says (JSON): the root's owner desk acts on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum EscalationOp {
    /// Open an incident, or join the open one with the same origin and subject.
    Open {
        /// One line.
        subject: String,
        /// The detail.
        body: String,
        /// Who raised it (`watchdog`, `cli`).
        #[serde(default)]
        source: Option<String>,
        /// The agent concerned.
        #[serde(default)]
        agent: Option<String>,
    },
    /// Silence the incident `id`.
    Ack {
        /// The incident.
        id: String,
    },
    /// Close the incident `id`.
    Resolve {
        /// The incident.
        id: String,
    },
}

/// Where owner mail went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Into this node's owner desk (this node is the root).
    Desk,
    /// Into the outbox, for the root named here.
    Queued(String),
}

/// Signs `text` as an envelope of `kind` from `from` to `owner` and makes it
/// durable where it goes first; returns it and where that is.
pub fn send(node: &Node, kind: Kind, from: AgentName, text: String) -> Result<(Envelope, Sent)> {
    let local = &node.config.node.name;
    let env =
        Envelope::new(&node.key, kind, Address::agent(from, local.clone()), Address::Owner, text, None)?;
    // The root now: a long-lived caller (the watchdog) must follow a promotion.
    let root = node.current_charter()?.map(|c| c.charter.root).filter(|r| r != local);
    let rec = &node.recorder;
    match root {
        Some(root) => {
            let paths = node.home.mesh_paths();
            paths.create()?;
            paths
                .write_outbox(&[(env.file_name(), env.to_json())])
                .map_err(|e| anyhow::anyhow!("envelope {} not sent: {e}", env.id))?;
            rec.record(&[rec.event(
                EventKind::Queued,
                None,
                Some(&env),
                Some(format!("for the root {root}")),
            )]);
            Ok((env, Sent::Queued(root.to_string())))
        }
        None => {
            let desk = Mailbox::open(&node.home.layout(), local, Holder::Owner)?;
            desk.put(&env).with_context(|| format!("envelope {} not sent", env.id))?;
            rec.record(&[rec.event(EventKind::Sent, None, Some(&env), Some("to the owner's desk".into()))]);
            Ok((env, Sent::Desk))
        }
    }
}

/// Sends an escalation operation to the owner's desk (see [`send`]).
pub fn escalate(node: &Node, from: AgentName, op: &EscalationOp) -> Result<(Envelope, Sent)> {
    send(node, Kind::Escalation, from, serde_json::to_string(op).context("escalation to JSON")?)
}
