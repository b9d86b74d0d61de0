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
    let mk = netsky_keys::SecretKey::generate();
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
    let view_bytes = desk.view_bytes();
    let report = Report {
        nodes: a.nodes,
        rounds: a.rounds,
        beacon_bytes,
        view_bytes,
        cpu_per_beacon_us: cpu_us,
        round_p50_ms: round_p50,
        targets: vec![Target {
            name: "root CPU per beacon",
            figure: format!("{cpu_us:.0} us"),
            target: "< 100 us".into(),
            met: cpu_us < 100.0,
        }],
    };
    emit(ctx, &report, || {
        format!(
            "{} members, {} rounds: beacon {} bytes, view {} bytes\n  root CPU per beacon {:.0} us; one round (every member once) p50 {:.1} ms\n{}",
            report.nodes,
            report.rounds,
            report.beacon_bytes,
            report.view_bytes,
            report.cpu_per_beacon_us,
            report.round_p50_ms,
            super::targets_text(&report.targets).trim_end()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
