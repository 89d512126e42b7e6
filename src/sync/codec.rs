//! The wire codec of the automerge-repo network protocol, version "1": message shapes and
//! bytes, nothing else.
//!
//! Every WebSocket binary message between an `@automerge/automerge-repo` client and a
//! server is one CBOR map with text keys (camelCase), encoded by cbor-x. This module turns
//! such bytes into a [`RepoMessage`] ([`decode`]) and back ([`encode`]). It owns the
//! message shapes and their bytes only: it does not touch sockets, does not decide what to
//! answer, and knows nothing about documents or Automerge sync state (`data` is opaque).
//!
//! Read from automerge-repo v2.5.6 (github.com/automerge/automerge-repo):
//! - `packages/automerge-repo/src/network/messages.ts`: `sync`, `request`,
//!   `doc-unavailable`, `ephemeral`, `remote-subscription-change`, `remote-heads-changed`;
//! - `packages/automerge-repo-network-websocket/src/messages.ts` and `protocolVersion.ts`:
//!   `join`, `peer`, `error`, protocol version `"1"`;
//! - `packages/automerge-repo-network-websocket/src/WebSocketClientAdapter.ts` and
//!   `WebSocketServerAdapter.ts`: the handshake and what each side sends;
//! - `packages/automerge-repo-network-websocket/README.md`: the CDDL of every message,
//!   including `leave` (which the WebSocket adapters of 2.5.6 never send);
//! - `packages/automerge-repo/src/helpers/cbor.ts`: cbor-x `Encoder({ tagUint8Array:
//!   false, useRecords: false })`, so byte strings are plain CBOR byte strings and absent
//!   optional fields that JS holds as `undefined` arrive as CBOR `undefined` (0xf7);
//! - samod (github.com/alexjg/samod) `samod-core/src/network/wire_protocol.rs`, a Rust
//!   implementation of the same protocol.
//!
//! Facts from those sources that shape this codec:
//! - The metadata key is `peerMetadata` (the README's CDDL says `metadata`; the code does
//!   not). Both are accepted when decoding; `peerMetadata` is written.
//! - cbor-x writes a JS number of 2^32 or more (such as a `Date.now()` timestamp) as a
//!   float64, so an integer-valued float is accepted for `count`; and it decodes a CBOR
//!   uint64 as a `BigInt`, so [`encode`] writes counts from 2^32 to 2^53 as float64, the
//!   way cbor-x itself would.
//! - A JS peer refuses to send a message whose `data` is empty, and its sync code cannot
//!   read one; [`decode`] rejects empty `data`, and callers must never [`encode`] one.
//!
//! [`decode`] never panics. It refuses input over [`MAX_MESSAGE_BYTES`], then walks the
//! bytes without allocating and refuses a message that is truncated, nested deeper than
//! [`MAX_DEPTH`], made of more than [`MAX_ITEMS`] CBOR items, or followed by more bytes;
//! only then does ciborium build the value, whose shape is checked field by field. Every
//! refusal is a [`CodecError`] that says what is wrong.

use std::collections::BTreeMap;

use ciborium::Value;

#[cfg(test)]
mod tests;

/// The only protocol version automerge-repo 2.5.x speaks (`ProtocolV1`).
pub const PROTOCOL_VERSION: &str = "1";

/// Largest message [`decode`] accepts, in bytes; larger ones are refused unread. It is the
/// default largest WebSocket message of tungstenite (and so of axum) too.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Deepest nesting of CBOR arrays, maps and tags [`decode`] accepts. The deepest real
/// message (`remote-heads-changed`) nests 4 levels.
pub const MAX_DEPTH: usize = 16;

/// Most CBOR items (every key, value and element counts) [`decode`] accepts in one message.
/// Real messages have a few dozen; `data` is one item however long it is.
pub const MAX_ITEMS: usize = 10_000;

