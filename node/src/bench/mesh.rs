//! `netsky bench mesh`: two mesh nodes in this process on loopback.
//!
//! - floor: one durable write (as the bus does it) and the raw iroh round
//!   trip of a 512-byte request on a new bi stream of an open connection
//!   (what one push costs on the wire), measured in the same run;
//! - latency: one envelope at a time, from the fsynced write into the
//!   sender's outbox to the sender having processed the receiver's ack
//!   (the receiver made it durable in the inbox first): p50 and p99;
//! - throughput: envelopes written into the outbox in groups (one durability
//!   barrier per group, as `channel send` batches would be), shipped and
//!   acknowledged pipelined, the receiver committing each push as a group.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use iroh::endpoint::{Connection, NetReportConfig, PortmapperConfig, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, RelayMode};
use netsky_bus::{Address, AgentName, Envelope, Kind, NodeName};
use netsky_keys::SecretKey;
use netsky_mesh::{Charter, CharterMember, Mesh, MeshConfig, MeshEvent, Relay, charter_file};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{DurableFloor, Target, ms, pct};
use crate::output::{Ctx, emit};

/// Arguments of `netsky bench mesh`.
#[derive(Debug, Args)]
pub struct MeshArgs {
    /// Where to write (default: a temporary folder in $TMPDIR).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Put the receiving node's home on another filesystem (as on a second
    /// machine, its fsyncs then share no journal with the sender's).
    #[arg(long)]
    receiver_dir: Option<PathBuf>,
    /// Envelopes sent one at a time for the latency figures.
    #[arg(long, default_value_t = 300)]
    latency_n: usize,
    /// Envelopes for the throughput run.
    #[arg(long, default_value_t = 5000)]
    n: usize,
    /// Envelopes per outbox write group in the throughput run.
    #[arg(long, default_value_t = 64)]
    group: usize,
}

#[derive(Serialize)]
struct Report {
    durable_write_p50_ms: f64,
    durable_write_lone_p50_ms: f64,
    /// Of the latency: the sender's own durable write into its outbox.
    outbox_write_p50_ms: f64,
    /// Of the latency: from durable in the outbox to the ack (one write, one
    /// round trip and the software between), per envelope.
    after_outbox_p50_ms: f64,
    after_outbox_p99_ms: f64,
    raw_rtt_p50_ms: f64,
    raw_rtt_p99_ms: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_budget_ms: f64,
    throughput_per_s: f64,
    throughput_n: usize,
    targets: Vec<Target>,
}

const ECHO: &[u8] = b"netsky/bench-echo/1";

#[derive(Debug, Clone)]
struct Echo;

impl ProtocolHandler for Echo {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let Ok(buf) = recv.read_to_end(64 * 1024).await else { break };
            if send.write_all(&buf).await.is_err() || send.finish().is_err() {
                break;
            }
        }
        Ok(())
    }
}

async fn raw_endpoint() -> Result<Endpoint> {
    Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .net_report_config(NetReportConfig::minimal())
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")?
        .bind()
        .await
        .context("bind a raw endpoint")
}

/// Round trips of 512 bytes, one new bi stream each, on one open connection.
async fn raw_rtt(samples: usize) -> Result<Vec<f64>> {
    let server = raw_endpoint().await?;
    let addr = server.addr();
    let router = Router::builder(server).accept(ECHO, Echo).spawn();
    let client = raw_endpoint().await?;
    let conn = client.connect(addr, ECHO).await.context("connect to the echo endpoint")?;
    let body = vec![7u8; 512];
    let mut v = Vec::with_capacity(samples);
    for i in 0..samples + 100 {
        let t = Instant::now();
        let (mut s, mut r) = conn.open_bi().await?;
        s.write_all(&body).await?;
        s.finish()?;
        let back = r.read_to_end(64 * 1024).await?;
        if back.len() != body.len() {
            bail!("echo returned {} bytes", back.len());
        }
        if i >= 100 {
            v.push(ms(t.elapsed()));
        }
    }
    conn.close(0u32.into(), b"done");
    client.close().await;
    let _ = router.shutdown().await;
    Ok(v)
}

struct Node {
    mesh: Mesh,
    home: PathBuf,
    name: NodeName,
    key: SecretKey,
}

