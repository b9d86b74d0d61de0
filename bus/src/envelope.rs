//! The envelope: one signed message, one JSON file of at most 64 KiB.
//!
//! The origin node signs a canonical binary encoding of every field but
//! `sig` (postcard of the parsed values, behind [`ENVELOPE_DOMAIN`]), so two
//! JSON spellings of the same envelope carry the same signature and no
//! re-serialisation can change what was signed. Parsing is strict: unknown
//! fields, a non-canonical id or timestamp, or text that could break out of
//! the `<channel>` wrapper are all refused with a reason.

use std::fmt::Write as _;

use netsky_keys::{
    Domain, NodeId, SecretKey, Signature, Verifier, sign, signature_from_hex, signature_to_hex,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;
use ulid::Ulid;

use crate::guard::{Refusal, RefusalKind};
use crate::{Address, BusError};

/// The largest envelope file the bus accepts.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// Domain-separation tag of envelope signatures.
pub const ENVELOPE_DOMAIN: Domain = Domain(b"netsky/envelope/v1\0");

const TS_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats a time as the envelope's canonical `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_ts(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC).format(TS_FORMAT).unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// Parses the canonical timestamp form, and only that form.
pub fn parse_ts(s: &str) -> Option<OffsetDateTime> {
    time::PrimitiveDateTime::parse(s, TS_FORMAT).ok().map(|p| p.assume_utc())
}

/// What an envelope is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An ordinary message between agents.
    Message,
    /// A task brief from an orchestrator to a clone.
    Brief,
    /// A message to or from the owner.
    Owner,
    /// An incident travelling towards the root.
    Escalation,
    /// An answer to an earlier envelope (`in_reply_to`).
    Reply,
    /// A note to an agent's next session, delivered first after a restart.
    Handoff,
    /// A clone's work was harvested onto its target (or refused, and why).
    #[serde(rename = "harvest-complete")]
    HarvestComplete,
}

impl Kind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Brief => "brief",
            Kind::Owner => "owner",
            Kind::Escalation => "escalation",
            Kind::Reply => "reply",
            Kind::Handoff => "handoff",
            Kind::HarvestComplete => "harvest-complete",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = BusError;
    fn from_str(s: &str) -> Result<Self, BusError> {
        Ok(match s {
            "message" => Kind::Message,
            "brief" => Kind::Brief,
            "owner" => Kind::Owner,
            "escalation" => Kind::Escalation,
            "reply" => Kind::Reply,
            "handoff" => Kind::Handoff,
            "harvest-complete" => Kind::HarvestComplete,
            _ => {
                return Err(BusError::BadName {
                    what: "kind",
                    input: crate::error::clip(s),
                    reason: "expected message, brief, owner, escalation, reply, handoff or harvest-complete",
                });
            }
        })
    }
}

/// A signed message between agents (or to the owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id, sortable by creation time.
    pub id: Ulid,
    /// What the envelope is for.
    pub kind: Kind,
    /// Sender, fully qualified.
    pub from: Address,
    /// Recipient, fully qualified (or `owner`).
    pub to: Address,
    /// Creation time, millisecond precision, UTC.
    pub ts: OffsetDateTime,
    /// The message. Data, never authority.
    pub text: String,
    /// The envelope this one answers.
    pub in_reply_to: Option<Ulid>,
    /// The node that signed it.
    pub origin: NodeId,
    /// The origin's signature over [`Envelope::signing_bytes`].
    pub sig: Option<Signature>,
}

/// The JSON shape, field order as in the architecture.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Json<'a> {
    v: u32,
    id: &'a str,
    kind: &'a str,
    from: &'a str,
    to: &'a str,
    ts: &'a str,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
    in_reply_to: Option<&'a str>,
    origin: &'a str,
    #[serde(default)]
    sig: Option<&'a str>,
}

/// The canonical signed form: every field but `sig`, as parsed values.
#[derive(Serialize)]
struct Canonical<'a> {
    v: u8,
    id: [u8; 16],
    kind: &'a str,
    from: &'a str,
    to: &'a str,
    ts_ms: i64,
    text: &'a str,
    in_reply_to: Option<[u8; 16]>,
    origin: [u8; 32],
}

