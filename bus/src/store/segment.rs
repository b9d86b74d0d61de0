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
//! - A segment is created without its owner-execute bit: "its name may not
//!   be durable yet". Any writer that finds the bit clear fsyncs `.journal/`
//!   and the folder above it before it returns, then sets the bit; so no
//!   record is acknowledged in a segment whose name could be lost.
//! - A barrier that fails (EIO, a full disk) leaves the record in the file:
//!   the writer appends a `{"void":[names]}` line after it, and a recovery
//!   lays out no record a void takes back (the nearest earlier one of each
//!   name: a retry of the same id after it stands). The put fails and
//!   nothing arrives.
//! - Every claim's recovery also reads, while no writer holds the segment,
//!   what was appended since that process last looked, and lays out what a
//!   writer killed between its barrier and its layout left only there: it
//!   arrives with the next claim, in order, not with the next full checkpoint.
//! - A writer that cannot lay out a record it made durable (the put has
//!   succeeded) marks the segment [`UNLAID`]; the next claim's recovery then
//!   moves it aside and lays the record out before the claim lists the
//!   inbox, so the sender's later mail cannot overtake it.
//! - A checkpoint (see [`super::recover()`]) renames the segment
//!   `old-<boot>-<stamp>.seg` (new writers start a new one), then, holding
//!   the lock exclusively, lays out again what a writer killed between its
//!   barrier and its layout left only there, makes the files durable on
//!   their own and removes the segment. While a writer holds it, the rename
//!   still happens (so a steady stream of writers cannot keep it current
//!   forever) and the rest waits for a later recovery. A segment of an
//!   earlier boot has every file compared with its record, as a batch
//!   journal has.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::durable;
#[cfg(test)]
use super::hooks::{Hook, says};
use crate::BusError;

/// A current segment this big is rotated by the next claim, not only by the tick.
pub(crate) const ROTATE_BYTES: u64 = 4 << 20;

/// A current segment this big takes no more records (nobody rotated it:
/// no claims, no daemon): writers fall back to a durable write per file, so
/// a segment never grows past what recovery reads whole.
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

/// Whether two stats are of one file.
pub(crate) fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.ino() == b.ino() && a.dev() == b.dev()
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
        super::journal::one_line(n, b)?;
        record.push(b'\n');
        record.extend_from_slice(b);
    }
    let path = jdir.join(current(boot));
    let io = |op: &'static str| BusError::io(op, &path);
    // Each round either appends or finds the segment moved aside meanwhile;
    // a checkpoint moves it at most once a claim, so a few rounds suffice.
    for _ in 0..8 {
        let f = match open_current(jdir, &path) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            // Not a file we can append to (a FIFO, a directory, no permission):
            // the old way still works.
            Err(_) => break,
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
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| same_file(&m, &held)) {
            continue;
        }
        if !held.is_file() || held.len() + record.len() as u64 > MAX_BYTES {
            break;
        }
        // One write: O_APPEND places it whole after every other writer's,
        // where a second call could land behind someone else's record.
        let want = record.len();
        #[cfg(test)]
        let record = if says(&SHORT_WRITE, &path) && items.len() > 1 {
            // As a filling disk cuts it: the first envelope's line whole, the next one torn.
            record[..items[0].1.len() + 10].to_vec()
        } else {
            record
        };
        let n = (&f).write(&record).map_err(io("append"))?;
        if n != want {
            // A short write to a regular file means no room (or a size limit).
            // The torn line is no record, but the lines before it may be whole
            // envelopes of this put: voided, and the put fails as it would have.
            void(&f, &path, items);
            return Err(BusError::Io {
                op: "append (a short write)",
                path: path.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        // The record is in the file now: a failed barrier must void it, or the
        // next checkpoint would lay out a put that was reported failed.
        if let Err(e) = barrier(&f, &path, jdir, held.mode()) {
            void(&f, &path, items);
            return Err(e);
        }
        // Durable. Laid out under the shared lock, so no checkpoint judges
        // these records missing while we are still at it. A failure now is
        // no failure of the put (a retry would send it twice): the next
        // checkpoint lays out what the segment holds and the inbox lacks.
        for (n, b) in items {
            #[cfg(test)]
            if says(&FAIL_LAYOUT, &path) {
                mark_unlaid(&f, &path);
                break;
            }
            if let Err(e) = durable::write_unsynced(inbox, n, b) {
                tracing::warn!(segment = %path.display(), error = %e, "a durable put is not laid out yet: the next claim will");
                mark_unlaid(&f, &path);
                break;
            }
        }
        return Ok(());
    }
    durable::write_durable_batch(inbox, items)
}

/// Makes an appended record durable: the segment's data, and its name the
/// first time (see [`NAMED_DURABLY`]).
fn barrier(f: &File, path: &Path, jdir: &Path, mode: u32) -> Result<(), BusError> {
    #[cfg(test)]
    if says(&FAIL_BARRIER, path) {
        return Err(super::hooks::eio("fdatasync", path));
    }
    f.sync_data().map_err(BusError::io("fdatasync", path))?;
    if mode & NAMED_DURABLY == 0 {
        durable::fsync_dir(jdir)?;
        if let Some(above) = jdir.parent() {
            durable::fsync_dir(above)?;
        }
        // Only a hint for the next writer: without it, that one fsyncs the folders again.
        if let Err(e) = add_mode_bit(f, NAMED_DURABLY) {
            tracing::debug!(segment = %path.display(), error = %e, "cannot mark the segment's name durable");
        }
    }
    Ok(())
}

/// The mode bit that says a segment holds an acknowledged record whose
/// file a writer could not lay out: the next claim's recovery moves the
/// segment aside and lays it out first, so later mail from the same sender
/// cannot be delivered before it.
pub(crate) const UNLAID: u32 = 0o010;

/// Sets [`UNLAID`] on the segment `f` (a chmod needs no free space). If even
/// that fails, the daemon's tick lays the record out.
fn mark_unlaid(f: &File, path: &Path) {
    if let Err(e) = add_mode_bit(f, UNLAID) {
        tracing::warn!(segment = %path.display(), error = %e, "cannot mark the segment as holding an unlaid record: the tick will lay it out");
    }
}

/// Sets the mode bit `bit` of the segment `f`, keeping the others: the
/// segment's bits are marks writers leave each other ([`NAMED_DURABLY`],
/// [`UNLAID`]), and one writer's mark must not wipe another's.
fn add_mode_bit(f: &File, bit: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = f.metadata()?.mode() & 0o777;
    f.set_permissions(std::fs::Permissions::from_mode(mode | bit))
}

/// A record that takes back the envelopes of an earlier one whose barrier
/// failed: a recovery lays none of them out.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Void {
    /// The file names (`<id>.json`) taken back.
    pub(crate) void: Vec<String>,
}

