//! Group commit: one durability barrier for a whole batch of envelopes.
//!
//! A batch put writes every envelope, one JSON line each, into a journal
//! file in `<mailbox>/.journal/` and fsyncs it and its folder: that is the
//! durability point, one barrier for the batch where per-file fsyncs pay one
//! each (on a Mac every `F_FULLFSYNC` flushes the drive). Then it lays the
//! envelopes out in `inbox/` as ordinary files, atomically (temp file and
//! rename) but without fsyncs of their own. Readers see the same files as
//! ever; the journal is only what a crash recovers from. Its name says where
//! it stands:
//!
//! - `<id>.<boot>.open`: being laid out; its writer holds an flock on it. One
//!   found unlocked belongs to a writer that died mid-way: what it did not
//!   lay out is laid out again (durably) by the next settle.
//! - `<id>.<boot>.laid`: laid out, but the files may still be only in the
//!   page cache. A checkpoint makes them durable on their own (`syncfs` on
//!   Linux; elsewhere an fsync per file, then one full flush) and removes it.
//! - `<boot>` is the kernel's boot id. In the same boot a process crash
//!   cannot lose what is in the page cache; a journal from an earlier boot
//!   (a power cut before its checkpoint) has each file compared with its
//!   record, and a missing or damaged one written again, durably.
//!
//! Settling runs under the mailbox lock, at the start of every claim (which
//! checkpoints once [`CHECKPOINT_AT`] journals wait) and from the daemon's
//! tick (which checkpoints whatever waits).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{BusError, Envelope, durable};

/// Batches this big or bigger go through a journal; smaller ones are
/// written file by file (a journal is one more file and two more renames).
pub(crate) const MIN_BATCH: usize = 4;

/// Envelope bytes per journal at most; a bigger batch takes several.
const MAX_JOURNAL_BYTES: usize = 8 << 20;

/// Laid-out journals a claim lets wait before it checkpoints them.
pub(crate) const CHECKPOINT_AT: usize = 32;

/// Temp files in `.journal/` older than this are a crashed writer's (never acked).
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// The lifecycle folders of one mailbox, in the order envelopes move through them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Places<'a> {
    pub inbox: &'a Path,
    pub claimed: &'a Path,
    pub delivered: &'a Path,
    pub poison: &'a Path,
}

/// What one settle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Envelopes a crashed writer had not laid out, now in the inbox.
    pub relaid: usize,
    /// Files of an earlier boot's journal found missing or damaged and written again.
    pub restored: usize,
    /// Journals checkpointed (their files durable on their own) and removed.
    pub checkpointed: usize,
    /// Journals that could not be read, renamed `*.bad` and kept as evidence.
    pub bad: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Laid,
}

/// A journal's file name, taken apart: `<id>.<boot>.<open|laid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JournalName {
    id: String,
    boot: String,
    state: State,
}

impl JournalName {
    fn parse(name: &str) -> Option<JournalName> {
        if name.starts_with('.') {
            return None;
        }
        let mut parts = name.rsplitn(3, '.');
        let state = match parts.next()? {
            "open" => State::Open,
            "laid" => State::Laid,
            _ => return None,
        };
        let boot = parts.next()?.to_string();
        let id = parts.next()?.to_string();
        let ok = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
        (ok(&id) && ok(&boot)).then_some(JournalName { id, boot, state })
    }

    fn file(&self, state: State) -> String {
        let s = match state {
            State::Open => "open",
            State::Laid => "laid",
        };
        format!("{}.{}.{s}", self.id, self.boot)
    }
}

/// This boot of the kernel, as a file-name-safe token ("unknown" where the OS tells none).
pub(crate) fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        read_boot_id()
            .map(|b| b.chars().filter(char::is_ascii_alphanumeric).take(64).collect::<String>())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "unknown".into())
    })
}

#[cfg(target_os = "linux")]
fn read_boot_id() -> Option<String> {
    let mut s = String::new();
    File::open("/proc/sys/kernel/random/boot_id").ok()?.take(128).read_to_string(&mut s).ok()?;
    Some(s)
}

