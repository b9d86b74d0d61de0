//! The netsky bus.
//!
//! This crate owns what a message is and how it moves on one machine: names
//! and addresses, the signed envelope and its canonical encoding, the guard
//! that refuses anything suspicious before an agent sees it, the mailbox
//! lifecycle (`inbox -> claimed -> delivered`, with `poison/` for refusals),
//! and the one durable-write helper everything else uses.
//!
//! Files are the truth: every state change is an atomic rename, fsynced where
//! durability is promised. The crate knows nothing of the network, the
//! database or the command line; callers record the outcomes it returns.

mod dirfd;
mod durable;
mod envelope;
mod error;
mod filelock;
mod guard;
#[cfg(test)]
mod hooks;
mod journal;
mod layout;
mod mailbox;
mod name;
mod parallel;
mod roster;
mod segment;
pub mod spares;

pub use durable::{fsync_dir, sweep_stale_temps, write_durable, write_durable_batch};
pub use envelope::{ENVELOPE_DOMAIN, Envelope, Kind, MAX_ENVELOPE_BYTES, format_ts, parse_ts};
pub use error::BusError;
pub use filelock::{FileLock, is_locked, lock_file};
pub use guard::{Guard, Refusal, RefusalKind, read_envelope_file};
pub use journal::{JOURNAL_DIR, Places, Settled, settle as settle_journal, write_journaled};
pub use layout::Layout;
pub use mailbox::{Claim, Claimed, Counts, Mailbox, MailboxLock, Poisoned, PutOutcome};
pub use name::{Address, AgentName, NodeName};
pub use roster::{Member, Roster};
