//! The checks themselves, in the order `doctor` reports them.

use std::path::Path;
use std::time::{Duration, SystemTime};

use netsky_keys::SecretKey;

use super::Check;
use crate::config::Config;
use crate::home::Home;
use crate::supervise;

/// Clock skew against the root worth a look, and past which the root refuses beacons.
const SKEW_WARN_S: f64 = 30.0;
const SKEW_FAIL_S: f64 = 300.0;
/// Free space in the home below which the node warns, and fails.
const DISK_WARN: u64 = 1 << 30;
const DISK_FAIL: u64 = 100 << 20;
/// An envelope waiting for another node longer than this is worth a look.
const OUTBOX_WARN: Duration = Duration::from_secs(3600);
const OUTBOX_FAIL: Duration = Duration::from_secs(24 * 3600);

/// Every check on `home`.
pub fn all(home: &Home) -> Vec<Check> {
    let (keys, key) = keys(home);
    let mut out = vec![keys];
    let config = match Config::load(&home.config_path()) {
        Ok(c) => {
            out.push(Check::ok("config", format!("{} parses", home.config_path().display())));
            Some(c)
        }
        Err(e) => {
            out.push(Check::fail(
                "config",
                format!("{e:#}"),
                "fix the named line, or run `netsky init --name NAME` in a new home",
            ));
            None
        }
    };
    let charter = netsky_mesh::charter_file::load(&home.mesh_paths());
    out.push(membership(&config, key.as_ref(), &charter));
    let charter = charter.ok().flatten();
    out.push(daemon(home));
    let root_check = root(home, &config, charter.as_ref());
    let root_down = root_check.verdict == super::Verdict::Fail;
    out.push(root_check);
    let view = crate::beacon::load(home);
    out.push(clock(&config, charter.as_ref(), &view));
    out.push(versions(&view));
    out.push(tmux());
    out.push(disk(home));
    out.push(meta_db(home));
    out.push(outbox(home));
    out.push(poison(home));
    out.push(escalations(home, root_down));
    out.push(owner_legs(&config, charter.as_ref()));
    out.push(supervision(home, config.is_some() && key.is_some()));
    out.push(lkg(home));
    out
}

/// The keys check, and the node key when it loads (the other checks use it).
/// The mode rule is the key file's own (`load_key_file` refuses a key others can read).
fn keys(home: &Home) -> (Check, Option<SecretKey>) {
    use netsky_keys::KeyError;
    let chmod = |path: &Path, mode: u32| {
        Check::fail(
            "keys",
            format!("{} is mode {mode:03o}: others can read a secret key", path.display()),
            format!("chmod 600 '{}'", path.display()),
        )
    };
    let node_key = home.node_key_path();
    let key = match netsky_keys::load_key_file(&node_key) {
        Ok(k) => k.key,
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let fix = "run `netsky init --name NAME` (it never overwrites a key)";
            return (Check::fail("keys", format!("no node key at {}", node_key.display()), fix), None);
        }
        Err(KeyError::Permissions { path, mode }) => return (chmod(&path, mode), None),
        Err(e) => {
            let fix = "restore the key from a backup; a new key is a new node";
            return (Check::fail("keys", format!("{e}"), fix), None);
        }
    };
    let mesh_key = home.mesh_paths().mesh_key();
    let mesh = mesh_key.exists();
    if mesh && let Err(KeyError::Permissions { path, mode }) = netsky_keys::load_key_file(&mesh_key) {
        return (chmod(&path, mode), Some(key));
    }
    let mesh = if mesh { " and the mesh key" } else { "" };
    (Check::ok("keys", format!("node key{mesh} mode 600")), Some(key))
}

