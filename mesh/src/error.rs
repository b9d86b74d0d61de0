//! The one error type of the mesh crate.

use std::path::PathBuf;

/// What went wrong in the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A charter failed to parse, verify, or follow the rules.
    #[error("charter refused: {0}")]
    Charter(String),
    /// A join ticket failed to parse or verify, or was refused by the root.
    #[error("ticket refused: {0}")]
    Ticket(String),
    /// A frame on the wire was oversized, truncated, malformed or late.
    #[error("protocol error with {peer}: {reason}")]
    Protocol {
        /// The peer (short id) or "local".
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// The iroh endpoint could not be built or bound.
    #[error("cannot bind the mesh endpoint on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// iroh's reason.
        reason: String,
    },
    /// A connection to a peer failed.
    #[error("cannot reach {peer}: {reason}")]
    Connect {
        /// The peer (name or short id).
        peer: String,
        /// Why.
        reason: String,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bus refused something.
    #[error(transparent)]
    Bus(#[from] netsky_bus::BusError),
    /// A key operation failed.
    #[error(transparent)]
    Key(#[from] netsky_keys::KeyError),
}

impl MeshError {
    /// Wraps an io error with what was done and where.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> MeshError {
        let path = path.into();
        move |source| MeshError::Io { op, path, source }
    }
}
