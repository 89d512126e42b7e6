//! The wire protocol: the one place that knows how messages between peers look on the wire.
//!
//! A message is one or more frames. A frame is a 4-byte big-endian header followed by up to
//! [`MAX_FRAME`] bytes: the header's low 31 bits are the frame's length and its top bit
//! ([`MORE`]) says that the message continues in the next frame. The concatenated frames'
//! bytes (the payload) are the protocol version followed by the bincode 2 (serde, standard
//! config) encoding of a [`Message`]: its kind (the variant's index, one byte) and its fields
//! in order. Small messages are one frame; a large one (a big document's changes or sync
//! message) is cut into frames of [`MAX_FRAME`] bytes, up to [`MAX_MESSAGE`] in all. Lengths
//! are checked before anything is allocated and buffers grow only with bytes that arrive, so
//! hostile bytes cannot make a node allocate more than they send, and never more than
//! [`MAX_MESSAGE`] per message.
//!
//! # Versions
//! A node speaks [`PROTOCOL_VERSION`] and the one before it, [`PREVIOUS_VERSION`] (release
//! 0.1.0's, see [`v5`]). The QUIC handshake picks the newest both speak (each side offers
//! `concordant/<version>` ALPNs, newest first: [`alpns`]); both Hellos then state it, and
//! every message on that connection is encoded in it ([`encode_as`], [`decode_payload_as`]).
//! A message kind the older version lacks is not sent on such a link
//! ([`WireError::NotInVersion`]).
//!
//! How the protocol grows without breaking older peers of the same version: a new message
//! kind goes at the end of [`Message`] (a receiver skips kinds it does not know:
//! [`WireError::UnknownKind`]), and a new field goes at the end of a message (a receiver
//! ignores bytes after the fields it knows). The two structs that change most, the
//! membership state ([`Message::Topology`]) and a node's view ([`Message::ClusterTell`]),
//! travel as JSON, so they gain fields anywhere. Any other change needs a new version, and
//! the golden fixtures (`tests/fixtures/wire/`) fail the tests until it has one.
//!
//! After the Hellos, a connection's frames may be compressed as one deflate stream per
//! direction (see `transport`); that is below this format and invisible here.
//!
//! This module owns encoding and decoding only. It does not touch sockets (see `transport`)
//! nor decide what to send (see `core`).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::fnv::Fnv1a;
pub use crate::wire_limits::{BATCH_BUDGET, MAX_FRAME, MAX_MESSAGE};

pub mod v5;

/// Version of the peer protocol this release speaks natively; also part of the QUIC ALPN.
pub const PROTOCOL_VERSION: u8 = 6;

/// The version before it (release 0.1.0's), still spoken with peers that speak no newer one.
pub const PREVIOUS_VERSION: u8 = v5::VERSION;

/// The versions this node speaks, newest first.
pub const VERSIONS: [u8; 2] = [PROTOCOL_VERSION, PREVIOUS_VERSION];

/// ALPN protocol id of [`PROTOCOL_VERSION`].
pub const ALPN: &[u8] = b"concordant/6";

/// The ALPN protocol id of `version`: `concordant/<version>`.
pub fn alpn(version: u8) -> Vec<u8> {
    format!("concordant/{version}").into_bytes()
}

/// The ALPN ids a node offers and accepts, newest first: QUIC picks the newest both speak.
pub fn alpns() -> Vec<Vec<u8>> {
    VERSIONS.iter().map(|&v| alpn(v)).collect()
}

/// The version of an ALPN id this node speaks (`None`: another protocol or version).
pub fn version_of_alpn(id: &[u8]) -> Option<u8> {
    VERSIONS.into_iter().find(|&v| alpn(v) == id)
}

/// Size of the header of every frame.
pub const HEADER_LEN: usize = 4;

/// The header bit saying that the message continues in the next frame.
pub const MORE: u32 = 1 << 31;

/// The name of the one compression a [`Hello`] can offer today: a deflate stream per
/// direction, flushed after every batch of frames.
pub const DEFLATE: &str = "deflate";

