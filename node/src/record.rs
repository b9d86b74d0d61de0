//! The evidence trail: every bus event goes to `logs/events-YYYY-MM-DD.jsonl`
//! (with the envelope itself where there is one); `meta.db` is an index of
//! those logs, indexed by the daemon and by readers (see `store`).
//!
//! Files are the truth and the database is the record: a failure to write the
//! database (locked, damaged, newer schema) is logged once and never stops
//! the bus. The JSON lines are appended with one `write` each and are never
//! rewritten, so a reader can reconstruct what happened after the fact.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use netsky_bus::{AgentName, Claimed, Envelope, NodeName, Poisoned, format_ts};
use serde::Serialize;
use time::OffsetDateTime;

use crate::home::Home;
use crate::store::Store;

/// One event, as written to the log and the `events` table.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When (canonical UTC timestamp).
    pub ts: String,
    /// The node that saw it.
    pub node: String,
    /// What happened: an [`EventKind`]'s name.
    pub event: &'static str,
    /// The mailbox involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The envelope id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<String>,
    /// More, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The envelope itself, for the evidence and the database's `envelopes` table.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "envelope_json")]
    pub env: Option<Envelope>,
}

/// What an event says happened: the `event` field of a log line and of
/// meta.db's `events` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An envelope was put into a local inbox.
    Sent,
    /// An envelope for another node was queued in the mesh outbox.
    Queued,
    /// An envelope was claimed from an inbox for delivery.
    Claimed,
    /// An envelope a crashed claimer left in `claimed/` was taken over.
    Adopted,
    /// An envelope reached its agent (pasted or drained).
    Delivered,
    /// A file in an inbox was refused by the guard and set aside.
    Poisoned,
    /// An envelope from another node was stored in a local inbox.
    Received,
    /// An envelope from another node was here already.
    Duplicate,
    /// An envelope from another node was refused here.
    Refused,
    /// A peer acknowledged an envelope as durable in its inbox.
    Acked,
    /// A peer refused an envelope this node sent.
    RemoteRefused,
    /// A peer's receipt says an envelope reached its agent.
    RemoteDelivered,
    /// An envelope in the outbox cannot be sent at all.
    Unsendable,
    /// A delivery receipt for the sender could not be spooled.
    ReceiptFailed,
    /// A charter was created, stored or amended.
    Charter,
    /// A charter offered by a peer was refused.
    CharterRefused,
    /// A join ticket was issued.
    Invited,
    /// A node joined the mesh through this root.
    Joined,
    /// A join attempt was refused.
    JoinRefused,
    /// A connection from a stranger or a revoked node was refused.
    ConnectionRefused,
    /// A peer broke the wire protocol.
    ProtocolError,
    /// A peer became reachable.
    PeerUp,
    /// A peer became unreachable.
    PeerDown,
    /// The daemon started.
    DaemonStarted,
    /// The daemon stopped cleanly.
    DaemonStopped,
    /// The daemon copied itself to the home's last known good binary.
    LkgPromoted,
    /// The shim ran the last known good binary: the live one was missing or broken.
    ShimFallback,
    /// The OS said the machine is about to sleep; the node announced itself as leaving.
    SleepNotice,
    /// The OS said the machine woke; beacons resume at once.
    Woke,
    /// The heartbeat thread started.
    TickerStarted,
    /// The heartbeat thread stopped.
    TickerStopped,
    /// A heartbeat tick failed.
    TickError,
    /// `netsky up` started an agent.
    Started,
    /// `netsky down` stopped an agent.
    Stopped,
    /// An agent was restarted (by the watchdog or by hand).
    Restarted,
    /// Restarting an agent failed.
    RestartFailed,
    /// An agent crash-looped; its cooldown began.
    CrashLoop,
    /// An agent's pane stopped changing for too long.
    HangSuspected,
    /// A suspected hang ended.
    HangCleared,
    /// An agent's pane could not be read.
    CaptureFailed,
    /// Pasting an envelope into a pane failed; it stays claimed.
    PasteFailed,
    /// A delivery round for an agent failed.
    DeliverError,
    /// An escalation was raised.
    EscalationOpened,
    /// The root opened an incident (paged the owner).
    IncidentOpened,
    /// An escalation joined an open incident with the same origin and subject.
    IncidentJoined,
    /// The root paged the owner again about an incident nobody acked.
    IncidentRepaged,
    /// An incident was acknowledged: no more pages.
    IncidentAcked,
    /// An incident was resolved: its key opens a new incident next time.
    IncidentResolved,
    /// A former root handed an unresolved incident on to the new root.
    IncidentHandedOn,
    /// A message reached the owner's desk and was paged.
    OwnerMessage,
    /// Something at the owner's desk could not be handled (bad input, unknown incident).
    OwnerDeskError,
    /// The root's dead-man's switch could not be reached.
    HeartbeatFailed,
    /// The root took a member's beacon (its detail: the figures, as JSON: the history).
    Beacon,
    /// Recovering a mailbox's journal laid out or restored what crashed writers left.
    JournalRecovered,
    /// Recovering a mailbox's journal failed.
    JournalError,
    /// meta.db became unavailable; the logs go on alone.
    StoreError,
    /// A question an agent's runtime asked at start was answered in its pane.
    PromptAnswered,
    /// An agent's pane shows a question nobody answers; it was escalated.
    PromptEscalated,
    /// An agent's runtime came up and takes input.
    AgentReady,
    /// An agent was given another runtime (`netsky agent N --type`).
    RuntimeChosen,
    /// A handoff note was stored for an agent's next session.
    HandoffStored,
    /// A clone was given a workspace, started, and sent its brief.
    CloneBriefed,
    /// A clone reported its brief done (a reply on the bus, or its branch pushed).
    CloneDone,
    /// A clone's session was ended (`netsky clone kill`).
    CloneKilled,
    /// A harvest fetched a clone's branch from its workspace.
    HarvestFetched,
    /// A harvest rebased the clone's commits onto the target.
    HarvestRebased,
    /// A harvest's check command passed.
    HarvestChecked,
    /// A harvest fast-forwarded the target to the clone's commits.
    HarvestLanded,
    /// A harvest stopped (no branch, no rebase, a failed or hung check); the target is untouched.
    HarvestRefused,
    /// `netsky mcp serve` began serving an agent's mailbox (its detail: pid, permissions).
    McpServing,
    /// `netsky mcp serve` stopped serving an agent's mailbox (its detail: why).
    McpStopped,
    /// An envelope was written to an MCP client as a channel notification (flushed).
    Pushed,
    /// An MCP client called one of the server's tools (its detail: the tool and the outcome).
    McpTool,
    /// A tool-permission request from an agent was relayed to the owner.
    PermissionAsked,
    /// The owner's answer to a permission request was passed to the agent.
    PermissionAnswered,
    /// A permission request went unanswered and was denied.
    PermissionTimedOut,
    /// Claude Code's development-channel consent question was answered for `mcp` delivery.
    McpConsent,
}

