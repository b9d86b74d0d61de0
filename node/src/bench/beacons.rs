//! `netsky bench beacons`: what beacons cost the root.
//!
//! A root home with a charter of `--nodes` members (keys made here), and one
//! signed beacon per member per round handed to the root's beacon desk as
//! the mesh handler hands it (verify, replay check, keep, answer with the
//! view): CPU per beacon at the root (user + system), wall time per round,
//! the beacon's size on the wire and the view's size. The network part of a
//! beacon is one request on loopback, measured by `bench mesh`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use netsky_mesh::{Charter, CharterMember, charter_file};
use serde::Serialize;

use super::{Target, pct};
use crate::output::{Ctx, emit};

/// Arguments of `netsky bench beacons`.
#[derive(Debug, Args)]
pub struct BeaconArgs {
    /// Where to write (default: a temporary folder in $TMPDIR).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Members reporting to the root.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Beacon rounds (one beacon per member each).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Internal: serve as the root of the convergence phase from this home.
    #[arg(long, hide = true, value_name = "DIR")]
    serve_root: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    nodes: usize,
    rounds: usize,
    beacon_bytes: usize,
    view_bytes: usize,
    cpu_per_beacon_us: f64,
    round_p50_ms: f64,
    /// Over the network: every member's first beacon (new connections) taken at the root, ms.
    converge_first_ms: f64,
    /// The same for the next round, ms.
    converge_next_ms: f64,
    /// The root process's resident memory before the members' beacons, KiB.
    root_rss_idle_kb: u64,
    /// The same after two rounds of beacons from every member, KiB.
    root_rss_after_kb: u64,
    /// The beacon interval the convergence target counts in (the default).
    beacon_interval_s: u64,
    targets: Vec<Target>,
}

