//! `netsky node run`: the daemon, in the foreground.
//!
//! It holds the home's daemon lock, binds the mesh endpoint, writes
//! `state/node.json`, records every mesh event (log first, then meta.db) on
//! a recorder thread, and on SIGTERM or SIGINT stops the mesh after its
//! in-flight work, marks itself stopped, and exits 0.
//!
//! Where the OS gives notice of a sleep (logind, IOKit: `netsky-power`), the
//! daemon announces the node as leaving before it lets the machine go, holds
//! its regular beacons while asleep, and beacons at once when it wakes.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use anyhow::{Context, Result};
use netsky_bus::format_ts;
use netsky_mesh::{Mesh, MeshConfig, MeshEvent};
use netsky_power::{PowerEvent, SleepWatch};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::beacon;
use crate::constellation::agents;
use crate::daemon_state::{self, DaemonState};
use crate::home::Home;
use crate::node::Node;
use crate::output::{Ctx, emit};
use crate::record::{Event, EventKind, Recorder};
use crate::supervise::lkg;
use crate::ticker::{Ticker, Waker};

/// Events waiting for the recorder thread; a full queue slows the mesh rather than losing evidence.
const EVENT_QUEUE: usize = 65_536;

/// The longest the leaving beacon may take once the OS says it will sleep
/// (logind waits 5 s for a delay lock by default, IOKit 30 s).
const SLEEP_ANNOUNCE: Duration = Duration::from_secs(3);

/// After a sleep notice and no wake notice, regular beacons resume after this
/// long awake (the monotonic clock stands still while the machine sleeps).
const SLEEP_HOLD: Duration = Duration::from_secs(60);

/// The longest subscribing to the OS's sleep notices may take at start.
const SLEEP_WATCH_START: Duration = Duration::from_secs(10);

#[derive(Serialize)]
struct Ready {
    name: String,
    node_id: String,
    addrs: Vec<SocketAddr>,
    pid: u32,
    mesh: Option<String>,
    root: Option<String>,
    /// mDNS discovery runs (`[node] mdns = true` and multicast available).
    mdns: bool,
}

/// Runs the daemon until a signal stops it.
pub fn run(ctx: &Ctx) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let _lock = daemon_state::acquire(&node.home)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("netsky")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(ctx, node))
}

