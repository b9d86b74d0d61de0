//! The clone lifecycle: a task gets its own workspace checkout and agent.
//!
//! `brief` normalises the workspace name, clones the repository into
//! `workspaces/<name>/repo` on branch `clone/<name>`, picks a free clone
//! agent (or checks the one asked for), restarts it in that checkout, and
//! hands it the brief as an envelope of kind `brief`, pasted first once its
//! runtime is ready (see `constellation::handoff`). The dispatch is kept in
//! `state/clones/<agent>.json` (the truth), a `clones` row in meta.db and a
//! `clone-briefed` event (the record).
//!
//! A clone is done when it replies to agent0 on the bus or pushes its branch
//! to the repository it came from ([`done`]). `kill` ends its session and
//! gives the agent back to the constellation as an ordinary idle clone (the
//! watchdog revives every agent `up` asked for); the workspace stays unless
//! asked to go.

pub mod done;
pub mod workspace;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use netsky_bus::{AgentName, Kind, format_ts};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::constellation::agents::{self, tmux_of};
use crate::constellation::{handoff, launch, watchdog};
use crate::node::Node;
use crate::record::EventKind;
use crate::store::CloneRow;
use workspace::WorkspaceName;

/// How long a clone command waits for a tick, `up` or `restart` to finish.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The largest brief: it must fit one envelope with its header.
pub const MAX_BRIEF_BYTES: u64 = 48 * 1024;

/// Where a clone is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloneState {
    /// Briefed, working.
    Active,
    /// It reported done (or pushed its branch).
    Done,
    /// Its session was ended with `clone kill`.
    Killed,
}

impl CloneState {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            CloneState::Active => "active",
            CloneState::Done => "done",
            CloneState::Killed => "killed",
        }
    }
}

/// `state/clones/<agent>.json`: one dispatch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dispatch {
    /// The clone's agent.
    pub agent: String,
    /// Its workspace's name.
    pub workspace: String,
    /// The repository it was cloned from (where harvests land).
    pub repo: PathBuf,
    /// The branch checked out there at the brief: a harvest's default target.
    pub base: String,
    /// The workspace checkout.
    pub workdir: PathBuf,
    /// The branch it works on.
    pub branch: String,
    /// The brief's envelope id.
    pub brief_id: String,
    /// When it was briefed.
    pub briefed: String,
    /// Where it is.
    pub state: CloneState,
    /// How it reported done, and when.
    pub done: Option<String>,
}

fn clones_dir(node: &Node) -> PathBuf {
    node.home.state_dir().join("clones")
}

/// The dispatch of `agent`, if it was ever briefed.
pub fn load(node: &Node, agent: AgentName) -> Result<Option<Dispatch>> {
    let p = clones_dir(node).join(format!("{agent}.json"));
    if !p.exists() {
        return Ok(None);
    }
    let bytes = crate::home::read_bounded(&p, 256 * 1024)?;
    serde_json::from_slice(&bytes).map(Some).with_context(|| format!("cannot parse {}", p.display()))
}

fn save(node: &Node, d: &Dispatch) -> Result<()> {
    let dir = clones_dir(node);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    netsky_bus::write_durable(&dir, &format!("{}.json", d.agent), &serde_json::to_vec_pretty(d)?)?;
    Ok(())
}

/// Every dispatch, by agent.
pub fn all(node: &Node) -> Result<Vec<Dispatch>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(clones_dir(node)) else { return Ok(out) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(agent) = name.strip_suffix(".json").and_then(|a| a.parse::<AgentName>().ok())
            && let Some(d) = load(node, agent)?
        {
            out.push(d);
        }
    }
    out.sort_by_key(|d| d.agent.parse::<AgentName>().ok());
    Ok(out)
}

fn row(node: &Node, d: &Dispatch, detail: Option<&str>) {
    let ts = format_ts(OffsetDateTime::now_utc());
    let repo = d.repo.display().to_string();
    node.recorder.with_store(|s| {
        s.insert_clone(&CloneRow {
            ts: &ts,
            agent: &d.agent,
            workspace: &d.workspace,
            state: d.state.as_str(),
            repo: &repo,
            branch: &d.branch,
            brief_id: Some(&d.brief_id),
            detail,
        })
    });
}

