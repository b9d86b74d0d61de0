//! The pusher: one thread per server that hands the served agent's mail to
//! the MCP client as channel notifications.
//!
//! It waits for the client's `initialized`, then runs a round on every wake
//! (a file watcher on the agent's inbox, the `notify` crate, owned by the
//! thread) and at least once a second (what a killed writer left in the
//! journal, a missed watcher event). A round, under the mailbox lock: claim
//! (adopting what a dead server left claimed, oldest first, through the
//! guard, so the wrapper-token rule and every other check hold), then for
//! each envelope write `notifications/claude/channel` to stdout and wait
//! until rmcp has flushed it, and only then move the envelope to
//! `delivered/`. A write that fails or is not flushed within the push
//! timeout (a client that stopped reading) ends the server: that
//! envelope and the rest stay claimed, and the next server pushes them
//! once. A kill -9 between the flush and the rename pushes that one
//! envelope again on the next server (at least once to the client; the
//! mailbox never holds it twice).
//!
//! With the permission relay on, an envelope from `owner` whose text answers
//! a waiting permission request is not pushed: it becomes the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use netsky_bus::{Address, AgentName, Claimed, Guard, Mailbox, format_ts};
use rmcp::model::{CustomNotification, ServerNotification};
use rmcp::{Peer, RoleServer};
use tokio_util::sync::CancellationToken;

use super::permission::{self, Behavior, Pending};
use crate::node::Node;
use crate::record::EventKind;

/// The longest wait between rounds, whatever the watcher says.
const POLL: Duration = Duration::from_secs(1);

/// How long a round waits for the mailbox lock (a `channel ls` or a crash recovery holds it briefly).
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// Envelopes claimed per round: a flooded inbox still lets the loop look at permission deadlines.
const MAX_PER_ROUND: usize = 32;

/// How often a bus error that keeps coming back is recorded.
const TROUBLE_EVERY: Duration = Duration::from_secs(60);

/// The method of a pushed envelope.
pub const CHANNEL_METHOD: &str = "notifications/claude/channel";

/// What wakes the pusher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Mail may wait (or the client just initialized): run a round.
    Inbox,
    /// Finish the current push and exit.
    Shutdown,
}

/// What the pusher needs.
pub struct Pusher {
    /// The node.
    pub node: Arc<Node>,
    /// The served agent.
    pub agent: AgentName,
    /// The client.
    pub peer: Peer<RoleServer>,
    /// The runtime the service runs on (sends are awaited from this thread).
    pub rt: tokio::runtime::Handle,
    /// Set once the client said `initialized`.
    pub started: Arc<AtomicBool>,
    /// Permission requests waiting for the owner.
    pub pending: Arc<Pending>,
    /// Whether the permission relay is on.
    pub relay: bool,
    /// Cancels the whole service when the pusher cannot go on.
    pub stop: CancellationToken,
    /// How long one notification may take to be written and flushed.
    pub push_timeout: Duration,
}

/// Starts the pusher thread; it ends on [`Wake::Shutdown`] or when it cannot push.
pub fn spawn(p: Pusher, tx: SyncSender<Wake>, rx: Receiver<Wake>) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name(format!("netsky-mcp-push-{}", p.agent))
        .spawn(move || {
            let res = p.run(tx, rx);
            if res.is_err() {
                // The client cannot be written to: the service ends too.
                p.stop.cancel();
            }
            res
        })
        .context("cannot start the pusher thread")
}

