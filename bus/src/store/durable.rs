//! The one way netsky writes a file that must survive a crash.
//!
//! 1. write a temp file in the target directory (same filesystem, so the
//!    rename below is atomic), named `.<name>.<pid>.<n>.tmp` so scanners skip it;
//! 2. fsync it, so its bytes are on disk before its name is;
//! 3. rename it over the final name, so readers see all of it or nothing;
//! 4. fsync the directory, so the rename itself survives a power cut.
//!
//! A failure at any step (a full disk above all) removes the temp file and
//! reports the error: nothing half-written is ever left under a real name.
//!
//! Batches write every temp file first, then start the writeback of all of
//! them at once (`sync_file_range` on Linux) before fsyncing each: the first
//! fsync's journal commit then carries the whole batch and the rest find
//! little left to do (measured: 256 files in ~16 ms against ~50 ms for plain
//! fsyncs in a row). `syncfs` would be faster on an idle disk, but it flushes
//! every process's dirty data, so a build running beside the node made one
//! batch take 140 ms; per-file fsyncs keep our latency ours. Then the
//! renames, then one directory fsync. The promise is the same as for a single
//! write: when the call returns `Ok`, every file of the batch is durable
//! under its name.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::BusError;

/// A temp name no other writer uses, in this process or another: two
/// writers of the same final name (a retried push racing the first) must
/// never share, and so truncate, one temp file.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

fn write_temp(tmp: &Path, bytes: &[u8]) -> Result<File, BusError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(BusError::io("create", tmp))?;
    fill_temp(f, tmp, bytes)
}

/// Writes `bytes` into the open temp file `tmp`; on failure removes it.
fn fill_temp(mut f: File, tmp: &Path, bytes: &[u8]) -> Result<File, BusError> {
    if let Err(e) = f.write_all(bytes) {
        let _ = std::fs::remove_file(tmp);
        return Err(BusError::Io { op: "write", path: tmp.to_path_buf(), source: e });
    }
    Ok(f)
}

/// Opens `path` to read, never through a link nor blocking on a FIFO.
pub(crate) fn open_unfollowed(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

/// Fsyncs a directory, making renames and creations inside it durable.
pub fn fsync_dir(dir: &Path) -> Result<(), BusError> {
    #[cfg(test)]
    if super::hooks::says(&FAIL_DIR_SYNC, dir) {
        return Err(super::hooks::eio("fsync dir", dir));
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(BusError::io("fsync dir", dir))
}

/// A test's folder whose fsync fails.
#[cfg(test)]
pub(crate) static FAIL_DIR_SYNC: super::hooks::Hook = super::hooks::Hook::new(None);

/// Writes `bytes` to `dir/name` atomically and durably; returns the final path.
pub fn write_durable(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, BusError> {
    let tmp = temp_path(dir, name);
    let f = write_temp(&tmp, bytes)?;
    if let Err(e) = f.sync_all() {
        let _ = std::fs::remove_file(&tmp);
        return Err(BusError::Io { op: "fsync", path: tmp, source: e });
    }
    drop(f);
    let dst = install(&tmp, dir, name)?;
    if let Err(e) = fsync_dir(dir) {
        // Visible, but its name may not survive a crash: taken back, so that
        // an error means "not written" and a retry sends it once.
        match std::fs::remove_file(&dst) {
            Ok(()) => {
                let _ = fsync_dir(dir);
            }
            // Moved on already (a claim took it): on its way, so no failure to report.
            Err(r) if r.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %dst.display(), error = %e, "a folder fsync failed after the file was taken on");
                return Ok(dst);
            }
            Err(r) => {
                tracing::error!(file = %dst.display(), error = %r, "a file whose folder fsync failed cannot be taken back");
            }
        }
        return Err(e);
    }
    Ok(dst)
}

/// Renames the written temp file `tmp` to `dir/name`; on failure removes it.
fn install(tmp: &Path, dir: &Path, name: &str) -> Result<PathBuf, BusError> {
    let dst = dir.join(name);
    match std::fs::rename(tmp, &dst) {
        Ok(()) => Ok(dst),
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            Err(BusError::Io { op: "rename", path: dst, source: e })
        }
    }
}

/// Writes `bytes` to `dir/name` atomically (temp file, rename) but with no
/// fsync: for files a journal already made durable (see [`super::journal`]).
pub(crate) fn write_unsynced(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BusError> {
    let tmp = temp_path(dir, name);
    let f = write_temp(&tmp, bytes)?;
    drop(f);
    install(&tmp, dir, name).map(|_| ())
}

/// Removes the temp files (`.*.tmp`) in `dir` last changed more than `age`
/// ago: the remains of writers that crashed, never acknowledged. Returns how
/// many went. Names are checked before anything is stat'ed (a big inbox
/// costs a listing, not a stat per envelope); links are never followed.
pub fn sweep_stale_temps(dir: &Path, age: std::time::Duration) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    let names: Vec<std::ffi::OsString> = rd.flatten().map(|e| e.file_name()).collect();
    sweep_stale_named(dir, names.iter().filter_map(|n| n.to_str()), age)
}

