//! End-to-end tests of the constellation on a real tmux server.
//!
//! Each test owns its world: a temporary home, a tmux server on its own
//! socket (killed when the test ends, pass or fail), a stand-in runtime
//! (`cat`, `sh -c ...`) instead of an AI agent, and a 1-second tick. Tests
//! wait on conditions with deadlines and print what they saw on timeout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::tmux::{TmuxHome, wait_until};

/// Generous: the machine running the suite may be busy with other builds.
const DEADLINE: Duration = Duration::from_secs(20);

struct World {
    t: TmuxHome,
    children: Vec<Child>,
}

impl std::ops::Deref for World {
    type Target = TmuxHome;
    fn deref(&self) -> &TmuxHome {
        &self.t
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut TmuxHome {
        &mut self.t
    }
}

impl World {
    /// A fresh home whose constellation runs `runtime` on a private tmux socket, ticking every second.
    fn new(runtime: &[&str], extra: &str) -> World {
        World::with_tick(runtime, extra, 1)
    }

    /// As [`World::new`] with `tick_interval_s = tick`.
    fn with_tick(runtime: &[&str], extra: &str, tick: u64) -> World {
        let w = World { t: TmuxHome::new("nsky-test"), children: Vec::new() };
        let config = format!(
            "[node]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nrelay = \"disabled\"\ntick_interval_s = {tick}\n\n\
             [constellation]\nclones = 1\nruntime = {}\ntmux_socket = \"{}\"\n{extra}\n",
            serde_json::to_string(runtime).unwrap(),
            w.sock
        );
        std::fs::write(w.home.join("config.toml"), config).unwrap();
        w
    }

    fn sessions(&self) -> Vec<String> {
        let o = self.tmux(&["list-sessions", "-F", "#{session_name}"]);
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
        v.sort();
        v
    }

    fn state(&self, rel: &str) -> PathBuf {
        self.home.join("state").join(rel)
    }

