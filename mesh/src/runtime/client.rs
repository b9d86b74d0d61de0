//! The one-off calls of the command line, each from a short-lived endpoint
//! with the node key: `join` redeems a ticket, `handover` hands the root role on,
//! `ask` asks a question, `beacon` sends a beacon (`node sleep`).

use std::net::SocketAddr;

use netsky_bus::NodeName;
use netsky_keys::SecretKey;

use super::CONNECT_TIMEOUT;
use crate::MeshError;
use crate::charter::{CharterMember, SignedCharter};
use crate::endpoint::{Relay, dial_addr};
use crate::wire::{
    ALPN_JOIN, ALPN_MESH, FRAME_TIMEOUT, Frame, JoinRequest, JoinResponse, MAX_FRAME, read_frame, request,
    write_frame,
};

/// Hands the root role to `target`: sends it the mesh key and the charter
/// that names it root, over a connection authenticated to its node id.
pub async fn handover(
    key: &SecretKey,
    target: &CharterMember,
    mesh_key: &SecretKey,
    charter: &SignedCharter,
    relay: &Relay,
    mdns: bool,
) -> Result<(), MeshError> {
    let peer = target.name.to_string();
    let frame = Frame::Handover { mesh_key: mesh_key.to_bytes().to_vec(), charter: charter.to_json() };
    match one_off(key, target, frame, relay, mdns).await? {
        Frame::Ok { .. } => Ok(()),
        Frame::Refused { reason } => {
            Err(MeshError::Charter(format!("{peer} refused the handover: {reason}")))
        }
        other => Err(MeshError::Protocol { peer, reason: format!("unexpected answer {other:?}") }),
    }
}

/// Asks member `target` a question (`incidents`) its owner side answers; returns the JSON answer.
pub async fn ask(
    key: &SecretKey,
    target: &CharterMember,
    what: &str,
    relay: &Relay,
    mdns: bool,
) -> Result<Vec<u8>, MeshError> {
    answer_of(one_off(key, target, Frame::Query { what: what.to_string() }, relay, mdns).await?, target)
}

/// Sends a signed beacon to the root `target` from a one-off endpoint (`node sleep`);
/// returns the mesh view it answers with.
pub async fn beacon(
    key: &SecretKey,
    target: &CharterMember,
    signed: Vec<u8>,
    relay: &Relay,
    mdns: bool,
) -> Result<Vec<u8>, MeshError> {
    answer_of(one_off(key, target, Frame::Beacon { signed }, relay, mdns).await?, target)
}

fn answer_of(resp: Frame, target: &CharterMember) -> Result<Vec<u8>, MeshError> {
    let peer = target.name.to_string();
    match resp {
        Frame::Answer { json } => Ok(json),
        Frame::Refused { reason } => Err(MeshError::Protocol { peer, reason }),
        other => Err(MeshError::Protocol { peer, reason: format!("unexpected answer {other:?}") }),
    }
}

/// One request to member `target` over a connection of its own, from a
/// short-lived endpoint with the node key; returns its answer.
async fn one_off(
    key: &SecretKey,
    target: &CharterMember,
    frame: Frame,
    relay: &Relay,
    mdns: bool,
) -> Result<Frame, MeshError> {
    let peer = target.name.to_string();
    let Some(addr) = dial_addr(target.node_id, &target.addrs, relay, mdns) else {
        return Err(MeshError::Connect { peer, reason: "no known address (is its daemon running?)".into() });
    };
    let ep = crate::endpoint::bind_client(key, relay, mdns).await?;
    let res = async {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, ep.connect(addr, ALPN_MESH))
            .await
            .map_err(|_| MeshError::Connect { peer: peer.clone(), reason: "no answer within 5 s".into() })?
            .map_err(|e| MeshError::Connect { peer: peer.clone(), reason: e.to_string() })?;
        let resp = request(&conn, &frame, FRAME_TIMEOUT, &peer).await;
        conn.close(0u32.into(), b"done");
        resp
    }
    .await;
    ep.close().await;
    res
}

/// Joins a mesh with `ticket`, from a one-off endpoint with the node key.
///
/// Returns the charter that names this node, verified against the ticket's
/// mesh key; the caller stores it.
pub async fn join(
    key: &SecretKey,
    name: &NodeName,
    ticket: &crate::Ticket,
    addrs: Vec<SocketAddr>,
    relay: &Relay,
    mdns: bool,
) -> Result<SignedCharter, MeshError> {
    let Some(addr) = dial_addr(ticket.body.root, &ticket.body.root_addrs, relay, mdns) else {
        return Err(MeshError::Connect {
            peer: "root".into(),
            reason: "the ticket holds no address for the root, and this node has no relay or mDNS to find it"
                .into(),
        });
    };
    let ep = crate::endpoint::bind_client(key, relay, mdns).await?;
    let res = async {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, ep.connect(addr, ALPN_JOIN))
            .await
            .map_err(|_| MeshError::Connect {
                peer: "root".into(),
                reason: "no answer within 10 s (is its daemon running?)".into(),
            })?
            .map_err(|e| MeshError::Connect { peer: "root".into(), reason: e.to_string() })?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| MeshError::Connect { peer: "root".into(), reason: e.to_string() })?;
        let req = JoinRequest { ticket: ticket.encode(), name: name.to_string(), addrs };
        write_frame(&mut send, &req, "root").await?;
        let resp: JoinResponse = read_frame(&mut recv, MAX_FRAME, FRAME_TIMEOUT, "root").await?;
        conn.close(0u32.into(), b"done");
        match resp {
            JoinResponse::Refused { reason } => Err(MeshError::Ticket(format!("the root refused: {reason}"))),
            JoinResponse::Joined { charter } => {
                let c = SignedCharter::from_json(&charter)?;
                c.verify()?;
                if c.charter.mesh_key != ticket.body.mesh_key {
                    return Err(MeshError::Charter(
                        "the root answered with a charter of another mesh key".into(),
                    ));
                }
                if c.charter.member(name).map(|m| m.node_id) != Some(key.public()) {
                    return Err(MeshError::Charter("the charter received does not name this node".into()));
                }
                Ok(c)
            }
        }
    }
    .await;
    ep.close().await;
    res
}
