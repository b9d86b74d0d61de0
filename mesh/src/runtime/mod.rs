//! The running mesh: one iroh endpoint, the protocol handlers, a dispatcher
//! that routes the outbox to per-peer senders, and the senders themselves.
//!
//! Every task is owned by the [`Mesh`]'s `JoinSet` and stops on its
//! cancellation token; [`Mesh::shutdown`] cancels, waits for each task to
//! finish its current unit of work, then closes the endpoint.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use iroh::Endpoint;
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use netsky_bus::{AgentName, Envelope, Layout, NodeName, Roster};
use netsky_keys::{NodeId, SecretKey};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::charter::{CharterMember, Decision, SignedCharter};
use crate::endpoint::{Relay, dial_addr, dialable_addrs};
use crate::membership::Allowlist;
use crate::wire::{
    ALPN_JOIN, ALPN_MESH, FRAME_TIMEOUT, Frame, JoinRequest, JoinResponse, MAX_BATCH, MAX_FRAME, Outcome,
    Receipt, read_frame, request, send_request, write_frame,
};
use crate::{MeshError, MeshEvent, MeshPaths, charter_file, ingest};

/// Where events go: the node records them (log, meta.db).
pub type EventSink = Arc<dyn Fn(MeshEvent) + Send + Sync>;

/// Which agents exist on this node (envelopes for others are refused).
pub type AgentCheck = Arc<dyn Fn(AgentName) -> bool + Send + Sync>;

/// Longest wait between retries to an unreachable peer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a sender looks again even when nothing woke it.
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// Envelope bytes held in memory per peer; the rest wait on disk and are
/// read, in order, as the queue drains (8 MiB: thousands of typical
/// envelopes, 128 of the largest).
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Receipts held in memory per peer.
const QUEUE_RECEIPTS: usize = 4 * MAX_BATCH;
/// How long a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `mesh/sent/` is pruned of copies older than a week.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often the outbox's journal gets a full settle (see `MeshPaths::settle_outbox`).
const SETTLE_EVERY: Duration = Duration::from_secs(60);
/// How often spares are refilled when nothing used one.
const SPARES_RECHECK: Duration = Duration::from_secs(30);
/// Inboxes the mesh keeps spares in at most (agents are many, a node's few are busy).
const SPARE_INBOXES: usize = 64;
/// How long after a spare was used the top-up waits.
const SPARES_SETTLE: Duration = Duration::from_millis(5);
/// Pushes in flight on one connection at once (each up to `MAX_BATCH` envelopes).
const PUSH_WINDOW: usize = 2;
/// Failed join attempts allowed per joining node id per minute; more are refused unread.
const JOIN_FAILURES_PER_MINUTE: u32 = 5;
/// Joins handled at once; more wait (bounds the root's work under a flood).
const JOINS_AT_ONCE: usize = 4;
/// Joiner ids remembered for the failure limit (oldest forgotten first).
const JOINERS_REMEMBERED: usize = 4096;

/// What a mesh node needs to start.
#[derive(Clone)]
pub struct MeshConfig {
    /// The home.
    pub home: PathBuf,
    /// This node's name.
    pub name: NodeName,
    /// The node key.
    pub key: SecretKey,
    /// The UDP address to bind.
    pub listen: SocketAddr,
    /// Relay mode.
    pub relay: Relay,
    /// Also find members on the local network by mDNS (multicast).
    pub mdns: bool,
    /// Which agents exist here.
    pub agent_exists: AgentCheck,
    /// Where events go.
    pub events: EventSink,
}

/// An envelope or receipt waiting in a peer's queue.
#[derive(Debug, Clone)]
struct Queued {
    file: String,
    bytes: Vec<u8>,
    env: Envelope,
}

#[derive(Debug, Clone)]
struct QueuedReceipt {
    file: String,
    receipt: Receipt,
}

/// One peer's sender state.
#[derive(Default)]
struct PeerQueue {
    envs: VecDeque<Queued>,
    /// The bytes of the envelopes in `envs`.
    env_bytes: usize,
    /// The scan left files on disk because the queue was full.
    capped: bool,
    receipts: VecDeque<QueuedReceipt>,
    /// The charter epoch this peer is known to hold (root pushes when behind).
    epoch_known: u64,
    /// Whether this node must tell the peer (the root) its addresses.
    hello_due: bool,
}

struct Peer {
    queue: Mutex<PeerQueue>,
    wake: Notify,
    /// Signalled when the peer reached us: it is up, so any backoff ends now.
    reset: Notify,
    cancel: CancellationToken,
}

/// Reachability of one peer, as written to `state/peers.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PeerState {
    /// Whether the last attempt worked.
    pub reachable: bool,
    /// Since when it has been in this state.
    pub since: String,
    /// The last error, if unreachable.
    pub last_error: Option<String>,
}

