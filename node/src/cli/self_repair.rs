//! `netsky self-repair check`: is the live binary healthy, is the last known
//! good one there, and what the shim would run now (asked of the shim itself).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;

use crate::node::Node;
use crate::output::{Ctx, emit};
use crate::supervise::{self, lkg};

/// `netsky self-repair` verbs.
#[derive(Debug, Subcommand)]
pub enum SelfRepairCmd {
    /// The live and last known good binaries, and which one the shim would run.
    Check,
}

#[derive(Serialize)]
struct Report {
    live: lkg::Probe,
    lkg: lkg::Probe,
    shim: PathBuf,
    /// The home's shim is the one this netsky writes (false: absent or old; the embedded one was asked).
    shim_current: bool,
    /// What the shim would run; null when it would run nothing.
    would_run: Option<PathBuf>,
    /// Why it falls back, or why it would run nothing.
    fallback: Option<String>,
}

/// Runs `netsky self-repair check`; exits 1 when the shim would run nothing.
pub fn run(ctx: &Ctx, cmd: SelfRepairCmd) -> Result<ExitCode> {
    let SelfRepairCmd::Check = cmd;
    let node = Node::open(ctx.home.clone())?;
    // The live binary is the one supervision names; before an install, this one.
    let live = match supervise::status(&node).ok().and_then(|s| s.state.binary) {
        Some(b) => b,
        None => std::env::current_exe().context("cannot find the running binary")?,
    };
    let lkg_path = netsky_launchd::lkg_path(node.home.root());
    let shim = netsky_launchd::shim_path(node.home.root());
    let shim_current = supervise::shim_current(&node.home);
    // Ask the shim's own rules, not a copy of them: the embedded text when the home has none.
    let out = crate::proc::run_bounded(
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(netsky_launchd::SHIM)
            .arg("netsky-shim")
            .arg(&live)
            .arg(node.home.root())
            .arg("--which"),
        Duration::from_secs(30),
    )?;
    let (would_run, fallback) = if out.status.success() {
        let c = netsky_launchd::parse_which(&String::from_utf8_lossy(&out.stdout))?;
        (Some(c.binary), c.fallback)
    } else {
        (None, Some(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    };
    let report = Report {
        live: lkg::probe(&live),
        lkg: lkg::probe(&lkg_path),
        shim,
        shim_current,
        would_run,
        fallback,
    };
    emit(ctx, &report, || {
        let p = |x: &lkg::Probe| {
            format!(
                "{} ({})",
                x.path.display(),
                if x.healthy { x.detail.clone() } else { format!("BROKEN: {}", x.detail) }
            )
        };
        let mut s = format!("live binary: {}\nlast known good: {}\n", p(&report.live), p(&report.lkg));
        match (&report.would_run, &report.fallback) {
            (Some(b), None) => s.push_str(&format!("the shim would run the live binary {}", b.display())),
            (Some(b), Some(why)) => {
                s.push_str(&format!("the shim would fall back to {}: {why}", b.display()))
            }
            (None, why) => {
                s.push_str(&format!("the shim would run NOTHING: {}", why.as_deref().unwrap_or("")))
            }
        }
        if !report.shim_current {
            s.push_str(&format!(
                "\n{} is absent or out of date: `netsky launchd|systemd install` writes it",
                report.shim.display()
            ));
        }
        s
    })?;
    Ok(if report.would_run.is_some() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
