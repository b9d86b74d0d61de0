//! The receiving side of a push: every envelope passes the full guard, then
//! is made durable in its target inbox, and only then acknowledged.
//!
//! Checks, in order: size and shape, the guard (membership, revocation,
//! signature, clock, wrapper tokens), that the connection's peer is the
//! envelope's origin (no relaying of others' envelopes), that it is
//! addressed to an agent of this node that exists (or to `owner`, on the
//! root only: into the owner's desk), and the id (a duplicate
//! is acknowledged without being written again). Envelopes for one mailbox
//! share one durability barrier (group commit).

use std::collections::BTreeMap;

use netsky_bus::{
    Address, AgentName, Envelope, Guard, Holder, Layout, MAX_ENVELOPE_BYTES, Mailbox, NodeName, PutOutcome,
    Refusal, RefusalKind, Roster,
};
use netsky_keys::NodeId;

use crate::MeshError;
use crate::wire::{Ack, Outcome};

/// What happened to one pushed envelope, for the caller's records.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// The envelope, when it parsed.
    pub env: Option<Envelope>,
    /// The target mailbox, when known.
    pub holder: Option<Holder>,
    /// The ack sent back.
    pub ack: Ack,
}

/// Who may receive a push here: which agents exist, and whether this node
/// is the root (the one that holds the owner's desk).
pub struct Receivers<'a> {
    /// Whether an agent exists on this node.
    pub agent_exists: &'a (dyn Fn(AgentName) -> bool + Send + Sync),
    /// Whether this node is the charter's root.
    pub is_root: bool,
}

/// Checks and stores a batch pushed by `remote`; returns one result per envelope, in order.
///
/// An `Err` means nothing was acknowledged (the disk failed): the sender keeps
/// its copies and retries.
pub fn ingest(
    layout: &Layout,
    local: &NodeName,
    roster: &Roster,
    receivers: &Receivers<'_>,
    remote: NodeId,
    envs: Vec<Vec<u8>>,
) -> Result<Vec<Ingested>, MeshError> {
    let guard = Guard::new(roster);
    let mut out: Vec<Ingested> = Vec::with_capacity(envs.len());
    // Mailbox -> indices into `out` of envelopes that passed every check.
    let mut passed: BTreeMap<Holder, Vec<usize>> = BTreeMap::new();
    // The guard sees the whole push at once: its signatures are checked as one batch.
    let sized: Vec<&[u8]> =
        envs.iter().filter(|b| b.len() <= MAX_ENVELOPE_BYTES).map(Vec::as_slice).collect();
    let mut guarded = guard.check_many(&sized).into_iter();
    for (i, bytes) in envs.iter().enumerate() {
        let verdict = if bytes.len() <= MAX_ENVELOPE_BYTES { guarded.next() } else { None };
        match check(verdict, local, receivers, remote, bytes) {
            Ok((env, holder)) => {
                passed.entry(holder).or_default().push(out.len());
                let ack = Ack { id: env.id.to_string(), outcome: Outcome::Stored };
                out.push(Ingested { env: Some(env), holder: Some(holder), ack });
            }
            Err(refused) => {
                let (env, r) = *refused;
                let id = env.as_ref().map(|e| e.id.to_string()).unwrap_or_else(|| format!("#{i}"));
                let ack =
                    Ack { id, outcome: Outcome::Refused { kind: r.kind.as_str().into(), reason: r.reason } };
                out.push(Ingested { env, holder: None, ack });
            }
        }
    }
    for (holder, idx) in passed {
        let mb = Mailbox::open(layout, local, holder)?;
        let batch: Vec<Envelope> = idx.iter().filter_map(|&i| out[i].env.clone()).collect();
        let outcomes = mb.put_batch(&batch)?;
        for (&i, o) in idx.iter().zip(outcomes) {
            if o == PutOutcome::Duplicate {
                out[i].ack.outcome = Outcome::Duplicate;
            }
        }
    }
    Ok(out)
}

type Checked = Result<(Envelope, Holder), Box<(Option<Envelope>, Refusal)>>;

/// The checks of one pushed envelope, given the guard's verdict on it
/// (`None` for one too big to have been shown to the guard).
fn check(
    verdict: Option<Result<Envelope, Refusal>>,
    local: &NodeName,
    receivers: &Receivers<'_>,
    remote: NodeId,
    bytes: &[u8],
) -> Checked {
    let Some(verdict) = verdict else {
        let r = Refusal::new(RefusalKind::Oversized, format!("{} bytes, over the limit", bytes.len()));
        return Err(Box::new((None, r)));
    };
    let env = verdict.map_err(|r| Box::new((Envelope::from_json(bytes).ok(), r)))?;
    if env.origin != remote {
        let r = Refusal::new(
            RefusalKind::ForgedOrigin,
            format!("signed by {} but pushed by {}", env.origin.fmt_short(), remote.fmt_short()),
        );
        return Err(Box::new((Some(env), r)));
    }
    if env.to == Address::Owner {
        if !receivers.is_root {
            // Owner mail is the root's alone; the sender keeps it, refused, with the reason.
            let r =
                Refusal::new(RefusalKind::WrongRecipient, format!("{local} is not the root of this mesh"));
            return Err(Box::new((Some(env), r)));
        }
        return Ok((env, Holder::Owner));
    }
    let Some(agent) = env.to.agent_on(local) else {
        let r = Refusal::new(
            RefusalKind::WrongRecipient,
            format!("addressed to {}, not to this node {local}", env.to),
        );
        return Err(Box::new((Some(env), r)));
    };
    if !(receivers.agent_exists)(agent) {
        let r = Refusal::new(RefusalKind::WrongRecipient, format!("no agent {agent} on node {local}"));
        return Err(Box::new((Some(env), r)));
    }
    Ok((env, Holder::Agent(agent)))
}
