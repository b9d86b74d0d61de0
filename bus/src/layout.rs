//! Where the bus keeps its files under `NETSKY_HOME`.

use std::path::{Path, PathBuf};

use crate::AgentName;

/// Whose mailbox: an agent of this node, or the owner's desk (on the root,
/// where everything addressed to `owner` lands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder {
    /// `channels/agent/<agent>/`.
    Agent(AgentName),
    /// `channels/owner/`.
    Owner,
}

impl From<AgentName> for Holder {
    fn from(a: AgentName) -> Holder {
        Holder::Agent(a)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Agent(a) => a.fmt(f),
            Holder::Owner => f.write_str("owner"),
        }
    }
}

/// The bus's paths inside one home.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of the home at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The home itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `channels/agent/`: one folder per agent mailbox.
    pub fn agents_dir(&self) -> PathBuf {
        self.root.join("channels").join("agent")
    }

    /// `channels/agent/<agent>/`, or `channels/owner/`.
    pub fn mailbox_dir(&self, holder: impl Into<Holder>) -> PathBuf {
        match holder.into() {
            Holder::Agent(a) => self.agents_dir().join(a.to_string()),
            Holder::Owner => self.root.join("channels").join("owner"),
        }
    }

    /// `channels/agent/<agent>/inbox/`: envelopes waiting to be claimed.
    pub fn inbox_dir(&self, holder: impl Into<Holder>) -> PathBuf {
        self.mailbox_dir(holder).join("inbox")
    }

    /// `channels/agent/<agent>/claimed/`: claimed, not yet delivered.
    pub fn claimed_dir(&self, holder: impl Into<Holder>) -> PathBuf {
        self.mailbox_dir(holder).join("claimed")
    }

    /// `channels/agent/<agent>/delivered/`: the audit trail.
    pub fn delivered_dir(&self, holder: impl Into<Holder>) -> PathBuf {
        self.mailbox_dir(holder).join("delivered")
    }

    /// `channels/agent/<agent>/poison/`: refused files, each with a `.reason`.
    pub fn poison_dir(&self, holder: impl Into<Holder>) -> PathBuf {
        self.mailbox_dir(holder).join("poison")
    }

    /// `channels/agent/<agent>/.journal/`: what makes its new files durable
    /// until they are checkpointed (see [`crate::store`]).
    pub fn journal_dir(&self, holder: impl Into<Holder>) -> PathBuf {
        self.mailbox_dir(holder).join(crate::JOURNAL_DIR)
    }

    /// Every agent that has a mailbox folder, in name order; other entries are ignored.
    pub fn agents(&self) -> std::io::Result<Vec<AgentName>> {
        let mut out = Vec::new();
        match std::fs::read_dir(self.agents_dir()) {
            Ok(rd) => {
                for e in rd {
                    let e = e?;
                    if let Some(a) = e.file_name().to_str().and_then(|s| s.parse::<AgentName>().ok()) {
                        out.push(a);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        out.sort();
        Ok(out)
    }
}
