//! The running mesh: [`Mesh`] starts and stops it, and `Shared` is the small
//! core every part holds, with one piece of state per part.
//!
//! Every task is owned by the [`Mesh`]'s `JoinSet` and stops on its
//! cancellation token; [`Mesh::shutdown`] cancels, waits for each task to
//! finish its current unit of work, then closes the endpoint.
//!
//! The parts, one file each:
//! - `charter_sync`: the charter this node follows and its own addresses in it;
//! - `dispatch`: the outbox watcher and scan that queue files for peers;
//! - `peer`: one sender per member, shipping its queue and taking the acks;
//! - `reachability`: which peers answered, as written to `state/peers.json`;
//! - `inbound`: the handler for members' requests (pushes, charters, handovers);
//! - `join`: the handler that redeems join tickets, and its rate limit;
//! - `client`: the one-off `join`, `handover` and `ask` calls of the command line;
//! - `beacon`: a member's health beacon to the root, answered with the mesh view;

mod beacon;
mod charter_sync;
mod client;
mod dispatch;
mod inbound;
mod join;
mod peer;
mod reachability;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use iroh::Endpoint;
use iroh::protocol::Router;
use netsky_bus::{AgentName, Layout, NodeName, Roster};
use netsky_keys::{NodeId, SecretKey};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::endpoint::{Relay, dialable_addrs};
use crate::membership::Allowlist;
use crate::wire::{ALPN_JOIN, ALPN_MESH, Receipt};
use crate::{MeshError, MeshEvent, MeshPaths};

pub use client::{ask, beacon, handover, join};
pub use reachability::PeerState;

use charter_sync::CharterState;
use dispatch::Dispatch;
use inbound::MeshHandler;
use join::JoinHandler;
use reachability::Reachability;

/// Where events go: the node records them (log, meta.db).
pub type EventSink = Arc<dyn Fn(MeshEvent) + Send + Sync>;

/// Which agents exist on this node (envelopes for others are refused).
pub type AgentCheck = Arc<dyn Fn(AgentName) -> bool + Send + Sync>;

/// Answers members' questions (`incidents`) as JSON, or says why not; run off the async threads.
pub type Answers = Arc<dyn Fn(&str) -> Result<Vec<u8>, String> + Send + Sync>;

/// Takes a member's beacon at the root (the sender's name and node id, the
/// signed bytes) and returns the mesh view to answer with, or why it is refused.
pub type BeaconSink = Arc<dyn Fn(&str, NodeId, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// How long a dial may take (a peer's sender and the one-off client calls).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// What this node answers members who ask (none: every question is refused).
    pub answers: Option<Answers>,
    /// Where beacons go when this node is root (none: beacons are refused).
    pub beacons: Option<BeaconSink>,
    /// Where events go.
    pub events: EventSink,
}

/// A receipt waiting in `mesh/receipts/` for its origin node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SpooledReceipt {
    /// The origin node to send it to.
    pub node: String,
    /// The receipt.
    pub receipt: Receipt,
}

/// The core every part of the running mesh holds: who this node is, where
/// its files are, its endpoint, its tasks, and one piece of state per part.
/// The protocol handlers own what only they use (the ingest lock, the join
/// limit), so it is not here.
struct Shared {
    name: NodeName,
    key: SecretKey,
    relay: Relay,
    /// mDNS runs: a member without a known address may still be found.
    mdns: bool,
    paths: MeshPaths,
    layout: Layout,
    endpoint: Endpoint,
    agent_exists: AgentCheck,
    answers: Option<Answers>,
    beacons: Option<BeaconSink>,
    events: EventSink,
    cancel: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    /// The charter held, and the roster and door it implies (`charter_sync`).
    charter: CharterState,
    /// The senders, their queues and what is queued (`dispatch`, `peer`).
    dispatch: Dispatch,
    /// Which peers answered last time (`reachability`).
    reachability: Reachability,
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
            answers: cfg.answers,
            beacons: cfg.beacons,
            events: cfg.events,
            cancel: CancellationToken::new(),
            tasks: Mutex::new(JoinSet::new()),
            charter: CharterState::new(allow, roster),
            dispatch: Dispatch::default(),
            reachability: Reachability::default(),
        });
        let s = shared.clone();
        tokio::task::spawn_blocking(move || {
            s.reload_charter()?;
            if let Some(c) = s.charter()
                && c.charter.root != s.name
            {
                s.finish_handover_if_taken(c.charter.epoch, "the charter held at start");
            }
            s.claim_own_addrs();
            Ok::<(), MeshError>(())
        })
        .await
        .map_err(|e| MeshError::Charter(format!("charter load failed: {e}")))??;
        let router = Router::builder(endpoint)
            .accept(ALPN_MESH, MeshHandler::new(shared.clone()))
            .accept(ALPN_JOIN, JoinHandler::new(shared.clone()))
            .spawn();
        let watcher = shared.watch();
        let s = shared.clone();
        let span = info_span!("dispatch", node = %shared.name);
        shared.spawn(async move { s.dispatch_loop().await }.instrument(span));
        let s = shared.clone();
        shared.spawn(s.claim_loop().instrument(info_span!("claims", node = %shared.name)));
        shared.dispatch.wake.notify_one();
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
        self.shared.dispatch.wake.notify_one();
    }

    /// Stops every task after its current unit of work, then closes the endpoint.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        // A scan the file watcher started before the cancel finishes first:
        // nothing it queues or refuses happens after this returns.
        let s = self.shared.clone();
        let scan_done = tokio::task::spawn_blocking(move || drop(lock(&s.dispatch.scanning)));
        if tokio::time::timeout(Duration::from_secs(10), scan_done).await.is_err() {
            warn!("an outbox scan did not finish within 10 s of shutdown");
        }
        let mut tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
            warn!("mesh tasks did not stop within 10 s; aborting them");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.router.shutdown()).await;
    }
}

impl Shared {
    /// Runs a task owned by the mesh: [`Mesh::shutdown`] waits for it.
    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        lock(&self.tasks).spawn(fut);
    }

    fn emit(&self, e: MeshEvent) {
        (self.events)(e)
    }
}

/// Takes a lock even if a holder panicked: what these locks guard (queues,
/// sets, maps) stays usable, and one panic must not stop every part of the mesh.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ts() -> String {
    netsky_bus::format_ts(time::OffsetDateTime::now_utc())
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
