//! The heartbeat: a dedicated thread that runs the constellation's tick.
//!
//! [`Ticker::start`] spawns one std thread that opens its own [`Node`] and
//! runs [`constellation::tick`] every `tick_interval_s` (at once on start).
//! A file watcher on `channels/agent/*/inbox/` (the `notify` crate, owned by
//! the thread) sends [`Wake::Inbox`] when an envelope lands, and the thread
//! then runs a delivery round at once instead of waiting for the next tick
//! (rounds at most every [`MIN_ROUND_GAP`], so a stream shares them).
//! [`Waker`] lets anyone else (the daemon after a mesh delivery) do the same.
//! A write to a mailbox's journal sends [`Wake::Journal`]: [`JOURNAL_GRACE`]
//! later the thread lays out what a writer killed between its barrier and its
//! layout left only there, so that envelope waits for no tick.
//!
//! The thread does all its work synchronously; every tmux call in it is
//! bounded, so a tick is too. [`Wake::Shutdown`] (or [`Ticker::stop`]) is
//! honoured after the current tick or round finishes, never in the middle.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use netsky_bus::AgentName;

use crate::constellation;
use crate::home::Home;
use crate::node::Node;
use crate::record::{EventKind, Recorder};

/// What wakes the ticker between ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// New envelopes may be waiting: run a delivery round now.
    Inbox,
    /// A mailbox's journal was written: look, a moment later, for what a
    /// writer killed before laying it out left only there.
    Journal,
    /// Finish the current work and exit.
    Shutdown,
}

/// A cheap handle that wakes a running ticker.
#[derive(Debug, Clone)]
pub struct Waker {
    tx: SyncSender<Wake>,
}

impl Waker {
    /// Asks for a delivery round now; wakes already queued make this a no-op.
    pub fn inbox(&self) {
        // A full queue already holds a wake: nothing is lost by dropping this one.
        let _ = self.tx.try_send(Wake::Inbox);
    }

    /// Asks the ticker to exit after its current tick.
    pub fn shutdown(&self) {
        // Blocking send: a shutdown must not be dropped behind a full queue of wakes.
        let _ = self.tx.send(Wake::Shutdown);
    }
}

/// The running heartbeat thread.
#[derive(Debug)]
pub struct Ticker {
    waker: Waker,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Opens the node in `home` on a new thread and starts ticking; errors if the node cannot be opened.
    pub fn start(home: Home) -> Result<Ticker> {
        let (tx, rx) = sync_channel::<Wake>(16);
        let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(1);
        let wake_tx = tx.clone();
        let handle = std::thread::Builder::new()
            .name("netsky-ticker".into())
            .spawn(move || {
                let node = match Node::open(home) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                run(node, wake_tx, rx);
            })
            .context("cannot spawn the ticker thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Ticker { waker: Waker { tx }, handle: Some(handle) }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(anyhow!("heartbeat not started: {e}"))
            }
            Err(_) => {
                let _ = handle.join();
                Err(anyhow!("heartbeat not started: its thread died while opening the node"))
            }
        }
    }

    /// A handle to wake this ticker from elsewhere.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Asks the ticker to finish its current tick and exit, and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown_and_join()
    }

    fn shutdown_and_join(&mut self) -> Result<()> {
        let Some(h) = self.handle.take() else { return Ok(()) };
        self.waker.shutdown();
        h.join().map_err(|_| anyhow!("the ticker thread panicked"))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let _ = self.shutdown_and_join();
    }
}

/// The agents whose inbox a watcher event says an envelope landed in.
fn landed_in_inboxes(ev: &notify::Event) -> impl Iterator<Item = AgentName> + '_ {
    use notify::EventKind;
    let relevant =
        matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(notify::event::ModifyKind::Name(_)));
    ev.paths.iter().filter(move |_| relevant).filter_map(|p| {
        let inbox = p.parent().filter(|d| d.file_name().is_some_and(|n| n == "inbox"))?;
        let hidden = p.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
        // Renames out of the inbox (claims) name a path that is gone by now.
        if hidden || !p.exists() {
            return None;
        }
        inbox.parent()?.file_name()?.to_str()?.parse().ok()
    })
}

/// The agents whose journal (`agent/<agent>/.journal/`) a watcher event says was written.
fn written_journals(ev: &notify::Event) -> impl Iterator<Item = AgentName> + '_ {
    use notify::EventKind;
    let relevant =
        matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(notify::event::ModifyKind::Data(_)));
    ev.paths.iter().filter(move |_| relevant).filter_map(|p| {
        let jdir = p.parent().filter(|d| d.file_name().is_some_and(|n| n == netsky_bus::JOURNAL_DIR))?;
        jdir.parent()?.file_name()?.to_str()?.parse().ok()
    })
}

