//! Health beacons: every node signs its health snapshot every
//! `beacon_interval_s` and sends it to the root; the root keeps the latest
//! per node in `state/mesh-health.json` and answers each beacon with that
//! view, which the member keeps as its own copy, so `mesh status` on any
//! node shows the whole mesh.
//!
//! On the root, a member silent for [`SILENT_AFTER`] intervals is suspect:
//! one incident through the owner path (or, when every member falls silent
//! at once, one incident about the root's own reach). It is recovered only
//! after [`RECOVERED_AFTER`] beacons in a row, and the owner is told how long
//! it was away. A node that leaves cleanly says so in a last beacon and is
//! offline (announced), never paged.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use netsky_bus::{AgentName, Kind, format_ts, parse_ts};
use netsky_keys::{Domain, NodeId, SecretKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::health::Health;
use crate::home::Home;
use crate::node::Node;
use crate::owner::{self, EscalationOp};

/// What a beacon's signature covers, and nothing else does.
pub const BEACON_DOMAIN: Domain = Domain(b"netsky/beacon/v1\0");

/// Intervals of silence after which a member is suspect.
pub const SILENT_AFTER: u32 = 3;

/// Beacons in a row that bring a suspect member back.
pub const RECOVERED_AFTER: u32 = 3;

/// The least time between two beacons of one member that the root takes.
const MIN_GAP: time::Duration = time::Duration::milliseconds(500);

/// How far ahead of the root's clock a beacon may be stamped (clock skew).
const MAX_FUTURE: Duration = Duration::from_secs(300);

/// A beacon's content, signed as its exact JSON bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Beacon {
    /// The node's health at the moment of sending.
    pub health: Health,
    /// The node is leaving on purpose (stop, sleep): offline, announced, never paged.
    pub leaving: bool,
    /// When the node expects to be up, in its local time, and that time's offset from UTC.
    #[serde(default)]
    pub active: Option<Active>,
}

/// A node's active hours as its beacon states them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Active {
    /// The daily window, in the node's local time.
    pub hours: crate::config::ActiveHours,
    /// The node's local time minus UTC, in seconds, when it sent the beacon.
    pub utc_offset_s: i64,
}

impl Active {
    /// This node's window from its config, with its local offset now.
    pub fn of(node: &Node) -> Option<Active> {
        let hours = node.config.node.active_hours?;
        Some(Active { hours, utc_offset_s: local_offset_s() })
    }

    /// Whether `now` (UTC) falls in the node's window, in its local time.
    pub fn contains(&self, now: OffsetDateTime) -> bool {
        let local = now.unix_timestamp() + self.utc_offset_s;
        let minute = local.rem_euclid(86_400) / 60;
        self.hours.contains(minute as u16)
    }
}

