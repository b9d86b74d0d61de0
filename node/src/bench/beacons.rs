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
    /// The beacon interval the convergence target counts in (the default).
    beacon_interval_s: u64,
    targets: Vec<Target>,
}

/// Runs `netsky bench beacons`.
pub fn run(ctx: &Ctx, a: BeaconArgs) -> Result<ExitCode> {
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
    // Then the same members as real endpoints on loopback, each beaconing the root's
    // (after the CPU figure: their endpoints share this process).
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (converge_first_ms, converge_next_ms) =
        rt.block_on(converge(tmp.path(), &home, &key, &mk, &charter, &members, &health))?;
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
            "{} members, {} rounds: beacon {} bytes, view {} bytes\n  root CPU per beacon {:.0} us; one round (every member once) p50 {:.1} ms\n  over loopback, {} endpoints: every member's beacon taken in {:.0} ms (first round), {:.0} ms (next)\n{}",
            report.nodes,
            report.rounds,
            report.beacon_bytes,
            report.view_bytes,
            report.cpu_per_beacon_us,
            report.round_p50_ms,
            report.nodes + 1,
            report.converge_first_ms,
            report.converge_next_ms,
            super::targets_text(&report.targets).trim_end()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the root and every member as real mesh endpoints on loopback,
/// then times two rounds of every member's beacon to the root: the first
/// (connections new) and the next. Returns both, in ms.
async fn converge(
    base: &std::path::Path,
    home: &crate::home::Home,
    key: &netsky_keys::SecretKey,
    mk: &netsky_keys::SecretKey,
    charter: &netsky_mesh::SignedCharter,
    members: &[(netsky_bus::NodeName, netsky_keys::SecretKey)],
    health: &crate::health::Health,
) -> Result<(f64, f64)> {
    use std::sync::Arc;
    let quiet: netsky_mesh::EventSink = Arc::new(|_| {});
    let desk = Arc::new(crate::beacon::Desk::new(home.clone()));
    let cfg =
        |home: PathBuf, name: netsky_bus::NodeName, key: netsky_keys::SecretKey| netsky_mesh::MeshConfig {
            home,
            name,
            key,
            listen: "127.0.0.1:0".parse().expect("a socket address"),
            relay: netsky_mesh::Relay::Disabled,
            mdns: false,
            agent_exists: Arc::new(|_| true),
            answers: None,
            beacons: None,
            events: quiet.clone(),
        };
    let sink: netsky_mesh::BeaconSink = {
        let desk = desk.clone();
        Arc::new(move |peer: &str, id, bytes: &[u8]| desk.take(peer, id, bytes).map_err(|e| format!("{e:#}")))
    };
    let root_name = charter.charter.root.clone();
    let root = netsky_mesh::Mesh::start(netsky_mesh::MeshConfig {
        beacons: Some(sink),
        ..cfg(home.root().to_path_buf(), root_name.clone(), key.clone())
    })
    .await?;
    // The members dial the root where it listens: a charter that says so.
    let mut c = charter.charter.clone();
    c.epoch += 1;
    for m in c.members.iter_mut().filter(|m| m.name == root_name) {
        m.addrs = root.addrs();
    }
    let signed = c.sign(mk)?;
    let mut meshes = Vec::new();
    for (name, k) in members {
        let dir = base.join(name.as_str());
        let paths = netsky_mesh::MeshPaths::new(&dir);
        paths.create()?;
        let lock = charter_file::lock(&paths)?;
        charter_file::store(&paths, &lock, &signed)?;
        drop(lock);
        meshes.push((
            netsky_mesh::Mesh::start(cfg(dir, name.clone(), k.clone())).await?,
            name.clone(),
            k.clone(),
        ));
    }
    let meshes = Arc::new(meshes);
    let times = rounds(&meshes, health).await;
    // Every endpoint closed, whatever the rounds gave.
    let meshes = Arc::try_unwrap(meshes).map_err(|_| anyhow::anyhow!("a beacon task outlived its round"))?;
    for (m, _, _) in meshes {
        m.shutdown().await;
    }
    root.shutdown().await;
    let times = times?;
    Ok((times[0], times[1]))
}

type Members = Vec<(netsky_mesh::Mesh, netsky_bus::NodeName, netsky_keys::SecretKey)>;

/// Two rounds of every member's beacon to the root, each timed until the last is taken.
async fn rounds(meshes: &std::sync::Arc<Members>, health: &crate::health::Health) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for round in 0..2 {
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..meshes.len() {
            let (meshes, mut h) = (meshes.clone(), health.clone());
            tasks.spawn(async move {
                let (mesh, name, k) = &meshes[i];
                h.node = name.to_string();
                // Newer than the CPU phase's stamps, which the root's view on disk still holds.
                h.ts = netsky_bus::format_ts(
                    time::OffsetDateTime::now_utc() + time::Duration::seconds(100 + round),
                );
                let signed = crate::beacon::sign(
                    k,
                    &crate::beacon::Beacon { health: h, leaving: false, active: None },
                )?;
                mesh.beacon_to_root(signed).await.map_err(anyhow::Error::from)
            });
        }
        let mut failed = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r.map(|_| ())) {
                failed.push(format!("{e:#}"));
            }
        }
        if !failed.is_empty() {
            bail!("{} of {} beacons were not taken, first: {}", failed.len(), meshes.len(), failed[0]);
        }
        times.push(super::ms(t.elapsed()));
        // The root takes one beacon per member per half second.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    }
    Ok(times)
}
