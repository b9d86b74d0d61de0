//! Advisory file locks (flock) with a bounded wait: the one way netsky
//! serialises processes over a folder (a mailbox's claims, the charter, the
//! constellation, the daemon of a home). A lock dies with its process, so a
//! kill -9 never leaves one behind.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// A held lock; released on drop (or when the process exits).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Takes an exclusive lock on `path` (created if missing), waiting up to
/// `wait`; `Ok(None)` when another holder keeps it that long.
pub fn lock_file(path: &Path, wait: Duration) -> std::io::Result<Option<FileLock>> {
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    let deadline = Instant::now() + wait;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(Some(FileLock { _file: f })),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Whether another process holds the lock on `path` right now (without taking it).
pub fn is_locked(path: &Path) -> bool {
    let Ok(f) = OpenOptions::new().read(true).open(path) else { return false };
    // A shared probe: it fails only while someone holds the lock exclusively.
    matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".lock");
        let held = lock_file(&p, Duration::ZERO).unwrap().expect("free at first");
        assert!(is_locked(&p));
        assert!(lock_file(&p, Duration::from_millis(30)).unwrap().is_none(), "busy while held");
        drop(held);
        assert!(!is_locked(&p));
        assert!(lock_file(&p, Duration::ZERO).unwrap().is_some());
    }
}
