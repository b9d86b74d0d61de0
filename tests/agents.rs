//! End-to-end tests of agents at work: runtimes, first-run prompts,
//! readiness, handoffs, the clone lifecycle and harvest.
//!
//! Each test owns its world: a temporary home, real git repositories in
//! temp folders, a tmux server on its own socket (killed at the end, pass
//! or fail), a 1-second tick, and a fake runtime: a bash script that acts
//! as an agent: it reads what is pasted into its pane line by line, writes
//! the files a brief asks for, commits, pushes its branch or replies to
//! agent0 on the bus with `netsky channel send`. Tests wait on conditions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::tmux::{TmuxHome, wait_until};

/// Generous: the machine running the suite may be busy with other builds.
const DEADLINE: Duration = Duration::from_secs(30);

/// The fake agent. `write: FILE TEXT` writes a file; `finish` commits and
/// replies to agent0; `finish-push` commits and pushes the clone's branch.
const FAKE: &str = r#"#!/bin/bash
echo "fake $NETSKY_RUNTIME agent$AGENT_N up in $PWD"
echo "ready>"
while IFS= read -r line; do
  line="${line%</channel>}"
  case "$line" in
    *"write: "*)
      rest="${line#*write: }"; f="${rest%% *}"; c="${rest#* }"
      printf '%s\n' "$c" > "$f" && echo "wrote $f";;
    *finish-push*)
      git add -A && git commit -qm "work of agent$AGENT_N" && git push -q origin HEAD && echo pushed;;
    *finish*)
      git add -A && git commit -qm "work of agent$AGENT_N" && echo committed
      "$NETSKY" channel send agent0 "done: committed" --kind reply --from "agent$AGENT_N" > /dev/null && echo reported;;
  esac
done
"#;

/// A runtime that asks Claude Code's development-channel consent, then works on.
const CONSENT: &str = r#"#!/bin/bash
echo "WARNING: Loading development channels"
echo
echo " > 1. I am using this for local development"
echo "   2. Exit"
read -r answer
echo "consent given"
echo "ready>"
cat
"#;

/// A runtime that asks a question netsky does not know.
const ASKS: &str = r#"#!/bin/bash
echo "Welcome to frobnicator"
echo "Install the optional frobnicator plugins? (y/n)"
read -r answer
cat
"#;

struct World {
    t: TmuxHome,
}

impl std::ops::Deref for World {
    type Target = TmuxHome;
    fn deref(&self) -> &TmuxHome {
        &self.t
    }
}

impl World {
    /// A home whose agents run the fake runtime (`clones` of them), on a private tmux socket.
    fn new(clones: u16, extra: &str) -> World {
        let w = World { t: TmuxHome::new("nsky-agents") };
        let script = |name: &str, body: &str| {
            let p = w.dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p.display().to_string()
        };
        let (fake, consent, asks) =
            (script("fake.sh", FAKE), script("consent.sh", CONSENT), script("asks.sh", ASKS));
        let env = format!(
            "env = {{ NETSKY = \"{}\", GIT_AUTHOR_NAME = \"clone\", GIT_AUTHOR_EMAIL = \"clone@t\", \
             GIT_COMMITTER_NAME = \"clone\", GIT_COMMITTER_EMAIL = \"clone@t\" }}",
            env!("CARGO_BIN_EXE_netsky")
        );
        let config = format!(
            "[node]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nrelay = \"disabled\"\ntick_interval_s = 1\n\n\
             [constellation]\nclones = {clones}\nruntime = \"fake\"\ntmux_socket = \"{}\"\n{extra}\n\n\
             [runtimes.fake]\nargv = [\"bash\", \"{fake}\"]\n{env}\n\n\
             [runtimes.other]\nargv = [\"bash\", \"{fake}\"]\n{env}\n\n\
             [runtimes.consent]\nargv = [\"bash\", \"{consent}\"]\n\n\
             [runtimes.asks]\nargv = [\"bash\", \"{asks}\"]\n\n\
             [runtimes.ghost]\nargv = [\"/nonexistent/agent-binary\"]\n",
            w.sock
        );
        std::fs::write(w.home.join("config.toml"), config).unwrap();
        w
    }

    /// Waits until `agent`'s pane shows `text`.
    fn pane_shows(&self, agent: &str, text: &str) -> String {
        wait_for(
            &format!("{text:?} in {agent}'s pane"),
            || Some(self.capture(agent)).filter(|p| p.contains(text)),
            || self.capture(agent),
        )
    }