/// Errors from decoding or encoding a frame. None of them leaves any state behind.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame header announces more than [`MAX_FRAME`] bytes, or a message's frames add up
    /// to more than [`MAX_MESSAGE`] (received or to be sent); refused before it is read.
    #[error("{what} of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// "frame" or "message".
        what: &'static str,
        /// Announced or produced length.
        len: usize,
        /// The limit, [`MAX_FRAME`] or [`MAX_MESSAGE`].
        max: usize,
    },
    /// A frame of length zero.
    #[error("empty frame")]
    Empty,
    /// The version byte is not the one of the connection (or not one this build speaks).
    #[error("protocol version {found} on a connection of version {expected}")]
    UnknownVersion {
        /// The version byte received.
        found: u8,
        /// The connection's version.
        expected: u8,
    },
    /// A message kind this build does not know (a newer peer's addition): skipped, not an
    /// error of the connection.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The message kind does not exist in the connection's (older) version: not sent.
    #[error("{kind} messages do not exist in protocol version {version}")]
    NotInVersion {
        /// [`Message::kind`].
        kind: &'static str,
        /// The connection's version.
        version: u8,
    },
    /// The bytes are not a valid message of this version.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The payload decoded, but bytes were left over after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// A message could not be encoded (never expected for well-formed values).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// First message on every connection, in both directions: who is speaking and for which
/// cluster. The acceptor answers only after it has checked the dialer's hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Cluster id; a peer of another cluster is refused.
    pub cluster: String,
    /// The sender's node id; must match the node id in its TLS certificate.
    pub node: String,
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u8,
    /// Compressions the sender can read and write, preferred first (today only
    /// [`DEFLATE`], or none). Both directions are compressed when both Hellos offer it.
    pub compression: Vec<String>,
}

/// Changes of one document that originated at one node, pushed to a neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocChanges {
    /// Document id.
    pub doc: String,
    /// Node at which these changes were written; decides where they are forwarded.
    pub origin: String,
    /// Encoded Automerge changes.
    pub changes: Vec<ByteBuf>,
    /// The writer waits for durable acknowledgements of these changes.
    pub want_ack: bool,
}

/// Durable acknowledgement: node `by` has these changes of `doc` on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Document id.
    pub doc: String,
    /// The node that has made the changes durable.
    pub by: String,
    /// Hashes of the acknowledged changes.
    pub hashes: Vec<[u8; 32]>,
}

/// Reconciliation: fingerprints of nodes of one level of the sender's tree over its set of
/// (document, heads digest) pairs (see `core::reconcile`). The receiver compares them with
/// its own and answers with the children of the nodes that differ, or with the items of
/// the leaf buckets that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprints {
    /// Tree level of these nodes (1 = the root's children).
    pub level: u8,
    /// (node index within the level, fingerprint).
    pub nodes: Vec<(u32, u64)>,
}

/// Reconciliation: every (document, heads digest) pair the sender holds in one leaf bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Leaf bucket index.
    pub bucket: u32,
    /// (document id, [`heads_digest`] of its heads).
    pub docs: Vec<(String, u64)>,
}

/// Bulk repair: the sender's heads of a document that differs between the two nodes. The
/// receiver sends the changes the sender lacks (all of them if `heads` is empty); if it
/// lacks some of the sender's changes itself, it answers with its own heads (`reply` set),
/// and a reply never gets a reply: concurrent histories go to Automerge's sync protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    /// Document id.
    pub doc: String,
    /// The sender's heads of it (empty: the sender does not have it).
    pub heads: Vec<[u8; 32]>,
    /// This answers a `Want` of the receiver.
    pub reply: bool,
}

/// An automerge-repo `ephemeral` message (presence, cursors) relayed between nodes to the
/// clients of a document; never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ephemeral {
    /// Document id.
    pub doc: String,
    /// The node whose client sent it (routing: it spreads like that node's pushes).
    pub origin: String,
    /// The sending client's peer id.
    pub sender: String,
    /// The sending client's session id.
    pub session: String,
    /// The client's message counter in that session.
    pub count: u64,
    /// The payload, opaque (CBOR from the client).
    pub data: ByteBuf,
}