/// Largest integer a JS number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// What a peer says about itself in `join` and `peer` (`PeerMetadata` in
/// `NetworkAdapterInterface.ts`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerMetadata {
    /// Id of the peer's persistent storage (`storageId`); a peer that has one lets the other
    /// side save and reload sync state under it across connections.
    pub storage_id: Option<String>,
    /// `isEphemeral`: the peer does not expect to come back with this storage id, so its
    /// sync state is not worth saving. Absent counts as `false`.
    pub is_ephemeral: bool,
}

/// One message of the automerge-repo network protocol. Field names follow the wire keys:
/// `sender_id` is `senderId`, `document_id` is `documentId`, and so on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoMessage {
    /// `join`: the first message of a client, naming itself and the versions it speaks.
    Join {
        /// The client's peer id.
        sender_id: String,
        /// The client's metadata, if it sent any.
        peer_metadata: Option<PeerMetadata>,
        /// Versions the client speaks (`["1"]` in practice). A `join` without the field is
        /// decoded as `["1"]`, which is how the JS server treats it (`selectProtocol`).
        supported_protocol_versions: Vec<String>,
    },
    /// `peer`: the server's answer to `join`, naming itself and the chosen version.
    Peer {
        /// The server's peer id.
        sender_id: String,
        /// The client's peer id.
        target_id: String,
        /// The server's metadata (decoded as the default when absent).
        peer_metadata: PeerMetadata,
        /// The version chosen for the connection ([`PROTOCOL_VERSION`]).
        selected_protocol_version: String,
    },
    /// `request`: an Automerge sync message from a peer that does not have the document and
    /// wants a `doc-unavailable` if the receiver does not have it either.
    Request {
        /// The requesting peer.
        sender_id: String,
        /// The peer asked.
        target_id: String,
        /// The automerge-repo document id (bs58check, without `automerge:`).
        document_id: String,
        /// The Automerge sync message (never empty).
        data: Vec<u8>,
    },
    /// `sync`: an Automerge sync message about one document.
    Sync {
        /// The sending peer.
        sender_id: String,
        /// The receiving peer.
        target_id: String,
        /// The automerge-repo document id.
        document_id: String,
        /// The Automerge sync message (never empty).
        data: Vec<u8>,
    },
    /// `doc-unavailable`: the sender does not have the document, nor do its other peers.
    DocUnavailable {
        /// The peer that lacks the document.
        sender_id: String,
        /// The peer that asked for it.
        target_id: String,
        /// The document nobody has.
        document_id: String,
    },
    /// `ephemeral`: application data about a document that is relayed, not stored.
    Ephemeral {
        /// The peer that made the message (kept as is when a peer relays it).
        sender_id: String,
        /// The next hop.
        target_id: String,
        /// Sequence number within the session; receivers drop a message whose count is not
        /// greater than the last one seen for the same `senderId` and `sessionId`.
        count: u64,
        /// Random id of the sender's session.
        session_id: String,
        /// The document the message is about.
        document_id: String,
        /// The payload (cbor-x encoding of an application value), opaque here; never empty.
        data: Vec<u8>,
    },
    /// `error`: the sender is about to close the connection because of a protocol error.
    Error {
        /// The sender's peer id (the JS server sends it; the README's CDDL omits it).
        sender_id: Option<String>,
        /// The peer the error is for.
        target_id: Option<String>,
        /// What went wrong, for people.
        message: String,
    },
    /// `leave`: advisory, the sender is about to disconnect (documented in the README and
    /// sent by the BroadcastChannel and MessageChannel adapters, not by the WebSocket ones).
    Leave {
        /// The departing peer.
        sender_id: String,
    },
    /// A message with a sender that a server may accept and ignore:
    /// `remote-subscription-change`, `remote-heads-changed`, or a type this codec does not
    /// know. Its other fields are not kept. Decoding only: [`encode`] writes just
    /// `{type}`, which a JS peer would drop or choke on, so never send one.
    Other {
        /// The message's `type`.
        kind: String,
    },
}

