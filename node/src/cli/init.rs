//! `netsky init`: a new home with a node key and config.toml.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use netsky_bus::NodeName;
use serde::Serialize;

use crate::config::{Config, Relay};
use crate::output::{Ctx, emit};

/// Arguments of `netsky init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// This node's name in the mesh: [a-z0-9][a-z0-9-]{0,31}.
    #[arg(long)]
    name: NodeName,
    /// UDP address iroh binds (default 0.0.0.0:0).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// disabled | default | https://your-relay (default: default).
    #[arg(long)]
    relay: Option<Relay>,
}

#[derive(Serialize)]
struct Out {
    name: String,
    node_id: String,
    home: String,
}

/// Runs `netsky init`.
pub fn run(ctx: &Ctx, a: InitArgs) -> Result<ExitCode> {
    let home = &ctx.home;
    let key_path = home.node_key_path();
    if key_path.symlink_metadata().is_ok() {
        bail!(
            "{} already holds a node key ({}); init never overwrites a key: use another --home",
            home.root().display(),
            key_path.display()
        );
    }
    home.create_dirs()?;
    let cfg = Config::new(a.name, a.listen, a.relay);
    let key = netsky_keys::create_key_file(&key_path)?;
    crate::home::write_durable(&home.config_path(), cfg.to_toml().as_bytes())
        .with_context(|| format!("cannot write the config into {}", home.root().display()))?;
    let out = Out {
        name: cfg.node.name.to_string(),
        node_id: key.key.public().to_string(),
        home: home.root().display().to_string(),
    };
    emit(ctx, &out, || format!("initialised node {} ({}) in {}", out.name, out.node_id, out.home))?;
    Ok(ExitCode::SUCCESS)
}
