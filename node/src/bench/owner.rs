//! `netsky bench owner`: the owner path between two real daemons on loopback.
//!
//! - escalation: from `netsky escalate` starting on a member to the root's
//!   first leg attempt (a line in its `file` leg), p50 and p99, the CLI
//!   process included, as a user or an agent pays it;
//! - owner message: from `netsky owner say` starting on the root to the
//!   envelope durable in an agent's inbox on the member;
//! - dedupe: `--flood` identical escalations put into the root's desk in one
//!   batch (as a mesh push lands), until the incident counts them all, and
//!   how many pages that took (one is right).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::{Target, ms, pct};
use crate::output::{Ctx, emit};
use crate::proc::run_bounded;

/// Arguments of `netsky bench owner`.
#[derive(Debug, Args)]
pub struct OwnerArgs {
    /// Where to write (default: a temporary folder in $TMPDIR).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Escalations and owner messages timed one at a time.
    #[arg(long, default_value_t = 50)]
    n: usize,
    /// Identical escalations for the dedupe figure.
    #[arg(long, default_value_t = 1000)]
    flood: usize,
}

#[derive(Serialize)]
struct Report {
    escalate_to_page_p50_ms: f64,
    escalate_to_page_p99_ms: f64,
    say_to_inbox_p50_ms: f64,
    say_to_inbox_p99_ms: f64,
    /// `netsky --version`, the process start inside both figures above.
    process_start_ms: f64,
    flood: usize,
    flood_per_s: f64,
    flood_pages: usize,
    targets: Vec<Target>,
}

/// How long any one wait in the bench may take.
const WAIT: Duration = Duration::from_secs(30);