impl RepoMessage {
    /// The message's `type` on the wire (`"join"`, `"sync"`, ...).
    pub fn kind(&self) -> &str {
        match self {
            RepoMessage::Join { .. } => "join",
            RepoMessage::Peer { .. } => "peer",
            RepoMessage::Request { .. } => "request",
            RepoMessage::Sync { .. } => "sync",
            RepoMessage::DocUnavailable { .. } => "doc-unavailable",
            RepoMessage::Ephemeral { .. } => "ephemeral",
            RepoMessage::Error { .. } => "error",
            RepoMessage::Leave { .. } => "leave",
            RepoMessage::Other { kind } => kind,
        }
    }
}

/// Why bytes are not an automerge-repo message. Decoding has no state, so an error leaves
/// nothing behind; what to do with the connection is the caller's decision.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The message is larger than [`MAX_MESSAGE_BYTES`]; it was refused unread.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Length of the message.
        len: usize,
        /// The limit, [`MAX_MESSAGE_BYTES`].
        max: usize,
    },
    /// The message has no bytes at all.
    #[error("empty message")]
    Empty,
    /// The bytes end before the CBOR value does (truncated, or a length that claims more
    /// bytes than there are).
    #[error("message ends before its CBOR value is complete")]
    Truncated,
    /// The bytes are not valid CBOR.
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    /// Arrays, maps or tags are nested deeper than [`MAX_DEPTH`].
    #[error("CBOR nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The message holds more than [`MAX_ITEMS`] CBOR items.
    #[error("message holds more than {MAX_ITEMS} CBOR items")]
    TooManyItems,
    /// A complete CBOR value is followed by more bytes.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The message is a CBOR value other than a map.
    #[error("message is a CBOR {0}, not a map")]
    NotAMap(&'static str),
    /// A key of the message map (or of `peerMetadata`) is not a text string.
    #[error("map key is a CBOR {0}, not text")]
    NonTextKey(&'static str),
    /// The same key appears twice in one map.
    #[error("key `{0}` appears twice")]
    DuplicateKey(String),
    /// The message has no `type` field (or it is null or undefined).
    #[error("message has no `type` field")]
    MissingType,
    /// A field the message type requires is absent, null or undefined.
    #[error("`{kind}` message lacks `{field}`")]
    MissingField {
        /// The message's `type`.
        kind: String,
        /// The missing field.
        field: &'static str,
    },
    /// A field has the wrong CBOR type or value.
    #[error("field `{field}` should be {expected}, found {found}")]
    WrongType {
        /// The field (`peerMetadata.storageId` for nested ones).
        field: &'static str,
        /// What the field must be.
        expected: &'static str,
        /// What it was.
        found: &'static str,
    },
    /// `data` is an empty byte string, which no automerge-repo peer sends.
    #[error("`{kind}` message has empty `data`")]
    EmptyData {
        /// The message's `type`.
        kind: String,
    },
}

/// Decodes one WebSocket binary message. Absent optional fields may be missing, null or
/// undefined; unknown keys are ignored.
pub fn decode(bytes: &[u8]) -> Result<RepoMessage, CodecError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    if bytes.is_empty() {
        return Err(CodecError::Empty);
    }
    // Walk the bytes first, so that a hostile message is refused before a tree of values
    // (tens of bytes per item) is built from it.
    let end = Scan::new(bytes).item(0)?;
    if end < bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - end));
    }
    let mut rest = bytes;
    let value: Value =
        ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_DEPTH).map_err(cbor_error)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    let entries = match value {
        Value::Map(entries) => entries,
        other => return Err(CodecError::NotAMap(value_kind(&other))),
    };
    let fields = Fields::new(entries)?;
    let kind = match fields.get("type") {
        None => return Err(CodecError::MissingType),
        Some(Value::Text(kind)) => kind.clone(),
        Some(other) => return Err(wrong("type", "text", other)),
    };
    let f = Decoder { kind, fields };
    let message = match f.kind.as_str() {
        "join" => RepoMessage::Join {
            sender_id: f.text("senderId")?,
            peer_metadata: f.metadata()?,
            supported_protocol_versions: f
                .text_list("supportedProtocolVersions")?
                .unwrap_or_else(|| vec![PROTOCOL_VERSION.to_string()]),
        },
        "peer" => RepoMessage::Peer {
            sender_id: f.text("senderId")?,
            target_id: f.text("targetId")?,
            peer_metadata: f.metadata()?.unwrap_or_default(),
            selected_protocol_version: f.text("selectedProtocolVersion")?,
        },
        "request" => RepoMessage::Request {
            sender_id: f.text("senderId")?,
            target_id: f.text("targetId")?,
            document_id: f.text("documentId")?,
            data: f.data()?,
        },
        "sync" => RepoMessage::Sync {
            sender_id: f.text("senderId")?,
            target_id: f.text("targetId")?,
            document_id: f.text("documentId")?,
            data: f.data()?,
        },
        "doc-unavailable" => RepoMessage::DocUnavailable {
            sender_id: f.text("senderId")?,
            target_id: f.text("targetId")?,
            document_id: f.text("documentId")?,
        },
        "ephemeral" => RepoMessage::Ephemeral {
            sender_id: f.text("senderId")?,
            target_id: f.text("targetId")?,
            count: f.count()?,
            session_id: f.text("sessionId")?,
            document_id: f.text("documentId")?,
            data: f.data()?,
        },
        "error" => RepoMessage::Error {
            sender_id: f.optional_text("senderId")?,
            target_id: f.optional_text("targetId")?,
            message: f.text("message")?,
        },
        "leave" => RepoMessage::Leave {
            sender_id: f.text("senderId")?,
        },
        _ => {
            // remote-subscription-change, remote-heads-changed and unknown types: only
            // the sender is checked, so that a server can ignore them knowingly.
            f.text("senderId")?;
            RepoMessage::Other { kind: f.kind }
        }
    };
    Ok(message)
}