impl PeerState {
    /// The reachability of every peer as last written to `state/peers.json`
    /// (empty when there is none, or it is unreadable or oversized).
    pub fn load_all(paths: &MeshPaths) -> HashMap<String, PeerState> {
        std::fs::read(paths.peers_state())
            .ok()
            .filter(|b| b.len() < 1024 * 1024)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

struct Shared {
    name: NodeName,
    relay: Relay,
    /// mDNS runs: a member without a known address may still be found.
    mdns: bool,
    key: SecretKey,
    paths: MeshPaths,
    layout: Layout,
    endpoint: Endpoint,
    agent_exists: AgentCheck,
    events: EventSink,
    allow: Allowlist,
    charter: RwLock<Option<Arc<SignedCharter>>>,
    roster: RwLock<Arc<Roster>>,
    charter_stamp: Mutex<Option<(SystemTime, u64, u64)>>,
    peers: Mutex<HashMap<NodeName, Arc<Peer>>>,
    known: Mutex<HashSet<String>>,
    /// One scan at a time (the watcher's thread and the dispatcher both scan):
    /// two at once could both queue a file neither had seen.
    scanning: Mutex<()>,
    dispatch: Notify,
    peer_states: Mutex<HashMap<String, PeerState>>,
    /// Per joiner id: when its minute started and its failures in it. Per id,
    /// not global: a stranger's failures must not lock out a real joiner.
    join_failures: Mutex<HashMap<NodeId, (Instant, u32)>>,
    joins: tokio::sync::Semaphore,
    cancel: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    /// An address claim (root) is under way.
    claiming: std::sync::atomic::AtomicBool,
    /// Serialises ingests: a retried push racing its first try must not
    /// write the same envelope twice.
    ingest_lock: Mutex<()>,
    /// Serialises writes of `state/peers.json`: the sequence number written last.
    peers_file: Mutex<u64>,
    peer_state_seq: std::sync::atomic::AtomicU64,
    /// Inboxes that took a spare since the last refill pass.
    spare_dirs: Mutex<HashSet<PathBuf>>,
    /// A spare may have been taken: top up soon.
    spares_due: Notify,
}

/// A running mesh node.
pub struct Mesh {
    shared: Arc<Shared>,
    router: Router,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Mesh {
    /// Binds the endpoint and starts the handlers, dispatcher and senders.
    pub async fn start(cfg: MeshConfig) -> Result<Mesh, MeshError> {
        let paths = MeshPaths::new(&cfg.home);
        paths.create().map_err(MeshError::io("create", paths.dir()))?;
        let allow = Allowlist::default();
        let (endpoint, mdns) = crate::endpoint::bind(
            &cfg.key,
            cfg.listen,
            &cfg.relay,
            cfg.mdns,
            allow.clone(),
            cfg.events.clone(),
            vec![ALPN_MESH.to_vec(), ALPN_JOIN.to_vec()],
        )
        .await?;
        let roster = Roster::solo(cfg.name.clone(), cfg.key.public())?;
        let shared = Arc::new(Shared {
            relay: cfg.relay.clone(),
            mdns,
            name: cfg.name,
            key: cfg.key,
            layout: Layout::new(&cfg.home),
            paths,
            endpoint: endpoint.clone(),
            agent_exists: cfg.agent_exists,
            events: cfg.events,
            allow,
            charter: RwLock::new(None),
            roster: RwLock::new(Arc::new(roster)),
            charter_stamp: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            known: Mutex::new(HashSet::new()),
            scanning: Mutex::new(()),
            dispatch: Notify::new(),
            peer_states: Mutex::new(HashMap::new()),
            join_failures: Mutex::new(HashMap::new()),
            joins: tokio::sync::Semaphore::new(JOINS_AT_ONCE),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(JoinSet::new()),
            claiming: std::sync::atomic::AtomicBool::new(false),
            ingest_lock: Mutex::new(()),
            peers_file: Mutex::new(0),
            peer_state_seq: std::sync::atomic::AtomicU64::new(0),
            spare_dirs: Mutex::new(HashSet::new()),
            spares_due: Notify::new(),
        });
        let s = shared.clone();
        tokio::task::spawn_blocking(move || {
            s.reload_charter()?;
            if let Some(c) = s.charter()
                && c.charter.root != s.name
            {
                s.settle_root(c.charter.epoch, "the charter held at start");
            }
            s.claim_own_addrs();
            Ok::<(), MeshError>(())
        })
        .await
        .map_err(|e| MeshError::Charter(format!("charter load failed: {e}")))??;
        let router = Router::builder(endpoint)
            .accept(ALPN_MESH, MeshHandler(shared.clone()))
            .accept(ALPN_JOIN, JoinHandler(shared.clone()))
            .spawn();
        let watcher = shared.watch();
        let s = shared.clone();
        let span = info_span!("dispatch", node = %shared.name);
        shared.spawn(async move { s.dispatch_loop().await }.instrument(span));
        let s = shared.clone();
        let span = info_span!("spares", node = %shared.name);
        shared.spawn(async move { s.spares_loop().await }.instrument(span));
        shared.dispatch.notify_one();
        Ok(Mesh { shared, router, _watcher: watcher })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.key.public()
    }

    /// Whether mDNS discovery runs on this node.
    pub fn mdns(&self) -> bool {
        self.shared.mdns
    }

    /// The direct addresses peers can dial.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        dialable_addrs(&self.shared.endpoint)
    }

    /// The raw endpoint (benchmarks).
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// Looks at the outbox, receipts and charter again now.
    pub fn kick(&self) {
        self.shared.dispatch.notify_one();
    }

    /// Stops every task after its current unit of work, then closes the endpoint.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        // A scan the file watcher started before the cancel finishes first:
        // nothing it queues or refuses happens after this returns.
        let s = self.shared.clone();
        let scan_done =
            tokio::task::spawn_blocking(move || drop(s.scanning.lock().unwrap_or_else(|p| p.into_inner())));
        if tokio::time::timeout(Duration::from_secs(10), scan_done).await.is_err() {
            warn!("an outbox scan did not finish within 10 s of shutdown");
        }
        let mut tasks = std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
            warn!("mesh tasks did not stop within 10 s; aborting them");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.router.shutdown()).await;
    }
}

fn now_ts() -> String {
    netsky_bus::format_ts(time::OffsetDateTime::now_utc())
}

