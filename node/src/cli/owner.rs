//! `netsky owner test`: the owner legs, tried from the root.

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
