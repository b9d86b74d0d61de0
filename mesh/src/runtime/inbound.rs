//! The handler for connections from members (ALPN `mesh`): pushes of
//! envelopes, charters, hellos, receipts and the handover of the root role.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use netsky_keys::{NodeId, SecretKey};
use tracing::{Instrument, debug, info_span, warn};

use super::{Shared, SpooledReceipt, lock, off_async};
use crate::charter::{Decision, SignedCharter};
use crate::wire::{FRAME_TIMEOUT, Frame, MAX_BATCH, MAX_FRAME, Receipt, read_frame, write_frame};
use crate::{MeshError, MeshEvent, charter_file, ingest};

/// Answers members' requests, one at a time per connection.
#[derive(Clone)]
pub(super) struct MeshHandler {
    mesh: Arc<Shared>,
    /// Serialises ingests: a retried push racing its first try must not
    /// write the same envelope twice.
    ingest_lock: Arc<Mutex<()>>,
}

impl MeshHandler {
    pub(super) fn new(mesh: Arc<Shared>) -> MeshHandler {
        MeshHandler { mesh, ingest_lock: Arc::new(Mutex::new(())) }
    }
}

impl std::fmt::Debug for MeshHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshHandler")
    }
}

impl ProtocolHandler for MeshHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let s = &self.mesh;
        let remote = conn.remote_id();
        // The door checked already; check again in case the charter changed since.
        if !s.charter.allow.allows(&remote) {
            conn.close(403u32.into(), b"not a member of this mesh");
            return Ok(());
        }
        let member = s.charter().and_then(|c| c.charter.member_by_id(&remote).map(|m| m.name.clone()));
        if let Some(name) = &member {
            s.peer_seen(name);
        }
        let peer = member.map(|n| n.to_string()).unwrap_or_else(|| remote.fmt_short().to_string());
        let span = info_span!("inbound", node = %s.name, peer = %peer);
        async move {
            // One request at a time per connection: a flooding member holds at
            // most one worker, and its pushes stay in order.
            loop {
                let (mut send, mut recv) = tokio::select! {
                    _ = s.cancel.cancelled() => break,
                    r = conn.accept_bi() => match r { Ok(x) => x, Err(_) => break },
                };
                if !s.charter.allow.allows(&remote) {
                    conn.close(403u32.into(), b"revoked");
                    break;
                }
                let req: Frame = match read_frame(&mut recv, MAX_FRAME, FRAME_TIMEOUT, &peer).await {
                    Ok(f) => f,
                    // The peer closed the connection (a shutdown) mid-frame: a normal end.
                    Err(_) if conn.close_reason().is_some() => break,
                    Err(e) => {
                        // The connection ends, not only the stream: a push behind an
                        // unreadable one (two are in flight) must not be stored ahead of it.
                        warn!(error = %e, "bad frame; connection closed");
                        s.emit(MeshEvent::ProtocolError { peer: peer.clone(), reason: e.to_string() });
                        conn.close(2u32.into(), b"unreadable frame");
                        break;
                    }
                };
                let push = matches!(req, Frame::Push { .. });
                let resp = self.handle(remote, &peer, req).await;
                let failed_push = push && matches!(resp, Frame::Refused { .. });
                if let Err(e) = write_frame(&mut send, &resp, &peer).await {
                    debug!(error = %e, "answer not delivered");
                }
                if failed_push {
                    // Pushes behind this one may be waiting on their streams: storing
                    // them now would put them ahead of the envelopes that failed.
                    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                    conn.close(1u32.into(), b"push not stored; retry in order");
                    break;
                }
            }
        }
        .instrument(span)
        .await;
        Ok(())
    }
}