async fn start_node(base: &std::path::Path, name: &str, acks: mpsc::UnboundedSender<()>) -> Result<Node> {
    let home = base.join(name);
    std::fs::create_dir_all(home.join("keys"))?;
    let key = SecretKey::generate();
    let name: NodeName = name.parse()?;
    let events: netsky_mesh::EventSink = Arc::new(move |e| {
        if let MeshEvent::Acked { .. } = e {
            let _ = acks.send(());
        }
    });
    let mesh = Mesh::start(MeshConfig {
        home: home.clone(),
        name: name.clone(),
        key: key.clone(),
        listen: "127.0.0.1:0".parse()?,
        relay: Relay::Disabled,
        mdns: false,
        answers: None,
        beacons: None,
        agent_exists: Arc::new(|_| true),
        events,
    })
    .await?;
    Ok(Node { mesh, home, name, key })
}

/// Runs `netsky bench mesh`.
pub fn run(ctx: &Ctx, a: MeshArgs) -> Result<ExitCode> {
    if a.latency_n == 0 || a.n == 0 || a.group == 0 {
        bail!("--latency-n, --n and --group must be at least 1");
    }
    let tmp = super::scratch(a.dir.as_deref(), "mesh")?;
    let base = tmp.path().to_path_buf();
    let other = a.receiver_dir.as_deref().map(|d| super::scratch(Some(d), "mesh (receiver)")).transpose()?;
    let receiver_base = other.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_else(|| base.clone());
    let floor = DurableFloor::measure(&base)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = rt.block_on(bench(&base, &receiver_base, &a, &floor))?;
    emit(ctx, &report, || human(&report))?;
    Ok(ExitCode::SUCCESS)
}

