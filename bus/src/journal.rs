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
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::segment::{self, SegmentName};
use crate::{BusError, Envelope, durable};

/// The journal folder's name, inside the folder it makes writes durable for.
pub const JOURNAL_DIR: &str = ".journal";

/// Batches this big or bigger go through a journal; smaller ones are
/// written file by file (a journal is one more file and two more renames).
pub(crate) const MIN_BATCH: usize = 4;

/// Envelope bytes per journal at most; a bigger batch takes several.
const MAX_JOURNAL_BYTES: usize = 8 << 20;

/// The most a settle reads of one journal or segment (each stays below it).
const MAX_READ_BYTES: u64 = 4 * segment::MAX_BYTES;

/// Laid-out journals a claim lets wait before it checkpoints them.
pub(crate) const CHECKPOINT_AT: usize = 32;

/// Temp files in `.journal/` older than this are a crashed writer's (never acked).
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Where a journaled folder's files can be: the folder itself, where records
/// are laid out (a mailbox's `inbox/`, the mesh outbox), the folders a file
/// moves on to, in order (`claimed/`, `delivered/`; `sent/`), and the one
/// refused files go to (`poison/`; `refused/`), where a record is done with.
#[derive(Debug, Clone, Copy)]
pub struct Places<'a> {
    /// Where records are laid out.
    pub lay_out: &'a Path,
    /// Where laid-out files move on to, in the order they move.
    pub moved_on: &'a [PathBuf],
    /// Where refused files go.
    pub refused: &'a Path,
}

/// Makes new files durable in `dir` for one flush, whatever their number:
/// a batch through a journal of its own, one to three through the folder's
/// segment (see [`crate::segment`]), where `jdir` is the folder's journal
/// folder; where the OS tells no boot id, each file with its own fsyncs.
/// Whoever moves the files on settles `jdir` (see [`settle`]).
///
/// `Ok` means durable: once the journal or segment holds them, a failure
/// to lay the files out is logged, not returned (a caller told "failed"
/// would send again), and the next settle lays them out.
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
    /// Files whose writeback failed (their fsync said so), written again
    /// durably from their records before the journal went.
    pub rewritten: usize,
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
pub(crate) static FAIL_BATCH_BARRIER: crate::hooks::Hook = crate::hooks::Hook::new(None);

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
    // Locked before it has the name a settle reads: a settle never takes a
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
    // first (a settle lays out nothing from an empty one, should its name
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
    if crate::hooks::says(&FAIL_BATCH_BARRIER, &open) {
        return Err(io("fsync")(std::io::Error::from_raw_os_error(libc::EIO)));
    }
    f.sync_data().map_err(io("fsync"))?;
    durable::fsync_dir(jdir).inspect_err(|_| abandon())?;
    // Durable. A failure from here on leaves the journal `.open`, unlocked
    // once `f` drops: the next settle lays out what is missing.
    #[cfg(test)]
    if let Some(look) = AFTER_BARRIER.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        look(&open);
    }
    // The put has succeeded: a failure to lay out or rename now (a full
    // inode table, too many open files) must not tell the caller otherwise,
    // or a retry would send the message twice. The journal stays `.open`;
    // the next settle (every claim starts with one) lays out what is missing.
    if let Err(e) = lay_out(inbox, items) {
        tracing::warn!(journal = %open.display(), error = %e, "a durable batch is not laid out yet: the next settle will");
        return Ok(());
    }
    let laid = jdir.join(name.file(State::Laid));
    if let Err(e) = rename_new(&open, &laid) {
        tracing::warn!(journal = %open.display(), error = %e, "a laid-out batch keeps its .open name: the next settle checks it");
    }
    drop(f);
    Ok(())
}

/// Lays out a durable batch's files in `inbox`, each whole or not at all:
/// unnamed files linked in where the system has them, else temp names.
fn lay_out(inbox: &Path, items: &[(String, Vec<u8>)]) -> Result<(), BusError> {
    let mut dir = Some(crate::dirfd::Dir::open(inbox).map_err(BusError::io("open", inbox))?);
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
        durable::write_unsynced(inbox, n, b, false)?;
    }
    Ok(())
}

