//! Signing and verification under domain separation.
//!
//! Every signed record in netsky is `domain || body`, where the domain is a
//! fixed ASCII tag ending in a NUL byte. Distinct tags for envelopes, charters,
//! tickets and beacons make a signature made for one useless as another.

use ed25519_dalek::{Signature as DalekSignature, VerifyingKey};

pub use iroh_base::{PublicKey as NodeId, SecretKey, Signature};

use crate::KeyError;

/// A domain-separation tag for one kind of signed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Domain(pub &'static [u8]);

/// Signs `body` under `domain` with `key`.
pub fn sign(key: &SecretKey, domain: Domain, body: &[u8]) -> Signature {
    let mut msg = Vec::with_capacity(domain.0.len() + body.len());
    msg.extend_from_slice(domain.0);
    msg.extend_from_slice(body);
    key.sign(&msg)
}

/// Renders a signature as 128 lowercase hex digits.
pub fn signature_to_hex(sig: &Signature) -> String {
    data_encoding::HEXLOWER.encode(&sig.to_bytes())
}

/// Parses a signature from 128 hex digits.
pub fn signature_from_hex(text: &str) -> Result<Signature, KeyError> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|e| KeyError::BadSignature { reason: format!("not hex: {e}") })?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError::BadSignature { reason: format!("{} bytes, expected 64", b.len()) })?;
    Ok(Signature::from_bytes(&bytes))
}

/// A public key prepared for repeated verification.
///
/// Decompressing an ed25519 point costs about 3 µs; a verifier does it once
/// and reuses it for every envelope from that node.
#[derive(Debug, Clone)]
pub struct Verifier {
    id: NodeId,
    pub(crate) key: VerifyingKey,
}

impl Verifier {
    /// Prepares `id` for verification.
    pub fn new(id: NodeId) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(id.as_bytes())
            .map_err(|e| KeyError::BadNodeId { input: id.to_string(), reason: e.to_string() })?;
        Ok(Self { id, key })
    }

    /// The node this verifier checks signatures for.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Checks `sig` over `domain || body`, strictly (no malleable signatures).
    pub fn verify(&self, domain: Domain, body: &[u8], sig: &Signature) -> Result<(), KeyError> {
        let mut msg = Vec::with_capacity(domain.0.len() + body.len());
        msg.extend_from_slice(domain.0);
        msg.extend_from_slice(body);
        let sig = DalekSignature::from_bytes(&sig.to_bytes());
        self.key.verify_strict(&msg, &sig).map_err(|_| KeyError::Forged { node: self.id.to_string() })
    }
}

/// Node ids a thread remembers having parsed (a mesh has few nodes).
const SEEN_IDS: usize = 8;

/// Parses a node id from its hex (or base32) form.
///
/// Parsing checks that the key is a curve point (a square root, several µs);
/// every envelope names its origin, and a mesh has few, so each thread
/// remembers the last few texts it parsed. Only good parses are kept.
pub fn parse_node_id(text: &str) -> Result<NodeId, KeyError> {
    thread_local! {
        static SEEN: std::cell::RefCell<(Vec<(String, NodeId)>, usize)> =
            const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    if let Some(id) = SEEN.with_borrow(|(seen, _)| seen.iter().find(|(t, _)| t == text).map(|(_, id)| *id)) {
        return Ok(id);
    }
    let id = text
        .parse::<NodeId>()
        .map_err(|e| KeyError::BadNodeId { input: text.chars().take(80).collect(), reason: e.to_string() })?;
    SEEN.with_borrow_mut(|(seen, next)| {
        if seen.len() < SEEN_IDS {
            seen.push((text.to_string(), id));
        } else {
            seen[*next] = (text.to_string(), id);
            *next = (*next + 1) % SEEN_IDS;
        }
    });
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Domain = Domain(b"netsky/test-a/v1\0");
    const B: Domain = Domain(b"netsky/test-b/v1\0");

    #[test]
    fn a_signature_verifies_only_under_its_own_domain_key_and_body() {
        let key = SecretKey::generate();
        let other = SecretKey::generate();
        let sig = sign(&key, A, b"hello");
        let v = Verifier::new(key.public()).unwrap();
        v.verify(A, b"hello", &sig).unwrap();
        assert!(v.verify(B, b"hello", &sig).is_err(), "domain separation");
        assert!(v.verify(A, b"hellp", &sig).is_err(), "tampered body");
        let w = Verifier::new(other.public()).unwrap();
        assert!(w.verify(A, b"hello", &sig).is_err(), "other key");
    }

    #[test]
    fn signatures_round_trip_through_hex_and_junk_is_refused() {
        let key = SecretKey::generate();
        let sig = sign(&key, A, b"x");
        let hex = signature_to_hex(&sig);
        assert_eq!(hex.len(), 128);
        assert_eq!(signature_from_hex(&hex).unwrap().to_bytes(), sig.to_bytes());
        assert!(signature_from_hex("abcd").is_err());
        assert!(signature_from_hex(&"zz".repeat(64)).is_err());
    }

    #[test]
    fn node_ids_parse_from_their_display_form() {
        let id = SecretKey::generate().public();
        assert_eq!(parse_node_id(&id.to_string()).unwrap(), id);
        assert!(parse_node_id("not-a-key").is_err());
    }

    #[test]
    fn remembered_ids_answer_as_a_fresh_parse_would_past_the_memory_s_size() {
        let ids: Vec<NodeId> = (0..SEEN_IDS * 2 + 1).map(|_| SecretKey::generate().public()).collect();
        for _ in 0..3 {
            for id in &ids {
                assert_eq!(parse_node_id(&id.to_string()).unwrap(), *id);
            }
        }
        // A text that is not a curve point is refused every time, never remembered.
        let bad = (2u8..)
            .map(|b| data_encoding::HEXLOWER.encode(&[&[b][..], &[0u8; 31]].concat()))
            .find(|t| t.parse::<NodeId>().is_err())
            .unwrap();
        assert!(parse_node_id(&bad).is_err());
        assert!(parse_node_id(&bad).is_err());
        assert_eq!(parse_node_id(&ids[0].to_string()).unwrap(), ids[0]);
    }
}
