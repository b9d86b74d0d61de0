//! Key files: 32 secret bytes as lowercase hex, mode 0600, never overwritten.
//!
//! A key file readable by anyone but its owner is refused on load, with the
//! `chmod` that fixes it. Creation uses `O_EXCL` so two racing `init`s cannot
//! both write a key, and the file is fsynced (with its directory) before the
//! caller is told it exists. Symlinks are never followed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{KeyError, SecretKey};

/// The largest key file we will read: hex of 32 bytes plus whitespace.
const MAX_KEY_FILE: u64 = 256;

/// A secret key together with the file it came from.
#[derive(Debug, Clone)]
pub struct KeyFile {
    /// Where the key lives.
    pub path: PathBuf,
    /// The secret key itself.
    pub key: SecretKey,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_path_buf(), source }
}

/// Creates a new random key at `path` (mode 0600), refusing if anything exists there.
pub fn create_key_file(path: &Path) -> Result<KeyFile, KeyError> {
    save_key_file(path, SecretKey::generate())
}

/// Stores `key` at `path` (mode 0600, durably), refusing if anything exists there.
pub fn save_key_file(path: &Path, key: SecretKey) -> Result<KeyFile, KeyError> {
    if path.symlink_metadata().is_ok() {
        return Err(KeyError::Exists { path: path.to_path_buf() });
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists { path: path.to_path_buf() }
            } else {
                KeyError::Io { path: path.to_path_buf(), source: e }
            }
        })?;
    let hex = data_encoding::HEXLOWER.encode(&key.to_bytes());
    f.write_all(format!("{hex}\n").as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(KeyFile { path: path.to_path_buf(), key })
}

/// Loads the key at `path`, refusing loose permissions, symlinks and junk.
pub fn load_key_file(path: &Path) -> Result<KeyFile, KeyError> {
    let f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(|e| {
        // ELOOP is what O_NOFOLLOW reports for a symlink.
        if e.raw_os_error() == Some(libc::ELOOP) {
            KeyError::NotRegular { path: path.to_path_buf() }
        } else {
            KeyError::Io { path: path.to_path_buf(), source: e }
        }
    })?;
    let meta = f.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(KeyError::NotRegular { path: path.to_path_buf() });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: path.to_path_buf(), mode });
    }
    let mut text = String::new();
    f.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(|e| KeyError::Malformed { path: path.to_path_buf(), reason: e.to_string() })?;
    let hex = text.trim();
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(hex.as_bytes())
        .map_err(|e| KeyError::Malformed { path: path.to_path_buf(), reason: format!("not hex: {e}") })?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| KeyError::Malformed {
        path: path.to_path_buf(),
        reason: format!("{} bytes, expected 32", b.len()),
    })?;
    Ok(KeyFile { path: path.to_path_buf(), key: SecretKey::from_bytes(&bytes) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_key_reloads_to_the_same_identity_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let made = create_key_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load_key_file(&path).unwrap();
        assert_eq!(made.key.public(), loaded.key.public());
    }

    #[test]
    fn an_existing_key_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let first = create_key_file(&path).unwrap();
        assert!(matches!(create_key_file(&path), Err(KeyError::Exists { .. })));
        assert_eq!(load_key_file(&path).unwrap().key.public(), first.key.public());
    }

    #[test]
    fn a_key_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        create_key_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_key_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_symlinked_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.key");
        create_key_file(&real).unwrap();
        let link = dir.path().join("node.key");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(load_key_file(&link), Err(KeyError::NotRegular { .. })));
    }

    #[test]
    fn junk_in_a_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [("short", "abcd\n"), ("nothex", "zz\n"), ("empty", "")] {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(matches!(load_key_file(&path), Err(KeyError::Malformed { .. })), "{name}");
        }
    }
}
