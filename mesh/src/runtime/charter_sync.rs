//! The charter this node follows: read again from disk when it changes,
//! adopted when a peer offers one, and kept current with this node's addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use netsky_bus::Roster;
use netsky_keys::NodeId;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{Shared, lock};
use crate::charter::{Decision, SignedCharter};
use crate::endpoint::dialable_addrs;
use crate::membership::Allowlist;
use crate::wire::Frame;
use crate::{MeshError, MeshEvent, charter_file};

/// The charter held and what follows from it.
pub(super) struct CharterState {
    /// Who may connect: every member but this node and the revoked. The
    /// endpoint's door holds a clone and checks it before any byte is read.
    pub(super) allow: Allowlist,
    held: RwLock<Option<Arc<SignedCharter>>>,
    /// The agents and nodes envelopes may name, from the charter held.
    roster: RwLock<Arc<Roster>>,
    /// The charter file as last read (mtime, length, inode): unchanged, it is not read again.
    stamp: Mutex<Option<(SystemTime, u64, u64)>>,
    /// An address claim (root) is under way.
    claiming: AtomicBool,
    /// Root: members' addresses heard in hellos, not yet in the charter.
    /// Written into one new charter per [`CLAIM_WINDOW`], not one per hello:
    /// a charter per member, each pushed to every member, made a mesh of
    /// 200 joining at once do work in the square of its size.
    pending_addrs: Mutex<BTreeMap<NodeId, Vec<SocketAddr>>>,
    /// Wakes the claimer when an address waits.
    claim_wake: Notify,
}

/// How long the root gathers members' address changes before it signs one charter for them all.
pub(super) const CLAIM_WINDOW: Duration = Duration::from_millis(250);

impl CharterState {
    /// No charter yet: a roster of this node alone, a door open to nobody.
    pub(super) fn new(allow: Allowlist, solo: Roster) -> CharterState {
        CharterState {
            allow,
            held: RwLock::new(None),
            roster: RwLock::new(Arc::new(solo)),
            stamp: Mutex::new(None),
            claiming: AtomicBool::new(false),
            pending_addrs: Mutex::new(BTreeMap::new()),
            claim_wake: Notify::new(),
        }
    }
}

