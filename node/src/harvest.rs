//! Harvest: bring a clone's commits onto a target branch, through a check.
//!
//! 1. fetch `clone/<name>` from the clone's workspace into the repository it
//!    came from, as `refs/netsky/harvest/<name>`;
//! 2. rebase it onto the target in a scratch worktree (`workspaces/<name>/harvest`);
//!    a branch that does not rebase is aborted, and the conflict named;
//! 3. run the check command there (`sh -c`), bounded by `check_timeout_s`:
//!    a check that hangs is killed with its whole process group;
//! 4. only then fast-forward the target: in the worktree that has it checked
//!    out (`merge --ff-only`), else by `update-ref` guarded by its old value.
//!
//! Until step 4 nothing touches the target. Each step is an event; the
//! outcome is a `harvests` row in meta.db and an envelope of kind
//! `harvest-complete` to agent0, whether it landed or why not.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use netsky_bus::{Address, AgentName, Envelope, Kind, Mailbox, format_ts};
use serde::Serialize;
use time::OffsetDateTime;

use crate::clone::{self, Dispatch};
use crate::git;
use crate::node::Node;
use crate::record::EventKind;
use crate::store::HarvestRow;

/// What `harvest` was asked.
#[derive(Debug)]
pub struct Request {
    /// The clone's agent.
    pub agent: AgentName,
    /// The target branch (default: the branch checked out when it was briefed).
    pub onto: Option<String>,
    /// A shell command that must pass in the rebased tree.
    pub check: Option<String>,
    /// Seconds the check may take (default `[constellation] check_timeout_s`).
    pub check_timeout: Option<u64>,
}

/// What a harvest did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The clone's agent.
    pub agent: String,
    /// Its workspace.
    pub workspace: String,
    /// The target branch.
    pub onto: String,
    /// The target moved.
    pub landed: bool,
    /// The target before.
    pub old_head: Option<String>,
    /// The target after, or the rebased head that did not land.
    pub new_head: Option<String>,
    /// Why it did not land, or what landed.
    pub detail: String,
    /// The check's last output lines, if it ran.
    pub check_output: Option<String>,
    /// The `harvest-complete` envelope sent to agent0.
    pub envelope: Option<String>,
}

/// Why a harvest stopped, with what it had got to.
struct Refusal {
    why: String,
    new_head: Option<String>,
    check_output: Option<String>,
}

fn refuse(why: impl Into<String>) -> Refusal {
    Refusal { why: why.into(), new_head: None, check_output: None }
}

/// Runs a harvest; `Ok` with `landed: false` when it stopped for a reason the user must act on.
pub fn run(node: &Node, req: Request) -> Result<Outcome> {
    let Some(mut d) = clone::load(node, req.agent)? else {
        bail!("{} was never briefed as a clone (`netsky clone ls` lists them)", req.agent)
    };
    // A clone that finished is recorded so before its work moves.
    let _ = clone::refresh(node, &mut d);
    let onto = match req.onto.clone().or_else(|| Some(d.base.clone()).filter(|b| !b.is_empty())) {
        Some(o) => o,
        None => bail!(
            "{} was on a detached HEAD when {} was briefed, so there is no branch to land on; say --onto BRANCH",
            d.repo.display(),
            req.agent
        ),
    };
    let old = git::ok(
        &d.repo,
        &["rev-parse", "--verify", "--quiet", &format!("refs/heads/{onto}^{{commit}}")],
        git::QUICK,
    )
    .with_context(|| format!("no branch {onto} in {}", d.repo.display()))?;
    let scratch =
        d.workdir.parent().map(|w| w.join("harvest")).context("the workspace has no parent folder")?;
    let timeout = Duration::from_secs(req.check_timeout.unwrap_or(node.config.constellation.check_timeout_s));
    let check =
        req.check.as_deref().or(node.config.constellation.check.as_deref()).filter(|c| !c.trim().is_empty());
    // One harvest of a clone at a time: two would share the scratch worktree.
    let lock_path = d.workdir.parent().context("the workspace has no parent folder")?.join(".harvest.lock");
    let Some(_lock) = netsky_bus::lock_file(&lock_path, Duration::from_secs(1))
        .with_context(|| format!("cannot lock {}", lock_path.display()))?
    else {
        bail!("a harvest of {} is already running", req.agent);
    };
    let result = steps(node, &d, &onto, &old, &scratch, check, timeout);
    cleanup(&d, &scratch);
    let (landed, new_head, detail, check_output) = match result {
        Ok((new, out)) => (
            true,
            Some(new.clone()),
            format!("{onto} fast-forwarded {} -> {}", short(&old), short(&new)),
            out,
        ),
        Err(r) => (false, r.new_head, r.why, r.check_output),
    };
    let rec = &node.recorder;
    if !landed {
        rec.record(&[rec.event(EventKind::HarvestRefused, Some(req.agent), None, Some(detail.clone()))]);
    }
    let mut out = Outcome {
        agent: d.agent.clone(),
        workspace: d.workspace.clone(),
        onto: onto.clone(),
        landed,
        old_head: Some(old.clone()),
        new_head,
        detail,
        check_output,
        envelope: None,
    };
    let ts = format_ts(OffsetDateTime::now_utc());
    node.recorder.with_store(|s| {
        s.insert_harvest(&HarvestRow {
            ts: &ts,
            agent: &out.agent,
            workspace: &out.workspace,
            onto: &out.onto,
            outcome: if out.landed { "landed" } else { "refused" },
            old_head: out.old_head.as_deref(),
            new_head: out.new_head.as_deref(),
            detail: Some(&out.detail),
        })
    });
    out.envelope = Some(tell_agent0(node, &out)?);
    Ok(out)
}

