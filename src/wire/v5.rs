//! Protocol version 5: the peer protocol of release 0.1.0 (commit 8962ab3), spoken with
//! peers that speak no newer version (see the versions in [`super`]).
//!
//! Its messages are the first [`KINDS`] kinds of [`Message`] (hello to cluster-tell), with
//! the same fields and bytes but for two structs, which travel as bincode in the form that
//! release knows: the membership state without `replicas` ([`V5Form`]) and a node's view
//! without its partition counts ([`NodeViewV5`]); a push carries changes only, and what
//! rides on it in version 6 (a receipt, fingerprints) follows it as messages of their own
//! ([`follow_up`]). Nothing else is sent on such a link, and what arrives must be exact
//! (no unknown kinds, no bytes after the message): that release is frozen, and
//! `tests/fixtures/wire/v5/` holds bytes it wrote itself.
//!
//! Owns only the translation between [`Message`] and version 5's bytes; framing is
//! [`super`]'s.

use serde::{Deserialize, Serialize};

use super::{config, malformed, Message, WireError};
use crate::cluster::{Event, NodeView, PeerView};
use crate::membership::V5Form;

/// This version's number.
pub const VERSION: u8 = 5;

/// Message kinds of version 5: hello (0) to cluster-tell (11).
pub const KINDS: u8 = 12;

/// The kind of [`Message::Push`].
const PUSH: u8 = 1;
/// The kind of [`Message::Topology`].
const TOPOLOGY: u8 = 8;
/// The kind of [`Message::ClusterTell`].
const CLUSTER_TELL: u8 = 11;

/// A node's view as release 0.1.0 has it: [`NodeView`] without the partition counts.
#[derive(Serialize, Deserialize)]
struct NodeViewV5 {
    id: String,
    started_ms: u64,
    docs: u64,
    writes_total: u64,
    writes_per_s: f64,
    pending_writes: u64,
    sync_clients: u64,
    peers: Vec<PeerView>,
    events: Vec<Event>,
}

impl From<&NodeView> for NodeViewV5 {
    fn from(v: &NodeView) -> NodeViewV5 {
        NodeViewV5 {
            id: v.id.clone(),
            started_ms: v.started_ms,
            docs: v.docs,
            writes_total: v.writes_total,
            writes_per_s: v.writes_per_s,
            pending_writes: v.pending_writes,
            sync_clients: v.sync_clients,
            peers: v.peers.clone(),
            events: v.events.clone(),
        }
    }
}

impl From<NodeViewV5> for NodeView {
    /// A node of release 0.1.0 replicates every partition and keeps nothing for others.
    fn from(v: NodeViewV5) -> NodeView {
        NodeView {
            id: v.id,
            started_ms: v.started_ms,
            docs: v.docs,
            writes_total: v.writes_total,
            writes_per_s: v.writes_per_s,
            pending_writes: v.pending_writes,
            sync_clients: v.sync_clients,
            partitions: u64::from(crate::placement::PARTITIONS),
            partitions_in: 0,
            partitions_out: 0,
            hints: 0,
            peers: v.peers,
            events: v.events,
        }
    }
}

/// Appends `value`'s bincode to `out`.
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), WireError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(drop)
        .map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes a `T` from the start of `bytes`: it and the bytes it used.
fn take<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), WireError> {
    bincode::serde::decode_from_slice(bytes, config()).map_err(malformed)
}

/// Appends `msg` in version 5 (after the version byte); [`WireError::NotInVersion`] for a
/// kind version 5 does not have.
pub(super) fn encode_into(msg: &Message, out: &mut Vec<u8>) -> Result<(), WireError> {
    match msg {
        // Version 5's push carries changes only: the rest follows ([`follow_up`]).
        Message::Push { groups, .. } => {
            out.push(PUSH);
            put(out, groups)
        }
        Message::Topology(state) => {
            out.push(TOPOLOGY);
            put(out, &V5Form((**state).clone()))
        }
        Message::ClusterTell { asker, id, view } => {
            out.push(CLUSTER_TELL);
            put(out, &(asker, id, NodeViewV5::from(&**view)))
        }
        // The same kinds, fields and bytes as in the current version.
        Message::Hello(_)
        | Message::Ack(_)
        | Message::Fingerprints(_)
        | Message::Items(_)
        | Message::Want(_)
        | Message::Sync { .. }
        | Message::Ephemeral(_)
        | Message::Receipt { .. }
        | Message::ClusterAsk { .. } => put(out, msg),
        Message::Forward(_)
        | Message::Reply(_)
        | Message::Handoff { .. }
        | Message::HandedOff(_)
        | Message::Follow { .. }
        | Message::Revocations(_) => Err(WireError::NotInVersion {
            kind: msg.kind(),
            version: VERSION,
        }),
    }
}

/// The messages version 5 needs after `msg` to say the same: what rides on a push (its
/// receipt, then its fingerprints, each a message of its own).
pub(super) fn follow_up(msg: &Message) -> Vec<Message> {
    let Message::Push {
        receipt,
        fingerprints,
        ..
    } = msg
    else {
        return Vec::new();
    };
    let receipt = receipt.map(|(changes, bytes)| Message::Receipt { changes, bytes });
    receipt
        .into_iter()
        .chain(fingerprints.iter().cloned().map(Message::Fingerprints))
        .collect()
}

/// Decodes the body (after the version byte) of a version 5 message, exactly.
pub(super) fn decode(body: &[u8]) -> Result<Message, WireError> {
    let (msg, used) = match body.first() {
        Some(&PUSH) => {
            let (groups, used) = take(&body[1..])?;
            (Message::push(groups), used + 1)
        }
        Some(&TOPOLOGY) => {
            let (V5Form(state), used) = take(&body[1..])?;
            (Message::Topology(Box::new(state)), used + 1)
        }
        Some(&CLUSTER_TELL) => {
            let ((asker, id, view), used): ((String, u64, NodeViewV5), usize) = take(&body[1..])?;
            let view = Box::new(NodeView::from(view));
            (Message::ClusterTell { asker, id, view }, used + 1)
        }
        Some(&kind) if kind >= KINDS => {
            return Err(WireError::Malformed(format!(
                "message kind {kind} does not exist in protocol version {VERSION}"
            )))
        }
        _ => take::<Message>(body)?,
    };
    if used != body.len() {
        return Err(WireError::Trailing(body.len() - used));
    }
    Ok(msg)
}
