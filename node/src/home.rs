//! `NETSKY_HOME`: where a node's files live. [`Home`] is the node binary's one
//! catalog of paths under it; the bus ([`Layout`]) and the mesh
//! ([`netsky_mesh::MeshPaths`]) keep their own, and `Home` hands them out.
//!
//! It knows paths only: opening a node from them is `node.rs`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
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
    /// `keys/mesh.key`
    pub fn mesh_key_path(&self) -> PathBuf {
        self.keys_dir().join("mesh.key")
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
    /// `state/prompts/`: each agent's rendered prompt.
    pub fn prompts_dir(&self) -> PathBuf {
        self.state_dir().join("prompts")
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
            layout.outbox_dir(),
        ] {
            b.create(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(())
    }
}
