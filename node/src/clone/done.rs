//! Whether a clone is done with its brief: it said so on the bus (an
//! envelope of kind `reply` from it to agent0 since the brief), or it pushed
//! its branch to the repository it was cloned from.

use anyhow::Result;
use netsky_bus::{Address, AgentName, parse_ts};

use super::Dispatch;
use crate::node::Node;

/// How much of each day's event log is read, from its end.
const MAX_LOG_TAIL: u64 = 16 << 20;

/// How the clone said it was done, if it did.
pub fn check(node: &Node, d: &Dispatch) -> Result<Option<String>> {
    if crate::git::has(&d.repo, &format!("refs/heads/{}", d.branch))? {
        return Ok(Some(format!("pushed {} to {}", d.branch, d.repo.display())));
    }
    Ok(replied(node, d)?.map(|text| format!("replied: {text}")))
}

/// The text of the clone's first reply to agent0 since its brief, read from the event logs.
fn replied(node: &Node, d: &Dispatch) -> Result<Option<String>> {
    let Ok(agent) = d.agent.parse::<AgentName>() else { return Ok(None) };
    let Some(since) = parse_ts(&d.briefed) else { return Ok(None) };
    let here = &node.config.node.name;
    let from = Address::agent(agent, here.clone()).to_string();
    let to = Address::agent(AgentName::ROOT, here.clone()).to_string();
    let logs = node.home.logs_dir();
    let first_day = crate::store::log_file_name(since.date());
    let mut files: Vec<String> = std::fs::read_dir(&logs)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    files.retain(|f| f.starts_with("events-") && f.as_str() >= first_day.as_str());
    files.sort();
    for f in files {
        let text = crate::home::read_tail(&logs.join(&f), MAX_LOG_TAIL)?;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if !matches!(v["event"].as_str(), Some("sent" | "received")) {
                continue;
            }
            let env = &v["env"];
            let ts_ok = env["ts"].as_str().and_then(parse_ts).is_some_and(|t| t >= since);
            if ts_ok && env["kind"] == "reply" && env["from"] == from.as_str() && env["to"] == to.as_str() {
                let t: String = env["text"].as_str().unwrap_or("").chars().take(200).collect();
                return Ok(Some(t));
            }
        }
    }
    Ok(None)
}
