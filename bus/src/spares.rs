//! Spare files: empty files made ahead of time, so a durable write on the
//! hot path does not have to allocate an inode.
//!
//! Creating a file can cost more than its fsync. ext4 without a journal,
//! for one, scans every inode freed in the last minute (six, while its
//! inode table block is dirty) before it reuses one: after a cleanup nearby, a create took 0.4-0.7 ms on
//! the test VM, against 0.3-0.4 ms for the fsync. So the daemon keeps a few
//! empty files in `<dir>/.spares/` for the folders it expects writes into,
//! refilled in bulk once half are used ([`refill`]), off the path of any
//! send, and [`crate::write_durable`] takes
//! one when it finds one ([`claim`]) instead of creating its temp file.
//!
//! Taking a spare is a rename to the writer's own temp name: exactly one
//! writer wins each spare, and from then on it is an ordinary temp file
//! (write, fsync, rename into place, fsync the folder). No spare, or a lost
//! race for all of the first few: the writer creates its file as before.
//! Spares are never made durable: one lost in a crash is simply made again.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::BusError;

/// The folder of spares inside a target folder (a dot name: scanners skip it).
pub const SPARES_DIR: &str = ".spares";

/// Spares a daemon keeps in each folder it tops up.
pub const SPARES_PER_DIR: usize = 16;

/// Spares left at which a refill starts: refilling in bulk keeps the file
/// creation off most of a steady stream of sends, not a little off each.
pub const SPARES_LOW: usize = SPARES_PER_DIR / 2;

/// Spares a writer tries before it creates a file instead (others may be
/// taking the same ones at the same moment).
const CLAIM_TRIES: usize = 4;

/// The spares folder of `dir`.
pub fn spares_dir(dir: &Path) -> PathBuf {
    dir.join(SPARES_DIR)
}

/// The spares folder of `dir` if it is a real folder: a symlink there
/// (or anything else) is never followed out of the home.
fn real_spares_dir(dir: &Path) -> Option<PathBuf> {
    let sd = spares_dir(dir);
    std::fs::symlink_metadata(&sd).ok().filter(|m| m.file_type().is_dir()).map(|_| sd)
}