/// Every message between peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Connection handshake.
    Hello(Hello),
    /// New changes, grouped by document and origin, with the sender's receipt of what it
    /// received on this connection when one is due and the fingerprints of a periodic
    /// anti-entropy round (what rides on a push costs no message of its own; see
    /// [`Message::Receipt`] and `core::replica::repair`). A push may carry no changes, only
    /// fingerprints that waited too long for changes to ride with.
    Push {
        /// The changes.
        groups: Vec<DocChanges>,
        /// Totals of changes and bytes received so far, as a [`Message::Receipt`] states.
        receipt: Option<(u64, u64)>,
        /// Reconciliation: what [`Message::Fingerprints`] says, one per message, answered
        /// on a push again.
        fingerprints: Vec<Fingerprints>,
    },
    /// Durable acknowledgements, routed back toward the writers.
    Ack(Vec<Ack>),
    /// Reconciliation: fingerprints of tree nodes.
    Fingerprints(Fingerprints),
    /// Reconciliation: the items of leaf buckets whose fingerprints differ.
    Items(Vec<Bucket>),
    /// Bulk repair: heads of documents that differ; the receiver sends what is missing.
    Want(Vec<Want>),
    /// One Automerge sync-protocol message for one document.
    Sync {
        /// Document id.
        doc: String,
        /// Encoded `automerge::sync::Message`.
        data: ByteBuf,
    },
    /// A client's ephemeral message for the clients of a document on other nodes.
    Ephemeral(Ephemeral),
    /// The sender's live topology (sent on link-up and after every change; merged by the
    /// receiver, see [`crate::membership`]). JSON on the wire, so it can gain fields.
    Topology(#[serde(with = "json_bytes")] Box<crate::membership::Membership>),
    /// Confirms the pushes received on this connection so far: totals of changes and bytes
    /// (the sender's replication lag, see `core::lag`).
    Receipt {
        /// Changes received.
        changes: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// A question for the cluster view (`GET /v1/cluster`), flooded over the links; every
    /// node answers with a [`Message::ClusterTell`].
    ClusterAsk {
        /// The node asking.
        asker: String,
        /// The question's number at the asker.
        id: u64,
    },
    /// A node's view of itself, flooded back toward the asker.
    ClusterTell {
        /// The node that asked.
        asker: String,
        /// The question's number.
        id: u64,
        /// The answer (JSON on the wire, so it can gain fields).
        #[serde(with = "json_bytes")]
        view: Box<crate::cluster::NodeView>,
    },
    /// A client's request taken by a node that does not replicate its document, on its
    /// way (hop by hop) to a replica.
    Forward(Box<Forward>),
    /// The replica's answer to a [`Message::Forward`], on its way back to the node that
    /// took the request.
    Reply(Box<Reply>),
    /// Documents the sender stores but does not replicate (hinted writes, or partitions
    /// it no longer holds), for a replica of each: the receiver confirms with
    /// [`Message::HandedOff`] those it holds durably at (or past) these heads, and asks for
    /// the others (a [`Message::Want`]).
    Handoff {
        /// The documents and their heads at the sender.
        docs: Vec<HandoffDoc>,
        /// The sender is leaving the cluster and places documents as they will be without
        /// it: the receiver takes them even where it is not (yet) a replica.
        leaving: bool,
    },
    /// These documents are held durably with every change of these heads by the nodes
    /// each names (the receiver of the offer, if it is a replica, and the replicas beyond
    /// it that confirmed to it: see [`HandoffDoc::by`]); the sender may drop its copy once
    /// every replica has been named.
    HandedOff(Vec<HandoffDoc>),
    /// The sender does not replicate these documents but has clients following them:
    /// the receiver, a replica, pushes their changes to it too (`follow`), or no longer.
    Follow {
        /// Document ids.
        docs: Vec<String>,
        /// Start (true) or stop following.
        follow: bool,
    },
    /// The sender's revoked user tokens (sent on link-up and after every change; merged by
    /// the receiver, see [`crate::revocations`]).
    Revocations(Box<crate::revocations::Revocations>),
}

/// A document and its heads at the node that hands it off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffDoc {
    /// Document id.
    pub doc: String,
    /// Its heads at the sender.
    pub heads: Vec<[u8; 32]>,
    /// In a [`Message::HandedOff`]: the nodes known to hold these heads durably (on a
    /// ring, a replica answers for the replicas beyond it). Empty in an offer.
    pub by: Vec<String>,
}

/// A request forwarded to a replica of its document (see [`Message::Forward`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The request's number at `origin`.
    pub id: u64,
    /// The node that took the request and waits for the answer.
    pub origin: String,
    /// The replica `origin` chose.
    pub target: String,
    /// Nodes passed so far (a relay refuses past the number of nodes: a loop).
    pub hops: u8,
    /// Document id.
    pub doc: String,
    /// The document's partition as `origin` computed it (checked by the receiver).
    pub partition: u16,
    /// What to do.
    pub request: ForwardRequest,
}

/// What a forwarded request asks of the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// `POST /v1/docs/{id}/ops`: the write request as JSON
    /// ([`crate::ops::WriteRequest::to_json`]).
    Ops(String),
    /// Merge Automerge data (a saved document or changes), with a write concern among
    /// the document's replicas (`ack` other than local waits for the acknowledgements of
    /// the data's last new change: meant for one change, a change function's, see
    /// [`crate::Node::change_with`]), waiting at most `timeout_ms` for it.
    Merge {
        /// The data.
        data: ByteBuf,
        /// The write concern.
        ack: crate::ops::Ack,
        /// How long the write concern may take, in ms.
        timeout_ms: u64,
    },
    /// The document as JSON.
    Json,
    /// The document saved in Automerge's binary format.
    Save,
}