#[cfg(target_os = "macos")]
fn read_boot_id() -> Option<String> {
    let mut buf = [0u8; 128];
    let mut len: libc::size_t = buf.len();
    // SAFETY: sysctlbyname writes at most `len` bytes into `buf` and sets `len`.
    let r = unsafe {
        libc::sysctlbyname(
            c"kern.bootsessionuuid".as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (r == 0).then(|| String::from_utf8_lossy(&buf[..len.min(buf.len())]).into_owned())
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn read_boot_id() -> Option<String> {
    None
}

/// Makes `items` durable as journals in `jdir`, then lays them out in `inbox`.
///
/// `Ok` means every item is durable (in its journal) and visible in `inbox`.
pub(crate) fn commit(jdir: &Path, inbox: &Path, items: &[(String, Vec<u8>)]) -> Result<(), BusError> {
    ensure_dir(jdir)?;
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < items.len() && (end == start || bytes + items[end].1.len() < MAX_JOURNAL_BYTES) {
            bytes += items[end].1.len() + 1;
            end += 1;
        }
        commit_one(jdir, inbox, &items[start..end])?;
        start = end;
    }
    Ok(())
}

/// `jdir`, made (and its entry made durable) when missing.
fn ensure_dir(jdir: &Path) -> Result<(), BusError> {
    if jdir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(jdir).map_err(BusError::io("create", jdir))?;
    match jdir.parent() {
        Some(p) => durable::fsync_dir(p),
        None => Ok(()),
    }
}

fn commit_one(jdir: &Path, inbox: &Path, items: &[(String, Vec<u8>)]) -> Result<(), BusError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Unique without randomness: the first envelope's id, this process, a counter.
    let stem: String = items[0].0.chars().take_while(char::is_ascii_alphanumeric).collect();
    let name = JournalName {
        id: format!("{stem}-{}-{seq}", std::process::id()),
        boot: boot_id().to_string(),
        state: State::Open,
    };
    let mut body = Vec::with_capacity(items.iter().map(|(_, b)| b.len() + 1).sum());
    for (n, b) in items {
        // One line per envelope: an encoded envelope is compact JSON and a
        // newline, so it is its own line, byte for byte.
        if b.last() != Some(&b'\n') || b[..b.len() - 1].contains(&b'\n') {
            return Err(BusError::BadEnvelope(format!("{n}: not one line of JSON")));
        }
        body.extend_from_slice(b);
    }
    // Locked before it has the name a settle reads: a settle never takes a
    // journal whose writer is alive for one whose writer died.
    let tmp = jdir.join(format!(".{}.tmp", name.id));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(BusError::io("create", &tmp))?;
    let open = jdir.join(name.file(State::Open));
    let fail = |op: &'static str, path: &Path, e: std::io::Error, remove: &Path| {
        let _ = std::fs::remove_file(remove);
        BusError::Io { op, path: path.to_path_buf(), source: e }
    };
    if let Err(e) = f.try_lock() {
        let e = match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => std::io::Error::other("a new journal is locked already"),
        };
        return Err(fail("lock", &tmp, e, &tmp));
    }
    std::fs::rename(&tmp, &open).map_err(|e| fail("rename", &open, e, &tmp))?;
    // Before the barrier nothing was promised: a failure removes the journal.
    f.write_all(&body).map_err(|e| fail("write", &open, e, &open))?;
    f.sync_data().map_err(|e| fail("fsync", &open, e, &open))?;
    durable::fsync_dir(jdir).inspect_err(|_| {
        let _ = std::fs::remove_file(&open);
    })?;
    // Durable. A failure from here on leaves the journal `.open`, unlocked
    // once `f` drops: the next settle lays out what is missing.
    for (n, b) in items {
        durable::write_unsynced(inbox, n, b)?;
    }
    let laid = jdir.join(name.file(State::Laid));
    std::fs::rename(&open, &laid).map_err(BusError::io("rename", &laid))?;
    drop(f);
    Ok(())
}

