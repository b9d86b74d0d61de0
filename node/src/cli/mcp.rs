//! `netsky mcp serve AGENT`: the stdio MCP channel server for one agent.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use netsky_bus::AgentName;

use crate::mcp;
use crate::output::Ctx;

/// `netsky mcp ...`
#[derive(Debug, Subcommand)]
pub enum McpCmd {
    /// Serve AGENT's mailbox to an MCP client over stdin/stdout (Claude Code starts it from its
    /// MCP configuration): every envelope for AGENT is pushed as a `notifications/claude/channel`
    /// event, and the bus is offered as tools (send, status, inbox).
    ///
    /// One server per agent: a second is refused, and the pane ticker leaves a served agent alone.
    /// An envelope counts as delivered once it is written to the client's stdout and flushed.
    Serve {
        /// The agent whose mailbox to serve.
        agent: AgentName,
        /// `relay`: Claude Code's tool-permission prompts go to the owner through the root, and the
        /// owner's `allow ID` / `deny ID` (`netsky owner say "agentN@node: allow ID"`) answers them.
        #[arg(long, value_enum, default_value_t = Permissions::Off)]
        permissions: Permissions,
        /// Seconds the owner has to answer a permission prompt; then it is denied.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        permission_timeout: u64,
        /// Seconds one notification may take to be written to a client that stopped reading;
        /// then the server exits 1 and what it claimed waits for the next server.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
        push_timeout: u64,
    },
}

/// What becomes of Claude Code's permission prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Permissions {
    /// Not declared: Claude Code asks in its own terminal.
    Off,
    /// Relayed to the owner; unanswered ones are denied.
    Relay,
}

/// Runs `netsky mcp`.
pub fn run(ctx: &Ctx, cmd: McpCmd) -> Result<ExitCode> {
    match cmd {
        McpCmd::Serve { agent, permissions, permission_timeout, push_timeout } => {
            mcp::serve(
                ctx.home.clone(),
                mcp::Options {
                    agent,
                    relay: permissions == Permissions::Relay,
                    permission_timeout: Duration::from_secs(permission_timeout),
                    push_timeout: Duration::from_secs(push_timeout),
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