fn membership(
    config: &Option<Config>,
    key: Option<&SecretKey>,
    charter: &Result<Option<netsky_mesh::SignedCharter>, netsky_mesh::MeshError>,
) -> Check {
    let c = match charter {
        Err(e) => {
            return Check::fail(
                "charter",
                format!("mesh/charter.json does not verify: {e}"),
                "the root pushes a good one when this node connects; or `netsky mesh join` with a new ticket",
            );
        }
        Ok(None) => {
            return Check::warn(
                "charter",
                "no charter: this node is in no mesh",
                "`netsky mesh init --mesh NAME` (first node) or `netsky mesh join TICKET`",
            );
        }
        Ok(Some(c)) => c,
    };
    let (Some(config), Some(key)) = (config, key) else {
        return Check::warn(
            "charter",
            "charter verified; membership unknown without config and key",
            "see above",
        );
    };
    let me = c.charter.member(&config.node.name);
    if c.charter.revoked.contains(&key.public()) {
        return Check::fail(
            "charter",
            format!("this node was removed from mesh {} (epoch {})", c.charter.mesh, c.charter.epoch),
            "ask the root for a new invite: `netsky mesh invite NAME`, then `netsky mesh join`",
        );
    }
    match me {
        Some(m) if m.node_id == key.public() => Check::ok(
            "charter",
            format!(
                "member {} of mesh {} (epoch {}, root {})",
                m.name, c.charter.mesh, c.charter.epoch, c.charter.root
            ),
        ),
        Some(_) => Check::fail(
            "charter",
            format!("the charter names {} with another node key", config.node.name),
            "this home's key is not the member's: restore its key, or join anew under another name",
        ),
        None => Check::fail(
            "charter",
            format!("{} is not a member of mesh {}", config.node.name, c.charter.mesh),
            "`netsky mesh join TICKET` with an invite from the root",
        ),
    }
}

fn daemon(home: &Home) -> Check {
    match crate::daemon_state::running(home) {
        Some(s) => Check::ok("daemon", format!("running, pid {}, since {}", s.pid, s.started)),
        None => Check::fail(
            "daemon",
            "no daemon runs for this home",
            "`netsky launchd install` (macOS) or `netsky systemd install` (Linux); or `netsky node run`",
        ),
    }
}

fn root(home: &Home, config: &Option<Config>, charter: Option<&netsky_mesh::SignedCharter>) -> Check {
    let (Some(c), Some(config)) = (charter, config) else {
        return Check::ok("root", "no mesh: nothing to reach");
    };
    if c.charter.root == config.node.name {
        return Check::ok("root", "this node is the root");
    }
    let peers = netsky_mesh::PeerState::load_all(&home.mesh_paths());
    match peers.get(c.charter.root.as_str()) {
        Some(p) if p.reachable => {
            Check::ok("root", format!("{} reachable since {}", c.charter.root, p.since))
        }
        Some(p) => Check::fail(
            "root",
            format!(
                "{} unreachable since {}: {}",
                c.charter.root,
                p.since,
                p.last_error.as_deref().unwrap_or("no answer")
            ),
            "check this machine's network and that the root's daemon runs (`netsky mesh status` there)",
        ),
        None => Check::warn(
            "root",
            format!("{} not tried yet", c.charter.root),
            "start the daemon; it connects within a few seconds",
        ),
    }
}

fn clock(
    config: &Option<Config>,
    charter: Option<&netsky_mesh::SignedCharter>,
    view: &crate::beacon::MeshView,
) -> Check {
    let (Some(c), Some(config)) = (charter, config) else {
        return Check::ok("clock", "no mesh: no root to compare with");
    };
    if c.charter.root == config.node.name {
        return Check::ok("clock", "this node is the root: its clock is the reference");
    }
    let Some(me) = view.nodes.get(config.node.name.as_str()) else {
        return Check::warn(
            "clock",
            "the root has not answered a beacon from this node yet",
            "wait a beacon interval with the daemon running",
        );
    };
    let s = me.skew_s;
    let detail = format!("{s:+.1} s against the root (from the last beacon)");
    if s.abs() >= SKEW_FAIL_S {
        Check::fail(
            "clock",
            detail,
            "turn on network time (macOS: System Settings > Date & Time; Linux: timedatectl set-ntp true)",
        )
    } else if s.abs() >= SKEW_WARN_S {
        Check::warn("clock", detail, "turn on network time on the machine that drifts")
    } else {
        Check::ok("clock", detail)
    }
}

fn versions(view: &crate::beacon::MeshView) -> Check {
    let mut by: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (name, n) in &view.nodes {
        by.entry(n.health.version.as_str()).or_default().push(name);
    }
    match by.len() {
        0 => Check::ok("versions", "no beacons heard: nothing to compare"),
        1 => {
            Check::ok("versions", format!("every node heard runs netsky {}", by.keys().next().unwrap_or(&"")))
        }
        _ => Check::warn(
            "versions",
            by.iter().map(|(v, n)| format!("{v} on {}", n.join(", "))).collect::<Vec<_>>().join("; "),
            "install one netsky version on every machine",
        ),
    }
}

