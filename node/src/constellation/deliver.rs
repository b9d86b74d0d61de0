//! Delivery: claimed envelopes are pasted into their agent's pane, then delivered.
//!
//! For each agent whose session is alive: take the mailbox lock (skip the
//! agent if a drain holds it), claim (adopting what a crashed claimer left),
//! and for each envelope, oldest first: paste its `<channel>` rendering into
//! the pane, press Enter, and only then move it to `delivered/`. The first
//! failed paste stops that agent's round; it and everything after it stay
//! in `claimed/` and are adopted, in order, by the next round.
//!
//! An agent whose mailbox a `netsky mcp serve` holds is skipped: its server
//! delivers. So is an agent in `mcp` delivery whose server is not up yet:
//! its mail waits (the start-up check answers Claude Code's
//! development-channel consent question, see `first_run`). Past
//! `mcp_server_grace_s` without a server, its mail is pasted after all, and
//! the owner told once per session. An agent
//! without a live pane is not claimed from at all: its envelopes
//! wait in the inbox. A crash between a paste and its rename means that
//! envelope is pasted again after restart (at least once into the pane);
//! the mailbox itself never holds an envelope twice.

use std::collections::BTreeSet;
use std::time::Duration;

use netsky_bus::{AgentName, Guard, Mailbox};

use super::tmux::Tmux;
use crate::node::Node;
use crate::record::EventKind;

/// How long a round waits for another holder of a mailbox lock.
const LOCK_WAIT: Duration = Duration::from_millis(200);

/// Envelopes claimed per agent per round, so one flooded inbox cannot stall a tick.
const MAX_PER_ROUND: usize = 32;

/// What one delivery round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Envelopes pasted and marked delivered.
    pub delivered: usize,
    /// Envelopes refused by the guard.
    pub poisoned: usize,
    /// Pastes that failed (left claimed, retried next round).
    pub failed: usize,
}

/// Delivers waiting envelopes to every agent in `live` (agents with a live pane).
pub fn deliver(node: &Node, tmux: &Tmux, live: &BTreeSet<AgentName>) -> Delivered {
    let mut total = Delivered::default();
    for &agent in live {
        match deliver_one(node, tmux, agent) {
            Ok(d) => {
                total.delivered += d.delivered;
                total.poisoned += d.poisoned;
                total.failed += d.failed;
            }
            Err(e) => {
                total.failed += 1;
                let rec = &node.recorder;
                rec.record(&[rec.event(EventKind::DeliverError, Some(agent), None, Some(format!("{e:#}")))]);
            }
        }
    }
    total
}

fn deliver_one(node: &Node, tmux: &Tmux, agent: AgentName) -> anyhow::Result<Delivered> {
    let mut out = Delivered::default();
    // A handoff goes first, once the new session is ready; until then the mailbox waits.
    match super::handoff::deliver_pending(node, tmux, agent)? {
        super::handoff::Gate::Hold => return Ok(out),
        super::handoff::Gate::Open { pasted } => out.delivered += usize::from(pasted),
    }
    let mailbox = Mailbox::open(&node.home.layout(), &node.config.node.name, agent)?;
    // One deliverer per mailbox: an agent served by `netsky mcp serve`, or
    // started in `mcp` delivery (its server may not run yet), gets its mail from that server.
    if crate::mcp::is_served(&node.home.layout(), agent) {
        return Ok(out);
    }
    if crate::mcp::launch::uses_mcp(node, agent) {
        if !crate::mcp::launch::server_overdue(node, agent) {
            return Ok(out);
        }
        // No server came, or it died: the pane delivers rather than let mail wait forever.
        crate::mcp::launch::report_overdue(node, agent);
    }
    if !mailbox.pending()? {
        return Ok(out);
    }
    // A start-up question on the screen: Enter would answer it, not send the
    // mail. The mail waits until the question is gone (answered, or escalated and seen to).
    if super::readiness::load(node, agent).is_some_and(|r| r.ready_at.is_none() && r.prompt.is_some()) {
        return Ok(out);
    }
    let lock = match mailbox.lock(LOCK_WAIT) {
        Ok(l) => l,
        // Someone drains this mailbox by hand right now; the next round comes soon.
        Err(netsky_bus::BusError::Busy { .. }) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    let roster = node.current_roster()?;
    let guard = Guard::new(&roster);
    let netsky_bus::Claim { claimed, poisoned, recovered } = mailbox.claim(&lock, &guard, MAX_PER_ROUND)?;
    let rec = &node.recorder;
    // What crashed writers left, laid out by this claim (the tick then finds
    // nothing to say); a failing recovery is the tick's to report, once a tick.
    let mut events: Vec<_> =
        if recovered.is_ok() { rec.recovered(agent, &recovered).into_iter().collect() } else { Vec::new() };
    events.extend(rec.claim_events(Some(agent), &poisoned, &claimed));
    rec.record(&events);
    out.poisoned = poisoned.len();
    let scratch = node.home.paste_dir();
    let session = agent.to_string();
    for c in &claimed {
        let buffer = format!("netsky-{}", c.env.id);
        if let Err(e) = tmux.paste(&session, &buffer, &c.env.render_channel(), &scratch) {
            out.failed += 1;
            rec.record(&[rec.event(
                EventKind::PasteFailed,
                Some(agent),
                Some(&c.env),
                Some(format!("{e:#}")),
            )]);
            break;
        }
        // One at a time: a later failure must not leave a pasted envelope claimed.
        mailbox.deliver(&lock, std::slice::from_ref(c))?;
        out.delivered += 1;
        if let Err(e) = crate::receipts::spool(node, agent, "pasted", &[&c.env]) {
            rec.record(&[rec.event(
                EventKind::ReceiptFailed,
                Some(agent),
                Some(&c.env),
                Some(format!("{e:#}")),
            )]);
        }
        rec.record(&[rec.event(
            EventKind::Delivered,
            Some(agent),
            Some(&c.env),
            Some("pasted into pane".into()),
        )]);
    }
    Ok(out)
}