/// What `clone brief` was asked.
#[derive(Debug)]
pub struct BriefRequest {
    /// The brief's file.
    pub brief: PathBuf,
    /// The workspace's name, before normalisation.
    pub workspace: String,
    /// The clone agent's number, if chosen.
    pub agent: Option<u16>,
    /// The repository (default: the one holding the current directory).
    pub repo: Option<PathBuf>,
    /// A runtime for the clone, over its usual one.
    pub runtime: Option<String>,
}

/// Reads a brief: a non-empty UTF-8 file of at most [`MAX_BRIEF_BYTES`].
pub fn read_brief(file: &Path) -> Result<String> {
    let meta = std::fs::metadata(file).with_context(|| format!("brief {}", file.display()))?;
    if !meta.is_file() {
        bail!("brief {} is not a file", file.display());
    }
    if meta.len() > MAX_BRIEF_BYTES {
        bail!(
            "brief {} is {} bytes, over the {MAX_BRIEF_BYTES}-byte limit of one envelope",
            file.display(),
            meta.len()
        );
    }
    let bytes = crate::home::read_bounded(file, MAX_BRIEF_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("brief {} is not UTF-8 (byte {})", file.display(), e.utf8_error().valid_up_to())
    })?;
    if text.trim().is_empty() {
        bail!("brief {} is empty", file.display());
    }
    Ok(text)
}

/// Agents with a clone at work (briefed, not killed).
fn busy(node: &Node) -> Result<BTreeSet<AgentName>> {
    Ok(all(node)?
        .into_iter()
        .filter(|d| d.state != CloneState::Killed)
        .filter_map(|d| d.agent.parse().ok())
        .collect())
}

/// `clone brief`: every check first, then the workspace, the agent, the brief.
pub fn brief(node: &Node, req: BriefRequest) -> Result<Dispatch> {
    let home = &node.home;
    let name = WorkspaceName::parse(&req.workspace)?;
    let text = read_brief(&req.brief)?;
    let Some(desired) = agents::load_desired(home)? else {
        bail!("the constellation was never started in {}; run `netsky up N` first", home.root().display());
    };
    if agents::is_down(home) {
        bail!("the constellation is down (netsky down); run `netsky up` first");
    }
    let source_dir = match &req.repo {
        Some(r) => r.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let source = crate::git::toplevel(&source_dir)?;
    // The branch checked out now is where `harvest` lands by default; on a
    // detached HEAD there is none, and `harvest` will ask for --onto.
    let base = crate::git::ok(&source, &["symbolic-ref", "--quiet", "--short", "HEAD"], crate::git::QUICK)
        .unwrap_or_default();
    // "Done" is this branch appearing in the source: one left by an earlier clone would say so at once.
    let branch = name.branch();
    if crate::git::has(&source, &format!("refs/heads/{branch}"))? {
        bail!(
            "{} already has a branch {branch} (an earlier clone's); harvest or delete it (`git branch -D {branch}`), or pick another workspace name",
            source.display()
        );
    }
    if let Some(rt) = &req.runtime {
        crate::runtimes::ensure_found(&crate::runtimes::by_name(&node.config.runtimes, rt)?)?;
    }
    let _lock = agents::lock(home, LOCK_WAIT)?;
    let busy = busy(node)?;
    let agent = match req.agent {
        Some(0) => bail!("agent0 is the orchestrator, not a clone; pick 1..{}", desired.clones),
        Some(n) if n > desired.clones => bail!(
            "agent{n} is not in this constellation ({}); `netsky up {n}` first, or pick another",
            desired.describe()
        ),
        Some(n) => {
            let a = AgentName::Numbered(n);
            if busy.contains(&a) {
                let d = load(node, a)?.map(|d| d.workspace).unwrap_or_default();
                bail!(
                    "agent{n} is in use by the clone of workspace {d}; `netsky clone kill {n}` first, or pick another"
                );
            }
            a
        }
        None => {
            (1..=desired.clones).map(AgentName::Numbered).find(|a| !busy.contains(a)).with_context(|| {
                format!(
                    "every clone agent (agent1..agent{}) is in use; kill one or `netsky up N` with more",
                    desired.clones
                )
            })?
        }
    };
    let workdir = workspace::create(home.root(), &name, &source)?;
    let before = launch::load(node, agent);
    match dispatch(node, agent, &name, &workdir, source, base, &text, req.runtime, desired.clones) {
        Ok(d) => Ok(d),
        Err(e) => {
            // Nothing half-made is left: the agent's launch as it was, no workspace, no pending brief.
            let _ = launch::save(node, agent, &before);
            let _ = std::fs::remove_dir_all(workspace::dir(home.root(), &name));
            handoff::discard(node, agent);
            Err(e)
        }
    }
}

/// The part of `brief` after the workspace exists: the agent restarted there with its brief waiting.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    node: &Node,
    agent: AgentName,
    name: &WorkspaceName,
    workdir: &Path,
    source: PathBuf,
    base: String,
    text: &str,
    runtime: Option<String>,
    clones: u16,
) -> Result<Dispatch> {
    let mut l = launch::load(node, agent);
    l.workdir = Some(workdir.to_path_buf());
    if runtime.is_some() {
        l.runtime = runtime;
    }
    launch::save(node, agent, &l)?;
    let branch = name.branch();
    let header = format!(
        "[brief] Workspace {ws}: your checkout is {dir} on branch {branch}. Commit your work there. \
         When done, push it (`git push origin {branch}`) and tell agent0 with \
         `netsky channel send agent0 \"done: <summary>\" --kind reply`.\n\n",
        ws = name.as_str(),
        dir = workdir.display(),
    );
    let env = handoff::store_first(node, agent, Kind::Brief, format!("{header}{text}"))?;
    watchdog::restart_by_hand(node, &tmux_of(node), agent, clones)?;
    let d = Dispatch {
        agent: agent.to_string(),
        workspace: name.as_str().to_string(),
        repo: source,
        base,
        workdir: workdir.to_path_buf(),
        branch,
        brief_id: env.id.to_string(),
        briefed: format_ts(OffsetDateTime::now_utc()),
        state: CloneState::Active,
        done: None,
    };
    save(node, &d)?;
    let rec = &node.recorder;
    rec.record(&[rec.event(
        EventKind::CloneBriefed,
        Some(agent),
        Some(&env),
        Some(format!("workspace {}", d.workspace)),
    )]);
    row(node, &d, None);
    Ok(d)
}