/// Recovers what crashed writers and earlier boots left, and checkpoints
/// laid-out journals: all of them with `force`, else once [`CHECKPOINT_AT`] wait.
///
/// The caller holds the mailbox lock: no claim moves files meanwhile.
pub(crate) fn settle(jdir: &Path, places: Places<'_>, force: bool) -> Result<Settled, BusError> {
    let mut out = Settled::default();
    let rd = match std::fs::read_dir(jdir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(BusError::Io { op: "list", path: jdir.to_path_buf(), source: e }),
    };
    let mut names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    durable::sweep_stale_named(jdir, names.iter().map(String::as_str), STALE_TEMP);
    let boot = boot_id();
    let mut laid: Vec<PathBuf> = Vec::new();
    for n in &names {
        let Some(j) = JournalName::parse(n) else { continue };
        let path = jdir.join(n);
        if j.boot != boot {
            // A power cut may have taken what was only in the page cache.
            let Some((_f, records)) = open_journal(&path, false, &mut out)? else { continue };
            out.restored += restore(&records, places, true)?;
            remove_journal(&path)?;
            continue;
        }
        match j.state {
            State::Laid => laid.push(path),
            State::Open => {
                let Some((_f, records)) = open_journal(&path, true, &mut out)? else { continue };
                out.relaid += restore(&records, places, false)?;
                let to = jdir.join(j.file(State::Laid));
                std::fs::rename(&path, &to).map_err(BusError::io("rename", &to))?;
                laid.push(to);
            }
        }
    }
    if !laid.is_empty() && (force || laid.len() >= CHECKPOINT_AT) {
        checkpoint(jdir, places, &laid)?;
        out.checkpointed = laid.len();
    }
    Ok(out)
}

/// A journal read whole: its open file (holding the lock, if taken) and its records.
type Opened = (File, Vec<Vec<u8>>);

/// Reads a journal (bounded, never through a link). With `lock`, only one
/// no writer holds: `None` while one does. An unreadable journal is renamed
/// `*.bad` and counted, not an error.
fn open_journal(path: &Path, lock: bool, out: &mut Settled) -> Result<Option<Opened>, BusError> {
    let f = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return set_aside(path, out),
    };
    // A live writer holds it: its own business.
    if lock && f.try_lock().is_err() {
        return Ok(None);
    }
    let read = |f: &File| -> std::io::Result<Vec<u8>> {
        let m = f.metadata()?;
        if !m.is_file() || m.len() > (MAX_JOURNAL_BYTES + crate::MAX_ENVELOPE_BYTES * 2) as u64 {
            return Err(std::io::Error::other("not a regular file of journal size"));
        }
        let mut bytes = Vec::with_capacity(m.len() as usize);
        f.take(m.len()).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read(&f) {
        Ok(bytes) => {
            // A torn last line (a writer that died before its barrier) is no record.
            // Each record with its newline, as the envelope's file holds it.
            let records = bytes
                .split_inclusive(|&c| c == b'\n')
                .filter(|l| l.len() > 1 && l.ends_with(b"\n"))
                .map(<[u8]>::to_vec)
                .collect();
            Ok(Some((f, records)))
        }
        Err(_) => set_aside(path, out),
    }
}

/// Renames a journal that cannot be read to `*.bad`, kept as evidence.
fn set_aside<T>(path: &Path, out: &mut Settled) -> Result<Option<T>, BusError> {
    let bad = path.with_extension("bad");
    std::fs::rename(path, &bad).map_err(BusError::io("rename", &bad))?;
    out.bad += 1;
    Ok(None)
}

fn remove_journal(path: &Path) -> Result<(), BusError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BusError::Io { op: "remove", path: path.to_path_buf(), source: e }),
    }
}

/// Where the envelope `name` is now, following its lifecycle forward (so a
/// file moved on meanwhile is still found), or `None`.
fn find(places: Places<'_>, name: &str) -> Option<PathBuf> {
    [places.inbox, places.claimed, places.delivered, places.poison]
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.symlink_metadata().is_ok())
}

