//! A folder held open, for lookups, renames and new files by name relative
//! to it.
//!
//! A path-based call walks every component from the root again; on a bus
//! folder seven deep that walk was a sixth of each small syscall's cost in
//! the claim and deliver loops. Names given here are single components
//! (listed or validated envelope names): a `/` or NUL in one is refused.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// An open folder (the caller keeps its path, for errors).
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
}

fn c_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not one file name")));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a file name"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

impl Dir {
    /// Opens `path`, which must be a folder (a link to one is followed, as a
    /// path-based call would).
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))?;
        #[cfg(target_os = "linux")]
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        #[cfg(not(target_os = "linux"))]
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: `c` is a valid C string; the fd returned is ours alone.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), flags) })?;
        Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Whether an entry `name` exists here (of any type; links not followed).
    pub(crate) fn has(&self, name: &str) -> bool {
        let Ok(c) = c_name(name) else { return false };
        // SAFETY: a zeroed stat is a valid out-buffer; `c` is a valid C string.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0 }
    }

    /// Opens `name` here for reading, never following a link nor blocking on a FIFO.
    pub(crate) fn open_read(&self, name: &str) -> io::Result<std::fs::File> {
        let c = c_name(name)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: an open folder fd and a valid C string; the fd returned is ours alone.
        let fd = cvt(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) })?;
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }

    /// Renames `name` here to `to_name` in `to` (replacing it, as rename(2) does).
    pub(crate) fn rename(&self, name: &str, to: &Dir, to_name: &str) -> io::Result<()> {
        let (a, b) = (c_name(name)?, c_name(to_name)?);
        // SAFETY: both fds are open folders; both names valid C strings.
        cvt(unsafe { libc::renameat(self.fd.as_raw_fd(), a.as_ptr(), to.fd.as_raw_fd(), b.as_ptr()) })
            .map(|_| ())
    }

    /// Makes `name` here, holding `bytes`, appearing whole or not at all,
    /// unsynced (for files a journal made durable); `Ok(false)` when this
    /// system cannot (the caller writes through a temp name instead).
    ///
    /// Linux: an unnamed file (`O_TMPFILE`) written and then linked in: one
    /// folder entry made, where a temp name costs an entry made, another
    /// looked up, made and removed by the rename. An existing `name` is
    /// `AlreadyExists`.
    #[cfg(target_os = "linux")]
    pub(crate) fn create_whole(&self, name: &str, bytes: &[u8]) -> io::Result<bool> {
        use std::io::Write;
        let c = c_name(name)?;
        // SAFETY: the fd is an open folder; the fd returned is ours alone.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c".".as_ptr(),
                libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // Filesystems without unnamed files say so in one of these.
            return match e.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL) => Ok(false),
                _ => Err(e),
            };
        }
        // SAFETY: just opened, owned here.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.write_all(bytes)?;
        // linkat(AT_EMPTY_PATH) needs a capability; the /proc path does not.
        let proc = CString::new(format!("/proc/self/fd/{fd}")).map_err(|_| io::Error::other("fd path"))?;
        // SAFETY: valid C strings and an open folder fd.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc.as_ptr(),
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // No /proc mounted: the unnamed file is dropped with `f`.
            return if e.raw_os_error() == Some(libc::ENOENT) { Ok(false) } else { Err(e) };
        }
        Ok(true)
    }

    /// As the Linux version; elsewhere there are no unnamed files.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn create_whole(&self, name: &str, _bytes: &[u8]) -> io::Result<bool> {
        c_name(name).map(|_| false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_renames_and_whole_files_work_by_name_and_refuse_paths() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let (da, db) = (Dir::open(&a).unwrap(), Dir::open(&b).unwrap());
        assert!(!da.has("x"));
        if da.create_whole("x", b"hello\n").unwrap() {
            assert_eq!(std::fs::read(a.join("x")).unwrap(), b"hello\n");
            let e = da.create_whole("x", b"other\n").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(std::fs::read(a.join("x")).unwrap(), b"hello\n", "never replaced");
        } else {
            std::fs::write(a.join("x"), b"hello\n").unwrap();
        }
        assert!(da.has("x"));
        da.rename("x", &db, "y").unwrap();
        assert!(!da.has("x") && db.has("y"));
        assert_eq!(std::fs::read(b.join("y")).unwrap(), b"hello\n");
        // Only our files in the folder: nothing unnamed left behind is visible.
        assert_eq!(std::fs::read_dir(&a).unwrap().count(), 0);
        for bad in ["../b/y", "", "a/b", "nul\0"] {
            assert!(!db.has(bad), "{bad:?}");
            assert!(db.rename(bad, &da, "z").is_err(), "{bad:?}");
            assert!(da.create_whole(bad, b"x").is_err(), "{bad:?}");
        }
        // A link in the folder is seen, never followed.
        std::os::unix::fs::symlink("/nonexistent", b.join("link")).unwrap();
        assert!(db.has("link"));
        assert!(Dir::open(&b.join("y")).is_err(), "a file is not a folder");
    }
}
