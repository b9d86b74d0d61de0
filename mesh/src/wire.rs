//! The wire: one request and one response per QUIC bi stream, each a frame
//! of a 4-byte big-endian length and a postcard body.
//!
//! Every read is bounded in size ([`MAX_FRAME`]) and in time: a peer that
//! opens a stream and sends nothing, or trickles, is timed out. Opening a
//! stream per request costs a few microseconds on an open connection and
//! gives every request its own framing and its own failure.

use std::net::SocketAddr;
use std::time::Duration;

use iroh::endpoint::{Connection, RecvStream, SendStream};
use serde::{Deserialize, Serialize};

use crate::MeshError;

/// ALPN of the member-to-member protocol.
pub const ALPN_MESH: &[u8] = b"netsky/mesh/1";
/// ALPN of the join protocol, which only redeems tickets.
pub const ALPN_JOIN: &[u8] = b"netsky/join/1";

/// The largest frame either side reads: a batch of envelopes.
pub const MAX_FRAME: usize = 1024 * 1024;
/// How long a reader waits for a whole frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// The most envelopes in one push.
pub const MAX_BATCH: usize = 128;

/// What one envelope's push came to on the receiving node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Durable in the target inbox.
    Stored,
    /// Already known there (inbox, claimed or delivered): nothing written.
    Duplicate,
    /// Refused by the receiver's guard; never retried.
    Refused {
        /// The guard's stable word (bad-signature, unknown-agent, ...).
        kind: String,
        /// One line.
        reason: String,
    },
}

/// An acknowledgement of one envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The envelope id (ULID text), or the file position for unparsable bytes.
    pub id: String,
    /// What became of it.
    pub outcome: Outcome,
}

/// A delivery receipt sent back to an envelope's origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The envelope id.
    pub id: String,
    /// The agent it reached.
    pub agent: String,
    /// How: `drained` or `pasted`.
    pub how: String,
    /// When (canonical UTC timestamp).
    pub at: String,
}

/// A request or response on a mesh stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Envelopes (their JSON bytes) for agents on the receiving node.
    Push {
        /// Signed envelope files, oldest first.
        envs: Vec<Vec<u8>>,
    },
    /// The answer to `Push`: one ack per envelope, same order.
    Acks {
        /// The acks.
        acks: Vec<Ack>,
    },
    /// A signed charter (its JSON bytes), pushed by the root.
    Charter {
        /// `mesh/charter.json` bytes.
        json: Vec<u8>,
    },
    /// A member tells the root where it listens and which epoch it holds.
    Hello {
        /// Its bound direct addresses.
        addrs: Vec<SocketAddr>,
        /// The charter epoch it holds.
        epoch: u64,
    },
    /// Delivery receipts for envelopes the receiver's origin sent.
    Receipts {
        /// The receipts.
        receipts: Vec<Receipt>,
    },
    /// The root hands its role to the receiver: the mesh key and the charter that names it root.
    Handover {
        /// The mesh key's 32 secret bytes (the connection is TLS to the receiver's own key).
        mesh_key: Vec<u8>,
        /// The new charter's JSON, signed by that key.
        charter: Vec<u8>,
    },
    /// A request was handled.
    Ok {
        /// Anything worth saying.
        note: String,
    },
    /// A request was refused.
    Refused {
        /// Why, in one line.
        reason: String,
    },
    /// A member asks a question the node's owner side answers (`incidents`).
    /// New frames go last: the encoding numbers variants in order.
    Query {
        /// What is asked.
        what: String,
    },
    /// The answer to `Query`, as JSON.
    Answer {
        /// The answer's JSON bytes.
        json: Vec<u8>,
    },
    /// A member's signed health beacon, for the root; answered with the mesh view (`Answer`).
    Beacon {
        /// The signed beacon's bytes, as the node layer encodes them.
        signed: Vec<u8>,
    },
}

/// A join request, the only frame the join protocol reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The ticket text.
    pub ticket: String,
    /// The joiner's name (must match the ticket's invitee).
    pub name: String,
    /// The joiner's direct addresses, if its daemon runs.
    pub addrs: Vec<SocketAddr>,
}

/// The answer to a join request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// Joined: the new charter that names the joiner.
    Joined {
        /// `mesh/charter.json` bytes.
        charter: Vec<u8>,
    },
    /// Refused, with the reason.
    Refused {
        /// Why.
        reason: String,
    },
}

fn proto(peer: &str, reason: impl Into<String>) -> MeshError {
    MeshError::Protocol { peer: peer.to_string(), reason: reason.into() }
}

/// Writes one frame and finishes the stream.
pub async fn write_frame<T: Serialize>(
    send: &mut SendStream,
    value: &T,
    peer: &str,
) -> Result<(), MeshError> {
    let body = postcard::to_allocvec(value).map_err(|e| proto(peer, format!("encode: {e}")))?;
    if body.len() > MAX_FRAME {
        return Err(proto(peer, format!("frame of {} bytes is over the {MAX_FRAME}-byte limit", body.len())));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    send.write_all(&buf).await.map_err(|e| proto(peer, format!("write: {e}")))?;
    send.finish().map_err(|e| proto(peer, format!("finish: {e}")))?;
    Ok(())
}

/// Reads one frame of at most `max` bytes within `timeout`.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    recv: &mut RecvStream,
    max: usize,
    timeout: Duration,
    peer: &str,
) -> Result<T, MeshError> {
    let read = async {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.map_err(|e| proto(peer, format!("truncated frame header: {e}")))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(proto(peer, format!("frame of {len} bytes is over the {max}-byte limit")));
        }
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await.map_err(|e| proto(peer, format!("truncated frame: {e}")))?;
        postcard::from_bytes(&body).map_err(|e| proto(peer, format!("malformed frame: {e}")))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| proto(peer, format!("no whole frame within {} s", timeout.as_secs())))?
}

/// Sends `req` on a new stream of `conn`; the answer is read from the returned stream.
pub async fn send_request(conn: &Connection, req: &Frame, peer: &str) -> Result<RecvStream, MeshError> {
    let (mut send, recv) = tokio::time::timeout(FRAME_TIMEOUT, conn.open_bi())
        .await
        .map_err(|_| proto(peer, "no stream within the timeout"))?
        .map_err(|e| MeshError::Connect { peer: peer.to_string(), reason: e.to_string() })?;
    write_frame(&mut send, req, peer).await?;
    Ok(recv)
}

/// Sends `req` on a new stream of `conn` and reads the response.
pub async fn request(
    conn: &Connection,
    req: &Frame,
    timeout: Duration,
    peer: &str,
) -> Result<Frame, MeshError> {
    let mut recv = send_request(conn, req, peer).await?;
    read_frame(&mut recv, MAX_FRAME, timeout, peer).await
}
