//! `netsky channel send | status | drain | ls`: the bus from the command line.

mod remote;

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use netsky_bus::{Address, AgentName, Envelope, Guard, Kind, MAX_ENVELOPE_BYTES, Mailbox, format_ts};
use serde::Serialize;

use crate::channel::{self as ops, LsRow};
use crate::node::Node;
use crate::output::{Ctx, emit};
use crate::record::EventKind;

/// How long a drain waits for another holder of the mailbox lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// `netsky channel ...`
#[derive(Debug, Subcommand)]
pub enum ChannelCmd {
    /// Send TEXT to an agent (`agentN` here, `agentN@node` elsewhere) or to `owner`
    /// (through the root); prints the envelope id.
    ///
    /// Exits 0 only once the signed envelope is durable in the target inbox.
    Send {
        /// Recipient: agentN, agentN@node, owner.
        to: Address,
        /// The message; `-` reads it from stdin.
        text: String,
        /// Sending agent on this node (default: $AGENT_N, else agent0).
        #[arg(long)]
        from: Option<AgentName>,
        /// message | brief | reply | escalation | owner.
        #[arg(long, default_value = "message")]
        kind: Kind,
        /// The envelope this one answers.
        #[arg(long)]
        in_reply_to: Option<ulid::Ulid>,
        /// Wait for the recipient's acknowledgement (local sends are acknowledged on return).
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits, in seconds.
        #[arg(long, default_value_t = 30, requires = "wait")]
        timeout: u64,
    },
    /// Where envelope ID is: queued (and why), acked, delivered, or refused (and why).
    Status {
        /// The envelope id printed by `channel send`.
        id: ulid::Ulid,
    },
    /// Claim, print and mark delivered every waiting envelope of AGENT, oldest first.
    Drain {
        /// The agent whose mailbox to drain.
        agent: AgentName,
        /// At most this many envelopes.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
    /// Count envelopes per lifecycle folder (inbox, claimed, delivered, poison).
    Ls {
        /// One agent; all agents with a mailbox when omitted.
        agent: Option<AgentName>,
    },
}

/// Runs `netsky channel`.
pub fn run(ctx: &Ctx, cmd: ChannelCmd) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    match cmd {
        ChannelCmd::Send { to, text, from, kind, in_reply_to, wait, timeout } => {
            let wait = wait.then(|| Duration::from_secs(timeout.max(1)));
            send(ctx, &node, Outgoing { to, text, from, kind, in_reply_to }, wait)
        }
        ChannelCmd::Status { id } => {
            let out = ops::status::lookup(&node, id)?;
            emit(ctx, &out, || out.human())?;
            Ok(ExitCode::SUCCESS)
        }
        ChannelCmd::Drain { agent, max } => drain(ctx, &node, agent, max),
        ChannelCmd::Ls { agent } => ls(ctx, &node, agent),
    }
}

/// The sending agent: `--from`, else `$AGENT_N` (`3`, `agent3`, `infinity`), else agent0.
pub(super) fn sender(from: Option<AgentName>) -> Result<AgentName> {
    if let Some(a) = from {
        return Ok(a);
    }
    match std::env::var("AGENT_N") {
        Ok(v) if !v.is_empty() => {
            let name = if v.starts_with("agent") { v.clone() } else { format!("agent{v}") };
            name.parse().with_context(|| format!("AGENT_N={v:?} is not an agent"))
        }
        _ => Ok(AgentName::ROOT),
    }
}

fn read_text(text: String) -> Result<String> {
    if text != "-" {
        return Ok(text);
    }
    let mut buf = String::new();
    std::io::stdin()
        .take(MAX_ENVELOPE_BYTES as u64 + 1)
        .read_to_string(&mut buf)
        .context("cannot read the message from stdin (is it UTF-8?)")?;
    if buf.len() > MAX_ENVELOPE_BYTES {
        bail!("the message on stdin is over {MAX_ENVELOPE_BYTES} bytes");
    }
    Ok(buf.strip_suffix('\n').map(str::to_owned).unwrap_or(buf))
}

/// What `channel send` was asked to send.
struct Outgoing {
    to: Address,
    text: String,
    from: Option<AgentName>,
    kind: Kind,
    in_reply_to: Option<ulid::Ulid>,
}