    /// Waits until `agent` is ready.
    fn ready(&self, agent: &str) {
        wait_for(
            &format!("{agent} ready"),
            || (self.agent(agent)["state"] == "ready").then_some(()),
            || self.agent(agent).to_string(),
        );
    }

    fn events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.home.join("logs")).unwrap().flatten() {
            for l in std::fs::read_to_string(e.path()).unwrap_or_default().lines() {
                if let Ok(v) = serde_json::from_str::<Value>(l) {
                    out.push(v);
                }
            }
        }
        out
    }

    fn has_event(&self, name: &str) -> bool {
        self.events().iter().any(|e| e["event"] == name)
    }

    /// A git repository with one commit on `main`, in the test's folder.
    fn repo(&self, name: &str) -> PathBuf {
        let r = self.dir.path().join(name);
        std::fs::create_dir_all(&r).unwrap();
        git(&r, &["init", "-q", "-b", "main"]);
        std::fs::write(r.join("README"), "base\n").unwrap();
        git(&r, &["add", "-A"]);
        git(&r, &["commit", "-qm", "base"]);
        r
    }

    /// A brief file with `text`.
    fn brief(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

/// `git -C dir args` with a fixed identity; asserts success; stdout trimmed.
fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>, seen: impl Fn() -> String) -> T {
    wait_until(what, DEADLINE, f, seen)
}

#[test]
fn a_brief_is_worked_waited_for_and_harvested_onto_main_through_a_passing_check() {
    let w = World::new(2, "");
    let src = w.repo("src");
    w.ok(&["up", "2"]);
    let brief = w.brief("t6.md", "Task six\nwrite: feature.txt hello from the clone\nfinish\n");
    let d =
        w.json(&["clone", "brief", &brief, "--workspace", "Viability T6", "--repo", src.to_str().unwrap()]);
    assert_eq!((d["agent"].as_str(), d["workspace"].as_str()), (Some("agent1"), Some("viability-t6")), "{d}");
    assert_eq!(d["branch"], "clone/viability-t6");
    let workdir = w.home.join("workspaces/viability-t6/repo");
    assert_eq!(d["workdir"], workdir.display().to_string());
    // The brief is the first thing the clone's new session reads, in its own checkout.
    let pane = w.pane_shows("agent1", "reported");
    assert!(pane.contains(&format!("up in {}", workdir.display())), "{pane}");
    assert!(pane.contains("[brief] Workspace viability-t6"), "{pane}");

    let done = w.json(&["clone", "wait", "1", "--timeout", "30"]);
    assert_eq!(done["state"], "done", "{done}");
    assert!(done["done"].as_str().unwrap().contains("replied: done: committed"), "{done}");

    let before = git(&src, &["rev-parse", "main"]);
    let h = w.json(&["harvest", "1", "--onto", "main", "--check", "test -f feature.txt && echo check ok"]);
    assert_eq!(h["landed"], true, "{h}");
    let after = git(&src, &["rev-parse", "main"]);
    assert_ne!(before, after);
    assert_eq!(h["new_head"].as_str(), Some(after.as_str()));
    assert_eq!(std::fs::read_to_string(src.join("feature.txt")).unwrap(), "hello from the clone\n");
    assert!(h["check_output"].as_str().unwrap().contains("check ok"), "{h}");
    // No scratch worktree or harvest ref left behind.
    assert_eq!(git(&src, &["worktree", "list"]).lines().count(), 1);
    assert_eq!(git(&src, &["for-each-ref", "refs/netsky"]), "");

    for e in [
        "clone-briefed",
        "clone-done",
        "harvest-fetched",
        "harvest-rebased",
        "harvest-checked",
        "harvest-landed",
    ] {
        assert!(w.has_event(e), "no {e} event");
    }
    assert_eq!(
        w.count("SELECT count(*) AS n FROM harvests WHERE outcome = 'landed' AND agent = 'agent1'"),
        1
    );
    assert_eq!(
        w.count("SELECT count(*) AS n FROM clones WHERE state = 'active' AND workspace = 'viability-t6'"),
        1
    );
    assert_eq!(
        w.count("SELECT count(*) AS n FROM envelopes WHERE kind = 'brief' AND to_addr = 'agent1@t'"),
        1
    );
    assert_eq!(
        w.count(
            "SELECT count(*) AS n FROM envelopes WHERE kind = 'harvest-complete' AND to_addr = 'agent0@t'"
        ),
        1
    );
    w.pane_shows("agent0", "[harvest-complete] agent1 (workspace viability-t6) onto main: landed");
}

