//! Join tickets: one line that lets one named node join one mesh, once.
//!
//! A ticket carries the mesh, the mesh key, the root's id and addresses, the
//! invitee's name, an expiry and a one-time secret, signed by the mesh key.
//! The root remembers the secret in `mesh/tickets/` and burns it on first
//! use, so a ticket cannot be redeemed twice. Text form: `netsky1` followed by
//! lowercase base32 of the postcard encoding.

use std::net::SocketAddr;

use netsky_bus::NodeName;
use netsky_keys::{Domain, NodeId, SecretKey, Signature, Verifier, sign};
use serde::{Deserialize, Serialize};

use crate::MeshError;

/// Domain-separation tag of ticket signatures.
pub const TICKET_DOMAIN: Domain = Domain(b"netsky/ticket/v1\0");

const PREFIX: &str = "netsky1";

/// The longest ticket text we parse.
pub const MAX_TICKET_CHARS: usize = 4096;

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    /// The mesh's name.
    pub mesh: String,
    /// The mesh key (which signs this ticket and every charter).
    pub mesh_key: NodeId,
    /// The root's node id.
    pub root: NodeId,
    /// The root's direct addresses.
    pub root_addrs: Vec<SocketAddr>,
    /// The one node name this ticket admits.
    pub invitee: NodeName,
    /// Unix seconds after which the ticket is void.
    pub expires: i64,
    /// The one-time secret the root burns on redemption.
    pub secret: [u8; 16],
}

/// A signed ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The content.
    pub body: TicketBody,
    /// The mesh key's signature over the content.
    pub sig: Signature,
}

impl TicketBody {
    /// Signs the ticket with the mesh key.
    pub fn sign(self, mesh_key: &SecretKey) -> Ticket {
        let bytes = postcard::to_allocvec(&self).expect("postcard encodes plain structs into a Vec");
        let sig = sign(mesh_key, TICKET_DOMAIN, &bytes);
        Ticket { body: self, sig }
    }

    /// The secret in hex, as the root files it.
    pub fn secret_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.secret)
    }
}

impl Ticket {
    /// The one-line text form.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_allocvec(self).expect("postcard encodes plain structs into a Vec");
        format!("{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }

    /// Parses the text form; checks the signature against the mesh key it names.
    pub fn decode(text: &str) -> Result<Ticket, MeshError> {
        let text = text.trim();
        if text.len() > MAX_TICKET_CHARS {
            return Err(MeshError::Ticket(format!("{} characters, longer than any ticket", text.len())));
        }
        let rest = text.strip_prefix(PREFIX).ok_or_else(|| {
            MeshError::Ticket(format!("does not start with {PREFIX:?}; copy the whole line"))
        })?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(rest.to_ascii_uppercase().as_bytes())
            .map_err(|e| MeshError::Ticket(format!("not base32 (truncated or mistyped?): {e}")))?;
        let t: Ticket =
            postcard::from_bytes(&bytes).map_err(|e| MeshError::Ticket(format!("malformed ticket: {e}")))?;
        t.verify()?;
        Ok(t)
    }

    /// Checks the mesh key's signature.
    pub fn verify(&self) -> Result<(), MeshError> {
        let bytes = postcard::to_allocvec(&self.body).expect("postcard encodes plain structs into a Vec");
        Verifier::new(self.body.mesh_key)?.verify(TICKET_DOMAIN, &bytes, &self.sig).map_err(|_| {
            MeshError::Ticket(format!(
                "signature does not verify with mesh key {}",
                self.body.mesh_key.fmt_short()
            ))
        })
    }

    /// Checks expiry against `now` (unix seconds).
    pub fn check_fresh(&self, now: i64) -> Result<(), MeshError> {
        if now > self.body.expires {
            return Err(MeshError::Ticket(format!(
                "expired {} s ago; ask the root for a new one (`netsky mesh invite {}`)",
                now.saturating_sub(self.body.expires),
                self.body.invitee
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(mk: &SecretKey) -> TicketBody {
        TicketBody {
            mesh: "home".into(),
            mesh_key: mk.public(),
            root: SecretKey::generate().public(),
            root_addrs: vec!["127.0.0.1:4000".parse().unwrap()],
            invitee: "laptop".parse().unwrap(),
            expires: 2_000_000_000,
            secret: [9; 16],
        }
    }

    #[test]
    fn a_ticket_round_trips_through_its_text_form() {
        let mk = SecretKey::generate();
        let t = body(&mk).sign(&mk);
        let text = t.encode();
        assert!(text.starts_with("netsky1") && !text.contains(char::is_whitespace));
        assert_eq!(Ticket::decode(&format!("  {text}\n")).unwrap(), t);
    }

    #[test]
    fn every_wrong_kind_of_ticket_is_refused() {
        let mk = SecretKey::generate();
        let good = body(&mk).sign(&mk).encode();
        // Signed by another key than the one it names.
        let other = SecretKey::generate();
        let forged = Ticket { body: body(&mk), sig: body(&mk).sign(&other).sig }.encode();
        // Edited after signing: another invitee.
        let mut edited = body(&mk).sign(&mk);
        edited.body.invitee = "evil".parse().unwrap();
        // Valid base32 of a payload cut short.
        let raw = postcard::to_allocvec(&body(&mk).sign(&mk)).unwrap();
        let short_payload = format!(
            "netsky1{}",
            data_encoding::BASE32_NOPAD.encode(&raw[..raw.len() - 5]).to_ascii_lowercase()
        );
        // Cut to a length no base32 text has (1, 3 or 6 past a multiple of 8):
        // whether 3 characters less is one depends on the ticket's varint sizes.
        let body_len = good.len() - "netsky1".len();
        let cut = (1..8).find(|k| [1, 3, 6].contains(&((body_len - k) % 8))).unwrap();
        let cases = [
            ("", "start"),
            ("netsky2abc", "start"),
            (&short_payload, "malformed"),
            (&good[..good.len() - cut], "truncated"),
            (&format!("{good}!"), "base32"),
            (&forged, "does not verify"),
            (&edited.encode(), "does not verify"),
            (&"netsky1a".repeat(600), "longer"),
        ];
        for (text, want) in cases {
            let e = Ticket::decode(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:.20}: {e}");
        }
        let t = Ticket::decode(&good).unwrap();
        assert!(t.check_fresh(2_000_000_001).unwrap_err().to_string().contains("expired"));
        t.check_fresh(1_999_999_999).unwrap();
    }
}
