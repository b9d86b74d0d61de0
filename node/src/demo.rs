//! `netsky demo`: the whole system at work in temporary homes, narrated as
//! the commands a user would type, then cleaned up.
//!
//! Three nodes on loopback, relay-less: `studio` creates a mesh, `laptop`
//! and `desk` join it by ticket, each runs its daemon, and messages cross
//! the mesh every way; a message for an agent that does not exist is
//! refused, receipts come back, an escalation on a member pages the owner
//! through the root (whose owner leg is a file here), the owner's word
//! reaches an agent on another machine, an agent in tmux receives a message
//! in its pane, a machine that dies is noticed by
//! the root and paged once, `mesh status` shows the result on any node, and
//! `doctor` checks a node.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::output::Ctx;
use crate::proc::{Daemon, run_bounded};

/// Arguments of `netsky demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the temporary homes afterwards (their path is printed).
    #[arg(long)]
    keep: bool,
}

struct Narrator {
    exe: PathBuf,
    base: PathBuf,
    /// The demo's own tmux server (`tmux -L`), killed at the end.
    tmux_socket: String,
}

/// Kills the demo's tmux server when the demo ends, however it ends.
struct TmuxServer(String);

impl Drop for TmuxServer {
    fn drop(&mut self) {
        crate::constellation::tmux::Tmux::new(&self.0).kill_server();
    }
}

/// Daemons started by the demo, stopped in order when dropped.
type Daemons = Vec<Daemon>;

impl Narrator {
    fn home(&self, node: &str) -> PathBuf {
        self.base.join(node)
    }