#[test]
fn a_failing_or_hanging_check_leaves_main_untouched_and_says_why() {
    let w = World::new(1, "check = \"echo the configured check >&2; exit 4\"");
    let src = w.repo("src");
    w.ok(&["up", "1"]);
    // The clone also writes a check script of its own.
    let brief = w.brief("b.md", "write: feature.txt clone work\nwrite: check.sh exit 0\nfinish-push\n");
    w.ok(&[
        "clone",
        "brief",
        &brief,
        "--workspace",
        "checks",
        "--agent",
        "1",
        "--repo",
        src.to_str().unwrap(),
    ]);
    // Done by pushing its branch, without a word on the bus.
    let done = w.json(&["clone", "wait", "1", "--timeout", "30"]);
    assert!(done["done"].as_str().unwrap().contains("pushed clone/checks"), "{done}");
    let before = git(&src, &["rev-parse", "main"]);

    // A check the clone's commits wrote is not a check.
    let err = w.fails(&["harvest", "1", "--check", "./check.sh"]);
    assert!(err.contains("change the check itself (check.sh)"), "{err}");
    assert_eq!(git(&src, &["rev-parse", "main"]), before);

    let err = w.fails(&["harvest", "1", "--check", "echo the tests are red >&2; exit 3"]);
    assert!(err.contains("failed") && err.contains("main is untouched"), "{err}");
    assert_eq!(git(&src, &["rev-parse", "main"]), before);
    assert!(!src.join("feature.txt").exists());

    let err = w.fails(&["harvest", "1", "--check", "sleep 60", "--check-timeout", "1"]);
    assert!(err.contains("did not finish within 1 s and was killed"), "{err}");
    assert_eq!(git(&src, &["rev-parse", "main"]), before);
    // Without --check, the configured one runs.
    let err = w.fails(&["harvest", "1"]);
    assert!(err.contains("the configured check") && err.contains("main is untouched"), "{err}");
    assert_eq!(git(&src, &["rev-parse", "main"]), before);
    assert_eq!(w.count("SELECT count(*) AS n FROM harvests WHERE outcome = 'refused'"), 4);
    assert_eq!(git(&src, &["worktree", "list"]).lines().count(), 1);
}

#[test]
fn a_branch_that_does_not_rebase_is_aborted_and_main_is_untouched() {
    let w = World::new(1, "");
    let src = w.repo("src");
    w.ok(&["up", "1"]);
    let brief = w.brief("b.md", "write: README the clone's readme\nfinish\n");
    w.ok(&["clone", "brief", &brief, "--workspace", "conflict", "--repo", src.to_str().unwrap()]);
    w.ok(&["clone", "wait", "1", "--timeout", "30"]);
    // Meanwhile main changed the same line.
    std::fs::write(src.join("README"), "main's readme\n").unwrap();
    git(&src, &["commit", "-qam", "main moves on"]);
    let before = git(&src, &["rev-parse", "main"]);
    let err = w.fails(&["harvest", "1"]);
    assert!(err.contains("does not rebase onto main") && err.contains("README"), "{err}");
    assert_eq!(git(&src, &["rev-parse", "main"]), before);
    assert_eq!(std::fs::read_to_string(src.join("README")).unwrap(), "main's readme\n");
    assert_eq!(git(&src, &["status", "--porcelain"]), "");
    assert_eq!(git(&src, &["worktree", "list"]).lines().count(), 1);
    assert!(w.has_event("harvest-refused"));
}