impl EventKind {
    /// Every kind, so a name read back from disk can be matched.
    const ALL: [EventKind; 77] = [
        EventKind::Sent,
        EventKind::Queued,
        EventKind::Claimed,
        EventKind::Adopted,
        EventKind::Delivered,
        EventKind::Poisoned,
        EventKind::Received,
        EventKind::Duplicate,
        EventKind::Refused,
        EventKind::Acked,
        EventKind::RemoteRefused,
        EventKind::RemoteDelivered,
        EventKind::Unsendable,
        EventKind::ReceiptFailed,
        EventKind::Charter,
        EventKind::CharterRefused,
        EventKind::Invited,
        EventKind::Joined,
        EventKind::JoinRefused,
        EventKind::ConnectionRefused,
        EventKind::ProtocolError,
        EventKind::PeerUp,
        EventKind::PeerDown,
        EventKind::DaemonStarted,
        EventKind::DaemonStopped,
        EventKind::LkgPromoted,
        EventKind::ShimFallback,
        EventKind::SleepNotice,
        EventKind::Woke,
        EventKind::TickerStarted,
        EventKind::TickerStopped,
        EventKind::TickError,
        EventKind::Started,
        EventKind::Stopped,
        EventKind::Restarted,
        EventKind::RestartFailed,
        EventKind::CrashLoop,
        EventKind::HangSuspected,
        EventKind::HangCleared,
        EventKind::CaptureFailed,
        EventKind::PasteFailed,
        EventKind::DeliverError,
        EventKind::EscalationOpened,
        EventKind::IncidentOpened,
        EventKind::IncidentJoined,
        EventKind::IncidentRepaged,
        EventKind::IncidentAcked,
        EventKind::IncidentResolved,
        EventKind::IncidentHandedOn,
        EventKind::OwnerMessage,
        EventKind::OwnerDeskError,
        EventKind::HeartbeatFailed,
        EventKind::Beacon,
        EventKind::JournalRecovered,
        EventKind::JournalError,
        EventKind::StoreError,
        EventKind::PromptAnswered,
        EventKind::PromptEscalated,
        EventKind::AgentReady,
        EventKind::RuntimeChosen,
        EventKind::HandoffStored,
        EventKind::CloneBriefed,
        EventKind::CloneDone,
        EventKind::CloneKilled,
        EventKind::HarvestFetched,
        EventKind::HarvestRebased,
        EventKind::HarvestChecked,
        EventKind::HarvestLanded,
        EventKind::HarvestRefused,
        EventKind::McpServing,
        EventKind::McpStopped,
        EventKind::Pushed,
        EventKind::McpTool,
        EventKind::PermissionAsked,
        EventKind::PermissionAnswered,
        EventKind::PermissionTimedOut,
        EventKind::McpConsent,
    ];