async fn bench(
    base: &std::path::Path,
    receiver_base: &std::path::Path,
    a: &MeshArgs,
    floor: &DurableFloor,
) -> Result<Report> {
    let mut rtt = raw_rtt(1000).await?;
    let (tx, mut acks) = mpsc::unbounded_channel();
    let (tx2, _unused) = mpsc::unbounded_channel();
    let sender = start_node(base, "sender", tx).await?;
    let receiver = start_node(receiver_base, "receiver", tx2).await?;
    // Both are members of one mesh; the receiver is root.
    let mk = SecretKey::generate();
    let member =
        |n: &Node| CharterMember { name: n.name.clone(), node_id: n.key.public(), addrs: n.mesh.addrs() };
    let charter = Charter {
        mesh: "bench".into(),
        epoch: 1,
        root: receiver.name.clone(),
        members: vec![member(&receiver), member(&sender)],
        revoked: vec![],
        issued: netsky_bus::format_ts(time::OffsetDateTime::now_utc()),
        mesh_key: mk.public(),
    }
    .sign(&mk)?;
    for n in [&sender, &receiver] {
        let paths = netsky_mesh::MeshPaths::new(&n.home);
        let lock = charter_file::lock(&paths)?;
        charter_file::store(&paths, &lock, &charter)?;
        n.mesh.kick();
    }
    // Written as `channel send` writes it: durable for one flush (see netsky_bus::write_journaled).
    let paths = netsky_mesh::MeshPaths::new(&sender.home);
    let from = Address::agent(AgentName::ROOT, sender.name.clone());
    let to = Address::agent(AgentName::Numbered(1), receiver.name.clone());
    let text = "tests are green on laptop; review restart.rs next and keep the change small";
    let make = |i: usize| {
        Envelope::new(&sender.key, Kind::Message, from.clone(), to.clone(), format!("{text} #{i}"), None)
    };
    let wait_ack = async |acks: &mut mpsc::UnboundedReceiver<()>| -> Result<()> {
        tokio::time::timeout(Duration::from_secs(30), acks.recv())
            .await
            .context("no ack within 30 s")?
            .context("ack channel closed")
    };
    // Warm up: the first envelope also opens the connection.
    for i in 0..20 {
        let e = make(i)?;
        paths.write_outbox(&[(e.file_name(), e.to_json())])?;
        sender.mesh.kick();
        wait_ack(&mut acks).await?;
    }
    // Latency, one at a time.
    let mut lat = Vec::with_capacity(a.latency_n);
    let mut wlat = Vec::with_capacity(a.latency_n);
    let mut after = Vec::with_capacity(a.latency_n);
    for i in 0..a.latency_n {
        let e = make(i)?;
        let bytes = e.to_json();
        let t = Instant::now();
        paths.write_outbox(&[(e.file_name(), bytes)])?;
        let written = ms(t.elapsed());
        wlat.push(written);
        // No kick: a `channel send` process cannot kick either; the file watcher wakes the node.
        wait_ack(&mut acks).await?;
        let acked = ms(t.elapsed());
        lat.push(acked);
        after.push(acked - written);
    }
    // Throughput, pipelined.
    let envs: Vec<Envelope> = (0..a.n).map(make).collect::<Result<_, _>>()?;
    let t = Instant::now();
    let writer = {
        let paths = paths.clone();
        let group = a.group;
        tokio::task::spawn_blocking(move || -> Result<()> {
            for chunk in envs.chunks(group) {
                let items: Vec<(String, Vec<u8>)> =
                    chunk.iter().map(|e| (e.file_name(), e.to_json())).collect();
                paths.write_outbox(&items)?;
            }
            Ok(())
        })
    };
    sender.mesh.kick();
    for _ in 0..a.n {
        wait_ack(&mut acks).await?;
    }
    writer.await??;
    let throughput = a.n as f64 / t.elapsed().as_secs_f64();
    sender.mesh.shutdown().await;
    receiver.mesh.shutdown().await;

    let rtt_p50 = pct(&mut rtt, 0.5);
    let rtt_p99 = pct(&mut rtt, 0.99);
    let lat_p50 = pct(&mut lat, 0.5);
    let lat_p99 = pct(&mut lat, 0.99);
    let write_p50 = pct(&mut wlat, 0.5);
    // Each envelope is written durably twice (outbox, then remote inbox), one
    // at a time after a wait for the previous ack: the lone-write floor applies.
    let budget = 2.0 * (floor.lone_p50_ms + rtt_p50);
    Ok(Report {
        durable_write_p50_ms: floor.p50_ms,
        durable_write_lone_p50_ms: floor.lone_p50_ms,
        outbox_write_p50_ms: write_p50,
        after_outbox_p50_ms: pct(&mut after, 0.5),
        after_outbox_p99_ms: pct(&mut after, 0.99),
        raw_rtt_p50_ms: rtt_p50,
        raw_rtt_p99_ms: rtt_p99,
        latency_p50_ms: lat_p50,
        latency_p99_ms: lat_p99,
        latency_budget_ms: budget,
        throughput_per_s: throughput,
        throughput_n: a.n,
        targets: vec![
            Target::at_most_ms(
                "acked latency p50 within 2x (lone durable write + raw round trip)",
                lat_p50,
                budget,
            ),
            Target {
                name: "pipelined throughput between two nodes, durable on both sides",
                figure: format!("{throughput:.0}/s"),
                target: ">= 2000/s".into(),
                met: throughput >= 2000.0,
            },
        ],
    })
}

fn human(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("floors of this machine\n");
    s.push_str(&format!("  durable write, back to back       p50 {:.3} ms\n", r.durable_write_p50_ms));
    s.push_str(&format!("  durable write, one at a time      p50 {:.3} ms\n", r.durable_write_lone_p50_ms));
    s.push_str(&format!(
        "  raw iroh round trip (512 B)       p50 {:.3} ms  p99 {:.3} ms\n",
        r.raw_rtt_p50_ms, r.raw_rtt_p99_ms
    ));
    s.push_str("netsky mesh, two nodes, loopback\n");
    s.push_str(&format!(
        "  acked latency, one at a time      p50 {:.3} ms  p99 {:.3} ms\n",
        r.latency_p50_ms, r.latency_p99_ms
    ));
    s.push_str(&format!("    of which the outbox write       p50 {:.3} ms\n", r.outbox_write_p50_ms));
    s.push_str(&format!(
        "    from durable in the outbox to the ack  p50 {:.3} ms  p99 {:.3} ms (one lone write + one round trip: {:.3} ms)\n",
        r.after_outbox_p50_ms,
        r.after_outbox_p99_ms,
        r.durable_write_lone_p50_ms + r.raw_rtt_p50_ms
    ));
    s.push_str(&format!(
        "  pipelined throughput              {:.0} envelopes/s ({} envelopes)\n",
        r.throughput_per_s, r.throughput_n
    ));
    s.push_str(&super::targets_text(&r.targets));
    s.trim_end().to_string()
}