async fn serve(ctx: &Ctx, node: Node) -> Result<ExitCode> {
    // Signals first: one that arrives while the node starts must still stop it
    // cleanly (a stop is then noticed as soon as the start is done).
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // tmux sends SIGHUP when `netsky down` kills the session `up` started us in.
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let name = node.config.node.name.clone();
    let (tx, rx) = sync_channel::<Option<Event>>(EVENT_QUEUE);
    let recorder = Recorder::indexing(&node.home, name.clone());
    let rec_home = node.home.clone();
    let rec_thread = std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || record_loop(recorder, rx, rec_home))
        .context("cannot start the recorder thread")?;
    // The heartbeat: delivery into panes, watchdog, hang detection, on its own thread.
    let ticker = Ticker::start(node.home.clone())?;
    // Builds events (never writes them: the recorder thread does).
    let events = Arc::new(Recorder::new(&node.home, name.clone()));
    let sink = event_sink(events.clone(), tx.clone(), ticker.waker());
    let (home, config) = (node.home.clone(), node.config.clone());
    // The root's beacon desk (members' beacons in, the mesh view out).
    let (history_tx, history) = (tx.clone(), events.clone());
    let desk = Arc::new(beacon::Desk::new(node.home.clone()).with_history(Box::new(move |figures| {
        // A full queue drops this line of history: the next beacon comes within an interval.
        let _ = history_tx.try_send(Some(history.event(EventKind::Beacon, None, None, Some(figures))));
    })));
    let cfg = MeshConfig {
        home: node.home.root().to_path_buf(),
        name: name.clone(),
        key: node.key.clone(),
        listen: node.config.node.listen,
        relay: node.config.node.relay.to_mesh(),
        mdns: node.config.node.mdns,
        agent_exists: Arc::new(move |a| agents::answered_for(&home, &config).contains(a)),
        answers: Some(crate::owner::answers(node.home.clone())),
        beacons: Some({
            let desk = desk.clone();
            Arc::new(move |peer: &str, id, bytes: &[u8]| {
                desk.take(peer, id, bytes).map_err(|e| format!("{e:#}"))
            })
        }),
        events: sink,
    };
    // An unpinned port: reuse the last one, so peers' charters stay right across restarts.
    let previous = daemon_state::read(&node.home).and_then(|s| s.addrs.first().map(|a| a.port()));
    let mesh = match previous {
        Some(port) if cfg.listen.port() == 0 && port != 0 => {
            let pinned = MeshConfig { listen: SocketAddr::new(cfg.listen.ip(), port), ..cfg.clone() };
            match Mesh::start(pinned).await {
                Ok(m) => m,
                Err(e) => {
                    info!(error = %e, "previous port unavailable; binding a new one");
                    Mesh::start(cfg).await?
                }
            }
        }
        _ => Mesh::start(cfg).await?,
    };
    let state = DaemonState {
        pid: std::process::id(),
        running: true,
        name: name.to_string(),
        node_id: node.key.public().to_string(),
        addrs: mesh.addrs(),
        started: format_ts(time::OffsetDateTime::now_utc()),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    daemon_state::write(&node.home, &state)?;
    let started = format!("pid {} addrs {:?} mdns {}", state.pid, state.addrs, mesh.mdns());
    let _ = tx.send(Some(events.event(EventKind::DaemonStarted, None, None, Some(started))));
    if let Some((why, live)) = lkg::fallback_from_env() {
        report_fallback(&node, &events, &tx, &why, &live);
    }
    let ready = Ready {
        name: state.name.clone(),
        node_id: state.node_id.clone(),
        addrs: state.addrs.clone(),
        pid: state.pid,
        mesh: node.charter.as_ref().map(|c| c.charter.mesh.clone()),
        root: node.charter.as_ref().map(|c| c.charter.root.to_string()),
        mdns: mesh.mdns(),
    };
    emit(ctx, &ready, || {
        format!(
            "netsky node {} running (pid {}, id {}, addrs {:?})",
            ready.name, ready.pid, ready.node_id, ready.addrs
        )
    })?;
    // The status page, owned here and stopped with the daemon.
    let page_stop = tokio_util::sync::CancellationToken::new();
    let page = match node.config.node.http {
        Some(addr) => Some(crate::status_page::serve(node.home.clone(), addr, page_stop.clone()).await?),
        None => None,
    };
    let interval = Duration::from_secs(node.config.node.beacon_interval_s);
    let mut beat = tokio::time::interval(interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Healthy rounds in a row; at `lkg::HEALTHY_ROUNDS` this binary becomes the last known good one.
    let mut healthy: u32 = 0;
    // The OS's sleep notices, owned here and let go (lock, thread) when the daemon ends.
    let mut sleep_watch = start_sleep_watch().await;
    // Since the last sleep notice with no wake notice after it: regular beacons wait.
    let mut asleep_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
            _ = hup.recv() => { info!("SIGHUP: stopping"); break }
            notice = next_notice(&mut sleep_watch) => match notice {
                Some(PowerEvent::WillSleep) => {
                    let detail = announce_sleep(&mesh, &node.home, &desk, interval).await;
                    let _ = tx.send(Some(events.event(EventKind::SleepNotice, None, None, Some(detail))));
                    asleep_since = Some(tokio::time::Instant::now());
                    healthy = 0;
                    // Announced: the machine may sleep now.
                    if let Some(w) = sleep_watch.as_mut() {
                        w.ready_to_sleep();
                    }
                }
                Some(PowerEvent::Woke) => {
                    info!("the OS says the machine woke: beaconing at once");
                    let _ = tx.send(Some(events.event(EventKind::Woke, None, None, None)));
                    asleep_since = None;
                    let round = beacon_round(&mesh, &node.home, &desk, false, interval);
                    if tokio::time::timeout(interval.max(Duration::from_secs(1)), round).await.is_err() {
                        warn!("the beacon after waking took longer than the beacon interval");
                    }
                }
                None => {
                    warn!("the OS's sleep notices ended (the bus went away): sleeps go unannounced from now on");
                    sleep_watch = None;
                }
            },
            _ = beat.tick() => {
                // Asleep (announced as leaving): a regular beacon now would undo the announcement.
                if asleep_since.is_some_and(|t| t.elapsed() < SLEEP_HOLD) {
                    continue;
                }
                asleep_since = None;
                // Bounded: a round never holds a signal up for more than an interval.
                let round = beacon_round(&mesh, &node.home, &desk, false, interval);
                match tokio::time::timeout(interval.max(Duration::from_secs(1)), round).await {
                    Ok(true) => healthy = healthy.saturating_add(1),
                    Ok(false) => healthy = 0,
                    Err(_) => {
                        healthy = 0;
                        warn!("a beacon round took longer than the beacon interval");
                    }
                }
                if healthy == lkg::HEALTHY_ROUNDS {
                    promote(&node.home, &events, &tx).await;
                }
            }
        }
    }
    // A last beacon says this node leaves on purpose: offline, announced, never paged.
    let _ =
        tokio::time::timeout(Duration::from_secs(3), beacon_round(&mesh, &node.home, &desk, true, interval))
            .await;
    page_stop.cancel();
    if let Some(p) = page {
        let _ = p.await;
    }
    mesh.shutdown().await;
    match tokio::task::spawn_blocking(move || ticker.stop()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "the heartbeat stopped with an error"),
        Err(e) => warn!(error = %e, "the heartbeat thread failed"),
    }
    let stopped = DaemonState { running: false, ..state };
    if let Err(e) = daemon_state::write(&node.home, &stopped) {
        warn!(error = %e, "cannot mark the daemon stopped");
    }
    let _ = tx.send(Some(events.event(EventKind::DaemonStopped, None, None, None)));
    // An explicit end: tasks that outlive the mesh may still hold senders.
    let _ = tx.send(None);
    let _ = rec_thread.join();
    Ok(ExitCode::SUCCESS)
}

