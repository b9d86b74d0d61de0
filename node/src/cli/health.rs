//! `netsky health`: this node's snapshot, printed and written to `state/health.json`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::health;
use crate::node::Node;
use crate::output::{Ctx, emit};

/// Arguments of `netsky health`.
#[derive(Debug, Args)]
pub struct HealthArgs {}

/// Runs `netsky health`.
pub fn run(ctx: &Ctx, _a: HealthArgs) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let h = health::snapshot(&node)?;
    crate::home::write_durable(&node.home.health_path(), &serde_json::to_vec_pretty(&h)?)?;
    emit(ctx, &h, || {
        let gib = h.disk_free_bytes as f64 / (1u64 << 30) as f64;
        let mut s = format!(
            "node {} (netsky {}), {}\n  agents {}/{} up; inbox {}, outbox {}; disk free {gib:.1} GiB; load {}; last tick {}",
            h.node,
            h.version,
            h.uptime_s.map_or("no daemon running".to_string(), |u| format!("daemon up {u} s")),
            h.agents_up,
            h.agents_total,
            h.inbox_depth,
            h.outbox_depth,
            h.load_1m.map_or("-".to_string(), |l| format!("{l:.2}")),
            h.tick_age_s.map_or("never".to_string(), |t| format!("{t:.0} s ago")),
        );
        if let Some(e) = &h.agents_error {
            s.push_str(&format!("\n  agents unknown: {e}"));
        }
        for a in &h.agents {
            let hang = if a.hang_suspected { ", hang suspected" } else { "" };
            s.push_str(&format!(
                "\n  {:<14} {}{hang}, inbox {}",
                a.agent,
                if a.alive { "up" } else { "down" },
                a.inbox
            ));
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}
