//! What every command sees and how it reports: the global options ([`Ctx`])
//! and one way to print a result ([`emit`]), JSON with `--json`, else text.
//!
//! It lives beneath the command line so that the daemon, the benchmarks and
//! the demo can report as commands do without knowing the `cli` module.

use anyhow::Result;
use serde::Serialize;

use crate::home::Home;

/// Global options every command sees.
pub struct Ctx {
    /// `--json`
    pub json: bool,
    /// The resolved home.
    pub home: Home,
}

/// Prints `value` as JSON with `--json`, else the human text.
pub fn emit<T: Serialize>(ctx: &Ctx, value: &T, human: impl FnOnce() -> String) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if ctx.json {
        serde_json::to_writer(&mut out, value)?;
        writeln!(out)?;
    } else {
        let text = human();
        if !text.is_empty() {
            writeln!(out, "{text}")?;
        }
    }
    out.flush()?;
    Ok(())
}
