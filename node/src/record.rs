//! The evidence trail: every bus event goes to `logs/events-YYYY-MM-DD.jsonl`
//! (with the envelope itself where there is one); `meta.db` is an index of
//! those logs, caught up by the daemon and by readers (see `store`).
//!
//! Files are the truth and the database is the record: a failure to write the
//! database (locked, damaged, newer schema) is logged once and never stops
//! the bus. The JSON lines are appended with one `write` each and are never
//! rewritten, so a reader can reconstruct what happened after the fact.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use netsky_bus::{AgentName, Envelope, NodeName, format_ts};
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
    /// What happened: sent, claimed, delivered, adopted, poisoned, duplicate, ...
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

/// How long catching up waits after finding meta.db busy at open.
const BUSY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// How much of the logs one catch-up reads at most (the rest comes next time).
const CATCH_UP_BUDGET: u64 = 64 << 20;

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
    /// After a busy open, catching up waits until then before trying again.
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

    /// A new event about `env` (if any) in `agent`'s mailbox.
    pub fn event(
        &self,
        event: &'static str,
        agent: Option<AgentName>,
        env: Option<&Envelope>,
        detail: Option<String>,
    ) -> Event {
        Event {
            ts: format_ts(OffsetDateTime::now_utc()),
            node: self.node.to_string(),
            event,
            agent: agent.map(|a| a.to_string()),
            envelope: env.map(|e| e.id.to_string()),
            detail,
            env: env.cloned(),
        }
    }

    /// The event a settle of `agent`'s journal leaves, when it has something
    /// to say: a recovery, or why it failed (a busy mailbox is no news).
    pub fn settled(
        &self,
        agent: AgentName,
        res: &Result<netsky_bus::Settled, netsky_bus::BusError>,
    ) -> Option<Event> {
        match res {
            Ok(s) if s.relaid + s.restored + s.bad + s.rewritten > 0 => {
                let what = format!(
                    "{} laid out again after a crashed writer, {} restored after a restart, {} unreadable journals set aside, {} written again after a failed writeback",
                    s.relaid, s.restored, s.bad, s.rewritten
                );
                Some(self.event("journal-recovered", Some(agent), None, Some(what)))
            }
            Ok(_) | Err(netsky_bus::BusError::Busy { .. }) => None,
            Err(e) => Some(self.event("journal-error", Some(agent), None, Some(e.to_string()))),
        }
    }

    /// Records events: log lines first; an indexing recorder then catches meta.db up.
    pub fn record(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.append_log(events) {
            tracing::warn!(error = %e, "cannot append to the event log");
        }
        if self.index {
            self.catch_up();
        }
    }

    /// Reads what the event logs gained (from any process) into meta.db.
    ///
    /// Another process catching up at the same moment (SQLite busy) is no
    /// failure: the next call takes what this one did not.
    pub fn catch_up(&self) {
        let logs = self.logs.clone();
        self.store_op(true, |store| store.catch_up(&logs, CATCH_UP_BUDGET).map(|_| ()));
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
                tracing::debug!(error = %format!("{e:#}"), "meta.db busy; caught up later");
                return;
            }
            *slot = Err(());
            drop(slot);
            self.store_unavailable(&format!("{e:#}"));
        }
    }

    fn store_unavailable(&self, why: &str) {
        tracing::warn!(db = %self.db.display(), error = why, "meta.db unavailable; the bus goes on, the log has every event");
        let ev = self.event("store-error", None, None, Some(why.to_string()));
        let _ = self.append_log(std::slice::from_ref(&ev));
    }

    fn append_log(&self, events: &[Event]) -> std::io::Result<()> {
        let day = OffsetDateTime::now_utc().date();
        let path = self.logs.join(format!("events-{day}.jsonl"));
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
