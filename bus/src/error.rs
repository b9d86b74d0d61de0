//! The one error type of the bus crate.

use std::path::PathBuf;

/// What went wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A name or address does not follow the grammar.
    #[error("invalid {what} {input:?}: {reason}")]
    BadName {
        /// Which kind of name (node name, agent name, address).
        what: &'static str,
        /// The text, cut to a printable length.
        input: String,
        /// What the grammar expects.
        reason: &'static str,
    },
    /// An envelope could not be built from the given parts.
    #[error("envelope refused: {0}")]
    BadEnvelope(String),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The OS gave no randomness (for an envelope id).
    #[error("no randomness from the OS: {0}")]
    NoRandomness(String),
    /// The mailbox is held by another process for longer than we wait.
    #[error("mailbox {path} is busy: another process holds its lock (a running daemon or drain)")]
    Busy {
        /// The mailbox directory.
        path: PathBuf,
    },
}

impl BusError {
    /// Wraps an io error with what was done and where.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BusError {
        let path = path.into();
        move |source| BusError::Io { op, path, source }
    }
}

/// Cuts user input for an error message so a huge input makes a short error.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}
