//! Spare files kept in the outbox and in the inboxes pushes land in, so the
//! hot path's durable writes allocate no inode (see `netsky_bus::spares`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netsky_bus::AgentName;
use tokio::sync::Notify;
use tracing::debug;

use super::{Shared, lock};
use crate::Ingested;
use crate::wire::Outcome;

/// How often spares are refilled when nothing used one.
const SPARES_RECHECK: Duration = Duration::from_secs(30);
/// Inboxes the mesh keeps spares in at most (agents are many, a node's few are busy).
const SPARE_INBOXES: usize = 64;
/// How long after a spare was used the refill waits.
const SPARES_REFILL_DELAY: Duration = Duration::from_millis(5);

/// Where spares were taken since the last refill.
#[derive(Default)]
pub(super) struct Spares {
    /// Inboxes that took a spare since the last refill pass.
    dirs: Mutex<HashSet<PathBuf>>,
    /// A spare may have been taken: top up soon.
    due: Notify,
}

impl Spares {
    /// A spare may have been taken (the outbox's): refill soon.
    pub(super) fn refill_soon(&self) {
        self.due.notify_one();
    }
}

impl Shared {
    /// Notes the inboxes a push stored into, which took their spares, and
    /// has them refilled soon.
    pub(super) fn note_spares_taken(&self, items: &[Ingested]) {
        {
            let mut dirs = lock(&self.spares.dirs);
            // A mailbox that took one envelope took it into a spare
            // (a batch creates its files); a bound on the folders kept.
            let mut stored: HashMap<AgentName, usize> = HashMap::new();
            for i in items.iter().filter(|i| i.ack.outcome == Outcome::Stored) {
                if let Some(agent) = i.agent {
                    *stored.entry(agent).or_default() += 1;
                }
            }
            for (agent, _) in stored.into_iter().filter(|(_, n)| *n == 1) {
                if dirs.len() < SPARE_INBOXES {
                    dirs.insert(self.layout.inbox_dir(agent));
                }
            }
        }
        self.spares.refill_soon();
    }

    /// Keeps spare files in the outbox and in the inboxes pushes land in.
    /// Refilled a moment after use, never on the path.
    pub(super) async fn spares_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.spares.due.notified() => {}
                _ = tokio::time::sleep(SPARES_RECHECK) => {}
            }
            // Let the write that used the spare finish its round trip first.
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(SPARES_REFILL_DELAY) => {}
            }
            // The inboxes that took a spare since the last pass (taken: a deleted
            // agent's, or one long idle, drops out; new busy ones get in).
            let mut dirs = vec![self.paths.outbox()];
            dirs.extend(std::mem::take(&mut *lock(&self.spares.dirs)));
            let made =
                tokio::task::spawn_blocking(move || netsky_bus::spares::refill_each(dirs)).await.unwrap_or(0);
            debug!(made, "spares refilled");
        }
    }
}
