//! One barrier for a small put: an append-only segment per mailbox.
//!
//! A file of its own costs an envelope two flushes: its fsync and its
//! folder's (measured here: 0.36-0.38 ms for a lone write). A small put (a
//! `channel send`, a push of one to three) instead appends its envelopes, a
//! line each, to `<mailbox>/.journal/cur-<boot>.seg` and fdatasyncs that one
//! file: the durability point, one flush (0.14-0.18 ms). Then it lays them
//! out in `inbox/` as usual, atomically but unsynced.
//!
//! - Writers hold a shared flock on the segment from before their append
//!   until their files are laid out, and check after locking that the file
//!   they hold is still the current one (a checkpoint may have moved it).
//! - Records are written as `\n<json>\n`: a record torn by a full disk or a
//!   crash can never run into the next writer's line.
//! - Whoever creates a segment fsyncs `.journal/` and the mailbox folder
//!   before it returns, so every acknowledged record's segment is reachable.
//! - A checkpoint (see [`crate::journal`]'s settle) takes the lock
//!   exclusively, renames the segment `old-<boot>-<stamp>.seg` (new writers
//!   start a new one), lays out again what a writer killed between its
//!   barrier and its layout left only there, makes the files durable on
//!   their own and removes the segment. A segment of an earlier boot has
//!   every file compared with its record, as a batch journal has.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{BusError, durable};

/// A current segment this big is rotated by the next claim, not only by the tick.
pub(crate) const ROTATE_BYTES: u64 = 4 << 20;

/// A current segment this big takes no more records (nobody rotated it:
/// no claims, no daemon): writers fall back to a durable write per file, so
/// a segment never grows past what a settle reads whole.
pub(crate) const MAX_BYTES: u64 = 16 << 20;

/// How long a writer waits for a checkpoint's exclusive hold before it
/// writes its files the old way (a checkpoint holds it for one rename).
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// A segment's file name, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SegmentName {
    /// `cur-<boot>.seg`: the one writers append to.
    Current { boot: String },
    /// `old-<boot>-<stamp>.seg`: moved aside by a checkpoint, no writer touches it.
    Old { boot: String },
}

impl SegmentName {
    pub(crate) fn parse(name: &str) -> Option<SegmentName> {
        let stem = name.strip_suffix(".seg")?;
        let token = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric());
        if let Some(boot) = stem.strip_prefix("cur-") {
            return token(boot).then(|| SegmentName::Current { boot: boot.into() });
        }
        let (boot, stamp) = stem.strip_prefix("old-")?.split_once('-')?;
        let stamp_ok = !stamp.is_empty() && stamp.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
        (token(boot) && stamp_ok).then(|| SegmentName::Old { boot: boot.into() })
    }

    pub(crate) fn boot(&self) -> &str {
        match self {
            SegmentName::Current { boot } | SegmentName::Old { boot } => boot,
        }
    }
}

/// The current segment's name for `boot`.
pub(crate) fn current(boot: &str) -> String {
    format!("cur-{boot}.seg")
}

/// A unique name to move the current segment aside to.
pub(crate) fn old_name(boot: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("old-{boot}-{nanos}-{}-{seq}.seg", std::process::id())
}

/// Makes `items` durable in the current segment of `jdir`, then lays them
/// out in `inbox`. `Ok` means every item is durable and visible in `inbox`.
///
/// Falls back to a durable write per file when the segment stays locked
/// past [`LOCK_WAIT`].
pub(crate) fn append(
    jdir: &Path,
    boot: &str,
    inbox: &Path,
    items: &[(String, Vec<u8>)],
) -> Result<(), BusError> {
    let mut record = Vec::with_capacity(items.iter().map(|(_, b)| b.len() + 1).sum());
    for (n, b) in items {
        if b.last() != Some(&b'\n') || b[..b.len() - 1].contains(&b'\n') {
            return Err(BusError::BadEnvelope(format!("{n}: not one line of JSON")));
        }
        record.push(b'\n');
        record.extend_from_slice(b);
    }
    let path = jdir.join(current(boot));
    let io = |op: &'static str| BusError::io(op, &path);
    // Each round either appends or finds the segment moved aside meanwhile;
    // a checkpoint moves it at most once a claim, so a few rounds suffice.
    for _ in 0..8 {
        let (f, created) = match open_current(jdir, &path)? {
            Some(x) => x,
            None => continue,
        };
        #[cfg(test)]
        if let Some(look) = BEFORE_LOCK.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            look(&path);
        }
        if !lock_shared(&f) {
            break;
        }
        // Locked: still the current segment, or moved aside before we locked?
        let held = f.metadata().map_err(io("stat"))?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => {}
            _ => continue,
        }
        if held.len() >= MAX_BYTES {
            break;
        }
        (&f).write_all(&record).map_err(io("append"))?;
        f.sync_data().map_err(io("fdatasync"))?;
        if created {
            durable::fsync_dir(jdir)?;
            if let Some(mailbox) = jdir.parent() {
                durable::fsync_dir(mailbox)?;
            }
        }
        // Durable. Laid out under the shared lock, so no checkpoint judges
        // these records missing while we are still at it.
        for (n, b) in items {
            durable::write_unsynced_spare(inbox, n, b)?;
        }
        return Ok(());
    }
    durable::write_durable_batch(inbox, items)
}

/// A test's look between a writer's open of the segment and its lock.
#[cfg(test)]
pub(crate) static BEFORE_LOCK: std::sync::Mutex<Option<crate::journal::Look>> = std::sync::Mutex::new(None);

/// Opens (creating) the current segment for appending; `None` when it was
/// moved aside between two steps (try again). The bool says we created it.
fn open_current(jdir: &Path, path: &Path) -> Result<Option<(File, bool)>, BusError> {
    let open = |create: bool| {
        let mut o = OpenOptions::new();
        o.append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
        if create {
            o.create_new(true);
        }
        o.open(path)
    };
    match open(true) {
        Ok(f) => Ok(Some((f, true))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match open(false) {
            Ok(f) => Ok(Some((f, false))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BusError::Io { op: "open", path: path.to_path_buf(), source: e }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !jdir.is_dir() => {
            std::fs::create_dir_all(jdir).map_err(BusError::io("create", jdir))?;
            Ok(None)
        }
        Err(e) => Err(BusError::Io { op: "open", path: path.to_path_buf(), source: e }),
    }
}

/// A shared hold on `f`, waiting up to [`LOCK_WAIT`]; false if it never came.
fn lock_shared(f: &File) -> bool {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match f.try_lock_shared() {
            Ok(()) => return true,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_junk_is_not_one() {
        assert_eq!(SegmentName::parse(&current("abc")), Some(SegmentName::Current { boot: "abc".into() }));
        let old = old_name("abc");
        assert_eq!(SegmentName::parse(&old), Some(SegmentName::Old { boot: "abc".into() }), "{old}");
        for junk in
            ["cur-.seg", "cur-a-b.seg", "old-abc.seg", "old--1.seg", "cur-abc.open", "x.seg", "cur-a/b.seg"]
        {
            assert_eq!(SegmentName::parse(junk), None, "{junk}");
        }
    }
}
