//! Which agents should run, how one is started, and the constellation's marks.
//!
//! - `state/constellation.json` records what `netsky up N` asked for; the
//!   watchdog revives only those agents.
//! - `state/constellation-down` marks the constellation as intentionally
//!   down: while it exists nothing revives an agent.
//! - `state/constellation.lock` serialises `up`, `down`, `restart` and the
//!   tick, so a tick that started before `down` cannot revive what `down`
//!   just stopped.
//!
//! Starting an agent renders its prompt into `state/prompts/<agent>.md` and
//! runs its runtime (see `launch` and `crate::runtimes`) in a tmux session
//! with `AGENT_N`, `NETSKY_HOME`, `NETSKY_PROMPT_FILE` and `NETSKY_RUNTIME`
//! in its environment.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use netsky_bus::{AgentName, format_ts};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::tmux::Tmux;
use crate::config::Config;
use crate::home::Home;
use crate::node::Node;

/// The tmux session the stand-alone heartbeat (`netsky ticker`) runs in.
pub const TICKER_SESSION: &str = "netsky-ticker";

/// The largest operator addendum read into a prompt.
const MAX_ADDENDUM_BYTES: u64 = 64 * 1024;

/// What `up` asked for: `agent0`, `agent1..agent{clones}`, `agentinfinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Number of clones.
    pub clones: u16,
}

impl Desired {
    /// Every agent of the constellation, in order.
    pub fn agents(&self) -> Vec<AgentName> {
        let mut v = vec![AgentName::ROOT];
        v.extend((1..=self.clones).map(AgentName::Numbered));
        v.push(AgentName::Infinity);
        v
    }

    /// Whether `agent` belongs to the constellation: agent0, a clone numbered 1..=clones, or agentinfinity.
    pub fn contains(&self, agent: AgentName) -> bool {
        match agent {
            AgentName::Infinity => true,
            AgentName::Numbered(n) => n <= self.clones,
        }
    }

    /// The agents, as a human range (`agent0..agent4, agentinfinity`).
    pub fn describe(&self) -> String {
        match self.clones {
            0 => "agent0, agentinfinity".into(),
            n => format!("agent0..agent{n}, agentinfinity"),
        }
    }
}

