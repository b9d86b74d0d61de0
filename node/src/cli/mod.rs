//! The command line of ARCHITECTURE.md section 10: one module per verb group.

mod agent;
mod channel;
mod clone;
mod doctor;
mod down;
mod escalate;
mod harvest;
mod health;
mod init;
mod keys;
mod mcp;
mod mesh;
mod node;
mod owner;
mod prompts;
mod query;
mod restart;
mod self_repair;
mod status;
mod supervise;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::home::Home;
use crate::output::Ctx;

/// netsky: a node of an operator's mesh of AI-agent machines.
#[derive(Debug, Parser)]
#[command(name = "netsky", version, about, propagate_version = true)]
pub struct Cli {
    /// The node's home directory (default: $NETSKY_HOME, else ~/.netsky).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print one JSON document (or JSON lines where a command streams).
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug; RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new home: node key (mode 0600) and config.toml. Never overwrites a key.
    Init(init::InitArgs),
    /// Show this node's identity.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Send, drain and inspect agent mailboxes.
    #[command(subcommand)]
    Channel(channel::ChannelCmd),
    /// Create, join and inspect the mesh of machines.
    #[command(subcommand)]
    Mesh(mesh::MeshCmd),
    /// The node daemon.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// The MCP channel server: an agent's mail pushed into its MCP client, and the bus as tools.
    #[command(subcommand)]
    Mcp(mcp::McpCmd),
    /// This node's health now (agents, depths, disk, load, tick age); writes state/health.json.
    Health(health::HealthArgs),
    /// Raise, acknowledge, resolve or list incidents for the owner.
    Escalate(escalate::EscalateArgs),
    /// The owner, reached through the root's owner legs.
    #[command(subcommand)]
    Owner(owner::OwnerCmd),
    /// Run read-only SQL over meta.db.
    Query(query::QueryArgs),
    /// Start agent0, agent1..agentN and agentinfinity in tmux, and the heartbeat.
    Up(up::UpArgs),
    /// Stop every agent and the heartbeat `up` started; nothing revives them until `up`.
    Down(down::DownArgs),
    /// Each agent: alive, pid, last output change, inbox, hang suspected, restarts.
    Status(status::StatusArgs),
    /// Stop and start one agent's session now (ends a crash-loop cooldown), optionally with a handoff note.
    Restart(restart::RestartArgs),
    /// Give one agent another runtime (claude, codex, or one under [runtimes]) and restart it.
    Agent(agent::AgentArgs),
    /// Clones: a task in its own workspace checkout and agent (brief, ls, status, wait, kill).
    #[command(subcommand)]
    Clone(clone::CloneCmd),
    /// Bring a clone's commits onto a target branch through a check.
    Harvest(harvest::HarvestArgs),
    /// Render agent prompts.
    #[command(subcommand)]
    Prompts(prompts::PromptsCmd),
    /// Measure netsky against this machine's floors.
    #[command(subcommand)]
    Bench(crate::bench::BenchCmd),
    /// Show the whole system working in temporary homes, then clean up.
    Demo(crate::demo::DemoArgs),
    /// macOS: the launch agent that keeps the daemon running (through the shim).
    #[command(subcommand)]
    Launchd(supervise::SuperviseCmd),
    /// Linux: the systemd user unit that keeps the daemon running (through the shim).
    #[command(subcommand)]
    Systemd(supervise::SuperviseCmd),
    /// Every check of this node: ok, warn or fail, each with its fix; exit 1 on any fail.
    Doctor(doctor::DoctorArgs),
    /// The live and last known good binaries, and what the shim would run.
    #[command(name = "self-repair", subcommand)]
    SelfRepair(self_repair::SelfRepairCmd),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let ctx = Ctx { json: cli.json, home: Home::resolve(cli.home)? };
    match cli.cmd {
        Command::Init(a) => init::run(&ctx, a),
        Command::Keys(c) => keys::run(&ctx, c),
        Command::Channel(c) => channel::run(&ctx, c),
        Command::Mesh(c) => mesh::run(&ctx, c),
        Command::Node(c) => node::run(&ctx, c),
        Command::Mcp(c) => mcp::run(&ctx, c),
        Command::Owner(c) => owner::run(&ctx, c),
        Command::Escalate(a) => escalate::run(&ctx, a),
        Command::Health(a) => health::run(&ctx, a),
        Command::Query(a) => query::run(&ctx, a),
        Command::Up(a) => up::run(&ctx, a),
        Command::Down(a) => down::run(&ctx, a),
        Command::Status(a) => status::run(&ctx, a),
        Command::Restart(a) => restart::run(&ctx, a),
        Command::Agent(a) => agent::run(&ctx, a),
        Command::Clone(c) => clone::run(&ctx, c),
        Command::Harvest(a) => harvest::run(&ctx, a),
        Command::Prompts(c) => prompts::run(&ctx, c),
        Command::Bench(c) => crate::bench::run(&ctx, c),
        Command::Demo(a) => crate::demo::run(&ctx, a),
        Command::Launchd(c) => supervise::run(&ctx, supervise::Supervisor::Launchd, c),
        Command::Systemd(c) => supervise::run(&ctx, supervise::Supervisor::Systemd, c),
        Command::Doctor(a) => doctor::run(&ctx, a),
        Command::SelfRepair(c) => self_repair::run(&ctx, c),
    }
}
