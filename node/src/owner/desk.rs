//! The owner's desk: on the root, what arrived for `owner` becomes pages.
//!
//! The desk is a mailbox (`channels/owner/`) with every guarantee of one:
//! durable puts, the guard on claim (signatures against the current
//! charter), dedupe by id, `delivered/` as the trail. The root's daemon
//! claims it on every wake and tick ([`run`]): an escalation opens or joins
//! an incident, an ack or a resolve changes one, anything else is a message
//! paged to the owner. An envelope is marked delivered only once handled, so
//! a crash in between pages it again rather than never.

use std::time::Duration;

use anyhow::{Context, Result};
use netsky_bus::{Envelope, Guard, Holder, Kind, Mailbox, format_ts, parse_ts};
use time::OffsetDateTime;

use super::incident::{self, Incident, State};
use super::relay::EscalationOp;
use super::{Page, PageKind, check_root, page_every_leg, page_in_order};
use crate::node::Node;
use crate::record::EventKind;

/// Envelopes one round takes from the desk at most.
const MAX_PER_ROUND: usize = 256;

/// How soon a page that no leg took is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The heartbeat's share: on the root, what waits at the desk and the
/// re-pages that are due; on a node that is root no more, handing on the
/// incidents it still holds. Incident files are read here, once a tick, not
/// on every wake.
pub fn tick(node: &Node) -> Result<()> {
    if check_root(node).is_err() {
        return hand_on(node);
    }
    run(node)?;
    repage(node)
}

/// Handles what waits at the desk (root only): every wake runs this, so it
/// costs a listing of the desk's inbox when nothing waits.
pub fn run(node: &Node) -> Result<()> {
    if check_root(node).is_err() {
        return Ok(());
    }
    let desk = Mailbox::open(&node.home.layout(), &node.config.node.name, Holder::Owner)?;
    if desk.pending()? {
        // Never waits: another holder (a drain) is handling it now.
        if let Ok(lock) = desk.lock(Duration::ZERO) {
            let roster = node.current_roster()?;
            let claim = desk.claim(&lock, &Guard::new(&roster), MAX_PER_ROUND)?;
            let rec = &node.recorder;
            rec.record(&rec.claim_events(None, &claim.poisoned, &claim.claimed));
            let mut all = incident::list(&node.home)?;
            // Joins are counted in memory and each changed incident written
            // once per round, before the round's envelopes are marked
            // delivered: a crash in between counts them again from the
            // last written state, never twice.
            let mut joined = std::collections::BTreeMap::new();
            for c in &claim.claimed {
                handle(node, &mut all, &c.env, &mut joined)?;
            }
            for i in all.iter() {
                if let Some(n) = joined.get(&i.id) {
                    incident::save(&node.home, i)?;
                    // One event per incident and round: a flood is counted, not logged line by line
                    // (each envelope stays in the desk's delivered/ as the trail).
                    let detail = format!("{n} escalation(s) joined incident {} ({} so far)", i.id, i.count);
                    rec.record(&[rec.event(EventKind::IncidentJoined, None, None, Some(detail))]);
                }
            }
            desk.deliver(&lock, &claim.claimed)?;
        }
    }
    Ok(())
}

/// One envelope at the desk; an incident it joined is counted in `joined`, to be written.
fn handle(
    node: &Node,
    all: &mut Vec<Incident>,
    env: &Envelope,
    joined: &mut std::collections::BTreeMap<String, u64>,
) -> Result<()> {
    let rec = &node.recorder;
    let from = env.from.to_string();
    let origin = env.from.node().map(|n| n.to_string()).unwrap_or_default();
    let op = match env.kind {
        Kind::Escalation => match serde_json::from_str::<EscalationOp>(&env.text) {
            Ok(op) => Some(op),
            Err(e) => {
                // Nothing is dropped silently: the owner hears of it as a message.
                let detail = format!("escalation from {from} is not an operation ({e}); paged as a message");
                rec.record(&[rec.event(EventKind::OwnerDeskError, None, Some(env), Some(detail))]);
                None
            }
        },
        _ => None,
    };
    let now = OffsetDateTime::now_utc();
    match op {
        Some(EscalationOp::Open { subject, body, source, agent }) => {
            if let Some(i) = incident::find_unresolved(all, &origin, &subject) {
                i.count += 1;
                *joined.entry(i.id.clone()).or_default() += 1;
                return Ok(());
            }
            let mut i = Incident {
                id: env.id.to_string(),
                origin,
                subject,
                body,
                source,
                agent,
                opened: format_ts(now),
                count: 1,
                state: State::Open,
                acked_by: None,
                resolved_by: None,
                pages: 0,
                next_page: Some(format_ts(now)),
            };
            // On disk before the first page: a crash mid-page pages again, never loses it.
            incident::save(&node.home, &i)?;
            rec.record(&[rec.event(EventKind::IncidentOpened, None, Some(env), Some(i.subject.clone()))]);
            page_incident(node, &mut i, false)?;
            all.push(i);
        }
        Some(EscalationOp::Transfer { incident }) => {
            if all.iter().all(|i| i.id != incident.id) {
                incident::save(&node.home, &incident)?;
                let detail = format!("incident {} taken over from {from}", incident.id);
                rec.record(&[rec.event(EventKind::IncidentOpened, None, Some(env), Some(detail))]);
                all.push(*incident);
            }
        }
        Some(EscalationOp::Snooze { node: who, until }) => {
            crate::beacon::snooze(&node.home, &who, &until)?;
            let detail = format!("{who} may be silent until {until} (by {from})");
            rec.record(&[rec.event(EventKind::OwnerMessage, None, Some(env), Some(detail))]);
        }
        Some(EscalationOp::Ack { id }) => change(node, all, env, &id, State::Acked)?,
        Some(EscalationOp::Resolve { id }) => change(node, all, env, &id, State::Resolved)?,
        None => {
            let page =
                Page::new(node, PageKind::Message, env.id.to_string(), &format!("from {from}"), &env.text);
            let page = Page { origin, ..page };
            let attempts = page_in_order(node, &page)?;
            let detail = format!("paged: {}", attempts.iter().any(|a| a.ok));
            rec.record(&[rec.event(EventKind::OwnerMessage, None, Some(env), Some(detail))]);
        }
    }
    Ok(())
}

