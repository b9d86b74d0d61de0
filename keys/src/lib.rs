//! netsky identities.
//!
//! This crate owns every secret a node holds: the node key (whose public half
//! is the node id, which is also the node's iroh endpoint id) and, on the node
//! that created a mesh, the mesh authority key. It writes and loads key files
//! with strict permissions, and it is the one place where bytes are signed and
//! verified, always under a domain-separation prefix so a signature made for
//! one kind of record can never be replayed as another.
//!
//! It knows nothing of envelopes, charters or the network.

mod batch;
mod error;
mod keyfile;
mod sign;

pub use batch::{ToVerify, verify_all};
pub use error::KeyError;
pub use keyfile::{KeyFile, create_key_file, load_key_file, save_key_file};
pub use sign::{
    Domain, NodeId, SecretKey, Signature, Verifier, parse_node_id, sign, signature_from_hex, signature_to_hex,
};
