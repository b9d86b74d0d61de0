//! Test-only failure hooks: a test says, for the path an operation works
//! on, that the operation fails there, so error paths run on real files.

use std::path::Path;

use crate::BusError;

/// Says, for a path, whether a test's failure applies to it.
pub(crate) type FailWhen = Box<dyn Fn(&Path) -> bool + Send>;

/// Where a test puts its [`FailWhen`] for one operation (`None`: no failure).
pub(crate) type Hook = std::sync::Mutex<Option<FailWhen>>;

/// Whether the test hook `hook` is set and says true of `path`.
pub(crate) fn says(hook: &Hook, path: &Path) -> bool {
    hook.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|fail| fail(path))
}

/// The error an injected failure of `op` on `path` reports: EIO, as a failing disk does.
pub(crate) fn eio(op: &'static str, path: &Path) -> BusError {
    BusError::Io { op, path: path.to_path_buf(), source: std::io::Error::from_raw_os_error(libc::EIO) }
}