fn tmux() -> Check {
    let out = crate::proc::run_bounded(std::process::Command::new("tmux").arg("-V"), Duration::from_secs(5));
    match out {
        Ok(o) if o.status.success() => {
            Check::ok("tmux", String::from_utf8_lossy(&o.stdout).trim().to_string())
        }
        Ok(o) => Check::fail(
            "tmux",
            format!("tmux -V failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
            "reinstall tmux (brew install tmux / apt install tmux)",
        ),
        Err(e) => Check::fail(
            "tmux",
            format!("{e:#}"),
            "install tmux (brew install tmux / apt install tmux); the agents run in it",
        ),
    }
}

fn disk(home: &Home) -> Check {
    match crate::health::disk_free(home.root()) {
        Ok(free) => {
            let detail =
                format!("{:.1} GiB free in the home's filesystem", free as f64 / (1u64 << 30) as f64);
            if free < DISK_FAIL {
                Check::fail("disk", detail, "free space: mail and logs cannot be written durably")
            } else if free < DISK_WARN {
                Check::warn("disk", detail, "free some space before writes start failing")
            } else {
                Check::ok("disk", detail)
            }
        }
        Err(e) => Check::warn("disk", format!("{e:#}"), "check that the home exists and is readable"),
    }
}

fn meta_db(home: &Home) -> Check {
    let path = home.db_path();
    if !path.exists() {
        return Check::warn(
            "meta.db",
            "no meta.db yet",
            "it is made by the first recorded event (start the daemon)",
        );
    }
    let read = || -> anyhow::Result<(i64, String)> {
        let c = crate::store::open_read_only(&path)?;
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let q: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        Ok((v, q))
    };
    let rebuild = "stop the daemon, move meta.db aside; it is rebuilt from logs/ on the next start";
    match read() {
        Ok((v, q)) if q == "ok" && v == crate::store::SCHEMA_VERSION => {
            Check::ok("meta.db", format!("schema {v}, integrity ok"))
        }
        Ok((v, q)) if q == "ok" && v < crate::store::SCHEMA_VERSION => Check::warn(
            "meta.db",
            format!("schema {v}, this netsky writes {}", crate::store::SCHEMA_VERSION),
            "start the daemon: it migrates the schema forward",
        ),
        Ok((v, q)) if q == "ok" => Check::fail(
            "meta.db",
            format!("schema {v} is newer than this netsky's {}", crate::store::SCHEMA_VERSION),
            "run the newer netsky that wrote it",
        ),
        Ok((_, q)) => Check::fail("meta.db", format!("integrity check: {q}"), rebuild),
        Err(e) => Check::fail("meta.db", format!("{e:#}"), rebuild),
    }
}

/// The age of the oldest file in `dir` ending `.json`, and how many there are.
fn oldest_json(dir: &Path) -> (usize, Option<Duration>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return (0, None) };
    let now = SystemTime::now();
    let mut n = 0;
    let mut oldest = None;
    for e in rd.flatten() {
        if !e.file_name().to_str().is_some_and(|f| f.ends_with(".json") && !f.starts_with('.')) {
            continue;
        }
        n += 1;
        let age = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|m| now.duration_since(m).ok());
        oldest = oldest.max(age);
    }
    (n, oldest)
}

fn outbox(home: &Home) -> Check {
    let (n, oldest) = oldest_json(&home.mesh_paths().outbox());
    let Some(age) = oldest else { return Check::ok("outbox", "empty") };
    let detail = format!("{n} envelope(s) waiting for other nodes, the oldest {} min", age.as_secs() / 60);
    let fix = "see which peer is down: `netsky mesh status`; they go as soon as it answers";
    if age >= OUTBOX_FAIL {
        Check::fail("outbox", detail, fix)
    } else if age >= OUTBOX_WARN {
        Check::warn("outbox", detail, fix)
    } else {
        Check::ok("outbox", detail)
    }
}

fn poison(home: &Home) -> Check {
    let channels = home.root().join("channels");
    let mut found: Vec<(String, usize)> = Vec::new();
    let holders = ["agent", "owner"].into_iter().flat_map(|kind| {
        let dir = channels.join(kind);
        let subdirs: Vec<_> = if kind == "owner" {
            vec![dir]
        } else {
            std::fs::read_dir(&dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default()
        };
        subdirs
    });
    for h in holders {
        let n = std::fs::read_dir(h.join("poison"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_str().is_some_and(|f| !f.ends_with(".reason")))
                    .count()
            })
            .unwrap_or(0);
        if n > 0 {
            found.push((h.file_name().and_then(|f| f.to_str()).unwrap_or("?").to_string(), n));
        }
    }
    if found.is_empty() {
        return Check::ok("poison", "no refused input");
    }
    let total: usize = found.iter().map(|(_, n)| n).sum();
    Check::warn(
        "poison",
        format!(
            "{total} refused file(s): {}",
            found.iter().map(|(h, n)| format!("{h} {n}")).collect::<Vec<_>>().join(", ")
        ),
        "read channels/*/<holder>/poison/*.reason; each says why it was refused",
    )
}