/// The repository file a check command runs, when its program is one
/// (`./bin/check --fast` is `bin/check`); `None` for a program on PATH.
fn repo_script(cmd: &str) -> Option<String> {
    let program = cmd.split_whitespace().next()?;
    if program.starts_with('/') || !program.contains('/') {
        return None;
    }
    let path = program.trim_start_matches("./");
    (!path.is_empty() && !path.split('/').any(|p| p == "..")).then(|| path.to_string())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn event(node: &Node, d: &Dispatch, kind: EventKind, detail: String) {
    let rec = &node.recorder;
    rec.record(&[rec.event(kind, d.agent.parse().ok(), None, Some(detail))]);
}

/// Steps 1 to 4; the new head and the check's output on success.
fn steps(
    node: &Node,
    d: &Dispatch,
    onto: &str,
    old: &str,
    scratch: &Path,
    check: Option<&str>,
    timeout: Duration,
) -> Result<(String, Option<String>), Refusal> {
    let fail = |e: anyhow::Error| refuse(format!("{e:#}"));
    // 1. fetch
    let harvest_ref = format!("refs/netsky/harvest/{}", d.workspace);
    if !git::has(&d.workdir, &format!("refs/heads/{}", d.branch)).map_err(fail)? {
        return Err(refuse(format!("the workspace {} has no branch {}", d.workdir.display(), d.branch)));
    }
    let src = d.workdir.display().to_string();
    git::ok(
        &d.repo,
        &["fetch", "--quiet", "--no-tags", &src, &format!("+refs/heads/{}:{harvest_ref}", d.branch)],
        git::SLOW,
    )
    .map_err(fail)?;
    let fetched = git::ok(&d.repo, &["rev-parse", &harvest_ref], git::QUICK).map_err(fail)?;
    event(node, d, EventKind::HarvestFetched, format!("{} at {}", d.branch, short(&fetched)));
    // 2. rebase, in a scratch worktree
    remove_worktree(d, scratch);
    let wt = scratch.display().to_string();
    git::ok(&d.repo, &["worktree", "add", "--quiet", "--detach", &wt, &harvest_ref], git::SLOW)
        .map_err(fail)?;
    let mut rebase = Command::new("git");
    // updateRefs off: a user's `rebase.updateRefs` must not move their branches from here.
    rebase
        .arg("-C")
        .arg(scratch)
        .args(["-c", "rebase.updateRefs=false", "rebase", "--quiet", old])
        .env("GIT_TERMINAL_PROMPT", "0");
    for v in ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"] {
        rebase.env_remove(v);
    }
    if git::ok(scratch, &["config", "user.email"], git::QUICK).is_err() {
        // Rebased commits need a committer; their authors are kept.
        rebase.env("GIT_COMMITTER_NAME", "netsky").env("GIT_COMMITTER_EMAIL", "netsky@localhost");
    }
    let out = crate::proc::run_bounded(&mut rebase, git::SLOW).map_err(fail)?;
    if !out.status.success() {
        let conflicts =
            git::ok(scratch, &["diff", "--name-only", "--diff-filter=U"], git::QUICK).unwrap_or_default();
        let _ = git::run(scratch, &["rebase", "--abort"], git::QUICK);
        let files = conflicts.lines().collect::<Vec<_>>().join(", ");
        return Err(refuse(format!(
            "{} does not rebase onto {onto} (conflicts in: {}); the rebase was aborted, {onto} is untouched",
            d.branch,
            if files.is_empty() { git::complaint(&out) } else { files }
        )));
    }
    let new = git::ok(scratch, &["rev-parse", "HEAD"], git::QUICK).map_err(fail)?;
    if new == old {
        return Err(refuse(format!("{} holds no commits beyond {onto}: nothing to harvest", d.branch)));
    }
    event(node, d, EventKind::HarvestRebased, format!("onto {onto}: {}", short(&new)));
    // 3. check
    let mut check_output = None;
    if let Some(cmd) = check {
        // The judge is not the clone's to rewrite: a check script of the repository's own that the
        // clone's commits change would be judged by the clone's version of it.
        if let Some(script) = repo_script(cmd) {
            let changed = git::ok(&d.repo, &["diff", "--name-only", old, &new, "--", &script], git::QUICK)
                .map_err(fail)?;
            if !changed.trim().is_empty() {
                return Err(Refusal {
                    why: format!(
                        "the clone's commits change the check itself ({script}); review them by hand; {onto} is untouched"
                    ),
                    new_head: Some(new.clone()),
                    check_output: None,
                });
            }
        }
        let mut c = Command::new("sh");
        c.arg("-c").arg(cmd).current_dir(scratch).env("NETSKY_HARVEST", &d.workspace);
        let with = |why: String, output: Option<String>| Refusal {
            why,
            new_head: Some(new.clone()),
            check_output: output,
        };
        match crate::proc::run_bounded_group(&mut c, timeout) {
            Err(e) => {
                return Err(with(
                    format!(
                        "check {cmd:?} did not finish within {} s and was killed ({e:#}); {onto} is untouched",
                        timeout.as_secs()
                    ),
                    None,
                ));
            }
            Ok(o) => {
                let text = tail(&o.stdout, &o.stderr);
                if !o.status.success() {
                    return Err(with(
                        format!("check {cmd:?} failed ({}); {onto} is untouched", o.status),
                        Some(text),
                    ));
                }
                check_output = Some(text);
            }
        }
        event(node, d, EventKind::HarvestChecked, format!("{cmd:?} passed"));
    }
    // 4. fast-forward the target
    let landing =
        Refusal { why: String::new(), new_head: Some(new.clone()), check_output: check_output.clone() };
    let land = |e: anyhow::Error| Refusal { why: format!("cannot fast-forward {onto}: {e:#}"), ..landing };
    match checked_out_at(&d.repo, onto).map_err(|e| refuse(format!("{e:#}")))? {
        Some(tree) => {
            git::ok(&tree, &["merge", "--quiet", "--ff-only", &new], git::IN_USER_TREE).map_err(land)?
        }
        None => git::ok(&d.repo, &["update-ref", &format!("refs/heads/{onto}"), &new, old], git::QUICK)
            .map_err(land)?,
    };
    event(node, d, EventKind::HarvestLanded, format!("{onto}: {} -> {}", short(old), short(&new)));
    Ok((new, check_output))
}