impl Shared {
    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).spawn(fut);
    }

    fn emit(&self, e: MeshEvent) {
        (self.events)(e)
    }

    fn charter(&self) -> Option<Arc<SignedCharter>> {
        self.charter.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn roster(&self) -> Arc<Roster> {
        self.roster.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn is_root(&self) -> bool {
        self.charter().is_some_and(|c| c.charter.root == self.name)
    }

    /// Watches the outbox and receipts folders so a send is shipped at once.
    fn watch(self: &Arc<Self>) -> Option<notify::RecommendedWatcher> {
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
                s.dispatch.notify_one();
                return;
            }
            if !lands(&ev) {
                return;
            }
            // A full queue is read again by the dispatcher once it has room;
            // a scan per landing until then would list a long outbox for nothing.
            if s.any_queue_capped() {
                s.dispatch.notify_one();
                return;
            }
            // Scanned here, on the watcher's own thread: a send is queued and
            // its peer woken without two more thread hops on the way. A panic
            // must not end this thread (nothing would watch the outbox then).
            if s.is_news(&ev)
                && let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.rescan()))
            {
                warn!(panic = %panic_text(p.as_ref()), "outbox scan panicked; the dispatcher scans instead");
                s.dispatch.notify_one();
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

    /// Re-reads `mesh/charter.json` if it changed; updates roster, allowlist and peers.
    fn reload_charter(self: &Arc<Self>) -> Result<(), MeshError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.paths.charter();
        // Held throughout: concurrent reloads must not install an older charter
        // after a newer one. The inode is in the stamp because every atomic
        // replace makes a new one, even within one mtime tick at the same length.
        let mut held_stamp = self.charter_stamp.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = std::fs::metadata(&path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()));
        if *held_stamp == stamp && (stamp.is_none() || self.charter().is_some()) {
            return Ok(());
        }
        *held_stamp = stamp;
        let Some(c) = charter_file::load(&self.paths)? else { return Ok(()) };
        if let Some(held) = self.charter()
            && held.charter.mesh_key == c.charter.mesh_key
            && (held.charter.epoch > c.charter.epoch || *held == c)
        {
            return Ok(());
        }
        let roster = c.charter.roster(&self.name, self.key.public())?;
        self.allow.set(
            c.charter
                .members
                .iter()
                .map(|m| m.node_id)
                .filter(|id| *id != self.key.public() && !c.charter.revoked.contains(id)),
        );
        info!(node = %self.name, epoch = c.charter.epoch, root = %c.charter.root, "charter loaded");
        *self.roster.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(roster);
        *self.charter.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(c.clone()));
        self.sync_peers(&c);
        Ok(())
    }

    /// Starts a sender for each member, stops senders of former members.
    fn sync_peers(self: &Arc<Self>, c: &SignedCharter) {
        let i_am_root = c.charter.root == self.name;
        let me = c.charter.member(&self.name).cloned();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let current: HashSet<NodeName> =
            c.charter.members.iter().filter(|m| m.name != self.name).map(|m| m.name.clone()).collect();
        peers.retain(|name, p| {
            let keep = current.contains(name);
            if !keep {
                p.cancel.cancel();
                // Its files are looked at again: refused as for a non-member.
                let q = p.queue.lock().unwrap_or_else(|p| p.into_inner());
                let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                for e in &q.envs {
                    known.remove(&format!("o/{}", e.file));
                }
                for r in &q.receipts {
                    known.remove(&format!("r/{}", r.file));
                }
            }
            keep
        });
        for m in &c.charter.members {
            if m.name == self.name {
                continue;
            }
            let peer = peers
                .entry(m.name.clone())
                .or_insert_with(|| {
                    let p = Arc::new(Peer {
                        queue: Mutex::new(PeerQueue::default()),
                        wake: Notify::new(),
                        reset: Notify::new(),
                        cancel: self.cancel.child_token(),
                    });
                    let (s, pc, name) = (self.clone(), p.clone(), m.name.clone());
                    let span = info_span!("peer", node = %self.name, peer = %name);
                    self.spawn(async move { s.peer_loop(name, pc).await }.instrument(span));
                    p
                })
                .clone();
            let mut q = peer.queue.lock().unwrap_or_else(|p| p.into_inner());
            // A member tells the root where it is whenever the charter has it wrong.
            if m.name == c.charter.root && !i_am_root {
                let mine = self.own_addrs();
                q.hello_due = me.as_ref().is_none_or(|me| me.addrs != mine);
            }
            drop(q);
            peer.wake.notify_one();
        }
    }

    fn own_addrs(&self) -> Vec<SocketAddr> {
        dialable_addrs(&self.endpoint)
    }

    /// On the root: writes this node's own addresses into the charter when they changed.
    fn claim_own_addrs(self: &Arc<Self>) {
        let Some(c) = self.charter() else { return };
        if c.charter.root != self.name {
            return;
        }
        let mine = self.own_addrs();
        if c.charter.member(&self.name).is_some_and(|m| m.addrs == mine) {
            return;
        }
        let name = self.name.clone();
        match self.amend(move |ch| {
            if let Some(m) = ch.members.iter_mut().find(|m| m.name == name) {
                m.addrs = mine;
            }
            Ok(())
        }) {
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot record this root's addresses in the charter"),
        }
    }

    /// When this node's addresses differ from its charter entry (a network
    /// change, a restart on a new port), tells the root, or as root records them.
    fn check_own_addrs(self: &Arc<Self>) {
        let Some(c) = self.charter() else { return };
        let mine = self.own_addrs();
        if c.charter.member(&self.name).is_none_or(|m| m.addrs == mine) {
            return;
        }
        if c.charter.root == self.name {
            if self.claiming.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return;
            }
            let s = self.clone();
            // Off the async threads: amending fsyncs.
            self.spawn(async move {
                let s2 = s.clone();
                let _ = tokio::task::spawn_blocking(move || s2.claim_own_addrs()).await;
                s.claiming.store(false, std::sync::atomic::Ordering::Release);
            });
        } else if let Some(p) = self.peers.lock().unwrap_or_else(|p| p.into_inner()).get(&c.charter.root) {
            let mut q = p.queue.lock().unwrap_or_else(|p| p.into_inner());
            if !q.hello_due {
                q.hello_due = true;
                p.wake.notify_one();
            }
        }
    }

    /// Amends the charter with the mesh key (root only) and reloads it.
    fn amend(
        self: &Arc<Self>,
        change: impl FnOnce(&mut crate::Charter) -> Result<(), MeshError>,
    ) -> Result<SignedCharter, MeshError> {
        let mk = charter_file::mesh_key(&self.paths)?.ok_or_else(|| {
            MeshError::Charter("this node holds no mesh key, so it cannot issue charters".into())
        })?;
        let c = charter_file::amend(&self.paths, &mk, change)?;
        self.emit(MeshEvent::CharterStored { epoch: c.charter.epoch, from: self.name.to_string() });
        self.reload_charter()?;
        Ok(c)
    }

    fn set_peer_state(self: &Arc<Self>, name: &NodeName, reachable: bool, error: Option<String>) {
        let mut states = self.peer_states.lock().unwrap_or_else(|p| p.into_inner());
        let changed = states.get(name.as_str()).is_none_or(|s| s.reachable != reachable);
        if !changed {
            return;
        }
        let st = PeerState { reachable, since: now_ts(), last_error: error.clone() };
        states.insert(name.to_string(), st);
        let json = serde_json::to_vec_pretty(&*states).unwrap_or_default();
        let seq = self.peer_state_seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        drop(states);
        let s = self.clone();
        // Off the async threads (it fsyncs); a snapshot older than one written already is skipped.
        self.spawn(async move {
            let _ = tokio::task::spawn_blocking(move || {
                let mut written = s.peers_file.lock().unwrap_or_else(|p| p.into_inner());
                if seq <= *written {
                    return;
                }
                match netsky_bus::write_durable(&s.paths.home().join("state"), "peers.json", &json) {
                    Ok(_) => *written = seq,
                    Err(e) => warn!(error = %e, "cannot write state/peers.json"),
                }
            })
            .await;
        });
        self.emit(if reachable {
            MeshEvent::PeerReachable { name: name.to_string() }
        } else {
            MeshEvent::PeerUnreachable { name: name.to_string(), error: error.unwrap_or_default() }
        });
    }

    /// Routes new outbox envelopes and receipts to their peers' queues.
    async fn dispatch_loop(self: Arc<Self>) {
        // The audit trail is pruned now and then, never on the hot path.
        let mut next_prune = Instant::now() + Duration::from_secs(60);
        let mut next_settle = Instant::now();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.dispatch.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let s = self.clone();
            let scan = off_async(move || s.rescan()).await;
            self.check_own_addrs();
            if let Err(e) = scan {
                warn!(error = %e, "outbox scan failed");
            }
            // The outbox's journal: what a sender killed after its barrier left
            // only there is laid out (and scanned next round). A full settle at
            // start and every minute; between them only past the rotation size.
            let full = Instant::now() >= next_settle;
            if full {
                next_settle = Instant::now() + SETTLE_EVERY;
            }
            let p = self.paths.clone();
            match tokio::task::spawn_blocking(move || p.settle_outbox(full)).await {
                Ok(Ok(s)) if s.relaid + s.restored + s.bad > 0 => {
                    warn!(relaid = s.relaid, restored = s.restored, bad = s.bad, "outbox journal recovered");
                    self.dispatch.notify_one();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "outbox journal not settled"),
                Err(e) => warn!(error = %e, "outbox journal settle failed"),
            }
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + PRUNE_EVERY;
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
                // Temp files of writers that crashed (a `channel send` killed mid-write).
                let p = self.paths.clone();
                let swept = tokio::task::spawn_blocking(move || {
                    let state = p.home().join("state");
                    [p.outbox(), p.receipts(), p.refused(), p.delivered(), p.tickets(), p.dir(), state]
                        .iter()
                        .map(|d| netsky_bus::sweep_stale_temps(d, crate::retention::STALE_TEMP))
                        .sum::<usize>()
                })
                .await
                .unwrap_or(0);
                if swept > 0 {
                    info!(removed = swept, "stale temp files of crashed writers removed");
                }
            }
        }
    }

    /// Keeps spare files in the outbox and in the inboxes pushes land in, so
    /// the durable writes of the hot path allocate no inode (see
    /// `netsky_bus::spares`). Refilled a moment after use, never on the path.
    async fn spares_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.spares_due.notified() => {}
                _ = tokio::time::sleep(SPARES_RECHECK) => {}
            }
            // Let the write that used the spare finish its round trip first.
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(SPARES_SETTLE) => {}
            }
            // The inboxes that took a spare since the last pass (taken: a deleted
            // agent's, or one long idle, drops out; new busy ones get in).
            let mut dirs = vec![self.paths.outbox()];
            dirs.extend(std::mem::take(&mut *self.spare_dirs.lock().unwrap_or_else(|p| p.into_inner())));
            let made =
                tokio::task::spawn_blocking(move || netsky_bus::spares::refill_each(dirs)).await.unwrap_or(0);
            debug!(made, "spares refilled");
        }
    }

    /// Whether a landing names something no scan has queued yet. A batch
    /// written into the outbox lands file by file; the first landing's scan
    /// queues what is there by then, and the rest need none.
    fn is_news(&self, ev: &notify::Event) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        unqueued(ev, &known, &self.paths.outbox(), &self.paths.receipts())
    }

    /// Whether some peer's queue is full (files are left on disk until it has room).
    fn any_queue_capped(&self) -> bool {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.values().any(|p| p.queue.lock().unwrap_or_else(|p| p.into_inner()).capped)
    }

    /// Follows the charter on disk, then queues what the outbox and receipts hold.
    fn rescan(self: &Arc<Self>) {
        let _one = self.scanning.lock().unwrap_or_else(|p| p.into_inner());
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
                let key = format!("{}/{name}", if is_receipt { "r" } else { "o" });
                if self.known.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
                    continue;
                }
                let path = dir.join(&name);
                let bytes = match netsky_bus::read_envelope_file(&path) {
                    Ok(b) => b,
                    // Acknowledged and deleted since the listing: nothing to do.
                    Err(_) if !path.exists() || still_settling(&path) => continue,
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
                        Ok(env) => env.to.node().cloned().map(|n| (n, Item::Env(env))),
                        Err(_) => None,
                    }
                };
                let Some((node, item)) = target else {
                    if !still_settling(&path) {
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
                let peer = self.peers.lock().unwrap_or_else(|p| p.into_inner()).get(&node).cloned();
                let Some(peer) = peer else { continue };
                {
                    let mut q = peer.queue.lock().unwrap_or_else(|p| p.into_inner());
                    let full = if is_receipt {
                        q.receipts.len() >= QUEUE_RECEIPTS
                    } else {
                        q.env_bytes >= QUEUE_BYTES
                    };
                    if full {
                        q.capped = true;
                        continue;
                    }
                }
                self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
                let mut q = peer.queue.lock().unwrap_or_else(|p| p.into_inner());
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
        if !woken.is_empty() {
            self.spares_due.notify_one();
        }
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        for n in woken {
            if let Some(p) = peers.get(&n) {
                p.wake.notify_one();
            }
        }
    }

    /// Moves an outbox file this node cannot send to `mesh/refused/` with a reason.
    fn refuse_local(&self, path: &std::path::Path, name: &str, kind: &str, reason: &str) {
        if self.keep_refused(path, name, kind, reason) {
            let file = name.to_string();
            self.emit(MeshEvent::RefusedLocally { file, kind: kind.into(), reason: reason.into() });
        }
    }

    /// Moves an outbox file to `mesh/refused/`, its reason written first so a
    /// reader that sees the envelope there always finds why.
    fn keep_refused(&self, path: &std::path::Path, name: &str, kind: &str, reason: &str) -> bool {
        let line = format!("{} {kind}: {reason}\n", now_ts());
        if let Err(e) =
            netsky_bus::write_durable(&self.paths.refused(), &format!("{name}.reason"), line.as_bytes())
        {
            warn!(error = %e, "cannot write the refusal reason");
        }
        std::fs::rename(path, self.paths.refused().join(name)).is_ok()
    }

    /// One peer's sender: connect when there is work, ship in order, back off when down.
    async fn peer_loop(self: Arc<Self>, name: NodeName, peer: Arc<Peer>) {
        let mut conn: Option<Connection> = None;
        let mut failures: u32 = 0;
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                _ = peer.cancel.cancelled() => break,
                _ = peer.wake.notified(), if failures == 0 => {}
                _ = peer.reset.notified() => { failures = 0; }
                _ = tokio::time::sleep(if delay.is_zero() { IDLE_RECHECK } else { delay }) => {}
            }
            if !self.has_work(&name, &peer) {
                delay = Duration::ZERO;
                continue;
            }
            // A shutdown does not wait for a dial or an ack: what was not acked
            // stays in the outbox and goes again (acked as a duplicate if it landed).
            let served = tokio::select! {
                r = self.serve_peer(&name, &peer, &mut conn) => r,
                _ = peer.cancel.cancelled() => break,
            };
            match served {
                Ok(()) => {
                    failures = 0;
                    delay = Duration::ZERO;
                    self.set_peer_state(&name, true, None);
                    // More may have arrived while we were busy.
                    if self.has_work(&name, &peer) {
                        peer.wake.notify_one();
                    }
                }
                Err(e) => {
                    debug!(error = %e, "peer unreachable");
                    conn = None;
                    failures = failures.saturating_add(1);
                    delay = backoff(failures);
                    self.set_peer_state(&name, false, Some(e.to_string()));
                }
            }
        }
        if let Some(c) = conn {
            c.close(0u32.into(), b"shutdown");
        }
    }

    fn has_work(&self, name: &NodeName, peer: &Peer) -> bool {
        let q = peer.queue.lock().unwrap_or_else(|p| p.into_inner());
        let charter_due = self.is_root()
            && self.charter().is_some_and(|c| c.charter.epoch > q.epoch_known)
            && self.charter().is_some_and(|c| c.charter.member(name).is_some());
        // A peer not known to be up is probed (with backoff), so status tells the truth.
        let unknown = !self
            .peer_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name.as_str())
            .is_some_and(|s| s.reachable);
        !q.envs.is_empty() || !q.receipts.is_empty() || q.hello_due || charter_due || unknown
    }

    /// A member connected to us: it is up; end any backoff towards it.
    fn peer_seen(&self, name: &NodeName) {
        let p = self.peers.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        if let Some(p) = p {
            p.reset.notify_one();
            p.wake.notify_one();
        }
    }

    async fn connect(&self, name: &NodeName, conn: &mut Option<Connection>) -> Result<Connection, MeshError> {
        if let Some(c) = conn.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let member: CharterMember =
            self.charter().and_then(|c| c.charter.member(name).cloned()).ok_or_else(|| {
                MeshError::Connect { peer: name.to_string(), reason: "no longer a member".into() }
            })?;
        let addr = dial_addr(member.node_id, &member.addrs, &self.relay, self.mdns).ok_or_else(|| {
            MeshError::Connect {
                peer: name.to_string(),
                reason: "no known address yet (its daemon has not reported one)".into(),
            }
        })?;
        let c = tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(addr, ALPN_MESH))
            .await
            .map_err(|_| MeshError::Connect {
                peer: name.to_string(),
                reason: "no answer within 5 s".into(),
            })?
            .map_err(|e| MeshError::Connect { peer: name.to_string(), reason: e.to_string() })?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Does every due piece of work for one peer over one connection.
    async fn serve_peer(
        self: &Arc<Self>,
        name: &NodeName,
        peer: &Arc<Peer>,
        conn: &mut Option<Connection>,
    ) -> Result<(), MeshError> {
        let c = self.connect(name, conn).await?;
        let pname = name.to_string();
        // Hello to the root: where this node listens.
        let hello_due = peer.queue.lock().unwrap_or_else(|p| p.into_inner()).hello_due;
        if hello_due {
            let epoch = self.charter().map(|c| c.charter.epoch).unwrap_or(0);
            let resp =
                request(&c, &Frame::Hello { addrs: self.own_addrs(), epoch }, FRAME_TIMEOUT, &pname).await?;
            match resp {
                Frame::Charter { json } => {
                    // The root answered our hello; a refusal is already an event here.
                    let (s, from) = (self.clone(), pname.clone());
                    let _ = off_async(move || s.accept_charter(&json, &from)).await;
                }
                Frame::Ok { .. } => {}
                other => warn!(?other, "unexpected answer to hello"),
            }
            peer.queue.lock().unwrap_or_else(|p| p.into_inner()).hello_due = false;
        }
        // Root: push the charter to a member that is behind.
        if self.is_root()
            && let Some(ch) = self.charter()
        {
            let known = peer.queue.lock().unwrap_or_else(|p| p.into_inner()).epoch_known;
            if ch.charter.epoch > known {
                match request(&c, &Frame::Charter { json: ch.to_json() }, FRAME_TIMEOUT, &pname).await? {
                    Frame::Ok { .. } => {}
                    Frame::Refused { reason } => warn!(%reason, "peer refused the charter"),
                    other => warn!(?other, "unexpected answer to a charter push"),
                }
                peer.queue.lock().unwrap_or_else(|p| p.into_inner()).epoch_known = ch.charter.epoch;
            }
        }
        // Envelopes, oldest first, a batch at a time, up to PUSH_WINDOW pushes
        // in flight: the receiver stores one while the next is on the wire and
        // the last one's copies are deleted here. It answers a connection's
        // pushes in order and closes the connection after one it could not
        // store, so nothing behind a failed push lands before it.
        let mut inflight: VecDeque<(Vec<Queued>, iroh::endpoint::RecvStream)> = VecDeque::new();
        let mut in_flight_envs = 0usize;
        loop {
            while inflight.len() < PUSH_WINDOW && !peer.cancel.is_cancelled() {
                let batch: Vec<Queued> = {
                    let q = peer.queue.lock().unwrap_or_else(|p| p.into_inner());
                    let mut size = 0;
                    q.envs
                        .iter()
                        .skip(in_flight_envs)
                        .take(MAX_BATCH)
                        .take_while(|e| {
                            size += e.bytes.len() + 8;
                            size < MAX_FRAME - 4096
                        })
                        .cloned()
                        .collect()
                };
                if batch.is_empty() {
                    break;
                }
                let envs = batch.iter().map(|q| q.bytes.clone()).collect();
                debug!(n = batch.len(), first = %batch[0].env.id, "push");
                let recv = send_request(&c, &Frame::Push { envs }, &pname).await?;
                in_flight_envs += batch.len();
                inflight.push_back((batch, recv));
            }
            let Some((batch, mut recv)) = inflight.pop_front() else { break };
            in_flight_envs -= batch.len();
            let answer: Frame = read_frame(&mut recv, MAX_FRAME, FRAME_TIMEOUT, &pname).await?;
            let acks = match answer {
                // Acks pair with envelopes by id, never by position alone.
                Frame::Acks { acks }
                    if acks.len() == batch.len()
                        && acks.iter().zip(&batch).all(|(a, q)| a.id == q.env.id.to_string()) =>
                {
                    acks
                }
                Frame::Refused { reason } => {
                    return Err(MeshError::Protocol {
                        peer: pname.clone(),
                        reason: format!("push refused: {reason}"),
                    });
                }
                other => {
                    return Err(MeshError::Protocol {
                        peer: pname.clone(),
                        reason: format!("bad answer to push: {other:?}"),
                    });
                }
            };
            debug!(n = acks.len(), "acks");
            // Said at once: durable over there now, and whoever waits on it
            // need not wait for our bookkeeping (a thread hand-off and renames).
            for (q, ack) in batch.iter().zip(&acks) {
                if matches!(ack.outcome, Outcome::Stored | Outcome::Duplicate) {
                    let duplicate = ack.outcome == Outcome::Duplicate;
                    self.emit(MeshEvent::Acked { env: q.env.clone(), duplicate });
                }
            }
            let done: Vec<(String, usize)> = batch.iter().map(|b| (b.file.clone(), b.bytes.len())).collect();
            let s = self.clone();
            off_async(move || s.settle(&batch, &acks))
                .await
                .map_err(|e| MeshError::Protocol { peer: pname.clone(), reason: e.to_string() })?;
            let mut q = peer.queue.lock().unwrap_or_else(|p| p.into_inner());
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            for (file, len) in &done {
                q.envs.pop_front();
                q.env_bytes = q.env_bytes.saturating_sub(*len);
                known.remove(&format!("o/{file}"));
            }
            self.uncap_if_room(&mut q);
        }
        // Receipts back to this peer.
        let receipts: Vec<QueuedReceipt> = peer
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .receipts
            .iter()
            .take(MAX_BATCH)
            .cloned()
            .collect();
        if !receipts.is_empty() {
            let frame = Frame::Receipts { receipts: receipts.iter().map(|r| r.receipt.clone()).collect() };
            match request(&c, &frame, FRAME_TIMEOUT, &pname).await? {
                Frame::Ok { .. } => {
                    let mut q = peer.queue.lock().unwrap_or_else(|p| p.into_inner());
                    let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    for r in &receipts {
                        let _ = std::fs::remove_file(self.paths.receipts().join(&r.file));
                        q.receipts.pop_front();
                        known.remove(&format!("r/{}", r.file));
                    }
                    self.uncap_if_room(&mut q);
                }
                other => {
                    let reason = format!("receipts not taken: {other:?}");
                    return Err(MeshError::Protocol { peer: pname.clone(), reason });
                }
            }
        }
        Ok(())
    }

    /// Room in a capped queue again (both kinds under half): the files the cap
    /// left on disk are read now, not at the next wake.
    fn uncap_if_room(&self, q: &mut PeerQueue) {
        if q.capped && q.env_bytes < QUEUE_BYTES / 2 && q.receipts.len() < QUEUE_RECEIPTS / 2 {
            q.capped = false;
            self.dispatch.notify_one();
        }
    }

    /// After the acks (already reported): move the acknowledged copies to
    /// sent/, keep refused ones as evidence and report those.
    fn settle(&self, batch: &[Queued], acks: &[crate::wire::Ack]) {
        for (q, ack) in batch.iter().zip(acks) {
            let path = self.paths.outbox().join(&q.file);
            match &ack.outcome {
                Outcome::Stored | Outcome::Duplicate => {
                    // Kept in sent/ as the audit trail (as delivered/ is in a
                    // mailbox), which also keeps unlinks off the hot path: on
                    // ext4 without a journal every file creation scans the
                    // inodes freed in the last minute. No fsync: a copy left in
                    // the outbox by a crash is sent again and acked as a duplicate.
                    if std::fs::rename(&path, self.paths.sent().join(&q.file)).is_err() {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                Outcome::Refused { kind, reason } => {
                    self.keep_refused(&path, &q.file, kind, reason);
                    self.emit(MeshEvent::RefusedByPeer {
                        env: q.env.clone(),
                        kind: kind.clone(),
                        reason: reason.clone(),
                    });
                }
            }
        }
    }

    /// Offers a charter that came over the wire; logs the outcome and returns
    /// the answer for whoever pushed it.
    ///
    /// A refused charter (foreign key, conflict, bad signature) is answered
    /// with `Frame::Refused`, not `Ok`: the root's sender matches on
    /// `Refused` to log that a member will not follow it, and before this it
    /// never heard of a refusal. A stale charter is no attack: `Ok`, with a note.
    fn accept_charter(self: &Arc<Self>, json: &[u8], from: &str) -> Frame {
        let res =
            SignedCharter::from_json(json).and_then(|c| charter_file::offer(&self.paths, &c).map(|d| (c, d)));
        match res {
            Ok((c, Decision::Accept)) => {
                self.emit(MeshEvent::CharterStored { epoch: c.charter.epoch, from: from.to_string() });
                if c.charter.root != self.name {
                    self.settle_root(c.charter.epoch, from);
                }
                if let Err(e) = self.reload_charter() {
                    warn!(error = %e, "charter reload failed");
                }
                Frame::Ok { note: String::new() }
            }
            Ok((c, Decision::Same)) => {
                // Held already, yet the key may still be here (a promote that
                // crashed between storing the charter and deleting the key).
                if c.charter.root != self.name {
                    self.settle_root(c.charter.epoch, from);
                }
                Frame::Ok { note: String::new() }
            }
            Ok((c, Decision::Stale { held })) => {
                info!(offered = c.charter.epoch, held, "stale charter ignored");
                let reason = format!("stale: epoch {} offered, {held} held", c.charter.epoch);
                self.emit(MeshEvent::CharterRefused { from: from.to_string(), reason });
                Frame::Ok { note: format!("stale: this node holds epoch {held}") }
            }
            Err(e) => {
                warn!(error = %e, "charter refused");
                self.emit(MeshEvent::CharterRefused { from: from.to_string(), reason: e.to_string() });
                Frame::Refused { reason: e.to_string() }
            }
        }
    }

    /// Handles one request from a member.
    async fn handle(self: &Arc<Self>, remote: NodeId, peer: &str, req: Frame) -> Frame {
        match req {
            Frame::Push { envs } => {
                if envs.len() > MAX_BATCH {
                    return Frame::Refused {
                        reason: format!("{} envelopes in one push (at most {MAX_BATCH})", envs.len()),
                    };
                }
                let s = self.clone();
                let res = off_async(move || {
                    let _one_at_a_time = s.ingest_lock.lock().unwrap_or_else(|p| p.into_inner());
                    let roster = s.roster();
                    ingest::ingest(&s.layout, &s.name, &roster, &*s.agent_exists, remote, envs)
                })
                .await;
                match res {
                    Ok(Ok(items)) => {
                        let acks = items.iter().map(|i| i.ack.clone()).collect();
                        {
                            let mut dirs = self.spare_dirs.lock().unwrap_or_else(|p| p.into_inner());
                            // A mailbox that took one envelope took it into a spare
                            // (a batch creates its files); a bound on the folders kept.
                            let mut stored: HashMap<AgentName, usize> = HashMap::new();
                            for i in items.iter().filter(|i| i.ack.outcome == Outcome::Stored) {
                                if let Some(agent) = i.agent {
                                    *stored.entry(agent).or_default() += 1;
                                }
                            }
                            for (agent, _) in stored.into_iter().filter(|(_, n)| *n == 1) {
                                if dirs.len() < SPARE_INBOXES {
                                    dirs.insert(self.layout.inbox_dir(agent));
                                }
                            }
                        }
                        self.spares_due.notify_one();
                        for i in items {
                            self.emit(MeshEvent::Received { peer: peer.to_string(), item: i });
                        }
                        Frame::Acks { acks }
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "cannot store a push; the sender keeps it and retries");
                        Frame::Refused { reason: format!("receiver cannot store now: {e}") }
                    }
                    Err(e) => Frame::Refused { reason: format!("receiver failed: {e}") },
                }
            }
            Frame::Charter { json } => {
                // Locking and fsyncing the charter file: off the async threads.
                let (s, from) = (self.clone(), peer.to_string());
                tokio::task::spawn_blocking(move || s.accept_charter(&json, &from))
                    .await
                    .unwrap_or_else(|e| Frame::Refused { reason: format!("receiver failed: {e}") })
            }
            Frame::Hello { addrs, epoch } => self.hello(remote, addrs, epoch).await,
            Frame::Handover { mesh_key, charter } => {
                let s = self.clone();
                let res = tokio::task::spawn_blocking(move || s.take_over(remote, &mesh_key, &charter)).await;
                match res {
                    Ok(Ok(epoch)) => {
                        self.emit(MeshEvent::CharterStored {
                            epoch,
                            from: format!("{peer} (handover: this node is root now)"),
                        });
                        if let Err(e) = self.reload_charter() {
                            warn!(error = %e, "charter reload failed");
                        }
                        Frame::Ok { note: format!("root at epoch {epoch}") }
                    }
                    Ok(Err(e)) => {
                        self.emit(MeshEvent::CharterRefused {
                            from: peer.to_string(),
                            reason: e.to_string(),
                        });
                        Frame::Refused { reason: e.to_string() }
                    }
                    Err(e) => Frame::Refused { reason: e.to_string() },
                }
            }
            Frame::Receipts { receipts } => {
                if receipts.len() > MAX_BATCH {
                    return Frame::Refused {
                        reason: format!("{} receipts at once (at most {MAX_BATCH})", receipts.len()),
                    };
                }
                // Durable before the ack: the sending node deletes its copy then.
                let (s, from) = (self.clone(), peer.to_string());
                let rs = receipts.clone();
                let stored = tokio::task::spawn_blocking(move || s.store_receipts(&from, &rs)).await;
                match stored {
                    Ok(Ok(())) => {
                        for r in receipts {
                            self.emit(MeshEvent::Receipt { from: peer.to_string(), receipt: r });
                        }
                        Frame::Ok { note: String::new() }
                    }
                    Ok(Err(e)) => Frame::Refused { reason: format!("cannot store receipts now: {e}") },
                    Err(e) => Frame::Refused { reason: format!("receiver failed: {e}") },
                }
            }
            other => {
                Frame::Refused { reason: format!("not a request: {:?}", std::mem::discriminant(&other)) }
            }
        }
    }

    /// Root: records a member's addresses; answers with the charter if the member is behind.
    async fn hello(self: &Arc<Self>, remote: NodeId, addrs: Vec<SocketAddr>, epoch: u64) -> Frame {
        if !self.is_root() {
            return Frame::Ok { note: "not root".into() };
        }
        let addrs: Vec<SocketAddr> =
            addrs.into_iter().filter(|a| !a.ip().is_unspecified()).take(16).collect();
        let Some(c) = self.charter() else { return Frame::Refused { reason: "no charter".into() } };
        let Some(m) = c.charter.member_by_id(&remote).cloned() else {
            return Frame::Refused { reason: "not a member".into() };
        };
        let mut current = c;
        if m.addrs != addrs {
            let s = self.clone();
            let res = tokio::task::spawn_blocking(move || {
                s.amend(|ch| {
                    if let Some(x) = ch.members.iter_mut().find(|x| x.node_id == remote) {
                        x.addrs = addrs;
                    }
                    Ok(())
                })
            })
            .await;
            match res {
                Ok(Ok(c)) => current = Arc::new(c),
                Ok(Err(e)) => warn!(error = %e, "cannot record a member's addresses"),
                Err(e) => warn!(error = %e, "address update failed"),
            }
        }
        if current.charter.epoch > epoch {
            if let Some(p) = self.peers.lock().unwrap_or_else(|p| p.into_inner()).get(&m.name) {
                p.queue.lock().unwrap_or_else(|p| p.into_inner()).epoch_known = current.charter.epoch;
            }
            Frame::Charter { json: current.to_json() }
        } else {
            Frame::Ok { note: String::new() }
        }
    }

    /// Writes receipts for envelopes this node sent into `mesh/delivered/<id>.json`.
    fn store_receipts(&self, from: &str, receipts: &[Receipt]) -> Result<(), MeshError> {
        let items: Vec<(String, Vec<u8>)> = receipts
            .iter()
            // Only ULIDs name files here: a receipt is data from a peer.
            .filter(|r| r.id.parse::<ulid::Ulid>().is_ok())
            .filter_map(|r| {
                let doc = SpooledReceipt { node: from.to_string(), receipt: r.clone() };
                Some((format!("{}.json", r.id), serde_json::to_vec(&doc).ok()?))
            })
            .collect();
        if items.is_empty() {
            return Ok(());
        }
        let dir = self.paths.delivered();
        std::fs::create_dir_all(&dir).map_err(MeshError::io("create", &dir))?;
        netsky_bus::write_durable_batch(&dir, &items)?;
        Ok(())
    }

    /// Takes the root role handed over by the current root: the charter must
    /// name this node root, be signed by the key handed over, and come from
    /// the root of the charter held.
    fn take_over(&self, remote: NodeId, mesh_key: &[u8], json: &[u8]) -> Result<u64, MeshError> {
        let held = self.charter().ok_or_else(|| MeshError::Charter("this node holds no charter".into()))?;
        // A retried handover (its first answer was lost): the very charter
        // taken over already, from the key it named. Confirm it again.
        if let Ok(again) = SignedCharter::from_json(json)
            && *held == again
            && again.charter.root == self.name
            && charter_file::mesh_key(&self.paths)?.is_some_and(|k| k.public() == again.charter.mesh_key)
        {
            return Ok(again.charter.epoch);
        }
        if held.charter.root_member().map(|m| m.node_id) != Some(remote) {
            return Err(MeshError::Charter("a handover must come from the current root".into()));
        }
        let bytes: [u8; 32] = mesh_key
            .try_into()
            .map_err(|_| MeshError::Charter("the handed-over mesh key is not 32 bytes".into()))?;
        let key = SecretKey::from_bytes(&bytes);
        let new = SignedCharter::from_json(json)?;
        if new.charter.root != self.name || key.public() != new.charter.mesh_key {
            return Err(MeshError::Charter(
                "the handover charter does not name this node root under that key".into(),
            ));
        }
        // Decided under the lock before the key is kept: a refused charter
        // (stale, conflicting) must not leave a second holder of the key.
        let lock = charter_file::lock(&self.paths)?;
        let decision = new.decide(charter_file::load(&self.paths)?.as_ref())?;
        if let Decision::Stale { held } = decision {
            return Err(MeshError::Charter(format!("stale handover: epoch {held} is held")));
        }
        let path = self.paths.mesh_key();
        match netsky_keys::load_key_file(&path) {
            Ok(k) if k.key.public() == key.public() => {}
            Ok(_) => return Err(MeshError::Charter(format!("{} holds another mesh key", path.display()))),
            Err(_) => {
                netsky_keys::save_key_file(&path, key)?;
            }
        }
        if decision == Decision::Accept {
            charter_file::store(&self.paths, &lock, &new)?;
        }
        Ok(new.charter.epoch)
    }

    /// Gives up this node's copy of the mesh key when the charter held names
    /// another root (a handover whose answer, or whose last step, was lost).
    fn settle_root(&self, epoch: u64, from: &str) {
        match charter_file::settle_root(&self.paths, &self.name) {
            Ok(true) => {
                info!(epoch, "another node is root under this node's mesh key: this node's copy is removed");
                let from = format!("{from} (handover confirmed: mesh key given up)");
                self.emit(MeshEvent::CharterStored { epoch, from });
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot give up the mesh key after a handover"),
        }
    }

    /// Root: redeems a join ticket for the connection's node id.
    fn redeem(self: &Arc<Self>, remote: NodeId, req: JoinRequest) -> Result<SignedCharter, String> {
        let charter = self.charter().ok_or("this node is in no mesh")?;
        if charter.charter.root != self.name {
            return Err(format!("this node is not the root; the root is {}", charter.charter.root));
        }
        let t = crate::Ticket::decode(&req.ticket).map_err(|e| e.to_string())?;
        if t.body.mesh_key != charter.charter.mesh_key || t.body.mesh != charter.charter.mesh {
            return Err("the ticket is for another mesh".into());
        }
        t.check_fresh(time::OffsetDateTime::now_utc().unix_timestamp()).map_err(|e| e.to_string())?;
        let name: NodeName = req.name.parse().map_err(|e: netsky_bus::BusError| e.to_string())?;
        if name != t.body.invitee {
            return Err(format!("the ticket admits {}, not {name}", t.body.invitee));
        }
        if charter.charter.revoked.contains(&remote) {
            return Err("this node id was revoked from the mesh".into());
        }
        if let Some(m) = charter.charter.member(&name)
            && m.node_id != remote
        {
            return Err(format!("the name {name} is taken by another node"));
        }
        // Burn the one-time secret: only one rename can succeed.
        let secret = t.body.secret_hex();
        let pending = self.paths.tickets().join(format!("{secret}.json"));
        let used = self.paths.tickets().join(format!("{secret}.used"));
        if std::fs::rename(&pending, &used).is_err() {
            // The same joiner asking again (its answer was lost): it is in already.
            if used.exists() && charter.charter.member(&name).is_some_and(|m| m.node_id == remote) {
                return Ok((*charter).clone());
            }
            return Err("unknown or already used ticket".into());
        }
        let addrs: Vec<SocketAddr> =
            req.addrs.into_iter().filter(|a| !a.ip().is_unspecified()).take(16).collect();
        self.amend(move |ch| {
            ch.members.retain(|m| m.node_id != remote);
            ch.members.push(CharterMember { name, node_id: remote, addrs });
            Ok(())
        })
        .map_err(|e| {
            // Not admitted after all: the ticket stays good for another try.
            let _ = std::fs::rename(&used, &pending);
            e.to_string()
        })
    }

    fn join_budget_spent(&self, id: &NodeId) -> bool {
        let g = self.join_failures.lock().unwrap_or_else(|p| p.into_inner());
        g.get(id).is_some_and(|(start, n)| {
            start.elapsed() < Duration::from_secs(60) && *n >= JOIN_FAILURES_PER_MINUTE
        })
    }

    /// Counts a failed join of `id`; returns its failures in the current minute.
    fn join_failed(&self, id: NodeId) -> u32 {
        let mut g = self.join_failures.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= JOINERS_REMEMBERED {
            g.retain(|_, (start, _)| start.elapsed() < Duration::from_secs(60));
            if g.len() >= JOINERS_REMEMBERED {
                g.clear();
            }
        }
        let e = g.entry(id).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= Duration::from_secs(60) {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
        e.1
    }
}

/// A receipt waiting in `mesh/receipts/` for its origin node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SpooledReceipt {
    /// The origin node to send it to.
    pub node: String,
    /// The receipt.
    pub receipt: Receipt,
}

/// Whether a file was modified so recently that a writer that does not
/// write atomically (a copy by hand) may not be done: look again later
/// rather than refuse it half-written.
fn still_settling(path: &std::path::Path) -> bool {
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
    let named =
        |p: &std::path::Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.'));
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
/// not queued (`known`), or anything else in mesh/ (the charter).
fn unqueued(ev: &notify::Event, known: &HashSet<String>, outbox: &Path, receipts: &Path) -> bool {
    ev.paths.iter().any(|p| {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
            return false;
        };
        let key = if dir == outbox {
            format!("o/{name}")
        } else if dir == receipts {
            format!("r/{name}")
        } else {
            return true;
        };
        !known.contains(&key) && p.exists()
    })
}

enum Item {
    Env(Envelope),
    Receipt(Receipt),
}

fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1u32 << failures.min(7));
    let capped = base.min(MAX_BACKOFF);
    // Up to 20% jitter so peers that failed together do not retry together.
    let jitter = rand::random::<u64>() % (capped.as_millis() as u64 / 5 + 1);
    capped + Duration::from_millis(jitter)
}

