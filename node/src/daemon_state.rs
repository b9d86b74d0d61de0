//! `state/node.json` and the daemon lock: is a daemon running for this home,
//! with which pid and addresses.
//!
//! The daemon holds an exclusive flock on `state/.daemon.lock` for its whole
//! life, so "running" is a fact the kernel keeps (a kill -9 releases it),
//! not a pid that may have been reused.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::home::Home;

/// What the daemon writes to `state/node.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonState {
    /// The daemon's pid.
    pub pid: u32,
    /// Whether it is running (false after a clean stop).
    pub running: bool,
    /// This node's name.
    pub name: String,
    /// Its node id.
    pub node_id: String,
    /// Its dialable direct addresses.
    pub addrs: Vec<SocketAddr>,
    /// When it started.
    pub started: String,
    /// The netsky version it runs.
    pub version: String,
}

/// The held daemon lock; released when dropped (or when the process dies).
pub struct DaemonLock {
    _lock: netsky_bus::FileLock,
}

/// Takes the daemon lock, or says which daemon holds it.
pub fn acquire(home: &Home) -> Result<DaemonLock> {
    let p = home.daemon_lock_path();
    std::fs::create_dir_all(home.state_dir())?;
    // A short wait: `is_running` probes the lock for an instant, and a
    // daemon starting at that instant must not take the probe for a rival.
    match netsky_bus::lock_file(&p, Duration::from_secs(1))
        .with_context(|| format!("lock {}", p.display()))?
    {
        Some(l) => Ok(DaemonLock { _lock: l }),
        None => {
            let pid = read(home).map(|s| s.pid.to_string()).unwrap_or_else(|| "?".into());
            bail!("a netsky daemon already runs for {} (pid {pid}); stop it first", home.root().display())
        }
    }
}

/// Whether a daemon holds the lock of this home right now.
pub fn is_running(home: &Home) -> bool {
    netsky_bus::is_locked(&home.daemon_lock_path())
}

/// The last `state/node.json` written, if any (running or not).
pub fn read(home: &Home) -> Option<DaemonState> {
    let bytes = std::fs::read(home.node_state_path()).ok()?;
    if bytes.len() > 64 * 1024 {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// The running daemon's state, if one runs.
pub fn running(home: &Home) -> Option<DaemonState> {
    if !is_running(home) {
        return None;
    }
    read(home).filter(|s| s.running)
}

/// Writes `state/node.json` durably.
pub fn write(home: &Home, s: &DaemonState) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(s)?;
    json.push(b'\n');
    crate::home::write_durable(&home.node_state_path(), &json)?;
    Ok(())
}
