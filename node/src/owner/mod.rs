//! The owner's side of the root: pages through the configured owner legs.
//!
//! Only the charter's root talks to the owner (ARCHITECTURE.md section 5); a
//! node with no charter is its own root. A page goes through the legs of
//! `[[owner.legs]]` in order, each bounded by `[owner] leg_timeout_s`; every attempt
//! is one line in `state/owner-pages.jsonl`, written before the caller
//! hears of it, so the trail explains every page afterwards.

mod desk;
mod incident;
mod legs;
mod relay;
mod sources;

pub use desk::{run as run_desk, tick as tick_desk};
pub use incident::{Incident, State as IncidentState, incidents_anywhere, list as incidents};
pub use legs::ping;
pub use relay::{EscalationOp, Said, Sent, escalate, say, send as send_to_owner, split_addressed};
pub use sources::poll as poll_sources;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use netsky_bus::format_ts;
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Leg;
use crate::node::Node;

/// What a page is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PageKind {
    /// `owner test`: one page through every leg.
    Test,
    /// An escalation: a failure that needs the owner.
    Incident,
    /// A message for the owner (`owner send`).
    Message,
}

impl PageKind {
    /// The word pages and templates use.
    pub fn as_str(self) -> &'static str {
        match self {
            PageKind::Test => "test",
            PageKind::Incident => "incident",
            PageKind::Message => "message",
        }
    }
}

/// One page for the owner, as legs send it (the file leg's line, the command leg's substitutions).
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The incident's id, or a fresh ULID for a test.
    pub id: String,
    /// What it is about.
    pub kind: PageKind,
    /// One line.
    pub subject: String,
    /// The detail, for a human.
    pub body: String,
    /// The node where it happened.
    pub origin: String,
    /// When it was paged.
    pub ts: String,
}

impl Page {
    /// A page of `kind` from this node, stamped now.
    pub fn new(node: &Node, kind: PageKind, id: String, subject: &str, body: &str) -> Page {
        Page {
            id,
            kind,
            subject: subject.to_string(),
            body: body.to_string(),
            origin: node.config.node.name.to_string(),
            ts: format_ts(OffsetDateTime::now_utc()),
        }
    }
}

/// One leg's attempt at one page: a line of `state/owner-pages.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// When the attempt ended.
    pub ts: String,
    /// The page's id.
    pub page: String,
    /// The page's kind.
    pub kind: PageKind,
    /// The leg's kind (`file`, `command`, ...).
    pub leg: &'static str,
    /// Its position in `[[owner.legs]]`, from 0.
    pub index: usize,
    /// Whether the leg took the page.
    pub ok: bool,
    /// Why not, in one line.
    pub error: Option<String>,
    /// How long it took.
    pub ms: f64,
}

/// What the root answers members who ask: `incidents`, its incidents as a JSON array.
pub fn answers(home: crate::home::Home) -> netsky_mesh::Answers {
    std::sync::Arc::new(move |what: &str| {
        let node = Node::open(home.clone()).map_err(|e| format!("{e:#}"))?;
        match what {
            "incidents" => {
                check_root(&node).map_err(|e| format!("{e:#}"))?;
                let all = incident::list(&node.home).map_err(|e| format!("{e:#}"))?;
                serde_json::to_vec(&all).map_err(|e| e.to_string())
            }
            other => Err(format!("no such question: {other:?}")),
        }
    })
}

/// Whether this node may page the owner: it is the root of the charter on
/// disk now (a promotion takes effect at once), or it has no charter.
pub fn check_root(node: &Node) -> Result<()> {
    match &node.current_charter()? {
        Some(c) if c.charter.root != node.config.node.name => bail!(
            "only the root pages the owner; the root of mesh {} is {}, this node is {}",
            c.charter.mesh,
            c.charter.root,
            node.config.node.name
        ),
        _ => Ok(()),
    }
}

/// Tries the legs in order until one takes `page`; returns every attempt made.
pub fn page_in_order(node: &Node, page: &Page) -> Result<Vec<Attempt>> {
    attempt(node, page, true)
}

/// Tries every leg with `page` (a test), whatever each one answers.
pub fn page_every_leg(node: &Node, page: &Page) -> Result<Vec<Attempt>> {
    attempt(node, page, false)
}

fn attempt(node: &Node, page: &Page, stop_at_first: bool) -> Result<Vec<Attempt>> {
    check_root(node)?;
    let mut out = Vec::new();
    for (index, leg) in node.config.owner.legs.iter().enumerate() {
        let t = Instant::now();
        let res = legs::send(node, leg, page, Duration::from_secs(node.config.owner.leg_timeout_s));
        let a = Attempt {
            ts: format_ts(OffsetDateTime::now_utc()),
            page: page.id.clone(),
            kind: page.kind,
            leg: leg_kind(leg),
            index,
            ok: res.is_ok(),
            error: res.err().map(|e| format!("{e:#}")),
            ms: t.elapsed().as_secs_f64() * 1e3,
        };
        append_attempt(node, &a)?;
        let ok = a.ok;
        out.push(a);
        if ok && stop_at_first {
            break;
        }
    }
    Ok(out)
}

/// The word `[[owner.legs]]` uses for `leg`'s kind.
pub fn leg_kind(leg: &Leg) -> &'static str {
    match leg {
        Leg::File { .. } => "file",
        Leg::Command { .. } => "command",
        Leg::Webhook { .. } => "webhook",
        Leg::Email { .. } => "email",
        Leg::Desktop {} => "desktop",
        Leg::Tmux {} => "tmux",
    }
}

/// Appends one attempt to `state/owner-pages.jsonl`, durably (the trail outlives a crash).
fn append_attempt(node: &Node, a: &Attempt) -> Result<()> {
    let path = node.home.owner_pages_path();
    let mut line = serde_json::to_vec(a).context("page attempt to JSON")?;
    line.push(b'\n');
    append_durably(&path, &line)
}

/// Writes `bytes` (whole lines) at the end of `path`, creating it, then fsyncs it.
pub(crate) fn append_durably(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // One write per line set: O_APPEND keeps concurrent writers' lines whole.
    f.write_all(bytes).with_context(|| format!("cannot append to {}", path.display()))?;
    f.sync_data().with_context(|| format!("cannot fsync {}", path.display()))
}
