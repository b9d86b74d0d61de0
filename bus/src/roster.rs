//! The roster: which nodes the bus trusts, by name and by key.
//!
//! A roster is what the guard checks origins against. On a node outside any
//! mesh it holds only the node itself; inside a mesh it is built from the
//! verified charter (members, revoked ids, epoch). The bus never reads the
//! charter itself: the mesh crate, which verifies charters, builds rosters.

use std::collections::{BTreeMap, HashMap, HashSet};

use netsky_keys::{NodeId, Verifier};

use crate::{BusError, NodeName};

/// One trusted node.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its name in the mesh.
    pub name: NodeName,
    /// Its node id (= iroh endpoint id).
    pub id: NodeId,
    verifier: Verifier,
}

impl Member {
    /// The prepared key for checking this member's signatures.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }
}

/// Who the bus trusts right now.
#[derive(Debug, Clone)]
pub struct Roster {
    local: NodeName,
    local_id: NodeId,
    epoch: u64,
    members: BTreeMap<NodeName, Member>,
    by_id: HashMap<NodeId, NodeName>,
    revoked: HashSet<NodeId>,
    /// The node that speaks for the owner (the charter's root; this node when solo).
    root: Option<NodeId>,
}

impl Roster {
    /// A roster of one: this node, outside any mesh.
    pub fn solo(local: NodeName, local_id: NodeId) -> Result<Roster, BusError> {
        Ok(Roster::new(local.clone(), local_id, [(local, local_id)], [], 0)?.with_root(local_id))
    }

    /// A roster from a charter's members and revocations.
    pub fn new(
        local: NodeName,
        local_id: NodeId,
        members: impl IntoIterator<Item = (NodeName, NodeId)>,
        revoked: impl IntoIterator<Item = NodeId>,
        epoch: u64,
    ) -> Result<Roster, BusError> {
        let mut r = Roster {
            local,
            local_id,
            epoch,
            members: BTreeMap::new(),
            by_id: HashMap::new(),
            revoked: revoked.into_iter().collect(),
            root: None,
        };
        for (name, id) in members {
            let verifier = Verifier::new(id).map_err(|e| BusError::BadEnvelope(e.to_string()))?;
            r.by_id.insert(id, name.clone());
            r.members.insert(name.clone(), Member { name, id, verifier });
        }
        Ok(r)
    }

    /// The same roster with `root` as the node that speaks for the owner.
    pub fn with_root(mut self, root: NodeId) -> Roster {
        self.root = Some(root);
        self
    }

    /// The node that speaks for the owner, if known.
    pub fn root(&self) -> Option<NodeId> {
        self.root
    }

    /// This node's name.
    pub fn local(&self) -> &NodeName {
        &self.local
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.local_id
    }

    /// The charter epoch this roster came from (0 outside a mesh).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The member with this id, unless revoked.
    pub fn by_id(&self, id: &NodeId) -> Option<&Member> {
        if self.revoked.contains(id) {
            return None;
        }
        self.by_id.get(id).and_then(|n| self.members.get(n))
    }

    /// The member with this name, unless revoked.
    pub fn by_name(&self, name: &NodeName) -> Option<&Member> {
        self.members.get(name).filter(|m| !self.revoked.contains(&m.id))
    }

    /// Whether this id was revoked.
    pub fn is_revoked(&self, id: &NodeId) -> bool {
        self.revoked.contains(id)
    }

    /// Every current (not revoked) member.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| !self.revoked.contains(&m.id))
    }
}
