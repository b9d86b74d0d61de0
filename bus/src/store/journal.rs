//! Batch journals: one durability barrier for a whole batch of envelopes.
//!
//! A put of [`MIN_BATCH`] or more (a mesh push) writes every envelope, one
//! JSON line each, into a journal file of its own in `.journal/` and fsyncs
//! it and the folder: the barrier, one for the batch where per-file fsyncs
//! pay one each. Then it lays the envelopes out as ordinary files, each whole
//! or not at all, without fsyncs of their own. Readers see the same files as
//! ever; the journal is only what a crash recovers from (see
//! [`super::recover`]). Its name says where it stands:
//!
//! - `<id>.<boot>.open`: being laid out; its writer holds an flock on it.
//! - `<id>.<boot>.laid`: laid out, its files perhaps only in the page cache
//!   until a checkpoint (see [`super::checkpoint`]) removes it.
//! - `<boot>` is the kernel's boot id (see [`boot_id`]).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{durable, segment};
use crate::BusError;

/// The journal folder's name, inside the folder it makes writes durable for.
pub const JOURNAL_DIR: &str = ".journal";

/// Batches this big or bigger go through a journal; smaller ones are
/// written file by file (a journal is one more file and two more renames).
pub(crate) const MIN_BATCH: usize = 4;

/// Envelope bytes per journal at most; a bigger batch takes several.
const MAX_JOURNAL_BYTES: usize = 8 << 20;

/// Makes new files durable in `dir` for one flush, whatever their number:
/// a batch through a journal of its own, one to three through the folder's
/// segment (see [`super::segment`]), where `jdir` is the folder's journal
/// folder; where the OS tells no boot id, each file with its own fsyncs.
/// Whoever moves the files on recovers `jdir` (see [`super::recover()`]).
///
/// `Ok` means durable: once the journal or segment holds them, a failure
/// to lay the files out is logged, not returned (a caller told "failed"
/// would send again), and the next recovery lays them out.
pub fn write_journaled(jdir: &Path, dir: &Path, items: &[(String, Vec<u8>)]) -> Result<(), BusError> {
    // A journal folder that is a link (or not a folder) is never followed out
    // of the home: the old way, a durable write per file, still works.
    if std::fs::symlink_metadata(jdir).is_ok_and(|m| !m.is_dir()) {
        return durable::write_durable_batch(dir, items);
    }
    match boot_id() {
        Some(boot) if items.len() >= MIN_BATCH => commit(jdir, boot, dir, items),
        Some(boot) => segment::append(jdir, boot, dir, items),
        None => durable::write_durable_batch(dir, items),
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Open,
    Laid,
}

/// A journal's file name, taken apart: `<id>.<boot>.<open|laid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalName {
    pub(crate) id: String,
    pub(crate) boot: String,
    pub(crate) state: State,
}

impl JournalName {
    pub(crate) fn parse(name: &str) -> Option<JournalName> {
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

    pub(crate) fn file(&self, state: State) -> String {
        let s = match state {
            State::Open => "open",
            State::Laid => "laid",
        };
        format!("{}.{}.{s}", self.id, self.boot)
    }
}

/// This boot of the kernel, as a file-name-safe token; `None` where the OS
/// tells none (then batches are not journaled: without it a power cut could
/// not be told from a process crash). A failed read is tried again next time.
pub(crate) fn boot_id() -> Option<&'static str> {
    static BOOT: OnceLock<String> = OnceLock::new();
    if let Some(b) = BOOT.get() {
        return Some(b);
    }
    let b: String = read_boot_id()?.chars().filter(char::is_ascii_alphanumeric).take(64).collect();
    if b.is_empty() {
        return None;
    }
    Some(BOOT.get_or_init(|| b))
}

#[cfg(target_os = "linux")]
fn read_boot_id() -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open("/proc/sys/kernel/random/boot_id").ok()?.take(128).read_to_string(&mut s).ok()?;
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
fn commit(jdir: &Path, boot: &str, inbox: &Path, items: &[(String, Vec<u8>)]) -> Result<(), BusError> {
    ensure_dir(jdir)?;
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < items.len() && (end == start || bytes + items[end].1.len() < MAX_JOURNAL_BYTES) {
            bytes += items[end].1.len() + 1;
            end += 1;
        }
        commit_one(jdir, boot, inbox, &items[start..end])?;
        start = end;
    }
    Ok(())
}

/// `jdir`, made when missing, with its entry in the mailbox folder made
/// durable once per process (a writer killed between the two would leave a
/// folder later writers find but nobody fsynced).
fn ensure_dir(jdir: &Path) -> Result<(), BusError> {
    static SYNCED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut synced = SYNCED.lock().unwrap_or_else(|p| p.into_inner());
    if synced.iter().any(|d| d == jdir) {
        return Ok(());
    }
    if !jdir.is_dir() {
        std::fs::create_dir_all(jdir).map_err(BusError::io("create", jdir))?;
    }
    if let Some(p) = jdir.parent() {
        durable::fsync_dir(p)?;
    }
    // Bounded: a process opens a handful of mailboxes; past that, fsync again.
    if synced.len() < 1024 {
        synced.push(jdir.to_path_buf());
    }
    Ok(())
}

