//! The guard: the checks every envelope passes before an agent sees it.
//!
//! It refuses, with a one-line reason: non-regular files (symlinks are never
//! followed, FIFOs never block), oversized or unparsable files, bad names or
//! addresses, a file name that is not `<id>.json`, wrapper tokens or control
//! characters in the text, a timestamp more than 5 minutes ahead, a missing
//! or bad signature, and an origin that is not a current member, is revoked,
//! or signs for a node name that is not its own. Duplicates are the
//! mailbox's call, since only it knows what was delivered.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};

use netsky_keys::{ToVerify, Verifier};

use crate::ENVELOPE_DOMAIN;
use crate::envelope::MAX_ENVELOPE_BYTES;
use crate::{Envelope, Roster, format_ts};

/// How far ahead of our clock an envelope's timestamp may be.
pub const MAX_FUTURE: Duration = Duration::minutes(5);

/// Why the guard refused something, as a stable word for logs and queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not a regular file (symlink, directory, FIFO, ...).
    NotRegular,
    /// Larger than 64 KiB.
    Oversized,
    /// Could not be read.
    Unreadable,
    /// Not UTF-8, not JSON, or not an envelope.
    Unparsable,
    /// A name or address breaks the grammar.
    BadName,
    /// The file name is not `<id>.json` of the envelope inside.
    BadFileName,
    /// The timestamp is too far in the future.
    Future,
    /// The text holds `<channel` or `</channel`.
    WrapperToken,
    /// The text holds a control character.
    ControlChar,
    /// No signature.
    MissingSignature,
    /// The signature does not verify.
    BadSignature,
    /// The origin is not a member.
    UnknownOrigin,
    /// The origin was revoked.
    RevokedOrigin,
    /// The origin signs for a node name that is not its own.
    ForgedOrigin,
    /// The id was already delivered.
    Duplicate,
    /// Addressed to another agent or node than the mailbox it was found in.
    WrongRecipient,
}

impl RefusalKind {
    /// The stable word used in logs, reason files and meta.db.
    pub fn as_str(self) -> &'static str {
        use RefusalKind::*;
        match self {
            NotRegular => "not-regular",
            Oversized => "oversized",
            Unreadable => "unreadable",
            Unparsable => "unparsable",
            BadName => "bad-name",
            BadFileName => "bad-file-name",
            Future => "future",
            WrapperToken => "wrapper-token",
            ControlChar => "control-char",
            MissingSignature => "missing-signature",
            BadSignature => "bad-signature",
            UnknownOrigin => "unknown-origin",
            RevokedOrigin => "revoked-origin",
            ForgedOrigin => "forged-origin",
            Duplicate => "duplicate",
            WrongRecipient => "wrong-recipient",
        }
    }
}

/// A refusal: what kind, and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The stable kind.
    pub kind: RefusalKind,
    /// One line saying what was wrong.
    pub reason: String,
}

impl Refusal {
    /// A refusal of `kind` for `reason`.
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Refusal {
        let reason: String = reason.into();
        // One line, always: reasons end up in `.reason` files and log lines.
        Refusal { kind, reason: reason.replace(['\n', '\r'], " ") }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.reason)
    }
}

impl std::error::Error for Refusal {}

/// The envelope checks, against a roster and a clock.
#[derive(Debug, Clone, Copy)]
pub struct Guard<'a> {
    roster: &'a Roster,
    now: OffsetDateTime,
}