/// Takes a spare of `dir` as the temp file `tmp` (in `dir`), open for writing.
///
/// `None` when there is none to take; the caller then creates `tmp` itself.
pub(crate) fn claim(dir: &Path, tmp: &Path) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    let rd = std::fs::read_dir(real_spares_dir(dir)?).ok()?;
    for e in rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())).take(CLAIM_TRIES) {
        if std::fs::rename(e.path(), tmp).is_err() {
            // Taken by another writer between the listing and now.
            continue;
        }
        // Only an empty file of its own: never truncate an inode with another
        // name (after a crash, fsck can leave a spare's old name beside the
        // envelope it became), nor write through whatever replaced the spare.
        let f =
            OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(tmp).ok();
        match f {
            Some(f) if f.metadata().is_ok_and(|m| m.is_file() && m.nlink() == 1 && m.len() == 0) => {
                return Some(f);
            }
            // Out of the way (unlinking this name leaves any other name alone), and on to the next.
            _ => {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
    None
}

/// Makes spares in `dir` until it holds `want`; returns how many were made.
///
/// Spares have fixed names (`0`, `1`, ...): refills running at once (the
/// ticker's and the mesh's) fill the same slots, never more than `want`.
/// Creates `<dir>/.spares/` (0700) if needed; `dir` itself must exist.
pub fn top_up(dir: &Path, want: usize) -> Result<usize, BusError> {
    let sd = match real_spares_dir(dir) {
        Some(sd) => sd,
        None => {
            let sd = spares_dir(dir);
            if !dir.is_dir() {
                let e = std::io::Error::from(std::io::ErrorKind::NotFound);
                return Err(BusError::Io { op: "top up spares in", path: dir.to_path_buf(), source: e });
            }
            match std::fs::DirBuilder::new().mode(0o700).create(&sd) {
                Ok(()) => sd,
                // A refill at the same moment made it.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && real_spares_dir(dir).is_some() => {
                    sd
                }
                Err(e) => return Err(BusError::Io { op: "create", path: sd, source: e }),
            }
        }
    };
    let mut made = 0;
    for i in 0..want {
        let p = sd.join(i.to_string());
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
        {
            Ok(_) => made += 1,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(BusError::Io { op: "create spare", path: p, source: e }),
        }
    }
    Ok(made)
}

/// Refills `dir` to [`SPARES_PER_DIR`] once it holds [`SPARES_LOW`] or fewer;
/// returns how many were made.
pub fn refill(dir: &Path) -> Result<usize, BusError> {
    if count(dir) > SPARES_LOW {
        return Ok(0);
    }
    top_up(dir, SPARES_PER_DIR)
}

/// [`refill`] for each of `dirs`; a folder that cannot be refilled is logged
/// and skipped (its writers create files as before). Returns how many were made.
pub fn refill_each(dirs: impl IntoIterator<Item = PathBuf>) -> usize {
    dirs.into_iter()
        .map(|d| {
            refill(&d).unwrap_or_else(|e| {
                tracing::debug!(dir = %d.display(), error = %e, "spares not refilled");
                0
            })
        })
        .sum()
}

/// How many spares `dir` holds now (up to 1024).
pub fn count(dir: &Path) -> usize {
    real_spares_dir(dir)
        .and_then(|sd| std::fs::read_dir(sd).ok())
        .map(|rd| rd.take(1024).count())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_up_fills_to_the_count_and_no_further() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(top_up(d.path(), 5).unwrap(), 5);
        assert_eq!(count(d.path()), 5);
        assert_eq!(top_up(d.path(), 5).unwrap(), 0);
        assert_eq!(top_up(d.path(), 7).unwrap(), 2);
        assert_eq!(count(d.path()), 7);
    }

    #[test]
    fn a_refill_waits_for_the_low_mark_then_fills_up() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(refill(d.path()).unwrap(), SPARES_PER_DIR);
        for i in 0..SPARES_PER_DIR - SPARES_LOW {
            assert!(claim(d.path(), &d.path().join(format!(".{i}.tmp"))).is_some());
            let made = refill(d.path()).unwrap();
            let last = i == SPARES_PER_DIR - SPARES_LOW - 1;
            assert_eq!(made, if last { SPARES_PER_DIR - SPARES_LOW } else { 0 }, "after {} taken", i + 1);
        }
        assert_eq!(count(d.path()), SPARES_PER_DIR);
    }

    #[test]
    fn top_up_of_a_missing_folder_fails_and_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        let err = top_up(&d.path().join("nope"), 3).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_claim_takes_one_spare_and_none_when_there_are_none() {
        let d = tempfile::tempdir().unwrap();
        assert!(claim(d.path(), &d.path().join(".a.tmp")).is_none());
        top_up(d.path(), 2).unwrap();
        assert!(claim(d.path(), &d.path().join(".a.tmp")).is_some());
        assert_eq!(count(d.path()), 1);
        assert!(d.path().join(".a.tmp").is_file());
    }

    #[test]
    fn a_claim_passes_over_what_is_not_a_plain_file() {
        let d = tempfile::tempdir().unwrap();
        let sd = spares_dir(d.path());
        std::fs::create_dir(&sd).unwrap();
        std::fs::create_dir(sd.join("a-dir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", sd.join("a-link")).unwrap();
        assert!(claim(d.path(), &d.path().join(".a.tmp")).is_none());
        assert!(!d.path().join(".a.tmp").exists());
        assert!(sd.join("a-dir").is_dir() && sd.join("a-link").symlink_metadata().is_ok());
    }

    #[test]
    fn a_symlinked_spares_folder_is_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), b"keep me").unwrap();
        std::os::unix::fs::symlink(outside.path(), spares_dir(d.path())).unwrap();
        assert!(claim(d.path(), &d.path().join(".a.tmp")).is_none());
        assert!(top_up(d.path(), 4).is_err());
        assert_eq!(count(d.path()), 0);
        assert_eq!(std::fs::read(outside.path().join("precious")).unwrap(), b"keep me");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_spare_that_is_another_file_too_is_dropped_untouched() {
        // After a crash, fsck can leave a spare's old name on the inode that became an envelope.
        let d = tempfile::tempdir().unwrap();
        let sd = spares_dir(d.path());
        std::fs::create_dir(&sd).unwrap();
        std::fs::write(d.path().join("env.json"), b"an envelope").unwrap();
        std::fs::hard_link(d.path().join("env.json"), sd.join("0")).unwrap();
        std::fs::write(sd.join("1"), b"not empty").unwrap();
        assert!(claim(d.path(), &d.path().join(".a.tmp")).is_none());
        assert_eq!(std::fs::read(d.path().join("env.json")).unwrap(), b"an envelope");
        assert!(!d.path().join(".a.tmp").exists());
        assert_eq!(count(d.path()), 0, "both taken out of the pool");
    }

    #[test]
    fn refills_at_once_never_overfill() {
        let d = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| top_up(d.path(), SPARES_PER_DIR).unwrap());
            }
        });
        assert_eq!(count(d.path()), SPARES_PER_DIR);
    }

    #[test]
    fn racing_writers_never_share_a_spare() {
        let d = tempfile::tempdir().unwrap();
        top_up(d.path(), 64).unwrap();
        let got: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    let dir = d.path();
                    s.spawn(move || {
                        (0..32).filter(|i| claim(dir, &dir.join(format!(".{t}.{i}.tmp"))).is_some()).count()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        // Every spare taken went to exactly one writer.
        assert_eq!(got + count(d.path()), 64);
        let temps =
            std::fs::read_dir(d.path()).unwrap().filter(|e| e.as_ref().unwrap().path().is_file()).count();
        assert_eq!(temps, got);
    }
}