#[test]
fn kill_ends_the_clone_keeps_its_workspace_unless_asked_and_ls_shows_it() {
    let w = World::new(2, "");
    let src = w.repo("src");
    w.ok(&["up", "2"]);
    let brief = w.brief("b.md", "write: a.txt a\n");
    let a = w.json(&["clone", "brief", &brief, "--workspace", "one", "--repo", src.to_str().unwrap()]);
    let b = w.json(&["clone", "brief", &brief, "--workspace", "two", "--repo", src.to_str().unwrap()]);
    assert_eq!((a["agent"].as_str(), b["agent"].as_str()), (Some("agent1"), Some("agent2")));
    let ls = w.json(&["clone", "ls"]);
    let states: Vec<(&str, &str)> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["agent"].as_str().unwrap(), c["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("agent1", "active"), ("agent2", "active")], "{ls}");

    let k = w.json(&["clone", "kill", "1"]);
    assert_eq!(k["state"], "killed");
    assert!(w.home.join("workspaces/one/repo/.git").exists(), "the workspace is kept");
    w.json(&["clone", "kill", "2", "--rm"]);
    assert!(!w.home.join("workspaces/two").exists(), "the workspace is removed");
    let st = w.json(&["clone", "status", "1"]);
    assert_eq!(st["state"], "killed", "{st}");
    // The agent is free again, and comes back in its own folder, not the old workspace.
    let again = w.json(&[
        "clone",
        "brief",
        &brief,
        "--workspace",
        "three",
        "--agent",
        "1",
        "--repo",
        src.to_str().unwrap(),
    ]);
    assert_eq!(again["agent"], "agent1");
    assert!(w.has_event("clone-killed"));
    assert_eq!(w.count("SELECT count(*) AS n FROM clones WHERE state = 'killed'"), 2);
}

#[test]
fn a_restart_with_a_handoff_pastes_the_note_before_anything_else() {
    let w = World::new(1, "");
    w.ok(&["up", "1"]);
    w.ready("agent0");
    let note = w.brief("notes.md", "remember the flaky test in bus/");
    let r = w.json(&["restart", "agent0", "--handoff", &note]);
    assert!(r["handoff"].is_string(), "{r}");
    // Mail that comes in while the new session starts waits behind the handoff.
    w.ok(&["channel", "send", "agent0", "an ordinary message", "--from", "agent1"]);
    let pane = w.pane_shows("agent0", "an ordinary message</channel>");
    let (h, m) =
        (pane.find("[handoff] remember the flaky test").unwrap(), pane.find("an ordinary message").unwrap());
    assert!(h < m, "the handoff came first:\n{pane}");
    assert_eq!(
        pane.matches("fake fake agent0 up").count(),
        1,
        "one new session, nothing else before it:\n{pane}"
    );

    // The whole constellation, each agent told.
    let all = w.brief("all.md", "we move to the new relay today");
    w.ok(&["up", "1", "--restart", "--handoff", &all]);
    for a in ["agent0", "agent1", "agentinfinity"] {
        w.pane_shows(a, "[handoff] we move to the new relay today</channel>");
    }
    assert_eq!(w.count("SELECT count(*) AS n FROM envelopes WHERE kind = 'handoff'"), 4);
}

#[test]
fn agent_type_restarts_the_agent_with_another_runtime_and_it_sticks() {
    let w = World::new(1, "");
    w.ok(&["up", "1"]);
    let out = w.json(&["agent", "1", "--type", "other"]);
    assert_eq!((out["runtime"].as_str(), out["restarted"].as_bool()), (Some("other"), Some(true)), "{out}");
    w.pane_shows("agent1", "fake other agent1 up");
    w.ready("agent1");
    assert_eq!(w.agent("agent1")["runtime"], "other");
    assert_eq!(w.agent("agent0")["runtime"], "fake");
    // Killed, it is revived by the watchdog with the runtime it was given.
    Command::new("tmux").arg("-L").arg(&w.sock).args(["kill-session", "-t", "=agent1"]).output().unwrap();
    wait_for(
        "agent1 revived as other",
        || Some(w.capture("agent1")).filter(|p| p.contains("fake other agent1 up")),
        || w.capture("agent1"),
    );
}

#[test]
fn a_known_first_run_prompt_is_answered_and_an_unknown_one_escalated() {
    let w = World::new(1, "agent_runtimes = { agent0 = \"consent\", agent1 = \"asks\" }");
    w.ok(&["up", "1"]);
    w.pane_shows("agent0", "consent given");
    w.ready("agent0");
    assert!(w.has_event("prompt-answered"));
    wait_for(
        "agent1 hung on its question",
        || (w.agent("agent1")["state"] == "hung").then_some(()),
        || w.agent("agent1").to_string(),
    );
    let a1 = w.agent("agent1");
    assert!(a1["prompt"].as_str().unwrap().contains("frobnicator plugins? (y/n)"), "{a1}");
    assert!(w.has_event("prompt-escalated"));
    assert_eq!(
        w.count("SELECT count(*) AS n FROM escalations WHERE subject LIKE 'agent1 waits on a question%'"),
        1
    );
    // Mail for it waits: pasted with an Enter, it would answer the question.
    w.ok(&["channel", "send", "agent1", "do not answer for me"]);
    // Two heartbeats later (each a delivery round), it is still waiting.
    let ticks = || -> u64 {
        std::fs::read(w.home.join("state/tick.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["ticks"].as_u64())
            .unwrap_or(0)
    };
    let start = ticks();
    wait_for("two more ticks", || (ticks() >= start + 2).then_some(()), || format!("tick {}", ticks()));
    assert!(!w.capture("agent1").contains("do not answer for me"), "{}", w.capture("agent1"));
    assert_eq!(w.agent("agent1")["inbox"], 1, "{}", w.agent("agent1"));
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let w = World::new(1, "");
    let src = w.repo("src");
    let s = src.to_str().unwrap();
    let brief = w.brief("b.md", "write: a.txt a\n");
    // Before `up`: the constellation must run.
    assert!(w.fails(&["clone", "brief", &brief, "--workspace", "x", "--repo", s]).contains("netsky up"));
    w.ok(&["up", "1"]);
    for (ws, why) in [("../x", "\"..\""), ("a/b", "slashes"), ("a b/c", "slashes"), (".hidden", "expected")] {
        let err = w.fails(&["clone", "brief", &brief, "--workspace", ws, "--repo", s]);
        assert!(err.contains(why), "{ws}: {err}");
    }
    let missing = w.dir.path().join("nope.md").display().to_string();
    assert!(w.fails(&["clone", "brief", &missing, "--workspace", "x", "--repo", s]).contains("nope.md"));
    let huge = w.brief("huge.md", &"x".repeat(49 * 1024));
    assert!(w.fails(&["clone", "brief", &huge, "--workspace", "x", "--repo", s]).contains("limit"));
    let not_git = w.dir.path().join("plain");
    std::fs::create_dir_all(&not_git).unwrap();
    let err = w.fails(&["clone", "brief", &brief, "--workspace", "x", "--repo", not_git.to_str().unwrap()]);
    assert!(err.contains("is not a git repository"), "{err}");
    assert!(
        w.fails(&["clone", "brief", &brief, "--workspace", "x", "--agent", "5", "--repo", s])
            .contains("netsky up 5")
    );
    // An earlier clone's branch would make the new clone look done at once.
    git(&src, &["branch", "clone/old"]);
    let err = w.fails(&["clone", "brief", &brief, "--workspace", "old", "--repo", s]);
    assert!(err.contains("already has a branch clone/old"), "{err}");
    w.ok(&["clone", "brief", &brief, "--workspace", "first", "--agent", "1", "--repo", s]);
    let err = w.fails(&["clone", "brief", &brief, "--workspace", "second", "--agent", "1", "--repo", s]);
    assert!(err.contains("in use by the clone of workspace first"), "{err}");
    // No free clone agent left either.
    assert!(w.fails(&["clone", "brief", &brief, "--workspace", "third", "--repo", s]).contains("in use"));
    let err = w.fails(&["clone", "brief", &brief, "--workspace", "first", "--repo", s]);
    assert!(err.contains("in use") || err.contains("exists already"), "{err}");
    // Runtimes: an unknown name, and a program that is not there.
    assert!(w.fails(&["agent", "1", "--type", "gpt9"]).contains("no runtime named \"gpt9\""));
    assert!(w.fails(&["agent", "1", "--type", "ghost"]).contains("is not found"));
    // Handoffs: missing note.
    assert!(w.fails(&["restart", "agent0", "--handoff", &missing]).contains("nope.md"));
    // Nothing half-made was left behind.
    let mut left: Vec<String> = std::fs::read_dir(w.home.join("workspaces"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["first"]);
}

#[test]
fn agentinfinity_is_quiet_by_design_only_while_its_readiness_holds() {
    let w = World::new(0, "hang_after_s = 1");
    w.ok(&["up", "0"]);
    w.ready("agentinfinity");
    // agent0's quiet pane is a hang; agentinfinity's, ready and fresh, is not.
    wait_for(
        "agent0 hung",
        || (w.agent("agent0")["hang_suspected"] == true).then_some(()),
        || w.agent("agent0").to_string(),
    );
    let inf = w.agent("agentinfinity");
    assert_eq!(
        (inf["hang_suspected"].as_bool(), inf["state"].as_str()),
        (Some(false), Some("ready")),
        "{inf}"
    );
    // A readiness record of another session is not trusted: the quiet pane is a hang again.
    let rec = w.home.join("state/agents/agentinfinity/readiness.json");
    let mut r: Value = serde_json::from_str(&std::fs::read_to_string(&rec).unwrap()).unwrap();
    r["session"] = "$999/1".into();
    std::fs::write(&rec, r.to_string()).unwrap();
    wait_for(
        "agentinfinity hung",
        || (w.agent("agentinfinity")["hang_suspected"] == true).then_some(()),
        || w.agent("agentinfinity").to_string(),
    );
}
