//! How a netsky node is kept running: the launchd agent plist (macOS), the
//! systemd user unit (Linux), and the shim both of them run, which falls
//! back to the last known good binary when the live one is broken.
//!
//! Everything here is pure: it makes and reads the files. Writing them into
//! place and talking to `launchctl` or `systemctl` is the binary's job.

mod agent_plist;
mod error;
mod shim;
mod unit;

use std::path::{Path, PathBuf};

pub use agent_plist::{LaunchAgent, launch_agent, read_launch_agent};
pub use error::Error;
pub use shim::{SHIM, SHIM_BROKEN_EXIT, ShimChoice, parse_which};
pub use unit::{read_exec_start, systemd_quote, systemd_unit, systemd_unquote};

/// What is supervised: one node's daemon, run through its home's shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervised {
    /// The node's name: supervision is per home, so the label carries it.
    pub node: String,
    /// The live `netsky` binary the shim runs first.
    pub binary: PathBuf,
    /// The node's home (NETSKY_HOME).
    pub home: PathBuf,
    /// PATH for the daemon, so it finds tmux and git.
    pub path: String,
}

impl Supervised {
    /// The shim in the home: `bin/netsky-shim`.
    pub fn shim(&self) -> PathBuf {
        shim_path(&self.home)
    }

    /// The last known good binary: `bin/netsky.lkg`.
    pub fn lkg(&self) -> PathBuf {
        lkg_path(&self.home)
    }

    /// The daemon's stdout and stderr under launchd (systemd keeps them in the journal).
    pub fn log_paths(&self) -> (PathBuf, PathBuf) {
        let logs = self.home.join("logs");
        (logs.join("daemon.out.log"), logs.join("daemon.err.log"))
    }

    /// What the supervisor runs: the shim, through `/bin/sh` so a home on a
    /// `noexec` mount still works, with the live binary and the home.
    pub fn program_arguments(&self) -> Vec<String> {
        vec![
            "/bin/sh".into(),
            self.shim().to_string_lossy().into_owned(),
            self.binary.to_string_lossy().into_owned(),
            self.home.to_string_lossy().into_owned(),
        ]
    }

    /// The launchd label: one per node, so two homes on one Mac are two agents.
    pub fn launchd_label(&self) -> String {
        format!("dev.netsky.node.{}", self.node)
    }

    /// The systemd user unit's file name.
    pub fn systemd_unit_name(&self) -> String {
        format!("netsky-{}.service", self.node)
    }
}

/// The shim of a home.
pub fn shim_path(home: &Path) -> PathBuf {
    home.join("bin").join("netsky-shim")
}

/// The last known good binary of a home.
pub fn lkg_path(home: &Path) -> PathBuf {
    home.join("bin").join("netsky.lkg")
}
