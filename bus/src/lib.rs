//! The netsky bus.
//!
//! This crate owns what a message is and how it moves on one machine: names
//! and addresses, the signed envelope and its canonical encoding, the guard
//! that refuses anything suspicious before an agent sees it, and the mailbox
//! lifecycle (`inbox -> claimed -> delivered`, with `poison/` for refusals).
//! How files become durable, and what a crash leaves, sits apart in
//! [`store`].
//!
//! Files are the truth: every state change is an atomic rename, fsynced where
//! durability is promised. The crate knows nothing of the network, the
//! database or the command line; callers record the outcomes it returns.

mod envelope;
mod error;
mod guard;
mod layout;
mod mailbox;
mod name;
mod parallel;
mod roster;
pub mod store;

pub use envelope::{ENVELOPE_DOMAIN, Envelope, Kind, MAX_ENVELOPE_BYTES, format_ts, parse_ts};
pub use error::BusError;
pub use guard::{Guard, Refusal, RefusalKind, read_envelope_file, write_reason};
pub use layout::{Holder, Layout};
pub use mailbox::{Claim, Claimed, Counts, Mailbox, MailboxLock, Poisoned, PutOutcome, Waiting};
pub use name::{Address, AgentName, NodeName};
pub use roster::{Member, Roster};
pub use store::{
    Checkpoint, FileLock, JOURNAL_DIR, Places, Recovered, STALE_TEMP, fsync_dir, is_locked, lock_file,
    recover as recover_journal, sweep_stale_temps, write_durable, write_durable_batch, write_journaled,
};
