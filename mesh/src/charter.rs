//! The charter: who is in the mesh, who is root, signed by the mesh key.
//!
//! Every member keeps the newest charter it has verified in
//! `mesh/charter.json`. A new charter must be signed by the same mesh key as
//! the one held (the key is pinned by the first charter, received at join),
//! and must carry a higher epoch; the same epoch with different content is a
//! conflict and is refused. The charter alone says who is a member and who
//! is root.

use std::net::SocketAddr;
use std::path::Path;

use netsky_bus::{NodeName, Roster};
use netsky_keys::{
    Domain, NodeId, SecretKey, Signature, Verifier, sign, signature_from_hex, signature_to_hex,
};
use serde::{Deserialize, Serialize};

use crate::MeshError;

/// Domain-separation tag of charter signatures.
pub const CHARTER_DOMAIN: Domain = Domain(b"netsky/charter/v1\0");

/// The largest charter file we read.
pub const MAX_CHARTER_BYTES: usize = 256 * 1024;

/// One member of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CharterMember {
    /// Its name, unique in the mesh.
    pub name: NodeName,
    /// Its node id (iroh endpoint id).
    pub node_id: NodeId,
    /// Its direct addresses, as last reported.
    #[serde(default)]
    pub addrs: Vec<SocketAddr>,
}

/// The charter's content: everything the mesh key signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charter {
    /// The mesh's name.
    pub mesh: String,
    /// Increases with every change.
    pub epoch: u64,
    /// The member that talks to the owner.
    pub root: NodeName,
    /// Current members, root included.
    pub members: Vec<CharterMember>,
    /// Node ids that were members and must be refused.
    #[serde(default)]
    pub revoked: Vec<NodeId>,
    /// When this epoch was issued (canonical UTC timestamp).
    pub issued: String,
    /// The mesh authority's public key (pinned at join).
    pub mesh_key: NodeId,
}

/// A charter with the mesh key's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCharter {
    /// The content.
    pub charter: Charter,
    /// Hex of the mesh key's signature over the canonical content.
    pub sig: String,
}

/// What to do with a charter offered to a node that may hold one already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Newer and valid: store it.
    Accept,
    /// Identical to the one held.
    Same,
    /// Older than the one held; ignore (and log).
    Stale {
        /// The epoch held.
        held: u64,
    },
}

impl Charter {
    /// The canonical bytes the mesh key signs: postcard of the content.
    pub fn signing_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("postcard encodes plain structs into a Vec without failing")
    }

    /// Signs this content with the mesh key.
    pub fn sign(self, mesh_key: &SecretKey) -> Result<SignedCharter, MeshError> {
        if mesh_key.public() != self.mesh_key {
            return Err(MeshError::Charter(
                "the charter names another mesh key than the one signing it".into(),
            ));
        }
        let sig = sign(mesh_key, CHARTER_DOMAIN, &self.signing_bytes());
        Ok(SignedCharter { charter: self, sig: signature_to_hex(&sig) })
    }

    /// The member with this id, unless revoked.
    pub fn member_by_id(&self, id: &NodeId) -> Option<&CharterMember> {
        if self.revoked.contains(id) {
            return None;
        }
        self.members.iter().find(|m| m.node_id == *id)
    }

    /// The member with this name.
    pub fn member(&self, name: &NodeName) -> Option<&CharterMember> {
        self.members.iter().find(|m| &m.name == name)
    }

    /// The root's entry.
    pub fn root_member(&self) -> Option<&CharterMember> {
        self.member(&self.root)
    }

    /// Checks the content's own rules: names and ids unique, root a member, revoked ids absent.
    pub fn check_rules(&self) -> Result<(), MeshError> {
        let bad = |s: String| Err(MeshError::Charter(s));
        if self.mesh.is_empty() || self.mesh.len() > 64 {
            return bad(format!(
                "mesh name {:?} must be 1 to 64 characters",
                self.mesh.chars().take(70).collect::<String>()
            ));
        }
        if self.epoch == 0 {
            return bad("epoch 0 is not a charter epoch".into());
        }
        for (i, m) in self.members.iter().enumerate() {
            if self.members[..i].iter().any(|o| o.name == m.name || o.node_id == m.node_id) {
                return bad(format!("member {} appears twice", m.name));
            }
            if self.revoked.contains(&m.node_id) {
                return bad(format!("member {} is also revoked", m.name));
            }
            if m.addrs.len() > 16 {
                return bad(format!("member {} lists {} addresses (at most 16)", m.name, m.addrs.len()));
            }
        }
        if self.root_member().is_none() {
            return bad(format!("root {} is not a member", self.root));
        }
        Ok(())
    }

    /// The bus roster for `local` under this charter.
    pub fn roster(&self, local: &NodeName, local_id: NodeId) -> Result<Roster, MeshError> {
        let roster = Roster::new(
            local.clone(),
            local_id,
            self.members.iter().map(|m| (m.name.clone(), m.node_id)),
            self.revoked.iter().copied(),
            self.epoch,
        )?;
        Ok(match self.root_member() {
            Some(root) => roster.with_root(root.node_id),
            None => roster,
        })
    }
}

impl SignedCharter {
    /// Verifies the signature against the key the charter names, and the rules.
    pub fn verify(&self) -> Result<(), MeshError> {
        let sig: Signature = signature_from_hex(&self.sig)
            .map_err(|e| MeshError::Charter(format!("epoch {}: {e}", self.charter.epoch)))?;
        let v = Verifier::new(self.charter.mesh_key)?;
        v.verify(CHARTER_DOMAIN, &self.charter.signing_bytes(), &sig).map_err(|_| {
            MeshError::Charter(format!(
                "epoch {}: signature does not verify with mesh key {}",
                self.charter.epoch,
                self.charter.mesh_key.fmt_short()
            ))
        })?;
        self.charter.check_rules()
    }

