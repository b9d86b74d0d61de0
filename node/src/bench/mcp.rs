//! `netsky bench mcp`: how long an envelope takes to reach an MCP client
//! through `netsky mcp serve`, measured from `netsky channel send`
//! returning (the envelope durable in the inbox, or in the outbox for a
//! remote send) to the client reading the `notifications/claude/channel`
//! line on the server's stdout.
//!
//! Two daemons on loopback (the receiving one, `laptop`, runs the server for
//! agent1; it has no panes, so nothing else delivers). Local: the send is
//! made on `laptop`. Remote: on `studio`, through the mesh. Each way twice:
//! in this process, through the very function `channel send` calls
//! ([`crate::channel::send`]), timed from its return (the headline
//! figures); and as a `netsky channel send` process, timed from its exit
//! and from its start. A notification often arrives before the sending
//! process has exited: such a sample counts as 0. The client here is a
//! minimal JSON-RPC reader (initialize, initialized, then it times lines);
//! the end-to-end tests use the official SDK.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::{Target, ms, pct};
use crate::output::{Ctx, emit};

/// Arguments of `netsky bench mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Where to write (default: a temporary folder in $TMPDIR).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Envelopes timed one at a time, each way.
    #[arg(long, default_value_t = 100)]
    n: usize,
}

#[derive(Serialize)]
struct Report {
    n: usize,
    /// In process: `channel::send` returning to the notification read.
    local_p50_ms: f64,
    local_p99_ms: f64,
    /// A `netsky channel send` process: from its exit.
    local_cli_p50_ms: f64,
    /// From the send process's start: process start and the send itself included.
    local_from_start_p50_ms: f64,
    remote_p50_ms: f64,
    remote_p99_ms: f64,
    remote_cli_p50_ms: f64,
    remote_from_start_p50_ms: f64,
    /// Process samples whose notification arrived before the send process exited.
    arrived_before_return: usize,
    targets: Vec<Target>,
}

/// How long any one wait in the bench may take.
const WAIT: Duration = Duration::from_secs(30);

/// A line of the server's stdout and when it was read.
type Arrival = (Instant, serde_json::Value);

/// The server for laptop's agent1 and its stdout, read on a thread.
struct Server {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: Receiver<Arrival>,
}