/// The answer to a [`Forward`], routed back to its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's number at `origin`.
    pub id: u64,
    /// The node waiting for it.
    pub origin: String,
    /// The node that answered.
    pub by: String,
    /// Nodes passed so far.
    pub hops: u8,
    /// The outcome.
    pub outcome: ForwardOutcome,
}

/// The outcome of a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardOutcome {
    /// The write is done (with its write concern met): heads after it, and the replicas
    /// that acknowledged it besides the one that answers.
    Written {
        /// Heads after the write.
        heads: Vec<[u8; 32]>,
        /// Replicas that acknowledged it.
        acked_by: Vec<String>,
    },
    /// The merge is durable (with its write concern met): new changes, the heads after it,
    /// and the replicas that acknowledged it besides the one that answers.
    Merged {
        /// Changes new to the document.
        new_changes: u64,
        /// Heads after the merge.
        heads: Vec<[u8; 32]>,
        /// Replicas that acknowledged it.
        acked_by: Vec<String>,
    },
    /// The document as JSON text (`None`: the replica has no such document).
    Json(Option<String>),
    /// The saved document (`None`: the replica has no such document).
    Saved(Option<ByteBuf>),
    /// Refused or failed, as an HTTP status and message. A write concern not met
    /// (504) keeps the heads and the replicas that did acknowledge.
    Failed {
        /// HTTP status.
        status: u16,
        /// What went wrong and why.
        message: String,
        /// Heads after the write (504 only).
        heads: Vec<[u8; 32]>,
        /// Replicas that acknowledged it (504 only).
        acked_by: Vec<String>,
    },
}

/// The short name of each message kind, by its index on the wire (see [`Message::kind`]).
pub const KIND_NAMES: [&str; KINDS as usize] = [
    "hello",
    "push",
    "ack",
    "fingerprints",
    "items",
    "want",
    "sync",
    "ephemeral",
    "topology",
    "receipt",
    "cluster-ask",
    "cluster-tell",
    "forward",
    "reply",
    "handoff",
    "handed-off",
    "follow",
    "revocations",
];

impl Message {
    /// New changes, with nothing riding on them.
    pub fn push(groups: Vec<DocChanges>) -> Message {
        Message::Push {
            groups,
            receipt: None,
            fingerprints: Vec::new(),
        }
    }

    /// The kind's index on the wire (the variant's index in [`Message`]).
    pub fn kind_index(&self) -> usize {
        match self {
            Message::Hello(_) => 0,
            Message::Push { .. } => 1,
            Message::Ack(_) => 2,
            Message::Fingerprints(_) => 3,
            Message::Items(_) => 4,
            Message::Want(_) => 5,
            Message::Sync { .. } => 6,
            Message::Ephemeral(_) => 7,
            Message::Topology(_) => 8,
            Message::Receipt { .. } => 9,
            Message::ClusterAsk { .. } => 10,
            Message::ClusterTell { .. } => 11,
            Message::Forward(_) => 12,
            Message::Reply(_) => 13,
            Message::Handoff { .. } => 14,
            Message::HandedOff(_) => 15,
            Message::Follow { .. } => 16,
            Message::Revocations(_) => 17,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        KIND_NAMES[self.kind_index()]
    }
}

impl Message {
    /// The documents whose contents this message carries (changes or sync data), to name
    /// them when it cannot be sent.
    pub fn docs(&self) -> Vec<String> {
        match self {
            Message::Push { groups, .. } => groups.iter().map(|b| b.doc.clone()).collect(),
            Message::Sync { doc, .. } => vec![doc.clone()],
            Message::Ephemeral(e) => vec![e.doc.clone()],
            Message::Forward(f) => vec![f.doc.clone()],
            _ => Vec::new(),
        }
    }

