//! `NETSKY_HOME`: where a node's files live. [`Home`] is the node binary's one
//! catalog of paths under it; the bus ([`Layout`]) and the mesh
//! ([`netsky_mesh::MeshPaths`]) keep their own, and `Home` hands them out.
//!
//! It knows paths only: opening a node from them is `node.rs`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use netsky_bus::{AgentName, Layout};

/// A home directory and its well-known paths.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `--home`, else `$NETSKY_HOME`, else `~/.netsky`.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Home> {
        let root = match flag {
            Some(p) => p,
            None => match std::env::var_os("NETSKY_HOME").filter(|v| !v.is_empty()) {
                Some(v) => PathBuf::from(v),
                None => {
                    let home = std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .context("neither --home, NETSKY_HOME nor HOME is set")?;
                    PathBuf::from(home).join(".netsky")
                }
            },
        };
        let root = if root.is_absolute() { root } else { std::env::current_dir()?.join(root) };
        Ok(Home { root })
    }

    /// The home directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config.toml`
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `keys/`
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// `keys/node.key`
    pub fn node_key_path(&self) -> PathBuf {
        self.keys_dir().join("node.key")
    }
    /// `logs/`
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// `state/`
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    /// `state/escalations/`
    pub fn escalations_dir(&self) -> PathBuf {
        self.state_dir().join("escalations")
    }
    /// `state/mesh-health.json`: the mesh as the root sees it (every node keeps a copy).
    pub fn mesh_health_path(&self) -> PathBuf {
        self.state_dir().join("mesh-health.json")
    }
    /// `state/health.json`: this node's latest health snapshot.
    pub fn health_path(&self) -> PathBuf {
        self.state_dir().join("health.json")
    }
    /// `state/owner-pages.jsonl`: every owner page attempt, one line per leg.
    pub fn owner_pages_path(&self) -> PathBuf {
        self.state_dir().join("owner-pages.jsonl")
    }
    /// `state/prompts/`: each agent's rendered prompt.
    pub fn prompts_dir(&self) -> PathBuf {
        self.state_dir().join("prompts")
    }
    /// `state/prompts/<agent>.md`: the prompt `agent` last started with.
    pub fn prompt_path(&self, agent: AgentName) -> PathBuf {
        self.prompts_dir().join(format!("{agent}.md"))
    }
    /// `state/agents/<agent>/`: the watchdog's markers for one agent.
    pub fn agent_state_dir(&self, agent: AgentName) -> PathBuf {
        self.state_dir().join("agents").join(agent.to_string())
    }
    /// `prompts/addendum.md`: the operator's optional addendum to every prompt.
    pub fn prompt_addendum_path(&self) -> PathBuf {
        self.root.join("prompts").join("addendum.md")
    }
    /// `meta.db`
    pub fn db_path(&self) -> PathBuf {
        self.root.join("meta.db")
    }
    /// `state/node.json`
    pub fn node_state_path(&self) -> PathBuf {
        self.state_dir().join("node.json")
    }
    /// `state/.daemon.lock`: held by the running daemon for its whole life.
    pub fn daemon_lock_path(&self) -> PathBuf {
        self.state_dir().join(".daemon.lock")
    }
    /// `state/constellation.json`: what `netsky up N` last asked for.
    pub fn desired_path(&self) -> PathBuf {
        self.state_dir().join("constellation.json")
    }
    /// `state/constellation-down`: present while the constellation is down on purpose.
    pub fn down_mark_path(&self) -> PathBuf {
        self.state_dir().join("constellation-down")
    }
    /// `state/constellation.lock`: serialises `up`, `down`, `restart` and the tick.
    pub fn constellation_lock_path(&self) -> PathBuf {
        self.state_dir().join("constellation.lock")
    }
    /// `state/tick.json`: the heartbeat's last beat.
    pub fn tick_path(&self) -> PathBuf {
        self.state_dir().join("tick.json")
    }
    /// `state/paste/`: scratch files for pasting envelopes into panes.
    pub fn paste_dir(&self) -> PathBuf {
        self.state_dir().join("paste")
    }
    /// The mesh's view of this home.
    pub fn mesh_paths(&self) -> netsky_mesh::MeshPaths {
        netsky_mesh::MeshPaths::new(&self.root)
    }
    /// The bus's view of this home.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.root)
    }

    /// Creates every folder of a home (mode 0700 for the home and its keys).
    pub fn create_dirs(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let layout = self.layout();
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for d in [
            self.root.clone(),
            self.keys_dir(),
            self.logs_dir(),
            self.state_dir(),
            layout.agents_dir(),
            self.mesh_paths().outbox(),
        ] {
            b.create(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(())
    }
}

/// Reads `path` whole, or fails if it holds more than `max` bytes (a file
/// of ours grown past any sane size, or not ours), never reading past that.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut buf))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if buf.len() as u64 > max {
        bail!("{} is over {max} bytes", path.display());
    }
    Ok(buf)
}

/// The whole lines among the last `max` bytes of `path` (an append-only
/// log, read from its end); nothing if it does not exist.
pub fn read_tail(path: &Path, max: u64) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let len = f.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    let from = len.saturating_sub(max);
    f.seek(SeekFrom::Start(from)).with_context(|| format!("cannot seek {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
    // From the middle of the file: the first, cut line is not whole.
    let start = if from > 0 { buf.iter().position(|&b| b == b'\n').map_or(buf.len(), |p| p + 1) } else { 0 };
    Ok(String::from_utf8_lossy(&buf[start..]).into_owned())
}

/// Writes `bytes` durably to `path`, one of [`Home`]'s files, so that each
/// file's place is spelled once, by its `Home` method.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        bail!("{} names no file in a folder", path.display());
    };
    Ok(netsky_bus::write_durable(dir, name, bytes)?)
}

#[cfg(test)]
mod read_tests {
    use super::{read_bounded, read_tail};

    #[test]
    fn a_bounded_read_refuses_more_and_a_tail_keeps_only_whole_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(&p, "first line\nsecond\nthird\n").unwrap();
        assert_eq!(read_bounded(&p, 100).unwrap().len(), 24);
        assert!(read_bounded(&p, 23).is_err());
        assert_eq!(read_tail(&p, 100).unwrap(), "first line\nsecond\nthird\n");
        // The last 10 bytes start inside "second": that cut line is dropped.
        assert_eq!(read_tail(&p, 10).unwrap(), "third\n");
        assert_eq!(read_tail(&d.path().join("none"), 10).unwrap(), "");
    }
}
