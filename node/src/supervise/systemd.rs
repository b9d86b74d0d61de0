//! `netsky systemd`: the node's systemd user unit on Linux, enabled and
//! started with `systemctl --user` where a user manager runs, and otherwise
//! written with the commands to run printed.

use std::path::PathBuf;

use anyhow::{Result, bail};
use netsky_launchd::{Supervised, read_exec_start, systemd_unit};

use super::{
    FileState, Install, Status, Uninstall, manager, remove_if_there, shown, user_home, write_if_changed,
};
use crate::node::Node;

fn linux_only(verb: &str) -> Result<()> {
    if cfg!(target_os = "macos") {
        bail!(
            "`netsky systemd {verb}` is for Linux; on macOS use `netsky launchd {verb}` (`netsky systemd print` works anywhere)"
        );
    }
    Ok(())
}

/// `$XDG_CONFIG_HOME/systemd/user/<unit>`, else `~/.config/systemd/user/<unit>`.
fn unit_path(s: &Supervised) -> Result<PathBuf> {
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => user_home()?.join(".config"),
    };
    Ok(config.join("systemd/user").join(s.systemd_unit_name()))
}

/// The unit this netsky would install for `node`.
pub fn print(node: &Node) -> Result<String> {
    Ok(systemd_unit(&super::supervised(node)?))
}

/// Whether a user manager answers (`systemctl --user` works here).
fn user_manager() -> bool {
    manager(&["systemctl", "--user", "show-environment"]).is_ok_and(|(ok, _)| ok)
}

fn binary_of(bytes: &[u8]) -> Option<PathBuf> {
    read_exec_start(&String::from_utf8_lossy(bytes)).ok().and_then(|argv| argv.get(2).map(PathBuf::from))
}

/// Runs `systemctl --user ARGS`, failing with its output.
fn systemctl(args: &[&str], ran: &mut Vec<String>) -> Result<()> {
    let mut argv = vec!["systemctl", "--user"];
    argv.extend_from_slice(args);
    let (ok, out) = manager(&argv)?;
    ran.push(shown(&argv));
    if !ok {
        bail!("{} failed: {out}", shown(&argv));
    }
    Ok(())
}

/// Writes the shim and the unit, then enables and starts it (or says how). Idempotent.
pub fn install(node: &Node) -> Result<Install> {
    linux_only("install")?;
    let s = super::supervised(node)?;
    let shim_written = super::write_shim(&node.home)?;
    let file = unit_path(&s)?;
    let written = write_if_changed(&file, systemd_unit(&s).as_bytes())?;
    let unit = s.systemd_unit_name();
    let (mut ran, mut todo) = (Vec::new(), Vec::new());
    if user_manager() {
        if written {
            systemctl(&["daemon-reload"], &mut ran)?;
        }
        systemctl(&["enable", "--now", &unit], &mut ran)?;
        if written || shim_written {
            // Already running from the old unit or shim: start it from the new ones.
            systemctl(&["restart", &unit], &mut ran)?;
        }
    } else {
        todo.push(format!("systemctl --user daemon-reload && systemctl --user enable --now {unit}"));
        todo.push("loginctl enable-linger \"$USER\"   # to run without a login session".to_string());
    }
    Ok(Install {
        supervisor: "systemd",
        file,
        shim: s.shim(),
        binary: s.binary,
        written,
        shim_written,
        ran,
        todo,
    })
}

/// Stops and disables the unit and removes it; says so when nothing was installed.
pub fn uninstall(node: &Node) -> Result<Uninstall> {
    linux_only("uninstall")?;
    let s = super::supervised(node)?;
    let file = unit_path(&s)?;
    let unit = s.systemd_unit_name();
    let (mut ran, mut todo) = (Vec::new(), Vec::new());
    let there = file.exists();
    if there && user_manager() {
        systemctl(&["disable", "--now", &unit], &mut ran)?;
    } else if there {
        todo.push(format!("systemctl --user disable --now {unit}"));
    }
    let removed = remove_if_there(&file)?;
    if removed && user_manager() {
        systemctl(&["daemon-reload"], &mut ran)?;
    }
    Ok(Uninstall { supervisor: "systemd", file, removed, ran, todo })
}

/// The installed unit against what install would write, and whether it is active.
pub fn status(node: &Node) -> Result<Status> {
    let s = super::supervised(node)?;
    let make = |x: &Supervised| Ok(systemd_unit(x).into_bytes());
    let state = FileState::read(&s, unit_path(&s)?, make, binary_of)?;
    let loaded = if user_manager() {
        Some(manager(&["systemctl", "--user", "is-active", &s.systemd_unit_name()])?.0)
    } else {
        None
    };
    Ok(Status::of("systemd", &s, state, loaded))
}