/// Encodes a message as a JS peer decodes it: a CBOR map with text keys, absent optional
/// fields omitted, `data` as a byte string. The caller must not encode an empty `data`.
pub fn encode(msg: &RepoMessage) -> Vec<u8> {
    use Item::{Bytes, Count, Metadata, Text, TextList};
    let mut entries: Vec<(&str, Item)> = vec![("type", Text(msg.kind()))];
    match msg {
        RepoMessage::Join {
            sender_id,
            peer_metadata,
            supported_protocol_versions: versions,
        } => {
            entries.push(("senderId", Text(sender_id)));
            if let Some(metadata) = peer_metadata {
                entries.push(("peerMetadata", Metadata(metadata)));
            }
            entries.push(("supportedProtocolVersions", TextList(versions)));
        }
        RepoMessage::Peer {
            sender_id,
            target_id,
            peer_metadata,
            selected_protocol_version: version,
        } => entries.extend([
            ("senderId", Text(sender_id)),
            ("targetId", Text(target_id)),
            ("peerMetadata", Metadata(peer_metadata)),
            ("selectedProtocolVersion", Text(version)),
        ]),
        RepoMessage::Request {
            sender_id,
            target_id,
            document_id,
            data,
        }
        | RepoMessage::Sync {
            sender_id,
            target_id,
            document_id,
            data,
        } => entries.extend([
            ("senderId", Text(sender_id)),
            ("targetId", Text(target_id)),
            ("documentId", Text(document_id)),
            ("data", Bytes(data)),
        ]),
        RepoMessage::DocUnavailable {
            sender_id,
            target_id,
            document_id,
        } => entries.extend([
            ("senderId", Text(sender_id)),
            ("targetId", Text(target_id)),
            ("documentId", Text(document_id)),
        ]),
        RepoMessage::Ephemeral {
            sender_id,
            target_id,
            count,
            session_id,
            document_id,
            data,
        } => entries.extend([
            ("senderId", Text(sender_id)),
            ("targetId", Text(target_id)),
            ("count", Count(*count)),
            ("sessionId", Text(session_id)),
            ("documentId", Text(document_id)),
            ("data", Bytes(data)),
        ]),
        RepoMessage::Error {
            sender_id,
            target_id,
            message,
        } => {
            if let Some(sender_id) = sender_id {
                entries.push(("senderId", Text(sender_id)));
            }
            if let Some(target_id) = target_id {
                entries.push(("targetId", Text(target_id)));
            }
            entries.push(("message", Text(message)));
        }
        RepoMessage::Leave { sender_id } => entries.push(("senderId", Text(sender_id))),
        RepoMessage::Other { .. } => {}
    }
    let mut out = Vec::new();
    write_map(&mut out, &entries);
    out
}