/// Records events in batches (whatever queued up while the last batch was
/// written) until `None` or until every sender is gone. A refused charter
/// that is not merely stale (a conflict, a foreign key, a bad signature) is
/// also escalated: someone may be forging or forking the mesh.
fn record_loop(recorder: Recorder, rx: Receiver<Option<Event>>, home: crate::home::Home) {
    while let Ok(Some(first)) = rx.recv() {
        let mut batch = vec![first];
        let mut end = false;
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(Some(e)) => batch.push(e),
                Ok(None) => {
                    end = true;
                    break;
                }
                Err(_) => break,
            }
        }
        recorder.record(&batch);
        for e in batch.iter().filter(|e| e.event == EventKind::CharterRefused.as_str()) {
            let detail = e.detail.clone().unwrap_or_default();
            if detail.contains(": stale") {
                continue;
            }
            let subject = format!("a charter was refused on node {}", e.node);
            let body =
                format!("{detail}. A conflicting or forged charter may mean a forked or attacked mesh.");
            let raised = crate::node::Node::open(home.clone())
                .and_then(|n| crate::escalation::raise(&n, "mesh", None, &subject, &body));
            if let Err(err) = raised {
                warn!(error = %format!("{err:#}"), "cannot escalate a refused charter");
            }
        }
        if end {
            return;
        }
    }
}

/// Turns mesh events into recorder events on the queue.
fn event_sink(factory: Arc<Recorder>, tx: SyncSender<Option<Event>>, waker: Waker) -> netsky_mesh::EventSink {
    Arc::new(move |e: MeshEvent| {
        // Mail from another node goes into its agent's pane at once, not at the next tick.
        if matches!(&e, MeshEvent::Received { item, .. } if item.ack.outcome == netsky_mesh::wire::Outcome::Stored)
        {
            waker.inbox();
        }
        // Events a stranger can cause at will are dropped when the queue is
        // full rather than stall the mesh; our own evidence waits for room.
        let strangers = matches!(
            &e,
            MeshEvent::ConnectionRefused { .. }
                | MeshEvent::JoinRefused { .. }
                | MeshEvent::ProtocolError { .. }
        );
        for ev in translate(&factory, e) {
            let sent = if strangers {
                tx.try_send(Some(ev)).map_err(|_| ())
            } else {
                tx.send(Some(ev)).map_err(|_| ())
            };
            if sent.is_err() {
                warn!("event dropped: the recorder is gone or full");
            }
        }
    })
}

