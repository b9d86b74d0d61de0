//! `netsky down`: stop every agent session and the heartbeat `up` started, and stay down.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use netsky_bus::AgentName;
use serde::Serialize;

use crate::constellation::agents::{self, TICKER_SESSION, tmux_of};
use crate::node::Node;
use crate::output::{Ctx, emit};
use crate::record::EventKind;

/// Arguments of `netsky down`.
#[derive(Debug, Args)]
pub struct DownArgs {}

#[derive(Serialize)]
struct Out {
    node: String,
    stopped: Vec<String>,
    ticker_stopped: bool,
}

/// Runs `netsky down`.
pub fn run(ctx: &Ctx, _a: DownArgs) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let home = &node.home;
    let tmux = tmux_of(&node);
    let lock = agents::lock(home, super::up::LOCK_WAIT)?;
    // The mark first: whatever runs a tick after this (a daemon) revives nothing.
    agents::mark_down(home)?;
    let mut stopped = Vec::new();
    for name in tmux.sessions()?.keys() {
        if let Ok(agent) = name.parse::<AgentName>()
            && tmux.kill_session(name)?
        {
            stopped.push(name.clone());
            let rec = &node.recorder;
            rec.record(&[rec.event(EventKind::Stopped, Some(agent), None, Some("netsky down".into()))]);
        }
    }
    drop(lock);
    // Only `up` starts this session; a supervised daemon is not ours to stop.
    let ticker_stopped = tmux.kill_session(TICKER_SESSION)?;
    let out = Out { node: node.config.node.name.to_string(), stopped, ticker_stopped };
    emit(ctx, &out, || {
        let mut s = match out.stopped.len() {
            0 => format!("constellation of {} down (no agent was running)", out.node),
            _ => format!("constellation of {} down: stopped {}", out.node, out.stopped.join(", ")),
        };
        if out.ticker_stopped {
            s.push_str(&format!("\nheartbeat ({TICKER_SESSION}) stopped"));
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}