// ---- decoding helpers ----

/// Walks one CBOR item without building it (RFC 8949 section 3): checks that it is
/// complete, nests at most [`MAX_DEPTH`] deep, and that the message holds at most
/// [`MAX_ITEMS`] items. The contents of strings are checked later, by ciborium.
struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
    items: usize,
}

/// The initial byte of a "break", which ends an indefinite-length item.
const BREAK: u8 = 0xff;

impl<'a> Scan<'a> {
    fn new(bytes: &'a [u8]) -> Scan<'a> {
        Scan {
            bytes,
            pos: 0,
            items: 0,
        }
    }

    /// Checks the item at the current position, inside `depth` arrays, maps or tags;
    /// returns the offset just after it.
    fn item(&mut self, depth: usize) -> Result<usize, CodecError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(CodecError::TooManyItems);
        }
        let at = self.pos;
        let (major, argument) = self.head()?;
        match (major, argument) {
            // Integers, and simple values and floats (their bytes were read by `head`).
            (0 | 1 | 7, Some(_)) => {}
            (2 | 3, Some(len)) => self.skip(len)?,
            // An indefinite-length string: definite-length chunks of the same type.
            (2 | 3, None) => {
                while !self.at_break()? {
                    match self.head()? {
                        (chunk, Some(len)) if chunk == major => self.skip(len)?,
                        _ => return Err(malformed_at(self.pos, "bad string chunk")),
                    }
                }
            }
            // A tag: one item inside it.
            (6, Some(_)) => {
                if depth >= MAX_DEPTH {
                    return Err(CodecError::TooDeep);
                }
                self.item(depth + 1)?;
            }
            // An array (one item per entry) or a map (two).
            (4 | 5, _) => {
                if depth >= MAX_DEPTH {
                    return Err(CodecError::TooDeep);
                }
                let per_entry = if major == 5 { 2 } else { 1 };
                match argument {
                    Some(len) => {
                        // Every item takes at least one byte, so a huge `len` ends in
                        // `Truncated` or `TooManyItems` long before it is counted out.
                        for _ in 0..len {
                            for _ in 0..per_entry {
                                self.item(depth + 1)?;
                            }
                        }
                    }
                    None => {
                        while !self.at_break()? {
                            for _ in 0..per_entry {
                                self.item(depth + 1)?;
                            }
                        }
                    }
                }
            }
            _ => return Err(malformed_at(at, "invalid initial byte")),
        }
        Ok(self.pos)
    }

    /// Reads an item's head: its major type and argument (`None` for indefinite length).
    /// For major type 7 the argument is the simple value or the float's bits.
    fn head(&mut self) -> Result<(u8, Option<u64>), CodecError> {
        let at = self.pos;
        let initial = self.take(1)?[0];
        let major = initial >> 5;
        let argument = match initial & 0x1f {
            n @ 0..=23 => Some(u64::from(n)),
            24 => Some(self.uint(1)?),
            25 => Some(self.uint(2)?),
            26 => Some(self.uint(4)?),
            27 => Some(self.uint(8)?),
            31 if matches!(major, 2..=5) => None,
            _ => return Err(malformed_at(at, "invalid initial byte")),
        };
        Ok((major, argument))
    }

    /// True (and the break consumed) if the next byte is a break.
    fn at_break(&mut self) -> Result<bool, CodecError> {
        match self.bytes.get(self.pos) {
            None => Err(CodecError::Truncated),
            Some(&BREAK) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    fn uint(&mut self, len: usize) -> Result<u64, CodecError> {
        Ok(self
            .take(len)?
            .iter()
            .fold(0u64, |n, &byte| (n << 8) | u64::from(byte)))
    }

    fn skip(&mut self, len: u64) -> Result<(), CodecError> {
        let len = usize::try_from(len).map_err(|_| CodecError::Truncated)?;
        self.take(len).map(|_| ())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let bytes: &'a [u8] = self.bytes;
        let end = self.pos.checked_add(len).ok_or(CodecError::Truncated)?;
        let taken = bytes.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(taken)
    }
}

fn malformed_at(offset: usize, what: &str) -> CodecError {
    CodecError::Malformed(format!("{what} at byte {offset}"))
}

/// The entries of a map with text keys, for lookup by key.
struct Fields(BTreeMap<String, Value>);

impl Fields {
    fn new(entries: Vec<(Value, Value)>) -> Result<Fields, CodecError> {
        let mut fields = BTreeMap::new();
        for (key, value) in entries {
            let key = match key {
                Value::Text(key) => key,
                other => return Err(CodecError::NonTextKey(value_kind(&other))),
            };
            if fields.contains_key(&key) {
                return Err(CodecError::DuplicateKey(key));
            }
            fields.insert(key, value);
        }
        Ok(Fields(fields))
    }

    /// The value under `key`, or `None` if absent, null or undefined (which mean "absent"
    /// to a JS peer).
    fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .get(key)
            .filter(|value| !matches!(value, Value::Null))
    }
}

