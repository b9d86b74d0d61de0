//! The outbox dispatcher: watches `mesh/outbox/` and `mesh/receipts/`, reads
//! what lands there and queues each file for the sender of the node it is for.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use netsky_bus::{Address, Checkpoint, Envelope, NodeName};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::peer::{Peer, Queued, QueuedReceipt};
use super::{Shared, SpooledReceipt, lock, off_async, panic_text};
use crate::MeshEvent;
use crate::wire::Receipt;

/// How often `mesh/sent/` is pruned of copies older than a week.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often the outbox's journal gets a full checkpoint (see `MeshPaths::recover_outbox`).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// The senders and what their queues hold.
#[derive(Default)]
pub(super) struct Dispatch {
    /// One sender per member but this node (started and stopped by `sync_peers`).
    pub(super) peers: Mutex<HashMap<NodeName, Arc<Peer>>>,
    /// The files some sender's queue holds (see [`queued_key`]): a scan skips them.
    pub(super) queued: Mutex<HashSet<String>>,
    /// One scan at a time (the watcher's thread and the dispatcher both scan):
    /// two at once could both queue a file neither had seen.
    pub(super) scanning: Mutex<()>,
    /// Wakes the dispatcher for a full look.
    pub(super) wake: Notify,
}

/// The name of an outbox file (`o/<file>`) or a receipt file (`r/<file>`) in
/// [`Dispatch::queued`]: the two folders may hold files of the same name.
pub(super) fn queued_key(is_receipt: bool, file: &str) -> String {
    format!("{}/{file}", if is_receipt { "r" } else { "o" })
}

/// What a file in the outbox or receipts holds.
enum Item {
    Env(Envelope),
    Receipt(Receipt),
}