    /// Runs `netsky --home <node> args...`, echoing the command and its output.
    fn run(&self, node: &str, args: &[&str]) -> Result<String> {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("{a:?}")
                } else if a.len() > 40 {
                    format!("{}...", &a[..40])
                } else {
                    a.to_string()
                }
            })
            .collect();
        println!("[{node}] $ netsky {}", shown.join(" "));
        let o = self.quiet(node, args)?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        for l in out.lines() {
            println!("    {l}");
        }
        for l in String::from_utf8_lossy(&o.stderr).lines() {
            println!("    (stderr) {l}");
        }
        if !o.status.success() {
            bail!("demo step `netsky {}` on {node} failed ({})", shown.join(" "), o.status);
        }
        Ok(out)
    }

    fn quiet(&self, node: &str, args: &[&str]) -> Result<std::process::Output> {
        run_bounded(
            Command::new(&self.exe).arg("--home").arg(self.home(node)).args(args),
            Duration::from_secs(60),
        )
    }

    /// Starts `node`'s daemon and waits for its ready line.
    fn start(&self, node: &str, daemons: &mut Daemons) -> Result<()> {
        println!("[{node}] $ netsky node run &");
        let home = self.home(node);
        let (d, line) = Daemon::start(&self.exe, &home, node, &home.join("daemon.log"))?;
        daemons.push(d);
        println!("    {line}");
        Ok(())
    }

    /// Waits until `node` holds a charter listing `n` members, each with an address.
    fn converge(&self, node: &str, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = self.quiet(node, &["--json", "mesh", "charter"])?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let members = v["charter"]["members"].as_array().cloned().unwrap_or_default();
            if members.len() == n
                && members.iter().all(|m| m["addrs"].as_array().is_some_and(|a| !a.is_empty()))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{node} did not learn every member's address within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `netsky demo`.
pub fn run(_ctx: &Ctx, a: DemoArgs) -> Result<ExitCode> {
    let tmp =
        tempfile::Builder::new().prefix("netsky-demo-").tempdir().context("cannot make temporary homes")?;
    let n = Narrator {
        exe: std::env::current_exe()?,
        base: tmp.path().to_path_buf(),
        tmux_socket: format!("netsky-demo-{}", std::process::id()),
    };
    let _tmux = TmuxServer(n.tmux_socket.clone());
    let mut daemons = Daemons::new();
    let result = story(&n, &mut daemons);
    println!("\n# stopping the daemons (SIGTERM)");
    drop(daemons);
    result?;
    if a.keep {
        let kept = tmp.keep();
        println!("kept the demo homes in {}", kept.display());
    } else {
        println!("demo done; removed {}", tmp.path().display());
    }
    Ok(ExitCode::SUCCESS)
}

fn story(n: &Narrator, daemons: &mut Daemons) -> Result<()> {
    println!("# three machines, simulated by three homes on loopback: {}", n.base.display());
    for node in ["studio", "laptop", "desk"] {
        n.run(node, &["init", "--name", node, "--listen", "127.0.0.1:0", "--relay", "disabled"])?;
    }
    // The root's owner leg: a file, so the demo can show each page.
    let pages = n.base.join("owner-pages.jsonl");
    let config = n.home("studio").join("config.toml");
    crate::config::Config::add_file_leg(&config, &pages)?;
    // Beacons every second, so a silent machine is noticed within the demo (30 s by default).
    for node in ["studio", "laptop", "desk"] {
        crate::config::Config::edit(&n.home(node).join("config.toml"), |c| c.node.beacon_interval_s = 1)?;
    }
    // laptop's agents: one stand-in (`cat`) on the demo's own tmux server, a heartbeat every second.
    crate::config::Config::edit(&n.home("laptop").join("config.toml"), |c| {
        c.node.tick_interval_s = 1;
        c.constellation.clones = 1;
        c.constellation.runtime = crate::runtimes::RuntimeChoice::Argv(vec!["cat".into()]);
        c.constellation.tmux_socket = n.tmux_socket.clone();
    })?;
    println!("\n# studio creates the mesh and becomes its root (its owner leg: a file, {})", pages.display());
    n.run("studio", &["mesh", "init", "--mesh", "demo"])?;
    n.start("studio", daemons)?;
    for node in ["laptop", "desk"] {
        println!("\n# {node} joins with a one-time ticket from the root");
        let ticket = n.run("studio", &["mesh", "invite", node, "--ttl", "10m"])?.trim().to_string();
        n.run(node, &["mesh", "join", &ticket])?;
        n.start(node, daemons)?;
    }
    for node in ["studio", "laptop", "desk"] {
        n.converge(node, 3)?;
    }
    println!("\n# agents message agents on other machines; --wait returns on the remote's ack");
    let id = n.run(
        "laptop",
        &["channel", "send", "agent3@studio", "tests are green on laptop", "--from", "agent0", "--wait"],
    )?;
    n.run(
        "desk",
        &[
            "channel",
            "send",
            "agent1@laptop",
            "desk needs a review of restart.rs",
            "--from",
            "agent2",
            "--wait",
        ],
    )?;
    n.run(
        "studio",
        &["channel", "send", "agent2@desk", "rebase onto main, then report", "--from", "agent0", "--wait"],
    )?;
    println!("\n# each agent drains its mailbox (normally its pane gets the message)");
    n.run("studio", &["channel", "drain", "agent3"])?;
    n.run("laptop", &["channel", "drain", "agent1"])?;
    n.run("desk", &["channel", "drain", "agent2"])?;
    println!("\n# an agent that does not exist: the remote refuses, and the sender is told why");
    let refused = n.quiet("laptop", &["channel", "send", "agent999@desk", "anyone there?", "--wait"])?;
    println!("[laptop] $ netsky channel send agent999@desk \"anyone there?\" --wait");
    println!("    (stderr) {}", String::from_utf8_lossy(&refused.stderr).trim());
    if refused.status.success() {
        bail!("the remote should have refused an envelope for agent999");
    }
    println!("\n# the sender sees its first envelope delivered (the receipt came back)");
    let id = id.trim();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = n.quiet("laptop", &["--json", "channel", "status", id])?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v["state"] == "delivered" || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    n.run("laptop", &["channel", "status", id])?;
    println!("\n# a failure on laptop pages the owner through the root, and only the root");
    let incident = n.run("laptop", &["escalate", "disk full on laptop", "/ is at 100%"])?;
    let incident = incident.trim();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&pages).unwrap_or_default().contains(incident) {
        if Instant::now() > deadline {
            bail!("the root did not page the owner about {incident}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("[owner] the page that reached the root's file leg:");
    for line in std::fs::read_to_string(&pages).unwrap_or_default().lines() {
        println!("    {line}");
    }
    n.run("studio", &["escalate", "ls"])?;
    n.run("desk", &["escalate", "ack", incident])?;
    println!("\n# the owner answers through the root, to an agent on another machine");
    n.run("studio", &["owner", "say", "agent0@laptop: clean up /var/tmp, then report"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = n.quiet("laptop", &["--json", "channel", "ls", "agent0"])?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v.to_string().contains("\"inbox\":1") || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    n.run("laptop", &["channel", "drain", "agent0"])?;
    agents_at_work(n)?;
    println!("\n# desk dies without a word (kill -9): the root notices the silence and pages once");
    if let Some(i) = daemons.iter().position(|d| d.name() == "desk") {
        daemons.remove(i).kill9();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&pages).unwrap_or_default().contains("node desk is silent") {
        if Instant::now() > deadline {
            bail!("the root did not notice desk's silence within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("[owner] the page:");
    for line in
        std::fs::read_to_string(&pages).unwrap_or_default().lines().filter(|l| l.contains("desk is silent"))
    {
        println!("    {line}");
    }
    println!(
        "\n# the mesh as the root sees it: every node holds the same view, from the root's answers to its beacons"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = n.quiet("laptop", &["--json", "mesh", "status"])?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let desk = v["members"].as_array().and_then(|m| m.iter().find(|m| m["name"] == "desk").cloned());
        if desk.is_some_and(|d| d["beacon"] == "suspect") || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    n.run("laptop", &["mesh", "status"])?;
    println!("\n# doctor on laptop: every check, and the fix for each that is not ok");
    let o = n.quiet("laptop", &["doctor"])?;
    println!("[laptop] $ netsky doctor");
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        println!("    {l}");
    }
    println!("\n# the evidence on the root: meta.db (logs/events-*.jsonl hold the same)");
    n.run("studio", &["query", "select event, count(*) as n from events group by event order by event"])?;
    Ok(())
}

/// laptop starts its constellation and an agent there receives a message from
/// studio in its pane. Needs tmux, as every node's agents do; without it, said and skipped.
fn agents_at_work(n: &Narrator) -> Result<()> {
    println!(
        "\n# agents at work: laptop starts its constellation in tmux (the agent here is a stand-in, `cat`)"
    );
    if run_bounded(Command::new("tmux").arg("-V"), Duration::from_secs(5)).is_err() {
        println!("    (skipped: tmux is not installed; netsky's agents run in it)");
        return Ok(());
    }
    n.run("laptop", &["up", "1"])?;
    n.run(
        "studio",
        &[
            "channel",
            "send",
            "agent1@laptop",
            "please review the launchd plist",
            "--from",
            "agent0",
            "--wait",
        ],
    )?;
    let tmux = crate::constellation::tmux::Tmux::new(&n.tmux_socket);
    let capture = || {
        tmux.capture("agent1")
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let pane = loop {
        let pane = capture();
        if pane.contains("please review the launchd plist") {
            break pane;
        }
        if Instant::now() > deadline {
            bail!("the message did not reach agent1's pane within 30 s; the pane shows:\n{pane}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("[laptop] agent1's pane in tmux (the pasted line, then `cat` echoing it):");
    for l in pane.lines().filter(|l| !l.trim().is_empty()) {
        println!("    | {l}");
    }
    n.run("laptop", &["status"])?;
    n.run("laptop", &["down"])?;
    Ok(())
}