fn escalations(home: &Home, root_down: bool) -> Check {
    if root_down {
        return Check::warn(
            "escalations",
            "unknown: the root, which holds them, is unreachable",
            "see the root check; then `netsky escalate ls`",
        );
    }
    // On a member, the root's incidents (asked over the mesh, bounded by the mesh's timeouts).
    let all = crate::node::Node::open(home.clone())
        .and_then(|n| crate::owner::incidents_anywhere(&n))
        .or_else(|e| crate::owner::incidents(home).map_err(|_| e));
    match all {
        Ok(all) => {
            use crate::owner::IncidentState::{Acked, Open};
            let open: Vec<_> = all.iter().filter(|i| i.state == Open).collect();
            let acked = all.iter().filter(|i| i.state == Acked).count();
            match open.first() {
                None if acked == 0 => Check::ok("escalations", "none open"),
                None => Check::warn(
                    "escalations",
                    format!("none open, {acked} acked and not resolved"),
                    "`netsky escalate resolve ID` once each is fixed (`netsky escalate ls`)",
                ),
                Some(first) => Check::warn(
                    "escalations",
                    format!(
                        "{} open ({acked} more acked), the oldest {:?} from {}",
                        open.len(),
                        first.subject,
                        first.origin
                    ),
                    "`netsky escalate ls`, then `netsky escalate ack ID` or `resolve ID`",
                ),
            }
        }
        Err(e) => Check::warn("escalations", format!("{e:#}"), "check state/escalations/"),
    }
}

fn owner_legs(config: &Option<Config>, charter: Option<&netsky_mesh::SignedCharter>) -> Check {
    let Some(config) = config else {
        return Check::warn("owner", "no config: legs unknown", "fix the config");
    };
    let legs = config.owner.legs.len();
    let is_root = charter.is_none_or(|c| c.charter.root == config.node.name);
    match (is_root, legs) {
        (true, 0) => Check::warn(
            "owner",
            "this node is the root and has no owner legs: pages reach nobody",
            "add an [[owner.legs]] section to config.toml, then `netsky owner test`",
        ),
        (true, n) => Check::ok("owner", format!("{n} owner leg(s), active on this root")),
        (false, 0) => Check::ok("owner", "a member: owner messages go through the root"),
        (false, n) => Check::warn(
            "owner",
            format!("{n} owner leg(s) configured, inactive: only the root pages the owner"),
            "move them to the root's config.toml (they act here only after `netsky mesh promote` names this node)",
        ),
    }
}

fn supervision(home: &Home, can_open: bool) -> Check {
    let verb = supervise::platform();
    let install = format!("`netsky {verb} install`");
    if !can_open {
        return Check::warn("supervision", "not checked: config or key broken", "fix those first");
    }
    let status = crate::node::Node::open(home.clone()).and_then(|n| supervise::status(&n));
    let st = match status {
        Ok(s) => s,
        Err(e) => return Check::warn("supervision", format!("{e:#}"), install),
    };
    if !st.state.installed {
        return Check::warn(
            "supervision",
            format!("no {verb} supervision: nothing restarts the daemon after a crash or reboot"),
            install,
        );
    }
    if st.state.binary_exists == Some(false) {
        return Check::fail("supervision", st.state.summary(), install);
    }
    if st.loaded == Some(false) {
        return Check::fail("supervision", format!("{verb} has it installed but not loaded"), install);
    }
    if !st.state.current || !st.shim_current {
        return Check::warn("supervision", st.state.summary(), install);
    }
    let loaded = if st.loaded.is_some() { ", loaded" } else { " (cannot ask the supervisor here)" };
    Check::ok("supervision", format!("{verb} installed, current{loaded}"))
}

fn lkg(home: &Home) -> Check {
    let path = netsky_launchd::lkg_path(home.root());
    if !path.exists() {
        return Check::warn(
            "lkg",
            "no last known good binary yet: a broken upgrade would leave nothing to run",
            "keep the daemon running a few beacon intervals: it promotes itself",
        );
    }
    let p = supervise::lkg::probe(&path);
    if p.healthy {
        Check::ok("lkg", format!("{} ({})", path.display(), p.detail))
    } else {
        Check::fail(
            "lkg",
            format!("{} is broken: {}", path.display(), p.detail),
            "delete it; a healthy daemon promotes itself again",
        )
    }
}