impl Shared {
    /// Routes new outbox envelopes and receipts to their peers' queues.
    pub(super) async fn dispatch_loop(self: Arc<Self>) {
        // The audit trail is pruned now and then, never on the hot path.
        let mut next_prune = Instant::now() + Duration::from_secs(60);
        let mut next_checkpoint = Instant::now();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.dispatch.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let s = self.clone();
            let scan = off_async(move || s.rescan()).await;
            self.check_own_addrs();
            if let Err(e) = scan {
                warn!(error = %e, "outbox scan failed");
            }
            // The outbox's journal: what a sender killed after its barrier left
            // only there is laid out (and scanned next round). A full checkpoint at
            // start and every minute; between them only what is due.
            let due = if Instant::now() >= next_checkpoint {
                next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
                Checkpoint::All
            } else {
                Checkpoint::Due
            };
            let p = self.paths.clone();
            match tokio::task::spawn_blocking(move || p.recover_outbox(due)).await {
                Ok(Ok(s)) if s.relaid + s.restored + s.bad > 0 => {
                    warn!(relaid = s.relaid, restored = s.restored, bad = s.bad, "outbox journal recovered");
                    self.dispatch.wake.notify_one();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "outbox journal not recovered"),
                Err(e) => warn!(error = %e, "outbox journal recovery failed"),
            }
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + PRUNE_EVERY;
                self.prune().await;
            }
        }
    }

    /// Removes week-old copies from `mesh/sent/` and temp files of writers
    /// that crashed (a `channel send` killed mid-write).
    async fn prune(&self) {
        let sent = self.paths.sent();
        let n = tokio::task::spawn_blocking(move || {
            crate::retention::prune_older_than(
                &sent,
                crate::retention::SENT_KEPT,
                crate::retention::PRUNE_PER_PASS,
            )
        })
        .await
        .unwrap_or(0);
        if n > 0 {
            info!(removed = n, "acked copies older than a week pruned from mesh/sent/");
        }
        let p = self.paths.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let state = p.home().join("state");
            [p.outbox(), p.receipts(), p.refused(), p.delivered(), p.tickets(), p.dir(), state]
                .iter()
                .map(|d| netsky_bus::sweep_stale_temps(d, netsky_bus::STALE_TEMP))
                .sum::<usize>()
        })
        .await
        .unwrap_or(0);
        if swept > 0 {
            info!(removed = swept, "stale temp files of crashed writers removed");
        }
    }

    /// Watches the outbox and receipts folders so a send is shipped at once.
    pub(super) fn watch(self: &Arc<Self>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let weak = Arc::downgrade(self);
        // A charter change seen by a scan starts or stops peer tasks: the runtime's.
        let rt = tokio::runtime::Handle::current();
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let _rt = rt.enter();
            let (Ok(ev), Some(s)) = (res, weak.upgrade()) else { return };
            if s.cancel.is_cancelled() {
                return;
            }
            // Events were lost (the kernel's queue overflowed): a full scan, by the dispatcher.
            if ev.need_rescan() {
                s.dispatch.wake.notify_one();
                return;
            }
            if !lands(&ev) {
                return;
            }
            // A full queue is read again by the dispatcher once it has room;
            // a scan per landing until then would list a long outbox for nothing.
            if s.any_queue_capped() {
                s.dispatch.wake.notify_one();
                return;
            }
            // Scanned here, on the watcher's own thread: a send is queued and
            // its peer woken without two more thread hops on the way. A panic
            // must not end this thread (nothing would watch the outbox then).
            if s.is_news(&ev)
                && let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.rescan()))
            {
                warn!(panic = %panic_text(p.as_ref()), "outbox scan panicked; the dispatcher scans instead");
                s.dispatch.wake.notify_one();
            }
        })
        .map_err(|e| warn!(error = %e, "no file watcher; the outbox is polled"))
        .ok()?;
        for d in [self.paths.outbox(), self.paths.receipts(), self.paths.dir()] {
            if let Err(e) = w.watch(&d, notify::RecursiveMode::NonRecursive) {
                warn!(dir = %d.display(), error = %e, "cannot watch; polled instead");
            }
        }
        Some(w)
    }

    /// Whether a landing names something no scan has queued yet. A batch
    /// written into the outbox lands file by file; the first landing's scan
    /// queues what is there by then, and the rest need none.
    fn is_news(&self, ev: &notify::Event) -> bool {
        let queued = lock(&self.dispatch.queued);
        unqueued(ev, &queued, &self.paths.outbox(), &self.paths.receipts())
    }

    /// Whether some peer's queue is full (files are left on disk until it has room).
    fn any_queue_capped(&self) -> bool {
        let peers = lock(&self.dispatch.peers);
        peers.values().any(|p| lock(&p.queue).capped)
    }

    /// Follows the charter on disk, then queues what the outbox and receipts hold.
    fn rescan(self: &Arc<Self>) {
        let _one = lock(&self.dispatch.scanning);
        // Checked under the lock: a shutdown that waited for it sees no scan after.
        if self.cancel.is_cancelled() {
            return;
        }
        if let Err(e) = self.reload_charter() {
            warn!(error = %e, "charter on disk refused");
            self.emit(MeshEvent::CharterRefused { from: "disk".into(), reason: e.to_string() });
        }
        self.scan();
    }

    /// Reads files not yet queued, oldest first, and queues them by target node.
    fn scan(self: &Arc<Self>) {
        let charter = self.charter();
        let mut woken: HashSet<NodeName> = HashSet::new();
        for (dir, is_receipt) in [(self.paths.outbox(), false), (self.paths.receipts(), true)] {
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            let mut names: Vec<String> = rd
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| !n.starts_with('.') && n.ends_with(".json"))
                .collect();
            names.sort();
            for name in names {
                // A long backlog is not read to its end once the node stops.
                if self.cancel.is_cancelled() {
                    return;
                }
                let key = queued_key(is_receipt, &name);
                if lock(&self.dispatch.queued).contains(&key) {
                    continue;
                }
                let path = dir.join(&name);
                let bytes = match netsky_bus::read_envelope_file(&path) {
                    Ok(b) => b,
                    // Acknowledged and deleted since the listing: nothing to do.
                    Err(_) if !path.exists() || modified_recently(&path) => continue,
                    Err(e) => {
                        warn!(file = %path.display(), error = %e, "unreadable outbox file");
                        self.refuse_local(&path, &name, "unreadable", &e.to_string());
                        continue;
                    }
                };
                let target = if is_receipt {
                    match serde_json::from_slice::<SpooledReceipt>(&bytes) {
                        Ok(r) => r.node.parse::<NodeName>().ok().map(|n| (n, Item::Receipt(r.receipt))),
                        Err(_) => None,
                    }
                } else {
                    match Envelope::from_json(&bytes) {
                        // Owner mail goes to whoever is root when it is queued.
                        Ok(env) => env
                            .to
                            .node()
                            .cloned()
                            .or_else(|| {
                                charter
                                    .as_ref()
                                    .filter(|_| env.to == Address::Owner)
                                    .map(|c| c.charter.root.clone())
                            })
                            .map(|n| (n, Item::Env(env))),
                        Err(_) => None,
                    }
                };
                let Some((node, item)) = target else {
                    if !modified_recently(&path) {
                        self.refuse_local(&path, &name, "unparsable", "not an envelope or receipt");
                    }
                    continue;
                };
                let member = charter.as_ref().and_then(|c| c.charter.member(&node).cloned());
                if member.is_none()
                    || charter.as_ref().is_some_and(|c| {
                        c.charter.revoked.iter().any(|r| Some(r) == member.as_ref().map(|m| &m.node_id))
                    })
                {
                    let reason = format!("node {node} is not a member of this node's mesh");
                    match item {
                        Item::Env(_) => self.refuse_local(&path, &name, "unknown-node", &reason),
                        Item::Receipt(_) => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                    continue;
                }
                let peer = lock(&self.dispatch.peers).get(&node).cloned();
                let Some(peer) = peer else { continue };
                {
                    let mut q = lock(&peer.queue);
                    if q.is_full(is_receipt) {
                        q.capped = true;
                        continue;
                    }
                }
                lock(&self.dispatch.queued).insert(key);
                let mut q = lock(&peer.queue);
                match item {
                    Item::Env(env) => {
                        q.env_bytes += bytes.len();
                        q.envs.push_back(Queued { file: name, bytes, env });
                    }
                    Item::Receipt(receipt) => q.receipts.push_back(QueuedReceipt { file: name, receipt }),
                }
                debug!(%node, "queued");
                woken.insert(node);
            }
        }
        let peers = lock(&self.dispatch.peers);
        for n in woken {
            if let Some(p) = peers.get(&n) {
                p.wake.notify_one();
            }
        }
    }

    /// Moves an outbox file this node cannot send to `mesh/refused/` with a reason.
    fn refuse_local(&self, path: &Path, name: &str, kind: &str, reason: &str) {
        if self.keep_refused(path, name, kind, reason) {
            let file = name.to_string();
            self.emit(MeshEvent::RefusedLocally { file, kind: kind.into(), reason: reason.into() });
        }
    }

    /// Moves an outbox file to `mesh/refused/`, its reason written first so a
    /// reader that sees the envelope there always finds why.
    pub(super) fn keep_refused(&self, path: &Path, name: &str, kind: &str, reason: &str) -> bool {
        if let Err(e) = netsky_bus::write_reason(&self.paths.refused(), name, kind, reason) {
            warn!(error = %e, "cannot write the refusal reason");
        }
        std::fs::rename(path, self.paths.refused().join(name)).is_ok()
    }
}