/// Acks or resolves incident `id` for the sender of `env`.
fn change(node: &Node, all: &mut [Incident], env: &Envelope, id: &str, to: State) -> Result<()> {
    let rec = &node.recorder;
    let Some(i) = all.iter_mut().find(|i| i.id == id) else {
        let detail = format!("{} from {}: no incident {id}", env.kind.as_str(), env.from);
        rec.record(&[rec.event(EventKind::OwnerDeskError, None, Some(env), Some(detail))]);
        return Ok(());
    };
    let by = format!("{} at {}", env.from, format_ts(OffsetDateTime::now_utc()));
    let kind = match to {
        State::Acked if i.state == State::Open => {
            i.acked_by = Some(by);
            EventKind::IncidentAcked
        }
        State::Resolved if i.state != State::Resolved => {
            i.resolved_by = Some(by);
            EventKind::IncidentResolved
        }
        // Acked twice, or acked once resolved: nothing changes.
        _ => return Ok(()),
    };
    i.state = to;
    i.next_page = None;
    incident::save(&node.home, i)?;
    rec.record(&[rec.event(kind, None, Some(env), Some(format!("incident {id} by {}", env.from)))]);
    Ok(())
}

/// Pages `i` (every leg in its final round) and sets its next page.
fn page_incident(node: &Node, i: &mut Incident, again: bool) -> Result<()> {
    let owner = &node.config.owner;
    let last = i.pages > owner.max_repages;
    let mut page = Page::new(node, PageKind::Incident, i.id.clone(), &i.subject, &i.body);
    page.origin = i.origin.clone();
    if i.count > 1 {
        page.body = format!("{} ({} escalations)", i.body, i.count);
    }
    let attempts = if last { page_every_leg(node, &page)? } else { page_in_order(node, &page)? };
    let now = OffsetDateTime::now_utc();
    let next = if attempts.iter().any(|a| a.ok) {
        i.pages += 1;
        (!last).then(|| now + Duration::from_secs(owner.repage_after_s))
    } else {
        // No leg took it: the next round tries again, not the next re-page.
        Some(now + RETRY_AFTER.min(Duration::from_secs(owner.repage_after_s)))
    };
    i.next_page = next.map(format_ts);
    incident::save(&node.home, i)?;
    if again {
        let rec = &node.recorder;
        let detail = format!("incident {} page {}", i.id, i.pages);
        rec.record(&[rec.event(EventKind::IncidentRepaged, None, None, Some(detail))]);
    }
    Ok(())
}

/// A former root's incidents, unresolved, sent to the new root (durably, in
/// the outbox), then removed here: the root that pages is the one that holds them.
fn hand_on(node: &Node) -> Result<()> {
    for i in incident::list(&node.home)?.into_iter().filter(|i| i.state != State::Resolved) {
        let id = i.id.clone();
        let op = EscalationOp::Transfer { incident: Box::new(i) };
        let (_, sent) = super::relay::escalate(node, netsky_bus::AgentName::ROOT, &op)?;
        let path = node.home.escalations_dir().join(format!("{id}.json"));
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        let rec = &node.recorder;
        let to = match sent {
            super::Sent::Queued(root) => root,
            super::Sent::Desk => "this node".into(),
        };
        rec.record(&[rec.event(
            EventKind::IncidentHandedOn,
            None,
            None,
            Some(format!("incident {id} to {to}")),
        )]);
    }
    Ok(())
}

/// Re-pages every open incident whose next page is due.
fn repage(node: &Node) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    for mut i in incident::list(&node.home)? {
        let due =
            i.state == State::Open && i.next_page.as_deref().and_then(parse_ts).is_some_and(|t| t <= now);
        if due {
            page_incident(node, &mut i, true)?;
        }
    }
    Ok(())
}