#[derive(Clone)]
struct MeshHandler(Arc<Shared>);

impl std::fmt::Debug for MeshHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshHandler")
    }
}

impl ProtocolHandler for MeshHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let s = &self.0;
        let remote = conn.remote_id();
        // The door checked already; check again in case the charter changed since.
        if !s.allow.allows(&remote) {
            conn.close(403u32.into(), b"not a member of this mesh");
            return Ok(());
        }
        let member = s.charter().and_then(|c| c.charter.member_by_id(&remote).map(|m| m.name.clone()));
        if let Some(name) = &member {
            s.peer_seen(name);
        }
        let peer = member.map(|n| n.to_string()).unwrap_or_else(|| remote.fmt_short().to_string());
        let span = info_span!("inbound", node = %s.name, peer = %peer);
        async move {
            // One request at a time per connection: a flooding member holds at
            // most one worker, and its pushes stay in order.
            loop {
                let (mut send, mut recv) = tokio::select! {
                    _ = s.cancel.cancelled() => break,
                    r = conn.accept_bi() => match r { Ok(x) => x, Err(_) => break },
                };
                if !s.allow.allows(&remote) {
                    conn.close(403u32.into(), b"revoked");
                    break;
                }
                let req: Frame = match read_frame(&mut recv, MAX_FRAME, FRAME_TIMEOUT, &peer).await {
                    Ok(f) => f,
                    // The peer closed the connection (a shutdown) mid-frame: a normal end.
                    Err(_) if conn.close_reason().is_some() => break,
                    Err(e) => {
                        // The connection ends, not only the stream: a push behind an
                        // unreadable one (two are in flight) must not be stored ahead of it.
                        warn!(error = %e, "bad frame; connection closed");
                        s.emit(MeshEvent::ProtocolError { peer: peer.clone(), reason: e.to_string() });
                        conn.close(2u32.into(), b"unreadable frame");
                        break;
                    }
                };
                let push = matches!(req, Frame::Push { .. });
                let resp = s.handle(remote, &peer, req).await;
                let failed_push = push && matches!(resp, Frame::Refused { .. });
                if let Err(e) = write_frame(&mut send, &resp, &peer).await {
                    debug!(error = %e, "answer not delivered");
                }
                if failed_push {
                    // Pushes behind this one may be waiting on their streams: storing
                    // them now would put them ahead of the envelopes that failed.
                    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                    conn.close(1u32.into(), b"push not stored; retry in order");
                    break;
                }
            }
        }
        .instrument(span)
        .await;
        Ok(())
    }
}

