//! `netsky mcp serve AGENT`: a stdio MCP server (rmcp) for one agent, the
//! second way mail reaches an agent beside pasting into its pane.
//!
//! It declares the channel capability (`experimental: {"claude/channel": {}}`),
//! pushes every envelope claimed for the agent as a
//! `notifications/claude/channel` notification ([`push`]), offers the bus
//! as tools ([`tools`]), and with `--permissions relay` asks the owner
//! about Claude Code's tool-approval prompts ([`permission`]). While it runs
//! it holds the agent's serve lock ([`served`]): one deliverer per mailbox.
//!
//! "Delivered" here means written to the client's stdout and flushed, not
//! read by the model: the server cannot see what the client does with it
//! (see docs/mcp.md).
//!
//! Tasks: the rmcp service (its own tasks, ended by its cancellation token
//! or the client closing stdin) and the pusher thread, which `run` stops
//! with [`push::Wake::Shutdown`] and joins before returning.

pub mod launch;
pub mod permission;
pub mod push;
pub mod served;
pub mod tools;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use netsky_bus::{AgentName, format_ts};
use rmcp::ServiceExt;
use rmcp::transport::async_rw::AsyncRwTransport;
use tokio_util::sync::CancellationToken;

use crate::home::Home;
use crate::node::Node;
use crate::record::EventKind;

pub use served::{Served, is_served, served};

/// The longest JSON-RPC line read from the client; a longer one is dropped
/// (and logged) and the server goes on. An envelope is at most 64 KiB.
const MAX_LINE: usize = 1 << 20;

/// What `mcp serve` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The agent whose mailbox it serves.
    pub agent: AgentName,
    /// Relay Claude Code's permission prompts to the owner.
    pub relay: bool,
    /// How long the owner has to answer a permission prompt before it is denied.
    pub permission_timeout: Duration,
    /// How long one notification may take to be written and flushed before the server gives up.
    pub push_timeout: Duration,
}

/// Serves `o.agent` over stdin/stdout until the client goes away.
pub fn serve(home: Home, o: Options) -> Result<()> {
    let node = Arc::new(Node::open(home)?);
    let here = crate::constellation::agents::answered_for(&node.home, &node.config);
    if !here.contains(o.agent) {
        bail!("no agent {} on this node (agent0, agent1..agent{}, agentinfinity)", o.agent, here.clones);
    }
    let me = Served {
        pid: std::process::id(),
        since: format_ts(time::OffsetDateTime::now_utc()),
        permissions: if o.relay { "relay" } else { "off" }.into(),
    };
    let _lock = served::take(&node.home.layout(), o.agent, &me)?;
    let rec = &node.recorder;
    rec.record(&[rec.event(
        EventKind::McpServing,
        Some(o.agent),
        None,
        Some(format!("pid {}, permissions {}", me.pid, me.permissions)),
    )]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("netsky-mcp")
        .enable_all()
        .build()
        .context("cannot start the MCP server's runtime")?;
    let res = rt.block_on(run(node.clone(), o.clone()));
    // A read of stdin may still be parked in the runtime; it must not hold the exit.
    rt.shutdown_timeout(Duration::from_millis(500));
    let why = match &res {
        Ok(why) => why.clone(),
        Err(e) => format!("{e:#}"),
    };
    rec.record(&[rec.event(EventKind::McpStopped, Some(o.agent), None, Some(why))]);
    res.map(|_| ())
}

/// Runs the service and the pusher; returns why it stopped.
async fn run(node: Arc<Node>, o: Options) -> Result<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let started = Arc::new(AtomicBool::new(false));
    let pending = Arc::new(permission::Pending::default());
    let handler = tools::Handler(Arc::new(tools::Inner {
        node: node.clone(),
        agent: o.agent,
        relay: o.relay,
        permission_timeout: o.permission_timeout,
        pending: pending.clone(),
        started: started.clone(),
        wake: tx.clone(),
    }));
    let stop = CancellationToken::new();
    let (r, w) = rmcp::transport::stdio_pipes();
    let transport = AsyncRwTransport::new_server(r, w).with_max_line_length(MAX_LINE);
    let running = match handler.serve_with_ct(transport, stop.clone()).await {
        Ok(r) => r,
        Err(e) => return Ok(format!("the client went away before initializing ({e})")),
    };
    let pusher = push::spawn(
        push::Pusher {
            node,
            agent: o.agent,
            peer: running.peer().clone(),
            rt: tokio::runtime::Handle::current(),
            started,
            pending,
            relay: o.relay,
            stop: stop.clone(),
            push_timeout: o.push_timeout,
        },
        tx.clone(),
        rx,
    )?;
    // The service ends when the client closes its end; the pusher ends it
    // when it cannot write (the service itself would wait for the stuck write).
    let quit = tokio::select! {
        q = running.waiting() => Some(q),
        _ = stop.cancelled() => None,
    };
    // The client closed its end: a push cut short by that is no failure of
    // the server (its envelope stays claimed for the next one).
    let client_left = matches!(quit, Some(Ok(rmcp::service::QuitReason::Closed)));
    let pushed = tokio::task::spawn_blocking(move || {
        let _ = tx.send(push::Wake::Shutdown);
        pusher.join()
    })
    .await
    .context("the pusher could not be joined")?;
    match pushed {
        Ok(Ok(())) => Ok(match quit {
            Some(q) => format!("{q:?}").to_lowercase(),
            None => "cancelled".into(),
        }),
        Ok(Err(e)) if client_left => Ok(format!("the client closed its end; {e:#}")),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("the pusher thread panicked"),
    }
}