/// The fields of one message, with its `type` for error messages.
struct Decoder {
    kind: String,
    fields: Fields,
}

impl Decoder {
    fn missing(&self, field: &'static str) -> CodecError {
        CodecError::MissingField {
            kind: self.kind.clone(),
            field,
        }
    }

    fn text(&self, field: &'static str) -> Result<String, CodecError> {
        self.optional_text(field)?
            .ok_or_else(|| self.missing(field))
    }

    fn optional_text(&self, field: &'static str) -> Result<Option<String>, CodecError> {
        match self.fields.get(field) {
            None => Ok(None),
            Some(Value::Text(text)) => Ok(Some(text.clone())),
            Some(other) => Err(wrong(field, "text", other)),
        }
    }

    fn text_list(&self, field: &'static str) -> Result<Option<Vec<String>>, CodecError> {
        let items = match self.fields.get(field) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(wrong(field, "an array of text", other)),
        };
        let mut list = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Text(text) => list.push(text.clone()),
                other => return Err(wrong(field, "an array of text", other)),
            }
        }
        Ok(Some(list))
    }

    fn data(&self) -> Result<Vec<u8>, CodecError> {
        match self.fields.get("data") {
            None => Err(self.missing("data")),
            Some(Value::Bytes(bytes)) if bytes.is_empty() => Err(CodecError::EmptyData {
                kind: self.kind.clone(),
            }),
            Some(Value::Bytes(bytes)) => Ok(bytes.clone()),
            Some(other) => Err(wrong("data", "a byte string", other)),
        }
    }

    /// `count`: an unsigned integer, or an integer-valued float as cbor-x writes numbers
    /// of 2^32 and more.
    fn count(&self) -> Result<u64, CodecError> {
        const EXPECTED: &str = "a non-negative integer";
        match self.fields.get("count") {
            None => Err(self.missing("count")),
            Some(Value::Integer(n)) => u64::try_from(*n).map_err(|_| CodecError::WrongType {
                field: "count",
                expected: EXPECTED,
                found: "a negative integer",
            }),
            Some(Value::Float(x))
                if x.fract() == 0.0 && *x >= 0.0 && *x <= MAX_SAFE_INTEGER as f64 =>
            {
                Ok(*x as u64)
            }
            Some(other) => Err(wrong("count", EXPECTED, other)),
        }
    }

    /// `peerMetadata` (or `metadata`, the README's name), absent if neither is there.
    fn metadata(&self) -> Result<Option<PeerMetadata>, CodecError> {
        let value = match self
            .fields
            .get("peerMetadata")
            .or_else(|| self.fields.get("metadata"))
        {
            None => return Ok(None),
            Some(value) => value,
        };
        let entries = match value {
            Value::Map(entries) => entries.clone(),
            other => return Err(wrong("peerMetadata", "a map", other)),
        };
        let fields = Fields::new(entries)?;
        let storage_id = match fields.get("storageId") {
            None => None,
            Some(Value::Text(id)) => Some(id.clone()),
            Some(other) => return Err(wrong("peerMetadata.storageId", "text", other)),
        };
        let is_ephemeral = match fields.get("isEphemeral") {
            None => false,
            Some(Value::Bool(flag)) => *flag,
            Some(other) => return Err(wrong("peerMetadata.isEphemeral", "a boolean", other)),
        };
        Ok(Some(PeerMetadata {
            storage_id,
            is_ephemeral,
        }))
    }
}