/// Writes again, durably, each record missing from the mailbox (into the
/// inbox) and, with `compare`, each whose file differs from it (in place).
/// Records that do not parse (a torn line) are skipped. Returns how many.
fn restore(records: &[Vec<u8>], places: Places<'_>, compare: bool) -> Result<usize, BusError> {
    let mut n = 0;
    for rec in records {
        let Ok(env) = Envelope::from_json(rec) else { continue };
        let name = env.file_name();
        match find(places, &name) {
            None => {
                durable::write_durable(places.inbox, &name, rec)?;
                n += 1;
            }
            Some(p) if compare && !p.starts_with(places.poison) => {
                let same = crate::read_envelope_file(&p).is_ok_and(|b| &b == rec);
                if !same && let Some(dir) = p.parent() {
                    durable::write_durable(dir, &name, rec)?;
                    n += 1;
                }
            }
            Some(_) => {}
        }
    }
    Ok(n)
}

/// Makes the files of `laid` journals durable on their own, then removes the journals.
fn checkpoint(jdir: &Path, places: Places<'_>, laid: &[PathBuf]) -> Result<(), BusError> {
    #[cfg(target_os = "linux")]
    sync_filesystem(jdir)?;
    #[cfg(not(target_os = "linux"))]
    sync_each_file(places, laid)?;
    let _ = places;
    for j in laid {
        remove_journal(j)?;
    }
    // Not for safety (a journal that comes back is checkpointed again), for tidiness.
    durable::fsync_dir(jdir)
}

/// One `syncfs` for the filesystem that holds `dir`: every file laid out
/// before it is durable after it, for one flush.
#[cfg(target_os = "linux")]
fn sync_filesystem(dir: &Path) -> Result<(), BusError> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir).map_err(BusError::io("open", dir))?;
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

/// Where there is no `syncfs`: each journaled file fsynced where it is now,
/// then its folders, whose fsync (a full flush on macOS) seals them all.
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub(crate) fn sync_each_file(places: Places<'_>, laid: &[PathBuf]) -> Result<(), BusError> {
    use std::os::fd::AsRawFd;
    for j in laid {
        let mut ignored = Settled::default();
        let Some((_f, records)) = open_journal(j, false, &mut ignored)? else { continue };
        for rec in &records {
            let Ok(env) = Envelope::from_json(rec) else { continue };
            let Some(p) = find(places, &env.file_name()) else { continue };
            if let Ok(f) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&p) {
                // SAFETY: fsync only reads the descriptor. Plain fsync: the
                // folders' sync below flushes the drive once for all of them.
                if unsafe { libc::fsync(f.as_raw_fd()) } != 0 {
                    let e = std::io::Error::last_os_error();
                    return Err(BusError::Io { op: "fsync", path: p, source: e });
                }
            }
        }
    }
    for d in [places.inbox, places.claimed, places.delivered] {
        durable::fsync_dir(d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_names_round_trip_and_junk_is_not_one() {
        let j = JournalName::parse("01ARZ3NDEKTSV4RRFFQ69G5FAV-12-0.abc123.open").unwrap();
        assert_eq!(
            (j.id.as_str(), j.boot.as_str(), j.state),
            ("01ARZ3NDEKTSV4RRFFQ69G5FAV-12-0", "abc123", State::Open)
        );
        assert_eq!(j.file(State::Laid), "01ARZ3NDEKTSV4RRFFQ69G5FAV-12-0.abc123.laid");
        for junk in [".x.tmp", "a.b.bad", "a.open", "a/b.c.open", ".a.b.open", "..open", "a..laid"] {
            assert_eq!(JournalName::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn the_boot_id_is_known_here_and_safe_in_a_file_name() {
        let b = boot_id();
        assert!(!b.is_empty() && b.bytes().all(|c| c.is_ascii_alphanumeric()), "{b}");
        #[cfg(target_os = "linux")]
        assert_ne!(b, "unknown");
    }
}
