//! A clone's workspace: `workspaces/<name>/repo` under the home, a git
//! clone of the repository the work is for, on branch `clone/<name>`.
//!
//! Names are normalised, then checked: ASCII letters are lower-cased and
//! runs of spaces become one `-`; what is left must be 1 to 64 of
//! `a-z 0-9 . _ -`, not start with `.` or `-`, and hold no `..`. A slash is
//! refused outright (a name is one folder, never a path).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::git;

/// A checked workspace name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceName(String);

impl WorkspaceName {
    /// Normalises and checks `raw` (see the module's rules).
    pub fn parse(raw: &str) -> Result<WorkspaceName> {
        if raw.contains("..") {
            bail!("workspace name {raw:?}: no \"..\"");
        }
        if raw.contains('/') || raw.contains('\\') {
            bail!("workspace name {raw:?}: no slashes (a workspace is one folder under workspaces/)");
        }
        let lowered = raw.trim().to_ascii_lowercase();
        let name = lowered.split_whitespace().collect::<Vec<_>>().join("-");
        let ok_chars = name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'));
        if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with('.') || name.starts_with('-') {
            bail!(
                "workspace name {raw:?}: expected 1 to 64 of a-z 0-9 . _ - (spaces become -), not starting with . or -"
            );
        }
        Ok(WorkspaceName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The clone's branch: `clone/<name>`.
    pub fn branch(&self) -> String {
        format!("clone/{}", self.0)
    }
}

/// `workspaces/<name>` under `home`.
pub fn dir(home: &Path, name: &WorkspaceName) -> PathBuf {
    home.join("workspaces").join(name.as_str())
}

/// Clones `source` (a repository's top) into `workspaces/<name>/repo` on a new branch `clone/<name>`.
pub fn create(home: &Path, name: &WorkspaceName, source: &Path) -> Result<PathBuf> {
    let ws = dir(home, name);
    if ws.exists() {
        bail!(
            "workspace {} exists already ({}); pick another name, or `netsky clone kill N --rm` the clone that has it",
            name.as_str(),
            ws.display()
        );
    }
    std::fs::create_dir_all(&ws).with_context(|| format!("cannot create {}", ws.display()))?;
    let repo = ws.join("repo");
    let (src, dst) = (source.display().to_string(), repo.display().to_string());
    let made = git::ok(&ws, &["clone", "--quiet", &src, &dst], git::SLOW)
        .and_then(|_| git::ok(&repo, &["checkout", "--quiet", "-b", &name.branch()], git::QUICK));
    if let Err(e) = made {
        // Nothing half-made is left to block the name.
        let _ = std::fs::remove_dir_all(&ws);
        return Err(e.context(format!("cannot create workspace {}", name.as_str())));
    }
    Ok(repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_or_refused_clearly() {
        assert_eq!(WorkspaceName::parse("Viability T6").unwrap().as_str(), "viability-t6");
        assert_eq!(WorkspaceName::parse("viability-t6").unwrap().branch(), "clone/viability-t6");
        for bad in ["..", "a/../b", "a/b", "../x", "", "   ", ".hidden", "-x", "naïve", &"x".repeat(65)] {
            assert!(WorkspaceName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