/// The agent whose mailbox (`agent/<agent>/`) or inbox (`.../inbox/`) a
/// watcher event says was just made. The watcher starts watching a new
/// folder only after it reports it, so mail can land there unseen.
fn new_mailbox_folder(ev: &notify::Event) -> Option<AgentName> {
    if !matches!(ev.kind, notify::EventKind::Create(notify::event::CreateKind::Folder)) {
        return None;
    }
    ev.paths.iter().find_map(|p| {
        let name = p.file_name()?.to_str()?;
        let parent = p.parent()?;
        let agent = if name == "inbox" {
            parent.file_name()?.to_str()?
        } else if parent.file_name().is_some_and(|n| n == "agent") {
            name
        } else {
            return None;
        };
        agent.parse().ok()
    })
}

/// Inboxes that took mail since the ticker last looked, and journals written.
/// Mailboxes just made are kept apart: they get a second look a moment later.
#[derive(Debug, Default)]
struct Landed(std::sync::Mutex<LandedSince>);

/// What [`Landed`] gathered since it was last taken.
#[derive(Debug, Default)]
struct LandedSince {
    /// Inboxes that took mail.
    mail: BTreeSet<AgentName>,
    /// Mailboxes (or their inboxes) just made.
    made: BTreeSet<AgentName>,
    /// Mailboxes whose journal was written.
    journal: BTreeSet<AgentName>,
}

impl Landed {
    fn lock(&self) -> std::sync::MutexGuard<'_, LandedSince> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bounded: a flood of new mailboxes waits for the tick's own pass.
    fn insert_bounded(set: &mut BTreeSet<AgentName>, agent: AgentName) {
        if set.len() < NOTED_MAILBOXES {
            set.insert(agent);
        }
    }

    fn note(&self, agent: AgentName) {
        Self::insert_bounded(&mut self.lock().mail, agent);
    }

    fn note_new(&self, agent: AgentName) {
        let mut since = self.lock();
        Self::insert_bounded(&mut since.mail, agent);
        Self::insert_bounded(&mut since.made, agent);
    }

    fn note_journal(&self, agent: AgentName) {
        Self::insert_bounded(&mut self.lock().journal, agent);
    }

    /// The journals written since the last take of them.
    fn take_journal(&self) -> BTreeSet<AgentName> {
        std::mem::take(&mut self.lock().journal)
    }

    /// Whether landings or new mailboxes wait for a delivery round.
    fn has_mail(&self) -> bool {
        let since = self.lock();
        !since.mail.is_empty() || !since.made.is_empty()
    }

    /// All gathered since the last take.
    fn take(&self) -> LandedSince {
        std::mem::take(&mut *self.lock())
    }
}