impl<'a> Guard<'a> {
    /// A guard trusting `roster`, with the clock read now.
    pub fn new(roster: &'a Roster) -> Guard<'a> {
        Guard { roster, now: OffsetDateTime::now_utc() }
    }

    /// A guard with a given clock (tests).
    pub fn at(roster: &'a Roster, now: OffsetDateTime) -> Guard<'a> {
        Guard { roster, now }
    }

    /// The roster this guard trusts.
    pub fn roster(&self) -> &'a Roster {
        self.roster
    }

    /// Checks the bytes of an envelope: shape, origin, signature, clock.
    pub fn check_bytes(&self, bytes: &[u8]) -> Result<Envelope, Refusal> {
        let env = Envelope::from_json(bytes)?;
        self.check_envelope(&env)?;
        Ok(env)
    }

    /// Checks an already parsed envelope: origin, signature, clock.
    pub fn check_envelope(&self, env: &Envelope) -> Result<(), Refusal> {
        let member = self.admit(env)?;
        env.verify(member.verifier())?;
        self.timely(env)
    }

    /// As [`Guard::check_bytes`] for many envelopes at once: one verdict per
    /// input, in order, each the same as one by one would give, with the
    /// signatures of those that get that far checked as one batch (see
    /// [`netsky_keys::verify_all`]; a batch with a bad one is checked again
    /// one by one, so a forgery costs its sender's batch twice, no more).
    pub fn check_many(&self, inputs: &[&[u8]]) -> Vec<Result<Envelope, Refusal>> {
        let mut out: Vec<Result<Envelope, Refusal>> = Vec::with_capacity(inputs.len());
        // (index in out, the signer's verifier, the signed bytes)
        let mut admitted: Vec<(usize, &Verifier, Vec<u8>)> = Vec::new();
        for bytes in inputs {
            let checked = Envelope::from_json(bytes).and_then(|env| {
                let member = self.admit(&env)?;
                if env.sig.is_none() {
                    return Err(Refusal::new(RefusalKind::MissingSignature, "no signature"));
                }
                Ok((env, member))
            });
            match checked {
                Ok((env, member)) => {
                    admitted.push((out.len(), member.verifier(), env.signing_bytes()));
                    out.push(Ok(env));
                }
                Err(r) => out.push(Err(r)),
            }
        }
        let all_verify = admitted.len() > 1 && {
            let batch: Vec<ToVerify<'_>> = admitted
                .iter()
                .filter_map(|(i, v, body)| {
                    let sig = out[*i].as_ref().ok()?.sig.as_ref()?;
                    Some(ToVerify { verifier: v, domain: ENVELOPE_DOMAIN, body, sig })
                })
                .collect();
            batch.len() == admitted.len() && netsky_keys::verify_all(&batch)
        };
        for (i, verifier, _) in &admitted {
            let verdict = match &out[*i] {
                Ok(env) if all_verify => self.timely(env),
                Ok(env) => env.verify(verifier).and_then(|()| self.timely(env)),
                Err(_) => continue,
            };
            if let Err(r) = verdict {
                out[*i] = Err(r);
            }
        }
        out
    }

    /// The checks before the signature: a current member, signing as itself.
    fn admit(&self, env: &Envelope) -> Result<&'a crate::Member, Refusal> {
        if self.roster.is_revoked(&env.origin) {
            return Err(Refusal::new(
                RefusalKind::RevokedOrigin,
                format!("origin {} was revoked", env.origin.fmt_short()),
            ));
        }
        let member = self.roster.by_id(&env.origin).ok_or_else(|| {
            let scope = match self.roster.epoch() {
                0 => "this node is in no mesh, so it trusts only itself".to_string(),
                e => format!("charter epoch {e}"),
            };
            Refusal::new(
                RefusalKind::UnknownOrigin,
                format!("origin {} is not a member ({scope})", env.origin.fmt_short()),
            )
        })?;
        if env.from == crate::Address::Owner {
            // Only the root speaks for the owner (`owner say`, the owner's sources).
            if self.roster.root() != Some(env.origin) {
                return Err(Refusal::new(
                    RefusalKind::ForgedOrigin,
                    format!("node {} signs as owner but is not the root", member.name),
                ));
            }
            return Ok(member);
        }
        let from_node = env.from.node().map(|n| n.as_str()).unwrap_or("");
        if from_node != member.name.as_str() {
            return Err(Refusal::new(
                RefusalKind::ForgedOrigin,
                format!(
                    "origin {} is node {} but signs as {}",
                    env.origin.fmt_short(),
                    member.name,
                    env.from
                ),
            ));
        }
        Ok(member)
    }

    /// The check after the signature: not from the future.
    fn timely(&self, env: &Envelope) -> Result<(), Refusal> {
        if env.ts > self.now + MAX_FUTURE {
            return Err(Refusal::new(
                RefusalKind::Future,
                format!("ts {} is more than 5 minutes ahead of {}", format_ts(env.ts), format_ts(self.now)),
            ));
        }
        Ok(())
    }

    /// Reads and checks the file at `path`, which must be a regular file named `<id>.json`.
    pub fn check_file(&self, path: &Path) -> Result<Envelope, Refusal> {
        let bytes = read_envelope_file(path)?;
        let env = self.check_bytes(&bytes)?;
        named_for(path, env)
    }