impl Pusher {
    fn run(&self, tx: SyncSender<Wake>, rx: Receiver<Wake>) -> Result<()> {
        let mailbox = Mailbox::open(&self.node.home.layout(), &self.node.config.node.name, self.agent)?;
        // Without a watcher (inotify's limit reached, say) the poll alone still delivers, a second later.
        let _watcher = match watch(mailbox.inbox_dir(), tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(agent = %self.agent, error = %format!("{e:#}"), "no inbox watcher: polling only");
                None
            }
        };
        let mut last_trouble: Option<Instant> = None;
        loop {
            let wait = match self.pending.next_deadline() {
                Some(d) => d.saturating_duration_since(Instant::now()).min(POLL),
                None => POLL,
            };
            match rx.recv_timeout(wait) {
                Ok(Wake::Shutdown) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Ok(Wake::Inbox) | Err(RecvTimeoutError::Timeout) => {}
            }
            // A burst of wakes is one round; a shutdown among them still counts.
            while let Ok(w) = rx.try_recv() {
                if w == Wake::Shutdown {
                    return Ok(());
                }
            }
            if !self.started.load(Ordering::Acquire) {
                continue;
            }
            self.expire()?;
            if let Err(e) = self.round(&mailbox) {
                if e.chain().any(|c| c.is::<ClientGone>()) {
                    return Err(e);
                }
                // The bus, not the client (a charter mid-rewrite, a journal to recover):
                // said at most once a minute, and tried again at the next wake or poll.
                if last_trouble.is_none_or(|t| t.elapsed() >= TROUBLE_EVERY) {
                    last_trouble = Some(Instant::now());
                    let rec = &self.node.recorder;
                    rec.record(&[rec.event(
                        EventKind::DeliverError,
                        Some(self.agent),
                        None,
                        Some(format!("{e:#}")),
                    )]);
                }
            }
        }
    }

    /// Denies every permission request whose time ran out.
    fn expire(&self) -> Result<()> {
        for id in self.pending.expired(Instant::now()) {
            self.answer(&id, Behavior::Deny)?;
            let rec = &self.node.recorder;
            rec.record(&[rec.event(
                EventKind::PermissionTimedOut,
                Some(self.agent),
                None,
                Some(format!("request {id}: no answer from the owner in time; denied")),
            )]);
        }
        Ok(())
    }

    /// Claims and pushes until the inbox is empty (or the mailbox is busy).
    fn round(&self, mailbox: &Mailbox) -> Result<()> {
        // A handoff or brief goes first, pasted into the pane once the session is ready.
        if crate::constellation::handoff::pending(&self.node, self.agent).is_some() {
            return Ok(());
        }
        loop {
            if !mailbox.pending()? {
                return Ok(());
            }
            let lock = match mailbox.lock(LOCK_WAIT) {
                Ok(l) => l,
                // Briefly held by someone else: the next wake or poll comes soon.
                Err(netsky_bus::BusError::Busy { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let roster = self.node.current_roster()?;
            let guard = Guard::new(&roster);
            let netsky_bus::Claim { claimed, poisoned, recovered } =
                mailbox.claim(&lock, &guard, MAX_PER_ROUND)?;
            let rec = &self.node.recorder;
            // A failing recovery is the daemon's tick to report, once a tick, not every round here.
            let mut events: Vec<_> = if recovered.is_ok() {
                rec.recovered(self.agent, &recovered).into_iter().collect()
            } else {
                Vec::new()
            };
            events.extend(rec.claim_events(Some(self.agent), &poisoned, &claimed));
            rec.record(&events);
            for c in &claimed {
                if self.is_answer(c)? {
                    mailbox.deliver(&lock, std::slice::from_ref(c))?;
                    continue;
                }
                let started = Instant::now();
                self.push(c).with_context(|| {
                    format!("envelope {} not pushed; it stays claimed for the next server", c.env.id)
                })?;
                let us = started.elapsed().as_micros();
                // One at a time: a later failure must not leave a pushed envelope claimed.
                mailbox.deliver(&lock, std::slice::from_ref(c))?;
                if let Err(e) = crate::receipts::spool(&self.node, self.agent, "pushed", &[&c.env]) {
                    rec.record(&[rec.event(
                        EventKind::ReceiptFailed,
                        Some(self.agent),
                        Some(&c.env),
                        Some(format!("{e:#}")),
                    )]);
                }
                rec.record(&[
                    rec.event(
                        EventKind::Pushed,
                        Some(self.agent),
                        Some(&c.env),
                        Some(format!("written and flushed to the MCP client in {us} us")),
                    ),
                    rec.event(
                        EventKind::Delivered,
                        Some(self.agent),
                        Some(&c.env),
                        Some("pushed to the MCP client".into()),
                    ),
                ]);
            }
            if claimed.len() + poisoned.len() < MAX_PER_ROUND {
                return Ok(());
            }
        }
    }

    /// When `c` is the owner's answer to a waiting permission request: passes it on.
    fn is_answer(&self, c: &Claimed) -> Result<bool> {
        if !self.relay || c.env.from != Address::Owner {
            return Ok(false);
        }
        let Some((behavior, id)) = permission::parse_answer(&c.env.text) else { return Ok(false) };
        if !self.pending.take(id) {
            // Late or unknown: the agent sees it as any other owner message.
            return Ok(false);
        }
        self.answer(id, behavior)?;
        let rec = &self.node.recorder;
        rec.record(&[rec.event(
            EventKind::PermissionAnswered,
            Some(self.agent),
            Some(&c.env),
            Some(format!("request {id}: {} by the owner", behavior.as_str())),
        )]);
        Ok(true)
    }

    /// Sends the answer to permission request `id`.
    fn answer(&self, id: &str, behavior: Behavior) -> Result<()> {
        let params = serde_json::json!({ "request_id": id, "behavior": behavior.as_str() });
        self.send(CustomNotification::new(permission::ANSWER_METHOD, Some(params)))
            .with_context(|| format!("the answer to permission request {id} could not be written"))
    }

    /// Writes `c` as a channel notification and waits until it is flushed.
    fn push(&self, c: &Claimed) -> Result<()> {
        self.send(CustomNotification::new(CHANNEL_METHOD, Some(channel_params(&c.env))))
    }

    fn send(&self, n: CustomNotification) -> Result<()> {
        let peer = self.peer.clone();
        let limit = self.push_timeout;
        let sent = self.rt.block_on(async move {
            tokio::time::timeout(limit, peer.send_notification(ServerNotification::CustomNotification(n)))
                .await
        });
        let why = match sent {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("the MCP client is gone ({e})"),
            Err(_) => format!("the MCP client read nothing for {} s", limit.as_secs()),
        };
        Err(anyhow!(ClientGone(why)))
    }
}

/// The client cannot be written to: the only error that ends the server
/// (the bus's are said and tried again at the next wake or poll).
#[derive(Debug)]
struct ClientGone(String);

impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientGone {}

/// The params of a channel notification for `env`: the text, and its
/// envelope facts as meta (string values; keys are identifiers, as Claude
/// Code keeps only those).
pub fn channel_params(env: &netsky_bus::Envelope) -> serde_json::Value {
    let mut meta = serde_json::Map::new();
    meta.insert("from".into(), env.from.to_string().into());
    meta.insert("id".into(), env.id.to_string().into());
    meta.insert("kind".into(), env.kind.as_str().into());
    meta.insert("ts".into(), format_ts(env.ts).into());
    if let Some(r) = env.in_reply_to {
        meta.insert("in_reply_to".into(), r.to_string().into());
    }
    serde_json::json!({ "content": env.text, "meta": meta })
}

/// A watcher that wakes the pusher when a file lands in `inbox`.
fn watch(inbox: &std::path::Path, tx: SyncSender<Wake>) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        let landed = matches!(
            ev.kind,
            notify::EventKind::Create(_) | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
        );
        // A full queue already holds a wake.
        if landed {
            let _ = tx.try_send(Wake::Inbox);
        }
    })
    .context("cannot create the inbox watcher")?;
    w.watch(inbox, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", inbox.display()))?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_envelope_carries_its_text_and_string_meta_with_identifier_keys() {
        let key = netsky_keys::SecretKey::generate();
        let node: netsky_bus::NodeName = "work".parse().unwrap();
        let from = Address::agent(AgentName::ROOT, node.clone());
        let to = Address::agent("agent3".parse().unwrap(), node);
        let first =
            netsky_bus::Envelope::new(&key, netsky_bus::Kind::Message, from.clone(), to.clone(), "hi", None)
                .unwrap();
        let p = channel_params(&first);
        assert_eq!(p["content"], "hi");
        assert_eq!(p["meta"]["from"], "agent0@work");
        assert_eq!(p["meta"]["id"], first.id.to_string());
        assert!(p["meta"].get("in_reply_to").is_none());
        let reply =
            netsky_bus::Envelope::new(&key, netsky_bus::Kind::Reply, from, to, "re", Some(first.id)).unwrap();
        let p = channel_params(&reply);
        assert_eq!(p["meta"]["in_reply_to"], first.id.to_string());
        for (k, v) in p["meta"].as_object().unwrap() {
            assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{k}");
            assert!(v.is_string(), "{k}");
        }
    }
}
