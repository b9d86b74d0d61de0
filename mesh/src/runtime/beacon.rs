//! Health beacons: a member sends its signed beacon to the root, which
//! answers with the mesh view; the root takes its own without the network.

use super::{CONNECT_TIMEOUT, Mesh};
use crate::MeshError;
use crate::endpoint::dial_addr;
use crate::wire::{ALPN_MESH, FRAME_TIMEOUT, Frame, request};

impl Mesh {
    /// Sends `signed` (this node's beacon) to the charter's root and returns
    /// the mesh view it answers with (JSON). On the root itself the beacon
    /// goes straight to its own sink. A beacon is news, not mail: one that
    /// cannot be delivered is reported, never retried.
    pub async fn beacon_to_root(&self, signed: Vec<u8>) -> Result<Vec<u8>, MeshError> {
        let s = &self.shared;
        let charter =
            s.charter().ok_or_else(|| MeshError::Charter("no charter: this node is in no mesh".into()))?;
        let root = charter
            .charter
            .root_member()
            .cloned()
            .ok_or_else(|| MeshError::Charter("the charter names no root member".into()))?;
        let peer = root.name.to_string();
        if root.name == s.name {
            let take = s.beacons.clone().ok_or_else(|| MeshError::Protocol {
                peer: peer.clone(),
                reason: "this root takes no beacons".into(),
            })?;
            let (name, id) = (s.name.to_string(), s.key.public());
            return super::off_async(move || take(&name, id, &signed))
                .await
                .map_err(|reason| MeshError::Protocol { peer: peer.clone(), reason })?
                .map_err(|reason| MeshError::Protocol { peer, reason });
        }
        let addr = dial_addr(root.node_id, &root.addrs, &s.relay, s.mdns).ok_or_else(|| {
            MeshError::Connect { peer: peer.clone(), reason: "no known address for the root".into() }
        })?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, s.endpoint.connect(addr, ALPN_MESH))
            .await
            .map_err(|_| MeshError::Connect { peer: peer.clone(), reason: "no answer within 5 s".into() })?
            .map_err(|e| MeshError::Connect { peer: peer.clone(), reason: e.to_string() })?;
        let resp = request(&conn, &Frame::Beacon { signed }, FRAME_TIMEOUT, &peer).await;
        conn.close(0u32.into(), b"beacon");
        match resp? {
            Frame::Answer { json } => Ok(json),
            Frame::Refused { reason } => Err(MeshError::Protocol { peer, reason }),
            other => Err(MeshError::Protocol { peer, reason: format!("unexpected answer {other:?}") }),
        }
    }
}
