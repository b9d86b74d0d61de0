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

/// The kinds of event, each with the name written to the logs and meta.db.
/// Never change a name: queries, tests and users match on them, and old
/// logs keep the old names. One list, from which the enum, [`EventKind::ALL`]
/// and [`EventKind::as_str`] are made.
macro_rules! event_kinds {
    ($( $(#[doc = $doc:literal])* $kind:ident = $name:literal, )*) => {
        /// What an event says happened: the `event` field of a log line and of
        /// meta.db's `events` rows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum EventKind {
            $( $(#[doc = $doc])* $kind, )*
        }

        impl EventKind {
            /// Every kind, so a name read back from disk can be matched.
            const ALL: &[EventKind] = &[$(EventKind::$kind),*];

            /// The name written to the logs and meta.db.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$kind => $name,)*
                }
            }
        }
    };
}

event_kinds! {
    /// An envelope was put into a local inbox.
    Sent = "sent",
    /// An envelope for another node was queued in the mesh outbox.
    Queued = "queued",
    /// An envelope was claimed from an inbox for delivery.
    Claimed = "claimed",
    /// An envelope a crashed claimer left in `claimed/` was taken over.
    Adopted = "adopted",
    /// An envelope reached its agent (pasted or drained).
    Delivered = "delivered",
    /// A file in an inbox was refused by the guard and set aside.
    Poisoned = "poisoned",
    /// An envelope from another node was stored in a local inbox.
    Received = "received",
    /// An envelope from another node was here already.
    Duplicate = "duplicate",
    /// An envelope from another node was refused here.
    Refused = "refused",
    /// A peer acknowledged an envelope as durable in its inbox.
    Acked = "acked",
    /// A peer refused an envelope this node sent.
    RemoteRefused = "remote-refused",
    /// A peer's receipt says an envelope reached its agent.
    RemoteDelivered = "remote-delivered",
    /// An envelope in the outbox cannot be sent at all.
    Unsendable = "unsendable",
    /// A delivery receipt for the sender could not be spooled.
    ReceiptFailed = "receipt-failed",
    /// A charter was created, stored or amended.
    Charter = "charter",
    /// A charter offered by a peer was refused.
    CharterRefused = "charter-refused",
    /// A join ticket was issued.
    Invited = "invited",
    /// A node joined the mesh through this root.
    Joined = "joined",
    /// A join attempt was refused.
    JoinRefused = "join-refused",
    /// A connection from a stranger or a revoked node was refused.
    ConnectionRefused = "connection-refused",
    /// A peer broke the wire protocol.
    ProtocolError = "protocol-error",
    /// A peer became reachable.
    PeerUp = "peer-up",
    /// A peer became unreachable.
    PeerDown = "peer-down",
    /// The daemon started.
    DaemonStarted = "daemon-started",
    /// The daemon stopped cleanly.
    DaemonStopped = "daemon-stopped",
    /// The daemon copied itself to the home's last known good binary.
    LkgPromoted = "lkg-promoted",
    /// The shim ran the last known good binary: the live one was missing or broken.
    ShimFallback = "shim-fallback",
    /// The OS said the machine is about to sleep; the node announced itself as leaving.
    SleepNotice = "sleep-notice",
    /// The OS said the machine woke; beacons resume at once.
    Woke = "woke",
    /// The heartbeat thread started.
    TickerStarted = "ticker-started",
    /// The heartbeat thread stopped.
    TickerStopped = "ticker-stopped",
    /// A heartbeat tick failed.
    TickError = "tick-error",
    /// `netsky up` started an agent.
    Started = "started",
    /// `netsky down` stopped an agent.
    Stopped = "stopped",
    /// An agent was restarted (by the watchdog or by hand).
    Restarted = "restarted",
    /// Restarting an agent failed.
    RestartFailed = "restart-failed",
    /// An agent crash-looped; its cooldown began.
    CrashLoop = "crash-loop",
    /// An agent's pane stopped changing for too long.
    HangSuspected = "hang-suspected",
    /// A suspected hang ended.
    HangCleared = "hang-cleared",
    /// An agent's pane could not be read.
    CaptureFailed = "capture-failed",
    /// Pasting an envelope into a pane failed; it stays claimed.
    PasteFailed = "paste-failed",
    /// A delivery round for an agent failed.
    DeliverError = "deliver-error",
    /// An escalation was raised.
    EscalationOpened = "escalation-opened",
    /// The root opened an incident (paged the owner).
    IncidentOpened = "incident-opened",
    /// An escalation joined an open incident with the same origin and subject.
    IncidentJoined = "incident-joined",
    /// The root paged the owner again about an incident nobody acked.
    IncidentRepaged = "incident-repaged",
    /// An incident was acknowledged: no more pages.
    IncidentAcked = "incident-acked",
    /// An incident was resolved: its key opens a new incident next time.
    IncidentResolved = "incident-resolved",
    /// A former root handed an unresolved incident on to the new root.
    IncidentHandedOn = "incident-handed-on",
    /// A message reached the owner's desk and was paged.
    OwnerMessage = "owner-message",
    /// Something at the owner's desk could not be handled (bad input, unknown incident).
    OwnerDeskError = "owner-desk-error",
    /// The root's dead-man's switch could not be reached.
    HeartbeatFailed = "heartbeat-failed",
    /// The root took a member's beacon (its detail: the figures, as JSON: the history).
    Beacon = "beacon",
    /// Recovering a mailbox's journal laid out or restored what crashed writers left.
    JournalRecovered = "journal-recovered",
    /// Recovering a mailbox's journal failed.
    JournalError = "journal-error",
    /// meta.db became unavailable; the logs go on alone.
    StoreError = "store-error",
    /// A question an agent's runtime asked at start was answered in its pane.
    PromptAnswered = "prompt-answered",
    /// An agent's pane shows a question nobody answers; it was escalated.
    PromptEscalated = "prompt-escalated",
    /// An agent's runtime came up and takes input.
    AgentReady = "agent-ready",
    /// An agent was given another runtime (`netsky agent N --type`).
    RuntimeChosen = "runtime-chosen",
    /// A handoff note was stored for an agent's next session.
    HandoffStored = "handoff-stored",
    /// A clone was given a workspace, started, and sent its brief.
    CloneBriefed = "clone-briefed",
    /// A clone reported its brief done (a reply on the bus, or its branch pushed).
    CloneDone = "clone-done",
    /// A clone's session was ended (`netsky clone kill`).
    CloneKilled = "clone-killed",
    /// A harvest fetched a clone's branch from its workspace.
    HarvestFetched = "harvest-fetched",
    /// A harvest rebased the clone's commits onto the target.
    HarvestRebased = "harvest-rebased",
    /// A harvest's check command passed.
    HarvestChecked = "harvest-checked",
    /// A harvest fast-forwarded the target to the clone's commits.
    HarvestLanded = "harvest-landed",
    /// A harvest stopped (no branch, no rebase, a failed or hung check); the target is untouched.
    HarvestRefused = "harvest-refused",
    /// `netsky mcp serve` began serving an agent's mailbox (its detail: pid, permissions).
    McpServing = "mcp-serving",
    /// `netsky mcp serve` stopped serving an agent's mailbox (its detail: why).
    McpStopped = "mcp-stopped",
    /// An envelope was written to an MCP client as a channel notification (flushed).
    Pushed = "pushed",
    /// An MCP client called one of the server's tools (its detail: the tool and the outcome).
    McpTool = "mcp-tool",
    /// A tool-permission request from an agent was relayed to the owner.
    PermissionAsked = "permission-asked",
    /// The owner's answer to a permission request was passed to the agent.
    PermissionAnswered = "permission-answered",
    /// A permission request went unanswered and was denied.
    PermissionTimedOut = "permission-timed-out",
}

impl EventKind {
    /// The kind named `name` (as read back from a log or meta.db), if it is one.
    pub fn parse(name: &str) -> Option<EventKind> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
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
        for &k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k), "{k:?}");
        }
        assert_eq!(EventKind::parse("no-such-event"), None);
    }
}
