//! A node opened from its home: its configuration, key, roster, recorder
//! and charter, read once by each command (and by the daemon's threads).

use anyhow::{Result, bail};
use netsky_bus::{NodeName, Roster};
use netsky_keys::SecretKey;

use crate::config::Config;
use crate::home::Home;
use crate::record::Recorder;

/// An initialised node opened from its home: config, key, roster, recorder.
pub struct Node {
    /// Where it lives.
    pub home: Home,
    /// Its configuration.
    pub config: Config,
    /// Its node key.
    pub key: SecretKey,
    /// Whom its bus trusts.
    pub roster: Roster,
    /// Where its events go.
    pub recorder: Recorder,
    /// The mesh charter it holds, verified (none outside a mesh).
    pub charter: Option<netsky_mesh::SignedCharter>,
}

impl Node {
    /// Opens the node in `home`; a clear error if it was never initialised.
    pub fn open(home: Home) -> Result<Node> {
        let cfg_path = home.config_path();
        if !cfg_path.exists() {
            bail!(
                "{} is not a netsky home (no config.toml); run `netsky init --name NAME` first",
                home.root().display()
            );
        }
        let config = Config::load(&cfg_path)?;
        let key = netsky_keys::load_key_file(&home.node_key_path())?.key;
        let charter = netsky_mesh::charter_file::load(&home.mesh_paths())?;
        let roster = roster_under(charter.as_ref(), &config.node.name, &key)?;
        let recorder = Recorder::new(&home, config.node.name.clone());
        Ok(Node { home, config, key, roster, recorder, charter })
    }

    /// The roster under the charter on disk now (a long-lived holder of a
    /// `Node`, like the heartbeat, must see members who joined since it opened).
    pub fn current_roster(&self) -> Result<Roster> {
        roster_under(self.current_charter()?.as_ref(), &self.config.node.name, &self.key)
    }

    /// The charter on disk now, verified (who is root may have changed since this `Node` opened).
    pub fn current_charter(&self) -> Result<Option<netsky_mesh::SignedCharter>> {
        Ok(netsky_mesh::charter_file::load(&self.home.mesh_paths())?)
    }
}

/// Whom the bus trusts: the charter's members, or this node alone outside a mesh.
fn roster_under(
    charter: Option<&netsky_mesh::SignedCharter>,
    name: &NodeName,
    key: &SecretKey,
) -> Result<Roster> {
    Ok(match charter {
        Some(c) => c.charter.roster(name, key.public())?,
        None => Roster::solo(name.clone(), key.public())?,
    })
}