impl MeshHandler {
    /// Handles one request from a member.
    async fn handle(&self, remote: NodeId, peer: &str, req: Frame) -> Frame {
        let mesh = &self.mesh;
        match req {
            Frame::Push { envs } => {
                if envs.len() > MAX_BATCH {
                    return Frame::Refused {
                        reason: format!("{} envelopes in one push (at most {MAX_BATCH})", envs.len()),
                    };
                }
                let (s, ingest_lock) = (mesh.clone(), self.ingest_lock.clone());
                let res = off_async(move || {
                    let _one_at_a_time = lock(&ingest_lock);
                    let roster = s.roster();
                    let receivers =
                        ingest::Receivers { agent_exists: &*s.agent_exists, is_root: s.is_root() };
                    ingest::ingest(&s.layout, &s.name, &roster, &receivers, remote, envs)
                })
                .await;
                match res {
                    Ok(Ok(items)) => {
                        let acks = items.iter().map(|i| i.ack.clone()).collect();
                        for i in items {
                            mesh.emit(MeshEvent::Received { peer: peer.to_string(), item: i });
                        }
                        Frame::Acks { acks }
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "cannot store a push; the sender keeps it and retries");
                        Frame::Refused { reason: format!("receiver cannot store now: {e}") }
                    }
                    Err(e) => Frame::Refused { reason: format!("receiver failed: {e}") },
                }
            }
            Frame::Charter { json } => {
                // Locking and fsyncing the charter file: off the async threads.
                let (s, from) = (mesh.clone(), peer.to_string());
                tokio::task::spawn_blocking(move || s.accept_charter(&json, &from))
                    .await
                    .unwrap_or_else(|e| Frame::Refused { reason: format!("receiver failed: {e}") })
            }
            Frame::Hello { addrs, epoch } => mesh.hello(remote, addrs, epoch).await,
            Frame::Beacon { signed } => match mesh.beacons.clone().filter(|_| mesh.is_root()) {
                None => Frame::Refused {
                    reason: format!("{} is not the root: beacons go to the root", mesh.name),
                },
                Some(take) => {
                    let peer = peer.to_string();
                    match off_async(move || take(&peer, remote, &signed)).await {
                        Ok(Ok(json)) => Frame::Answer { json },
                        Ok(Err(reason)) => Frame::Refused { reason },
                        Err(e) => Frame::Refused { reason: e },
                    }
                }
            },
            Frame::Query { what } => match mesh.answers.clone() {
                None => Frame::Refused { reason: format!("this node answers no questions ({what})") },
                Some(answer) => match off_async(move || answer(&what)).await {
                    Ok(Ok(json)) => Frame::Answer { json },
                    Ok(Err(reason)) => Frame::Refused { reason },
                    Err(e) => Frame::Refused { reason: e },
                },
            },
            Frame::Handover { mesh_key, charter } => {
                let s = mesh.clone();
                let res = tokio::task::spawn_blocking(move || s.take_over(remote, &mesh_key, &charter)).await;
                match res {
                    Ok(Ok(epoch)) => {
                        mesh.emit(MeshEvent::CharterStored {
                            epoch,
                            from: format!("{peer} (handover: this node is root now)"),
                        });
                        if let Err(e) = mesh.reload_charter() {
                            warn!(error = %e, "charter reload failed");
                        }
                        Frame::Ok { note: format!("root at epoch {epoch}") }
                    }
                    Ok(Err(e)) => {
                        mesh.emit(MeshEvent::CharterRefused {
                            from: peer.to_string(),
                            reason: e.to_string(),
                        });
                        Frame::Refused { reason: e.to_string() }
                    }
                    Err(e) => Frame::Refused { reason: e.to_string() },
                }
            }
            Frame::Receipts { receipts } => {
                if receipts.len() > MAX_BATCH {
                    return Frame::Refused {
                        reason: format!("{} receipts at once (at most {MAX_BATCH})", receipts.len()),
                    };
                }
                // Durable before the ack: the sending node deletes its copy then.
                let (s, from) = (mesh.clone(), peer.to_string());
                let rs = receipts.clone();
                let stored = tokio::task::spawn_blocking(move || s.store_receipts(&from, &rs)).await;
                match stored {
                    Ok(Ok(())) => {
                        for r in receipts {
                            mesh.emit(MeshEvent::Receipt { from: peer.to_string(), receipt: r });
                        }
                        Frame::Ok { note: String::new() }
                    }
                    Ok(Err(e)) => Frame::Refused { reason: format!("cannot store receipts now: {e}") },
                    Err(e) => Frame::Refused { reason: format!("receiver failed: {e}") },
                }
            }
            other => {
                Frame::Refused { reason: format!("not a request: {:?}", std::mem::discriminant(&other)) }
            }
        }
    }
}