/// Recovers what crashed writers and earlier boots left in the journal
/// folder `jdir`, and checkpoints laid-out journals: all of them (and the
/// current segment) with `force`, else once [`CHECKPOINT_AT`] wait (and the
/// segment past its rotation size).
///
/// One settle at a time per folder (a mailbox's lock; the one daemon of a
/// home for its outbox); files move on only forward through `places` meanwhile.
pub fn settle(jdir: &Path, places: Places<'_>, force: bool) -> Result<Settled, BusError> {
    let out = Settled::default();
    // Never followed: no writer journals into a folder that is a link, so
    // whatever it points at is nobody's journal (see `write_journaled`).
    if std::fs::symlink_metadata(jdir).is_ok_and(|m| !m.is_dir()) {
        tracing::warn!(journal = %jdir.display(), "a journal folder that is not a folder (a link?) is left alone");
        return Ok(out);
    }
    let rd = match std::fs::read_dir(jdir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(BusError::Io { op: "list", path: jdir.to_path_buf(), source: e }),
    };
    let mut names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    durable::sweep_stale_named(jdir, names.iter().map(String::as_str), STALE_TEMP);
    // Without a boot id nothing is journaled here, and nothing can be judged.
    let Some(boot) = boot_id() else { return Ok(out) };
    let mut st = Settling {
        jdir,
        places,
        boot,
        force,
        out,
        laid: Vec::new(),
        earlier: Vec::new(),
        segments: Vec::new(),
    };
    // One journal that cannot be settled now must not keep the rest from it.
    let mut first_error: Option<BusError> = None;
    for n in &names {
        let done = if let Some(sg) = SegmentName::parse(n) {
            st.segment(n, &sg)
        } else if let Some(j) = JournalName::parse(n) {
            st.batch(n, &j)
        } else {
            continue;
        };
        if let Err(e) = done {
            first_error.get_or_insert(e);
        }
    }
    let Settling { mut out, mut laid, earlier, segments, .. } = st;
    if !earlier.is_empty() {
        // What compared equal may still be page cache only (a boot id that
        // changed without a reboot): made durable before the journals go.
        out.rewritten += checkpoint(jdir, places, &earlier)?;
    }
    if !segments.is_empty() || (!laid.is_empty() && (force || laid.len() >= CHECKPOINT_AT)) {
        laid.extend(segments);
        out.rewritten += checkpoint(jdir, places, &laid)?;
        out.checkpointed = laid.len();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Whether `jdir` holds a journal or segment of an earlier boot, whose
/// files a power cut may have damaged: until it is settled, a claim must
/// not judge (and poison) them.
pub(crate) fn earlier_boot_left(jdir: &Path) -> bool {
    let Some(boot) = boot_id() else { return false };
    if !std::fs::symlink_metadata(jdir).is_ok_and(|m| m.is_dir()) {
        return false;
    }
    let Ok(rd) = std::fs::read_dir(jdir) else { return false };
    rd.flatten().filter_map(|e| e.file_name().into_string().ok()).any(|n| {
        JournalName::parse(&n).is_some_and(|j| j.boot != boot)
            || SegmentName::parse(&n).is_some_and(|s| s.boot() != boot)
    })
}

/// One settle of a journal folder, under way: what it found to do so far.
struct Settling<'a> {
    jdir: &'a Path,
    places: Places<'a>,
    boot: &'a str,
    force: bool,
    out: Settled,
    /// Laid-out batch journals (checkpointed when due).
    laid: Vec<PathBuf>,
    /// An earlier boot's journals and segments (checkpointed, then removed).
    earlier: Vec<PathBuf>,
    /// Segments moved aside: checkpointed by this settle, whatever `force` says.
    segments: Vec<PathBuf>,
}

impl Settling<'_> {
    /// A journal or segment of an earlier boot: a power cut may have taken
    /// what was only in the page cache, so every file is compared with its
    /// record and restored where it differs. (Locked too: a writer that read
    /// another boot id must still be left alone.) Checkpointed by the
    /// caller, then removed.
    fn earlier(&mut self, path: PathBuf) -> Result<(), BusError> {
        let Some((_f, records)) = open_journal(&path, true, &mut self.out)? else { return Ok(()) };
        self.out.restored += restore(&records, self.places, true)?;
        self.earlier.push(path);
        Ok(())
    }

    /// One batch journal: an earlier boot's is compared file by file; one
    /// whose writer died is laid out again and marked laid.
    fn batch(&mut self, name: &str, j: &JournalName) -> Result<(), BusError> {
        let path = self.jdir.join(name);
        if j.boot != self.boot {
            return self.earlier(path);
        }
        match j.state {
            State::Laid => self.laid.push(path),
            State::Open => {
                let Some((_f, records)) = open_journal(&path, true, &mut self.out)? else { return Ok(()) };
                self.out.relaid += restore(&records, self.places, false)?;
                let to = self.jdir.join(j.file(State::Laid));
                match rename_new(&path, &to) {
                    Ok(()) => self.laid.push(to),
                    // Its writer finished between our open and our lock: it is `.laid` now.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // Its writer died between the two names of its last rename:
                    // the `.laid` one (listed before this) is all that is left to do.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => remove_journal(&path)?,
                    Err(e) => return Err(BusError::Io { op: "rename", path: to, source: e }),
                }
            }
        }
        Ok(())
    }

    /// One segment (see [`crate::segment`]): an earlier boot's is compared
    /// file by file; the current one is moved aside when due (`force`, or
    /// grown past [`segment::ROTATE_BYTES`]), and taken whole at once if no
    /// writer holds it; one moved aside has what a killed writer left only
    /// there laid out again.
    fn segment(&mut self, name: &str, sg: &SegmentName) -> Result<(), BusError> {
        let (jdir, boot) = (self.jdir, self.boot);
        let path = jdir.join(name);
        if sg.boot() != boot {
            return self.earlier(path);
        }
        match sg {
            SegmentName::Current { .. } => {
                let (len, mode) = std::fs::symlink_metadata(&path).map_or((0, 0), |m| (m.len(), m.mode()));
                let unlaid = mode & segment::UNLAID != 0;
                if len == 0 {
                    return Ok(());
                }
                if !(self.force || unlaid || len >= segment::ROTATE_BYTES) {
                    return self.catch_up(&path);
                }
                // Exclusive and never waiting: a writer mid-append keeps it whole till next time.
                let Some((held, records)) = open_journal(&path, true, &mut self.out)? else {
                    // Under a steady stream of writers it may never be free: moved
                    // aside anyway. No writer appends to it once it has lost the
                    // current name (each checks, after locking, that it holds the
                    // current segment); those holding it finish, and a later
                    // settle takes it whole as an old one.
                    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                        let to = jdir.join(segment::old_name(boot));
                        rename_new(&path, &to).map_err(BusError::io("rename", &to))?;
                        // A record it holds unlaid must be in the inbox before this
                        // claim lists it: its holders finish within moments.
                        if unlaid {
                            for _ in 0..50 {
                                if self.take_old(to.clone())? {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(2));
                            }
                        }
                    }
                    return Ok(());
                };
                let to = jdir.join(segment::old_name(boot));
                rename_new(&path, &to).map_err(BusError::io("rename", &to))?;
                // Unnamed as current: no writer uses it any more.
                drop(held);
                self.out.relaid += restore(&records, self.places, false)?;
                self.segments.push(to);
            }
            SegmentName::Old { .. } => {
                self.take_old(path)?;
            }
        }
        Ok(())
    }

    /// A segment moved aside (`old-*.seg`) taken whole: what a killed writer
    /// left only there laid out again, and the segment queued for this
    /// settle's checkpoint. False while a writer still holds it.
    fn take_old(&mut self, path: PathBuf) -> Result<bool, BusError> {
        let Some((f, records)) = open_journal(&path, true, &mut self.out)? else { return Ok(false) };
        // A settle killed between the two names of its rotation left the
        // current name on this file too: writers could still append
        // through it. Finished here, under the lock no writer holds now.
        let held = f.metadata().map_err(BusError::io("stat", &path))?;
        if held.nlink() > 1 {
            let cur = self.jdir.join(segment::current(self.boot));
            if std::fs::symlink_metadata(&cur).is_ok_and(|m| segment::same_file(&m, &held)) {
                remove_journal(&cur)?;
            }
        }
        drop(f);
        self.out.relaid += restore(&records, self.places, false)?;
        self.segments.push(path);
        Ok(true)
    }

    /// Lays out what writers killed between their barrier and their layout
    /// left only in the current segment, without moving it aside (which
    /// waits for a forced settle: the tick, a drain). Only what was appended
    /// since this process last looked is read, and only while no writer
    /// holds the segment, so every record in it belongs to a writer that
    /// finished or died: the next claim delivers such a record, in order
    /// with what the same sender sent after it.
    fn catch_up(&mut self, path: &Path) -> Result<(), BusError> {
        let io = |e: std::io::Error| BusError::Io { op: "read segment", path: path.to_path_buf(), source: e };
        let f = match durable::open_unfollowed(path) {
            Ok(f) => f,
            // Gone, a link, not ours to read now: the forced settle deals with it.
            Err(_) => return Ok(()),
        };
        if f.try_lock().is_err() {
            return Ok(());
        }
        let m = f.metadata().map_err(io)?;
        if !m.is_file() {
            return Ok(());
        }
        // An inode number is reused once its file is gone: its birth time
        // tells a new segment from the one read before. Without one, every
        // claim reads the segment whole (bounded by its rotation size).
        let born = m.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let key = born.map(|b| (m.dev(), m.ino(), b.as_nanos()));
        let caught_up = || CAUGHT_UP.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up, then let go: the read and the layout below hold no other mailbox up.
        let from = key.and_then(|k| caught_up().get(&k).copied()).unwrap_or(0).min(m.len());
        if from == m.len() || m.len() - from > MAX_READ_BYTES {
            return Ok(());
        }
        use std::io::Seek;
        let mut bytes = Vec::with_capacity((m.len() - from) as usize);
        (&f).seek(std::io::SeekFrom::Start(from)).map_err(io)?;
        (&f).take(m.len() - from).read_to_end(&mut bytes).map_err(io)?;
        let records = records_of(&bytes);
        self.out.relaid += restore(&records, self.places, false)?;
        if let Some(k) = key {
            let mut seen = caught_up();
            // Bounded: a process sees a handful of segments; past that, it reads whole again.
            if seen.len() >= 1024 {
                seen.clear();
            }
            seen.insert(k, m.len());
        }
        Ok(())
    }
}

