//! `netsky mesh ...`: create a mesh, invite and admit nodes, inspect and
//! change the charter.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use netsky_bus::{NodeName, format_ts};
use netsky_mesh::{Charter, CharterMember, PeerState, SignedCharter, Ticket, TicketBody, charter_file};
use serde::Serialize;
use time::OffsetDateTime;

use crate::daemon_state;
use crate::node::Node;
use crate::output::{Ctx, emit};
use crate::record::EventKind;

/// `netsky mesh ...`
#[derive(Debug, Subcommand)]
pub enum MeshCmd {
    /// Make this node the root of a new mesh (epoch 1); creates keys/mesh.key.
    Init {
        /// The mesh's name.
        #[arg(long)]
        mesh: String,
    },
    /// Print a one-line join ticket for node NAME (root only).
    Invite {
        /// The name the new node will have.
        name: NodeName,
        /// How long the ticket is valid: 90s, 30m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Join a mesh with a ticket from its root; afterwards this node holds the charter.
    Join {
        /// The ticket line printed by `netsky mesh invite`.
        ticket: String,
    },
    /// Members: name, node id, role, reachability as this node sees it.
    Status,
    /// The current charter, verified.
    Charter,
    /// Revoke NAME (new epoch); its connections are refused from then on (root only).
    /// Let NODE be silent for DURATION (e.g. 8h) without a page: a maintenance window (any node; kept by the root).
    Snooze {
        /// The node.
        name: NodeName,
        /// How long: 90s, 30m, 8h, 2d.
        #[arg(value_parser = parse_ttl)]
        duration: Duration,
    },
    Remove {
        /// The member to revoke.
        name: NodeName,
    },
    /// Hand the root role (and the mesh key) to member NAME (new epoch; root only).
    Promote {
        /// The member that becomes root; its daemon must be running.
        name: NodeName,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number and a unit, like 30m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" | "" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 || secs > 30 * 86_400 {
        return Err(format!("{s:?}: between 1 s and 30 days"));
    }
    Ok(Duration::from_secs(secs))
}

/// Runs `netsky mesh`.
pub fn run(ctx: &Ctx, cmd: MeshCmd) -> Result<ExitCode> {
    let node = Node::open(ctx.home.clone())?;
    match cmd {
        MeshCmd::Init { mesh } => init(ctx, &node, mesh),
        MeshCmd::Invite { name, ttl } => invite(ctx, &node, name, ttl),
        MeshCmd::Snooze { name, duration } => snooze(ctx, &node, &name, duration),
        MeshCmd::Join { ticket } => join(ctx, &node, &ticket),
        MeshCmd::Status => status(ctx, &node),
        MeshCmd::Charter => charter(ctx, &node),
        MeshCmd::Remove { name } => remove(ctx, &node, name),
        MeshCmd::Promote { name } => promote(ctx, &node, name),
    }
}

fn held(node: &Node) -> Result<SignedCharter> {
    node.charter
        .clone()
        .context("this node is in no mesh: run `netsky mesh init --mesh NAME` or `netsky mesh join TICKET`")
}

fn root_key(node: &Node) -> Result<(SignedCharter, netsky_keys::SecretKey)> {
    let c = held(node)?;
    if c.charter.root != node.config.node.name {
        bail!("only the root ({}) can do this; this node is {}", c.charter.root, node.config.node.name);
    }
    let mk = charter_file::mesh_key(&node.home.mesh_paths())?
        .context("this node is root but holds no keys/mesh.key; it cannot sign charters")?;
    if mk.public() != c.charter.mesh_key {
        bail!("keys/mesh.key is not the key of this mesh's charter");
    }
    Ok((c, mk))
}

/// This node's dialable addresses: the running daemon's, else none yet.
fn own_addrs(node: &Node) -> Vec<SocketAddr> {
    daemon_state::running(&node.home).map(|s| s.addrs).unwrap_or_default()
}

fn init(ctx: &Ctx, node: &Node, mesh: String) -> Result<ExitCode> {
    if mesh.is_empty() || mesh.len() > 64 || mesh.chars().any(|c| c.is_control() || c.is_whitespace()) {
        bail!("mesh name {mesh:?}: 1 to 64 characters, no spaces");
    }
    if let Some(c) = &node.charter {
        bail!(
            "this node is already in mesh {:?} (epoch {}, root {})",
            c.charter.mesh,
            c.charter.epoch,
            c.charter.root
        );
    }
    let paths = node.home.mesh_paths();
    paths.create().with_context(|| format!("cannot create {}", paths.dir().display()))?;
    let lock = charter_file::lock(&paths)?;
    let mk = netsky_keys::create_key_file(&paths.mesh_key())?.key;
    let me = CharterMember {
        name: node.config.node.name.clone(),
        node_id: node.key.public(),
        addrs: own_addrs(node),
    };
    let c = Charter {
        mesh: mesh.clone(),
        epoch: 1,
        root: me.name.clone(),
        members: vec![me],
        revoked: vec![],
        issued: format_ts(OffsetDateTime::now_utc()),
        mesh_key: mk.public(),
    }
    .sign(&mk)?;
    charter_file::store(&paths, &lock, &c)?;
    node.recorder.record(&[node.recorder.event(
        EventKind::Charter,
        None,
        None,
        Some(format!("mesh {mesh} created, epoch 1")),
    )]);
    #[derive(Serialize)]
    struct Out {
        mesh: String,
        epoch: u64,
        root: String,
        mesh_key: String,
    }
    let out =
        Out { mesh, epoch: 1, root: node.config.node.name.to_string(), mesh_key: mk.public().to_string() };
    emit(ctx, &out, || format!("mesh {} created; this node ({}) is its root (epoch 1)", out.mesh, out.root))?;
    Ok(ExitCode::SUCCESS)
}

fn snooze(ctx: &Ctx, node: &Node, name: &NodeName, duration: Duration) -> Result<ExitCode> {
    let c = held(node)?;
    if c.charter.member(name).is_none() {
        bail!("{name} is not a member of mesh {}", c.charter.mesh);
    }
    let until = netsky_bus::format_ts(time::OffsetDateTime::now_utc() + duration);
    let op = crate::owner::EscalationOp::Snooze { node: name.to_string(), until: until.clone() };
    let (env, sent) = crate::owner::escalate(node, netsky_bus::AgentName::ROOT, &op)?;
    #[derive(Serialize)]
    struct Out {
        node: String,
        until: String,
        id: String,
    }
    let out = Out { node: name.to_string(), until, id: env.id.to_string() };
    let via = match sent {
        crate::owner::Sent::Desk => "here".to_string(),
        crate::owner::Sent::Queued(root) => format!("through the root {root}"),
    };
    emit(ctx, &out, || format!("{} may be silent until {} without a page ({via})", out.node, out.until))?;
    Ok(ExitCode::SUCCESS)
}

fn invite(ctx: &Ctx, node: &Node, name: NodeName, ttl: Duration) -> Result<ExitCode> {
    let (c, mk) = root_key(node)?;
    if let Some(m) = c.charter.member(&name) {
        bail!(
            "{name} is already a member ({}); remove it first to admit another node under that name",
            m.node_id.fmt_short()
        );
    }
    let mut root_addrs = own_addrs(node);
    if root_addrs.is_empty() {
        root_addrs = c.charter.root_member().map(|m| m.addrs.clone()).unwrap_or_default();
    }
    if root_addrs.is_empty() {
        bail!(
            "this node has no known address yet: start its daemon (`netsky node run`) so the ticket can say where to join"
        );
    }
    let expires = OffsetDateTime::now_utc().unix_timestamp() + ttl.as_secs() as i64;
    let body = TicketBody {
        mesh: c.charter.mesh.clone(),
        mesh_key: mk.public(),
        root: node.key.public(),
        root_addrs,
        invitee: name.clone(),
        expires,
        secret: rand::random(),
    };
    let paths = node.home.mesh_paths();
    paths.create()?;
    let record = serde_json::json!({ "name": name.to_string(), "expires": expires });
    netsky_bus::write_durable(
        &paths.tickets(),
        &format!("{}.json", body.secret_hex()),
        record.to_string().as_bytes(),
    )?;
    let ticket = body.sign(&mk).encode();
    node.recorder.record(&[node.recorder.event(
        EventKind::Invited,
        None,
        None,
        Some(format!("{name}, expires {expires}")),
    )]);
    #[derive(Serialize)]
    struct Out {
        ticket: String,
        name: String,
        expires: i64,
    }
    let out = Out { ticket, name: name.to_string(), expires };
    emit(ctx, &out, || out.ticket.clone())?;
    Ok(ExitCode::SUCCESS)
}

fn join(ctx: &Ctx, node: &Node, text: &str) -> Result<ExitCode> {
    let ticket = Ticket::decode(text)?;
    ticket.check_fresh(OffsetDateTime::now_utc().unix_timestamp())?;
    let name = &node.config.node.name;
    if &ticket.body.invitee != name {
        bail!("this ticket admits a node named {}, but this node is {name}", ticket.body.invitee);
    }
    if let Some(c) = &node.charter
        && c.charter.mesh_key != ticket.body.mesh_key
    {
        bail!("this node is already in mesh {:?}; one node belongs to one mesh", c.charter.mesh);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let addrs = own_addrs(node);
    let c = rt.block_on(netsky_mesh::join(
        &node.key,
        name,
        &ticket,
        addrs,
        &node.config.node.relay.to_mesh(),
        node.config.node.mdns,
    ))?;
    let paths = node.home.mesh_paths();
    paths.create()?;
    let d = charter_file::offer(&paths, &c)?;
    let detail = format!("joined mesh {} at epoch {} ({d:?})", c.charter.mesh, c.charter.epoch);
    node.recorder.record(&[node.recorder.event(EventKind::Charter, None, None, Some(detail))]);
    #[derive(Serialize)]
    struct Out {
        mesh: String,
        epoch: u64,
        root: String,
        members: Vec<String>,
    }
    let out = Out {
        mesh: c.charter.mesh.clone(),
        epoch: c.charter.epoch,
        root: c.charter.root.to_string(),
        members: c.charter.members.iter().map(|m| m.name.to_string()).collect(),
    };
    emit(ctx, &out, || {
        format!("joined mesh {} as {name} (epoch {}, root {})", out.mesh, out.epoch, out.root)
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct MemberRow {
    name: String,
    node_id: String,
    role: &'static str,
    reachable: Option<bool>,
    since: Option<String>,
    last_error: Option<String>,
    addrs: Vec<SocketAddr>,
    last_beacon_age_s: Option<u64>,
    agents_up: Option<u32>,
    agents_total: Option<u32>,
    version: Option<String>,
    /// From its beacons at the root: `fresh`, `suspect` (silent), `offline` (announced), or null (never heard).
    beacon: Option<&'static str>,
    /// Its clock minus the root's, from its last beacon.
    clock_skew_s: Option<f64>,
}

fn status(ctx: &Ctx, node: &Node) -> Result<ExitCode> {
    let c = held(node)?;
    let peers = PeerState::load_all(&node.home.mesh_paths());
    let me = daemon_state::running(&node.home);
    // The mesh as the root sees it (every node keeps the root's last answer).
    let view = crate::beacon::load(&node.home);
    let now = time::OffsetDateTime::now_utc();
    let rows: Vec<MemberRow> = c
        .charter
        .members
        .iter()
        .map(|m| {
            let local = m.name == node.config.node.name;
            let p = peers.get(m.name.as_str());
            let b = view.nodes.get(m.name.as_str());
            let age = b
                .and_then(|b| netsky_bus::parse_ts(&b.received))
                .map(|r| (now - r).whole_seconds().max(0) as u64);
            MemberRow {
                name: m.name.to_string(),
                node_id: m.node_id.to_string(),
                role: if m.name == c.charter.root { "root" } else { "member" },
                reachable: if local { Some(me.is_some()) } else { p.map(|p| p.reachable) },
                since: if local {
                    me.as_ref().map(|s| s.started.clone())
                } else {
                    p.map(|p| p.since.clone())
                },
                last_error: p.and_then(|p| p.last_error.clone()).filter(|_| !local),
                addrs: m.addrs.clone(),
                last_beacon_age_s: age,
                agents_up: b.map(|b| b.health.agents_up as u32),
                agents_total: b.map(|b| b.health.agents_total as u32),
                version: b
                    .map(|b| b.health.version.clone())
                    .or_else(|| local.then(|| env!("CARGO_PKG_VERSION").into())),
                beacon: b.map(|b| {
                    if b.leaving {
                        "offline"
                    } else if b.suspect_since.is_some() {
                        "suspect"
                    } else {
                        "fresh"
                    }
                }),
                clock_skew_s: b.map(|b| b.skew_s),
            }
        })
        .collect();
    #[derive(Serialize)]
    struct Out {
        mesh: String,
        epoch: u64,
        root: String,
        members: Vec<MemberRow>,
    }
    let out = Out {
        mesh: c.charter.mesh.clone(),
        epoch: c.charter.epoch,
        root: c.charter.root.to_string(),
        members: rows,
    };
    emit(ctx, &out, || {
        let mut s = format!("mesh {} (epoch {}), root {}\n", out.mesh, out.epoch, out.root);
        s.push_str(&format!(
            "{:<16} {:<7} {:<12} {:<10} {:<9} {:>7} {:>7} {}",
            "NAME", "ROLE", "NODE", "REACHABLE", "BEACON", "AGE", "AGENTS", "ADDRS"
        ));
        for r in &out.members {
            let reach = match r.reachable {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            };
            let addrs: Vec<String> = r.addrs.iter().map(|a| a.to_string()).collect();
            let agents = match (r.agents_up, r.agents_total) {
                (Some(u), Some(t)) => format!("{u}/{t}"),
                _ => "-".into(),
            };
            s.push_str(&format!(
                "\n{:<16} {:<7} {:<12} {:<10} {:<9} {:>7} {:>7} {}",
                r.name,
                r.role,
                &r.node_id[..10],
                reach,
                r.beacon.unwrap_or("-"),
                r.last_beacon_age_s.map_or("-".to_string(), |a| format!("{a}s")),
                agents,
                addrs.join(",")
            ));
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

fn charter(ctx: &Ctx, node: &Node) -> Result<ExitCode> {
    let c = held(node)?;
    emit(ctx, &c, || {
        let ch = &c.charter;
        let mut s = format!(
            "mesh {}\nepoch {}\nroot {}\nissued {}\nmesh key {}\nmembers:",
            ch.mesh, ch.epoch, ch.root, ch.issued, ch.mesh_key
        );
        for m in &ch.members {
            let addrs: Vec<String> = m.addrs.iter().map(|a| a.to_string()).collect();
            s.push_str(&format!("\n  {} {} [{}]", m.name, m.node_id, addrs.join(", ")));
        }
        if !ch.revoked.is_empty() {
            s.push_str("\nrevoked:");
            for r in &ch.revoked {
                s.push_str(&format!("\n  {r}"));
            }
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

fn remove(ctx: &Ctx, node: &Node, name: NodeName) -> Result<ExitCode> {
    let (c, mk) = root_key(node)?;
    if name == c.charter.root {
        bail!("{name} is the root; a mesh cannot remove its root");
    }
    let m = c
        .charter
        .member(&name)
        .cloned()
        .with_context(|| format!("{name} is not a member of mesh {}", c.charter.mesh))?;
    let new = charter_file::amend(&node.home.mesh_paths(), &mk, |ch| {
        ch.members.retain(|x| x.node_id != m.node_id);
        if !ch.revoked.contains(&m.node_id) {
            ch.revoked.push(m.node_id);
        }
        Ok(())
    })?;
    let detail = format!("{name} revoked at epoch {}", new.charter.epoch);
    node.recorder.record(&[node.recorder.event(EventKind::Charter, None, None, Some(detail.clone()))]);
    #[derive(Serialize)]
    struct Out {
        removed: String,
        node_id: String,
        epoch: u64,
    }
    let out = Out { removed: name.to_string(), node_id: m.node_id.to_string(), epoch: new.charter.epoch };
    emit(ctx, &out, || detail.clone())?;
    Ok(ExitCode::SUCCESS)
}

fn promote(ctx: &Ctx, node: &Node, name: NodeName) -> Result<ExitCode> {
    let (_, mk) = root_key(node)?;
    let paths = node.home.mesh_paths();
    // Held until the end: the daemon must not issue another epoch meanwhile,
    // or the old and the new root would hold different charters of one epoch.
    let lock = charter_file::lock(&paths)?;
    // Read again under the lock: the daemon may have amended it since this command started.
    let c = charter_file::load(&paths)?.context("this node holds no charter")?;
    if c.charter.root != node.config.node.name || c.charter.mesh_key != mk.public() {
        bail!("only the root ({}) can do this; this node is {}", c.charter.root, node.config.node.name);
    }
    let signed = match charter_file::pending_handover(&paths)? {
        // A handover whose answer never came: the very same charter again,
        // never a second one of that epoch (the target may hold the first).
        Some(p) if p.charter.root == name => p,
        Some(p) => bail!(
            "the root role is being handed to {} (epoch {}); run `netsky mesh promote {}` to finish that first",
            p.charter.root,
            p.charter.epoch,
            p.charter.root
        ),
        None => {
            if name == c.charter.root {
                bail!("{name} is the root already");
            }
            if c.charter.member(&name).is_none() {
                bail!("{name} is not a member of mesh {}", c.charter.mesh);
            }
            let signed = charter_file::reissue(&c.charter, &mk, |next| {
                next.root = name.clone();
                Ok(())
            })?;
            charter_file::begin_handover(&paths, &lock, &signed)?;
            signed
        }
    };
    // Where to reach it: the freshest addresses this node holds.
    let target = charter_file::load(&paths)?
        .and_then(|held| held.charter.member(&name).cloned())
        .or_else(|| signed.charter.member(&name).cloned())
        .with_context(|| format!("{name} is not a member of mesh {}", c.charter.mesh))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(netsky_mesh::handover(
        &node.key,
        &target,
        &mk,
        &signed,
        &node.config.node.relay.to_mesh(),
        node.config.node.mdns,
    ))
    .with_context(|| {
        format!(
            "{name} did not confirm taking the root role (epoch {}); this node stays root and issues \
             nothing else until `netsky mesh promote {name}` is run again and confirmed",
            signed.charter.epoch
        )
    })?;
    // One holder of the mesh key: the new root has it now.
    charter_file::finish_handover(&paths, &lock, &signed)?;
    drop(lock);
    let detail = format!("root handed to {name} at epoch {}", signed.charter.epoch);
    node.recorder.record(&[node.recorder.event(EventKind::Charter, None, None, Some(detail.clone()))]);
    #[derive(Serialize)]
    struct Out {
        root: String,
        epoch: u64,
    }
    let out = Out { root: name.to_string(), epoch: signed.charter.epoch };
    emit(ctx, &out, || detail.clone())?;
    Ok(ExitCode::SUCCESS)
}
