//! One sender per member: its queue, the loop that connects when there is
//! work and backs off when the peer is down, and the pushes and their acks.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::endpoint::{Connection, RecvStream};
use netsky_bus::{Envelope, NodeName};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::dispatch::queued_key;
use super::{CONNECT_TIMEOUT, Shared, lock, off_async};
use crate::charter::{CharterMember, SignedCharter};
use crate::endpoint::dial_addr;
use crate::wire::{
    ALPN_MESH, Ack, FRAME_TIMEOUT, Frame, MAX_BATCH, MAX_FRAME, Outcome, Receipt, read_frame, request,
    send_request,
};
use crate::{MeshError, MeshEvent};

/// Longest wait between retries to an unreachable peer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a sender looks again even when nothing woke it.
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// Envelope bytes held in memory per peer; the rest wait on disk and are
/// read, in order, as the queue drains (8 MiB: thousands of typical
/// envelopes, 128 of the largest).
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Receipts held in memory per peer.
const QUEUE_RECEIPTS: usize = 4 * MAX_BATCH;
/// Pushes in flight on one connection at once (each up to `MAX_BATCH` envelopes).
const PUSH_WINDOW: usize = 2;

/// An envelope waiting in a peer's queue, read from its outbox file.
#[derive(Debug, Clone)]
pub(super) struct Queued {
    pub(super) file: String,
    pub(super) bytes: Vec<u8>,
    pub(super) env: Envelope,
}

/// A receipt waiting in a peer's queue, read from its file in `mesh/receipts/`.
#[derive(Debug, Clone)]
pub(super) struct QueuedReceipt {
    pub(super) file: String,
    pub(super) receipt: Receipt,
}

/// One peer's sender state.
#[derive(Default)]
pub(super) struct PeerQueue {
    pub(super) envs: VecDeque<Queued>,
    /// The bytes of the envelopes in `envs`.
    pub(super) env_bytes: usize,
    /// The scan left files on disk because the queue was full.
    pub(super) capped: bool,
    pub(super) receipts: VecDeque<QueuedReceipt>,
    /// The charter epoch this peer is known to hold (root pushes when behind).
    pub(super) epoch_known: u64,
    /// Whether this node must tell the peer (the root) its addresses.
    pub(super) hello_due: bool,
}

impl PeerQueue {
    /// Whether the queue of receipts, or of envelopes, holds all it may.
    pub(super) fn is_full(&self, receipts: bool) -> bool {
        if receipts { self.receipts.len() >= QUEUE_RECEIPTS } else { self.env_bytes >= QUEUE_BYTES }
    }
}

/// One member's sender, as the dispatcher and the inbound handler see it.
pub(super) struct Peer {
    pub(super) queue: Mutex<PeerQueue>,
    pub(super) wake: Notify,
    /// Signalled when the peer reached us: it is up, so any backoff ends now.
    reset: Notify,
    cancel: CancellationToken,
}

impl Shared {
    /// Starts a sender for each member, stops senders of former members.
    pub(super) fn sync_peers(self: &Arc<Self>, c: &SignedCharter) {
        let i_am_root = c.charter.root == self.name;
        let me = c.charter.member(&self.name).cloned();
        let mut peers = lock(&self.dispatch.peers);
        let current: HashSet<NodeName> =
            c.charter.members.iter().filter(|m| m.name != self.name).map(|m| m.name.clone()).collect();
        peers.retain(|name, p| {
            let keep = current.contains(name);
            if !keep {
                p.cancel.cancel();
                // Its files are looked at again: refused as for a non-member.
                let q = lock(&p.queue);
                let mut queued = lock(&self.dispatch.queued);
                for e in &q.envs {
                    queued.remove(&queued_key(false, &e.file));
                }
                for r in &q.receipts {
                    queued.remove(&queued_key(true, &r.file));
                }
            }
            keep
        });
        for m in &c.charter.members {
            if m.name == self.name {
                continue;
            }
            let peer = peers
                .entry(m.name.clone())
                .or_insert_with(|| {
                    let p = Arc::new(Peer {
                        queue: Mutex::new(PeerQueue::default()),
                        wake: Notify::new(),
                        reset: Notify::new(),
                        cancel: self.cancel.child_token(),
                    });
                    let (s, pc, name) = (self.clone(), p.clone(), m.name.clone());
                    let span = info_span!("peer", node = %self.name, peer = %name);
                    self.spawn(async move { s.peer_loop(name, pc).await }.instrument(span));
                    p
                })
                .clone();
            let mut q = lock(&peer.queue);
            // A member tells the root where it is whenever the charter has it wrong.
            if m.name == c.charter.root && !i_am_root {
                let mine = self.own_addrs();
                q.hello_due = me.as_ref().is_none_or(|me| me.addrs != mine);
            }
            drop(q);
            peer.wake.notify_one();
        }
    }

