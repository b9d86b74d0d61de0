//! Two real daemons on loopback for the benches that time whole paths:
//! `studio`, the root, and `laptop`, a member joined by ticket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::proc::{Daemon, run_bounded};

/// The two nodes, their daemons stopped when dropped.
pub struct Pair {
    exe: PathBuf,
    base: PathBuf,
    wait: Duration,
    daemons: Vec<Daemon>,
}

impl Pair {
    /// Makes both homes in `base`, lets `setup` change them before the mesh
    /// is made (the owner bench gives `studio` a file leg), makes the mesh and
    /// starts both daemons. Each command may take `wait`.
    pub fn start(base: &Path, wait: Duration, setup: impl FnOnce(&Path) -> Result<()>) -> Result<Pair> {
        let mut p =
            Pair { exe: std::env::current_exe()?, base: base.to_path_buf(), wait, daemons: Vec::new() };
        for name in ["studio", "laptop"] {
            p.netsky(name, &["init", "--name", name, "--relay", "disabled", "--listen", "127.0.0.1:0"])?;
        }
        setup(base)?;
        p.netsky("studio", &["mesh", "init", "--mesh", "bench"])?;
        p.start_daemon("studio")?;
        let ticket = p.netsky("studio", &["mesh", "invite", "laptop"])?;
        p.netsky("laptop", &["mesh", "join", &ticket])?;
        p.start_daemon("laptop")?;
        Ok(p)
    }

    fn start_daemon(&mut self, name: &str) -> Result<()> {
        let home = self.base.join(name);
        let log = self.base.join(format!("{name}.log"));
        self.daemons.push(Daemon::start(&self.exe, &home, name, &log)?.0);
        Ok(())
    }

    /// `netsky --home <home> args`, bounded; its stdout, trimmed, or its stderr as the error.
    pub fn netsky(&self, home: &str, args: &[&str]) -> Result<String> {
        let o = run_bounded(
            Command::new(&self.exe).arg("--home").arg(self.base.join(home)).args(args),
            self.wait,
        )?;
        if !o.status.success() {
            bail!("netsky {} on {home}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// The running binary, for the benches that start more of it.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Stops both daemons now (SIGTERM, waited for).
    pub fn stop(self) {
        drop(self.daemons);
    }
}