fn translate(r: &Recorder, e: MeshEvent) -> Vec<Event> {
    let agent_of = |env: &netsky_bus::Envelope| env.to.agent_name();
    match e {
        MeshEvent::Received { peer, item } => {
            let (what, detail) = match &item.ack.outcome {
                netsky_mesh::wire::Outcome::Stored => (EventKind::Received, format!("from {peer}")),
                netsky_mesh::wire::Outcome::Duplicate => {
                    (EventKind::Duplicate, format!("from {peer}, already here"))
                }
                netsky_mesh::wire::Outcome::Refused { kind, reason } => {
                    (EventKind::Refused, format!("from {peer}: {kind}: {reason}"))
                }
            };
            let agent = match item.holder {
                Some(netsky_bus::Holder::Agent(a)) => Some(a),
                _ => None,
            };
            let mut ev = r.event(what, agent, item.env.as_ref(), Some(detail));
            if ev.envelope.is_none() {
                ev.envelope = Some(item.ack.id.clone());
            }
            vec![ev]
        }
        MeshEvent::Acked { env, duplicate } => {
            let d = if duplicate { "the peer had it already" } else { "durable in the remote inbox" };
            vec![r.event(EventKind::Acked, agent_of(&env), Some(&env), Some(d.into()))]
        }
        MeshEvent::RefusedByPeer { env, kind, reason } => {
            vec![r.event(
                EventKind::RemoteRefused,
                agent_of(&env),
                Some(&env),
                Some(format!("{kind}: {reason}")),
            )]
        }
        MeshEvent::RefusedLocally { file, kind, reason } => {
            let mut ev = r.event(EventKind::Unsendable, None, None, Some(format!("{kind}: {reason}")));
            ev.envelope = file.strip_suffix(".json").map(str::to_owned);
            vec![ev]
        }
        MeshEvent::Receipt { from, receipt } => {
            let mut ev = r.event(
                EventKind::RemoteDelivered,
                receipt.agent.parse().ok(),
                None,
                Some(format!("{} by {from} at {}", receipt.how, receipt.at)),
            );
            ev.envelope = Some(receipt.id);
            vec![ev]
        }
        MeshEvent::CharterStored { epoch, from } => {
            vec![r.event(EventKind::Charter, None, None, Some(format!("epoch {epoch} from {from}")))]
        }
        MeshEvent::CharterRefused { from, reason } => {
            vec![r.event(EventKind::CharterRefused, None, None, Some(format!("from {from}: {reason}")))]
        }
        MeshEvent::ConnectionRefused { peer, reason } => {
            vec![r.event(EventKind::ConnectionRefused, None, None, Some(format!("{peer}: {reason}")))]
        }
        MeshEvent::ProtocolError { peer, reason } => {
            vec![r.event(EventKind::ProtocolError, None, None, Some(format!("{peer}: {reason}")))]
        }
        MeshEvent::PeerReachable { name } => vec![r.event(EventKind::PeerUp, None, None, Some(name))],
        MeshEvent::PeerUnreachable { name, error } => {
            vec![r.event(EventKind::PeerDown, None, None, Some(format!("{name}: {error}")))]
        }
        MeshEvent::Joined { name, node_id, epoch } => {
            vec![r.event(EventKind::Joined, None, None, Some(format!("{name} ({node_id}) at epoch {epoch}")))]
        }
        MeshEvent::JoinRefused { remote, reason } => {
            vec![r.event(EventKind::JoinRefused, None, None, Some(format!("{remote}: {reason}")))]
        }
    }
}

/// The shim ran the last known good binary: evidence, and the owner told.
fn report_fallback(node: &Node, events: &Recorder, tx: &SyncSender<Option<Event>>, why: &str, live: &str) {
    warn!(%why, %live, "running the last known good binary");
    let _ = tx.send(Some(events.event(EventKind::ShimFallback, None, None, Some(why.to_string()))));
    let subject = format!("node {} runs its last known good binary", node.config.node.name);
    let body = format!(
        "The supervisor's shim could not run the live netsky ({why}) and started bin/netsky.lkg instead. \
         Reinstall netsky at {live}, or run `netsky launchd install` / `netsky systemd install` from the binary you want live."
    );
    if let Err(e) = crate::escalation::raise(node, "self-repair", None, &subject, &body) {
        warn!(error = %format!("{e:#}"), "cannot escalate the fallback to the last known good binary");
    }
}

/// Subscribes to the OS's sleep notices; without them (none here, or an error) the daemon runs on.
async fn start_sleep_watch() -> Option<SleepWatch> {
    match tokio::time::timeout(SLEEP_WATCH_START, SleepWatch::start()).await {
        Ok(Ok(Some(w))) if w.delays_sleep() => {
            info!(source = w.source(), "listening for the OS's sleep notice: sleeps are announced");
            Some(w)
        }
        Ok(Ok(Some(w))) => {
            warn!(
                source = w.source(),
                "listening for the OS's sleep notice, but it will not wait for the announcement"
            );
            Some(w)
        }
        Ok(Ok(None)) => {
            info!("no sleep notice from this OS (no system bus or logind): sleeps go unannounced");
            None
        }
        Ok(Err(e)) => {
            warn!(error = %e, "cannot listen for the OS's sleep notice: sleeps go unannounced");
            None
        }
        Err(_) => {
            warn!(
                "no answer within {} s while subscribing to the OS's sleep notice: sleeps go unannounced",
                SLEEP_WATCH_START.as_secs()
            );
            None
        }
    }
}

