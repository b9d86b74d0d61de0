//! The one error type of the keys crate.

use std::path::PathBuf;

/// What went wrong with a key, a key file or a signature.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file exists already; keys are never overwritten.
    #[error(
        "key file {path} exists already; netsky never overwrites a key (move it away by hand if you really mean to replace it)"
    )]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// The key file can be read by group or others.
    #[error("key file {path} has mode {mode:o}, readable by group or others; fix with: chmod 600 {path}")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is not a regular file (symlinks are not followed).
    #[error("key file {path} is not a regular file (symlinks and other kinds are refused)")]
    NotRegular {
        /// The key file.
        path: PathBuf,
    },
    /// The key file does not hold a 32-byte key in hex.
    #[error("key file {path} is malformed: {reason}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A node id string is not a valid ed25519 public key.
    #[error("invalid node id {input:?}: {reason}")]
    BadNodeId {
        /// The text that failed to parse.
        input: String,
        /// Why.
        reason: String,
    },
    /// A signature string is not 64 bytes of hex.
    #[error("malformed signature: {reason}")]
    BadSignature {
        /// Why.
        reason: String,
    },
    /// A signature does not verify with the key it was checked against.
    #[error("signature does not verify with key {node}")]
    Forged {
        /// The key it was checked against.
        node: NodeIdText,
    },
}

/// A node id rendered for an error message.
pub type NodeIdText = String;