    /// Bytes of document data the message carries; its encoding is a little larger.
    fn bulk_len(&self) -> usize {
        match self {
            Message::Push { groups, .. } => groups
                .iter()
                .flat_map(|b| b.changes.iter())
                .map(|c| c.len())
                .sum(),
            Message::Sync { data, .. } => data.len(),
            Message::Ephemeral(e) => e.data.len(),
            Message::Forward(f) => match &f.request {
                ForwardRequest::Ops(json) => json.len(),
                ForwardRequest::Merge { data, .. } => data.len(),
                _ => 0,
            },
            Message::Reply(r) => match &r.outcome {
                ForwardOutcome::Json(Some(json)) => json.len(),
                ForwardOutcome::Saved(Some(data)) => data.len(),
                ForwardOutcome::Failed { message, .. } => message.len(),
                _ => 0,
            },
            _ => 0,
        }
    }
}

/// Checks that `msg` can be sent (its payload is at most [`MAX_MESSAGE`]), cheaply for the
/// messages far below the limit.
pub fn check_fits(msg: &Message) -> Result<(), WireError> {
    if msg.bulk_len() < MAX_MESSAGE / 2 {
        // The rest of a message is small next to its document data.
        return Ok(());
    }
    check_message_len(0, payload_len(msg))
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE>()
}

fn too_large(what: &'static str, len: usize, max: usize) -> WireError {
    WireError::TooLarge { what, len, max }
}

/// Number of message kinds of [`PROTOCOL_VERSION`]: the variants of [`Message`], whose
/// indices are the kinds on the wire.
pub const KINDS: u8 = 18;

/// Encodes `msg` in [`PROTOCOL_VERSION`] as a complete message: one frame, or several if it
/// is over [`MAX_FRAME`].
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    encode_as(msg, PROTOCOL_VERSION)
}

/// Encodes `msg` in `version` (one of [`VERSIONS`]) as a complete message (in version 5,
/// what rides on a push follows it as messages of their own: see [`v5::follow_up`]).
/// [`WireError::NotInVersion`] if that version has no such message.
pub fn encode_as(msg: &Message, version: u8) -> Result<Vec<u8>, WireError> {
    if version == v5::VERSION {
        // Version 5 has no use for a push without changes: only what rides on it goes.
        let bare = matches!(msg, Message::Push { groups, .. } if groups.is_empty());
        let mut framed = if bare {
            Vec::new()
        } else {
            encode_one(msg, version)?
        };
        for next in v5::follow_up(msg) {
            framed.extend(encode_one(&next, version)?);
        }
        return Ok(framed);
    }
    encode_one(msg, version)
}

/// Encodes `msg` in `version` as one complete message.
fn encode_one(msg: &Message, version: u8) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; HEADER_LEN];
    out.push(version);
    match version {
        PROTOCOL_VERSION => bincode::serde::encode_into_std_write(msg, &mut out, config())
            .map(drop)
            .map_err(|e| WireError::Encode(e.to_string()))?,
        v5::VERSION => v5::encode_into(msg, &mut out)?,
        other => {
            return Err(WireError::Encode(format!(
                "protocol version {other} is not one this node speaks"
            )))
        }
    }
    frame(out)
}

/// Frames `out`, a payload after [`HEADER_LEN`] reserved bytes.
fn frame(mut out: Vec<u8>) -> Result<Vec<u8>, WireError> {
    let len = out.len() - HEADER_LEN;
    if len > MAX_MESSAGE {
        return Err(too_large("message", len, MAX_MESSAGE));
    }
    if len <= MAX_FRAME {
        out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        return Ok(out);
    }
    let payload = &out[HEADER_LEN..];
    let frames = payload.len().div_ceil(MAX_FRAME);
    let mut framed = Vec::with_capacity(payload.len() + frames * HEADER_LEN);
    let mut chunks = payload.chunks(MAX_FRAME).peekable();
    while let Some(chunk) = chunks.next() {
        let more = if chunks.peek().is_some() { MORE } else { 0 };
        framed.extend_from_slice(&(chunk.len() as u32 | more).to_be_bytes());
        framed.extend_from_slice(chunk);
    }
    Ok(framed)
}

/// The size of `msg`'s encoded payload (all its frames, without their headers), without
/// encoding it into memory.
pub fn payload_len(msg: &Message) -> usize {
    struct Count(usize);
    impl bincode::enc::write::Writer for Count {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            self.0 += bytes.len();
            Ok(())
        }
    }
    let mut count = Count(1);
    let _ = bincode::serde::encode_into_writer(msg, &mut count, config());
    count.0
}

/// The size of `msg`'s encoded frames in bytes (headers included), without encoding it
/// into memory.
pub fn encoded_len(msg: &Message) -> usize {
    let payload = payload_len(msg);
    payload + payload.div_ceil(MAX_FRAME).max(1) * HEADER_LEN
}