    /// Decides whether `self` may replace `held`: same mesh key, newer epoch, no conflict.
    pub fn decide(&self, held: Option<&SignedCharter>) -> Result<Decision, MeshError> {
        self.verify()?;
        let Some(held) = held else { return Ok(Decision::Accept) };
        let (new, old) = (&self.charter, &held.charter);
        if new.mesh_key != old.mesh_key || new.mesh != old.mesh {
            return Err(MeshError::Charter(format!(
                "epoch {} is signed by mesh key {} for mesh {:?}, but this node belongs to mesh {:?} under key {}",
                new.epoch,
                new.mesh_key.fmt_short(),
                new.mesh,
                old.mesh,
                old.mesh_key.fmt_short()
            )));
        }
        if new.epoch == old.epoch {
            return if new == old {
                Ok(Decision::Same)
            } else {
                Err(MeshError::Charter(format!(
                    "conflict: a different charter with the same epoch {}",
                    new.epoch
                )))
            };
        }
        if new.epoch < old.epoch {
            return Ok(Decision::Stale { held: old.epoch });
        }
        Ok(Decision::Accept)
    }

    /// The JSON form stored in `mesh/charter.json`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a charter serialises: plain values only");
        v.push(b'\n');
        v
    }

    /// Parses the JSON form (bounded); does not verify.
    pub fn from_json(bytes: &[u8]) -> Result<SignedCharter, MeshError> {
        if bytes.len() > MAX_CHARTER_BYTES {
            return Err(MeshError::Charter(format!(
                "{} bytes, over the {MAX_CHARTER_BYTES}-byte limit",
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| MeshError::Charter(format!("unparsable: {e}")))
    }

    /// Loads and verifies `path`; `None` when there is no charter yet.
    pub fn load(path: &Path) -> Result<Option<SignedCharter>, MeshError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(MeshError::Io { op: "read", path: path.to_path_buf(), source: e }),
        };
        let c = SignedCharter::from_json(&bytes)?;
        c.verify().map_err(|e| MeshError::Charter(format!("{}: {e}", path.display())))?;
        Ok(Some(c))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn charter_with(
        mesh_key: &SecretKey,
        epoch: u64,
        members: &[(&str, NodeId)],
    ) -> SignedCharter {
        Charter {
            mesh: "home".into(),
            epoch,
            root: members[0].0.parse().unwrap(),
            members: members
                .iter()
                .map(|(n, id)| CharterMember { name: n.parse().unwrap(), node_id: *id, addrs: vec![] })
                .collect(),
            revoked: vec![],
            issued: "2026-11-25T00:00:00.000Z".into(),
            mesh_key: mesh_key.public(),
        }
        .sign(mesh_key)
        .unwrap()
    }

    #[test]
    fn a_newer_charter_from_the_same_key_replaces_an_older_one() {
        let mk = SecretKey::generate();
        let a = SecretKey::generate().public();
        let b = SecretKey::generate().public();
        let one = charter_with(&mk, 1, &[("studio", a)]);
        let two = charter_with(&mk, 2, &[("studio", a), ("laptop", b)]);
        assert_eq!(one.decide(None).unwrap(), Decision::Accept);
        assert_eq!(two.decide(Some(&one)).unwrap(), Decision::Accept);
        assert_eq!(one.decide(Some(&two)).unwrap(), Decision::Stale { held: 2 });
        assert_eq!(two.decide(Some(&two)).unwrap(), Decision::Same);
    }

    #[test]
    fn a_conflict_a_foreign_key_and_tampering_are_refused() {
        let mk = SecretKey::generate();
        let other = SecretKey::generate();
        let a = SecretKey::generate().public();
        let b = SecretKey::generate().public();
        let held = charter_with(&mk, 2, &[("studio", a)]);
        let conflict = charter_with(&mk, 2, &[("studio", a), ("laptop", b)]);
        assert!(conflict.decide(Some(&held)).unwrap_err().to_string().contains("conflict"));
        let foreign = charter_with(&other, 3, &[("studio", a), ("laptop", b)]);
        assert!(foreign.decide(Some(&held)).unwrap_err().to_string().contains("mesh key"));
        let mut tampered = charter_with(&mk, 3, &[("studio", a)]);
        tampered.charter.members.push(CharterMember {
            name: "evil".parse().unwrap(),
            node_id: b,
            addrs: vec![],
        });
        assert!(tampered.decide(Some(&held)).unwrap_err().to_string().contains("does not verify"));
    }

    #[test]
    fn broken_rules_are_refused_even_when_signed() {
        let mk = SecretKey::generate();
        let a = SecretKey::generate().public();
        let mut c = charter_with(&mk, 1, &[("studio", a)]).charter;
        c.root = "ghost".parse().unwrap();
        assert!(c.clone().sign(&mk).unwrap().verify().is_err());
        c.root = "studio".parse().unwrap();
        c.members.push(c.members[0].clone());
        assert!(c.sign(&mk).unwrap().verify().unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn the_json_form_round_trips_and_junk_is_an_error() {
        let mk = SecretKey::generate();
        let c = charter_with(&mk, 1, &[("studio", SecretKey::generate().public())]);
        let back = SignedCharter::from_json(&c.to_json()).unwrap();
        back.verify().unwrap();
        assert_eq!(back, c);
        assert!(SignedCharter::from_json(b"{").is_err());
        assert!(SignedCharter::from_json(&vec![b' '; MAX_CHARTER_BYTES + 1]).is_err());
    }
}
