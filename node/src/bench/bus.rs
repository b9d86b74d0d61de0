//! `netsky bench bus`: the bus on one machine against the durable-write floor.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use netsky_bus::{Address, ENVELOPE_DOMAIN, Envelope, Guard, Kind, Layout, Mailbox, NodeName, Roster};
use netsky_keys::SecretKey;
use serde::Serialize;

use crate::output::{Ctx, emit};
use crate::proc::run_bounded;

use super::{DurableFloor, Target, ms, pct};

/// Signatures per batch check in the figure: what each of two check threads
/// gets of a claim of 256.
const VERIFY_BATCH: usize = 128;

/// Runs of the pipelined throughput figure; the median is reported.
const PIPELINE_RUNS: usize = 3;

/// One pipelined run and the floor rate measured just before it.
#[derive(Clone, Copy)]
struct Piped {
    per_s: f64,
    cpu_us: f64,
    floor_per_s: f64,
}

/// Arguments of `netsky bench bus`.
#[derive(Debug, Args)]
pub struct BusArgs {
    /// Where to write (default: a temporary folder in $TMPDIR).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Envelopes for the throughput runs.
    #[arg(long, default_value_t = 5000)]
    n: usize,
    /// Envelopes per batch in the batched run.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Runs of the `channel send` process.
    #[arg(long, default_value_t = 30)]
    runs: usize,
}

#[derive(Serialize, Default)]
struct Floor {
    fsync_ms: f64,
    fsync_p90_ms: f64,
    fsync_writes_per_s: f64,
    /// One durable write after an idle pause (the reference for one send).
    fsync_lone_ms: f64,
    sign_us: f64,
    verify_us: f64,
    /// Per signature, checked in batches of [`VERIFY_BATCH`] of one key.
    batch_verify_us: f64,
    process_start_ms: f64,
}

#[derive(Serialize)]
struct BusFigures {
    sign_verify_per_s: f64,
    durable_unbatched_per_s: f64,
    durable_batched_per_s: f64,
    batch: usize,
    batched_vs_floor: f64,
    /// Writer and deliverer at once, each batching (as a node runs them).
    durable_pipelined_per_s: f64,
    /// Against the floor rate measured just before that run.
    pipelined_vs_floor: f64,
    /// That floor rate, durable writes per second.
    pipelined_floor_per_s: f64,
    /// CPU (user + system, all threads) per envelope in the pipelined run.
    pipelined_cpu_us: f64,
    /// The most that CPU cost allows on this machine's cores, per second.
    cpu_ceiling_per_s: f64,
    /// This machine's cores.
    cores: usize,
}

#[derive(Serialize)]
struct Report {
    floor: Floor,
    bus: BusFigures,
    /// The process on its own (no daemon: it allocates its own file).
    send_process_ms: f64,
    send_process_p90_ms: f64,
    /// With the node's daemon running: its own work on each landing shares the cores.
    send_process_daemon_ms: f64,
    targets: Vec<Target>,
}

