//! `netsky keys show`: this node's identity.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;

use crate::node::Node;
use crate::output::{Ctx, emit};

/// `netsky keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Name, node id, and whether this home holds the mesh key.
    Show,
}

#[derive(Serialize)]
struct Out {
    name: String,
    node_id: String,
    mesh_key: bool,
    home: String,
}

/// Runs `netsky keys`.
pub fn run(ctx: &Ctx, cmd: KeysCmd) -> Result<ExitCode> {
    match cmd {
        KeysCmd::Show => {
            let node = Node::open(ctx.home.clone())?;
            let out = Out {
                name: node.config.node.name.to_string(),
                node_id: node.key.public().to_string(),
                mesh_key: node.home.mesh_paths().mesh_key().exists(),
                home: node.home.root().display().to_string(),
            };
            emit(ctx, &out, || {
                format!(
                    "name      {}\nnode id   {}\nmesh key  {}\nhome      {}",
                    out.name,
                    out.node_id,
                    if out.mesh_key { "held here" } else { "not held here" },
                    out.home
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