    /// As [`Guard::check_file`] for many files, their signatures checked as one batch.
    pub fn check_files(&self, paths: &[PathBuf]) -> Vec<Result<Envelope, Refusal>> {
        let names: Vec<&str> =
            paths.iter().map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or("")).collect();
        self.check_read(&names, paths.iter().map(|p| read_envelope_file(p)).collect())
    }

    /// As [`Guard::check_files`] for the files `names` in the open folder `dir`.
    pub(crate) fn check_in(&self, dir: &crate::store::Dir, names: &[&str]) -> Vec<Result<Envelope, Refusal>> {
        let read = names
            .iter()
            .map(|n| {
                let f = dir.open_read(n).map_err(open_refusal)?;
                read_open(f)
            })
            .collect();
        self.check_read(names, read)
    }

    /// The verdicts on files read (or not) under their `names`.
    fn check_read(
        &self,
        names: &[&str],
        read: Vec<Result<Vec<u8>, Refusal>>,
    ) -> Vec<Result<Envelope, Refusal>> {
        let inputs: Vec<&[u8]> = read.iter().filter_map(|r| r.as_ref().ok().map(Vec::as_slice)).collect();
        let mut checked = self.check_many(&inputs).into_iter();
        read.into_iter()
            .zip(names)
            .map(|(r, name)| {
                r?;
                let env = checked.next().unwrap_or_else(|| {
                    Err(Refusal::new(RefusalKind::Unreadable, "no verdict (a bug in check_read)"))
                })?;
                named(name, env)
            })
            .collect()
    }
}

/// `env`, if `path` is named for it (`<id>.json`).
fn named_for(path: &Path, env: Envelope) -> Result<Envelope, Refusal> {
    named(path.file_name().and_then(|n| n.to_str()).unwrap_or(""), env)
}

/// `env`, if `name` is its file name (`<id>.json`).
fn named(name: &str, env: Envelope) -> Result<Envelope, Refusal> {
    if name != env.file_name() {
        return Err(Refusal::new(
            RefusalKind::BadFileName,
            format!("file name {name:?} does not match envelope id {}", env.id),
        ));
    }
    Ok(env)
}

/// Why a file could not be opened for reading, as a refusal.
fn open_refusal(e: std::io::Error) -> Refusal {
    match e.raw_os_error() {
        Some(libc::ELOOP) => Refusal::new(RefusalKind::NotRegular, "a symlink (never followed)"),
        _ => Refusal::new(RefusalKind::Unreadable, format!("cannot open: {e}")),
    }
}

/// Writes `<file>.reason` in `dir` durably: one line, the time, the refusal's
/// stable word and why, beside a file moved to `poison/` or `mesh/refused/`.
pub fn write_reason(dir: &Path, file: &str, kind: &str, reason: &str) -> Result<(), crate::BusError> {
    let line = format!("{} {kind}: {reason}\n", crate::format_ts(time::OffsetDateTime::now_utc()));
    crate::write_durable(dir, &format!("{file}.reason"), line.as_bytes())?;
    Ok(())
}

/// Reads an envelope file without following symlinks or blocking on FIFOs,
/// and without reading more than the size limit.
pub fn read_envelope_file(path: &Path) -> Result<Vec<u8>, Refusal> {
    read_open(crate::store::open_unfollowed(path).map_err(open_refusal)?)
}

/// Reads an envelope file opened without following links: a regular file,
/// within the size limit.
fn read_open(f: std::fs::File) -> Result<Vec<u8>, Refusal> {
    let meta =
        f.metadata().map_err(|e| Refusal::new(RefusalKind::Unreadable, format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(Refusal::new(
            RefusalKind::NotRegular,
            format!("not a regular file ({:?})", meta.file_type()),
        ));
    }
    if meta.len() > MAX_ENVELOPE_BYTES as u64 {
        return Err(Refusal::new(
            RefusalKind::Oversized,
            format!("{} bytes, over the {MAX_ENVELOPE_BYTES}-byte limit", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_ENVELOPE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Refusal::new(RefusalKind::Unreadable, format!("cannot read: {e}")))?;
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(Refusal::new(RefusalKind::Oversized, "grew past the size limit while being read"));
    }
    Ok(bytes)
}