    fn ticks(&self) -> u64 {
        std::fs::read(self.state("tick.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["ticks"].as_u64())
            .unwrap_or(0)
    }

    /// Waits until `n` more ticks have completed.
    fn wait_ticks(&self, n: u64) {
        let start = self.ticks();
        wait_for(
            &format!("{n} ticks after tick {start}"),
            || (self.ticks() >= start + n).then_some(()),
            || format!("tick.json says {}", self.ticks()),
        );
    }

    fn escalations(&self) -> Vec<Value> {
        let Ok(rd) = std::fs::read_dir(self.state("escalations")) else { return vec![] };
        rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// Runs the real daemon outside tmux (as launchd or systemd would), so `down` cannot stop it.
    fn start_daemon(&mut self) {
        let child = self.cmd(&["node", "run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        self.children.push(child);
        let st = self.home.join("state/node.json");
        wait_for(
            "the daemon to be running",
            || read(&st).contains("\"running\": true").then_some(()),
            || read(&st),
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it gives a value or the deadline passes; then panics with `seen()`.
fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>, seen: impl Fn() -> String) -> T {
    wait_until(what, DEADLINE, f, seen)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn up_starts_each_agent_with_its_environment_and_down_stops_everything() {
    let w = World::new(
        &[
            "sh",
            "-c",
            "env | grep -E '^(AGENT_N|NETSKY_HOME|NETSKY_PROMPT_FILE)=' | sort > \"$NETSKY_HOME/env-$AGENT_N\"; exec cat",
        ],
        "",
    );
    let up = w.json(&["up", "2"]);
    assert_eq!(up["heartbeat"], "ticker", "{up}");
    assert_eq!(up["heartbeat_started"], true, "{up}");
    let want = ["agent0", "agent1", "agent2", "agentinfinity", "netsky-ticker"];
    wait_for("every session", || (w.sessions() == want).then_some(()), || format!("{:?}", w.sessions()));
    let home = w.home.display().to_string();
    for (agent, n) in [("agent0", "0"), ("agent1", "1"), ("agent2", "2"), ("agentinfinity", "infinity")] {
        let env_file = w.home.join(format!("env-{n}"));
        let env = wait_for(
            &format!("{agent}'s environment"),
            || Some(read(&env_file)).filter(|s| s.lines().count() == 3),
            || read(&env_file),
        );
        let prompt = format!("{home}/state/prompts/{agent}.md");
        assert_eq!(env, format!("AGENT_N={n}\nNETSKY_HOME={home}\nNETSKY_PROMPT_FILE={prompt}\n"));
        assert!(read(Path::new(&prompt)).contains(&format!("- you: `{agent}@t`")), "{agent}'s prompt");
    }
    let st = w.status();
    for a in st["agents"].as_array().unwrap() {
        assert_eq!(a["session_alive"], true, "{st}");
        assert!(a["pid"].as_u64().is_some(), "{st}");
    }
    // A second `up` starts nothing new.
    let again = w.json(&["up", "2"]);
    assert_eq!(again["started"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["heartbeat_started"], false, "{again}");

    let down = w.json(&["down"]);
    assert_eq!(down["stopped"].as_array().unwrap().len(), 4, "{down}");
    assert_eq!(down["ticker_stopped"], true, "{down}");
    assert!(w.sessions().is_empty(), "{:?}", w.sessions());
    assert!(w.state("constellation-down").exists());
    // The heartbeat took tmux's SIGHUP as a request to stop after its tick.
    let log = || {
        std::fs::read_dir(w.home.join("logs")).unwrap().map(|e| read(&e.unwrap().path())).collect::<String>()
    };
    wait_for("ticker-stopped", || log().contains("\"event\":\"ticker-stopped\"").then_some(()), log);
    let st = w.status();
    assert_eq!(st["down"], true, "{st}");
    assert!(st["agents"].as_array().unwrap().iter().all(|a| a["session_alive"] == false), "{st}");
}

#[test]
fn a_message_sent_to_an_agent_appears_in_its_pane_and_is_then_delivered() {
    let w = World::new(&["cat"], "");
    // Five clones exist on this node, but only agent1 is started.
    let cfg = w.home.join("config.toml");
    std::fs::write(&cfg, read(&cfg).replace("clones = 1", "clones = 5")).unwrap();
    w.ok(&["up", "1"]);
    wait_for(
        "agent1",
        || w.sessions().contains(&"agent1".to_string()).then_some(()),
        || format!("{:?}", w.sessions()),
    );
    let id = w.ok(&["channel", "send", "agent1", "rebase onto main", "--from", "agent0"]).trim().to_string();
    let pane = wait_for(
        "the message in agent1's pane",
        || Some(w.capture("agent1")).filter(|p| p.contains("rebase onto main</channel>")),
        || w.capture("agent1"),
    );
    assert!(pane.contains("<channel source=\"agent\" from=\"agent0@t\" ts=\"20"), "{pane}");
    let delivered = w.home.join(format!("channels/agent/agent1/delivered/{id}.json"));
    wait_for(
        "the envelope in delivered/",
        || delivered.exists().then_some(()),
        || format!("{:?}", w.json(&["channel", "ls", "agent1"])),
    );
    let ls = w.json(&["channel", "ls", "agent1"]);
    assert_eq!(
        (ls["inbox"].as_u64(), ls["claimed"].as_u64(), ls["delivered"].as_u64()),
        (Some(0), Some(0), Some(1)),
        "{ls}"
    );
    // Pasted once: cat echoes the line as typed and prints it back, never a third time.
    w.wait_ticks(2);
    assert!(
        w.capture("agent1").matches("rebase onto main</channel>").count() <= 2,
        "{}",
        w.capture("agent1")
    );

    // An agent of this node without a pane keeps its mail in the inbox, untouched.
    w.ok(&["channel", "send", "agent5", "nobody home"]);
    w.wait_ticks(2);
    let ls = w.json(&["channel", "ls", "agent5"]);
    assert_eq!((ls["inbox"].as_u64(), ls["delivered"].as_u64()), (Some(1), Some(0)), "{ls}");
}

#[test]
fn an_envelope_left_claimed_by_a_crash_is_pasted_once_the_agent_runs() {
    let w = World::new(&["cat"], "");
    let id = w.ok(&["channel", "send", "agent1", "left behind"]).trim().to_string();
    // As if a delivery round died between its claim and its paste.
    let mb = w.home.join("channels/agent/agent1");
    std::fs::rename(mb.join(format!("inbox/{id}.json")), mb.join(format!("claimed/{id}.json"))).unwrap();
    w.ok(&["up", "1"]);
    wait_for(
        "the adopted message in agent1's pane",
        || Some(w.capture("agent1")).filter(|p| p.contains("left behind</channel>")),
        || w.capture("agent1"),
    );
    let delivered = mb.join(format!("delivered/{id}.json"));
    wait_for(
        "delivered",
        || delivered.exists().then_some(()),
        || format!("{:?}", w.json(&["channel", "ls", "agent1"])),
    );
    assert!(!mb.join(format!("claimed/{id}.json")).exists());
}

#[test]
fn mail_arriving_between_ticks_is_pasted_at_once() {
    // One tick at start, the next a minute later: only the inbox watcher can deliver in between.
    let w = World::with_tick(&["cat"], "", 60);
    w.ok(&["up", "0"]);
    wait_for("the first tick", || (w.ticks() >= 1).then_some(()), || format!("{:?}", w.sessions()));
    let start = Instant::now();
    w.ok(&["channel", "send", "agentinfinity", "between ticks"]);
    wait_for(
        "the message in agentinfinity's pane",
        || Some(w.capture("agentinfinity")).filter(|p| p.contains("between ticks</channel>")),
        || w.capture("agentinfinity"),
    );
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    assert_eq!(w.ticks(), 1, "delivered by a tick, not by the watcher");
}

#[test]
fn a_stream_of_landings_shares_delivery_rounds() {
    // Ticks a minute apart: every pane query in the burst below is a wake's round.
    let mut w = World::with_tick(&["cat"], "", 60);
    // A tmux that notes each call on its way to the real one.
    let bin = w.home.join("counting-bin");
    let log = w.home.join("tmux-calls.log");
    std::fs::create_dir_all(&bin).unwrap();
    let real = Command::new("sh").args(["-c", "command -v tmux"]).output().unwrap();
    let real = String::from_utf8(real.stdout).unwrap().trim().to_string();
    assert!(!real.is_empty(), "tmux is not installed");
    let wrapper = bin.join("tmux");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\necho \"$*\" >> '{}'\nexec '{real}' \"$@\"\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut path = vec![bin.clone()];
    path.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    w.path_env = Some(std::env::join_paths(path).unwrap());
    let pane_queries = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" list-panes "))
            .count()
    };
    w.start_daemon();
    wait_for("the first tick", || (w.ticks() >= 1).then_some(()), || format!("{:?}", w.ticks()));
    // agent1's mailbox exists (and is watched) before the stream starts.
    w.ok(&["channel", "ls", "agent1"]);
    std::thread::sleep(Duration::from_millis(400));
    let before = pane_queries();

    // Envelopes land 5 ms apart, as from a busy sender: each is a wake.
    let inbox = w.home.join("channels/agent/agent1/inbox");
    let sends = 60;
    let start = Instant::now();
    for i in 0..sends {
        let tmp = inbox.join(format!(".landing{i}.tmp"));
        std::fs::write(&tmp, b"{}").unwrap();
        std::fs::rename(&tmp, inbox.join(format!("01JDQ7000000000000000000{i:02}.json"))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    // The last landing's round comes within moments.
    std::thread::sleep(Duration::from_millis(300));
    let window = start.elapsed();
    let rounds = pane_queries() - before;
    // Rounds start at least 50 ms apart, however fast the landings come.
    let most = window.as_millis() as usize / 50 + 2;
    assert!(rounds >= 1, "no delivery round ran: {:?}", std::fs::read_to_string(&log));
    assert!(rounds <= most, "{rounds} pane queries for {sends} landings in {window:?} (at most {most})");
    // agent1 has no pane: all of it waits in the inbox, untouched.
    let ls = w.json(&["channel", "ls", "agent1"]);
    assert_eq!(ls["inbox"].as_u64(), Some(sends as u64), "{ls}");
}

#[test]
fn ticks_go_on_under_a_steady_stream_of_landings() {
    let mut w = World::new(&["cat"], "");
    w.start_daemon();
    wait_for("the first tick", || (w.ticks() >= 1).then_some(()), || format!("{:?}", w.ticks()));
    w.ok(&["channel", "ls", "agent1"]);
    let inbox = w.home.join("channels/agent/agent1/inbox");
    let first = w.ticks();
    // A wake every 2 ms for 3.5 s: one is always waiting when a round ends.
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(3500) {
        let tmp = inbox.join(format!(".landing{i}.tmp"));
        std::fs::write(&tmp, b"{}").unwrap();
        std::fs::rename(&tmp, inbox.join(format!("01JDQ70000000000000000{i:04}.json"))).unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    // Ticks every second: the watchdog kept running through the stream.
    assert!(w.ticks() >= first + 2, "ticks {first} -> {} during the stream", w.ticks());
}

#[test]
fn a_killed_agent_is_restarted_and_after_down_nothing_is_revived() {
    let mut w = World::new(&["cat"], "");
    w.start_daemon();
    let up = w.json(&["up", "1"]);
    assert_eq!(up["heartbeat"], "daemon", "{up}");
    assert_eq!(up["heartbeat_started"], false, "a running daemon keeps the heartbeat: {up}");
    let old = wait_for("agent1's pid", || w.agent("agent1")["pid"].as_u64(), || w.status().to_string());
    assert!(w.tmux(&["kill-session", "-t", "=agent1"]).status.success());
    let start = Instant::now();
    let st = wait_for(
        "agent1 restarted",
        || Some(w.agent("agent1")).filter(|a| a["session_alive"] == true && a["pid"].as_u64() != Some(old)),
        || w.status().to_string(),
    );
    // Within two ticks of 1 s, plus the slack a loaded machine needs.
    assert!(start.elapsed() < Duration::from_secs(8), "took {:?}", start.elapsed());
    assert_eq!(st["restarts"], 1, "{st}");
    // The row is written once the start returns, just after the new session shows.
    wait_for(
        "the restart's row in meta.db",
        || {
            Some(w.ok(&["query", "SELECT agent, reason, ok FROM restarts"]))
                .filter(|r| r.contains("agent1") && r.contains("dead"))
        },
        || w.ok(&["query", "SELECT agent, reason, ok FROM restarts"]),
    );

    // Bad input: out of range, and not an agent at all.
    let o = w.run(&["restart", "agent7"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("agent7 is not in this constellation"), "{o:?}");
    assert_eq!(w.run(&["restart", "agent1000"]).status.code(), Some(2));

    // By hand: a new pid.
    let before = w.agent("agent1")["pid"].as_u64();
    w.ok(&["restart", "agent1"]);
    wait_for(
        "agent1 restarted by hand",
        || (w.agent("agent1")["pid"].as_u64().is_some_and(|p| Some(p) != before)).then_some(()),
        || w.status().to_string(),
    );

    w.ok(&["down"]);
    w.wait_ticks(3);
    assert!(w.sessions().is_empty(), "revived after down: {:?}", w.sessions());
}

#[test]
fn a_runtime_that_does_not_exist_cools_down_and_escalates_instead_of_spinning() {
    // This node has no mesh, so it is its own root: the escalation pages the owner's file leg.
    let pages = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let w = World::new(
        &["/nonexistent/netsky-test-runtime"],
        &format!(
            "crash_loop_restarts = 2\ncrash_loop_window_s = 60\ncrash_cooldown_s = 600\n\
             [[owner.legs]]\nkind = \"command\"\nargv = [\"false\"]\n\
             [[owner.legs]]\nkind = \"file\"\npath = \"{}\"\n",
            pages.display()
        ),
    );
    let o = w.run(&["up", "0"]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"), "{o:?}");
    let esc = wait_for(
        "a crash-loop escalation for agent0",
        || w.escalations().into_iter().find(|e| e["agent"] == "agent0" && e["source"] == "watchdog"),
        || format!("{:?} / {}", w.escalations(), w.status()),
    );
    assert!(esc["subject"].as_str().unwrap().contains("crash-looping"), "{esc}");
    let a = w.agent("agent0");
    assert_eq!(a["restarts"], 2, "{a}");
    assert!(a["cooldown_until"].is_string(), "{a}");
    // Cooling down: no more restarts, no more escalations.
    w.wait_ticks(3);
    let later = w.agent("agent0");
    assert_eq!(later["restarts"], 2, "{later}");
    let n = w.escalations().iter().filter(|e| e["agent"] == "agent0").count();
    assert_eq!(n, 1, "{:?}", w.escalations());
    assert_eq!(w.count("SELECT count(*) AS n FROM escalations WHERE agent = 'agent0'"), 1);
    // Paged once, through the legs in order: the failing command first, then the file.
    let paged: Vec<Value> = std::fs::read_to_string(&pages)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|p| p["id"] == esc["id"])
        .collect();
    assert_eq!(paged.len(), 1, "{paged:?}");
    assert_eq!(paged[0]["kind"], "incident", "{paged:?}");
    let trail = std::fs::read_to_string(w.home.join("state/owner-pages.jsonl")).unwrap();
    let legs: Vec<(String, bool)> = trail
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|t| t["page"] == esc["id"])
        .map(|t| (t["leg"].as_str().unwrap().to_string(), t["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(legs, [("command".to_string(), false), ("file".to_string(), true)], "{trail}");
}

#[test]
fn a_quiet_pane_is_marked_hung_once_and_cleared_when_output_moves() {
    let w = World::new(&["cat"], "hang_after_s = 2\n");
    w.ok(&["up", "0"]);
    let marker = w.state("agents/agent0/hang-suspected");
    wait_for("the hang marker", || marker.exists().then_some(()), || w.status().to_string());
    assert_eq!(w.agent("agent0")["hang_suspected"], true);
    w.wait_ticks(2);
    let escalations = |w: &World| {
        w.escalations()
            .into_iter()
            .filter(|e| e["agent"] == "agent0" && e["subject"].as_str().unwrap_or("").contains("hung"))
            .count()
    };
    assert_eq!(escalations(&w), 1, "{:?}", w.escalations());
    let marker_rows = |state: &str| {
        w.count(&format!(
            "SELECT count(*) AS n FROM agent_markers WHERE agent = 'agent0' AND marker = 'hang-suspected' AND state = '{state}'"
        ))
    };
    assert_eq!(marker_rows("set"), 1);
    assert_eq!(marker_rows("cleared"), 0);
    w.ok(&["channel", "send", "agent0", "wake up"]);
    // The file goes when output moves; it may come back hang_after_s later, so the row is the witness.
    wait_for(
        "the hang marker cleared",
        || (marker_rows("cleared") >= 1).then_some(()),
        || format!("{} / {}", w.ok(&["query", "SELECT * FROM agent_markers"]), w.capture("agent0")),
    );
    assert!(w.capture("agent0").contains("wake up</channel>"), "{}", w.capture("agent0"));
}

#[test]
fn a_missing_or_hung_tmux_is_a_clear_bounded_error() {
    // Missing: a PATH with no tmux on it.
    let mut w = World::new(&["cat"], "");
    let empty = w.home.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    w.path_env = Some(empty.clone().into_os_string());
    let o = w.run(&["up", "1"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("tmux is not installed"), "{o:?}");

    // Hung: a tmux that never answers.
    let hung = w.home.join("hung-bin");
    std::fs::create_dir_all(&hung).unwrap();
    let fake = hung.join("tmux");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 60\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path =
        std::env::join_paths([hung.clone(), PathBuf::from("/usr/bin"), PathBuf::from("/bin")]).unwrap();
    w.path_env = Some(path);
    let start = Instant::now();
    let o = w.run(&["up", "1"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("did not finish"), "{o:?}");
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
    // Nothing was marked as started.
    assert!(!w.state("constellation.json").exists());
}

#[test]
fn a_prompt_addendum_that_is_not_utf8_is_refused_before_anything_starts() {
    let w = World::new(&["cat"], "");
    let out = w.ok(&["prompts", "render", "agent1"]);
    assert!(out.contains("## Your role: agent1, a clone on node t"), "{out}");
    std::fs::create_dir_all(w.home.join("prompts")).unwrap();
    std::fs::write(w.home.join("prompts/addendum.md"), b"ok \xff\xfe not utf-8").unwrap();
    for args in [&["prompts", "render", "agent1"][..], &["up", "1"][..]] {
        let o = w.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("addendum.md") && err.contains("not UTF-8"), "{args:?}: {err}");
    }
    assert!(w.sessions().is_empty());
    std::fs::write(w.home.join("prompts/addendum.md"), "Use the staging database.").unwrap();
    let out = w.ok(&["prompts", "render", "agentinfinity"]);
    assert!(out.ends_with("## Operator addendum\n\nUse the staging database.\n"), "{out}");
    assert_eq!(read(&w.state("prompts/agentinfinity.md")), out);
}

#[test]
fn health_reports_the_agents_depths_disk_load_and_tick_and_writes_its_file() {
    let w = World::new(&["cat"], "");
    w.ok(&["up", "1"]);
    w.wait_ticks(1);
    let h = wait_for(
        "every agent up in the snapshot",
        || Some(w.json(&["health"])).filter(|h| h["agents_total"] == 3 && h["agents_up"] == 3),
        || w.json(&["health"]).to_string(),
    );
    assert_eq!((h["node"].as_str(), h["outbox_depth"].as_u64()), (Some("t"), Some(0)), "{h}");
    assert!(h["disk_free_bytes"].as_u64().is_some_and(|b| b > 0), "{h}");
    assert!(h["load_1m"].as_f64().is_some(), "{h}");
    assert!(h["tick_age_s"].as_f64().is_some_and(|t| t < 60.0), "{h}");
    assert!(h["uptime_s"].as_u64().is_some(), "the daemon `up` started runs: {h}");
    let names: Vec<&str> =
        h["agents"].as_array().unwrap().iter().map(|a| a["agent"].as_str().unwrap()).collect();
    assert_eq!(names, ["agent0", "agent1", "agentinfinity"], "{h}");
    let file: Value = serde_json::from_slice(&std::fs::read(w.state("health.json")).unwrap()).unwrap();
    assert_eq!(file["node"], "t");
    // With the constellation down, the snapshot says so.
    w.ok(&["down"]);
    let h = w.json(&["health"]);
    assert_eq!(h["agents_up"], 0, "{h}");
}