/// A frame header, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Bytes of the frame after its header, 1 to [`MAX_FRAME`].
    pub len: usize,
    /// The message continues in the next frame.
    pub more: bool,
}

/// Reads a frame header and checks its length against [`MAX_FRAME`] before anything is
/// allocated.
pub fn frame_head(header: [u8; HEADER_LEN]) -> Result<FrameHead, WireError> {
    let raw = u32::from_be_bytes(header);
    let len = (raw & !MORE) as usize;
    if len > MAX_FRAME {
        return Err(too_large("frame", len, MAX_FRAME));
    }
    if len == 0 {
        return Err(WireError::Empty);
    }
    Ok(FrameHead {
        len,
        more: raw & MORE != 0,
    })
}

/// Checks that a message whose frames so far hold `so_far` bytes may take `next` more.
pub fn check_message_len(so_far: usize, next: usize) -> Result<(), WireError> {
    let len = so_far.saturating_add(next);
    if len > MAX_MESSAGE {
        return Err(too_large("message", len, MAX_MESSAGE));
    }
    Ok(())
}

/// Decodes one payload (the bytes of a message's frames after their headers) of
/// [`PROTOCOL_VERSION`].
pub fn decode_payload(payload: &[u8]) -> Result<Message, WireError> {
    decode_payload_as(payload, PROTOCOL_VERSION)
}

/// Decodes one payload of a connection of `version` (one of [`VERSIONS`]): its version byte
/// must be that one. In [`PROTOCOL_VERSION`], a kind past the known ones is
/// [`WireError::UnknownKind`] (to skip) and bytes after the known fields are ignored (fields
/// a newer peer appended); an older version's messages must be exact.
pub fn decode_payload_as(payload: &[u8], version: u8) -> Result<Message, WireError> {
    check_message_len(0, payload.len())?;
    let (&found, body) = payload.split_first().ok_or(WireError::Empty)?;
    if found != version {
        return Err(WireError::UnknownVersion {
            found,
            expected: version,
        });
    }
    match version {
        PROTOCOL_VERSION => {
            if let Some(&kind) = body.first().filter(|&&k| k >= KINDS) {
                return Err(WireError::UnknownKind(kind));
            }
            let (msg, _known): (Message, usize) =
                bincode::serde::decode_from_slice(body, config()).map_err(malformed)?;
            Ok(msg)
        }
        v5::VERSION => v5::decode(body),
        _ => Err(WireError::UnknownVersion {
            found,
            expected: PROTOCOL_VERSION,
        }),
    }
}

fn malformed(e: impl std::fmt::Display) -> WireError {
    WireError::Malformed(e.to_string())
}

/// Serde adapter for the structs that travel as JSON (see the module docs): the value as
/// the bytes of its JSON.
mod json_bytes {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::ByteBuf;

    pub(super) fn serialize<T: Serialize, S: Serializer>(
        value: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let json = serde_json::to_vec(value).map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&json)
    }

    pub(super) fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        let bytes = ByteBuf::deserialize(d)?;
        serde_json::from_slice(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Decodes the first complete message of `buf`: `Ok(None)` if more bytes are needed,
/// otherwise the message and how many bytes of `buf` its frames used.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
    let mut at = 0;
    let mut joined: Vec<u8> = Vec::new();
    loop {
        let Some(header) = buf.get(at..at + HEADER_LEN) else {
            return Ok(None);
        };
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(header);
        let head = frame_head(h)?;
        check_message_len(joined.len(), head.len)?;
        let start = at + HEADER_LEN;
        let Some(body) = buf.get(start..start + head.len) else {
            return Ok(None);
        };
        at = start + head.len;
        if !head.more && joined.is_empty() {
            return Ok(Some((decode_payload(body)?, at)));
        }
        joined.extend_from_slice(body);
        if !head.more {
            return Ok(Some((decode_payload(&joined)?, at)));
        }
    }
}