/// Brings `d`'s state up to date (an active clone that reported is done); true when done.
pub fn refresh(node: &Node, d: &mut Dispatch) -> Result<bool> {
    if d.state != CloneState::Active {
        return Ok(d.state == CloneState::Done);
    }
    let Some(how) = done::check(node, d)? else { return Ok(false) };
    d.state = CloneState::Done;
    d.done = Some(format!("{}: {how}", format_ts(OffsetDateTime::now_utc())));
    save(node, d)?;
    let rec = &node.recorder;
    let agent = d.agent.parse().ok();
    rec.record(&[rec.event(EventKind::CloneDone, agent, None, Some(how.clone()))]);
    row(node, d, Some(&how));
    Ok(true)
}

/// `clone kill`: ends the clone's session (the agent comes back as an ordinary clone); `rm` removes its workspace.
pub fn kill(node: &Node, agent: AgentName, rm: bool) -> Result<Dispatch> {
    let Some(mut d) = load(node, agent)? else { bail!("{agent} was never briefed as a clone") };
    let _lock = agents::lock(&node.home, LOCK_WAIT)?;
    let mut l = launch::load(node, agent);
    l.workdir = None;
    launch::save(node, agent, &l)?;
    // A brief not yet pasted must not reach the agent's next, ordinary session.
    handoff::discard(node, agent);
    let tmux = tmux_of(node);
    tmux.kill_session(&agent.to_string())?;
    let ws = d.workdir.parent().map(Path::to_path_buf);
    if rm && let Some(ws) = ws.filter(|w| w.starts_with(node.home.root().join("workspaces"))) {
        std::fs::remove_dir_all(&ws).with_context(|| format!("cannot remove {}", ws.display()))?;
    }
    d.state = CloneState::Killed;
    save(node, &d)?;
    let detail = if rm { "session ended, workspace removed" } else { "session ended, workspace kept" };
    let rec = &node.recorder;
    rec.record(&[rec.event(EventKind::CloneKilled, Some(agent), None, Some(detail.into()))]);
    row(node, &d, Some(detail));
    Ok(d)
}