/// How far this process has read each current segment (device, inode,
/// birth time in nanoseconds) in [`Settling::catch_up`].
static CAUGHT_UP: std::sync::Mutex<std::collections::BTreeMap<(u64, u64, u128), u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The records of a journal's bytes: each line with its newline, as the
/// envelope's file holds it; a torn last line (a writer that died before its
/// barrier) is no record.
fn records_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|&c| c == b'\n')
        .filter(|l| l.len() > 1 && l.ends_with(b"\n"))
        .map(<[u8]>::to_vec)
        .collect()
}

/// A journal read whole: its open file (holding the lock, if taken) and its records.
type Opened = (File, Vec<Vec<u8>>);

/// Reads a journal (bounded, never through a link). With `lock`, only one
/// no writer holds: `None` while one does. An unreadable journal is renamed
/// `*.bad` and counted, not an error.
fn open_journal(path: &Path, lock: bool, out: &mut Settled) -> Result<Option<Opened>, BusError> {
    let io = |e: std::io::Error| BusError::Io { op: "read journal", path: path.to_path_buf(), source: e };
    let f = match durable::open_unfollowed(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // A symlink is never ours (never followed); any other failure may
        // pass (descriptors, memory): the next settle tries again.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return set_aside(path, out),
        Err(e) => return Err(io(e)),
    };
    if !f.metadata().map_err(io)?.is_file() {
        // No writer makes such a thing: set aside, it cannot be a live journal.
        return set_aside(path, out);
    }
    // A live writer holds it: its own business.
    if lock && f.try_lock().is_err() {
        return Ok(None);
    }
    // Its writer may have finished and renamed it between our open and our lock.
    if lock && std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    // Sized once locked: what was appended before the lock is read too. Too
    // big is an error, never a reason to set it aside: it may hold acked
    // records (writers stop near segment::MAX_BYTES; only concurrent
    // overshoot goes past, by a few envelopes).
    let m = f.metadata().map_err(io)?;
    if m.len() > MAX_READ_BYTES {
        return Err(io(std::io::Error::other(format!(
            "{} bytes, over the {MAX_READ_BYTES}-byte bound",
            m.len()
        ))));
    }
    let mut bytes = Vec::with_capacity(m.len() as usize);
    (&f).take(m.len()).read_to_end(&mut bytes).map_err(io)?;
    Ok(Some((f, records_of(&bytes))))
}