/// Appends the [`Void`] of `items` to the segment `f`, in one write, and
/// flushes it: the record it takes back may be on disk already. If either
/// fails, the put's error stands but the envelopes may still arrive: said
/// loudly, with their names, for whoever reads the log.
fn void(f: &File, path: &Path, items: &[(String, Vec<u8>)]) {
    let names: Vec<String> = items.iter().map(|(n, _)| n.clone()).collect();
    let mut line = b"\n".to_vec();
    let written = serde_json::to_writer(&mut line, &Void { void: names.clone() })
        .map_err(std::io::Error::other)
        .and_then(|()| {
            line.push(b'\n');
            match (&*f).write(&line)? {
                n if n == line.len() => f.sync_data(),
                _ => Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            }
        });
    if let Err(e) = written {
        tracing::error!(segment = %path.display(), envelopes = ?names, error = %e, "a failed put could not be taken back: a recovery may still deliver it");
    }
}

/// A test's short write of a put's record, for segments it says true of.
#[cfg(test)]
pub(crate) static SHORT_WRITE: Hook = Hook::new(None);

/// A test's failure of the layout after the barrier, for segments it says true of.
#[cfg(test)]
pub(crate) static FAIL_LAYOUT: Hook = Hook::new(None);

/// A test's failure of the barrier of segments for which it says true.
#[cfg(test)]
pub(crate) static FAIL_BARRIER: Hook = Hook::new(None);

/// A test's look between a writer's open of the segment and its lock.
#[cfg(test)]
pub(crate) static BEFORE_LOCK: std::sync::Mutex<Option<super::journal::Look>> = std::sync::Mutex::new(None);

/// The mode bit that says a segment's name (and its folder's) is durable.
const NAMED_DURABLY: u32 = 0o100;

/// Opens (creating) the current segment for appending; `None` when it was
/// moved aside between two steps (try again). Never blocks on a FIFO.
fn open_current(jdir: &Path, path: &Path) -> Result<Option<File>, BusError> {
    let open = |create: bool| {
        let mut o = OpenOptions::new();
        o.append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        if create {
            o.create_new(true);
        }
        o.open(path)
    };
    // The segment exists for all but the first put after a checkpoint: opened first.
    let io = |e: std::io::Error| BusError::Io { op: "open", path: path.to_path_buf(), source: e };
    match open(false) {
        Ok(f) => return Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    match open(true) {
        Ok(f) => Ok(Some(f)),
        // Another writer made it meanwhile: open that one next round.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !jdir.is_dir() => {
            std::fs::create_dir_all(jdir).map_err(BusError::io("create", jdir))?;
            Ok(None)
        }
        Err(e) => Err(io(e)),
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