/// Whether `name` is one of [`write_durable`]'s temp names.
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// [`sweep_stale_temps`] over names already listed from `dir` (others are skipped).
pub(crate) fn sweep_stale_named<'a>(
    dir: &Path,
    names: impl Iterator<Item = &'a str>,
    age: std::time::Duration,
) -> usize {
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, SystemTime};
    let mut temps = names.filter(|n| is_temp_name(n)).peekable();
    // A symlinked folder is not ours to sweep: never follow it out of the home.
    if temps.peek().is_none() || !std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_dir()) {
        return 0;
    }
    let now = SystemTime::now();
    let mut removed = 0;
    for name in temps {
        let path = dir.join(name);
        // By the last change of any kind (a write sets mtime, a rename ctime).
        let stale = std::fs::symlink_metadata(&path).ok().filter(|m| m.is_file()).is_some_and(|m| {
            let changed =
                SystemTime::UNIX_EPOCH + Duration::from_secs(m.ctime().max(m.mtime()).max(0) as u64);
            now.duration_since(changed).is_ok_and(|a| a > age)
        });
        if stale && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Writes many files into `dir` atomically, durable when it returns `Ok`.
pub fn write_durable_batch(dir: &Path, items: &[(String, Vec<u8>)]) -> Result<(), BusError> {
    if items.len() == 1 {
        return write_durable(dir, &items[0].0, &items[0].1).map(|_| ());
    }
    let mut temps: Vec<(PathBuf, File)> = Vec::with_capacity(items.len());
    let cleanup = |temps: &[(PathBuf, File)]| {
        for (t, _) in temps {
            let _ = std::fs::remove_file(t);
        }
    };
    for (name, bytes) in items {
        let tmp = temp_path(dir, name);
        match write_temp(&tmp, bytes) {
            Ok(f) => temps.push((tmp, f)),
            Err(e) => {
                cleanup(&temps);
                return Err(e);
            }
        }
    }
    if let Err(e) = sync_files(dir, &temps) {
        cleanup(&temps);
        return Err(e);
    }
    for ((tmp, _), (name, _)) in temps.iter().zip(items) {
        let dst = dir.join(name);
        if let Err(e) = std::fs::rename(tmp, &dst) {
            cleanup(&temps);
            // The names renamed so far count as known to a retry (and are
            // acked as duplicates then): make them durable now.
            let _ = fsync_dir(dir);
            return Err(BusError::Io { op: "rename", path: dst, source: e });
        }
    }
    fsync_dir(dir)
}

/// Fsyncs at once for one batch: concurrent fsyncs share the disk's cache
/// flushes, where fsyncs in a row pay one flush each.
const SYNC_THREADS: usize = 16;

/// Files a fsync thread takes at least (threads cost more than tiny batches save).
const FILES_PER_SYNC_THREAD: usize = 4;

fn sync_files(dir: &Path, temps: &[(PathBuf, File)]) -> Result<(), BusError> {
    start_writeback(dir, temps);
    let sync_chunk = |chunk: &[(PathBuf, File)]| -> Result<(), BusError> {
        chunk.iter().try_for_each(|(p, f)| f.sync_all().map_err(BusError::io("fsync", p)))
    };
    let threads = (temps.len() / FILES_PER_SYNC_THREAD).clamp(1, SYNC_THREADS);
    if threads == 1 {
        return sync_chunk(temps);
    }
    // Every thread is joined before any error is returned; a chunk whose
    // thread could not start, or panicked, is fsynced here instead.
    crate::parallel::on_threads(temps, temps.len().div_ceil(threads), sync_chunk, sync_chunk)
        .into_iter()
        .collect::<Result<(), BusError>>()
}

/// Starts the writeback of every file of a batch at once, so the fsyncs
/// that follow find their data on its way (Linux; elsewhere a no-op).
#[cfg(target_os = "linux")]
fn start_writeback(_dir: &Path, temps: &[(PathBuf, File)]) {
    use std::os::fd::AsRawFd;
    for (_, f) in temps {
        // SAFETY: sync_file_range only writes back an open fd's pages; a
        // failure here is harmless, the fsync after it is the guarantee.
        unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_dir: &Path, _temps: &[(PathBuf, File)]) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_write_whose_folder_sync_fails_takes_its_file_back() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        *FAIL_DIR_SYNC.lock().unwrap() = Some(Box::new(move |p| p == dir));
        let r = write_durable(d.path(), "a.json", b"{}\n");
        *FAIL_DIR_SYNC.lock().unwrap() = None;
        assert!(r.unwrap_err().to_string().contains("fsync dir"));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "neither the file nor a temp is left");
        write_durable(d.path(), "a.json", b"{}\n").unwrap();
    }

    #[test]
    fn a_durable_write_leaves_only_the_final_file() {
        let d = tempfile::tempdir().unwrap();
        write_durable(d.path(), "a.json", b"hello").unwrap();
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
        assert_eq!(std::fs::read(d.path().join("a.json")).unwrap(), b"hello");
    }

    #[test]
    fn a_batch_lands_every_file() {
        let d = tempfile::tempdir().unwrap();
        let items: Vec<_> = (0..10).map(|i| (format!("{i}.json"), vec![b'x'; i])).collect();
        write_durable_batch(d.path(), &items).unwrap();
        for (n, b) in &items {
            assert_eq!(&std::fs::read(d.path().join(n)).unwrap(), b);
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 10);
    }

    #[test]
    fn only_old_temp_files_are_swept() {
        let d = tempfile::tempdir().unwrap();
        for n in [".a.json.1.0.tmp", "b.json", ".lock"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        // Fresh: nothing goes.
        assert_eq!(sweep_stale_temps(d.path(), std::time::Duration::from_secs(3600)), 0);
        // Older than zero seconds (after a tick of the clock): only the temp file.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(sweep_stale_temps(d.path(), std::time::Duration::ZERO), 1);
        let mut left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".lock", "b.json"]);
        // A symlink to a folder is never swept through.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(".c.tmp"), b"x").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(other.path(), &link).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(sweep_stale_temps(&link, std::time::Duration::ZERO), 0);
        assert!(other.path().join(".c.tmp").exists());
    }

    #[test]
    fn a_write_into_a_missing_directory_fails_without_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        assert!(write_durable(&missing, "a.json", b"x").is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
