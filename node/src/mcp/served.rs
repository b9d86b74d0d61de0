//! One deliverer per mailbox: the lock an MCP server holds on the agent it
//! serves, for as long as it runs.
//!
//! `channels/agent/<agent>/.mcp.lock` is taken (flock, no wait) when
//! `netsky mcp serve` starts and dies with the process, so a kill -9 never
//! leaves it behind. Beside it `.mcp-served.json` says who holds it and
//! since when; it is only a description, the lock is the truth. The pane
//! ticker and `channel drain` leave a served mailbox alone, and a second
//! server for the same agent is refused.

use std::path::PathBuf;
use std::time::Duration;

use netsky_bus::{AgentName, FileLock, Layout};
use serde::{Deserialize, Serialize};

/// Who serves a mailbox, as `.mcp-served.json` says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Served {
    /// The server's process id.
    pub pid: u32,
    /// When it began serving (canonical UTC timestamp).
    pub since: String,
    /// `off` or `relay`.
    pub permissions: String,
}

/// Why a mailbox could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another server holds the lock.
    #[error(
        "{agent} is already served by another `netsky mcp serve`{}; one deliverer per mailbox (stop that one first)",
        .by.as_ref().map(|s| format!(" (pid {}, since {})", s.pid, s.since)).unwrap_or_default()
    )]
    Busy {
        /// The agent.
        agent: AgentName,
        /// Who holds it, when its record could be read.
        by: Option<Served>,
    },
    /// The lock or its record could not be written.
    #[error("cannot take {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The held lock; released on drop (or when the process dies).
#[derive(Debug)]
pub struct ServeLock {
    _lock: FileLock,
    record: PathBuf,
}

impl Drop for ServeLock {
    fn drop(&mut self) {
        // The record describes a holder that is gone; the lock is what counts either way.
        let _ = std::fs::remove_file(&self.record);
    }
}

fn lock_path(layout: &Layout, agent: AgentName) -> PathBuf {
    layout.mailbox_dir(agent).join(".mcp.lock")
}

fn record_path(layout: &Layout, agent: AgentName) -> PathBuf {
    layout.mailbox_dir(agent).join(".mcp-served.json")
}

/// How long `take` waits for the lock: enough to ride out another process's
/// probe of it (`is_served` takes it shared for an instant) and a predecessor
/// that is still shutting down; a server that really holds it is still refused.
const TAKE_WAIT: Duration = Duration::from_secs(2);

/// Takes `agent`'s serve lock (waiting [`TAKE_WAIT`] at most) or says who holds it.
pub fn take(layout: &Layout, agent: AgentName, me: &Served) -> Result<ServeLock, ServeError> {
    let dir = layout.mailbox_dir(agent);
    std::fs::create_dir_all(&dir).map_err(|source| ServeError::Io { path: dir.clone(), source })?;
    let path = lock_path(layout, agent);
    let lock = netsky_bus::lock_file(&path, TAKE_WAIT)
        .map_err(|source| ServeError::Io { path: path.clone(), source })?;
    let Some(lock) = lock else {
        return Err(ServeError::Busy { agent, by: read(layout, agent) });
    };
    let record = record_path(layout, agent);
    let bytes =
        serde_json::to_vec(me).map_err(|e| ServeError::Io { path: record.clone(), source: e.into() })?;
    std::fs::write(&record, bytes).map_err(|source| ServeError::Io { path: record.clone(), source })?;
    Ok(ServeLock { _lock: lock, record })
}

/// Whether a server holds `agent`'s mailbox right now.
pub fn is_served(layout: &Layout, agent: AgentName) -> bool {
    netsky_bus::is_locked(&lock_path(layout, agent))
}

/// Who serves `agent`'s mailbox right now, if anyone.
pub fn served(layout: &Layout, agent: AgentName) -> Option<Served> {
    if !is_served(layout, agent) {
        return None;
    }
    // A holder whose record is unreadable still holds it.
    Some(read(layout, agent).unwrap_or(Served { pid: 0, since: String::new(), permissions: String::new() }))
}

fn read(layout: &Layout, agent: AgentName) -> Option<Served> {
    let bytes = crate::home::read_bounded(&record_path(layout, agent), 4096).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_server_is_refused_with_who_holds_it_and_the_lock_dies_with_its_holder() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path());
        let agent: AgentName = "agent3".parse().unwrap();
        let me = Served { pid: 42, since: "2026-12-05T10:00:00.000Z".into(), permissions: "off".into() };
        assert!(!is_served(&layout, agent));
        let held = take(&layout, agent, &me).unwrap();
        assert!(is_served(&layout, agent));
        assert_eq!(served(&layout, agent), Some(me.clone()));
        let err = take(&layout, agent, &me).unwrap_err().to_string();
        assert!(err.contains("agent3 is already served") && err.contains("pid 42"), "{err}");
        drop(held);
        assert!(!is_served(&layout, agent));
        assert_eq!(served(&layout, agent), None);
        take(&layout, agent, &me).unwrap();
    }
}
