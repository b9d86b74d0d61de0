//! `netsky bench`: netsky's figures measured against this machine's floors,
//! in the same run, so every number has its reference beside it.

mod beacons;
mod bus;
mod mcp;
mod mesh;
mod owner;
mod pair;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::output::Ctx;

/// `netsky bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// The bus on one machine: durable-write floor, signing, throughput, one send process.
    Bus(bus::BusArgs),
    /// Two nodes on loopback, in process: acked latency and pipelined throughput
    /// against the durable-write floor and the raw iroh round trip.
    Mesh(mesh::MeshArgs),
    /// Two daemons on loopback: escalation to the root's first leg, the owner's
    /// word to a member's inbox, and a flood of identical escalations.
    Owner(owner::OwnerArgs),
    /// What beacons cost the root: CPU per beacon, sizes, with many members.
    Beacons(beacons::BeaconArgs),
    /// `netsky mcp serve`: from `channel send` returning to the MCP client reading the
    /// channel notification, local and from another node on loopback.
    Mcp(mcp::McpArgs),
}

/// Runs `netsky bench`.
pub fn run(ctx: &Ctx, cmd: BenchCmd) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Bus(a) => bus::run(ctx, a),
        BenchCmd::Mesh(a) => mesh::run(ctx, a),
        BenchCmd::Owner(a) => owner::run(ctx, a),
        BenchCmd::Beacons(a) => beacons::run(ctx, a),
        BenchCmd::Mcp(a) => mcp::run(ctx, a),
    }
}

/// A performance target and whether this run met it.
#[derive(serde::Serialize)]
struct Target {
    name: &'static str,
    figure: String,
    target: String,
    met: bool,
}

impl Target {
    /// A target that `ms` be at most `budget_ms`.
    fn at_most_ms(name: &'static str, ms: f64, budget_ms: f64) -> Target {
        Target {
            name,
            figure: format!("{ms:.2} ms"),
            target: format!("<= {budget_ms:.2} ms"),
            met: ms <= budget_ms,
        }
    }
}

/// The targets as report lines.
fn targets_text(targets: &[Target]) -> String {
    let mut s = String::from("targets\n");
    for t in targets {
        let mark = if t.met { "met" } else { "MISSED" };
        s.push_str(&format!("  [{mark}] {}: {} (target {})\n", t.name, t.figure, t.target));
    }
    s
}

/// The `p` quantile (0..=1) of `v` (sorted in place); `v` must not be empty.
fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A scratch folder under `dir` (default $TMPDIR), removed when dropped.
fn scratch(dir: Option<&Path>, what: &str) -> Result<tempfile::TempDir> {
    if let Some(d) = dir {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let t = match dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .context("cannot make a scratch folder for the benchmark")?;
    eprintln!("netsky bench {what}: writing under {}", t.path().display());
    Ok(t)
}

/// The machine's floor for one fsync-durable file write, exactly as the bus does it.
///
/// Measured two ways, because they differ by up to 3x on a virtual machine:
/// back to back (the rate a busy writer sees: the reference for throughput)
/// and one at a time, each after an idle pause (what a lone `channel send`
/// or one acked envelope pays, as the CPU and the disk queue have gone idle:
/// the reference for single-operation latency).
struct DurableFloor {
    p50_ms: f64,
    p90_ms: f64,
    per_s: f64,
    /// p50 of a write made after a pause of `LONE_PAUSE`.
    lone_p50_ms: f64,
}

/// The pause before each lone write: about what separates sends in the latency runs.
const LONE_PAUSE: Duration = Duration::from_millis(2);

impl DurableFloor {
    /// Milliseconds of each of 200 durable writes back to back, in a fresh folder `dir`.
    fn back_to_back(dir: &Path) -> Result<Vec<f64>> {
        std::fs::create_dir_all(dir)?;
        let body = vec![b'x'; 420];
        (0..200)
            .map(|i| {
                let t = Instant::now();
                netsky_bus::write_durable(dir, &format!("{i}.json"), &body)?;
                Ok(ms(t.elapsed()))
            })
            .collect()
    }

    /// Durable writes per second back to back, measured now in `dir`: the
    /// floor rate beside a throughput run, as the machine is at that moment.
    fn rate_now(dir: &Path) -> Result<f64> {
        let w = Self::back_to_back(dir)?;
        Ok(1e3 * w.len() as f64 / w.iter().sum::<f64>())
    }

    fn measure(base: &Path) -> Result<DurableFloor> {
        let dir = base.join("floor");
        // Back to back first: that also makes the folder.
        let mut w = Self::back_to_back(&dir)?;
        let body = vec![b'x'; 420];
        let mut lone = Vec::new();
        for i in 0..100 {
            std::thread::sleep(LONE_PAUSE);
            let t = Instant::now();
            netsky_bus::write_durable(&dir, &format!("lone-{i}.json"), &body)?;
            lone.push(ms(t.elapsed()));
        }
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        Ok(DurableFloor {
            p50_ms: pct(&mut w, 0.5),
            p90_ms: pct(&mut w, 0.9),
            per_s: 1e3 / mean,
            lone_p50_ms: pct(&mut lone, 0.5),
        })
    }
}