#[derive(Clone)]
struct JoinHandler(Arc<Shared>);

impl std::fmt::Debug for JoinHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinHandler")
    }
}

impl ProtocolHandler for JoinHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let s = self.0.clone();
        let remote = conn.remote_id();
        let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(FRAME_TIMEOUT, conn.accept_bi()).await else {
            return Ok(());
        };
        let Ok(_permit) = s.joins.acquire().await else { return Ok(()) };
        let resp = if s.join_budget_spent(&remote) {
            JoinResponse::Refused { reason: "too many failed join attempts; try again in a minute".into() }
        } else {
            match read_frame::<JoinRequest>(&mut recv, 16 * 1024, FRAME_TIMEOUT, "joiner").await {
                Err(e) => JoinResponse::Refused { reason: e.to_string() },
                Ok(req) => {
                    let name = req.name.clone();
                    let s2 = s.clone();
                    match tokio::task::spawn_blocking(move || s2.redeem(remote, req)).await {
                        Ok(Ok(c)) => {
                            s.emit(MeshEvent::Joined {
                                name,
                                node_id: remote.to_string(),
                                epoch: c.charter.epoch,
                            });
                            JoinResponse::Joined { charter: c.to_json() }
                        }
                        Ok(Err(reason)) => JoinResponse::Refused { reason },
                        Err(e) => JoinResponse::Refused { reason: e.to_string() },
                    }
                }
            }
        };
        if let JoinResponse::Refused { reason } = &resp
            && s.join_failed(remote) <= JOIN_FAILURES_PER_MINUTE
        {
            // Past its limit a joiner's attempts are refused unrecorded: evidence, not a flood.
            s.emit(MeshEvent::JoinRefused { remote: remote.to_string(), reason: reason.clone() });
        }
        let _ = write_frame(&mut send, &resp, "joiner").await;
        // Let the answer reach the joiner before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        Ok(())
    }
}

