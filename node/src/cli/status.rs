//! `netsky status`: each agent: alive, state (starting, ready, hung, dead), runtime, pid, last output change, inbox, hang, restarts.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::constellation;
use crate::node::Node;
use crate::output::{Ctx, emit};

/// Arguments of `netsky status`.
#[derive(Debug, Args)]
pub struct StatusArgs {}

/// Runs `netsky status`.
pub fn run(ctx: &Ctx, _a: StatusArgs) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let st = constellation::status(&node)?;
    emit(ctx, &st, || {
        let hb = match st.heartbeat {
            Some(constellation::agents::Heartbeat::Daemon) => "daemon",
            Some(constellation::agents::Heartbeat::Ticker) => constellation::agents::TICKER_SESSION,
            None => "none",
        };
        let mut s = format!(
            "node {}{}; heartbeat: {hb}; last tick: {}",
            st.node,
            if st.down { " (DOWN: brought down with `netsky down`)" } else { "" },
            st.last_tick.as_deref().unwrap_or("never")
        );
        s.push_str(&format!(
            "\n{:<14} {:<5} {:<8} {:<10} {:>8} {:<24} {:>5} {:>7} {:<4} {:>8}  {}",
            "AGENT",
            "ALIVE",
            "STATE",
            "RUNTIME",
            "PID",
            "LAST OUTPUT CHANGE",
            "INBOX",
            "CLAIMED",
            "HANG",
            "RESTARTS",
            "DELIVERY"
        ));
        for a in &st.agents {
            let restarts = match &a.cooldown_until {
                Some(u) => format!("{} (cooling until {u})", a.restarts),
                None => a.restarts.to_string(),
            };
            let delivery = match (&a.served, a.delivery) {
                (Some(m), _) => format!("mcp (pid {}, since {})", m.pid, m.since),
                (None, "mcp") => "mcp (no server yet: mail waits)".into(),
                (None, _) => "pane".into(),
            };
            s.push_str(&format!(
                "\n{:<14} {:<5} {:<8} {:<10} {:>8} {:<24} {:>5} {:>7} {:<4} {:>8}  {}",
                a.agent,
                if a.session_alive { "yes" } else { "no" },
                format!("{:?}", a.state).to_lowercase(),
                a.runtime.as_deref().unwrap_or("-"),
                a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                a.last_output_change.as_deref().unwrap_or("-"),
                a.inbox,
                a.claimed,
                if a.hang_suspected { "yes" } else { "no" },
                restarts,
                delivery
            ));
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}
