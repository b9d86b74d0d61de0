//! `netsky escalate SUBJECT BODY | ack ID | resolve ID | ls`: incidents for the owner.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::node::Node;
use crate::output::{Ctx, emit};
use crate::owner::{self, EscalationOp};

/// Arguments of `netsky escalate`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EscalateArgs {
    /// One line: with this node's name, what joins a repeat to the open incident.
    #[arg(required = true)]
    subject: Option<String>,
    /// What happened, for a human.
    #[arg(required = true)]
    body: Option<String>,
    #[command(subcommand)]
    cmd: Option<EscalateCmd>,
}

/// `netsky escalate ...` verbs.
#[derive(Debug, Subcommand)]
enum EscalateCmd {
    /// Acknowledge incident ID: the root stops paging it (from any node).
    Ack {
        /// The incident id.
        id: ulid::Ulid,
    },
    /// Resolve incident ID: closed; its subject opens a new incident next time (from any node).
    Resolve {
        /// The incident id.
        id: ulid::Ulid,
    },
    /// The root's incidents: open, acked and resolved (from any node: asked over the mesh).
    Ls,
}

/// Runs `netsky escalate`.
pub fn run(ctx: &Ctx, a: EscalateArgs) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let op = match (a.cmd, a.subject, a.body) {
        (Some(EscalateCmd::Ls), _, _) => return ls(ctx, &node),
        (Some(EscalateCmd::Ack { id }), _, _) => EscalationOp::Ack { id: id.to_string() },
        (Some(EscalateCmd::Resolve { id }), _, _) => EscalationOp::Resolve { id: id.to_string() },
        (None, Some(subject), Some(body)) => {
            EscalationOp::Open { subject, body, source: Some("cli".into()), agent: None }
        }
        _ => bail!("usage: netsky escalate SUBJECT BODY | ack ID | resolve ID | ls"),
    };
    let from = super::channel::sender(None)?;
    let (env, sent) = owner::escalate(&node, from, &op)?;
    super::owner::print_sent(ctx, &env, &sent)
}

fn ls(ctx: &Ctx, node: &Node) -> Result<ExitCode> {
    let all = owner::incidents_anywhere(node)?;
    emit(ctx, &all, || {
        let mut s = String::new();
        for i in &all {
            let state = match i.state {
                owner::IncidentState::Open => "open",
                owner::IncidentState::Acked => "acked",
                owner::IncidentState::Resolved => "resolved",
            };
            s.push_str(&format!(
                "{}  {:<8} x{:<4} pages {:<2} {}: {}\n",
                i.id, state, i.count, i.pages, i.origin, i.subject
            ));
        }
        if s.is_empty() { "no incidents".to_string() } else { s.trim_end().to_string() }
    })?;
    Ok(ExitCode::SUCCESS)
}
