//! The shim launchd and systemd run (`bin/netsky-shim`, a POSIX sh script
//! embedded here): the live binary if it answers `--version`, else the last
//! known good copy, else a clear refusal with [`SHIM_BROKEN_EXIT`].

use std::path::PathBuf;

use crate::Error;

/// The shim's text, written into each home by `install`.
pub const SHIM: &str = include_str!("netsky-shim.sh");

/// The shim's exit status when neither binary runs (EX_CONFIG).
pub const SHIM_BROKEN_EXIT: i32 = 78;

/// What the shim would run, from `netsky-shim LIVE HOME --which`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimChoice {
    /// The binary it would exec.
    pub binary: PathBuf,
    /// Why it falls back to the last known good binary; `None` when it runs the live one.
    pub fallback: Option<String>,
}

/// Reads the shim's `--which` answer: the binary's path, then the reason (empty: none).
pub fn parse_which(stdout: &str) -> Result<ShimChoice, Error> {
    let mut lines = stdout.lines();
    let (Some(binary), reason) = (lines.next(), lines.next()) else {
        return Err(Error::ShimAnswer(stdout.chars().take(200).collect()));
    };
    if binary.is_empty() {
        return Err(Error::ShimAnswer(stdout.chars().take(200).collect()));
    }
    Ok(ShimChoice {
        binary: PathBuf::from(binary),
        fallback: reason.filter(|r| !r.is_empty()).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_which_answer_reads_with_and_without_a_fallback() {
        let c = parse_which("/usr/bin/netsky\n\n").unwrap();
        assert_eq!((c.binary.to_str(), c.fallback), (Some("/usr/bin/netsky"), None));
        let c = parse_which("/h/bin/netsky.lkg\nthe live binary /x is missing\n").unwrap();
        assert_eq!(c.fallback.as_deref(), Some("the live binary /x is missing"));
        assert!(parse_which("").is_err());
    }

    #[test]
    fn the_shim_is_a_posix_script_that_execs_the_daemon() {
        assert!(SHIM.starts_with("#!/bin/sh\n"));
        assert!(SHIM.contains("exec \"$bin\" --home \"$home\" node run"));
        assert!(SHIM.contains(&format!("exit {SHIM_BROKEN_EXIT}")));
    }
}
