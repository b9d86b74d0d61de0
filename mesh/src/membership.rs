//! Membership enforced at the door: after the TLS handshake, before any
//! application byte, a connection on the mesh protocol is accepted only from
//! a current member of the charter. The join protocol is open to anyone: it
//! only redeems tickets.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use iroh::endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks};
use netsky_keys::NodeId;

use crate::MeshEvent;
use crate::wire::ALPN_JOIN;

/// The set of node ids allowed on the mesh protocol, updated with each charter.
#[derive(Debug, Clone, Default)]
pub struct Allowlist(Arc<RwLock<HashSet<NodeId>>>);

impl Allowlist {
    /// Replaces the set.
    pub fn set(&self, ids: impl IntoIterator<Item = NodeId>) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        *g = ids.into_iter().collect();
    }
    /// Whether `id` may speak the mesh protocol.
    pub fn allows(&self, id: &NodeId) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(id)
    }
}

/// The endpoint hook that applies the allowlist.
pub(crate) struct Door {
    pub allow: Allowlist,
    pub events: crate::EventSink,
    /// When each refused id was last reported: node ids cost a stranger
    /// nothing, so evidence is kept to one event per id a minute.
    pub reported: std::sync::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>,
}

impl Door {
    /// Whether a refusal of `id` should become an event now.
    fn report(&self, id: NodeId) -> bool {
        let mut g = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let minute = std::time::Duration::from_secs(60);
        if g.len() > 4096 {
            g.retain(|_, t| t.elapsed() < minute);
        }
        match g.get(&id) {
            Some(t) if t.elapsed() < minute => false,
            _ => {
                g.insert(id, std::time::Instant::now());
                g.len() <= 4096
            }
        }
    }
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Door")
    }
}

impl EndpointHooks for Door {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        let id = conn.remote_id();
        if conn.alpn() == ALPN_JOIN || self.allow.allows(&id) {
            return AfterHandshakeOutcome::Accept;
        }
        if self.report(id) {
            (self.events)(MeshEvent::ConnectionRefused {
                peer: id.to_string(),
                reason: "not a member".into(),
            });
        }
        AfterHandshakeOutcome::Reject {
            error_code: 403u32.into(),
            reason: b"not a member of this mesh".to_vec(),
        }
    }
}
