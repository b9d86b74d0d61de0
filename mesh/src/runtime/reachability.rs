//! Which peers answered the last time their sender tried, kept in memory and
//! written to `state/peers.json` for `netsky status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use netsky_bus::NodeName;
use tracing::warn;

use super::{Shared, lock, now_ts};
use crate::{MeshEvent, MeshPaths};

/// Reachability of one peer, as written to `state/peers.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PeerState {
    /// Whether the last attempt worked.
    pub reachable: bool,
    /// Since when it has been in this state.
    pub since: String,
    /// The last error, if unreachable.
    pub last_error: Option<String>,
}

impl PeerState {
    /// The reachability of every peer as last written to `state/peers.json`
    /// (empty when there is none, or it is unreadable or oversized).
    pub fn load_all(paths: &MeshPaths) -> HashMap<String, PeerState> {
        std::fs::read(paths.peers_state())
            .ok()
            .filter(|b| b.len() < 1024 * 1024)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

/// Every peer's state, and the order its snapshots are written in.
#[derive(Default)]
pub(super) struct Reachability {
    states: Mutex<HashMap<String, PeerState>>,
    /// The number of the snapshot written last; held while writing, so
    /// writes of `state/peers.json` never overlap.
    written: Mutex<u64>,
    /// The number of the snapshot taken last.
    taken: AtomicU64,
}

impl Shared {
    /// Whether the last attempt to reach `name` worked.
    pub(super) fn known_reachable(&self, name: &NodeName) -> bool {
        lock(&self.reachability.states).get(name.as_str()).is_some_and(|s| s.reachable)
    }

    /// Records whether `name` answered; on a change, writes the snapshot and reports it.
    pub(super) fn set_peer_state(self: &Arc<Self>, name: &NodeName, reachable: bool, error: Option<String>) {
        let mut states = lock(&self.reachability.states);
        let changed = states.get(name.as_str()).is_none_or(|s| s.reachable != reachable);
        if !changed {
            return;
        }
        let st = PeerState { reachable, since: now_ts(), last_error: error.clone() };
        states.insert(name.to_string(), st);
        let json = serde_json::to_vec_pretty(&*states).unwrap_or_default();
        let seq = self.reachability.taken.fetch_add(1, Ordering::AcqRel) + 1;
        drop(states);
        let s = self.clone();
        // Off the async threads (it fsyncs); a snapshot older than one written already is skipped.
        self.spawn(async move {
            let _ = tokio::task::spawn_blocking(move || {
                let mut written = lock(&s.reachability.written);
                if seq <= *written {
                    return;
                }
                match netsky_bus::write_durable(&s.paths.home().join("state"), "peers.json", &json) {
                    Ok(_) => *written = seq,
                    Err(e) => warn!(error = %e, "cannot write state/peers.json"),
                }
            })
            .await;
        });
        self.emit(if reachable {
            MeshEvent::PeerReachable { name: name.to_string() }
        } else {
            MeshEvent::PeerUnreachable { name: name.to_string(), error: error.unwrap_or_default() }
        });
    }
}
