//! What can go wrong making or reading supervision files.

/// A supervision file that cannot be made or read back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plist could not be written.
    #[error("cannot write the launchd plist: {0}")]
    PlistWrite(#[source] plist::Error),
    /// The plist on disk is not a launch agent netsky can read.
    #[error("the launchd plist is not readable: {0}")]
    PlistRead(#[source] plist::Error),
    /// A unit file without the line netsky needs.
    #[error("the systemd unit has no {0} line")]
    UnitMissing(&'static str),
    /// A quoted systemd value that does not parse.
    #[error("the systemd unit's {what} is malformed: {why}")]
    UnitMalformed {
        /// Which line.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// The shim's `--which` answer was not two lines.
    #[error("the shim answered {0:?}, not a binary and a reason")]
    ShimAnswer(String),
}