/// Checks text for what must never reach an agent's pane.
///
/// Wrapper tokens could forge a second `<channel>` block; control characters
/// (escape sequences above all) could drive the terminal the pane runs in.
pub(crate) fn check_text(text: &str) -> Result<(), Refusal> {
    if text.is_empty() {
        return Err(Refusal::new(RefusalKind::Unparsable, "text is empty"));
    }
    let lower = text.to_ascii_lowercase();
    for token in ["<channel", "</channel"] {
        if lower.contains(token) {
            return Err(Refusal::new(
                RefusalKind::WrapperToken,
                format!("text contains the wrapper token {token:?}"),
            ));
        }
    }
    if let Some(c) = text
        .chars()
        .find(|c| (c.is_control() && *c != '\n' && *c != '\t') || *c == '\u{2028}' || *c == '\u{2029}')
    {
        return Err(Refusal::new(
            RefusalKind::ControlChar,
            format!("text contains control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

impl Envelope {
    /// Builds and signs a new envelope from `from` (an `agent@node`) to `to`.
    pub fn new(
        key: &SecretKey,
        kind: Kind,
        from: Address,
        to: Address,
        text: impl Into<String>,
        in_reply_to: Option<Ulid>,
    ) -> Result<Envelope, BusError> {
        Self::new_at(key, kind, from, to, text, in_reply_to, OffsetDateTime::now_utc())
    }

    /// As [`Envelope::new`], at a given time (tests and replays).
    pub fn new_at(
        key: &SecretKey,
        kind: Kind,
        from: Address,
        to: Address,
        text: impl Into<String>,
        in_reply_to: Option<Ulid>,
        now: OffsetDateTime,
    ) -> Result<Envelope, BusError> {
        let text = text.into();
        if !from.is_qualified() {
            return Err(BusError::BadEnvelope(format!("sender {from} must be agent@node or owner")));
        }
        if !to.is_qualified() {
            return Err(BusError::BadEnvelope(format!("recipient {to} must be agent@node or owner")));
        }
        check_text(&text).map_err(|r| BusError::BadEnvelope(r.reason))?;
        let id = next_id(now)?;
        let ts = OffsetDateTime::from_unix_timestamp_nanos(id.timestamp_ms() as i128 * 1_000_000)
            .map_err(|e| BusError::BadEnvelope(format!("clock out of range: {e}")))?;
        let mut env = Envelope { id, kind, from, to, ts, text, in_reply_to, origin: key.public(), sig: None };
        env.sig = Some(sign(key, ENVELOPE_DOMAIN, &env.signing_bytes()));
        let size = env.to_json().len();
        if size > MAX_ENVELOPE_BYTES {
            return Err(BusError::BadEnvelope(format!(
                "{size} bytes encoded, over the {MAX_ENVELOPE_BYTES}-byte limit (shorten the text)"
            )));
        }
        Ok(env)
    }

    /// Unix milliseconds of the timestamp.
    pub fn ts_ms(&self) -> i64 {
        (self.ts.unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// The bytes the origin signs (without the domain tag).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let from = self.from.to_string();
        let to = self.to.to_string();
        let c = Canonical {
            v: 1,
            id: self.id.to_bytes(),
            kind: self.kind.as_str(),
            from: &from,
            to: &to,
            ts_ms: self.ts_ms(),
            text: &self.text,
            in_reply_to: self.in_reply_to.map(|u| u.to_bytes()),
            origin: *self.origin.as_bytes(),
        };
        postcard::to_allocvec(&c).expect("postcard encodes plain structs into a Vec without failing")
    }

    /// Checks the signature against `verifier` (the origin's key).
    pub fn verify(&self, verifier: &Verifier) -> Result<(), Refusal> {
        let sig =
            self.sig.as_ref().ok_or_else(|| Refusal::new(RefusalKind::MissingSignature, "no signature"))?;
        verifier.verify(ENVELOPE_DOMAIN, &self.signing_bytes(), sig).map_err(|_| {
            Refusal::new(
                RefusalKind::BadSignature,
                format!("signature does not verify with the key of origin {}", self.origin.fmt_short()),
            )
        })
    }

    /// The file name this envelope lives under: `<id>.json`.
    pub fn file_name(&self) -> String {
        format!("{}.json", self.id)
    }

    /// The JSON file body (one line, newline-terminated).
    pub fn to_json(&self) -> Vec<u8> {
        let (id, from, to, ts) =
            (self.id.to_string(), self.from.to_string(), self.to.to_string(), format_ts(self.ts));
        let irt = self.in_reply_to.map(|u| u.to_string());
        let origin = self.origin.to_string();
        let sig = self.sig.as_ref().map(signature_to_hex);
        let j = Json {
            v: 1,
            id: &id,
            kind: self.kind.as_str(),
            from: &from,
            to: &to,
            ts: &ts,
            text: std::borrow::Cow::Borrowed(&self.text),
            in_reply_to: irt.as_deref(),
            origin: &origin,
            sig: sig.as_deref(),
        };
        let mut out = serde_json::to_vec(&j).expect("serialising plain strings to JSON cannot fail");
        out.push(b'\n');
        out
    }

    /// Parses an envelope file body, checking shape, names and text (not the signature).
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, Refusal> {
        use RefusalKind::*;
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Refusal::new(
                Oversized,
                format!("{} bytes, over the {MAX_ENVELOPE_BYTES}-byte limit", bytes.len()),
            ));
        }
        let text =
            std::str::from_utf8(bytes).map_err(|e| Refusal::new(Unparsable, format!("not UTF-8: {e}")))?;
        let j: Json = serde_json::from_str(text)
            .map_err(|e| Refusal::new(Unparsable, format!("not an envelope: {e}")))?;
        if j.v != 1 {
            return Err(Refusal::new(Unparsable, format!("unsupported version v={}", j.v)));
        }
        let id = parse_ulid(j.id)
            .ok_or_else(|| Refusal::new(Unparsable, format!("id {:?} is not a ULID", clipped(j.id))))?;
        let kind: Kind = j.kind.parse().map_err(|e: BusError| Refusal::new(BadName, e.to_string()))?;
        let from: Address =
            j.from.parse().map_err(|e: BusError| Refusal::new(BadName, format!("from: {e}")))?;
        let to: Address = j.to.parse().map_err(|e: BusError| Refusal::new(BadName, format!("to: {e}")))?;
        if !from.is_qualified() {
            return Err(Refusal::new(BadName, format!("from {from} is not agent@node or owner")));
        }
        if !to.is_qualified() {
            return Err(Refusal::new(BadName, format!("to {to} is not agent@node or owner")));
        }
        let ts = parse_ts(j.ts).ok_or_else(|| {
            Refusal::new(Unparsable, format!("ts {:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ", clipped(j.ts)))
        })?;
        check_text(&j.text)?;
        let in_reply_to = match j.in_reply_to {
            None => None,
            Some(s) => Some(parse_ulid(s).ok_or_else(|| {
                Refusal::new(Unparsable, format!("in_reply_to {:?} is not a ULID", clipped(s)))
            })?),
        };
        let origin = netsky_keys::parse_node_id(j.origin)
            .map_err(|e| Refusal::new(Unparsable, format!("origin: {e}")))?;
        let sig = match j.sig {
            None => None,
            Some(s) => Some(signature_from_hex(s).map_err(|e| Refusal::new(BadSignature, e.to_string()))?),
        };
        Ok(Envelope { id, kind, from, to, ts, text: j.text.into_owned(), in_reply_to, origin, sig })
    }

    /// Renders the envelope as an agent sees it in its pane.
    pub fn render_channel(&self) -> String {
        let mut s = String::with_capacity(self.text.len() + 96);
        let _ = write!(
            s,
            "<channel source=\"agent\" from=\"{}\" ts=\"{}\">{}</channel>",
            self.from,
            format_ts(self.ts),
            self.text
        );
        s
    }
}

fn clipped(s: &str) -> String {
    crate::error::clip(s)
}

/// Parses a ULID in its canonical (upper-case, 26 character) spelling only,
/// so that one id has exactly one file name.
fn parse_ulid(s: &str) -> Option<Ulid> {
    let u = Ulid::from_string(s).ok()?;
    (u.to_string() == s).then_some(u)
}

/// A process-wide ULID source, monotonic within a millisecond so a burst
/// keeps its creation order. Unlike a strictly monotonic generator it never
/// carries a timestamp forward: after a clock step back, ids follow the clock.
fn next_id(now: OffsetDateTime) -> Result<Ulid, BusError> {
    static LAST: std::sync::Mutex<Option<Ulid>> = std::sync::Mutex::new(None);
    let ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| BusError::BadEnvelope("clock is before 1970".into()))?;
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let id = match *last {
        Some(prev) if prev.timestamp_ms() == ms => {
            prev.increment().unwrap_or_else(|| Ulid::from_parts(ms, 0))
        }
        _ => {
            // Straight from the OS: `Ulid::new` would start a ChaCha generator,
            // whose CPU-feature probe alone costs a short-lived `channel send`
            // about 50 us in a VM (every CPUID traps to the hypervisor).
            let mut r = [0u8; 16];
            getrandom::fill(&mut r[6..]).map_err(|e| BusError::NoRandomness(e.to_string()))?;
            Ulid::from_parts(ms, u128::from_be_bytes(r))
        }
    };
    *last = Some(id);
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    pub(crate) fn sample(key: &SecretKey) -> Envelope {
        Envelope::new(
            key,
            Kind::Message,
            addr("agent0@work"),
            addr("agent3@work"),
            "review restart.rs only",
            None,
        )
        .unwrap()
    }

    #[test]
    fn an_envelope_round_trips_through_json_and_still_verifies() {
        let key = SecretKey::generate();
        let env = sample(&key);
        let back = Envelope::from_json(&env.to_json()).unwrap();
        assert_eq!(back, env);
        back.verify(&Verifier::new(key.public()).unwrap()).unwrap();
    }

    #[test]
    fn every_tampered_field_breaks_the_signature() {
        let key = SecretKey::generate();
        let env = sample(&key);
        let v = Verifier::new(key.public()).unwrap();
        let mut cases: Vec<Envelope> = Vec::new();
        let mut e = env.clone();
        e.text.push('!');
        cases.push(e);
        let mut e = env.clone();
        e.to = addr("agent4@work");
        cases.push(e);
        let mut e = env.clone();
        e.from = addr("agent1@work");
        cases.push(e);
        let mut e = env.clone();
        e.kind = Kind::Brief;
        cases.push(e);
        let mut e = env.clone();
        e.ts += time::Duration::milliseconds(1);
        cases.push(e);
        let mut e = env.clone();
        e.in_reply_to = Some(Ulid::new());
        cases.push(e);
        let mut e = env.clone();
        e.id = Ulid::new();
        cases.push(e);
        for (i, e) in cases.iter().enumerate() {
            let reparsed = Envelope::from_json(&e.to_json()).unwrap();
            let r = reparsed.verify(&v).unwrap_err();
            assert_eq!(r.kind, RefusalKind::BadSignature, "case {i}");
        }
    }

    #[test]
    fn the_json_text_of_a_signed_envelope_cannot_be_edited_unnoticed() {
        let key = SecretKey::generate();
        let env = sample(&key);
        let json = String::from_utf8(env.to_json()).unwrap().replace("restart.rs", "everything");
        let back = Envelope::from_json(json.as_bytes()).unwrap();
        assert!(back.verify(&Verifier::new(key.public()).unwrap()).is_err());
    }

    #[test]
    fn building_refuses_unqualified_or_dangerous_parts() {
        let key = SecretKey::generate();
        let e = |from: &str, to: &str, text: &str| {
            Envelope::new(&key, Kind::Message, addr(from), addr(to), text, None)
        };
        assert!(e("agent0", "agent1@w", "x").is_err());
        assert!(e("agent0@w", "agent1", "x").is_err());
        // Anyone may build one; only the root's passes the guard (see guard tests).
        assert!(e("owner", "agent1@w", "x").is_ok());
        assert!(e("agent0@w", "agent1@w", "").is_err());
        assert!(e("agent0@w", "agent1@w", "a <channel source=x>").is_err());
        assert!(e("agent0@w", "agent1@w", "esc \u{1b}[2J").is_err());
        assert!(e("agent0@w", "agent1@w", &"x".repeat(MAX_ENVELOPE_BYTES)).is_err());
        assert!(e("agent0@w", "owner", "multi\nline\ttext").is_ok());
    }

    #[test]
    fn rendering_wraps_the_text_in_a_channel_tag() {
        let key = SecretKey::generate();
        let env = sample(&key);
        let r = env.render_channel();
        assert!(r.starts_with("<channel source=\"agent\" from=\"agent0@work\" ts=\""), "{r}");
        assert!(r.ends_with(">review restart.rs only</channel>"), "{r}");
    }

    #[test]
    fn timestamps_parse_only_in_canonical_form() {
        assert!(parse_ts("2026-11-24T09:00:00.123Z").is_some());
        assert!(parse_ts("2026-11-24T09:00:00Z").is_none());
        assert!(parse_ts("2026-11-24T09:00:00.123+00:00").is_none());
        let t = parse_ts("2026-11-24T09:00:00.123Z").unwrap();
        assert_eq!(format_ts(t), "2026-11-24T09:00:00.123Z");
    }
}