/// What the last `up` asked for, if `up` ever ran.
pub fn load_desired(home: &Home) -> Result<Option<Desired>> {
    let p = home.desired_path();
    match std::fs::read(&p) {
        Ok(b) => {
            serde_json::from_slice(&b).map(Some).with_context(|| format!("cannot parse {}", p.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// The agents this node answers for: the config's clones, or more if `netsky up N` last asked for more.
pub fn answered_for(home: &Home, config: &Config) -> Desired {
    let asked = load_desired(home).ok().flatten().map(|d| d.clones).unwrap_or(0);
    Desired { clones: config.constellation.clones.max(asked) }
}

/// Records what `up` asked for.
pub fn save_desired(home: &Home, d: Desired) -> Result<()> {
    let bytes = serde_json::to_vec(&d).context("desired set to JSON")?;
    crate::home::write_durable(&home.desired_path(), &bytes)?;
    Ok(())
}

/// Whether the constellation was intentionally brought down.
pub fn is_down(home: &Home) -> bool {
    home.down_mark_path().symlink_metadata().is_ok()
}

/// Marks the constellation intentionally down, durably, so nothing revives it.
pub fn mark_down(home: &Home) -> Result<()> {
    let line = format!("{}\n", format_ts(OffsetDateTime::now_utc()));
    crate::home::write_durable(&home.down_mark_path(), line.as_bytes())?;
    Ok(())
}

/// Clears the down mark (on `up`).
pub fn clear_down(home: &Home) -> Result<()> {
    match std::fs::remove_file(home.down_mark_path()) {
        Ok(()) => netsky_bus::fsync_dir(&home.state_dir()).map_err(Into::into),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context("cannot remove the constellation-down mark"),
    }
}

/// An exclusive hold on the constellation, released on drop.
#[derive(Debug)]
pub struct ConstellationLock {
    _lock: netsky_bus::FileLock,
}

/// Takes `state/constellation.lock`, waiting up to `wait`; None when another holder keeps it.
pub fn try_lock(home: &Home, wait: Duration) -> Result<Option<ConstellationLock>> {
    let dir = home.state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = home.constellation_lock_path();
    let l = netsky_bus::lock_file(&path, wait).with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(l.map(|l| ConstellationLock { _lock: l }))
}

/// As [`try_lock`], but an error naming the holder's likely identity when busy.
pub fn lock(home: &Home, wait: Duration) -> Result<ConstellationLock> {
    try_lock(home, wait)?.with_context(|| {
        format!(
            "the constellation of {} is busy (a tick, up, down or restart holds state/constellation.lock for over {wait:?})",
            home.root().display()
        )
    })
}

/// The tmux server of this node's constellation.
pub fn tmux_of(node: &Node) -> Tmux {
    Tmux::new(&node.config.constellation.tmux_socket)
}

/// Reads the operator's addendum, if any: at most 64 KiB of UTF-8.
pub fn read_addendum(home: &Home) -> Result<Option<String>> {
    let path = home.prompt_addendum_path();
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("prompt addendum {}", path.display())),
    };
    let mut bytes = Vec::new();
    f.take(MAX_ADDENDUM_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("prompt addendum {}", path.display()))?;
    if bytes.len() as u64 > MAX_ADDENDUM_BYTES {
        bail!("prompt addendum {} is over {MAX_ADDENDUM_BYTES} bytes", path.display());
    }
    match String::from_utf8(bytes) {
        Ok(s) => Ok(Some(s)),
        Err(e) => bail!(
            "prompt addendum {} is not UTF-8 (invalid byte at offset {}); save it as UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        ),
    }
}

/// Renders `agent`'s prompt from this node's facts and the operator's addendum.
pub fn render_prompt(node: &Node, agent: AgentName, clones: u16) -> Result<String> {
    let addendum = read_addendum(&node.home)?;
    let name = node.config.node.name.to_string();
    let agent_s = agent.to_string();
    // Outside a mesh the node is its own root and only member.
    let charter = netsky_mesh::charter_file::load(&node.home.mesh_paths())?;
    let (root, members): (String, Vec<String>) = match &charter {
        Some(c) => {
            (c.charter.root.to_string(), c.charter.members.iter().map(|m| m.name.to_string()).collect())
        }
        None => (name.clone(), vec![name.clone()]),
    };
    let home = node.home.root().display().to_string();
    Ok(netsky_prompts::render(&netsky_prompts::Facts {
        node: &name,
        agent: &agent_s,
        root: &root,
        members: &members,
        clones,
        home: &home,
        addendum: addendum.as_deref(),
    }))
}

/// Renders `agent`'s prompt into `state/prompts/<agent>.md`; returns its path and text.
pub fn write_prompt(node: &Node, agent: AgentName, clones: u16) -> Result<(PathBuf, String)> {
    let text = render_prompt(node, agent, clones)?;
    let dir = node.home.prompts_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = crate::home::write_durable(&node.home.prompt_path(agent), text.as_bytes())?;
    Ok((path, text))
}

/// `AGENT_N` as agents see it: the number, or `infinity`.
pub fn agent_n(agent: AgentName) -> String {
    match agent {
        AgentName::Numbered(n) => n.to_string(),
        AgentName::Infinity => "infinity".into(),
    }
}

/// Where agent sessions start: the operator's home directory, else the node's.
fn work_dir(home: &Home) -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.root().into())
}

/// Starts `agent`'s session: renders its prompt (keeping the last one if that
/// fails, so a bad addendum cannot keep an agent down), writes what lets its
/// runtime start without first-run questions, runs the runtime, and opens
/// its readiness record.
pub fn start_agent(node: &Node, tmux: &Tmux, agent: AgentName, clones: u16) -> Result<()> {
    let prompt = match write_prompt(node, agent, clones) {
        Ok((p, _)) => p,
        Err(e) => {
            let p = node.home.prompt_path(agent);
            if !p.exists() {
                return Err(e.context(format!("no prompt for {agent}")));
            }
            tracing::warn!(%agent, error = %format!("{e:#}"), "prompt not re-rendered; the last one is used");
            p
        }
    };
    let rt = super::launch::runtime_for(node, agent)?;
    let workdir = super::launch::load(node, agent).workdir.unwrap_or_else(|| work_dir(&node.home));
    super::first_run::prepare(&rt, &workdir, None)
        .with_context(|| format!("cannot write {}'s first-run settings for {agent}", rt.name))?;
    let text = match rt.spec.prompt {
        crate::runtimes::PromptInput::Argv => {
            let b = crate::home::read_bounded(&prompt, 1 << 20)?;
            String::from_utf8_lossy(&b).into_owned()
        }
        _ => String::new(),
    };
    let mut env = vec![
        ("AGENT_N", agent_n(agent)),
        ("NETSKY_HOME", node.home.root().display().to_string()),
        ("NETSKY_PROMPT_FILE", prompt.display().to_string()),
        ("NETSKY_RUNTIME", rt.name.clone()),
    ];
    env.extend(rt.spec.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let name = agent.to_string();
    // In `mcp` delivery a Claude runtime also gets its channel server's flags.
    let argv = crate::mcp::launch::with_channel_flags(node, agent, &rt, rt.argv(&prompt, &text))?;
    tmux.new_session(&name, &env, &argv, &workdir)?;
    let pane = tmux.sessions()?.remove(&name);
    let paste = (rt.spec.prompt == crate::runtimes::PromptInput::Paste).then(|| prompt.clone());
    super::readiness::started(node, agent, pane.as_ref(), &rt.name, rt.spec.ready_when.clone(), paste)
}

/// Who keeps the heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Heartbeat {
    /// The daemon (`state/node.json` names a live pid).
    Daemon,
    /// The stand-alone ticker in tmux session `netsky-ticker`.
    Ticker,
}

/// The running daemon's pid (it holds the daemon lock and says so in `state/node.json`).
fn daemon_pid(home: &Home) -> Option<u32> {
    crate::daemon_state::running(home).map(|s| s.pid)
}

/// Who keeps this node's heartbeat right now, if anyone.
pub fn heartbeat(home: &Home, tmux: &Tmux) -> Result<Option<Heartbeat>> {
    if daemon_pid(home).is_some() {
        return Ok(Some(Heartbeat::Daemon));
    }
    Ok(tmux.has_session(TICKER_SESSION)?.then_some(Heartbeat::Ticker))
}

/// Starts the daemon (which holds the heartbeat) in tmux session `netsky-ticker`.
pub fn start_ticker(home: &Home, tmux: &Tmux) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the netsky binary to run the heartbeat")?;
    let argv = vec![
        exe.display().to_string(),
        "--home".to_string(),
        home.root().display().to_string(),
        "node".to_string(),
        "run".to_string(),
    ];
    let env = [("NETSKY_HOME", home.root().display().to_string())];
    tmux.new_session(TICKER_SESSION, &env, &argv, home.root())
}
