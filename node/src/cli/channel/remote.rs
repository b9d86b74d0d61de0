//! `channel send --wait` to an agent on another node: the signed envelope
//! is already durable in `mesh/outbox/` (see [`crate::channel::send`]),
//! where the daemon picks it up at once; this waits for the remote's
//! acknowledgement (or refusal).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use netsky_bus::{Envelope, NodeName};

use crate::channel::SendOut;
use crate::daemon_state;
use crate::node::Node;
use crate::output::{Ctx, emit};

/// Waits up to `wait` for node `target` to acknowledge `env`, queued in the outbox.
pub fn wait(
    ctx: &Ctx,
    node: &Node,
    target: &NodeName,
    env: &Envelope,
    mut out: SendOut,
    wait: Duration,
) -> Result<ExitCode> {
    let paths = node.home.mesh_paths();
    let file = env.file_name();
    if !daemon_state::is_running(&node.home) {
        bail!(
            "envelope {} is queued in the outbox, but no daemon runs to send it: start `netsky node run` (it will go then)",
            env.id
        );
    }
    let deadline = Instant::now() + wait;
    let queued = paths.outbox().join(&file);
    let refused = paths.refused().join(&file);
    let sent = paths.sent().join(&file);
    loop {
        if refused.exists() {
            let reason =
                std::fs::read_to_string(paths.refused().join(format!("{file}.reason"))).unwrap_or_default();
            bail!("envelope {} was refused: {}", env.id, reason.trim());
        }
        // Acked: moved to sent/ (or, failing that, deleted; refused.exists() is
        // checked again in case it moved to refused/ between the two looks).
        if sent.exists() || (!queued.exists() && !refused.exists()) {
            out.state = "acked";
            out.detail = Some(format!("durable in {}'s inbox", env.to));
            emit(ctx, &out, || out.id.clone())?;
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            bail!(
                "envelope {} is still queued after {} s (it stays in the outbox and will go when {target} is reachable; \
                 see `netsky channel status {}`)",
                env.id,
                wait.as_secs(),
                env.id
            );
        }
        std::thread::sleep(wait_nap(deadline - wait));
    }
}

/// How long `--wait` naps between looks, `started` that long ago: an ack
/// over a live connection takes about a millisecond, so the first looks
/// come often; a peer that is down gets fewer. (A file watcher would wake
/// at once, but tearing down an inotify instance at exit costs the
/// process about 7 ms here, more than it saves.)
fn wait_nap(started: Instant) -> Duration {
    match started.elapsed() {
        e if e < Duration::from_millis(200) => Duration::from_millis(1),
        e if e < Duration::from_secs(2) => Duration::from_millis(5),
        _ => Duration::from_millis(25),
    }
}
