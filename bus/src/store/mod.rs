//! How envelope files become durable, and what a crash at each step leaves.
//!
//! Everything here serves one promise (ARCHITECTURE.md section 6): when a
//! put returns `Ok`, its envelopes survive kill -9 and a power cut, and each
//! is found exactly once. It is used for a mailbox's `inbox/` and for the
//! mesh outbox; `docs/durability.md` tells the same story for contributors,
//! with the measurements behind each choice.
//!
//! Words, one concept each:
//!
//! - **put**: make new envelope files durable in a folder;
//! - **barrier**: the one flush after which a put is durable;
//! - **lay out**: write each envelope as its own file, whole or not at all,
//!   without a flush of its own (the barrier covers it);
//! - **recover**: lay out again what a writer killed between its barrier and
//!   its layout left only in a journal, and restore what a power cut took;
//! - **checkpoint**: make laid-out files durable on their own, then remove
//!   the journals that covered them.
//!
//! One envelope's files, from the put to `delivered/` (`.journal/` sits in
//! the mailbox folder beside `inbox/`):
//!
//! ```text
//!  put of 1-3 ─► append to .journal/cur-<boot>.seg ─fdatasync─┐ (barrier)
//!  put of 4+ ──► .journal/<id>.<boot>.open ─fsync file, dir───┤
//!  no boot id ─► temp file ─fsync─► rename ─fsync dir─────────┤ (durable, no journal)
//!                                                             ▼
//!                        inbox/<id>.json  (laid out; <id>.open renamed .laid)
//!                             │ claim: rename (mailbox lock held)
//!                             ▼
//!                        claimed/<id>.json ──guard refuses──► poison/<id>.json + .reason
//!                             │ deliver: rename, fsync claimed/ and delivered/
//!                             ▼
//!                        delivered/<id>.json  (the audit trail; dedupe by id)
//!
//!  checkpoint (a claim, when due; the daemon's tick): syncfs, else an fsync
//!  per file; then `.laid` journals and old segments are removed.
//! ```
//!
//! What a crash at each step leaves, and who finishes it:
//!
//! | crash                               | left on disk                         | then                                               |
//! |-------------------------------------|--------------------------------------|----------------------------------------------------|
//! | before the barrier                  | a torn record, an `.open` journal    | the put never said `Ok`; a record that did reach the disk is laid out (a resend is a duplicate by id) |
//! | after the barrier, before layout    | the record only in the journal       | recovery lays it out, durably: every claim, the daemon a moment after the write, the tick |
//! | after layout, before checkpoint     | the file, perhaps only in page cache | a process crash loses nothing; after a power cut the journal is of an earlier boot: each file is compared with its record and restored before any claim judges the inbox |
//! | after the claim's rename            | the file in `claimed/`               | the next claim adopts it, before newer mail        |
//! | after delivery, before its fsync    | the file back in `claimed/` at worst | adopted and handed on again (at-least-once to the agent, once in the mailbox) |
//! | mid-poison                          | a `.reason`, the file not moved yet  | the next claim judges the file again               |
//!
//! A journal that is not a regular file is renamed `*.bad` and kept, never
//! read; one too big to read is an error, never set aside. Temp files a
//! crashed writer left are swept after [`STALE_TEMP`].

pub(crate) mod checkpoint;
mod dirfd;
pub(crate) mod durable;
mod filelock;
#[cfg(test)]
pub(crate) mod hooks;
pub(crate) mod journal;
pub(crate) mod recover;
pub(crate) mod segment;

pub(crate) use dirfd::Dir;
pub use durable::{fsync_dir, sweep_stale_temps, write_durable, write_durable_batch};
pub(crate) use durable::{open_unfollowed, sweep_stale_named};
pub use filelock::{FileLock, is_locked, lock_file};
pub use journal::{JOURNAL_DIR, write_journaled};
pub(crate) use recover::earlier_boot_left;
pub use recover::{Checkpoint, Places, Recovered, recover};

/// Temp files older than this are the remains of a crashed writer (never
/// acknowledged to anyone): swept by whoever lists their folder.
pub const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);
