//! The bare file lifecycle: what a bus with one file per envelope pays this
//! filesystem for `inbox -> claimed -> delivered` with nothing else around it.
//!
//! Two threads, as a node runs them, on raw syscalls: a writer that makes each
//! batch durable with one journal write and one `fdatasync`, then lays out one
//! whole file per envelope in `inbox/`; a deliverer that lists the inbox,
//! renames each file into `claimed/`, opens, checks the type of and reads it,
//! looks its name up in `delivered/`, renames it there and fsyncs both
//! folders; one `syncfs` at the end retires the journals. No JSON, no
//! signature, no guard, no dedupe table: the netsky bus does all of this and
//! more, so no bus that keeps the section 3 layout goes faster here.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Bytes of each envelope file (about a typical signed envelope).
const BODY: usize = 420;

/// Envelopes per second through the bare lifecycle: `n` envelopes in batches
/// of `batch`, under the fresh folder `dir`.
pub(super) fn lifecycle_per_s(dir: &Path, n: usize, batch: usize) -> Result<f64> {
    let open = |name: &str| -> Result<File> {
        let p = dir.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        File::open(&p).with_context(|| format!("cannot open {}", p.display()))
    };
    let (journal, inbox, claimed, delivered) =
        (open("journal")?, open("inbox")?, open("claimed")?, open("delivered")?);
    let inbox_path = dir.join("inbox");
    let names: Vec<CString> =
        (0..n).map(|i| CString::new(format!("01JDQ7BARE{i:016}.json"))).collect::<Result<_, _>>()?;
    let written = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let writer = s.spawn(|| -> Result<()> {
            let body = vec![b'x'; BODY];
            let mut record = vec![b'j'; BODY * batch];
            for (k, chunk) in names.chunks(batch).enumerate() {
                record.truncate(BODY * chunk.len());
                let j = create(journal.as_raw_fd(), &CString::new(format!("j-{k}"))?)?;
                write_all(&j, &record)?;
                if unsafe { libc::fdatasync(j.as_raw_fd()) } != 0 {
                    return Err(os("fdatasync the journal"));
                }
                for name in chunk {
                    lay_out(inbox.as_raw_fd(), name, &body)?;
                }
                written.fetch_add(chunk.len(), Ordering::Release);
                let _ = tx.send(());
            }
            drop(tx);
            Ok(())
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut done = 0;
        while done < n {
            let upto = written.load(Ordering::Acquire);
            if upto == done {
                if rx.recv().is_err() && written.load(Ordering::Acquire) == done {
                    break;
                }
                continue;
            }
            let listed = std::fs::read_dir(&inbox_path)?.count();
            if listed < upto - done {
                bail!("bare lifecycle: {listed} files listed, {} laid out", upto - done);
            }
            for name in &names[done..upto] {
                // SAFETY (all calls below): open folder fds, NUL-terminated names, and
                // buffers that outlive the calls.
                if unsafe {
                    libc::renameat(inbox.as_raw_fd(), name.as_ptr(), claimed.as_raw_fd(), name.as_ptr())
                } != 0
                {
                    return Err(os("rename to claimed"));
                }
                let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
                let fd = unsafe { libc::openat(claimed.as_raw_fd(), name.as_ptr(), flags) };
                if fd < 0 {
                    return Err(os("open claimed"));
                }
                // SAFETY: just opened, owned here.
                let f = unsafe { File::from_raw_fd(fd) };
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                if unsafe { libc::fstat(f.as_raw_fd(), &mut st) } != 0
                    || st.st_mode & libc::S_IFMT != libc::S_IFREG
                {
                    return Err(os("fstat claimed"));
                }
                let r = unsafe { libc::read(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if r != BODY as isize {
                    return Err(os("read claimed"));
                }
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                if unsafe {
                    libc::fstatat(delivered.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
                } == 0
                {
                    bail!("bare lifecycle: {name:?} is already delivered");
                }
            }
            for name in &names[done..upto] {
                if unsafe {
                    libc::renameat(claimed.as_raw_fd(), name.as_ptr(), delivered.as_raw_fd(), name.as_ptr())
                } != 0
                {
                    return Err(os("rename to delivered"));
                }
            }
            delivered.sync_all().context("fsync delivered/")?;
            claimed.sync_all().context("fsync claimed/")?;
            done = upto;
        }
        writer.join().map_err(|_| anyhow::anyhow!("the bare writer thread panicked"))??;
        if done != n {
            bail!("bare lifecycle: {done} of {n} delivered");
        }
        sync_fs(&inbox)
    })?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn os(op: &str) -> anyhow::Error {
    anyhow::anyhow!("bare lifecycle: {op}: {}", io::Error::last_os_error())
}

fn create(dir: RawFd, name: &CString) -> Result<File> {
    // SAFETY: an open folder fd and a NUL-terminated name; the fd returned is ours alone.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(os("create"));
    }
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn write_all(f: &File, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    (&mut &*f).write_all(bytes).context("bare lifecycle: write")
}

/// One whole file, as the bus lays one out: unnamed, written, then linked in
/// (Linux); elsewhere created under its name, which only makes this cheaper.
fn lay_out(dir: RawFd, name: &CString, body: &[u8]) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: an open folder fd; the fd returned is ours alone.
        let fd = unsafe {
            libc::openat(
                dir,
                c".".as_ptr(),
                libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(os("open an unnamed file"));
        }
        let f = unsafe { File::from_raw_fd(fd) };
        write_all(&f, body)?;
        let proc = CString::new(format!("/proc/self/fd/{fd}"))?;
        // SAFETY: NUL-terminated paths and an open folder fd.
        if unsafe { libc::linkat(libc::AT_FDCWD, proc.as_ptr(), dir, name.as_ptr(), libc::AT_SYMLINK_FOLLOW) }
            != 0
        {
            return Err(os("link the file in"));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        write_all(&create(dir, name)?, body)
    }
}

fn sync_fs(f: &File) -> Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: an open fd.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(os("syncfs"));
    }
    #[cfg(not(target_os = "linux"))]
    f.sync_all().context("bare lifecycle: fsync")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_envelope_ends_in_delivered_and_nothing_is_left_behind() {
        let t = tempfile::tempdir().unwrap();
        let rate = super::lifecycle_per_s(t.path(), 37, 8).unwrap();
        assert!(rate > 0.0);
        let count = |d: &str| std::fs::read_dir(t.path().join(d)).unwrap().count();
        assert_eq!((count("inbox"), count("claimed"), count("delivered"), count("journal")), (0, 0, 37, 5));
    }
}