/// Runs `netsky bench owner`.
pub fn run(ctx: &Ctx, a: OwnerArgs) -> Result<ExitCode> {
    if a.n == 0 || a.flood == 0 {
        bail!("--n and --flood must be at least 1");
    }
    let tmp = super::scratch(a.dir.as_deref(), "owner")?;
    let base = tmp.path();
    let pages = base.join("pages.jsonl");
    let pair = super::pair::Pair::start(base, WAIT, |base| {
        crate::config::Config::add_file_leg(&base.join("studio/config.toml"), &pages)
    })?;
    let (exe, netsky) = (pair.exe().to_path_buf(), |home: &str, args: &[&str]| pair.netsky(home, args));

    let mut start = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        run_bounded(Command::new(&exe).arg("--version"), WAIT)?;
        start.push(ms(t.elapsed()));
    }
    // Warm: the first escalation also opens the connection and waits for addresses.
    let mut seen = Tail::new(&pages);
    let warm = netsky("laptop", &["escalate", "warm up", "the connection"])?;
    seen.wait_for(&warm, Duration::from_secs(60))?;

    let mut esc = Vec::new();
    for i in 0..a.n {
        // A subject each: a repeat would join the incident and page nobody.
        let t = Instant::now();
        let id = netsky("laptop", &["escalate", &format!("bench {i}"), "timed"])?;
        seen.wait_for(&id, WAIT)?;
        esc.push(ms(t.elapsed()));
    }
    let inbox = base.join("laptop/channels/agent/agent1/inbox");
    let mut say = Vec::new();
    for i in 0..a.n {
        let t = Instant::now();
        let id = netsky("studio", &["owner", "say", &format!("agent1@laptop: bench {i}")])?;
        let file = inbox.join(format!("{id}.json"));
        let deadline = Instant::now() + WAIT;
        while !file.exists() {
            if Instant::now() > deadline {
                bail!("owner message {id} did not reach laptop's inbox");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        say.push(ms(t.elapsed()));
    }

    // The flood, written straight into the root's desk by this process.
    let node = crate::node::Node::open(crate::home::Home::resolve(Some(base.join("studio")))?)?;
    let op = crate::owner::EscalationOp::Open {
        subject: "flood".into(),
        body: "the same failure, again and again".into(),
        source: Some("bench".into()),
        agent: None,
    };
    // As a flood arrives from the mesh: pushed in one batch, one barrier.
    let text = serde_json::to_string(&op)?;
    let from = netsky_bus::Address::agent(netsky_bus::AgentName::ROOT, node.config.node.name.clone());
    let envs: Vec<netsky_bus::Envelope> = (0..a.flood)
        .map(|_| {
            netsky_bus::Envelope::new(
                &node.key,
                netsky_bus::Kind::Escalation,
                from.clone(),
                netsky_bus::Address::Owner,
                text.clone(),
                None,
            )
        })
        .collect::<Result<_, _>>()?;
    let desk =
        netsky_bus::Mailbox::open(&node.home.layout(), &node.config.node.name, netsky_bus::Holder::Owner)?;
    let t = Instant::now();
    desk.put_batch(&envs)?;
    let id = envs.first().map(|e| e.id.to_string()).context("no flood")?;
    let incident = base.join("studio/state/escalations").join(format!("{id}.json"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = std::fs::read(&incident)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["count"].as_u64());
        if count == Some(a.flood as u64) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the flood's incident counts {count:?} of {}", a.flood);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let flood_per_s = a.flood as f64 / t.elapsed().as_secs_f64();
    let flood_pages = seen.count_of(&id)?;
    pair.stop();

    let (e50, e99, s50, s99) =
        (pct(&mut esc, 0.5), pct(&mut esc, 0.99), pct(&mut say, 0.5), pct(&mut say, 0.99));
    let report = Report {
        escalate_to_page_p50_ms: e50,
        escalate_to_page_p99_ms: e99,
        say_to_inbox_p50_ms: s50,
        say_to_inbox_p99_ms: s99,
        process_start_ms: pct(&mut start, 0.5),
        flood: a.flood,
        flood_per_s,
        flood_pages,
        targets: vec![
            Target::at_most_ms("escalate on a member to the root's first leg, p50", e50, 50.0),
            Target::at_most_ms("owner say on the root to an inbox on a member, p50", s50, 50.0),
            Target {
                name: "identical escalations: 1000 a second, paged once",
                figure: format!("{flood_per_s:.0}/s, {flood_pages} page(s)"),
                target: ">= 1000/s, 1 page".into(),
                met: flood_per_s >= 1000.0 && flood_pages == 1,
            },
        ],
    };
    emit(ctx, &report, || human(&report))?;
    Ok(ExitCode::SUCCESS)
}

/// Follows the root's file leg: which page ids it has seen.
struct Tail {
    path: PathBuf,
    read: usize,
    ids: Vec<String>,
}

impl Tail {
    fn new(path: &Path) -> Tail {
        Tail { path: path.to_path_buf(), read: 0, ids: Vec::new() }
    }

    /// Reads what was appended since the last look.
    fn look(&mut self) -> Result<()> {
        let Ok(bytes) = std::fs::read(&self.path) else { return Ok(()) };
        // Whole lines only: a line being written is read next time.
        let end =
            bytes[self.read..].iter().rposition(|&b| b == b'\n').map_or(self.read, |p| self.read + p + 1);
        for line in bytes[self.read..end].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).context("a page line")?;
            self.ids.push(v["id"].as_str().unwrap_or_default().to_string());
        }
        self.read = end;
        Ok(())
    }

    fn wait_for(&mut self, id: &str, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            self.look()?;
            if self.ids.iter().any(|i| i == id) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no page for {id} within {wait:?}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn count_of(&mut self, id: &str) -> Result<usize> {
        self.look()?;
        Ok(self.ids.iter().filter(|i| *i == id).count())
    }
}

fn human(r: &Report) -> String {
    format!(
        "two daemons on loopback (the CLI process included; netsky --version p50 {:.2} ms)\n  \
         escalate on a member to the root's first leg  p50 {:.2} ms  p99 {:.2} ms\n  \
         owner say on the root to a member's inbox      p50 {:.2} ms  p99 {:.2} ms\n  \
         {} identical escalations into the desk          {:.0}/s, {} page(s)\n{}",
        r.process_start_ms,
        r.escalate_to_page_p50_ms,
        r.escalate_to_page_p99_ms,
        r.say_to_inbox_p50_ms,
        r.say_to_inbox_p99_ms,
        r.flood,
        r.flood_per_s,
        r.flood_pages,
        super::targets_text(&r.targets).trim_end()
    )
}