impl Shared {
    pub(super) fn charter(&self) -> Option<Arc<SignedCharter>> {
        self.charter.held.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn roster(&self) -> Arc<Roster> {
        self.charter.roster.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn is_root(&self) -> bool {
        self.charter().is_some_and(|c| c.charter.root == self.name)
    }

    /// Re-reads `mesh/charter.json` if it changed; updates roster, allowlist and peers.
    pub(super) fn reload_charter(self: &Arc<Self>) -> Result<(), MeshError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.paths.charter();
        // Held throughout: concurrent reloads must not install an older charter
        // after a newer one. The inode is in the stamp because every atomic
        // replace makes a new one, even within one mtime tick at the same length.
        let mut held_stamp = lock(&self.charter.stamp);
        let stamp = std::fs::metadata(&path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()));
        if *held_stamp == stamp && (stamp.is_none() || self.charter().is_some()) {
            return Ok(());
        }
        *held_stamp = stamp;
        let Some(c) = charter_file::load(&self.paths)? else { return Ok(()) };
        if let Some(held) = self.charter()
            && held.charter.mesh_key == c.charter.mesh_key
            && (held.charter.epoch > c.charter.epoch || *held == c)
        {
            return Ok(());
        }
        let roster = c.charter.roster(&self.name, self.key.public())?;
        self.charter.allow.set(
            c.charter
                .members
                .iter()
                .map(|m| m.node_id)
                .filter(|id| *id != self.key.public() && !c.charter.revoked.contains(id)),
        );
        info!(node = %self.name, epoch = c.charter.epoch, root = %c.charter.root, "charter loaded");
        *self.charter.roster.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(roster);
        *self.charter.held.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(c.clone()));
        self.sync_peers(&c);
        Ok(())
    }

    /// Offers a charter that came over the wire; logs the outcome and returns
    /// the answer for whoever pushed it.
    ///
    /// A refused charter (foreign key, conflict, bad signature) is answered
    /// with `Frame::Refused`, not `Ok`: the root's sender matches on
    /// `Refused` to log that a member will not follow it, and before this it
    /// never heard of a refusal. A stale charter is no attack: `Ok`, with a note.
    pub(super) fn accept_charter(self: &Arc<Self>, json: &[u8], from: &str) -> Frame {
        let res =
            SignedCharter::from_json(json).and_then(|c| charter_file::offer(&self.paths, &c).map(|d| (c, d)));
        match res {
            Ok((c, Decision::Accept)) => {
                self.emit(MeshEvent::CharterStored { epoch: c.charter.epoch, from: from.to_string() });
                if c.charter.root != self.name {
                    self.finish_handover_if_taken(c.charter.epoch, from);
                }
                if let Err(e) = self.reload_charter() {
                    warn!(error = %e, "charter reload failed");
                }
                Frame::Ok { note: String::new() }
            }
            Ok((c, Decision::Same)) => {
                // Held already, yet the key may still be here (a promote that
                // crashed between storing the charter and deleting the key).
                if c.charter.root != self.name {
                    self.finish_handover_if_taken(c.charter.epoch, from);
                }
                Frame::Ok { note: String::new() }
            }
            Ok((c, Decision::Stale { held })) => {
                info!(offered = c.charter.epoch, held, "stale charter ignored");
                let reason = format!("stale: epoch {} offered, {held} held", c.charter.epoch);
                self.emit(MeshEvent::CharterRefused { from: from.to_string(), reason });
                Frame::Ok { note: format!("stale: this node holds epoch {held}") }
            }
            Err(e) => {
                warn!(error = %e, "charter refused");
                self.emit(MeshEvent::CharterRefused { from: from.to_string(), reason: e.to_string() });
                Frame::Refused { reason: e.to_string() }
            }
        }
    }

    /// Gives up this node's copy of the mesh key when the charter held names
    /// another root (a handover whose answer, or whose last step, was lost).
    pub(super) fn finish_handover_if_taken(&self, epoch: u64, from: &str) {
        match charter_file::finish_handover_if_taken(&self.paths, &self.name) {
            Ok(true) => {
                info!(epoch, "another node is root under this node's mesh key: this node's copy is removed");
                let from = format!("{from} (handover confirmed: mesh key given up)");
                self.emit(MeshEvent::CharterStored { epoch, from });
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot give up the mesh key after a handover"),
        }
    }

    pub(super) fn own_addrs(&self) -> Vec<SocketAddr> {
        dialable_addrs(&self.endpoint)
    }

    /// On the root: writes this node's own addresses into the charter when they changed.
    pub(super) fn claim_own_addrs(self: &Arc<Self>) {
        let Some(c) = self.charter() else { return };
        if c.charter.root != self.name {
            return;
        }
        let mine = self.own_addrs();
        if c.charter.member(&self.name).is_some_and(|m| m.addrs == mine) {
            return;
        }
        let name = self.name.clone();
        match self.amend(move |ch| {
            if let Some(m) = ch.members.iter_mut().find(|m| m.name == name) {
                m.addrs = mine;
            }
            Ok(())
        }) {
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot record this root's addresses in the charter"),
        }
    }

    /// When this node's addresses differ from its charter entry (a network
    /// change, a restart on a new port), tells the root, or as root records them.
    pub(super) fn check_own_addrs(self: &Arc<Self>) {
        let Some(c) = self.charter() else { return };
        let mine = self.own_addrs();
        if c.charter.member(&self.name).is_none_or(|m| m.addrs == mine) {
            return;
        }
        if c.charter.root == self.name {
            if self.charter.claiming.swap(true, Ordering::AcqRel) {
                return;
            }
            let s = self.clone();
            // Off the async threads: amending fsyncs.
            self.spawn(async move {
                let s2 = s.clone();
                let _ = tokio::task::spawn_blocking(move || s2.claim_own_addrs()).await;
                s.charter.claiming.store(false, Ordering::Release);
            });
        } else {
            self.schedule_hello(&c.charter.root);
        }
    }

    /// Root: notes a member's addresses for the next batched claim. Returns
    /// false when the charter or a claim already waiting has them.
    pub(super) fn note_member_addrs(
        &self,
        member: NodeId,
        held: &[SocketAddr],
        addrs: Vec<SocketAddr>,
    ) -> bool {
        let mut pending = lock(&self.charter.pending_addrs);
        let known = pending.get(&member).map(Vec::as_slice).unwrap_or(held);
        if known == addrs.as_slice() {
            return false;
        }
        pending.insert(member, addrs);
        drop(pending);
        self.charter.claim_wake.notify_one();
        true
    }

    /// Root: writes the members' addresses heard in hellos into the charter,
    /// all of those heard within one [`CLAIM_WINDOW`] in one amendment.
    pub(super) async fn claim_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.charter.claim_wake.notified() => {}
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(CLAIM_WINDOW) => {}
            }
            let batch = std::mem::take(&mut *lock(&self.charter.pending_addrs));
            if batch.is_empty() || !self.is_root() {
                continue;
            }
            let n = batch.len();
            let s = self.clone();
            // Off the async threads: amending signs and fsyncs.
            let res = tokio::task::spawn_blocking(move || {
                s.amend(move |ch| {
                    for m in ch.members.iter_mut() {
                        if let Some(addrs) = batch.get(&m.node_id) {
                            m.addrs = addrs.clone();
                        }
                    }
                    Ok(())
                })
            })
            .await;
            match res {
                Ok(Ok(c)) => {
                    info!(node = %self.name, epoch = c.charter.epoch, members = n, "members' addresses recorded")
                }
                Ok(Err(e)) => warn!(error = %e, members = n, "cannot record members' addresses"),
                Err(e) => warn!(error = %e, "address update failed"),
            }
        }
    }

    /// Amends the charter with the mesh key (root only) and reloads it.
    pub(super) fn amend(
        self: &Arc<Self>,
        change: impl FnOnce(&mut crate::Charter) -> Result<(), MeshError>,
    ) -> Result<SignedCharter, MeshError> {
        let mk = charter_file::mesh_key(&self.paths)?.ok_or_else(|| {
            MeshError::Charter("this node holds no mesh key, so it cannot issue charters".into())
        })?;
        let c = charter_file::amend(&self.paths, &mk, change)?;
        self.emit(MeshEvent::CharterStored { epoch: c.charter.epoch, from: self.name.to_string() });
        self.reload_charter()?;
        Ok(c)
    }
}