/// A stable 64-bit digest of a document's heads (order-independent), for anti-entropy.
/// FNV-1a over the sorted 32-byte hashes: heads are already cryptographic hashes, so this
/// only has to be deterministic across nodes and builds.
pub fn heads_digest(heads: &[[u8; 32]]) -> u64 {
    if let [head] = heads {
        // The common case, without sorting (a restart digests millions of these).
        let mut h = Fnv1a::new();
        h.write(head);
        return h.finish();
    }
    let mut sorted: Vec<&[u8; 32]> = heads.iter().collect();
    sorted.sort_unstable();
    let mut h = Fnv1a::new();
    for head in sorted {
        h.write(head);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                cluster: "demo".into(),
                node: "n1".into(),
                version: PROTOCOL_VERSION,
                compression: vec![DEFLATE.into()],
            }),
            Message::push(vec![DocChanges {
                doc: "d".into(),
                origin: "n2".into(),
                changes: vec![ByteBuf::from(vec![1, 2, 3]), ByteBuf::from(vec![])],
                want_ack: true,
            }]),
            Message::Ack(vec![Ack {
                doc: "d".into(),
                by: "n3".into(),
                hashes: vec![[7; 32]],
            }]),
            Message::Fingerprints(Fingerprints {
                level: 1,
                nodes: vec![(3, 42)],
            }),
            Message::Items(vec![Bucket {
                bucket: 7,
                docs: vec![("x".into(), 42)],
            }]),
            Message::Want(vec![Want {
                doc: "x".into(),
                heads: vec![[9; 32]],
                reply: false,
            }]),
            Message::Sync {
                doc: "d".into(),
                data: ByteBuf::from(vec![0x42; 100]),
            },
        ]
    }

    #[test]
    fn round_trip_every_message() {
        for msg in sample() {
            let bytes = encode(&msg).unwrap();
            let (back, used) = decode_frame(&bytes).unwrap().unwrap();
            assert_eq!(back, msg);
            assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn encoded_len_is_the_frame_length() {
        for msg in sample() {
            assert_eq!(encoded_len(&msg), encode(&msg).unwrap().len());
        }
    }

    #[test]
    fn truncated_frames_ask_for_more() {
        for msg in sample() {
            let bytes = encode(&msg).unwrap();
            for cut in 0..bytes.len() {
                assert!(
                    decode_frame(&bytes[..cut]).unwrap().is_none(),
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn truncated_payload_is_malformed() {
        for msg in sample() {
            let bytes = encode(&msg).unwrap();
            let payload = &bytes[HEADER_LEN..];
            for cut in 1..payload.len() {
                assert!(decode_payload(&payload[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        for raw in [MAX_FRAME as u32 + 1, (MAX_FRAME as u32 + 1) | MORE] {
            let header = raw.to_be_bytes();
            assert!(matches!(
                frame_head(header),
                Err(WireError::TooLarge { .. })
            ));
            let mut buf = header.to_vec();
            buf.extend_from_slice(&[0; 16]);
            assert!(matches!(
                decode_frame(&buf),
                Err(WireError::TooLarge { .. })
            ));
        }
        assert!(matches!(frame_head([0; 4]), Err(WireError::Empty)));
        assert!(matches!(
            frame_head(MORE.to_be_bytes()),
            Err(WireError::Empty)
        ));
    }

    #[test]
    fn a_message_over_one_frame_is_cut_into_frames_and_joined_again() {
        let msg = Message::Sync {
            doc: "big".into(),
            data: ByteBuf::from(vec![7u8; MAX_FRAME + MAX_FRAME / 2]),
        };
        let bytes = encode(&msg).unwrap();
        assert_eq!(bytes.len(), encoded_len(&msg));
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&bytes[..HEADER_LEN]);
        assert_eq!(
            frame_head(h).unwrap(),
            FrameHead {
                len: MAX_FRAME,
                more: true
            }
        );
        // Every prefix asks for more; the whole decodes, with what follows left alone.
        for cut in [
            0,
            HEADER_LEN,
            MAX_FRAME,
            MAX_FRAME + HEADER_LEN + 1,
            bytes.len() - 1,
        ] {
            assert!(
                decode_frame(&bytes[..cut]).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        let mut stream = bytes.clone();
        stream.extend_from_slice(&encode(&sample()[0]).unwrap());
        let (back, used) = decode_frame(&stream).unwrap().unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn a_message_over_the_limit_is_refused() {
        assert!(check_message_len(MAX_MESSAGE - 10, 10).is_ok());
        assert!(matches!(
            check_message_len(MAX_MESSAGE - 10, 11),
            Err(WireError::TooLarge {
                what: "message",
                ..
            })
        ));
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = encode(&sample()[0]).unwrap();
        bytes[HEADER_LEN] = 9;
        match decode_frame(&bytes) {
            Err(WireError::UnknownVersion {
                found: 9,
                expected: PROTOCOL_VERSION,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A fixed pseudo-random stream; every prefix and every start offset is decoded.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for start in 0..256 {
            let _ = decode_payload(&garbage[start..]);
            let mut p = vec![PROTOCOL_VERSION];
            p.extend_from_slice(&garbage[start..start + 64]);
            let _ = decode_payload(&p);
        }
    }

    #[test]
    fn huge_inner_length_does_not_allocate() {
        // A Push claiming 2^60 documents: must fail, not allocate.
        let mut p = vec![PROTOCOL_VERSION, 1];
        p.extend_from_slice(&[0xff, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(decode_payload(&p).is_err());
    }

    #[test]
    fn bytes_after_a_message_are_fields_a_newer_peer_appended_but_not_in_version_5() {
        let bytes = encode(&sample()[3]).unwrap();
        let mut payload = bytes[HEADER_LEN..].to_vec();
        payload.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_payload(&payload).unwrap(), sample()[3]);
        let bytes = encode_as(&sample()[3], v5::VERSION).unwrap();
        let mut payload = bytes[HEADER_LEN..].to_vec();
        payload.push(0);
        assert!(matches!(
            decode_payload_as(&payload, v5::VERSION),
            Err(WireError::Trailing(1))
        ));
    }

    #[test]
    fn an_unknown_kind_is_named_to_be_skipped_but_not_in_version_5() {
        for kind in [KINDS, 200, 255] {
            let payload = [PROTOCOL_VERSION, kind, 1, 2, 3];
            assert!(matches!(
                decode_payload(&payload),
                Err(WireError::UnknownKind(k)) if k == kind
            ));
        }
        let payload = [v5::VERSION, v5::KINDS, 0];
        assert!(matches!(
            decode_payload_as(&payload, v5::VERSION),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn the_last_kind_is_kinds_minus_one() {
        let msg = Message::Revocations(Box::default());
        let bytes = encode(&msg).unwrap();
        assert_eq!(bytes[HEADER_LEN + 1], KINDS - 1);
    }

    #[test]
    fn a_connection_decodes_only_its_own_version() {
        let bytes = encode(&sample()[0]).unwrap();
        assert!(matches!(
            decode_payload_as(&bytes[HEADER_LEN..], v5::VERSION),
            Err(WireError::UnknownVersion {
                found: PROTOCOL_VERSION,
                expected: v5::VERSION
            })
        ));
    }

    #[test]
    fn version_5_carries_its_kinds_and_refuses_the_newer_ones() {
        for msg in sample() {
            let bytes = encode_as(&msg, v5::VERSION).unwrap();
            assert_eq!(bytes[HEADER_LEN], v5::VERSION);
            assert_eq!(decode_payload_as(&bytes[HEADER_LEN..], 5).unwrap(), msg);
            // The kinds both versions share have the same bytes but for the version (and
            // the push's receipt and fingerprints, absent here, two bytes at the end in
            // version 6).
            let current = encode(&msg).unwrap();
            let end = current.len() - 2 * usize::from(matches!(msg, Message::Push { .. }));
            assert_eq!(bytes[HEADER_LEN + 1..], current[HEADER_LEN + 1..end]);
        }
        let msg = Message::Follow {
            docs: vec!["d".into()],
            follow: true,
        };
        assert!(matches!(
            encode_as(&msg, v5::VERSION),
            Err(WireError::NotInVersion {
                kind: "follow",
                version: 5
            })
        ));
    }

    #[test]
    fn alpn_ids_name_the_versions_newest_first() {
        assert_eq!(
            alpns(),
            vec![b"concordant/6".to_vec(), b"concordant/5".to_vec()]
        );
        assert_eq!(alpn(PROTOCOL_VERSION), ALPN);
        assert_eq!(version_of_alpn(b"concordant/5"), Some(5));
        assert_eq!(version_of_alpn(b"concordant/7"), None);
        assert_eq!(version_of_alpn(b"h3"), None);
    }

    #[test]
    fn heads_digest_ignores_order() {
        let a = [[1u8; 32], [2u8; 32]];
        let b = [[2u8; 32], [1u8; 32]];
        assert_eq!(heads_digest(&a), heads_digest(&b));
        assert_ne!(heads_digest(&a), heads_digest(&a[..1]));
        assert_ne!(heads_digest(&[]), heads_digest(&a[..1]));
    }

    #[test]
    fn heads_digest_is_pinned() {
        // Digests are compared between nodes (and versions) and kept in the reconciliation
        // tree: the values must never drift. Computed with the FNV-1a of 8962ab3.
        let mut counting = [0u8; 32];
        for (i, b) in counting.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(heads_digest(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(heads_digest(&[[1; 32]]), 0x38df_9853_f4ef_b1c5);
        assert_eq!(
            heads_digest(&[[2; 32], counting, [1; 32]]),
            0x182e_d5df_9d06_5165
        );
    }
}
