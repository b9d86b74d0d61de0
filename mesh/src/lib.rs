//! The netsky mesh.
//!
//! This crate owns how nodes find, trust and talk to each other: the iroh
//! endpoint (node key, relay mode, direct addresses), the charter signed by
//! the mesh key and the membership it enforces at the door, join tickets and
//! the protocol that redeems them, and the wire protocol that moves signed
//! envelopes between nodes with acks only after the receiver made them
//! durable. It builds on the bus for envelopes, guard and mailboxes, and
//! knows nothing of tmux, meta.db or the command line: it reports what
//! happened as [`MeshEvent`]s for the node to record.

mod charter;
pub mod charter_file;
mod endpoint;
mod error;
mod ingest;
mod membership;
mod paths;
mod retention;
mod runtime;
mod ticket;
pub mod wire;

pub use charter::{CHARTER_DOMAIN, Charter, CharterMember, Decision, MAX_CHARTER_BYTES, SignedCharter};
pub use endpoint::{Relay, dialable_addrs};
pub use error::MeshError;
pub use ingest::{Ingested, Receivers, ingest};
pub use membership::Allowlist;
pub use paths::MeshPaths;
pub use runtime::{
    AgentCheck, Answers, BeaconSink, EventSink, Mesh, MeshConfig, PeerState, SpooledReceipt, ask, beacon,
    handover, join,
};
pub use ticket::{TICKET_DOMAIN, Ticket, TicketBody};

/// Something the mesh did or saw, for the node's records.
#[derive(Debug, Clone)]
pub enum MeshEvent {
    /// A pushed envelope was stored, found duplicate, or refused.
    Received {
        /// The pushing peer's name.
        peer: String,
        /// What became of it.
        item: Ingested,
    },
    /// A peer acknowledged an envelope from the outbox (its copy is gone).
    Acked {
        /// The envelope.
        env: netsky_bus::Envelope,
        /// The peer had it already.
        duplicate: bool,
    },
    /// A peer refused an envelope; it moved to `mesh/refused/`.
    RefusedByPeer {
        /// The envelope.
        env: netsky_bus::Envelope,
        /// The peer's stable word.
        kind: String,
        /// The peer's reason.
        reason: String,
    },
    /// This node could not send an outbox file at all; it moved to `mesh/refused/`.
    RefusedLocally {
        /// The file.
        file: String,
        /// A stable word.
        kind: String,
        /// Why.
        reason: String,
    },
    /// A delivery receipt from the node that received one of our envelopes.
    Receipt {
        /// That node.
        from: String,
        /// The receipt.
        receipt: wire::Receipt,
    },
    /// A new charter was stored.
    CharterStored {
        /// Its epoch.
        epoch: u64,
        /// Who it came from.
        from: String,
    },
    /// A charter was refused (conflict, foreign key, bad signature).
    CharterRefused {
        /// Who offered it.
        from: String,
        /// Why.
        reason: String,
    },
    /// A connection was refused at the door.
    ConnectionRefused {
        /// The remote node id.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A malformed, oversized or late frame.
    ProtocolError {
        /// The peer.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// A peer became reachable.
    PeerReachable {
        /// Its name.
        name: String,
    },
    /// A peer became unreachable.
    PeerUnreachable {
        /// Its name.
        name: String,
        /// The error.
        error: String,
    },
    /// A node joined with a ticket (root).
    Joined {
        /// Its name.
        name: String,
        /// Its id.
        node_id: String,
        /// The new epoch.
        epoch: u64,
    },
    /// A join attempt was refused (root).
    JoinRefused {
        /// The remote node id.
        remote: String,
        /// Why.
        reason: String,
    },
}
