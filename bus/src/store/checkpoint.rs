//! Checkpoint: laid-out files made durable on their own, their journals removed.
//!
//! A journal's barrier covers its files only while the journal exists; a
//! checkpoint ends that. It runs when recovery says it is due (see
//! [`super::Checkpoint`]), so many puts share one flush.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::durable;
use super::recover::{Places, Recovered, find, open_journal, remove_journal};
use crate::{BusError, Envelope};

/// Makes the files of `laid` journals durable on their own, then removes
/// the journals; returns how many files it had to write again.
///
/// Linux: one `syncfs`. It reports a writeback error of any file on the
/// filesystem, and only once: when it fails, each journaled file is fsynced
/// on its own instead, which tells ours from another program's, and a file
/// of ours whose writeback failed is written again from its record.
pub(super) fn checkpoint(jdir: &Path, places: Places<'_>, laid: &[PathBuf]) -> Result<usize, BusError> {
    #[cfg(target_os = "linux")]
    let rewritten = match sync_filesystem(jdir) {
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!(error = %e, "syncfs failed; syncing the journaled files one by one");
            sync_each_file(places, laid)?.1
        }
    };
    #[cfg(not(target_os = "linux"))]
    let rewritten = sync_each_file(places, laid)?.1;
    for j in laid {
        remove_journal(j)?;
    }
    // Not for safety (a journal that comes back is checkpointed again), for tidiness.
    durable::fsync_dir(jdir)?;
    Ok(rewritten)
}

/// A test's failure of the `syncfs` of a checkpoint, for journal folders it says true of.
#[cfg(test)]
pub(crate) static FAIL_SYNCFS: super::hooks::Hook = super::hooks::Hook::new(None);

/// A test's failure of a journaled file's fsync, for files it says true of.
#[cfg(test)]
pub(crate) static FAIL_FILE_FSYNC: super::hooks::Hook = super::hooks::Hook::new(None);

/// One `syncfs` for the filesystem that holds `dir`: every file laid out
/// before it is durable after it, for one flush.
#[cfg(target_os = "linux")]
fn sync_filesystem(dir: &Path) -> Result<(), BusError> {
    use std::os::fd::AsRawFd;
    #[cfg(test)]
    if super::hooks::says(&FAIL_SYNCFS, dir) {
        return Err(super::hooks::eio("syncfs", dir));
    }
    let d = std::fs::File::open(dir).map_err(BusError::io("open", dir))?;
    // SAFETY: syncfs only reads the descriptor it is given.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(BusError::Io {
            op: "syncfs",
            path: dir.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Where there is no `syncfs`, or it failed: each journaled file fsynced
/// where it is now, then its folders, whose fsync (a full flush on macOS)
/// seals them all. A file whose fsync fails (its writeback failed: the page
/// cache may no longer match the disk) is written again from its record,
/// durably, in place. Returns how many files it synced, and how many of
/// those it wrote again.
pub(crate) fn sync_each_file(places: Places<'_>, laid: &[PathBuf]) -> Result<(usize, usize), BusError> {
    use std::os::fd::AsRawFd;
    let (mut synced, mut rewritten) = (0, 0);
    for j in laid {
        let mut ignored = Recovered::default();
        let Some((_f, records)) = open_journal(j, false, &mut ignored)? else { continue };
        for rec in &records {
            let Ok(env) = Envelope::from_json(rec) else { continue };
            let Some(p) = find(places, &env.file_name())? else { continue };
            let f = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BusError::Io { op: "open", path: p, source: e }),
            };
            // SAFETY: fsync only reads the descriptor. Plain fsync: the
            // folders' sync below flushes the drive once for all of them.
            let failed = unsafe { libc::fsync(f.as_raw_fd()) } != 0;
            #[cfg(test)]
            let failed = failed || super::hooks::says(&FAIL_FILE_FSYNC, &p);
            if failed {
                let e = std::io::Error::last_os_error();
                // A refused copy is evidence, not mail: it is not ours to rewrite.
                let Some(dir) = p.parent().filter(|d| !d.starts_with(places.refused)) else {
                    return Err(BusError::Io { op: "fsync", path: p, source: e });
                };
                tracing::warn!(file = %p.display(), error = %e, "writeback failed; writing the envelope again from its journal");
                durable::write_durable(dir, &env.file_name(), rec)?;
                rewritten += 1;
            }
            synced += 1;
        }
    }
    durable::fsync_dir(places.lay_out)?;
    for d in places.moved_on {
        durable::fsync_dir(d)?;
    }
    Ok((synced, rewritten))
}
