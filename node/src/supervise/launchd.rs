//! `netsky launchd`: the node's launch agent on macOS, loaded into the
//! user's GUI domain with `launchctl bootstrap gui/<uid>`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use netsky_launchd::{LaunchAgent, Supervised, launch_agent, read_launch_agent};

use super::{
    FileState, Install, Status, Uninstall, manager, remove_if_there, shown, user_home, write_if_changed,
};
use crate::node::Node;

/// Refuses the verbs that need launchctl where there is none.
fn macos_only(verb: &str) -> Result<()> {
    if !cfg!(target_os = "macos") {
        bail!(
            "`netsky launchd {verb}` is for macOS; on Linux use `netsky systemd {verb}` (`netsky launchd print` works anywhere)"
        );
    }
    Ok(())
}

/// `~/Library/LaunchAgents/<label>.plist`.
fn plist_path(s: &Supervised) -> Result<PathBuf> {
    Ok(user_home()?.join("Library/LaunchAgents").join(format!("{}.plist", s.launchd_label())))
}

/// The GUI domain of this user, where launch agents run.
fn domain() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    format!("gui/{}", unsafe { libc::getuid() })
}

/// The plist this netsky would install for `node`.
pub fn print(node: &Node) -> Result<Vec<u8>> {
    Ok(launch_agent(&super::supervised(node)?).to_xml()?)
}

/// The binary an installed plist names.
fn binary_of(bytes: &[u8]) -> Option<PathBuf> {
    read_launch_agent(bytes).ok().and_then(|a| a.binary().map(PathBuf::from))
}

/// Whether launchd has the agent loaded (`launchctl print` knows it).
fn loaded(s: &Supervised) -> Result<bool> {
    let target = format!("{}/{}", domain(), s.launchd_label());
    Ok(manager(&["launchctl", "print", &target])?.0)
}

/// Writes the shim and the plist, then (re)loads the agent. Idempotent.
pub fn install(node: &Node) -> Result<Install> {
    macos_only("install")?;
    let s = super::supervised(node)?;
    let shim_written = super::write_shim(&node.home)?;
    let agent: LaunchAgent = launch_agent(&s);
    let file = plist_path(&s)?;
    let written = write_if_changed(&file, &agent.to_xml()?)?;
    let mut ran = Vec::new();
    let (dom, label) = (domain(), s.launchd_label());
    let target = format!("{dom}/{label}");
    let is_loaded = loaded(&s)?;
    if written || shim_written || !is_loaded {
        if is_loaded {
            // A changed plist is read only at bootstrap: out with the old one first.
            let argv = ["launchctl", "bootout", &target];
            let _ = manager(&argv)?;
            ran.push(shown(&argv));
        }
        let path = file.to_string_lossy().into_owned();
        let argv = ["launchctl", "bootstrap", &dom, &path];
        let (ok, out) = manager(&argv)?;
        ran.push(shown(&argv));
        if !ok {
            bail!("launchctl bootstrap failed: {out}");
        }
    }
    Ok(Install {
        supervisor: "launchd",
        file,
        shim: s.shim(),
        binary: s.binary,
        written,
        shim_written,
        ran,
        todo: vec![],
    })
}

/// Unloads the agent and removes its plist; says so when nothing was installed.
pub fn uninstall(node: &Node) -> Result<Uninstall> {
    macos_only("uninstall")?;
    let s = super::supervised(node)?;
    let file = plist_path(&s)?;
    let mut ran = Vec::new();
    if loaded(&s)? {
        let target = format!("{}/{}", domain(), s.launchd_label());
        let argv = ["launchctl", "bootout", &target];
        let (ok, out) = manager(&argv)?;
        ran.push(shown(&argv));
        if !ok {
            bail!("launchctl bootout failed: {out}");
        }
    }
    let removed = remove_if_there(&file)?;
    Ok(Uninstall { supervisor: "launchd", file, removed, ran, todo: vec![] })
}

/// The installed plist against what install would write, and whether launchd has it loaded.
pub fn status(node: &Node) -> Result<Status> {
    let s = super::supervised(node)?;
    let make = |x: &Supervised| Ok(launch_agent(x).to_xml()?);
    let state = FileState::read(&s, plist_path(&s)?, make, binary_of)?;
    let loaded = if cfg!(target_os = "macos") { Some(loaded(&s)?) } else { None };
    Ok(Status::of("launchd", &s, state, loaded))
}
