//! Delivery receipts: when an envelope from another node reaches its agent
//! (pasted into the pane or drained), the receiving node spools a receipt in
//! `mesh/receipts/`, and its daemon carries it back to the sender's node.
//!
//! Both delivery paths use it: the constellation's paste and `channel drain`.

use anyhow::Result;
use netsky_bus::{AgentName, Envelope, format_ts};
use netsky_mesh::{SpooledReceipt, wire::Receipt};

use crate::node::Node;

/// Spools a delivery receipt for each envelope that came from another node.
pub fn spool(node: &Node, agent: AgentName, how: &str, envs: &[&Envelope]) -> Result<()> {
    if node.charter.is_none() {
        return Ok(());
    }
    let local = &node.config.node.name;
    let at = format_ts(time::OffsetDateTime::now_utc());
    let items: Vec<(String, Vec<u8>)> = envs
        .iter()
        .filter_map(|e| {
            let origin = e.from.node().filter(|n| *n != local)?;
            let r = SpooledReceipt {
                node: origin.to_string(),
                receipt: Receipt {
                    id: e.id.to_string(),
                    agent: agent.to_string(),
                    how: how.into(),
                    at: at.clone(),
                },
            };
            Some((e.file_name(), serde_json::to_vec(&r).ok()?))
        })
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    let paths = node.home.mesh_paths();
    paths.create()?;
    netsky_bus::write_durable_batch(&paths.receipts(), &items)?;
    Ok(())
}
