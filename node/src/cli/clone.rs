//! `netsky clone brief | ls | status | wait | kill`: the clone lifecycle.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Subcommand;
use netsky_bus::AgentName;
use serde::Serialize;

use super::agent::parse_agent;
use crate::clone::{self, BriefRequest, CloneState, Dispatch};
use crate::constellation::{self, readiness};
use crate::node::Node;
use crate::output::{Ctx, emit};

/// `netsky clone ...`
#[derive(Debug, Subcommand)]
pub enum CloneCmd {
    /// Give a task its own workspace checkout and clone agent, and send it the brief.
    ///
    /// The workspace name is lower-cased and its spaces become `-`; slashes
    /// and `..` are refused. The checkout is `workspaces/<name>/repo` in the
    /// home, a git clone of --repo (default: the repository holding the
    /// current directory), on branch `clone/<name>`.
    Brief {
        /// The brief: a UTF-8 file of at most 48 KiB.
        file: PathBuf,
        /// The workspace's name.
        #[arg(long)]
        workspace: String,
        /// The clone agent's number (default: the first free one).
        #[arg(long)]
        agent: Option<u16>,
        /// The repository to clone (default: the one holding the current directory).
        #[arg(long)]
        repo: Option<PathBuf>,
        /// The clone's runtime, over its usual one.
        #[arg(long = "type", value_name = "RUNTIME")]
        runtime: Option<String>,
    },
    /// Every clone: agent, workspace, state, session.
    Ls,
    /// One clone: its dispatch, whether it is done, its session (alive, state, last output, hang).
    #[command(visible_alias = "health")]
    Status {
        /// The clone agent: 6 or agent6.
        #[arg(value_parser = parse_agent)]
        agent: AgentName,
    },
    /// Wait until the clone replies to agent0 or pushes its branch; exit 1 on timeout.
    Wait {
        /// The clone agent.
        #[arg(value_parser = parse_agent)]
        agent: AgentName,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
    /// End the clone's session (the agent goes back to being an idle clone); keeps the workspace unless --rm.
    Kill {
        /// The clone agent.
        #[arg(value_parser = parse_agent)]
        agent: AgentName,
        /// Remove the workspace too.
        #[arg(long)]
        rm: bool,
    },
}

/// One clone as `ls` and `status` show it.
#[derive(Debug, Serialize)]
struct CloneView {
    #[serde(flatten)]
    dispatch: Dispatch,
    session_alive: bool,
    session: readiness::State,
    last_output_change: Option<String>,
    hang_suspected: bool,
}

fn view(node: &Node, mut d: Dispatch) -> Result<CloneView> {
    let _ = clone::refresh(node, &mut d);
    let agent: AgentName = d.agent.parse()?;
    let tmux = constellation::agents::tmux_of(node);
    let sessions = tmux.sessions()?;
    let pane = sessions.get(&d.agent);
    let hang = constellation::watchdog::hang_marker(node, agent).is_some();
    Ok(CloneView {
        session_alive: pane.is_some_and(|p| !p.dead),
        session: readiness::state(node, agent, pane, hang),
        last_output_change: constellation::watchdog::pane_state(node, agent).map(|p| p.changed),
        hang_suspected: hang,
        dispatch: d,
    })
}

fn line(v: &CloneView) -> String {
    let d = &v.dispatch;
    format!(
        "{:<10} {:<24} {:<7} {:<9} {}",
        d.agent,
        d.workspace,
        d.state.as_str(),
        if v.session_alive { format!("{:?}", v.session).to_lowercase() } else { "dead".into() },
        d.workdir.display()
    )
}

/// Runs `netsky clone`.
pub fn run(ctx: &Ctx, cmd: CloneCmd) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    match cmd {
        CloneCmd::Brief { file, workspace, agent, repo, runtime } => {
            let d = clone::brief(&node, BriefRequest { brief: file, workspace, agent, repo, runtime })?;
            emit(ctx, &d, || {
                format!(
                    "{} briefed in workspace {} ({} on branch {}); brief {}",
                    d.agent,
                    d.workspace,
                    d.workdir.display(),
                    d.branch,
                    d.brief_id
                )
            })?;
        }
        CloneCmd::Ls => {
            let views = clone::all(&node)?.into_iter().map(|d| view(&node, d)).collect::<Result<Vec<_>>>()?;
            emit(ctx, &views, || {
                let mut s =
                    format!("{:<10} {:<24} {:<7} {:<9} WORKDIR", "AGENT", "WORKSPACE", "STATE", "SESSION");
                for v in &views {
                    s.push('\n');
                    s.push_str(&line(v));
                }
                s
            })?;
        }
        CloneCmd::Status { agent } => {
            let Some(d) = clone::load(&node, agent)? else { bail!("{agent} was never briefed as a clone") };
            let v = view(&node, d)?;
            emit(ctx, &v, || {
                format!(
                    "{}\nbriefed {} (brief {}); done: {}; last output change: {}; hang suspected: {}",
                    line(&v),
                    v.dispatch.briefed,
                    v.dispatch.brief_id,
                    v.dispatch.done.as_deref().unwrap_or("no"),
                    v.last_output_change.as_deref().unwrap_or("-"),
                    if v.hang_suspected { "yes" } else { "no" }
                )
            })?;
        }
        CloneCmd::Wait { agent, timeout } => {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            loop {
                let Some(mut d) = clone::load(&node, agent)? else {
                    bail!("{agent} was never briefed as a clone")
                };
                if clone::refresh(&node, &mut d)? {
                    emit(ctx, &d, || format!("{} done: {}", d.agent, d.done.as_deref().unwrap_or("")))?;
                    return Ok(ExitCode::SUCCESS);
                }
                if d.state == CloneState::Killed {
                    bail!("{agent}'s clone was killed before it was done");
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{agent} is not done after {timeout} s (workspace {}); `netsky clone status {agent}`",
                        d.workspace
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        CloneCmd::Kill { agent, rm } => {
            let d = clone::kill(&node, agent, rm)?;
            emit(ctx, &d, || {
                format!(
                    "{}'s session ended; workspace {} {}",
                    d.agent,
                    d.workspace,
                    if rm { "removed" } else { "kept" }
                )
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
