//! `netsky owner send | test`: mail for the owner, and the owner legs tried from the root.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde::Serialize;

use crate::node::Node;
use crate::output::{Ctx, emit};
use crate::owner::{self, Attempt, Page, PageKind};

/// `netsky owner ...`
#[derive(Debug, Subcommand)]
pub enum OwnerCmd {
    /// Send TEXT to the owner from any node: the root pages it through its legs.
    /// Prints the envelope id once it is durable (at the root's desk, or in the outbox).
    Send {
        /// The message.
        text: String,
        /// Sending agent on this node (default: $AGENT_N, else agent0).
        #[arg(long)]
        from: Option<netsky_bus::AgentName>,
    },
    /// Root only: the owner's message to an agent anywhere, as an envelope from `owner`:
    /// `owner say "agent0@laptop: pause the deploy"` (no address: agent0 here).
    Say {
        /// `[agentN[@node]:] text`.
        text: String,
    },
    /// Root only: one test page through every owner leg, and each leg's result.
    /// Exits 1 unless every leg took it.
    Test,
}

#[derive(Serialize)]
struct TestOut {
    page: String,
    attempts: Vec<Attempt>,
}

/// Runs `netsky owner`.
pub fn run(ctx: &Ctx, cmd: OwnerCmd) -> Result<ExitCode> {
    match cmd {
        OwnerCmd::Send { text, from } => {
            let node = Node::open(ctx.home.clone())?;
            let from = super::channel::sender(from)?;
            let (env, sent) = owner::send_to_owner(&node, netsky_bus::Kind::Owner, from, text)?;
            print_sent(ctx, &env, &sent)
        }
        OwnerCmd::Say { text } => {
            let node = Node::open(ctx.home.clone())?;
            let (to, text) = owner::split_addressed(&text);
            let (env, said) = owner::say(&node, &to, text)?;
            let out = match said {
                owner::Said::Inbox => SentOut { id: env.id.to_string(), state: "inbox", node: None },
                owner::Said::Queued(n) => SentOut { id: env.id.to_string(), state: "queued", node: Some(n) },
            };
            emit(ctx, &out, || out.id.clone())?;
            Ok(ExitCode::SUCCESS)
        }
        OwnerCmd::Test => {
            let node = Node::open(ctx.home.clone())?;
            owner::check_root(&node)?;
            if node.config.owner.legs.is_empty() {
                bail!(
                    "no owner legs configured: add one under [[owner.legs]] in {}",
                    node.home.config_path().display()
                );
            }
            let id = ulid::Ulid::new().to_string();
            let body = format!("a test page from netsky on {}", node.config.node.name);
            let page = Page::new(&node, PageKind::Test, id, "test page", &body);
            let out = TestOut { page: page.id.clone(), attempts: owner::page_every_leg(&node, &page)? };
            emit(ctx, &out, || {
                let mut s = format!("test page {}", out.page);
                for a in &out.attempts {
                    let verdict = match &a.error {
                        None => "ok".to_string(),
                        Some(e) => format!("FAILED: {e}"),
                    };
                    s.push_str(&format!("\n  {} {:<8} {verdict} ({:.0} ms)", a.index, a.leg, a.ms));
                }
                s
            })?;
            let all_ok = out.attempts.iter().all(|a| a.ok);
            Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

#[derive(Serialize)]
struct SentOut {
    id: String,
    /// `desk` (this node is the root), `inbox` (an agent here), or `queued` (in the outbox).
    state: &'static str,
    /// The node it is queued for (the root, for mail to the owner).
    node: Option<String>,
}

/// Prints where owner mail went.
pub(super) fn print_sent(ctx: &Ctx, env: &netsky_bus::Envelope, sent: &owner::Sent) -> Result<ExitCode> {
    let out = match sent {
        owner::Sent::Desk => SentOut { id: env.id.to_string(), state: "desk", node: None },
        owner::Sent::Queued(r) => SentOut { id: env.id.to_string(), state: "queued", node: Some(r.clone()) },
    };
    emit(ctx, &out, || out.id.clone())?;
    Ok(ExitCode::SUCCESS)
}
