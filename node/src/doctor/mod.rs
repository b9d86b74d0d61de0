//! `netsky doctor`: every check of a node's health that a person would
//! otherwise make by hand, each `ok`, `warn` or `fail` with the one-line fix.
//!
//! The checks read the home directly rather than through [`Node::open`], so
//! a home whose config or key is broken is still examined (and the broken
//! part named) instead of refused at the door.

mod checks;

use serde::Serialize;

use crate::home::Home;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing to do.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Broken: the node does not do its job until it is fixed.
    Fail,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short and stable (`keys`, `config`, `charter`, ...): scripts match on it.
    pub name: &'static str,
    /// ok, warn or fail.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it, in one line (none when ok).
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check { name, verdict: Verdict::Ok, detail: detail.into(), fix: None }
    }
    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name, verdict: Verdict::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name, verdict: Verdict::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The home examined.
    pub home: String,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
    /// Checks that failed.
    pub failed: usize,
    /// Checks that warned.
    pub warned: usize,
}

/// Runs every check on `home`.
pub fn examine(home: &Home) -> Report {
    let checks = checks::all(home);
    let count = |v| checks.iter().filter(|c| c.verdict == v).count();
    Report {
        home: home.root().display().to_string(),
        failed: count(Verdict::Fail),
        warned: count(Verdict::Warn),
        checks,
    }
}

impl Report {
    /// Lines for people: one per check, the fix indented under it.
    pub fn text(&self) -> String {
        let mut s = format!("netsky doctor: {}\n", self.home);
        for c in &self.checks {
            let v = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            s.push_str(&format!("  [{v}] {:<12} {}\n", c.name, c.detail));
            if let Some(f) = &c.fix {
                s.push_str(&format!("         {:<12} fix: {f}\n", ""));
            }
        }
        s.push_str(&format!("{} failed, {} warned, {} checks", self.failed, self.warned, self.checks.len()));
        s
    }
}
