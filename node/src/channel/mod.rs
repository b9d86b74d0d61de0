//! The bus operations a caller asks for by name: send an envelope, say
//! where one is, count a mailbox. `netsky channel send | status | ls` and
//! the MCP server's `send`, `status` and `inbox` tools both call these, so
//! the two paths write and read the same way.
//!
//! What it does not do: wait for a remote acknowledgement (the command
//! line's `--wait`), print anything, or read the message from stdin.

pub mod status;

use anyhow::{Context, Result, bail};
use netsky_bus::{Address, AgentName, Envelope, Holder, Kind, Mailbox, NodeName, PutOutcome, format_ts};
use serde::Serialize;

use crate::constellation::agents;
use crate::node::Node;
use crate::record::EventKind;

/// What to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Recipient: `agentN`, `agentN@node`, `owner`.
    pub to: Address,
    /// The message.
    pub text: String,
    /// The sending agent of this node.
    pub from: AgentName,
    /// What the envelope is for.
    pub kind: Kind,
    /// The envelope it answers.
    pub in_reply_to: Option<ulid::Ulid>,
}

/// What `send` did: the envelope and where it is now.
#[derive(Debug, Clone, Serialize)]
pub struct SendOut {
    /// The envelope id.
    pub id: String,
    /// The sender, fully qualified.
    pub from: String,
    /// The recipient, fully qualified.
    pub to: String,
    /// The envelope's kind.
    pub kind: &'static str,
    /// Its creation time.
    pub ts: String,
    /// inbox | duplicate (local); queued | acked (remote).
    pub state: &'static str,
    /// More about the state, when there is more to say.
    pub detail: Option<String>,
}

impl SendOut {
    /// The output for `env` in `state`.
    pub fn new(env: &Envelope, state: &'static str) -> SendOut {
        SendOut {
            id: env.id.to_string(),
            from: env.from.to_string(),
            to: env.to.to_string(),
            kind: env.kind.as_str(),
            ts: format_ts(env.ts),
            state,
            detail: None,
        }
    }
}

/// A sent envelope and, when it went into the outbox, the node it waits for.
#[derive(Debug)]
pub struct Sent {
    /// What to report.
    pub out: SendOut,
    /// The envelope as signed.
    pub env: Envelope,
    /// The node whose acknowledgement it waits for (remote sends only).
    pub queued_for: Option<NodeName>,
}

/// Signs and sends `o`: durable in the local inbox (or the owner's desk on
/// the root) on return, or durable in the outbox for another node.
pub fn send(node: &Node, o: Outgoing) -> Result<Sent> {
    let local = &node.config.node.name;
    let to = o.to.qualified(local);
    let from = Address::agent(o.from, local.clone());
    let target = match &to {
        // Owner mail lands in the owner's desk on the root: here, or through the mesh.
        Address::Owner => match node.charter.as_ref().map(|c| &c.charter.root).filter(|r| *r != local) {
            Some(root) => {
                let env = Envelope::new(&node.key, o.kind, from, to.clone(), o.text, o.in_reply_to)?;
                return queue(node, root, env);
            }
            None => Holder::Owner,
        },
        Address::Agent { agent, node: Some(n) } if n == local => {
            let here = agents::answered_for(&node.home, &node.config);
            if !here.contains(*agent) {
                bail!("no agent {agent} on this node (agent0, agent1..agent{}, agentinfinity)", here.clones);
            }
            Holder::Agent(*agent)
        }
        Address::Agent { node: Some(n), .. } => {
            let env = Envelope::new(&node.key, o.kind, from, to.clone(), o.text, o.in_reply_to)?;
            return queue(node, n, env);
        }
        Address::Agent { node: None, .. } => bail!("address {to} has no node after qualification"),
    };
    let env = Envelope::new(&node.key, o.kind, from, to, o.text, o.in_reply_to)?;
    let mailbox = Mailbox::open(&node.home.layout(), local, target)?;
    let outcome = mailbox.put(&env).with_context(|| format!("envelope {} not sent", env.id))?;
    let state = match outcome {
        PutOutcome::Stored => "inbox",
        PutOutcome::Duplicate => "duplicate",
    };
    let agent = match target {
        Holder::Agent(a) => Some(a),
        Holder::Owner => None,
    };
    node.recorder.record(&[node.recorder.event(EventKind::Sent, agent, Some(&env), None)]);
    Ok(Sent { out: SendOut::new(&env, state), env, queued_for: None })
}

/// Makes `env` durable in the outbox for node `target`, where the daemon picks it up at once.
fn queue(node: &Node, target: &NodeName, env: Envelope) -> Result<Sent> {
    let Some(c) = &node.charter else {
        bail!("node {target} is unknown: this node is in no mesh (join one with `netsky mesh join TICKET`)");
    };
    if c.charter.member(target).is_none() {
        let names: Vec<&str> = c.charter.members.iter().map(|m| m.name.as_str()).collect();
        bail!("node {target} is not a member of mesh {} (members: {})", c.charter.mesh, names.join(", "));
    }
    let paths = node.home.mesh_paths();
    paths.create()?;
    paths
        .write_outbox(&[(env.file_name(), env.to_json())])
        .map_err(|e| anyhow::anyhow!("envelope {} not sent: {e}", env.id))?;
    node.recorder.record(&[node.recorder.event(
        EventKind::Queued,
        env.to.agent_name(),
        Some(&env),
        Some(format!("for {target}")),
    )]);
    Ok(Sent { out: SendOut::new(&env, "queued"), env, queued_for: Some(target.clone()) })
}

/// One mailbox's entries per lifecycle folder.
#[derive(Debug, Clone, Serialize)]
pub struct LsRow {
    /// The agent.
    pub agent: String,
    /// Waiting to be claimed.
    pub inbox: usize,
    /// Claimed, not yet delivered.
    pub claimed: usize,
    /// Delivered (the audit trail).
    pub delivered: usize,
    /// Refused by the guard.
    pub poison: usize,
}

/// Counts `agent`'s mailbox.
pub fn counts(node: &Node, agent: AgentName) -> Result<LsRow> {
    let c = Mailbox::open(&node.home.layout(), &node.config.node.name, agent)?.counts()?;
    Ok(LsRow {
        agent: agent.to_string(),
        inbox: c.inbox,
        claimed: c.claimed,
        delivered: c.delivered,
        poison: c.poison,
    })
}
