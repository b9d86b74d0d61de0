//! `mesh/charter.json` on disk: load, offer, amend, each under one lock.
//!
//! The CLI (`mesh init`, `remove`, `join`) and the daemon (joins, address
//! updates, charters pushed by the root) all change the file, so every
//! read-modify-write holds `mesh/.charter.lock` (flock); the write itself is
//! the bus's durable write, so a crash leaves the old charter or the new one.

use std::time::Duration;

use netsky_keys::SecretKey;

use crate::charter::{Charter, Decision, SignedCharter};
use crate::{MeshError, MeshPaths};

/// How long to wait for another holder of the charter lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// A hold on the charter lock; released on drop.
#[derive(Debug)]
pub struct CharterLock {
    _lock: netsky_bus::FileLock,
}

/// Takes the charter lock, waiting up to a few seconds.
pub fn lock(paths: &MeshPaths) -> Result<CharterLock, MeshError> {
    std::fs::create_dir_all(paths.dir()).map_err(MeshError::io("create", paths.dir()))?;
    let p = paths.charter_lock();
    match netsky_bus::lock_file(&p, LOCK_WAIT).map_err(MeshError::io("lock", &p))? {
        Some(l) => Ok(CharterLock { _lock: l }),
        None => Err(MeshError::Charter(format!("{} is held by another process for over 5 s", p.display()))),
    }
}

/// The charter held, verified; `None` outside a mesh.
pub fn load(paths: &MeshPaths) -> Result<Option<SignedCharter>, MeshError> {
    SignedCharter::load(&paths.charter())
}

/// Writes `c` as the charter held (durably), without checks: callers decide first.
pub fn store(paths: &MeshPaths, _lock: &CharterLock, c: &SignedCharter) -> Result<(), MeshError> {
    netsky_bus::write_durable(&paths.dir(), "charter.json", &c.to_json())?;
    Ok(())
}

/// Offers a charter received from elsewhere: stored only if it may replace the one held.
pub fn offer(paths: &MeshPaths, new: &SignedCharter) -> Result<Decision, MeshError> {
    let l = lock(paths)?;
    let held = load(paths)?;
    let d = new.decide(held.as_ref())?;
    if d == Decision::Accept {
        store(paths, &l, new)?;
    }
    Ok(d)
}

/// Changes the charter held (root, with the mesh key): epoch + 1, reissued, signed, stored.
pub fn amend(
    paths: &MeshPaths,
    mesh_key: &SecretKey,
    change: impl FnOnce(&mut Charter) -> Result<(), MeshError>,
) -> Result<SignedCharter, MeshError> {
    let l = lock(paths)?;
    if let Some(p) = pending_handover(paths)? {
        // Another epoch now could conflict with the one the new root may already hold.
        return Err(MeshError::Charter(format!(
            "the root role is being handed to {} (epoch {}); run `netsky mesh promote {}` to finish that first",
            p.charter.root, p.charter.epoch, p.charter.root
        )));
    }
    let held = load(paths)?.ok_or_else(|| MeshError::Charter("this node holds no charter".into()))?;
    let signed = reissue(&held.charter, mesh_key, change)?;
    store(paths, &l, &signed)?;
    Ok(signed)
}

/// The handover charter a `promote` sent and no answer has confirmed yet.
///
/// Kept so that a retry sends the very same charter (never a second,
/// different one of the same epoch) and so that nothing else is issued meanwhile.
pub fn pending_handover(paths: &MeshPaths) -> Result<Option<SignedCharter>, MeshError> {
    let p = paths.handover();
    if p.symlink_metadata().is_err() {
        return Ok(None);
    }
    SignedCharter::load(&p)
}

/// Records `c` as a handover about to be sent (durably, before it leaves).
pub fn begin_handover(paths: &MeshPaths, _lock: &CharterLock, c: &SignedCharter) -> Result<(), MeshError> {
    netsky_bus::write_durable(&paths.dir(), "handover.json", &c.to_json())?;
    Ok(())
}

/// The handover is done (`c` names the new root): stores `c`, then gives up
/// the mesh key and the pending record, so one node alone holds the key.
pub fn finish_handover(paths: &MeshPaths, lock: &CharterLock, c: &SignedCharter) -> Result<(), MeshError> {
    store(paths, lock, c)?;
    give_up_root(paths, lock)
}

/// Removes this node's mesh key and pending handover: another node is root now.
pub fn give_up_root(paths: &MeshPaths, _lock: &CharterLock) -> Result<(), MeshError> {
    for p in [paths.mesh_key(), paths.handover()] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(MeshError::io("remove", &p)(e)),
        }
    }
    netsky_bus::fsync_dir(&paths.dir())?;
    netsky_bus::fsync_dir(&paths.home().join("keys"))?;
    Ok(())
}

/// After a charter naming another root was stored: a mesh key still held
/// here for that charter's mesh (a handover whose answer was lost) is given
/// up. Returns whether it was.
pub fn finish_handover_if_taken(
    paths: &MeshPaths,
    self_name: &netsky_bus::NodeName,
) -> Result<bool, MeshError> {
    let l = lock(paths)?;
    let Some(held) = load(paths)? else { return Ok(false) };
    if &held.charter.root == self_name {
        return Ok(false);
    }
    match mesh_key(paths)? {
        // Only the holder of this key could have signed a charter naming another
        // root: the handover reached it, so the key must not stay here too.
        Some(k) if k.public() == held.charter.mesh_key => {
            give_up_root(paths, &l)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The next epoch of `held` with `change` applied, issued now and signed; not stored.
pub fn reissue(
    held: &Charter,
    mesh_key: &SecretKey,
    change: impl FnOnce(&mut Charter) -> Result<(), MeshError>,
) -> Result<SignedCharter, MeshError> {
    let mut c = held.clone();
    change(&mut c)?;
    c.epoch = held.epoch + 1;
    c.issued = netsky_bus::format_ts(time::OffsetDateTime::now_utc());
    let signed = c.sign(mesh_key)?;
    signed.verify()?;
    Ok(signed)
}

/// Loads the mesh key of this home, if it holds one.
pub fn mesh_key(paths: &MeshPaths) -> Result<Option<SecretKey>, MeshError> {
    let p = paths.mesh_key();
    if p.symlink_metadata().is_err() {
        return Ok(None);
    }
    Ok(Some(netsky_keys::load_key_file(&p)?.key))
}