    /// Has the sender to the root tell it this node's addresses.
    pub(super) fn schedule_hello(&self, root: &NodeName) {
        if let Some(p) = lock(&self.dispatch.peers).get(root) {
            let mut q = lock(&p.queue);
            if !q.hello_due {
                q.hello_due = true;
                p.wake.notify_one();
            }
        }
    }

    /// A member connected to us: it is up; end any backoff towards it.
    pub(super) fn peer_seen(&self, name: &NodeName) {
        let p = lock(&self.dispatch.peers).get(name).cloned();
        if let Some(p) = p {
            p.reset.notify_one();
            p.wake.notify_one();
        }
    }

    /// One peer's sender: connect when there is work, ship in order, back off when down.
    async fn peer_loop(self: Arc<Self>, name: NodeName, peer: Arc<Peer>) {
        let mut conn: Option<Connection> = None;
        let mut failures: u32 = 0;
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                _ = peer.cancel.cancelled() => break,
                _ = peer.wake.notified(), if failures == 0 => {}
                _ = peer.reset.notified() => { failures = 0; }
                _ = tokio::time::sleep(if delay.is_zero() { IDLE_RECHECK } else { delay }) => {}
            }
            if !self.has_work(&name, &peer) {
                delay = Duration::ZERO;
                continue;
            }
            // A shutdown does not wait for a dial or an ack: what was not acked
            // stays in the outbox and goes again (acked as a duplicate if it landed).
            let served = tokio::select! {
                r = self.serve_peer(&name, &peer, &mut conn) => r,
                _ = peer.cancel.cancelled() => break,
            };
            match served {
                Ok(()) => {
                    failures = 0;
                    delay = Duration::ZERO;
                    self.set_peer_state(&name, true, None);
                    // More may have arrived while we were busy.
                    if self.has_work(&name, &peer) {
                        peer.wake.notify_one();
                    }
                }
                Err(e) => {
                    debug!(error = %e, "peer unreachable");
                    conn = None;
                    failures = failures.saturating_add(1);
                    delay = backoff(failures);
                    self.set_peer_state(&name, false, Some(e.to_string()));
                }
            }
        }
        if let Some(c) = conn {
            c.close(0u32.into(), b"shutdown");
        }
    }

    fn has_work(&self, name: &NodeName, peer: &Peer) -> bool {
        let q = lock(&peer.queue);
        let charter_due = self.is_root()
            && self.charter().is_some_and(|c| c.charter.epoch > q.epoch_known)
            && self.charter().is_some_and(|c| c.charter.member(name).is_some());
        // A peer not known to be up is probed (with backoff), so status tells the truth.
        let unknown = !self.known_reachable(name);
        !q.envs.is_empty() || !q.receipts.is_empty() || q.hello_due || charter_due || unknown
    }

    async fn connect(&self, name: &NodeName, conn: &mut Option<Connection>) -> Result<Connection, MeshError> {
        if let Some(c) = conn.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let member: CharterMember =
            self.charter().and_then(|c| c.charter.member(name).cloned()).ok_or_else(|| {
                MeshError::Connect { peer: name.to_string(), reason: "no longer a member".into() }
            })?;
        let addr = dial_addr(member.node_id, &member.addrs, &self.relay, self.mdns).ok_or_else(|| {
            MeshError::Connect {
                peer: name.to_string(),
                reason: "no known address yet (its daemon has not reported one)".into(),
            }
        })?;
        let c = tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(addr, ALPN_MESH))
            .await
            .map_err(|_| MeshError::Connect {
                peer: name.to_string(),
                reason: "no answer within 5 s".into(),
            })?
            .map_err(|e| MeshError::Connect { peer: name.to_string(), reason: e.to_string() })?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Does every due piece of work for one peer over one connection, in this
    /// order: hello, charter, envelopes, receipts.
    async fn serve_peer(
        self: &Arc<Self>,
        name: &NodeName,
        peer: &Arc<Peer>,
        conn: &mut Option<Connection>,
    ) -> Result<(), MeshError> {
        let c = self.connect(name, conn).await?;
        let pname = name.to_string();
        self.say_hello(&c, peer, &pname).await?;
        self.push_charter(&c, peer, &pname).await?;
        self.push_envelopes(&c, peer, &pname).await?;
        self.send_receipts(&c, peer, &pname).await
    }

    /// Hello to the root, when due: where this node listens.
    async fn say_hello(self: &Arc<Self>, c: &Connection, peer: &Peer, pname: &str) -> Result<(), MeshError> {
        let hello_due = lock(&peer.queue).hello_due;
        if hello_due {
            let epoch = self.charter().map(|c| c.charter.epoch).unwrap_or(0);
            let resp =
                request(c, &Frame::Hello { addrs: self.own_addrs(), epoch }, FRAME_TIMEOUT, pname).await?;
            match resp {
                Frame::Charter { json } => {
                    // The root answered our hello; a refusal is already an event here.
                    let (s, from) = (self.clone(), pname.to_string());
                    let _ = off_async(move || s.accept_charter(&json, &from)).await;
                }
                Frame::Ok { .. } => {}
                other => warn!(?other, "unexpected answer to hello"),
            }
            lock(&peer.queue).hello_due = false;
        }
        Ok(())
    }

    /// Root: pushes the charter to a member that is behind.
    async fn push_charter(&self, c: &Connection, peer: &Peer, pname: &str) -> Result<(), MeshError> {
        if self.is_root()
            && let Some(ch) = self.charter()
        {
            let known = lock(&peer.queue).epoch_known;
            if ch.charter.epoch > known {
                match request(c, &Frame::Charter { json: ch.to_json() }, FRAME_TIMEOUT, pname).await? {
                    Frame::Ok { .. } => {}
                    Frame::Refused { reason } => warn!(%reason, "peer refused the charter"),
                    other => warn!(?other, "unexpected answer to a charter push"),
                }
                lock(&peer.queue).epoch_known = ch.charter.epoch;
            }
        }
        Ok(())
    }

    /// Envelopes, oldest first, a batch at a time, up to `PUSH_WINDOW` pushes
    /// in flight: the receiver stores one while the next is on the wire and
    /// the last one's copies are deleted here. It answers a connection's
    /// pushes in order and closes the connection after one it could not
    /// store, so nothing behind a failed push lands before it.
    async fn push_envelopes(
        self: &Arc<Self>,
        c: &Connection,
        peer: &Peer,
        pname: &str,
    ) -> Result<(), MeshError> {
        let mut inflight: VecDeque<(Vec<Queued>, RecvStream)> = VecDeque::new();
        let mut in_flight_envs = 0usize;
        loop {
            while inflight.len() < PUSH_WINDOW && !peer.cancel.is_cancelled() {
                let batch: Vec<Queued> = {
                    let q = lock(&peer.queue);
                    let mut size = 0;
                    q.envs
                        .iter()
                        .skip(in_flight_envs)
                        .take(MAX_BATCH)
                        .take_while(|e| {
                            size += e.bytes.len() + 8;
                            size < MAX_FRAME - 4096
                        })
                        .cloned()
                        .collect()
                };
                if batch.is_empty() {
                    break;
                }
                let envs = batch.iter().map(|q| q.bytes.clone()).collect();
                debug!(n = batch.len(), first = %batch[0].env.id, "push");
                let recv = send_request(c, &Frame::Push { envs }, pname).await?;
                in_flight_envs += batch.len();
                inflight.push_back((batch, recv));
            }
            let Some((batch, mut recv)) = inflight.pop_front() else { break };
            in_flight_envs -= batch.len();
            let answer: Frame = read_frame(&mut recv, MAX_FRAME, FRAME_TIMEOUT, pname).await?;
            let acks = match answer {
                // Acks pair with envelopes by id, never by position alone.
                Frame::Acks { acks }
                    if acks.len() == batch.len()
                        && acks.iter().zip(&batch).all(|(a, q)| a.id == q.env.id.to_string()) =>
                {
                    acks
                }
                Frame::Refused { reason } => {
                    return Err(MeshError::Protocol {
                        peer: pname.to_string(),
                        reason: format!("push refused: {reason}"),
                    });
                }
                other => {
                    return Err(MeshError::Protocol {
                        peer: pname.to_string(),
                        reason: format!("bad answer to push: {other:?}"),
                    });
                }
            };
            debug!(n = acks.len(), "acks");
            // Said at once: durable over there now, and whoever waits on it
            // need not wait for our bookkeeping (a thread hand-off and renames).
            for (q, ack) in batch.iter().zip(&acks) {
                if matches!(ack.outcome, Outcome::Stored | Outcome::Duplicate) {
                    let duplicate = ack.outcome == Outcome::Duplicate;
                    self.emit(MeshEvent::Acked { env: q.env.clone(), duplicate });
                }
            }
            let done: Vec<(String, usize)> = batch.iter().map(|b| (b.file.clone(), b.bytes.len())).collect();
            let s = self.clone();
            off_async(move || s.retire_acked(&batch, &acks))
                .await
                .map_err(|e| MeshError::Protocol { peer: pname.to_string(), reason: e.to_string() })?;
            let mut q = lock(&peer.queue);
            let mut queued = lock(&self.dispatch.queued);
            for (file, len) in &done {
                q.envs.pop_front();
                q.env_bytes = q.env_bytes.saturating_sub(*len);
                queued.remove(&queued_key(false, file));
            }
            self.uncap_if_room(&mut q);
        }
        Ok(())
    }

    /// Receipts back to this peer, a batch per round.
    async fn send_receipts(&self, c: &Connection, peer: &Peer, pname: &str) -> Result<(), MeshError> {
        let receipts: Vec<QueuedReceipt> =
            lock(&peer.queue).receipts.iter().take(MAX_BATCH).cloned().collect();
        if receipts.is_empty() {
            return Ok(());
        }
        let frame = Frame::Receipts { receipts: receipts.iter().map(|r| r.receipt.clone()).collect() };
        match request(c, &frame, FRAME_TIMEOUT, pname).await? {
            Frame::Ok { .. } => {
                let mut q = lock(&peer.queue);
                let mut queued = lock(&self.dispatch.queued);
                for r in &receipts {
                    let _ = std::fs::remove_file(self.paths.receipts().join(&r.file));
                    q.receipts.pop_front();
                    queued.remove(&queued_key(true, &r.file));
                }
                self.uncap_if_room(&mut q);
                Ok(())
            }
            other => {
                let reason = format!("receipts not taken: {other:?}");
                Err(MeshError::Protocol { peer: pname.to_string(), reason })
            }
        }
    }

    /// Room in a capped queue again (both kinds under half): the files the cap
    /// left on disk are read now, not at the next wake.
    fn uncap_if_room(&self, q: &mut PeerQueue) {
        if q.capped && q.env_bytes < QUEUE_BYTES / 2 && q.receipts.len() < QUEUE_RECEIPTS / 2 {
            q.capped = false;
            self.dispatch.wake.notify_one();
        }
    }

    /// After the acks (already reported): moves the acknowledged copies to
    /// sent/, keeps refused ones as evidence and reports those.
    fn retire_acked(&self, batch: &[Queued], acks: &[Ack]) {
        for (q, ack) in batch.iter().zip(acks) {
            let path = self.paths.outbox().join(&q.file);
            match &ack.outcome {
                Outcome::Stored | Outcome::Duplicate => {
                    // Kept in sent/ as the audit trail (as delivered/ is in a
                    // mailbox), which also keeps unlinks off the hot path: on
                    // ext4 without a journal every file creation scans the
                    // inodes freed in the last minute. No fsync: a copy left in
                    // the outbox by a crash is sent again and acked as a duplicate.
                    if std::fs::rename(&path, self.paths.sent().join(&q.file)).is_err() {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                Outcome::Refused { kind, reason } => {
                    self.keep_refused(&path, &q.file, kind, reason);
                    self.emit(MeshEvent::RefusedByPeer {
                        env: q.env.clone(),
                        kind: kind.clone(),
                        reason: reason.clone(),
                    });
                }
            }
        }
    }
}

/// The wait before the next try after `failures` failures in a row: 250 ms
/// doubled per failure, at most `MAX_BACKOFF`, plus jitter.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1u32 << failures.min(7));
    let capped = base.min(MAX_BACKOFF);
    // Up to 20% jitter so peers that failed together do not retry together.
    let jitter = rand::random::<u64>() % (capped.as_millis() as u64 / 5 + 1);
    capped + Duration::from_millis(jitter)
}