/// Runs `netsky bench bus`.
pub fn run(ctx: &Ctx, a: BusArgs) -> Result<ExitCode> {
    let BusArgs { dir, n, batch, runs } = a;
    if n == 0 || batch == 0 || runs == 0 {
        bail!("--n, --batch and --runs must be at least 1");
    }
    let tmp = super::scratch(dir.as_deref(), "bus")?;
    let base = tmp.path();
    let f = DurableFloor::measure(base)?;
    let mut floor = Floor {
        fsync_ms: f.p50_ms,
        fsync_p90_ms: f.p90_ms,
        fsync_writes_per_s: f.per_s,
        fsync_lone_ms: f.lone_p50_ms,
        ..Floor::default()
    };

    // Signing and verification of a typical envelope.
    let key = SecretKey::generate();
    let node: NodeName = "bench".parse()?;
    let roster = Roster::solo(node.clone(), key.public())?;
    let from = Address::agent(netsky_bus::AgentName::ROOT, node.clone());
    let to = Address::agent(netsky_bus::AgentName::Numbered(1), node.clone());
    let text = "review restart.rs only; keep the change small and say why in the commit";
    let make =
        |i: usize| Envelope::new(&key, Kind::Message, from.clone(), to.clone(), format!("{text} #{i}"), None);
    let t = Instant::now();
    let envs: Vec<Envelope> = (0..2000).map(make).collect::<Result<_, _>>()?;
    floor.sign_us = t.elapsed().as_secs_f64() * 1e6 / 2000.0;
    let member = roster.by_id(&key.public()).context("own key in roster")?;
    let t = Instant::now();
    for e in &envs {
        e.verify(member.verifier()).map_err(|r| anyhow::anyhow!("{r}"))?;
    }
    floor.verify_us = t.elapsed().as_secs_f64() * 1e6 / 2000.0;
    let bodies: Vec<Vec<u8>> = envs.iter().map(Envelope::signing_bytes).collect();
    let t = Instant::now();
    for (es, bs) in envs.chunks(VERIFY_BATCH).zip(bodies.chunks(VERIFY_BATCH)) {
        let batch: Vec<netsky_keys::ToVerify<'_>> = es
            .iter()
            .zip(bs)
            .filter_map(|(e, body)| {
                let sig = e.sig.as_ref()?;
                Some(netsky_keys::ToVerify {
                    verifier: member.verifier(),
                    domain: ENVELOPE_DOMAIN,
                    body,
                    sig,
                })
            })
            .collect();
        if batch.len() != es.len() || !netsky_keys::verify_all(&batch) {
            bail!("the benchmark's signatures do not verify as a batch");
        }
    }
    floor.batch_verify_us = t.elapsed().as_secs_f64() * 1e6 / 2000.0;

    // A fresh mailbox under `root` and `count` envelopes for it.
    let setup = |root: &Path, count: usize| -> Result<(Mailbox, Vec<Envelope>)> {
        let mb = Mailbox::open(&Layout::new(root), &node, netsky_bus::AgentName::Numbered(1))?;
        Ok((mb, (0..count).map(make).collect::<Result<_, _>>()?))
    };
    // In-process lifecycle: put, claim (with the full guard), deliver.
    let debug = std::env::var_os("NETSKY_BENCH_DEBUG").is_some();
    let lifecycle = |root: &Path, count: usize, batch: usize| -> Result<f64> {
        let (mb, envs) = setup(root, count)?;
        let t = Instant::now();
        let lock = mb.lock(Duration::from_secs(1))?;
        let (mut tp, mut tc, mut td) = (0.0, 0.0, 0.0);
        for chunk in envs.chunks(batch) {
            let t0 = Instant::now();
            mb.put_batch(chunk)?;
            tp += ms(t0.elapsed());
            let t0 = Instant::now();
            let netsky_bus::Claim { claimed, poisoned, .. } =
                mb.claim(&lock, &Guard::new(&roster), chunk.len())?;
            tc += ms(t0.elapsed());
            if !poisoned.is_empty() || claimed.len() != chunk.len() {
                bail!("benchmark envelopes were refused: {:?}", poisoned.first().map(|p| &p.refusal));
            }
            let t0 = Instant::now();
            mb.deliver(&lock, &claimed)?;
            td += ms(t0.elapsed());
        }
        // Timed too: the checkpoint that makes the journaled batches durable file by file.
        let t0 = Instant::now();
        mb.checkpoint(&lock)?;
        tp += ms(t0.elapsed());
        if debug {
            eprintln!("batch {batch}: put {tp:.1} ms, claim {tc:.1} ms, deliver {td:.1} ms for {count}");
        }
        Ok(count as f64 / t.elapsed().as_secs_f64())
    };
    let unbatched = lifecycle(&base.join("unbatched"), 200.min(n), 1)?;
    let batched = lifecycle(&base.join("batched"), n, batch)?;

    // As a node runs it: the writer (a send, a mesh ingest) and the deliverer
    // (the daemon) are two actors working at once, woken by each other's files.
    let pipeline = |root: &Path| -> Result<(f64, f64)> {
        let (mb, envs) = setup(root, n)?;
        let lock = mb.lock(Duration::from_secs(1))?;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let cpu0 = process_cpu();
        let t = Instant::now();
        std::thread::scope(|s| -> Result<()> {
            let writer = s.spawn(|| -> Result<()> {
                let mut busy = 0.0;
                for chunk in envs.chunks(batch) {
                    let t0 = Instant::now();
                    mb.put_batch(chunk)?;
                    busy += ms(t0.elapsed());
                    // The file watcher's wake, in process.
                    let _ = tx.send(());
                }
                drop(tx);
                if debug {
                    eprintln!("pipelined writer: put {busy:.1} ms");
                }
                Ok(())
            });
            let mut done = 0;
            let (mut tc, mut td, mut idle) = (0.0, 0.0, 0.0);
            while done < n {
                let t0 = Instant::now();
                let netsky_bus::Claim { claimed, poisoned, .. } =
                    mb.claim(&lock, &Guard::new(&roster), batch)?;
                tc += ms(t0.elapsed());
                if !poisoned.is_empty() {
                    bail!("benchmark envelopes were refused: {:?}", poisoned[0].refusal);
                }
                if claimed.is_empty() {
                    let t0 = Instant::now();
                    let woken = rx.recv();
                    idle += ms(t0.elapsed());
                    if woken.is_err() && done < n {
                        // The writer is gone: whatever it left is claimed next round, or it failed.
                        if writer.is_finished() && mb.counts()?.inbox == 0 {
                            break;
                        }
                    }
                    continue;
                }
                let t0 = Instant::now();
                mb.deliver(&lock, &claimed)?;
                td += ms(t0.elapsed());
                done += claimed.len();
            }
            if debug {
                eprintln!("pipelined deliverer: claim {tc:.1} ms, deliver {td:.1} ms, idle {idle:.1} ms");
            }
            writer.join().map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
            // Timed too: the checkpoint that retires the batches' journals.
            mb.checkpoint(&lock)?;
            if done != n {
                bail!("{done} of {n} envelopes delivered");
            }
            Ok(())
        })?;
        Ok((n as f64 / t.elapsed().as_secs_f64(), (process_cpu() - cpu0).as_secs_f64() * 1e6 / n as f64))
    };
    // The median of a few runs, each in a fresh folder and each against the
    // floor rate measured just before it: this machine's fsync and CPU drift
    // by 2x within minutes, and one run is at the mercy of its half second.
    let mut piped: Vec<Piped> = (0..PIPELINE_RUNS)
        .map(|i| -> Result<Piped> {
            let floor_per_s = DurableFloor::rate_now(&base.join(format!("floor-{i}")))?;
            let (per_s, cpu_us) = pipeline(&base.join(format!("pipelined-{i}")))?;
            Ok(Piped { per_s, cpu_us, floor_per_s })
        })
        .collect::<Result<_>>()?;
    piped.sort_by(|a, b| (a.per_s / a.floor_per_s).total_cmp(&(b.per_s / b.floor_per_s)));
    let Piped { per_s: pipelined, cpu_us, floor_per_s: pipelined_floor, .. } = piped[piped.len() / 2];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // One `netsky channel send` process, end to end, and a bare process start.
    let exe = std::env::current_exe()?;
    let home = base.join("home");
    let o = run_bounded(
        Command::new(&exe).args(["--home"]).arg(&home).args([
            "init",
            "--name",
            "bench",
            "--relay",
            "disabled",
            "--listen",
            "127.0.0.1:0",
        ]),
        Duration::from_secs(30),
    )?;
    if !o.status.success() {
        bail!("init for the send benchmark failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let sends = |label: &str| -> Result<(Vec<f64>, Vec<f64>)> {
        let (mut start, mut send) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let t = Instant::now();
            run_bounded(Command::new(&exe).arg("--version"), Duration::from_secs(30))?;
            start.push(ms(t.elapsed()));
            let t = Instant::now();
            let o = run_bounded(
                Command::new(&exe)
                    .arg("--home")
                    .arg(&home)
                    .args(["channel", "send", "agent1"])
                    .arg(format!("{text} #{label}{i}")),
                Duration::from_secs(30),
            )?;
            send.push(ms(t.elapsed()));
            if !o.status.success() {
                bail!("channel send failed: {}", String::from_utf8_lossy(&o.stderr));
            }
            // Sends come from agents at work, not in a tight loop: a moment between
            // them lets the daemon (when one runs) do what it does after a send.
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((start, send))
    };
    // The process on its own: every send allocates its file.
    let (mut start, mut send) = sends("a")?;
    // As a node runs: the daemon reacts to each landing.
    // The process starts between these sends keep their spacing the same as above, but
    // they are not the floor: the daemon's load is in them.
    let (_, mut send_d) = {
        let (_daemon, _) = crate::proc::Daemon::start(&exe, &home, "bench", &base.join("daemon.log"))?;
        sends("d")?
    };
    floor.process_start_ms = pct(&mut start, 0.5);
    let send_p50 = pct(&mut send, 0.5);
    let send_p90 = pct(&mut send, 0.9);
    let send_daemon_p50 = pct(&mut send_d, 0.5);

    // A send process makes one write after an idle moment: the lone-write floor is its reference.
    let send_budget = 2.0 * floor.fsync_lone_ms + floor.process_start_ms;
    let ratio = batched / floor.fsync_writes_per_s;
    let pratio = pipelined / pipelined_floor;
    let sign_verify_per_s = 1e6 / (floor.sign_us + floor.verify_us);
    let report = Report {
        targets: vec![Target::at_most_ms(
            "send process within 2x lone durable write + process start",
            send_p50,
            send_budget,
        )],
        floor,
        bus: BusFigures {
            sign_verify_per_s,
            durable_unbatched_per_s: unbatched,
            durable_batched_per_s: batched,
            batch,
            batched_vs_floor: ratio,
            durable_pipelined_per_s: pipelined,
            pipelined_vs_floor: pratio,
            pipelined_floor_per_s: pipelined_floor,
            pipelined_cpu_us: cpu_us,
            cpu_ceiling_per_s: cores as f64 * 1e6 / cpu_us,
            cores,
        },
        send_process_ms: send_p50,
        send_process_p90_ms: send_p90,
        send_process_daemon_ms: send_daemon_p50,
    };
    emit(ctx, &report, || human(&report))?;
    Ok(ExitCode::SUCCESS)
}

/// CPU time this process has used so far, user and system, all threads.
pub(super) fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn human(r: &Report) -> String {
    let f = &r.floor;
    let mut s = String::new();
    s.push_str("floors of this machine\n");
    s.push_str(&format!(
        "  durable write (write+fsync+rename+fsync dir)  p50 {:.2} ms  p90 {:.2} ms  ({:.0}/s)\n",
        f.fsync_ms, f.fsync_p90_ms, f.fsync_writes_per_s
    ));
    s.push_str(&format!(
        "  durable write, one at a time ({} ms apart)  p50 {:.2} ms\n",
        super::LONE_PAUSE.as_millis(),
        f.fsync_lone_ms
    ));
    s.push_str(&format!(
        "  ed25519 sign {:.1} us, verify {:.1} us, verify in batches of {VERIFY_BATCH} {:.1} us each\n",
        f.sign_us, f.verify_us, f.batch_verify_us
    ));
    s.push_str(&format!("  process start (netsky --version)  p50 {:.2} ms\n", f.process_start_ms));
    s.push_str("netsky\n");
    s.push_str(&format!("  sign+verify                      {:.0} envelopes/s\n", r.bus.sign_verify_per_s));
    s.push_str(&format!(
        "  send+claim+deliver, unbatched    {:.0} envelopes/s\n",
        r.bus.durable_unbatched_per_s
    ));
    s.push_str(&format!(
        "  send+claim+deliver, batch {:<5}  {:.0} envelopes/s ({:.1}x the floor rate)\n",
        r.bus.batch, r.bus.durable_batched_per_s, r.bus.batched_vs_floor
    ));
    s.push_str(&format!(
        "  the same, writer and deliverer at once  {:.0} envelopes/s ({:.1}x the floor rate of {:.0}/s measured beside it; median of {PIPELINE_RUNS})\n",
        r.bus.durable_pipelined_per_s, r.bus.pipelined_vs_floor, r.bus.pipelined_floor_per_s
    ));
    s.push_str(&format!(
        "    CPU per envelope {:.0} us (user + system): {} cores allow at most {:.0}/s ({:.1}x the floor rate)\n",
        r.bus.pipelined_cpu_us,
        r.bus.cores,
        r.bus.cpu_ceiling_per_s,
        r.bus.cpu_ceiling_per_s / r.bus.pipelined_floor_per_s
    ));
    s.push_str(&format!(
        "  one `channel send` process       p50 {:.2} ms  p90 {:.2} ms\n  the same, node daemon running    p50 {:.2} ms (its work on each landing shares the cores)\n",
        r.send_process_ms, r.send_process_p90_ms, r.send_process_daemon_ms
    ));
    s.push_str(&super::targets_text(&r.targets));
    s.trim_end().to_string()
}