/// The next sleep or wake notice; never, without a watch.
async fn next_notice(watch: &mut Option<SleepWatch>) -> Option<PowerEvent> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// The leaving beacon before a sleep, bounded by [`SLEEP_ANNOUNCE`]; says how it went.
async fn announce_sleep(mesh: &Mesh, home: &Home, desk: &Arc<beacon::Desk>, interval: Duration) -> String {
    info!("the OS says the machine is about to sleep: announcing this node as leaving");
    match tokio::time::timeout(SLEEP_ANNOUNCE, beacon_round(mesh, home, desk, true, interval)).await {
        Ok(true) => "announced as leaving (the root took the beacon, or there is no mesh)".into(),
        Ok(false) => "the leaving beacon did not reach the root".into(),
        Err(_) => format!("the leaving beacon took longer than {} s", SLEEP_ANNOUNCE.as_secs()),
    }
}

/// Copies this binary to the last known good place, off the async threads.
async fn promote(home: &Home, events: &Arc<Recorder>, tx: &SyncSender<Option<Event>>) {
    let h = home.clone();
    match tokio::task::spawn_blocking(move || lkg::promote(&h)).await {
        Ok(Ok(lkg::Promotion::Promoted(path))) => {
            info!(path = %path.display(), "promoted to last known good");
            let d = format!("{} ({})", path.display(), env!("CARGO_PKG_VERSION"));
            let _ = tx.send(Some(events.event(EventKind::LkgPromoted, None, None, Some(d))));
        }
        Ok(Ok(other)) => tracing::debug!(?other, "no promotion"),
        Ok(Err(e)) => warn!(error = %format!("{e:#}"), "cannot promote this binary to last known good"),
        Err(e) => warn!(error = %e, "the promotion panicked"),
    }
}

/// One beacon: this node's health, signed, to the root; the view it answers
/// with kept as this node's copy. On the root, also the check for silent
/// members. Healthy (true) when the root took it, or there is no mesh.
async fn beacon_round(
    mesh: &Mesh,
    home: &Home,
    desk: &Arc<beacon::Desk>,
    leaving: bool,
    interval: Duration,
) -> bool {
    // The node opened once a round: its charter says whether there is a root, and whether it is us.
    let h = home.clone();
    let made = tokio::task::spawn_blocking(move || -> Result<Option<(Vec<u8>, bool)>> {
        let node = Node::open(h)?;
        let Some(charter) = &node.charter else { return Ok(None) };
        let is_root = charter.charter.root == node.config.node.name;
        let health = crate::health::snapshot(&node)?;
        let active = beacon::Active::of(&node);
        Ok(Some((beacon::sign(&node.key, &beacon::Beacon { health, leaving, active })?, is_root)))
    })
    .await;
    let (signed, is_root) = match made {
        Ok(Ok(Some(made))) => made,
        Ok(Ok(None)) => return true,
        Ok(Err(e)) => {
            warn!(error = %format!("{e:#}"), "no beacon: the snapshot failed");
            return false;
        }
        Err(e) => {
            warn!(error = %e, "no beacon: the snapshot panicked");
            return false;
        }
    };
    let delivered = mesh.beacon_to_root(signed).await;
    let healthy = delivered.is_ok();
    match delivered {
        // The root's own copy is the one its desk writes; a member keeps the answer.
        Ok(view) if !is_root => {
            let h = home.clone();
            let kept = tokio::task::spawn_blocking(move || beacon::keep(&h, &view)).await;
            if let Ok(Err(e)) = kept {
                warn!(error = %format!("{e:#}"), "cannot keep the mesh view");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "beacon not delivered"),
    }
    if is_root && !leaving {
        let d = desk.clone();
        let checked = tokio::task::spawn_blocking(move || d.check(interval)).await;
        if let Ok(Err(e)) = checked {
            warn!(error = %format!("{e:#}"), "the check for silent members failed");
        }
    }
    healthy
}