/// Runs `netsky bench beacons`.
pub fn run(ctx: &Ctx, a: BeaconArgs) -> Result<ExitCode> {
    if let Some(dir) = &a.serve_root {
        return serve_root(dir);
    }
    // Beacons are stamped a second apart per round, within the root's 5-minute skew window.
    if a.nodes == 0 || a.rounds == 0 || a.rounds > 200 {
        bail!("--nodes must be at least 1 and --rounds 1 to 200");
    }
    let tmp = super::scratch(a.dir.as_deref(), "beacons")?;
    let home = crate::home::Home::resolve(Some(tmp.path().join("root")))?;
    let name: netsky_bus::NodeName = "root".parse()?;
    home.create_dirs()?;
    let key = netsky_keys::create_key_file(&home.node_key_path())?.key;
    crate::home::write_durable(
        &home.config_path(),
        crate::config::Config::new(name.clone(), None, None).to_toml().as_bytes(),
    )?;
    let members: Vec<(netsky_bus::NodeName, netsky_keys::SecretKey)> = (0..a.nodes)
        .map(|i| Ok((format!("m{i}").parse()?, netsky_keys::SecretKey::generate())))
        .collect::<Result<_>>()?;
    let paths = home.mesh_paths();
    paths.create()?;
    // The root holds the mesh key, as a root does (it records members' addresses with it).
    let mk = netsky_keys::create_key_file(&paths.mesh_key())?.key;
    let mut all = vec![CharterMember { name: name.clone(), node_id: key.public(), addrs: vec![] }];
    all.extend(members.iter().map(|(n, k)| CharterMember {
        name: n.clone(),
        node_id: k.public(),
        addrs: vec![],
    }));
    let charter = Charter {
        mesh: "bench".into(),
        epoch: 1,
        root: name.clone(),
        members: all,
        revoked: vec![],
        issued: netsky_bus::format_ts(time::OffsetDateTime::now_utc()),
        mesh_key: mk.public(),
    }
    .sign(&mk)?;
    let lock = charter_file::lock(&paths)?;
    charter_file::store(&paths, &lock, &charter)?;
    drop(lock);
    let node = crate::node::Node::open(home.clone())?;
    let health = crate::health::snapshot(&node)?;
    let desk = crate::beacon::Desk::new(home.clone());
    let (mut beacon_bytes, mut rounds) = (0, Vec::new());
    let cpu0 = super::bus::process_cpu();
    let mut signing = std::time::Duration::ZERO;
    let start = time::OffsetDateTime::now_utc();
    for round in 0..a.rounds {
        let t = Instant::now();
        for (n, k) in &members {
            let s = Instant::now();
            let mut h = health.clone();
            h.node = n.to_string();
            // A second apart, as beacons are: the root refuses one no newer than the last.
            h.ts = netsky_bus::format_ts(start + time::Duration::seconds(round as i64));
            let signed =
                crate::beacon::sign(k, &crate::beacon::Beacon { health: h, leaving: false, active: None })?;
            // The members' signing is theirs, not the root's: kept out of the root's figure.
            signing += s.elapsed();
            beacon_bytes = signed.len();
            desk.take(n.as_str(), k.public(), &signed)?;
        }
        rounds.push(super::ms(t.elapsed()));
        // The root takes one beacon per member per half second at most, as a mesh sends them.
        if round + 1 < a.rounds {
            std::thread::sleep(std::time::Duration::from_millis(550));
        }
    }
    let beacons = (a.nodes * a.rounds) as f64;
    let cpu_us = ((super::bus::process_cpu() - cpu0).saturating_sub(signing)).as_secs_f64() * 1e6 / beacons;
    let round_p50 = pct(&mut rounds, 0.5);
    // Then the same members as real endpoints on loopback, each beaconing a root in a process of its own.
    drop(mk);
    let conv = converge(&home, &key, &members, &health)?;
    let (converge_first_ms, converge_next_ms) = (conv.first_ms, conv.next_ms);
    let interval_s = crate::config::Config::new(name.clone(), None, None).node.beacon_interval_s;
    let view_bytes = desk.view_bytes();
    let report = Report {
        nodes: a.nodes,
        rounds: a.rounds,
        beacon_bytes,
        view_bytes,
        cpu_per_beacon_us: cpu_us,
        round_p50_ms: round_p50,
        converge_first_ms,
        converge_next_ms,
        root_rss_idle_kb: conv.rss_idle_kb,
        root_rss_after_kb: conv.rss_after_kb,
        beacon_interval_s: interval_s,
        targets: vec![
            Target {
                name: "root CPU per beacon",
                figure: format!("{cpu_us:.0} us"),
                target: "< 100 us".into(),
                met: cpu_us < 100.0,
            },
            Target::at_most_ms(
                "every member fresh at the root, first round over the network",
                converge_first_ms,
                2.0 * interval_s as f64 * 1e3,
            ),
        ],
    };
    emit(ctx, &report, || {
        format!(
            "{} members, {} rounds: beacon {} bytes, view {} bytes\n  root CPU per beacon {:.0} us; one round (every member once) p50 {:.1} ms\n  over loopback, {} endpoints: every member's beacon taken in {:.0} ms (first round), {:.0} ms (next)\n  root process memory {} KiB idle, {} KiB after\n{}",
            report.nodes,
            report.rounds,
            report.beacon_bytes,
            report.view_bytes,
            report.cpu_per_beacon_us,
            report.round_p50_ms,
            report.nodes + 1,
            report.converge_first_ms,
            report.converge_next_ms,
            report.root_rss_idle_kb,
            report.root_rss_after_kb,
            super::targets_text(&report.targets).trim_end()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The root of the convergence phase, run as `netsky bench beacons
/// --serve-root DIR` by the bench itself: a process of its own, so its
/// memory is its own. Prints its addresses as one JSON line, then serves
/// beacons until SIGTERM (which the bench sends when it is done, or dropped).
fn serve_root(dir: &std::path::Path) -> Result<ExitCode> {
    use std::sync::Arc;
    let home = crate::home::Home::resolve(Some(dir.to_path_buf()))?;
    let config = crate::config::Config::load(&home.config_path())?;
    let key = netsky_keys::load_key_file(&home.node_key_path())?.key;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let desk = Arc::new(crate::beacon::Desk::new(home.clone()));
        let sink: netsky_mesh::BeaconSink = Arc::new(move |peer: &str, id, bytes: &[u8]| {
            desk.take(peer, id, bytes).map_err(|e| format!("{e:#}"))
        });
        let root = netsky_mesh::Mesh::start(netsky_mesh::MeshConfig {
            home: home.root().to_path_buf(),
            name: config.node.name.clone(),
            key,
            listen: "127.0.0.1:0".parse()?,
            relay: netsky_mesh::Relay::Disabled,
            mdns: false,
            agent_exists: Arc::new(|_| true),
            answers: None,
            beacons: Some(sink),
            events: Arc::new(|_| {}),
        })
        .await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        println!("{}", serde_json::to_string(&root.addrs())?);
        term.recv().await;
        root.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What the convergence phase measured.
struct Converged {
    first_ms: f64,
    next_ms: f64,
    rss_idle_kb: u64,
    rss_after_kb: u64,
}

/// Starts the root as a real daemon-side mesh in a process of its own,
/// then times two rounds of every member's signed beacon to it over
/// loopback: the first and the next. Each member beacons from an endpoint
/// of its own with its own key, over a new connection, as `node sleep`
/// does; a full member runtime would also hello the root and probe every
/// other member, which is each machine's own work and, 200 of them in one
/// 2-core process, would measure this process rather than the root.
fn converge(
    home: &crate::home::Home,
    key: &netsky_keys::SecretKey,
    members: &[(netsky_bus::NodeName, netsky_keys::SecretKey)],
    health: &crate::health::Health,
) -> Result<Converged> {
    let args = ["bench".as_ref(), "beacons".as_ref(), "--serve-root".as_ref(), home.root().as_os_str()];
    let log = home.root().join("serve-root.log");
    let (root, line) = crate::proc::Daemon::spawn(&std::env::current_exe()?, &args, "root", &log)?;
    let addrs: Vec<std::net::SocketAddr> =
        serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("the root process printed {line:?}: {e}"))?;
    let pid = root.pid();
    let rss_idle_kb = rss_kb(pid)?;
    let target = CharterMember { name: "root".parse()?, node_id: key.public(), addrs };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let members = std::sync::Arc::new(members.to_vec());
    let times = rt.block_on(rounds(&members, &target, health))?;
    let rss_after_kb = rss_kb(pid)?;
    drop(root);
    Ok(Converged { first_ms: times[0], next_ms: times[1], rss_idle_kb, rss_after_kb })
}

/// A process's resident memory in KiB, from `ps` (Linux and macOS alike).
fn rss_kb(pid: u32) -> Result<u64> {
    let out = crate::proc::run_bounded(
        std::process::Command::new("ps").args(["-o", "rss=", "-p", &pid.to_string()]),
        std::time::Duration::from_secs(5),
    )?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("ps gave no memory figure for {pid}: {e}"))
}

type Members = Vec<(netsky_bus::NodeName, netsky_keys::SecretKey)>;

/// Two rounds of every member's beacon to the root, each timed until the last is taken.
async fn rounds(
    members: &std::sync::Arc<Members>,
    root: &CharterMember,
    health: &crate::health::Health,
) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for round in 0..2 {
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..members.len() {
            let (members, root, mut h) = (members.clone(), root.clone(), health.clone());
            tasks.spawn(async move {
                let (name, k) = &members[i];
                h.node = name.to_string();
                // Newer than the CPU phase's stamps, which the root's view on disk still holds.
                h.ts = netsky_bus::format_ts(
                    time::OffsetDateTime::now_utc() + time::Duration::seconds(100 + round),
                );
                let signed = crate::beacon::sign(
                    k,
                    &crate::beacon::Beacon { health: h, leaving: false, active: None },
                )?;
                netsky_mesh::beacon(k, &root, signed, &netsky_mesh::Relay::Disabled, false)
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
        let mut failed = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r.map(|_| ())) {
                failed.push(format!("{e:#}"));
            }
        }
        if !failed.is_empty() {
            bail!("{} of {} beacons were not taken, first: {}", failed.len(), members.len(), failed[0]);
        }
        times.push(super::ms(t.elapsed()));
        // The root takes one beacon per member per half second.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    }
    Ok(times)
}