/// Whether a file was modified in the last 3 seconds: a writer that does not
/// write atomically (a copy by hand) may not be done, so it is looked at
/// again later rather than refused half-written.
fn modified_recently(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < Duration::from_secs(3))
}

/// Whether a watched event may bring new work: a file created or renamed
/// into place, not a temp file. Reads are ignored: the scan itself reads
/// every file it finds, and waking on that would spin.
fn lands(ev: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{ModifyKind, RenameMode};
    let named = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.'));
    match ev.kind {
        // inotify reports one rename as From, To and Both: To alone is the
        // arrival. Waking on each would scan twice per send, and once more
        // for every acked file leaving for sent/, on the cores the push needs.
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            ev.paths.iter().any(|p| named(p))
        }
        // Backends that cannot tell arrival from departure (FSEvents): an arrival is still there.
        EventKind::Modify(ModifyKind::Name(RenameMode::Any | RenameMode::Other)) => {
            ev.paths.iter().any(|p| named(p) && p.exists())
        }
        _ => false,
    }
}

/// Whether `ev` names a file in the outbox or receipts that exists and is
/// not queued, or anything else in mesh/ (the charter).
fn unqueued(ev: &notify::Event, queued: &HashSet<String>, outbox: &Path, receipts: &Path) -> bool {
    ev.paths.iter().any(|p| {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
            return false;
        };
        let key = if dir == outbox {
            queued_key(false, name)
        } else if dir == receipts {
            queued_key(true, name)
        } else {
            return true;
        };
        !queued.contains(&key) && p.exists()
    })
}