fn wrong(field: &'static str, expected: &'static str, found: &Value) -> CodecError {
    CodecError::WrongType {
        field,
        expected,
        found: value_kind(found),
    }
}

/// A short name of a CBOR value's type, for error messages.
fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Integer(_) => "integer",
        Value::Bytes(_) => "byte string",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Bool(_) => "boolean",
        Value::Null => "null or undefined",
        Value::Tag(..) => "tagged value",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        _ => "value of an unknown kind",
    }
}

fn cbor_error(error: ciborium::de::Error<std::io::Error>) -> CodecError {
    use ciborium::de::Error;
    match error {
        Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => CodecError::Truncated,
        Error::Io(io) => CodecError::Malformed(io.to_string()),
        Error::Syntax(offset) => CodecError::Malformed(format!("invalid item at byte {offset}")),
        Error::Semantic(Some(offset), what) => {
            CodecError::Malformed(format!("{what} (item at byte {offset})"))
        }
        Error::Semantic(None, what) => CodecError::Malformed(what),
        Error::RecursionLimitExceeded => CodecError::TooDeep,
    }
}

// ---- encoding helpers ----

/// A value in an encoded map.
enum Item<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
    Count(u64),
    Bool(bool),
    TextList(&'a [String]),
    Metadata(&'a PeerMetadata),
}

const MAJOR_UNSIGNED: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
const FLOAT64: u8 = 0xfb;

/// Writes a CBOR head: major type and argument, in the shortest form.
fn write_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let major = major << 5;
    if n < 24 {
        out.push(major | n as u8);
    } else if n <= u64::from(u8::MAX) {
        out.push(major | 24);
        out.push(n as u8);
    } else if n <= u64::from(u16::MAX) {
        out.push(major | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u64::from(u32::MAX) {
        out.push(major | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn write_text(out: &mut Vec<u8>, text: &str) {
    write_head(out, MAJOR_TEXT, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn write_map(out: &mut Vec<u8>, entries: &[(&str, Item)]) {
    write_head(out, MAJOR_MAP, entries.len() as u64);
    for (key, item) in entries {
        write_text(out, key);
        match item {
            Item::Text(text) => write_text(out, text),
            Item::Bytes(bytes) => {
                write_head(out, MAJOR_BYTES, bytes.len() as u64);
                out.extend_from_slice(bytes);
            }
            Item::Count(n) => {
                // As cbor-x: 32-bit integers as integers, larger safe integers as float64
                // (a CBOR uint64 would decode as a BigInt in JS).
                if *n > u64::from(u32::MAX) && *n <= MAX_SAFE_INTEGER {
                    out.push(FLOAT64);
                    out.extend_from_slice(&(*n as f64).to_be_bytes());
                } else {
                    write_head(out, MAJOR_UNSIGNED, *n);
                }
            }
            Item::TextList(list) => {
                write_head(out, MAJOR_ARRAY, list.len() as u64);
                for text in list.iter() {
                    write_text(out, text);
                }
            }
            Item::Metadata(metadata) => {
                let mut inner = Vec::new();
                if let Some(storage_id) = &metadata.storage_id {
                    inner.push(("storageId", Item::Text(storage_id)));
                }
                inner.push(("isEphemeral", Item::Bool(metadata.is_ephemeral)));
                write_map(out, &inner);
            }
            Item::Bool(flag) => out.push(if *flag { TRUE } else { FALSE }),
        }
    }
}