impl Shared {
    /// Root: records a member's addresses; answers with the charter if the member is behind.
    async fn hello(self: &Arc<Self>, remote: NodeId, addrs: Vec<SocketAddr>, epoch: u64) -> Frame {
        if !self.is_root() {
            return Frame::Ok { note: "not root".into() };
        }
        let addrs: Vec<SocketAddr> =
            addrs.into_iter().filter(|a| !a.ip().is_unspecified()).take(16).collect();
        let Some(c) = self.charter() else { return Frame::Refused { reason: "no charter".into() } };
        let Some(m) = c.charter.member_by_id(&remote).cloned() else {
            return Frame::Refused { reason: "not a member".into() };
        };
        // Recorded with others heard about now, in one charter (see `claim_loop`).
        self.note_member_addrs(remote, &m.addrs, addrs);
        let current = c;
        if current.charter.epoch > epoch {
            if let Some(p) = lock(&self.dispatch.peers).get(&m.name) {
                lock(&p.queue).epoch_known = current.charter.epoch;
            }
            Frame::Charter { json: current.to_json() }
        } else {
            Frame::Ok { note: String::new() }
        }
    }

    /// Writes receipts for envelopes this node sent into `mesh/delivered/<id>.json`.
    fn store_receipts(&self, from: &str, receipts: &[Receipt]) -> Result<(), MeshError> {
        let items: Vec<(String, Vec<u8>)> = receipts
            .iter()
            // Only ULIDs name files here: a receipt is data from a peer.
            .filter(|r| r.id.parse::<ulid::Ulid>().is_ok())
            .filter_map(|r| {
                let doc = SpooledReceipt { node: from.to_string(), receipt: r.clone() };
                Some((format!("{}.json", r.id), serde_json::to_vec(&doc).ok()?))
            })
            .collect();
        if items.is_empty() {
            return Ok(());
        }
        let dir = self.paths.delivered();
        std::fs::create_dir_all(&dir).map_err(MeshError::io("create", &dir))?;
        netsky_bus::write_durable_batch(&dir, &items)?;
        Ok(())
    }

    /// Takes the root role handed over by the current root: the charter must
    /// name this node root, be signed by the key handed over, and come from
    /// the root of the charter held.
    fn take_over(&self, remote: NodeId, mesh_key: &[u8], json: &[u8]) -> Result<u64, MeshError> {
        let held = self.charter().ok_or_else(|| MeshError::Charter("this node holds no charter".into()))?;
        // A retried handover (its first answer was lost): the very charter
        // taken over already, from the key it named. Confirm it again.
        if let Ok(again) = SignedCharter::from_json(json)
            && *held == again
            && again.charter.root == self.name
            && charter_file::mesh_key(&self.paths)?.is_some_and(|k| k.public() == again.charter.mesh_key)
        {
            return Ok(again.charter.epoch);
        }
        if held.charter.root_member().map(|m| m.node_id) != Some(remote) {
            return Err(MeshError::Charter("a handover must come from the current root".into()));
        }
        let bytes: [u8; 32] = mesh_key
            .try_into()
            .map_err(|_| MeshError::Charter("the handed-over mesh key is not 32 bytes".into()))?;
        let key = SecretKey::from_bytes(&bytes);
        let new = SignedCharter::from_json(json)?;
        if new.charter.root != self.name || key.public() != new.charter.mesh_key {
            return Err(MeshError::Charter(
                "the handover charter does not name this node root under that key".into(),
            ));
        }
        // Decided under the lock before the key is kept: a refused charter
        // (stale, conflicting) must not leave a second holder of the key.
        let charter_lock = charter_file::lock(&self.paths)?;
        let decision = new.decide(charter_file::load(&self.paths)?.as_ref())?;
        if let Decision::Stale { held } = decision {
            return Err(MeshError::Charter(format!("stale handover: epoch {held} is held")));
        }
        let path = self.paths.mesh_key();
        match netsky_keys::load_key_file(&path) {
            Ok(k) if k.key.public() == key.public() => {}
            Ok(_) => return Err(MeshError::Charter(format!("{} holds another mesh key", path.display()))),
            Err(_) => {
                netsky_keys::save_key_file(&path, key)?;
            }
        }
        if decision == Decision::Accept {
            charter_file::store(&self.paths, &charter_lock, &new)?;
        }
        Ok(new.charter.epoch)
    }
}
