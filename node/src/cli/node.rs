//! `netsky node run | sleep`: the daemon in the foreground, and a planned absence announced.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::node::Node;
use crate::output::{Ctx, emit};

/// `netsky node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Run the daemon in the foreground (launchd/systemd run this); SIGTERM stops it cleanly.
    Run,
    /// Tell the root this node is leaving on purpose (a sleep, a shutdown): it shows
    /// as offline (announced) and pages nobody until its beacons come back.
    Sleep,
}

/// Runs `netsky node`.
pub fn run(ctx: &Ctx, cmd: NodeCmd) -> Result<ExitCode> {
    match cmd {
        NodeCmd::Run => crate::daemon::run(ctx),
        NodeCmd::Sleep => sleep(ctx),
    }
}

fn sleep(ctx: &Ctx) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    let charter = node.current_charter()?.context("this node is in no mesh: there is no root to tell")?;
    let health = crate::health::snapshot(&node)?;
    let signed = crate::beacon::sign(
        &node.key,
        &crate::beacon::Beacon { health, leaving: true, active: crate::beacon::Active::of(&node) },
    )?;
    let name = node.config.node.name.to_string();
    let view = if charter.charter.root == node.config.node.name {
        crate::beacon::Desk::new(node.home.clone()).take(&name, node.key.public(), &signed)?
    } else {
        let root = charter.charter.root_member().context("the charter names no root member")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let relay = node.config.node.relay.to_mesh();
        let view = rt
            .block_on(netsky_mesh::beacon(&node.key, root, signed, &relay, node.config.node.mdns))
            .with_context(|| format!("cannot tell the root {}", root.name))?;
        crate::beacon::keep(&node.home, &view)?;
        view
    };
    let _: crate::beacon::MeshView =
        serde_json::from_slice(&view).context("the root's answer is not a mesh view")?;
    #[derive(serde::Serialize)]
    struct Out {
        node: String,
        announced: bool,
        root: String,
    }
    let out = Out { node: name, announced: true, root: charter.charter.root.to_string() };
    emit(ctx, &out, || {
        format!("{} told {}: asleep (offline, announced) until its beacons resume", out.node, out.root)
    })?;
    Ok(ExitCode::SUCCESS)
}