#[cfg(test)]
mod tests {
    use super::{lands, unqueued};
    use notify::event::{CreateKind, ModifyKind, RenameMode};
    use notify::{Event, EventKind};
    use std::collections::HashSet;

    fn ev(kind: EventKind, paths: &[&str]) -> Event {
        paths.iter().fold(Event::new(kind), |e, p| e.add_path(p.into()))
    }

    #[test]
    fn a_landing_already_queued_or_gone_needs_no_scan() {
        let d = tempfile::tempdir().unwrap();
        let (outbox, receipts) = (d.path().join("outbox"), d.path().join("receipts"));
        std::fs::create_dir_all(&outbox).unwrap();
        std::fs::create_dir_all(&receipts).unwrap();
        for f in [outbox.join("01A.json"), outbox.join("01B.json"), receipts.join("01C.json")] {
            std::fs::write(f, b"{}").unwrap();
        }
        let to = |p: std::path::PathBuf| {
            ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &[p.to_str().unwrap()])
        };
        let known: HashSet<String> = ["o/01A.json".to_string()].into();
        let news = |p| unqueued(&to(p), &known, &outbox, &receipts);
        assert!(!news(outbox.join("01A.json")), "queued already");
        assert!(news(outbox.join("01B.json")));
        assert!(news(receipts.join("01C.json")));
        assert!(!news(outbox.join("01D.json")), "acked and gone");
        assert!(news(d.path().join("charter.json")), "the charter is always a reason to look");
    }

    #[test]
    fn only_an_arrival_of_a_named_file_wakes_the_dispatcher() {
        let name = |m| EventKind::Modify(ModifyKind::Name(m));
        // A send: temp file renamed into place, as inotify reports it.
        assert!(!lands(&ev(name(RenameMode::From), &["/o/.a.json.1.0.tmp"])));
        assert!(lands(&ev(name(RenameMode::To), &["/o/a.json"])));
        assert!(!lands(&ev(name(RenameMode::Both), &["/o/.a.json.1.0.tmp", "/o/a.json"])));
        // An acked file leaving for sent/ is no new work.
        assert!(!lands(&ev(name(RenameMode::From), &["/o/a.json"])));
        // A temp file or a spare arriving is not an envelope yet.
        assert!(!lands(&ev(EventKind::Create(CreateKind::File), &["/o/.a.json.1.0.tmp"])));
        assert!(!lands(&ev(name(RenameMode::To), &["/o/.b.json.1.1.tmp"])));
        assert!(lands(&ev(EventKind::Create(CreateKind::File), &["/o/a.json"])));
        // A backend that cannot tell the direction: only what is still there counts.
        assert!(!lands(&ev(name(RenameMode::Any), &["/nonexistent/a.json"])));
        let d = tempfile::tempdir().unwrap();
        let here = d.path().join("a.json");
        std::fs::write(&here, b"x").unwrap();
        assert!(lands(&ev(name(RenameMode::Any), &[here.to_str().unwrap()])));
    }
}