fn watch_inboxes(
    node: &Node,
    tx: SyncSender<Wake>,
    landed: Arc<Landed>,
) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = node.home.layout().agents_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The owner's desk too (on the root, owner mail lands there).
    let desk = node.home.layout().inbox_dir(netsky_bus::Holder::Owner);
    std::fs::create_dir_all(&desk).with_context(|| format!("cannot create {}", desk.display()))?;
    let desk_in_callback = desk.clone();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        let mut any = ev.paths.iter().any(|p| p.starts_with(&desk_in_callback)) && lands_at_desk(&ev);
        for agent in landed_in_inboxes(&ev) {
            landed.note(agent);
            any = true;
        }
        if let Some(agent) = new_mailbox_folder(&ev) {
            landed.note_new(agent);
            any = true;
        }
        let mut journal = false;
        for agent in written_journals(&ev) {
            landed.note_journal(agent);
            journal = true;
        }
        // A full queue already holds a wake, which takes every note gathered
        // (a journal wake runs a round too when landings wait).
        let wake = if any { Some(Wake::Inbox) } else { journal.then_some(Wake::Journal) };
        if let Some(w) = wake
            && let Err(TrySendError::Disconnected(_)) = tx.try_send(w)
        {
            tracing::debug!("ticker gone; inbox wake dropped");
        }
    })
    .context("cannot create the inbox watcher")?;
    // Recursive, so mailboxes created after start are watched too.
    w.watch(&dir, notify::RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    w.watch(&desk, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", desk.display()))?;
    Ok(w)
}

/// What the heartbeat thread does next.
enum Step {
    /// The periodic tick (watchdog, hang checks, journal checkpoints, meta.db indexing).
    Tick,
    /// A second delivery round for mailboxes just made.
    Recheck,
    /// A look at journals written a moment ago, for what killed writers left.
    Recover,
    /// A delivery round for a wake.
    Round,
    /// The root's request to its dead-man's switch (`[owner] heartbeat_url`).
    Heartbeat,
}

/// The least time from the end of one wake's delivery round to the start of
/// the next. The first landing after a quiet moment is delivered at once.
const MIN_ROUND_GAP: Duration = Duration::from_millis(50);

/// How long after a journal write the ticker looks for what a killed writer
/// left there: a live writer lays its envelope out within moments (and holds
/// the journal while it does), so by then only a dead one's is missing.
const JOURNAL_GRACE: Duration = Duration::from_millis(250);

/// Mailboxes one wake notes at most (a bound on the work of one round; a
/// flood of new mailboxes waits for the tick's own pass).
const NOTED_MAILBOXES: usize = 64;

/// Checkpoints every mailbox that holds journals (see `netsky_bus::store`):
/// what a writer that died left only there is laid out first. A mailbox
/// another process holds is left for the next tick.
fn checkpoint_journals(node: &Node, agents: &[AgentName]) {
    each_journal(node, agents.iter().copied(), netsky_bus::Mailbox::checkpoint);
}

/// Lays out what writers killed before their layout left in the journals
/// of `agents` (see [`netsky_bus::Mailbox::recover`]); the inbox watcher then
/// wakes a delivery round for it. A mailbox another process holds is left to
/// that holder's claim, which does the same first.
fn recover_journals(node: &Node, agents: &BTreeSet<AgentName>) {
    each_journal(node, agents.iter().copied(), netsky_bus::Mailbox::recover);
}

/// Runs `recover` on the journal of each of `agents` that has one, under its
/// mailbox lock (never waited for), and records what it recovered or why it failed.
fn each_journal(
    node: &Node,
    agents: impl Iterator<Item = AgentName>,
    recover: fn(
        &netsky_bus::Mailbox,
        &netsky_bus::MailboxLock,
    ) -> Result<netsky_bus::Recovered, netsky_bus::BusError>,
) {
    let layout = node.home.layout();
    for agent in agents {
        if !layout.journal_dir(agent).is_dir() {
            continue;
        }
        let rec = &node.recorder;
        let recovered = netsky_bus::Mailbox::open(&layout, &node.config.node.name, agent).and_then(|mb| {
            // Never waits: a busy mailbox is recovered by its claimer, or later.
            let lock = mb.lock(Duration::ZERO)?;
            recover(&mb, &lock)
        });
        if let Some(ev) = rec.recovered(agent, &recovered) {
            rec.record(&[ev]);
        }
    }
}

/// Adds `agents` to the look at journals due at `at` (or sets one up).
fn look_at_journals(due: &mut Option<(Instant, BTreeSet<AgentName>)>, agents: BTreeSet<AgentName>) {
    if agents.is_empty() {
        return;
    }
    match due {
        Some((_, pending)) => pending.extend(agents),
        None => *due = Some((Instant::now() + JOURNAL_GRACE, agents)),
    }
}

/// Delivers what waits in every mailbox.
fn delivery_round(node: &Node) {
    if let Err(e) = constellation::deliver_now(node) {
        let rec = &node.recorder;
        rec.record(&[rec.event(EventKind::DeliverError, None, None, Some(format!("{e:#}")))]);
    }
}

/// The owner's desk on a wake: pages for what arrived (root only).
fn owner_desk(node: &Node) {
    owner_error(node, crate::owner::run_desk(node));
}

/// The owner's share of a tick: the desk, re-pages that are due, incidents a
/// former root hands on, and the owner's sources.
fn owner_tick(node: &Node) {
    owner_error(node, crate::owner::tick_desk(node));
    owner_error(node, crate::owner::poll_sources(node));
}

fn owner_error(node: &Node, res: anyhow::Result<()>) {
    if let Err(e) = res {
        let rec = &node.recorder;
        rec.record(&[rec.event(EventKind::OwnerDeskError, None, None, Some(format!("{e:#}")))]);
    }
}

/// Whether a watcher event at the owner's desk is an envelope arriving (not a temp file).
fn lands_at_desk(ev: &notify::Event) -> bool {
    matches!(
        ev.kind,
        notify::EventKind::Create(_) | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
    ) && ev.paths.iter().any(|p| {
        p.extension().is_some_and(|x| x == "json")
            && !p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
    })
}

fn run(mut node: Node, tx: SyncSender<Wake>, rx: Receiver<Wake>) {
    let interval = Duration::from_secs(node.config.node.tick_interval_s);
    let landed = Arc::new(Landed::default());
    let _watcher = match watch_inboxes(&node, tx, landed.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            // Without the watcher, mail still flows on every tick, only later.
            tracing::warn!(error = %format!("{e:#}"), "inbox watcher unavailable; delivering on ticks only");
            None
        }
    };
    let rec = &node.recorder;
    rec.record(&[rec.event(EventKind::TickerStarted, None, None, Some(format!("every {interval:?}")))]);
    let mut ticks: u64 = 0;
    let mut next = Instant::now();
    let mut last_round: Option<Instant> = None;
    // A second look at mailboxes just made, once the watcher watches them.
    let mut recheck: Option<(Instant, BTreeSet<AgentName>)> = None;
    // Journals written, to look at once their writers had time to lay out.
    let mut recover: Option<(Instant, BTreeSet<AgentName>)> = None;
    // The dead-man's switch, every beacon interval from the start (where one is set).
    let beacon = Duration::from_secs(node.config.node.beacon_interval_s);
    let mut heartbeat = (!node.config.owner.heartbeat_url.is_empty()).then(Instant::now);
    loop {
        // What is due comes first: a steady stream of wakes (one waits in the
        // channel after every round) must not starve the tick and its watchdog.
        let now = Instant::now();
        let step = if now >= next {
            Step::Tick
        } else if recheck.as_ref().is_some_and(|(at, _)| *at <= now) {
            Step::Recheck
        } else if recover.as_ref().is_some_and(|(at, _)| *at <= now) {
            Step::Recover
        } else if heartbeat.is_some_and(|at| at <= now) {
            Step::Heartbeat
        } else {
            let due = [&recheck, &recover].into_iter().flatten().fold(next, |d, (at, _)| d.min(*at));
            let due = heartbeat.map_or(due, |h| due.min(h));
            match rx.recv_timeout(due.saturating_duration_since(now)) {
                Ok(Wake::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Wake::Inbox) => Step::Round,
                Ok(Wake::Journal) => {
                    look_at_journals(&mut recover, landed.take_journal());
                    // A landing whose wake found the queue full of journal wakes
                    // has only its note: it must not wait for the next tick.
                    if landed.has_mail() { Step::Round } else { continue }
                }
                // Whatever fell due: decided at the top.
                Err(RecvTimeoutError::Timeout) => continue,
            }
        };
        match step {
            Step::Round => {
                // Rounds start at least MIN_ROUND_GAP apart: each asks tmux which
                // panes live, so a stream of landings shares rounds instead of
                // starting a tmux client per envelope. A shutdown ends the wait.
                let mut stop = false;
                let until = last_round.map(|t| t + MIN_ROUND_GAP);
                while let Some(left) = until.and_then(|u| u.checked_duration_since(Instant::now())) {
                    match rx.recv_timeout(left) {
                        Ok(Wake::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                            stop = true;
                            break;
                        }
                        // The owner's desk starts no tmux client: it waits for no gap.
                        Ok(Wake::Inbox) => owner_desk(&node),
                        Ok(Wake::Journal) | Err(RecvTimeoutError::Timeout) => {}
                    }
                }
                // Coalesce a burst of wakes into one round, but never swallow a shutdown.
                while let Ok(w) = rx.try_recv() {
                    stop |= w == Wake::Shutdown;
                }
                // After the coalescing: a wake it swallowed is the desk's too.
                owner_desk(&node);
                let LandedSince { made, journal, .. } = landed.take();
                look_at_journals(&mut recover, journal);
                delivery_round(&node);
                last_round = Some(Instant::now());
                if !made.is_empty() {
                    let mut again = recheck.take().map(|(_, a)| a).unwrap_or_default();
                    again.extend(made);
                    recheck = Some((Instant::now() + MIN_ROUND_GAP, again));
                }
                if stop {
                    break;
                }
            }
            Step::Recheck => {
                // Mail that landed in a new mailbox before the watcher watched it.
                if recheck.take().is_some() {
                    delivery_round(&node);
                    last_round = Some(Instant::now());
                }
            }
            Step::Heartbeat => {
                heartbeat = Some(Instant::now() + beacon);
                // Only the root's death must be seen from outside; a member's ping would hide it.
                if crate::owner::check_root(&node).is_ok() {
                    let timeout = Duration::from_secs(node.config.owner.leg_timeout_s);
                    if let Err(e) = crate::owner::ping(&node.config.owner.heartbeat_url, timeout) {
                        let rec = &node.recorder;
                        rec.record(&[rec.event(
                            EventKind::HeartbeatFailed,
                            None,
                            None,
                            Some(format!("{e:#}")),
                        )]);
                    }
                }
            }
            Step::Recover => {
                if let Some((_, agents)) = recover.take() {
                    recover_journals(&node, &agents);
                }
            }
            Step::Tick => {
                // A fresh recorder each tick: one locked moment of meta.db must not
                // silence the database for the rest of a long-lived heartbeat.
                node.recorder = Recorder::indexing(&node.home, node.config.node.name.clone());
                // What short-lived commands logged since the last tick goes into meta.db.
                node.recorder.index_logs();
                ticks += 1;
                match constellation::tick(&node) {
                    Ok(r) => tracing::debug!(?r, "tick"),
                    Err(e) => {
                        let rec = &node.recorder;
                        rec.record(&[rec.event(EventKind::TickError, None, None, Some(format!("{e:#}")))]);
                        tracing::warn!(error = %format!("{e:#}"), "tick failed");
                    }
                }
                owner_tick(&node);
                match node.home.layout().agents() {
                    Ok(all) => checkpoint_journals(&node, &all),
                    Err(e) => tracing::debug!(error = %e, "cannot list mailboxes to checkpoint"),
                }
                if let Err(e) = constellation::stamp_tick(&node, ticks) {
                    tracing::warn!(error = %format!("{e:#}"), "cannot write state/tick.json");
                }
                next = Instant::now() + interval;
            }
        }
    }
    let rec = &node.recorder;
    rec.record(&[rec.event(EventKind::TickerStopped, None, None, None)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Relay};

    /// A home with a key and a config whose tmux server (never started) is private.
    fn home() -> (tempfile::TempDir, Home) {
        let d = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(d.path().join("h"))).unwrap();
        home.create_dirs().unwrap();
        netsky_keys::create_key_file(&home.node_key_path()).unwrap();
        let mut cfg = Config::new("t".parse().unwrap(), None, Some(Relay::Disabled));
        cfg.node.tick_interval_s = 1;
        cfg.constellation.tmux_socket = format!("nsky-unit-{}", std::process::id());
        std::fs::write(home.config_path(), cfg.to_toml()).unwrap();
        (d, home)
    }

    fn ticks(home: &Home) -> u64 {
        std::fs::read(home.state_dir().join("tick.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<constellation::TickStamp>(&b).ok())
            .map_or(0, |t| t.ticks)
    }

    #[test]
    fn a_ticker_ticks_at_once_keeps_ticking_and_stops_when_asked() {
        let (_d, home) = home();
        let t = Ticker::start(home.clone()).unwrap();
        t.waker().inbox();
        let deadline = Instant::now() + Duration::from_secs(20);
        while ticks(&home) < 2 {
            assert!(Instant::now() < deadline, "ticks seen: {}", ticks(&home));
            std::thread::sleep(Duration::from_millis(50));
        }
        let start = Instant::now();
        t.stop().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "stop took {:?}", start.elapsed());
        let n = ticks(&home);
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(ticks(&home), n, "no tick after stop");
    }

    #[test]
    fn a_landing_names_its_agent_and_only_real_envelopes_in_inboxes_count() {
        use notify::event::{CreateKind, EventKind, ModifyKind, RemoveKind, RenameMode};
        let d = tempfile::tempdir().unwrap();
        let agents = d.path().join("channels/agent");
        for a in ["agent3", "agentinfinity", "nobody"] {
            std::fs::create_dir_all(agents.join(a).join("inbox")).unwrap();
            std::fs::create_dir_all(agents.join(a).join("claimed")).unwrap();
        }
        let touch = |rel: &str| {
            let p = agents.join(rel);
            std::fs::write(&p, b"{}").unwrap();
            p
        };
        let ev =
            |kind, paths: Vec<std::path::PathBuf>| notify::Event { kind, paths, attrs: Default::default() };
        let landed = |e: &notify::Event| landed_in_inboxes(e).map(|a| a.to_string()).collect::<Vec<_>>();
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let a3 = touch("agent3/inbox/01A.json");
        let inf = touch("agentinfinity/inbox/01B.json");
        assert_eq!(landed(&ev(rename, vec![a3.clone(), inf])), ["agent3", "agentinfinity"]);
        assert_eq!(landed(&ev(EventKind::Create(CreateKind::File), vec![a3.clone()])), ["agent3"]);
        // Temp files, claims (gone from the inbox), other folders, odd names, removals: none.
        let tmp = touch("agent3/inbox/.01C.json.1.0.tmp");
        let claimed = touch("agent3/claimed/01D.json");
        let odd = touch("nobody/inbox/01E.json");
        let gone = agents.join("agent3/inbox/01F.json");
        assert!(landed(&ev(rename, vec![tmp, claimed, odd, gone])).is_empty());
        assert!(landed(&ev(EventKind::Remove(RemoveKind::File), vec![a3])).is_empty());
    }

    #[test]
    fn landed_inboxes_are_bounded_and_taken_once() {
        let l = Landed::default();
        for n in 0..(NOTED_MAILBOXES as u16 + 10) {
            l.note(AgentName::Numbered(n));
        }
        l.note_new(AgentName::Numbered(500));
        l.note_journal(AgentName::Numbered(2));
        let LandedSince { mail, made, journal } = l.take();
        assert_eq!(mail.len(), NOTED_MAILBOXES);
        assert_eq!(made.into_iter().collect::<Vec<_>>(), [AgentName::Numbered(500)]);
        assert_eq!(journal.into_iter().collect::<Vec<_>>(), [AgentName::Numbered(2)]);
        let LandedSince { mail, made, journal } = l.take();
        assert!(mail.is_empty() && made.is_empty() && journal.is_empty());
        l.note_journal(AgentName::Numbered(3));
        assert!(!l.has_mail(), "a journal write alone is no landing");
        assert_eq!(l.take_journal().into_iter().collect::<Vec<_>>(), [AgentName::Numbered(3)]);
        assert!(l.take().journal.is_empty(), "taken once");
        l.note(AgentName::Numbered(4));
        assert!(l.has_mail());
        l.take();
        l.note_new(AgentName::Numbered(5));
        assert!(l.has_mail());
    }

    #[test]
    fn a_write_to_a_mailbox_s_journal_names_its_agent_and_nothing_else_does() {
        use notify::event::{CreateKind, DataChange, EventKind, ModifyKind, RemoveKind};
        let ev = |kind, p: &str| notify::Event { kind, paths: vec![p.into()], attrs: Default::default() };
        let written = |kind, p| written_journals(&ev(kind, p)).map(|a| a.to_string()).collect::<Vec<_>>();
        let append = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(written(append, "/h/channels/agent/agent4/.journal/cur-b.seg"), ["agent4"]);
        let made = EventKind::Create(CreateKind::File);
        assert_eq!(written(made, "/h/channels/agent/agentinfinity/.journal/x-1-0.b.open"), ["agentinfinity"]);
        assert!(written(append, "/h/channels/agent/agent4/inbox/01A.json").is_empty());
        assert!(written(append, "/h/channels/agent/nobody/.journal/cur-b.seg").is_empty());
        assert!(
            written(EventKind::Remove(RemoveKind::File), "/h/channels/agent/agent4/.journal/cur-b.seg")
                .is_empty()
        );
    }

    #[test]
    fn a_new_mailbox_or_inbox_folder_names_its_agent() {
        use notify::event::{CreateKind, EventKind};
        let ev = |kind, p: &str| notify::Event { kind, paths: vec![p.into()], attrs: Default::default() };
        let folder = EventKind::Create(CreateKind::Folder);
        let new = |p| new_mailbox_folder(&ev(folder, p)).map(|a| a.to_string());
        assert_eq!(new("/h/channels/agent/agent7").as_deref(), Some("agent7"));
        assert_eq!(new("/h/channels/agent/agentinfinity/inbox").as_deref(), Some("agentinfinity"));
        assert_eq!(new("/h/channels/agent/agent7/claimed"), None);
        assert_eq!(new("/h/channels/agent/nobody"), None);
        assert_eq!(new("/h/channels/agent/agent7/inbox/.x.tmp"), None);
        let file = new_mailbox_folder(&ev(EventKind::Create(CreateKind::File), "/h/channels/agent/agent7"));
        assert_eq!(file, None);
    }

    #[test]
    fn a_ticker_on_a_home_that_is_not_one_fails_to_start() {
        let d = tempfile::tempdir().unwrap();
        let e = Ticker::start(Home::resolve(Some(d.path().to_path_buf())).unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("not a netsky home"), "{e:#}");
    }
}
