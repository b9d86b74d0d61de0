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
    /// Hold pages about `node`'s silence until `until` (a maintenance window).
    Snooze {
        /// The node.
        node: String,
        /// When the window ends.
        until: String,
    },
    /// An incident handed on by a root that is root no more: the new root
    /// keeps it as it stands, count and re-page schedule included.
    Transfer {
        /// The incident.
        incident: Box<super::incident::Incident>,
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
            queue(node, &env, None, format!("for the root {root}"))?;
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

/// Where an owner message to an agent went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// Into the agent's inbox on this node.
    Inbox,
    /// Into the outbox, for the agent's node.
    Queued(String),
}

/// The root's word from the owner: signs `text` from `owner` to `to` (an
/// agent here or on any member) and makes it durable on its way. Root only.
pub fn say(node: &Node, to: &Address, text: String) -> Result<(Envelope, Said)> {
    super::check_root(node)?;
    let local = &node.config.node.name;
    let to = to.clone().qualified(local);
    let Address::Agent { agent, node: Some(target) } = &to else {
        anyhow::bail!("owner say speaks to an agent (agentN or agentN@node), not to {to}");
    };
    let env = Envelope::new(&node.key, Kind::Owner, Address::Owner, to.clone(), text, None)?;
    let rec = &node.recorder;
    if target == local {
        let here = crate::constellation::agents::answered_for(&node.home, &node.config);
        if !here.contains(*agent) {
            anyhow::bail!(
                "no agent {agent} on this node (agent0, agent1..agent{}, agentinfinity)",
                here.clones
            );
        }
        let mb = Mailbox::open(&node.home.layout(), local, *agent)?;
        mb.put(&env).with_context(|| format!("envelope {} not sent", env.id))?;
        rec.record(&[rec.event(EventKind::Sent, Some(*agent), Some(&env), Some("from the owner".into()))]);
        return Ok((env, Said::Inbox));
    }
    let charter = node.current_charter()?;
    if charter.as_ref().is_none_or(|c| c.charter.member(target).is_none()) {
        anyhow::bail!("node {target} is not a member of this mesh");
    }
    queue(node, &env, Some(*agent), format!("from the owner, for {target}"))?;
    Ok((env, Said::Queued(target.to_string())))
}

/// Writes `env` durably into the outbox, for the mesh to ship, and records it queued.
fn queue(node: &Node, env: &Envelope, agent: Option<AgentName>, detail: String) -> Result<()> {
    let paths = node.home.mesh_paths();
    paths.create()?;
    paths
        .write_outbox(&[(env.file_name(), env.to_json())])
        .map_err(|e| anyhow::anyhow!("envelope {} not sent: {e}", env.id))?;
    let rec = &node.recorder;
    rec.record(&[rec.event(EventKind::Queued, agent, Some(env), Some(detail))]);
    Ok(())
}

/// Splits `agent0@laptop: pause the deploy` into the address and the text;
/// text with no address before a colon goes to agent0 of the root.
pub fn split_addressed(text: &str) -> (Address, String) {
    if let Some((head, rest)) = text.split_once(':')
        && let Ok(to) = head.trim().parse::<Address>()
        && to != Address::Owner
    {
        return (to, rest.trim_start().to_string());
    }
    (Address::Agent { agent: AgentName::ROOT, node: None }, text.to_string())
}