/// Renames a journal that is not a readable file to `<name>.bad`, kept as evidence.
fn set_aside<T>(path: &Path, out: &mut Settled) -> Result<Option<T>, BusError> {
    let mut bad = path.as_os_str().to_owned();
    bad.push(".bad");
    let bad = PathBuf::from(bad);
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
fn find(places: Places<'_>, name: &str) -> Result<Option<PathBuf>, BusError> {
    let dirs = std::iter::once(places.lay_out)
        .chain(places.moved_on.iter().map(PathBuf::as_path))
        .chain(std::iter::once(places.refused));
    for d in dirs {
        let p = d.join(name);
        match p.symlink_metadata() {
            Ok(_) => return Ok(Some(p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Not knowing is not absence: a copy written now could be a second one.
            Err(e) => return Err(BusError::Io { op: "stat", path: p, source: e }),
        }
    }
    Ok(None)
}

/// Writes again, durably, each record missing from the mailbox (into the
/// inbox) and, with `compare`, each whose file differs from it (in place).
/// Records that do not parse (a torn line) are skipped, and so are those a
/// [`segment::Void`] took back. Returns how many.
fn restore(records: &[Vec<u8>], places: Places<'_>, compare: bool) -> Result<usize, BusError> {
    let voided = voided(records);
    let mut n = 0;
    for (rec, voided) in records.iter().zip(voided) {
        let Ok(env) = Envelope::from_json(rec) else { continue };
        if voided {
            continue;
        }
        let name = env.file_name();
        match find(places, &name)? {
            None => {
                durable::write_durable(places.lay_out, &name, rec)?;
                n += 1;
            }
            Some(p) if compare && !p.starts_with(places.refused) => {
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

/// For each record, whether a [`segment::Void`] after it takes it back: a
/// void names the envelopes of the put just before it (other writers may
/// have appended in between), so it takes back the nearest earlier record of
/// each name and no later one (a retry of the same id that succeeded).
///
/// Voids are counted per name: two failed puts of one id (a peer resending
/// while the first still syncs) leave two records and two voids.
fn voided(records: &[Vec<u8>]) -> Vec<bool> {
    let mut out = vec![false; records.len()];
    let mut pending: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, rec) in records.iter().enumerate().rev() {
        if rec.starts_with(b"{\"void\"") {
            if let Ok(v) = serde_json::from_slice::<segment::Void>(rec) {
                for name in v.void {
                    *pending.entry(name).or_default() += 1;
                }
            }
        } else if !pending.is_empty()
            && let Ok(env) = Envelope::from_json(rec)
            && let Some(left) = pending.get_mut(&env.file_name())
        {
            out[i] = true;
            *left -= 1;
            if *left == 0 {
                pending.remove(&env.file_name());
            }
        }
    }
    out
}

/// Makes the files of `laid` journals durable on their own, then removes
/// the journals; returns how many files it had to write again.
///
/// Linux: one `syncfs`. It reports a writeback error of any file on the
/// filesystem, and only once: when it fails, each journaled file is fsynced
/// on its own instead, which tells ours from another program's, and a file
/// of ours whose writeback failed is written again from its record.
fn checkpoint(jdir: &Path, places: Places<'_>, laid: &[PathBuf]) -> Result<usize, BusError> {
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
pub(crate) static FAIL_SYNCFS: crate::hooks::Hook = crate::hooks::Hook::new(None);

/// A test's failure of a journaled file's fsync, for files it says true of.
#[cfg(test)]
pub(crate) static FAIL_FILE_FSYNC: crate::hooks::Hook = crate::hooks::Hook::new(None);

/// One `syncfs` for the filesystem that holds `dir`: every file laid out
/// before it is durable after it, for one flush.
#[cfg(target_os = "linux")]
fn sync_filesystem(dir: &Path) -> Result<(), BusError> {
    use std::os::fd::AsRawFd;
    #[cfg(test)]
    if crate::hooks::says(&FAIL_SYNCFS, dir) {
        return Err(crate::hooks::eio("syncfs", dir));
    }
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
        let mut ignored = Settled::default();
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
            let failed = failed || crate::hooks::says(&FAIL_FILE_FSYNC, &p);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_void_takes_back_the_nearest_earlier_record_of_each_name_once_per_void() {
        let key = netsky_keys::SecretKey::generate();
        let env = |text: &str| {
            let (from, to) = ("agent0@work".parse().unwrap(), "agent1@work".parse().unwrap());
            Envelope::new(&key, crate::Kind::Message, from, to, text, None).unwrap()
        };
        let (x, y) = (env("x"), env("y"));
        let rec = |e: &Envelope| e.to_json();
        let void = |es: &[&Envelope]| {
            let names = es.iter().map(|e| e.file_name()).collect();
            let mut v = serde_json::to_vec(&segment::Void { void: names }).unwrap();
            v.push(b'\n');
            v
        };
        // Two failed puts of one id: both records go.
        assert_eq!(voided(&[rec(&x), rec(&x), void(&[&x]), void(&[&x])]), [true, true, false, false]);
        // One failed put, then a retry of the same id that succeeded: the retry stays.
        assert_eq!(voided(&[rec(&x), void(&[&x]), rec(&x)]), [true, false, false]);
        // Another writer's record between a put and its void is not taken back.
        assert_eq!(voided(&[rec(&x), rec(&y), void(&[&x])]), [true, false, false]);
        // A torn or foreign line is neither a record nor a void.
        assert_eq!(voided(&[rec(&x), b"{\"void\":[\n".to_vec()]), [false, false]);
    }

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