/// This machine's local time minus UTC, in seconds (0 where the OS does not say).
fn local_offset_s() -> i64 {
    // localtime_r: thread-safe, unlike the time crate's local offset on Linux.
    let now: libc::time_t = OffsetDateTime::now_utc().unix_timestamp() as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`; `now` is a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        return 0;
    }
    tm.tm_gmtoff as i64
}

/// A beacon on the wire: its JSON and the node key's signature of it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signed {
    body: String,
    sig: String,
}

/// Signs `beacon` with the node key.
pub fn sign(key: &SecretKey, beacon: &Beacon) -> Result<Vec<u8>> {
    let body = serde_json::to_string(beacon).context("beacon to JSON")?;
    let sig = netsky_keys::signature_to_hex(&netsky_keys::sign(key, BEACON_DOMAIN, body.as_bytes()));
    Ok(serde_json::to_vec(&Signed { body, sig })?)
}

/// One node as the root last heard it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Its last beacon's health.
    pub health: Health,
    /// When the root received it.
    pub received: String,
    /// The node said it was leaving.
    pub leaving: bool,
    /// Its clock minus the root's, in seconds, from that beacon.
    pub skew_s: f64,
    /// Since when it is suspect (silent), if it is.
    pub suspect_since: Option<String>,
    /// Beacons in a row since it became suspect.
    pub streak: u32,
    /// Its active hours, from its last beacon.
    #[serde(default)]
    pub active: Option<Active>,
}

/// The mesh as the root sees it: `state/mesh-health.json` on every node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MeshView {
    /// The root that wrote it.
    pub root: String,
    /// When it last changed.
    pub updated: String,
    /// Every node heard from.
    pub nodes: BTreeMap<String, NodeView>,
    /// Every member fell silent at once (the root's own reach), since then.
    pub all_silent_since: Option<String>,
}

/// `state/snoozes.json`: nodes allowed to be silent, until when.
fn snoozes(home: &Home) -> BTreeMap<String, String> {
    std::fs::read(home.state_dir().join("snoozes.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Lets `node` be silent without a page until `until` (root; a later snooze replaces an earlier one).
pub fn snooze(home: &Home, node: &str, until: &str) -> Result<()> {
    parse_ts(until).with_context(|| format!("snooze until {until:?}: not a timestamp"))?;
    let mut all = snoozes(home);
    all.insert(node.to_string(), until.to_string());
    crate::home::write_durable(&home.state_dir().join("snoozes.json"), &serde_json::to_vec_pretty(&all)?)?;
    Ok(())
}

/// A view bigger than this is not ours (one of 200 members is about 75 KB).
const MAX_VIEW_BYTES: u64 = 16 << 20;

/// Reads `state/mesh-health.json`, or an empty view.
pub fn load(home: &Home) -> MeshView {
    crate::home::read_bounded(&home.mesh_health_path(), MAX_VIEW_BYTES)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(home: &Home, v: &MeshView) -> Result<()> {
    keep(home, &serde_json::to_vec(v)?)
}

/// Writes a view (the root's own, or the copy a member got in answer),
/// atomically but without a flush: it is a picture of the last beacons,
/// which come again every interval; a crash loses none of the mail.
pub fn keep(home: &Home, view: &[u8]) -> Result<()> {
    let path = home.mesh_health_path();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, view).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot rename {}", path.display()))?;
    Ok(())
}

/// How often the root writes its view and makes a new answer: beacons in
/// between share both, so a beacon's cost does not grow with the mesh.
const VIEW_EVERY: Duration = Duration::from_secs(1);

/// The root's side: takes beacons (from the mesh handler's threads) and
/// checks for silence (from the daemon), one at a time.
pub struct Desk {
    home: Home,
    state: Mutex<DeskState>,
    /// Where each taken beacon goes as an event (the history, in the logs and meta.db).
    history: Option<History>,
}

/// Takes each beacon's figures (JSON text): the daemon records them as a `beacon` event.
pub type History = Box<dyn Fn(String) + Send + Sync>;

/// The desk's view, kept in memory; on disk at most every [`VIEW_EVERY`].
#[derive(Default)]
struct DeskState {
    /// Read from disk once, at the first beacon.
    view: Option<MeshView>,
    /// When the view was last written.
    written: Option<std::time::Instant>,
    /// The answer last made, and when.
    answer: Option<(std::time::Instant, Vec<u8>)>,
}

impl DeskState {
    fn view(&mut self, home: &Home) -> &mut MeshView {
        self.view.get_or_insert_with(|| load(home))
    }

    /// Writes the view if it was not written within [`VIEW_EVERY`] (or `now_anyway`).
    fn save_due(&mut self, home: &Home, now_anyway: bool) -> Result<()> {
        let due = now_anyway || self.written.is_none_or(|w| w.elapsed() >= VIEW_EVERY);
        if due && let Some(v) = &self.view {
            save(home, v)?;
            self.written = Some(std::time::Instant::now());
        }
        Ok(())
    }
}

impl Desk {
    /// The beacon desk of the node in `home`.
    pub fn new(home: Home) -> Desk {
        Desk { home, state: Mutex::new(DeskState::default()), history: None }
    }

    /// The same desk, each beacon it takes also recorded through `history`.
    pub fn with_history(self, history: History) -> Desk {
        Desk { history: Some(history), ..self }
    }

    /// Takes the beacon `bytes` that member `peer` (node id `id`) sent:
    /// checks it, keeps it, and returns the mesh view to answer with.
    pub fn take(&self, peer: &str, id: NodeId, bytes: &[u8]) -> Result<Vec<u8>> {
        let signed: Signed = serde_json::from_slice(bytes).context("not a signed beacon")?;
        let sig = netsky_keys::signature_from_hex(&signed.sig).context("the beacon's signature")?;
        netsky_keys::Verifier::new(id)?
            .verify(BEACON_DOMAIN, signed.body.as_bytes(), &sig)
            .map_err(|_| anyhow::anyhow!("the beacon's signature is not {peer}'s"))?;
        let b: Beacon = serde_json::from_str(&signed.body).context("not a beacon")?;
        if b.health.node != peer {
            bail!("{peer} sent a beacon for {}", b.health.node);
        }
        let now = OffsetDateTime::now_utc();
        let ts = parse_ts(&b.health.ts).context("the beacon's ts")?;
        if ts > now + MAX_FUTURE {
            bail!("the beacon is stamped {} , beyond the clock skew allowed", b.health.ts);
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let view = st.view(&self.home);
        if let Some(prev) = view.nodes.get(peer)
            && parse_ts(&prev.health.ts).is_some_and(|p| ts <= p)
        {
            bail!("a replayed or reordered beacon (stamped {}, {} held)", b.health.ts, prev.health.ts);
        }
        // A member that floods is refused, not queued: one beacon per half second at most each.
        // A leaving beacon always counts (it may follow a regular one at once); the replay
        // check above still holds every beacon to a newer stamp.
        if !b.leaving
            && let Some(prev) = view.nodes.get(peer)
            && parse_ts(&prev.received).is_some_and(|r| now - r < MIN_GAP)
        {
            bail!(
                "too soon after {peer}'s last beacon (at most one per {} ms)",
                MIN_GAP.whole_milliseconds()
            );
        }
        let prev = view.nodes.remove(peer);
        // A node new to the view gets an answer that holds it, not the one cached before it came.
        let new_node = prev.is_none();
        let (mut suspect_since, mut streak) = prev.map_or((None, 0), |p| (p.suspect_since, p.streak));
        if suspect_since.is_some() {
            streak += 1;
        }
        let mut changed = false;
        if let Some(since) = suspect_since.clone().filter(|_| streak >= RECOVERED_AFTER) {
            // Rare: the node (and the owner path) only now.
            let node = Node::open(self.home.clone())?;
            let away = parse_ts(&since).map_or(0, |s| (now - s).whole_seconds().max(0));
            recovered(&node, peer, away);
            suspect_since = None;
            streak = 0;
            changed = true;
            if view.all_silent_since.take().is_some() {
                resolve(&node, &all_silent_subject(&node));
            }
        }
        let skew_s = (ts - now).as_seconds_f64();
        if let Some(record) = &self.history {
            let h = &b.health;
            let figures = serde_json::json!({
                "node": peer, "ts": h.ts, "leaving": b.leaving, "agents_up": h.agents_up,
                "agents_total": h.agents_total, "inbox": h.inbox_depth, "outbox": h.outbox_depth,
                "disk_free": h.disk_free_bytes, "load": h.load_1m, "tick_age_s": h.tick_age_s,
                "skew_s": skew_s,
            });
            record(figures.to_string());
        }
        view.nodes.insert(
            peer.to_string(),
            NodeView {
                skew_s,
                health: b.health,
                received: format_ts(now),
                leaving: b.leaving,
                suspect_since,
                streak,
                active: b.active,
            },
        );
        if view.root.is_empty() {
            view.root = Node::open(self.home.clone())?.config.node.name.to_string();
        }
        view.updated = format_ts(now);
        st.save_due(&self.home, changed || b.leaving)?;
        let fresh =
            !new_node && !changed && st.answer.as_ref().is_some_and(|(at, _)| at.elapsed() < VIEW_EVERY);
        if !fresh {
            let bytes = serde_json::to_vec(st.view(&self.home))?;
            st.answer = Some((std::time::Instant::now(), bytes));
        }
        Ok(st.answer.as_ref().map(|(_, b)| b.clone()).unwrap_or_default())
    }

    /// The size of the view as it stands now, encoded (the bench reports it).
    pub fn view_bytes(&self) -> usize {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_vec(st.view(&self.home)).map_or(0, |v| v.len())
    }

    /// Marks members silent for [`SILENT_AFTER`] intervals suspect and escalates them.
    pub fn check(&self, interval: Duration) -> Result<()> {
        let node = Node::open(self.home.clone())?;
        let local = node.config.node.name.to_string();
        let members: Vec<String> = match node.current_charter()? {
            Some(c) => c.charter.members.iter().map(|m| m.name.to_string()).filter(|n| *n != local).collect(),
            None => return Ok(()),
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = OffsetDateTime::now_utc();
        let view = st.view(&self.home);
        let silent_for = interval * SILENT_AFTER;
        let mut newly = Vec::new();
        let snoozed = snoozes(&self.home);
        for m in &members {
            // In a maintenance window: silence is allowed (a node still silent when it ends pages once).
            if snoozed.get(m).and_then(|u| parse_ts(u)).is_some_and(|u| u > now) {
                continue;
            }
            // Outside its active hours (as its last beacon stated them): allowed too.
            if view.nodes.get(m).and_then(|v| v.active).is_some_and(|a| !a.contains(now)) {
                continue;
            }
            // Never heard from: silent since the root started listening.
            let Some(v) = view.nodes.get_mut(m) else { continue };
            let age =
                parse_ts(&v.received).map_or(Duration::ZERO, |r| (now - r).try_into().unwrap_or_default());
            if !v.leaving && v.suspect_since.is_none() && age > silent_for {
                v.suspect_since = Some(format_ts(now));
                v.streak = 0;
                newly.push((m.clone(), age));
            }
        }
        if newly.is_empty() {
            return st.save_due(&self.home, false);
        }
        // Every member expected to speak (heard from, not leaving, not snoozed) silent at
        // once, two or more: the root's own reach, one incident.
        let expected: Vec<&NodeView> = members
            .iter()
            .filter(|m| snoozed.get(*m).and_then(|u| parse_ts(u)).is_none_or(|u| u <= now))
            .filter_map(|m| view.nodes.get(m))
            .filter(|v| !v.leaving)
            .collect();
        let all_silent = expected.len() >= 2 && expected.iter().all(|v| v.suspect_since.is_some());
        if all_silent && view.all_silent_since.is_none() {
            // One incident about the root's own reach, not one per node.
            view.all_silent_since = Some(format_ts(now));
            let body = format!(
                "no member's beacon reached the root for {} s; the fault is most likely the root's own network",
                silent_for.as_secs()
            );
            escalate(&node, &all_silent_subject(&node), &body);
        } else if !all_silent {
            for (m, age) in &newly {
                let body = format!("no beacon from {m} for {} s ({SILENT_AFTER} intervals)", age.as_secs());
                escalate(&node, &silent_subject(m), &body);
            }
        }
        view.updated = format_ts(now);
        // The next answer shows who turned suspect, not the one cached before.
        st.answer = None;
        st.save_due(&self.home, true)
    }
}

fn silent_subject(node: &str) -> String {
    format!("node {node} is silent")
}

fn all_silent_subject(root: &Node) -> String {
    format!("the root {} hears no member", root.config.node.name)
}

fn escalate(node: &Node, subject: &str, body: &str) {
    let op = EscalationOp::Open {
        subject: subject.to_string(),
        body: body.to_string(),
        source: Some("beacons".into()),
        agent: None,
    };
    if let Err(e) = owner::escalate(node, AgentName::Infinity, &op) {
        tracing::error!(error = %format!("{e:#}"), subject, "cannot escalate");
    }
}

/// Resolves the unresolved incident this root opened with `subject`, if any.
fn resolve(node: &Node, subject: &str) {
    let local = node.config.node.name.to_string();
    let Ok(all) = owner::incidents(&node.home) else { return };
    for i in all.iter().filter(|i| i.origin == local && i.subject == subject) {
        if i.state != owner::IncidentState::Resolved {
            let op = EscalationOp::Resolve { id: i.id.clone() };
            if let Err(e) = owner::escalate(node, AgentName::Infinity, &op) {
                tracing::error!(error = %format!("{e:#}"), subject, "cannot resolve");
            }
        }
    }
}

/// A suspect member is back: its incident resolved, the owner told how long it was away.
fn recovered(node: &Node, peer: &str, away_s: i64) {
    resolve(node, &silent_subject(peer));
    let text = format!("node {peer} is back after {away_s} s of silence");
    if let Err(e) = owner::send_to_owner(node, Kind::Owner, AgentName::Infinity, text) {
        tracing::error!(error = %format!("{e:#}"), "cannot tell the owner a node is back");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Home, SecretKey) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(dir.path().join("root"))).unwrap();
        home.create_dirs().unwrap();
        let key = netsky_keys::create_key_file(&home.node_key_path()).unwrap().key;
        let cfg = crate::config::Config::new("root".parse().unwrap(), None, None);
        crate::home::write_durable(&home.config_path(), cfg.to_toml().as_bytes()).unwrap();
        (dir, home, key)
    }

    fn beacon(node: &Node, name: &str, key: &SecretKey, ts: OffsetDateTime) -> Vec<u8> {
        let mut health = crate::health::snapshot(node).unwrap();
        health.node = name.to_string();
        health.ts = format_ts(ts);
        sign(key, &Beacon { health, leaving: false, active: None }).unwrap()
    }

    #[test]
    fn active_hours_are_judged_in_the_node_s_own_local_time() {
        let hours = crate::config::ActiveHours::parse("08:00-23:00").unwrap();
        // 07:30 UTC: outside for a node on UTC, inside for one on UTC+1.
        let t = OffsetDateTime::from_unix_timestamp(7 * 3600 + 30 * 60).unwrap();
        assert!(!Active { hours, utc_offset_s: 0 }.contains(t));
        assert!(Active { hours, utc_offset_s: 3600 }.contains(t));
        // 22:30 UTC: inside on UTC, outside on UTC+1 (23:30 there), inside on UTC-5.
        let t = OffsetDateTime::from_unix_timestamp(22 * 3600 + 30 * 60).unwrap();
        assert!(Active { hours, utc_offset_s: 0 }.contains(t));
        assert!(!Active { hours, utc_offset_s: 3600 }.contains(t));
        assert!(Active { hours, utc_offset_s: -5 * 3600 }.contains(t));
    }

    #[test]
    fn the_root_refuses_forged_misnamed_replayed_future_and_flooding_beacons_and_keeps_the_rest() {
        let (_d, home, _root_key) = home();
        let node = Node::open(home.clone()).unwrap();
        let desk = Desk::new(home.clone());
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        let now = OffsetDateTime::now_utc();
        let first = beacon(&node, "a", &a, now);
        desk.take("a", a.public(), &first).unwrap();
        // Another at once (a flood), and the same again (a replay): refused.
        let soon = beacon(&node, "a", &a, now + time::Duration::milliseconds(10));
        assert!(format!("{:#}", desk.take("a", a.public(), &soon).unwrap_err()).contains("too soon"));
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert!(format!("{:#}", desk.take("a", a.public(), &first).unwrap_err()).contains("replayed"));
        // Signed by another key, or for another name, or far in the future: refused.
        let forged = beacon(&node, "a", &b, now + time::Duration::seconds(1));
        assert!(format!("{:#}", desk.take("a", a.public(), &forged).unwrap_err()).contains("signature"));
        let misnamed = beacon(&node, "b", &a, now + time::Duration::seconds(1));
        assert!(
            format!("{:#}", desk.take("a", a.public(), &misnamed).unwrap_err())
                .contains("sent a beacon for b")
        );
        let future = beacon(&node, "a", &a, now + time::Duration::minutes(10));
        assert!(format!("{:#}", desk.take("a", a.public(), &future).unwrap_err()).contains("skew"));
        // Junk is an error, not a panic; another member still gets in.
        assert!(desk.take("b", b.public(), b"{not json").is_err());
        desk.take("b", b.public(), &beacon(&node, "b", &b, now)).unwrap();
        // Answers are shared for a second: the next one after it shows both.
        std::thread::sleep(VIEW_EVERY);
        let v: MeshView = serde_json::from_slice(
            &desk.take("a", a.public(), &beacon(&node, "a", &a, now + time::Duration::seconds(1))).unwrap(),
        )
        .unwrap();
        assert!(v.nodes.contains_key("a") && v.nodes.contains_key("b"), "{v:?}");
    }

    #[test]
    fn a_node_new_to_the_view_is_answered_with_a_view_that_holds_it() {
        let (_d, home, _root_key) = home();
        let node = Node::open(home.clone()).unwrap();
        let desk = Desk::new(home.clone());
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        let now = OffsetDateTime::now_utc();
        desk.take("a", a.public(), &beacon(&node, "a", &a, now)).unwrap();
        // Within the second the answer is shared: b's first must still name b.
        let v: MeshView =
            serde_json::from_slice(&desk.take("b", b.public(), &beacon(&node, "b", &b, now)).unwrap())
                .unwrap();
        assert!(v.nodes.contains_key("b"), "{v:?}");
    }
}
