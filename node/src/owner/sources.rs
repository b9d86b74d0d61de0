//! The owner's sources: commands the root runs on every tick, each JSON line
//! they print an owner message to an agent (see [`super::say`]).
//!
//! A line is `{"text": "agent0@laptop: pause the deploy"}` (the address as in
//! `owner say`) or `{"to": "agent0@laptop", "text": "pause the deploy"}`.
//! A source that fails, hangs past `leg_timeout_s` or prints garbage costs
//! only its own lines, each refusal an event; the rest still flows.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use netsky_bus::Address;
use serde::Deserialize;

use crate::node::Node;
use crate::proc::run_bounded;
use crate::record::EventKind;

/// One line of a source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    text: String,
    #[serde(default)]
    to: Option<String>,
}

/// Runs every source once and says what they printed; root only.
pub fn poll(node: &Node) -> Result<()> {
    if node.config.owner.sources.is_empty() || super::check_root(node).is_err() {
        return Ok(());
    }
    let timeout = Duration::from_secs(node.config.owner.leg_timeout_s);
    let rec = &node.recorder;
    for s in &node.config.owner.sources {
        match run(&s.argv, timeout) {
            Ok(out) => {
                for line in out.lines().filter(|l| !l.trim().is_empty()) {
                    if let Err(e) = say_line(node, line) {
                        let detail = format!("{}: {e:#}", s.argv.join(" "));
                        rec.record(&[rec.event(EventKind::OwnerDeskError, None, None, Some(detail))]);
                    }
                }
            }
            Err(e) => {
                let detail = format!("source {}: {e:#}", s.argv.join(" "));
                rec.record(&[rec.event(EventKind::OwnerDeskError, None, None, Some(detail))]);
            }
        }
    }
    Ok(())
}

fn run(argv: &[String], timeout: Duration) -> Result<String> {
    let (program, args) = argv.split_first().context("an empty argv")?;
    let out = run_bounded(Command::new(program).args(args), timeout)?;
    if !out.status.success() {
        bail!("exited with {}", out.status);
    }
    String::from_utf8(out.stdout).context("its output is not UTF-8")
}

fn say_line(node: &Node, line: &str) -> Result<()> {
    let l: Line = serde_json::from_str(line).with_context(|| format!("not an owner message: {line:.80}"))?;
    let (to, text) = match l.to {
        Some(to) => (to.parse::<Address>()?, l.text),
        None => super::split_addressed(&l.text),
    };
    super::say(node, &to, text)?;
    Ok(())
}
