//! Recovery: what crashed writers and earlier boots left in a journal folder.
//!
//! Runs under the folder's single owner (a mailbox's lock; the one daemon of
//! a home for its outbox), at the start of every claim, a moment after the
//! daemon sees a journal written, and from the daemon's tick. It lays out
//! what a writer killed between its barrier and its layout left only in a
//! batch journal or segment, restores the files of an earlier boot's
//! journals (a power cut may have taken them), and hands what is due to
//! [`super::checkpoint`].

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::checkpoint::checkpoint;
use super::journal::{JournalName, State, boot_id, rename_new};
use super::segment::{self, SegmentName};
use super::{STALE_TEMP, durable};
use crate::{BusError, Envelope};

/// Laid-out journals a claim lets wait before it checkpoints them.
pub(crate) const CHECKPOINT_AT: usize = 32;

/// The most recovery reads of one journal or segment (each stays below it).
const MAX_READ_BYTES: u64 = 4 * segment::MAX_BYTES;

/// How much a recovery checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// Only what is due: once [`CHECKPOINT_AT`] laid-out journals wait, and
    /// the current segment once past its rotation size or holding a record
    /// its writer could not lay out (every claim).
    Due,
    /// Every laid-out journal and the current segment (the daemon's tick).
    All,
}

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

/// What one recovery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
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

/// Recovers what crashed writers and earlier boots left in the journal
/// folder `jdir`, and checkpoints as `due` says.
///
/// One recovery at a time per folder; files move on only forward through
/// `places` meanwhile.
pub fn recover(jdir: &Path, places: Places<'_>, due: Checkpoint) -> Result<Recovered, BusError> {
    let out = Recovered::default();
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
    let mut st = Recovery {
        jdir,
        places,
        boot,
        due,
        out,
        laid: Vec::new(),
        earlier: Vec::new(),
        segments: Vec::new(),
    };
    // One journal that cannot be recovered now must not keep the rest from it.
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
    let Recovery { mut out, mut laid, earlier, segments, .. } = st;
    if !earlier.is_empty() {
        // What compared equal may still be page cache only (a boot id that
        // changed without a reboot): made durable before the journals go.
        out.rewritten += checkpoint(jdir, places, &earlier)?;
    }
    if !segments.is_empty() || (!laid.is_empty() && (due == Checkpoint::All || laid.len() >= CHECKPOINT_AT)) {
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
/// files a power cut may have damaged: until it is recovered, a claim must
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

/// One recovery of a journal folder, under way: what it found to do so far.
struct Recovery<'a> {
    jdir: &'a Path,
    places: Places<'a>,
    boot: &'a str,
    due: Checkpoint,
    out: Recovered,
    /// Laid-out batch journals (checkpointed when due).
    laid: Vec<PathBuf>,
    /// An earlier boot's journals and segments (checkpointed, then removed).
    earlier: Vec<PathBuf>,
    /// Segments moved aside: checkpointed by this recovery, whatever `due` says.
    segments: Vec<PathBuf>,
}

impl Recovery<'_> {
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

    /// One segment (see [`super::segment`]): an earlier boot's is compared
    /// file by file; the current one is moved aside when due ([`Checkpoint::All`], or
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
                if !(self.due == Checkpoint::All || unlaid || len >= segment::ROTATE_BYTES) {
                    return self.read_new_records(&path);
                }
                // Exclusive and never waiting: a writer mid-append keeps it whole till next time.
                let Some((held, records)) = open_journal(&path, true, &mut self.out)? else {
                    // Under a steady stream of writers it may never be free: moved
                    // aside anyway. No writer appends to it once it has lost the
                    // current name (each checks, after locking, that it holds the
                    // current segment); those holding it finish, and a later
                    // recovery takes it whole as an old one.
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
    /// recovery's checkpoint. False while a writer still holds it.
    fn take_old(&mut self, path: PathBuf) -> Result<bool, BusError> {
        let Some((f, records)) = open_journal(&path, true, &mut self.out)? else { return Ok(false) };
        // A recovery killed between the two names of its rotation left the
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
    /// waits for [`Checkpoint::All`]: the tick, a drain). Only what was appended
    /// since this process last looked is read, and only while no writer
    /// holds the segment, so every record in it belongs to a writer that
    /// finished or died: the next claim delivers such a record, in order
    /// with what the same sender sent after it.
    fn read_new_records(&mut self, path: &Path) -> Result<(), BusError> {
        let io = |e: std::io::Error| BusError::Io { op: "read segment", path: path.to_path_buf(), source: e };
        let f = match durable::open_unfollowed(path) {
            Ok(f) => f,
            // Gone, a link, not ours to read now: the next checkpoint deals with it.
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
        let read_so_far = || READ_SO_FAR.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up, then let go: the read and the layout below hold no other mailbox up.
        let from = key.and_then(|k| read_so_far().get(&k).copied()).unwrap_or(0).min(m.len());
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
            let mut seen = read_so_far();
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
/// birth time in nanoseconds) in [`Recovery::read_new_records`].
static READ_SO_FAR: std::sync::Mutex<std::collections::BTreeMap<(u64, u64, u128), u64>> =
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
pub(super) type Opened = (File, Vec<Vec<u8>>);

/// Reads a journal (bounded, never through a link). With `lock`, only one
/// no writer holds: `None` while one does. An unreadable journal is renamed
/// `*.bad` and counted, not an error.
pub(super) fn open_journal(path: &Path, lock: bool, out: &mut Recovered) -> Result<Option<Opened>, BusError> {
    let io = |e: std::io::Error| BusError::Io { op: "read journal", path: path.to_path_buf(), source: e };
    let f = match durable::open_unfollowed(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // A symlink is never ours (never followed); any other failure may
        // pass (descriptors, memory): the next recovery tries again.
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
fn set_aside<T>(path: &Path, out: &mut Recovered) -> Result<Option<T>, BusError> {
    let mut bad = path.as_os_str().to_owned();
    bad.push(".bad");
    let bad = PathBuf::from(bad);
    std::fs::rename(path, &bad).map_err(BusError::io("rename", &bad))?;
    out.bad += 1;
    Ok(None)
}

pub(super) fn remove_journal(path: &Path) -> Result<(), BusError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BusError::Io { op: "remove", path: path.to_path_buf(), source: e }),
    }
}

/// Where the envelope `name` is now, following its lifecycle forward (so a
/// file moved on meanwhile is still found), or `None`.
pub(super) fn find(places: Places<'_>, name: &str) -> Result<Option<PathBuf>, BusError> {
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
}