/// Hands the root role to `target`: sends it the mesh key and the charter
/// that names it root, over a connection authenticated to its node id.
pub async fn handover(
    key: &SecretKey,
    target: &CharterMember,
    mesh_key: &SecretKey,
    charter: &SignedCharter,
    relay: &Relay,
    mdns: bool,
) -> Result<(), MeshError> {
    let peer = target.name.to_string();
    let Some(addr) = dial_addr(target.node_id, &target.addrs, relay, mdns) else {
        return Err(MeshError::Connect { peer, reason: "no known address (is its daemon running?)".into() });
    };
    let ep = crate::endpoint::bind_client(key, relay, mdns).await?;
    let res = async {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, ep.connect(addr, ALPN_MESH))
            .await
            .map_err(|_| MeshError::Connect { peer: peer.clone(), reason: "no answer within 5 s".into() })?
            .map_err(|e| MeshError::Connect { peer: peer.clone(), reason: e.to_string() })?;
        let frame = Frame::Handover { mesh_key: mesh_key.to_bytes().to_vec(), charter: charter.to_json() };
        let resp = request(&conn, &frame, FRAME_TIMEOUT, &peer).await;
        conn.close(0u32.into(), b"done");
        match resp? {
            Frame::Ok { .. } => Ok(()),
            Frame::Refused { reason } => {
                Err(MeshError::Charter(format!("{peer} refused the handover: {reason}")))
            }
            other => Err(MeshError::Protocol {
                peer: peer.clone(),
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    }
    .await;
    ep.close().await;
    res
}

/// Joins a mesh with `ticket`, from a one-off endpoint with the node key.
///
/// Returns the charter that names this node, verified against the ticket's
/// mesh key; the caller stores it.
pub async fn join(
    key: &SecretKey,
    name: &NodeName,
    ticket: &crate::Ticket,
    addrs: Vec<SocketAddr>,
    relay: &Relay,
    mdns: bool,
) -> Result<SignedCharter, MeshError> {
    let Some(addr) = dial_addr(ticket.body.root, &ticket.body.root_addrs, relay, mdns) else {
        return Err(MeshError::Connect {
            peer: "root".into(),
            reason: "the ticket holds no address for the root, and this node has no relay or mDNS to find it"
                .into(),
        });
    };
    let ep = crate::endpoint::bind_client(key, relay, mdns).await?;
    let res = async {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, ep.connect(addr, ALPN_JOIN))
            .await
            .map_err(|_| MeshError::Connect {
                peer: "root".into(),
                reason: "no answer within 10 s (is its daemon running?)".into(),
            })?
            .map_err(|e| MeshError::Connect { peer: "root".into(), reason: e.to_string() })?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| MeshError::Connect { peer: "root".into(), reason: e.to_string() })?;
        let req = JoinRequest { ticket: ticket.encode(), name: name.to_string(), addrs };
        write_frame(&mut send, &req, "root").await?;
        let resp: JoinResponse = read_frame(&mut recv, MAX_FRAME, FRAME_TIMEOUT, "root").await?;
        conn.close(0u32.into(), b"done");
        match resp {
            JoinResponse::Refused { reason } => Err(MeshError::Ticket(format!("the root refused: {reason}"))),
            JoinResponse::Joined { charter } => {
                let c = SignedCharter::from_json(&charter)?;
                c.verify()?;
                if c.charter.mesh_key != ticket.body.mesh_key {
                    return Err(MeshError::Charter(
                        "the root answered with a charter of another mesh key".into(),
                    ));
                }
                if c.charter.member(name).map(|m| m.node_id) != Some(key.public()) {
                    return Err(MeshError::Charter("the charter received does not name this node".into()));
                }
                Ok(c)
            }
        }
    }
    .await;
    ep.close().await;
    res
}

/// Runs blocking file work (fsyncs, renames) off the async scheduler: on a
/// multi-thread runtime in place (`block_in_place` hands this worker's other
/// tasks to another thread, so no thread has to wake up before the work
/// starts: each such hop cost tens of microseconds on the hot path),
/// elsewhere on the blocking pool. A panic is an error, as a failed join
/// would be, so the loop that called it goes on.
async fn off_async<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, String> {
    if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
            .map_err(|p| panic_text(p.as_ref()))
    } else {
        tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())
    }
}

/// The message of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("panicked: {msg}")
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
