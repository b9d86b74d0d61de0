//! Where an envelope is, from the sender's side (`netsky channel status ID`
//! and the MCP server's `status` tool), told from the outbox, the delivery
//! receipts that came back, the event record and the local mailboxes.

use anyhow::{Context, Result};
use netsky_bus::{AgentName, Envelope};
use netsky_mesh::{PeerState, SpooledReceipt};
use serde::Serialize;

use crate::daemon_state;
use crate::node::Node;
use crate::record::EventKind;

/// One recorded event about the envelope.
#[derive(Debug, Serialize)]
pub struct HistoryRow {
    /// When.
    pub ts: String,
    /// The event's name.
    pub event: String,
    /// More, in words.
    pub detail: Option<String>,
}

/// Where an envelope is.
#[derive(Debug, Serialize)]
pub struct StatusOut {
    /// The envelope id.
    pub id: String,
    /// queued | acked | delivered | refused | inbox | claimed | poisoned
    pub state: String,
    /// Its recipient, when known.
    pub to: Option<String>,
    /// More about the state.
    pub detail: Option<String>,
    /// Its recorded events, oldest first.
    pub history: Vec<HistoryRow>,
}

impl StatusOut {
    /// The human form: the state, then the history.
    pub fn human(&self) -> String {
        let mut s = format!("{} {}", self.id, self.state);
        if let Some(d) = &self.detail {
            s.push_str(&format!(": {d}"));
        }
        for h in &self.history {
            s.push_str(&format!("\n  {} {} {}", h.ts, h.event, h.detail.as_deref().unwrap_or("")));
        }
        s
    }
}

/// Where envelope `id` is, as this node knows it.
pub fn lookup(node: &Node, id: ulid::Ulid) -> Result<StatusOut> {
    let file = format!("{id}.json");
    let paths = node.home.mesh_paths();
    let history = history(node, &id.to_string());
    let mut out = StatusOut { id: id.to_string(), state: String::new(), to: None, detail: None, history };
    let queued = paths.outbox().join(&file);
    if let Ok(env) = netsky_bus::read_envelope_file(&queued)
        .map_err(|r| r.to_string())
        .and_then(|b| Envelope::from_json(&b).map_err(|r| r.to_string()))
    {
        out.state = "queued".into();
        out.to = Some(env.to.to_string());
        let peer = env.to.node().map(|n| n.to_string()).unwrap_or_default();
        out.detail = Some(if !daemon_state::is_running(&node.home) {
            "waiting: no daemon runs to send it (start `netsky node run`)".into()
        } else {
            match peer_state(node, &peer) {
                Some(p) if !p.reachable => format!(
                    "waiting: {peer} unreachable since {}{}",
                    p.since,
                    p.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
                ),
                _ => format!("sending to {peer}"),
            }
        });
    } else if let Some(r) = std::fs::read(paths.delivered().join(&file))
        .ok()
        .filter(|b| b.len() < 64 * 1024)
        .and_then(|b| serde_json::from_slice::<SpooledReceipt>(&b).ok())
    {
        out.state = "delivered".into();
        out.to = Some(format!("{}@{}", r.receipt.agent, r.node));
        out.detail = Some(format!("{} by {} at {}", r.receipt.how, r.node, r.receipt.at));
    } else if paths.refused().join(&file).exists() {
        out.state = "refused".into();
        let reason =
            std::fs::read_to_string(paths.refused().join(format!("{file}.reason"))).unwrap_or_default();
        out.detail = Some(reason.trim().to_string());
    } else if let Some(env) = netsky_bus::read_envelope_file(&paths.sent().join(&file))
        .ok()
        .and_then(|b| Envelope::from_json(&b).ok())
    {
        out.state = "acked".into();
        out.to = Some(env.to.to_string());
        out.detail = Some(format!("durable in {}'s inbox; no delivery receipt yet", env.to));
    } else if let Some((state, detail)) = out.history.iter().rev().find_map(|h| {
        let state = match EventKind::parse(&h.event)? {
            EventKind::RemoteDelivered => "delivered",
            EventKind::Acked => "acked",
            EventKind::RemoteRefused => "refused",
            _ => return None,
        };
        Some((state, h.detail.clone()))
    }) {
        out.state = state.into();
        out.detail = detail;
    } else if let Some((agent, folder)) = find_local(node, &file)? {
        out.state = match folder {
            "poison" => "poisoned".into(),
            f => f.to_string(),
        };
        out.to = Some(format!("{agent}@{}", node.config.node.name));
        if folder == "poison" {
            let reason = node.home.layout().mailbox_dir(agent).join("poison").join(format!("{file}.reason"));
            out.detail = std::fs::read_to_string(reason).ok().map(|s| s.trim().to_string());
        }
    } else {
        anyhow::bail!(
            "no envelope {id} is known to this node (not queued, refused, recorded, or in a mailbox)"
        );
    }
    Ok(out)
}

fn peer_state(node: &Node, peer: &str) -> Option<PeerState> {
    PeerState::load_all(&node.home.mesh_paths()).remove(peer)
}

fn find_local(node: &Node, file: &str) -> Result<Option<(AgentName, &'static str)>> {
    let layout = node.home.layout();
    for agent in layout.agents().context("cannot list the mailboxes")? {
        for folder in ["inbox", "claimed", "delivered", "poison"] {
            if layout.mailbox_dir(agent).join(folder).join(file).symlink_metadata().is_ok() {
                return Ok(Some((agent, folder)));
            }
        }
    }
    Ok(None)
}

/// The envelope's recorded events: from meta.db, else from the event logs.
fn history(node: &Node, id: &str) -> Vec<HistoryRow> {
    let from_db = || -> Result<Vec<HistoryRow>> {
        crate::store::refresh(&node.home);
        let conn = crate::store::open_read_only(&node.home.db_path())?;
        let mut st =
            conn.prepare("SELECT ts, event, detail FROM events WHERE envelope_id = ?1 ORDER BY seq")?;
        let rows =
            st.query_map([id], |r| Ok(HistoryRow { ts: r.get(0)?, event: r.get(1)?, detail: r.get(2)? }))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    };
    // The database answers, even with nothing (an id never seen): the logs are not scanned then.
    if let Ok(rows) = from_db() {
        return rows;
    }
    // The database is the record, the logs are the truth: scan them, a line at a time, when it fails.
    let mut out = Vec::new();
    let mut logs: Vec<_> = std::fs::read_dir(node.home.logs_dir())
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.sort();
    for p in logs {
        let Ok(f) = std::fs::File::open(&p) else { continue };
        use std::io::BufRead;
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok).filter(|l| l.contains(id)) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["envelope"] == id
            {
                out.push(HistoryRow {
                    ts: v["ts"].as_str().unwrap_or("").into(),
                    event: v["event"].as_str().unwrap_or("").into(),
                    detail: v["detail"].as_str().map(str::to_owned),
                });
            }
        }
    }
    out
}
