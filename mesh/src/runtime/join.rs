//! The handler for join attempts (ALPN `join`, root only): redeems a ticket
//! into a charter that names the joiner, under a per-joiner failure limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use netsky_bus::NodeName;
use netsky_keys::NodeId;
use tokio::sync::Semaphore;

use super::{Shared, lock};
use crate::MeshEvent;
use crate::charter::{CharterMember, SignedCharter};
use crate::wire::{FRAME_TIMEOUT, JoinRequest, JoinResponse, read_frame, write_frame};

/// Failed join attempts allowed per joining node id per minute; more are refused unread.
const JOIN_FAILURES_PER_MINUTE: u32 = 5;
/// Joins handled at once; more wait (bounds the root's work under a flood).
const JOINS_AT_ONCE: usize = 4;
/// Joiner ids remembered for the failure limit (oldest forgotten first).
const JOINERS_REMEMBERED: usize = 4096;
/// The window the failure limit counts in.
const MINUTE: Duration = Duration::from_secs(60);

/// Answers join attempts, a few at a time.
#[derive(Clone)]
pub(super) struct JoinHandler {
    mesh: Arc<Shared>,
    limit: Arc<JoinLimit>,
}

impl JoinHandler {
    pub(super) fn new(mesh: Arc<Shared>) -> JoinHandler {
        JoinHandler { mesh, limit: Arc::new(JoinLimit::new()) }
    }
}

impl std::fmt::Debug for JoinHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinHandler")
    }
}

impl ProtocolHandler for JoinHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let s = self.mesh.clone();
        let remote = conn.remote_id();
        let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(FRAME_TIMEOUT, conn.accept_bi()).await else {
            return Ok(());
        };
        let Ok(_permit) = self.limit.at_once.acquire().await else { return Ok(()) };
        let resp = if self.limit.spent(&remote) {
            JoinResponse::Refused { reason: "too many failed join attempts; try again in a minute".into() }
        } else {
            match read_frame::<JoinRequest>(&mut recv, 16 * 1024, FRAME_TIMEOUT, "joiner").await {
                Err(e) => JoinResponse::Refused { reason: e.to_string() },
                Ok(req) => {
                    let name = req.name.clone();
                    let s2 = s.clone();
                    match tokio::task::spawn_blocking(move || s2.redeem(remote, req)).await {
                        Ok(Ok(c)) => {
                            s.emit(MeshEvent::Joined {
                                name,
                                node_id: remote.to_string(),
                                epoch: c.charter.epoch,
                            });
                            JoinResponse::Joined { charter: c.to_json() }
                        }
                        Ok(Err(reason)) => JoinResponse::Refused { reason },
                        Err(e) => JoinResponse::Refused { reason: e.to_string() },
                    }
                }
            }
        };
        if let JoinResponse::Refused { reason } = &resp
            && self.limit.failed(remote) <= JOIN_FAILURES_PER_MINUTE
        {
            // Past its limit a joiner's attempts are refused unrecorded: evidence, not a flood.
            s.emit(MeshEvent::JoinRefused { remote: remote.to_string(), reason: reason.clone() });
        }
        let _ = write_frame(&mut send, &resp, "joiner").await;
        // Let the answer reach the joiner before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        Ok(())
    }
}

/// How many joins run at once, and each joiner's failures in its current minute.
struct JoinLimit {
    /// Per joiner id: when its minute started and its failures in it. Per id,
    /// not global: a stranger's failures must not lock out a real joiner.
    failures: Mutex<HashMap<NodeId, (Instant, u32)>>,
    at_once: Semaphore,
}

impl JoinLimit {
    fn new() -> JoinLimit {
        JoinLimit { failures: Mutex::new(HashMap::new()), at_once: Semaphore::new(JOINS_AT_ONCE) }
    }

    /// Whether `id` failed too often this minute to be heard at all.
    fn spent(&self, id: &NodeId) -> bool {
        let g = lock(&self.failures);
        g.get(id).is_some_and(|(start, n)| start.elapsed() < MINUTE && *n >= JOIN_FAILURES_PER_MINUTE)
    }

    /// Counts a failed join of `id`; returns its failures in the current minute.
    fn failed(&self, id: NodeId) -> u32 {
        let mut g = lock(&self.failures);
        if g.len() >= JOINERS_REMEMBERED {
            g.retain(|_, (start, _)| start.elapsed() < MINUTE);
            if g.len() >= JOINERS_REMEMBERED {
                g.clear();
            }
        }
        let e = g.entry(id).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= MINUTE {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
        e.1
    }
}

impl Shared {
    /// Root: redeems a join ticket for the connection's node id.
    fn redeem(self: &Arc<Self>, remote: NodeId, req: JoinRequest) -> Result<SignedCharter, String> {
        let charter = self.charter().ok_or("this node is in no mesh")?;
        if charter.charter.root != self.name {
            return Err(format!("this node is not the root; the root is {}", charter.charter.root));
        }
        let t = crate::Ticket::decode(&req.ticket).map_err(|e| e.to_string())?;
        if t.body.mesh_key != charter.charter.mesh_key || t.body.mesh != charter.charter.mesh {
            return Err("the ticket is for another mesh".into());
        }
        t.check_fresh(time::OffsetDateTime::now_utc().unix_timestamp()).map_err(|e| e.to_string())?;
        let name: NodeName = req.name.parse().map_err(|e: netsky_bus::BusError| e.to_string())?;
        if name != t.body.invitee {
            return Err(format!("the ticket admits {}, not {name}", t.body.invitee));
        }
        if charter.charter.revoked.contains(&remote) {
            return Err("this node id was revoked from the mesh".into());
        }
        if let Some(m) = charter.charter.member(&name)
            && m.node_id != remote
        {
            return Err(format!("the name {name} is taken by another node"));
        }
        // Burn the one-time secret: only one rename can succeed.
        let secret = t.body.secret_hex();
        let pending = self.paths.tickets().join(format!("{secret}.json"));
        let used = self.paths.tickets().join(format!("{secret}.used"));
        if std::fs::rename(&pending, &used).is_err() {
            // The same joiner asking again (its answer was lost): it is in already.
            if used.exists() && charter.charter.member(&name).is_some_and(|m| m.node_id == remote) {
                return Ok((*charter).clone());
            }
            return Err("unknown or already used ticket".into());
        }
        let addrs: Vec<SocketAddr> =
            req.addrs.into_iter().filter(|a| !a.ip().is_unspecified()).take(16).collect();
        self.amend(move |ch| {
            ch.members.retain(|m| m.node_id != remote);
            ch.members.push(CharterMember { name, node_id: remote, addrs });
            Ok(())
        })
        .map_err(|e| {
            // Not admitted after all: the ticket stays good for another try.
            let _ = std::fs::rename(&used, &pending);
            e.to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{JOIN_FAILURES_PER_MINUTE, JoinLimit};
    use netsky_keys::SecretKey;

    #[test]
    fn a_joiner_past_its_failure_limit_is_not_heard_and_others_still_are() {
        let limit = JoinLimit::new();
        let (noisy, other) = (SecretKey::generate().public(), SecretKey::generate().public());
        for n in 1..=JOIN_FAILURES_PER_MINUTE {
            assert!(!limit.spent(&noisy), "heard before failure {n}");
            assert_eq!(limit.failed(noisy), n);
        }
        assert!(limit.spent(&noisy));
        assert!(!limit.spent(&other), "one joiner's failures do not lock out another");
    }
}