fn send(ctx: &Ctx, node: &Node, o: Outgoing, wait: Option<Duration>) -> Result<ExitCode> {
    let text = read_text(o.text)?;
    let from = sender(o.from)?;
    let sent =
        ops::send(node, ops::Outgoing { to: o.to, text, from, kind: o.kind, in_reply_to: o.in_reply_to })?;
    match (&sent.queued_for, wait) {
        (Some(target), Some(wait)) => remote::wait(ctx, node, target, &sent.env, sent.out, wait),
        _ => {
            emit(ctx, &sent.out, || sent.out.id.clone())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Serialize)]
struct Delivered {
    id: String,
    kind: &'static str,
    from: String,
    to: String,
    ts: String,
    text: String,
    in_reply_to: Option<String>,
    adopted: bool,
}

#[derive(Serialize)]
struct Refused {
    file: String,
    kind: &'static str,
    reason: String,
}

#[derive(Serialize)]
struct DrainOut {
    agent: String,
    delivered: Vec<Delivered>,
    poisoned: Vec<Refused>,
}

fn drain(ctx: &Ctx, node: &Node, agent: AgentName, max: usize) -> Result<ExitCode> {
    if let Some(s) = crate::mcp::served(&node.home.layout(), agent) {
        bail!(
            "{agent}'s mailbox is served by `netsky mcp serve` (pid {}, since {}): its mail goes to that MCP client",
            s.pid,
            s.since
        );
    }
    let mailbox = Mailbox::open(&node.home.layout(), &node.config.node.name, agent)?;
    let lock = mailbox.lock(LOCK_WAIT)?;
    let guard = Guard::new(&node.roster);
    let rec = &node.recorder;
    // A full checkpoint first: where no daemon runs, drains are what retire
    // the mailbox's journals, and what lays out a record a killed send left
    // only in the segment, so this drain delivers it rather than the next.
    let mut events: Vec<_> = rec.recovered(agent, &mailbox.checkpoint(&lock)).into_iter().collect();
    let netsky_bus::Claim { claimed, poisoned, recovered } = mailbox.claim(&lock, &guard, max)?;
    events.extend(rec.recovered(agent, &recovered));
    events.extend(rec.claim_events(Some(agent), &poisoned, &claimed));
    rec.record(&events);
    for p in &poisoned {
        eprintln!("netsky: refused {} in {agent}'s inbox: {}", p.file, p.refusal);
    }
    let out = DrainOut {
        agent: agent.to_string(),
        delivered: claimed
            .iter()
            .map(|c| Delivered {
                id: c.env.id.to_string(),
                kind: c.env.kind.as_str(),
                from: c.env.from.to_string(),
                to: c.env.to.to_string(),
                ts: format_ts(c.env.ts),
                text: c.env.text.clone(),
                in_reply_to: c.env.in_reply_to.map(|u| u.to_string()),
                adopted: c.adopted,
            })
            .collect(),
        poisoned: poisoned
            .iter()
            .map(|p| Refused {
                file: p.file.clone(),
                kind: p.refusal.kind.as_str(),
                reason: p.refusal.reason.clone(),
            })
            .collect(),
    };
    // Print first, mark delivered after: if stdout is gone, the envelopes stay
    // claimed and the next drain adopts them. Nothing is lost.
    emit(ctx, &out, || claimed.iter().map(|c| c.env.render_channel()).collect::<Vec<_>>().join("\n"))?;
    std::io::stdout().flush()?;
    mailbox.deliver(&lock, &claimed)?;
    let envs: Vec<&Envelope> = claimed.iter().map(|c| &c.env).collect();
    if let Err(e) = crate::receipts::spool(node, agent, "drained", &envs) {
        eprintln!("netsky: delivered, but the receipts for the senders could not be spooled: {e:#}");
    }
    let events: Vec<_> =
        claimed.iter().map(|c| rec.event(EventKind::Delivered, Some(agent), Some(&c.env), None)).collect();
    rec.record(&events);
    Ok(ExitCode::SUCCESS)
}

fn ls(ctx: &Ctx, node: &Node, agent: Option<AgentName>) -> Result<ExitCode> {
    let layout = node.home.layout();
    let agents = match agent {
        Some(a) => vec![a],
        None => layout.agents().with_context(|| format!("cannot list {}", layout.agents_dir().display()))?,
    };
    let mut rows: Vec<LsRow> = Vec::new();
    for a in agents {
        rows.push(ops::counts(node, a)?);
    }
    let human = || {
        let mut s =
            format!("{:<14} {:>7} {:>7} {:>9} {:>6}", "AGENT", "INBOX", "CLAIMED", "DELIVERED", "POISON");
        for r in &rows {
            s.push_str(&format!(
                "\n{:<14} {:>7} {:>7} {:>9} {:>6}",
                r.agent, r.inbox, r.claimed, r.delivered, r.poison
            ));
        }
        s
    };
    match (agent, rows.as_slice()) {
        (Some(_), [row]) => emit(ctx, row, human)?,
        _ => emit(ctx, &rows, human)?,
    }
    Ok(ExitCode::SUCCESS)
}
