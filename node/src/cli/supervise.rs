//! `netsky launchd` and `netsky systemd`: install, uninstall, status and
//! print of the supervisor that keeps the daemon running (see `supervise`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::node::Node;
use crate::output::{Ctx, emit};
use crate::supervise::{self, Install, Uninstall};

/// The verbs of both supervisors.
#[derive(Debug, Subcommand)]
pub enum SuperviseCmd {
    /// Write the shim and the supervisor's file, then load it (idempotent).
    Install,
    /// Stop the daemon under the supervisor and remove its file.
    Uninstall,
    /// The installed file against what install would write, and whether it is loaded.
    Status,
    /// Print the file install would write.
    Print,
}

/// Which supervisor.
#[derive(Debug, Clone, Copy)]
pub enum Supervisor {
    /// macOS.
    Launchd,
    /// Linux.
    Systemd,
}

/// Runs `netsky launchd|systemd VERB`.
pub fn run(ctx: &Ctx, which: Supervisor, cmd: SuperviseCmd) -> Result<ExitCode> {
    use Supervisor::*;
    let node = Node::open(ctx.home.clone())?;
    match cmd {
        SuperviseCmd::Print => {
            let bytes = match which {
                Launchd => supervise::launchd::print(&node)?,
                Systemd => supervise::systemd::print(&node)?.into_bytes(),
            };
            std::io::stdout().write_all(&bytes)?;
        }
        SuperviseCmd::Install => {
            let done = match which {
                Launchd => supervise::launchd::install(&node)?,
                Systemd => supervise::systemd::install(&node)?,
            };
            emit(ctx, &done, || install_text(&done))?;
        }
        SuperviseCmd::Uninstall => {
            let done = match which {
                Launchd => supervise::launchd::uninstall(&node)?,
                Systemd => supervise::systemd::uninstall(&node)?,
            };
            emit(ctx, &done, || uninstall_text(&done))?;
        }
        SuperviseCmd::Status => {
            let st = match which {
                Launchd => supervise::launchd::status(&node)?,
                Systemd => supervise::systemd::status(&node)?,
            };
            emit(ctx, &st, || st.text())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn commands(s: &mut String, ran: &[String], todo: &[String]) {
    for r in ran {
        s.push_str(&format!("\n  ran: {r}"));
    }
    if !todo.is_empty() {
        s.push_str("\n  no user service manager answers here; run:");
        for t in todo {
            s.push_str(&format!("\n    {t}"));
        }
    }
}

fn install_text(d: &Install) -> String {
    let what = if d.written { "written" } else { "already current" };
    let mut s = format!(
        "{}: {} {what}; shim {} ({}); it runs {} (falling back to bin/netsky.lkg)",
        d.supervisor,
        d.file.display(),
        d.shim.display(),
        if d.shim_written { "written" } else { "current" },
        d.binary.display(),
    );
    commands(&mut s, &d.ran, &d.todo);
    s
}

fn uninstall_text(d: &Uninstall) -> String {
    let mut s = if d.removed {
        format!("{}: removed {}", d.supervisor, d.file.display())
    } else {
        format!("{}: not installed ({} does not exist); nothing to do", d.supervisor, d.file.display())
    };
    commands(&mut s, &d.ran, &d.todo);
    s
}
