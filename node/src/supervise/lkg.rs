//! The last known good binary (`bin/netsky.lkg`): the daemon copies itself
//! there once it has run healthily, and the shim runs it when the live
//! binary is missing or broken. A fallback reaches the daemon from the shim
//! in its environment, and the daemon records and escalates it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::home::Home;

/// Healthy beacon rounds in a row before the daemon promotes itself.
pub const HEALTHY_ROUNDS: u32 = 3;
/// How long a `--version` probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a promotion did.
#[derive(Debug, PartialEq, Eq)]
pub enum Promotion {
    /// The binary was copied to the last known good place.
    Promoted(PathBuf),
    /// The last known good binary is this one already.
    Current,
    /// This binary is not one to promote (why).
    Skipped(&'static str),
}

/// The shim's word that it ran the last known good binary: (why, the live binary).
pub fn fallback_from_env() -> Option<(String, String)> {
    let why = std::env::var("NETSKY_SHIM_FALLBACK").ok().filter(|w| !w.is_empty())?;
    Some((why, std::env::var("NETSKY_SHIM_LIVE").unwrap_or_default()))
}

/// Copies the running binary to `bin/netsky.lkg` (temp file, fsync, rename)
/// unless it is there already, or this process is itself the fallback.
pub fn promote(home: &Home) -> Result<Promotion> {
    if fallback_from_env().is_some() {
        return Ok(Promotion::Skipped("running as the shim's fallback"));
    }
    let exe = std::env::current_exe().context("cannot find the running binary")?;
    let lkg = netsky_launchd::lkg_path(home.root());
    if exe.canonicalize().ok() == lkg.canonicalize().ok() && lkg.exists() {
        return Ok(Promotion::Skipped("running as the last known good binary"));
    }
    if same_bytes(&exe, &lkg)? {
        return Ok(Promotion::Current);
    }
    let dir = lkg.parent().context("the last known good binary needs a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut src = std::fs::File::open(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
    std::io::copy(&mut src, tmp.as_file_mut()).with_context(|| format!("cannot copy {}", exe.display()))?;
    tmp.as_file().sync_all().context("cannot flush the last known good binary")?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .context("cannot make the last known good binary executable")?;
    }
    tmp.persist(&lkg).with_context(|| format!("cannot put {} in place", lkg.display()))?;
    netsky_bus::fsync_dir(dir).with_context(|| format!("cannot flush {}", dir.display()))?;
    Ok(Promotion::Promoted(lkg))
}

/// Whether two files hold the same bytes (false when `b` is absent), read in chunks.
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else { return Ok(false) };
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let open = |p: &Path| std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// A binary's answer to `--version`, probed as the shim probes it.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// The binary.
    pub path: PathBuf,
    /// It answered `netsky <version>` in time.
    pub healthy: bool,
    /// Its version line, or why it is not healthy.
    pub detail: String,
}

/// Runs `path --version`, bounded, as the shim does.
pub fn probe(path: &Path) -> Probe {
    let detail = |d: String| Probe { path: path.to_path_buf(), healthy: false, detail: d };
    if !path.exists() {
        return detail("missing".into());
    }
    match crate::proc::run_bounded(std::process::Command::new(path).arg("--version"), PROBE_TIMEOUT) {
        Ok(out) => {
            let line = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string();
            if out.status.success() && line.starts_with("netsky ") {
                Probe { path: path.to_path_buf(), healthy: true, detail: line }
            } else {
                detail(format!("--version answered {:?} with {}", line, out.status))
            }
        }
        Err(e) => detail(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_tells_equal_from_different_and_absent() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        std::fs::write(&a, vec![7u8; 200_000]).unwrap();
        std::fs::write(&b, vec![7u8; 200_000]).unwrap();
        let mut other = vec![7u8; 200_000];
        other[150_000] = 8;
        std::fs::write(&c, other).unwrap();
        assert!(same_bytes(&a, &b).unwrap());
        assert!(!same_bytes(&a, &c).unwrap());
        assert!(!same_bytes(&a, &d.path().join("none")).unwrap());
    }
}