    /// The name written to the logs and meta.db. Never change one: queries,
    /// tests and users match on them, and old logs keep the old names.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Sent => "sent",
            EventKind::Queued => "queued",
            EventKind::Claimed => "claimed",
            EventKind::Adopted => "adopted",
            EventKind::Delivered => "delivered",
            EventKind::Poisoned => "poisoned",
            EventKind::Received => "received",
            EventKind::Duplicate => "duplicate",
            EventKind::Refused => "refused",
            EventKind::Acked => "acked",
            EventKind::RemoteRefused => "remote-refused",
            EventKind::RemoteDelivered => "remote-delivered",
            EventKind::Unsendable => "unsendable",
            EventKind::ReceiptFailed => "receipt-failed",
            EventKind::Charter => "charter",
            EventKind::CharterRefused => "charter-refused",
            EventKind::Invited => "invited",
            EventKind::Joined => "joined",
            EventKind::JoinRefused => "join-refused",
            EventKind::ConnectionRefused => "connection-refused",
            EventKind::ProtocolError => "protocol-error",
            EventKind::PeerUp => "peer-up",
            EventKind::PeerDown => "peer-down",
            EventKind::DaemonStarted => "daemon-started",
            EventKind::LkgPromoted => "lkg-promoted",
            EventKind::ShimFallback => "shim-fallback",
            EventKind::SleepNotice => "sleep-notice",
            EventKind::Woke => "woke",
            EventKind::DaemonStopped => "daemon-stopped",
            EventKind::TickerStarted => "ticker-started",
            EventKind::TickerStopped => "ticker-stopped",
            EventKind::TickError => "tick-error",
            EventKind::Started => "started",
            EventKind::Stopped => "stopped",
            EventKind::Restarted => "restarted",
            EventKind::RestartFailed => "restart-failed",
            EventKind::CrashLoop => "crash-loop",
            EventKind::HangSuspected => "hang-suspected",
            EventKind::HangCleared => "hang-cleared",
            EventKind::CaptureFailed => "capture-failed",
            EventKind::PasteFailed => "paste-failed",
            EventKind::DeliverError => "deliver-error",
            EventKind::EscalationOpened => "escalation-opened",
            EventKind::IncidentOpened => "incident-opened",
            EventKind::IncidentJoined => "incident-joined",
            EventKind::IncidentRepaged => "incident-repaged",
            EventKind::IncidentAcked => "incident-acked",
            EventKind::IncidentResolved => "incident-resolved",
            EventKind::IncidentHandedOn => "incident-handed-on",
            EventKind::OwnerMessage => "owner-message",
            EventKind::OwnerDeskError => "owner-desk-error",
            EventKind::HeartbeatFailed => "heartbeat-failed",
            EventKind::Beacon => "beacon",
            EventKind::JournalRecovered => "journal-recovered",
            EventKind::JournalError => "journal-error",
            EventKind::StoreError => "store-error",
            EventKind::PromptAnswered => "prompt-answered",
            EventKind::PromptEscalated => "prompt-escalated",
            EventKind::AgentReady => "agent-ready",
            EventKind::RuntimeChosen => "runtime-chosen",
            EventKind::HandoffStored => "handoff-stored",
            EventKind::CloneBriefed => "clone-briefed",
            EventKind::CloneDone => "clone-done",
            EventKind::CloneKilled => "clone-killed",
            EventKind::HarvestFetched => "harvest-fetched",
            EventKind::HarvestRebased => "harvest-rebased",
            EventKind::HarvestChecked => "harvest-checked",
            EventKind::HarvestLanded => "harvest-landed",
            EventKind::HarvestRefused => "harvest-refused",
            EventKind::McpServing => "mcp-serving",
            EventKind::McpStopped => "mcp-stopped",
            EventKind::Pushed => "pushed",
            EventKind::McpTool => "mcp-tool",
            EventKind::PermissionAsked => "permission-asked",
            EventKind::PermissionAnswered => "permission-answered",
            EventKind::PermissionTimedOut => "permission-timed-out",
            EventKind::McpConsent => "mcp-consent",
        }
    }

    /// The kind named `name` (as read back from a log or meta.db), if it is one.
    pub fn parse(name: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// How long indexing waits after finding meta.db busy at open.
const BUSY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// How much of the logs one indexing pass reads at most (the rest comes next time).
const INDEX_BUDGET: u64 = 64 << 20;

/// The envelope as its own JSON object inside the log line.
fn envelope_json<S: serde::Serializer>(env: &Option<Envelope>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    let v: Option<serde_json::Value> =
        env.as_ref().map(|e| serde_json::from_slice(&e.to_json())).transpose().map_err(S::Error::custom)?;
    v.serialize(s)
}

/// Writes events to the day's log; an indexing recorder then brings meta.db up to date.
pub struct Recorder {
    node: NodeName,
    logs: PathBuf,
    db: PathBuf,
    /// The database, opened on first use; `Err` once it failed (not retried
    /// in this process, so a broken database costs one warning, not one per event).
    store: Mutex<Result<Option<Store>, ()>>,
    /// Whether `record` also reads the logs into meta.db (the daemon), or
    /// leaves that to whoever reads the database next (short-lived commands).
    index: bool,
    /// After a busy open, indexing waits until then before trying again.
    busy_until: Mutex<Option<std::time::Instant>>,
}

impl Recorder {
    /// A recorder for `home` that writes the log only; the database is opened on first use.
    pub fn new(home: &Home, node: NodeName) -> Recorder {
        Recorder {
            node,
            logs: home.logs_dir(),
            db: home.db_path(),
            store: Mutex::new(Ok(None)),
            index: false,
            busy_until: Mutex::new(None),
        }
    }

    /// A recorder that also brings meta.db up to date after every record (for the daemon).
    pub fn indexing(home: &Home, node: NodeName) -> Recorder {
        Recorder { index: true, ..Recorder::new(home, node) }
    }

    /// A new event of `kind` about `env` (if any) in `agent`'s mailbox.
    pub fn event(
        &self,
        kind: EventKind,
        agent: Option<AgentName>,
        env: Option<&Envelope>,
        detail: Option<String>,
    ) -> Event {
        Event {
            ts: format_ts(OffsetDateTime::now_utc()),
            node: self.node.to_string(),
            event: kind.as_str(),
            agent: agent.map(|a| a.to_string()),
            envelope: env.map(|e| e.id.to_string()),
            detail,
            env: env.cloned(),
        }
    }

    /// The event a recovery of `agent`'s journal leaves, when it has
    /// something to say: what it recovered, or why it failed (a busy mailbox is no news).
    pub fn recovered(
        &self,
        agent: AgentName,
        res: &Result<netsky_bus::Recovered, netsky_bus::BusError>,
    ) -> Option<Event> {
        match res {
            Ok(s) if s.relaid + s.restored + s.bad + s.rewritten > 0 => {
                let what = format!(
                    "{} laid out again after a crashed writer, {} restored after a restart, {} unreadable journals set aside, {} written again after a failed writeback",
                    s.relaid, s.restored, s.bad, s.rewritten
                );
                Some(self.event(EventKind::JournalRecovered, Some(agent), None, Some(what)))
            }
            Ok(_) | Err(netsky_bus::BusError::Busy { .. }) => None,
            Err(e) => Some(self.event(EventKind::JournalError, Some(agent), None, Some(e.to_string()))),
        }
    }

    /// The events of one claim from `agent`'s mailbox, in order: each file
    /// the guard refused, then each envelope claimed (or adopted from a crashed claimer).
    pub fn claim_events(
        &self,
        agent: Option<AgentName>,
        poisoned: &[Poisoned],
        claimed: &[Claimed],
    ) -> Vec<Event> {
        let refused = poisoned.iter().map(|p| {
            self.event(EventKind::Poisoned, agent, None, Some(format!("{}: {}", p.file, p.refusal)))
        });
        let taken = claimed.iter().map(|c| {
            let kind = if c.adopted { EventKind::Adopted } else { EventKind::Claimed };
            self.event(kind, agent, Some(&c.env), None)
        });
        refused.chain(taken).collect()
    }

    /// Records events: log lines first; an indexing recorder then indexes them in meta.db.
    pub fn record(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.append_log(events) {
            tracing::warn!(error = %e, "cannot append to the event log");
        }
        if self.index {
            self.index_logs();
        }
    }

    /// Reads what the event logs gained (from any process) into meta.db.
    ///
    /// Another process indexing at the same moment (SQLite busy) is no
    /// failure: the next call takes what this one did not.
    pub fn index_logs(&self) {
        let logs = self.logs.clone();
        self.store_op(true, |store| store.index_logs(&logs, INDEX_BUDGET).map(|_| ()));
    }

    /// Runs `f` on meta.db (opened on first use); a failure is logged once and disables the store, as for events.
    pub fn with_store(&self, f: impl FnOnce(&mut Store) -> anyhow::Result<()>) {
        self.store_op(false, f)
    }

    fn store_op(&self, busy_is_transient: bool, f: impl FnOnce(&mut Store) -> anyhow::Result<()>) {
        let mut slot = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(opened) = &mut *slot else { return };
        if opened.is_none() {
            let waiting = self
                .busy_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| std::time::Instant::now() < t);
            if busy_is_transient && waiting {
                return;
            }
            match Store::open(&self.db) {
                Ok(s) => *opened = Some(s),
                Err(e) if busy_is_transient && crate::store::is_busy(&e) => {
                    // Not again for a while: each try may wait its busy timeout.
                    tracing::debug!(error = %format!("{e:#}"), "meta.db busy; opened later");
                    *self.busy_until.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(std::time::Instant::now() + BUSY_BACKOFF);
                    return;
                }
                Err(e) => {
                    *slot = Err(());
                    drop(slot);
                    self.store_unavailable(&format!("{e:#}"));
                    return;
                }
            }
        }
        if let Some(store) = opened.as_mut()
            && let Err(e) = f(store)
        {
            if busy_is_transient && crate::store::is_busy(&e) {
                tracing::debug!(error = %format!("{e:#}"), "meta.db busy; indexed later");
                return;
            }
            *slot = Err(());
            drop(slot);
            self.store_unavailable(&format!("{e:#}"));
        }
    }

    fn store_unavailable(&self, why: &str) {
        tracing::warn!(db = %self.db.display(), error = why, "meta.db unavailable; the bus goes on, the log has every event");
        let ev = self.event(EventKind::StoreError, None, None, Some(why.to_string()));
        let _ = self.append_log(std::slice::from_ref(&ev));
    }

    fn append_log(&self, events: &[Event]) -> std::io::Result<()> {
        let day = OffsetDateTime::now_utc().date();
        let path = self.logs.join(crate::store::log_file_name(day));
        let mut buf = Vec::with_capacity(events.len() * 200);
        for e in events {
            serde_json::to_writer(&mut buf, e).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        // One write per batch: O_APPEND keeps concurrent writers' lines whole.
        f.write_all(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn every_event_name_is_distinct_and_reads_back_as_its_kind() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k), "{k:?}");
        }
        assert_eq!(EventKind::parse("no-such-event"), None);
    }
}