impl Server {
    fn start(exe: &std::path::Path, home: &std::path::Path) -> Result<Server> {
        let mut child = Command::new(exe)
            .arg("--home")
            .arg(home)
            .args(["mcp", "serve", "agent1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start netsky mcp serve")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let out = child.stdout.take().context("no stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let at = Instant::now();
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send((at, v)).is_err()
                {
                    return;
                }
            }
        });
        let mut s = Server { child, stdin, lines };
        s.write(serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "netsky-bench", "version": "0"}}}))?;
        s.next(|v| v["id"] == 1)?;
        s.write(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        Ok(s)
    }

    fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.stdin, "{v}").context("the server's stdin")?;
        self.stdin.flush().context("the server's stdin")
    }

    fn next(&self, want: impl Fn(&serde_json::Value) -> bool) -> Result<Instant> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, v) = self.lines.recv_timeout(left).context("no line from the MCP server in time")?;
            if want(&v) {
                return Ok(at);
            }
        }
    }

    /// When the channel notification for envelope `id` was read.
    fn pushed(&self, id: &str) -> Result<Instant> {
        self.next(|v| v["method"] == "notifications/claude/channel" && v["params"]["meta"]["id"] == id)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `netsky bench mcp`.
pub fn run(ctx: &Ctx, a: McpArgs) -> Result<ExitCode> {
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let tmp = super::scratch(a.dir.as_deref(), "mcp")?;
    let base = tmp.path();
    let pair = super::pair::Pair::start(base, WAIT, |_| Ok(()))?;
    let (exe, netsky) = (pair.exe().to_path_buf(), |home: &str, args: &[&str]| pair.netsky(home, args));
    let server = Server::start(&exe, &base.join("laptop"))?;

    let mut early = 0;
    let timed = |home: &str, to: &str, i: usize, early: &mut usize| -> Result<(f64, f64)> {
        let t = Instant::now();
        let id = netsky(home, &["channel", "send", to, &format!("bench {i}")])?;
        let returned = Instant::now();
        let at = server.pushed(&id)?;
        if at < returned {
            *early += 1;
        }
        Ok((ms(at.saturating_duration_since(returned)), ms(at.saturating_duration_since(t))))
    };
    // Warm: the first remote send also opens the connection.
    let warm =
        netsky("studio", &["channel", "send", "agent1@laptop", "warm up", "--wait", "--timeout", "60"])?;
    server.pushed(&warm)?;
    let (mut local_cli, mut local_start, mut remote_cli, mut remote_start) = (vec![], vec![], vec![], vec![]);
    for i in 0..a.n {
        let (r, s) = timed("laptop", "agent1", i, &mut early)?;
        local_cli.push(r);
        local_start.push(s);
    }
    for i in 0..a.n {
        let (r, s) = timed("studio", "agent1@laptop", i, &mut early)?;
        remote_cli.push(r);
        remote_start.push(s);
    }
    let open = |name: &str| crate::node::Node::open(crate::home::Home::resolve(Some(base.join(name)))?);
    let in_process = |node: &crate::node::Node, to: &str| -> Result<Vec<f64>> {
        let to: netsky_bus::Address = to.parse()?;
        let mut v = Vec::with_capacity(a.n);
        for i in 0..a.n {
            let o = crate::channel::Outgoing {
                to: to.clone(),
                text: format!("bench in process {i}"),
                from: netsky_bus::AgentName::ROOT,
                kind: netsky_bus::Kind::Message,
                in_reply_to: None,
            };
            let sent = crate::channel::send(node, o)?;
            let returned = Instant::now();
            let at = server.pushed(&sent.out.id)?;
            v.push(ms(at.saturating_duration_since(returned)));
            // Apart, as separate sends are: the next starts on a quiet machine.
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(v)
    };
    let mut local = in_process(&open("laptop")?, "agent1")?;
    let mut remote = in_process(&open("studio")?, "agent1@laptop")?;
    drop(server);
    pair.stop();
    let (l50, l99, r50, r99) =
        (pct(&mut local, 0.5), pct(&mut local, 0.99), pct(&mut remote, 0.5), pct(&mut remote, 0.99));
    let report = Report {
        n: a.n,
        local_p50_ms: l50,
        local_p99_ms: l99,
        local_cli_p50_ms: pct(&mut local_cli, 0.5),
        local_from_start_p50_ms: pct(&mut local_start, 0.5),
        remote_p50_ms: r50,
        remote_p99_ms: r99,
        remote_cli_p50_ms: pct(&mut remote_cli, 0.5),
        remote_from_start_p50_ms: pct(&mut remote_start, 0.5),
        arrived_before_return: early,
        targets: vec![
            Target::at_most_ms(
                "channel send returning to the MCP client's notification, local, p50",
                l50,
                10.0,
            ),
            Target::at_most_ms("the same from another node on loopback, p50", r50, 15.0),
        ],
    };
    emit(ctx, &report, || {
        format!(
            "netsky mcp serve for agent1 on laptop, two daemons on loopback, {} sends of each kind\n  \
             from channel send returning (in process) to the notification read by the client\n  \
             local                        p50 {:.2} ms  p99 {:.2} ms\n  \
             from studio through the mesh p50 {:.2} ms  p99 {:.2} ms\n  \
             as a `netsky channel send` process, p50 from its exit / from its start\n  \
             local                        {:.2} ms / {:.2} ms\n  \
             from studio through the mesh {:.2} ms / {:.2} ms\n  \
             arrived before the send process exited: {} (counted as 0)\n{}",
            report.n,
            report.local_p50_ms,
            report.local_p99_ms,
            report.remote_p50_ms,
            report.remote_p99_ms,
            report.local_cli_p50_ms,
            report.local_from_start_p50_ms,
            report.remote_cli_p50_ms,
            report.remote_from_start_p50_ms,
            report.arrived_before_return,
            super::targets_text(&report.targets).trim_end()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
