//! Bounded git: every call has a deadline and an output cap (`proc`), never
//! asks for credentials on a terminal, and fails with git's own words.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::proc::run_bounded;

/// How long a local git call (rev-parse, update-ref, rebase) may take.
pub const QUICK: Duration = Duration::from_secs(30);

/// How long a clone or fetch of a local repository may take.
pub const SLOW: Duration = Duration::from_secs(300);

/// How long a merge in the user's own work tree may take: killed halfway it
/// would leave a half-updated tree and a lock behind, so it gets long.
pub const IN_USER_TREE: Duration = Duration::from_secs(3600);

/// `git -C dir args...`, whatever its exit status.
pub fn run(dir: &Path, args: &[&str], timeout: Duration) -> Result<Output> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(args).env("GIT_TERMINAL_PROMPT", "0");
    // The repository is `dir`'s, whatever the environment says.
    for v in ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"] {
        cmd.env_remove(v);
    }
    run_bounded(&mut cmd, timeout).map_err(|e| e.context(format!("git {} in {}", verb(args), dir.display())))
}

/// `git -C dir args...`; its stdout, trimmed, or an error with git's complaint.
pub fn ok(dir: &Path, args: &[&str], timeout: Duration) -> Result<String> {
    let out = run(dir, args, timeout)?;
    if !out.status.success() {
        bail!("git {} in {} failed: {}", verb(args), dir.display(), complaint(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn verb(args: &[&str]) -> String {
    args.iter().find(|a| !a.starts_with('-')).copied().unwrap_or("").to_string()
}

/// What a failed command said, on one line, cut short.
pub fn complaint(out: &Output) -> String {
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    let s = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let s: String = s.chars().take(400).collect();
    if s.is_empty() { format!("exit status {}", out.status) } else { s }
}

/// The top of the work tree holding `dir`, or an error saying it is not a git repository.
pub fn toplevel(dir: &Path) -> Result<std::path::PathBuf> {
    if !dir.is_dir() {
        bail!("{} is not a directory (a git repository was expected)", dir.display());
    }
    let out = run(dir, &["rev-parse", "--show-toplevel"], QUICK)?;
    if !out.status.success() {
        bail!("{} is not a git repository ({})", dir.display(), complaint(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().into())
}

/// Whether `rev` names a commit in the repository at `dir`.
pub fn has(dir: &Path, rev: &str) -> Result<bool> {
    let spec = format!("{rev}^{{commit}}");
    Ok(run(dir, &["rev-parse", "--verify", "--quiet", &spec], QUICK)?.status.success())
}
