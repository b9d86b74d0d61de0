//! Where the mesh keeps its files under `NETSKY_HOME`.

use std::path::{Path, PathBuf};

/// The mesh's paths inside one home.
#[derive(Debug, Clone)]
pub struct MeshPaths {
    root: PathBuf,
}

impl MeshPaths {
    /// The mesh paths of the home at `root`.
    pub fn new(root: impl Into<PathBuf>) -> MeshPaths {
        MeshPaths { root: root.into() }
    }
    /// The home.
    pub fn home(&self) -> &Path {
        &self.root
    }
    /// `mesh/`
    pub fn dir(&self) -> PathBuf {
        self.root.join("mesh")
    }
    /// `mesh/charter.json`: the newest verified charter.
    pub fn charter(&self) -> PathBuf {
        self.dir().join("charter.json")
    }
    /// `mesh/.charter.lock`: held around every read-modify-write of the charter.
    pub fn charter_lock(&self) -> PathBuf {
        self.dir().join(".charter.lock")
    }
    /// `mesh/tickets/`: one-time secrets of issued tickets (root).
    pub fn tickets(&self) -> PathBuf {
        self.dir().join("tickets")
    }
    /// `mesh/outbox/`: signed envelopes waiting for a remote ack.
    pub fn outbox(&self) -> PathBuf {
        self.dir().join("outbox")
    }
    /// `mesh/outbox/.journal/`: what makes outbox writes durable for one
    /// flush (see `netsky_bus::write_journaled`), until the daemon checkpoints it.
    pub fn outbox_journal(&self) -> PathBuf {
        self.outbox().join(netsky_bus::JOURNAL_DIR)
    }
    /// Writes envelope files into the outbox, durable for one flush.
    pub fn write_outbox(&self, items: &[(String, Vec<u8>)]) -> Result<(), netsky_bus::BusError> {
        netsky_bus::write_journaled(&self.outbox_journal(), &self.outbox(), items)
    }
    /// Recovers the outbox's journal, checkpointing as `due` says: the daemon's, one at a time.
    pub fn recover_outbox(
        &self,
        due: netsky_bus::Checkpoint,
    ) -> Result<netsky_bus::Recovered, netsky_bus::BusError> {
        let moved_on = [self.sent()];
        let places =
            netsky_bus::Places { lay_out: &self.outbox(), moved_on: &moved_on, refused: &self.refused() };
        netsky_bus::recover_journal(&self.outbox_journal(), places, due)
    }
    /// `mesh/sent/`: envelopes the remote acknowledged (the sender's audit trail).
    pub fn sent(&self) -> PathBuf {
        self.dir().join("sent")
    }
    /// `mesh/refused/`: envelopes a remote refused, each with a `.reason`.
    pub fn refused(&self) -> PathBuf {
        self.dir().join("refused")
    }
    /// `mesh/receipts/`: delivery receipts waiting to go back to their origin.
    pub fn receipts(&self) -> PathBuf {
        self.dir().join("receipts")
    }
    /// `mesh/delivered/`: receipts received for envelopes this node sent, one per id.
    pub fn delivered(&self) -> PathBuf {
        self.dir().join("delivered")
    }
    /// `keys/mesh.key`: the mesh authority key, on the node that holds it.
    pub fn mesh_key(&self) -> PathBuf {
        self.root.join("keys").join("mesh.key")
    }
    /// `mesh/handover.json`: the charter of a root handover sent but not yet confirmed.
    pub fn handover(&self) -> PathBuf {
        self.dir().join("handover.json")
    }
    /// `state/peers.json`: reachability of each peer, as the daemon sees it.
    pub fn peers_state(&self) -> PathBuf {
        self.root.join("state").join("peers.json")
    }

    /// Creates the mesh folders.
    pub fn create(&self) -> std::io::Result<()> {
        for d in [
            self.dir(),
            self.tickets(),
            self.outbox(),
            self.sent(),
            self.refused(),
            self.receipts(),
            self.delivered(),
            // The daemon's reachability file lives beside the other state.
            self.root.join("state"),
        ] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }
}