/// The work tree of `repo` that has `branch` checked out, if any.
fn checked_out_at(repo: &Path, branch: &str) -> Result<Option<PathBuf>> {
    let list = git::ok(repo, &["worktree", "list", "--porcelain"], git::QUICK)?;
    let mut tree: Option<PathBuf> = None;
    for line in list.lines() {
        if let Some(p) = line.strip_prefix("worktree ") {
            tree = Some(PathBuf::from(p));
        } else if line.strip_prefix("branch ") == Some(&format!("refs/heads/{branch}")) {
            return Ok(tree);
        }
    }
    Ok(None)
}

/// Removes the scratch worktree (whatever is left of it).
fn remove_worktree(d: &Dispatch, scratch: &Path) {
    let wt = scratch.display().to_string();
    let _ = git::run(&d.repo, &["worktree", "remove", "--force", &wt], git::QUICK);
    let _ = std::fs::remove_dir_all(scratch);
    let _ = git::run(&d.repo, &["worktree", "prune"], git::QUICK);
}

/// Removes the scratch worktree and the fetched ref.
fn cleanup(d: &Dispatch, scratch: &Path) {
    remove_worktree(d, scratch);
    let _ =
        git::run(&d.repo, &["update-ref", "-d", &format!("refs/netsky/harvest/{}", d.workspace)], git::QUICK);
}

/// The last lines of a command's output, for a person to read.
fn tail(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(stdout), String::from_utf8_lossy(stderr));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Puts the `harvest-complete` envelope in agent0's inbox; returns its id.
fn tell_agent0(node: &Node, o: &Outcome) -> Result<String> {
    let here = node.config.node.name.clone();
    // The node speaks for itself as agentinfinity, as the watchdog does.
    let from = AgentName::Infinity;
    let text = format!(
        "[harvest-complete] {} (workspace {}) onto {}: {}. {}",
        o.agent,
        o.workspace,
        o.onto,
        if o.landed { "landed" } else { "NOT landed" },
        o.detail
    );
    let env = Envelope::new(
        &node.key,
        Kind::HarvestComplete,
        Address::agent(from, here.clone()),
        Address::agent(AgentName::ROOT, here.clone()),
        text,
        None,
    )?;
    let mailbox = Mailbox::open(&node.home.layout(), &here, AgentName::ROOT)?;
    mailbox.put(&env).with_context(|| format!("harvest-complete {} not sent to agent0", env.id))?;
    let rec = &node.recorder;
    rec.record(&[rec.event(EventKind::Sent, Some(AgentName::ROOT), Some(&env), None)]);
    Ok(env.id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_run_from_the_repository_is_known_by_its_path() {
        assert_eq!(repo_script("./bin/check --fast").as_deref(), Some("bin/check"));
        assert_eq!(repo_script("scripts/test.sh").as_deref(), Some("scripts/test.sh"));
        assert_eq!(repo_script("cargo test"), None);
        assert_eq!(repo_script("/usr/bin/make check"), None);
        assert_eq!(repo_script("../elsewhere/check"), None);
    }
}