/// Checks that the encoded envelope `bytes` (file `name`) is one line, as a
/// journal record must be: compact JSON and a newline, so its record is the
/// file's bytes, byte for byte.
pub(crate) fn one_line(name: &str, bytes: &[u8]) -> Result<(), BusError> {
    if bytes.last() != Some(&b'\n') || bytes[..bytes.len() - 1].contains(&b'\n') {
        return Err(BusError::BadEnvelope(format!("{name}: not one line of JSON")));
    }
    Ok(())
}

/// Gives `from` the name `to` unless `to` exists (no journal overwrites
/// another, whatever the pids), then drops the old name.
pub(crate) fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// A test's look at a batch between its barrier and its layout (given the journal's path).
#[cfg(test)]
pub(crate) type Look = Box<dyn Fn(&Path) + Send>;

/// A test's failure of a batch journal's barrier, for journals it says true of.
#[cfg(test)]
pub(crate) static FAIL_BATCH_BARRIER: super::hooks::Hook = super::hooks::Hook::new(None);

/// Where a test puts its [`Look`].
#[cfg(test)]
pub(crate) static AFTER_BARRIER: std::sync::Mutex<Option<Look>> = std::sync::Mutex::new(None);

fn commit_one(jdir: &Path, boot: &str, inbox: &Path, items: &[(String, Vec<u8>)]) -> Result<(), BusError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Unique without randomness: the first envelope's id, this process, a counter.
    let stem: String = items[0].0.chars().take_while(char::is_ascii_alphanumeric).collect();
    let name = JournalName {
        id: format!("{stem}-{}-{seq}", std::process::id()),
        boot: boot.to_string(),
        state: State::Open,
    };
    let mut body = Vec::with_capacity(items.iter().map(|(_, b)| b.len() + 1).sum());
    for (n, b) in items {
        one_line(n, b)?;
        body.extend_from_slice(b);
    }
    // Locked before it has the name recovery reads: a recovery never takes a
    // journal whose writer is alive for one whose writer died.
    let tmp = jdir.join(format!(".{}.tmp", name.id));
    let f = OpenOptions::new()
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
    rename_new(&tmp, &open).map_err(|e| fail("rename", &open, e, &tmp))?;
    // Before the barrier nothing was promised: a failure empties the journal
    // first (a recovery lays out nothing from an empty one, should its name
    // outlive the removal: a failed unlink, a power cut), then removes it.
    let abandon = || {
        let _ = f.set_len(0);
        let _ = f.sync_data();
        let _ = std::fs::remove_file(&open);
        let _ = durable::fsync_dir(jdir);
    };
    let io = |op: &'static str| {
        let open = open.clone();
        move |source| {
            abandon();
            BusError::Io { op, path: open, source }
        }
    };
    (&f).write_all(&body).map_err(io("write"))?;
    #[cfg(test)]
    if super::hooks::says(&FAIL_BATCH_BARRIER, &open) {
        return Err(io("fsync")(std::io::Error::from_raw_os_error(libc::EIO)));
    }
    f.sync_data().map_err(io("fsync"))?;
    durable::fsync_dir(jdir).inspect_err(|_| abandon())?;
    // Durable. A failure from here on leaves the journal `.open`, unlocked
    // once `f` drops: the next recovery lays out what is missing.
    #[cfg(test)]
    if let Some(look) = AFTER_BARRIER.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        look(&open);
    }
    // The put has succeeded: a failure to lay out or rename now (a full
    // inode table, too many open files) must not tell the caller otherwise,
    // or a retry would send the message twice. The journal stays `.open`;
    // the next recovery (every claim starts with one) lays out what is missing.
    if let Err(e) = lay_out(inbox, items) {
        tracing::warn!(journal = %open.display(), error = %e, "a durable batch is not laid out yet: the next recovery will");
        return Ok(());
    }
    let laid = jdir.join(name.file(State::Laid));
    if let Err(e) = rename_new(&open, &laid) {
        tracing::warn!(journal = %open.display(), error = %e, "a laid-out batch keeps its .open name: the next recovery checks it");
    }
    drop(f);
    Ok(())
}

/// Lays out a durable batch's files in `inbox`, each whole or not at all:
/// unnamed files linked in where the system has them, else temp names.
fn lay_out(inbox: &Path, items: &[(String, Vec<u8>)]) -> Result<(), BusError> {
    let mut dir = Some(super::dirfd::Dir::open(inbox).map_err(BusError::io("open", inbox))?);
    for (n, b) in items {
        if let Some(d) = &dir {
            match d.create_whole(n, b) {
                Ok(true) => continue,
                Ok(false) => dir = None,
                // A copy there already (a racing writer of the same id): replaced, as a rename does.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(BusError::Io { op: "create", path: inbox.join(n), source: e }),
            }
        }
        durable::write_unsynced(inbox, n, b)?;
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
        #[cfg(target_os = "linux")]
        let b = boot_id().expect("Linux tells its boot id");
        #[cfg(not(target_os = "linux"))]
        let Some(b) = boot_id() else { return };
        assert!(!b.is_empty() && b.bytes().all(|c| c.is_ascii_alphanumeric()), "{b}");
    }
}
