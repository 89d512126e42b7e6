//! What the core asks its driver to do. The driver carries out effects in order.

use automerge::ChangeHash;

use super::ClientMsg;
use crate::storage::DocAppend;
use crate::wire::Message;

/// One action requested by the [`Replica`](super::Replica).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send `msg` to the connected peer `to`. If it cannot be queued, the driver calls
    /// [`Replica::send_failed`](super::Replica::send_failed) so anti-entropy repairs later.
    Send {
        /// Peer node id.
        to: String,
        /// The message.
        msg: Message,
    },
    /// Make these changes durable in one commit, then call
    /// [`Replica::persisted`](super::Replica::persisted) with `token`.
    Persist {
        /// Identifies this batch.
        token: u64,
        /// Encoded changes per document, in the order they were accepted, with the
        /// document's heads once they are stored (the store's index records them).
        docs: Vec<DocAppend>,
    },
    /// Peer `by` has made the local change `hash` of `doc` durable.
    Acked {
        /// Document id.
        doc: String,
        /// The acknowledged local change.
        hash: ChangeHash,
        /// The node that has it on disk.
        by: String,
    },
    /// Send `msg` to the automerge-repo client numbered `client` (see
    /// [`Replica::client_open`](super::Replica::client_open)). A client that cannot take it
    /// (queue full) is disconnected: it syncs again when it reconnects.
    Client {
        /// The client's number.
        client: u64,
        /// What to send.
        msg: ClientMsg,
    },
    /// Read `kind` of the stored document `doc` (off the driver's task: e.g. a reader
    /// thread, with [`Fetched::read`](super::Fetched::read)) and hand the result to
    /// [`Replica::read_done`](super::Replica::read_done). Work that needs the document
    /// waits in the core until then; everything else goes on.
    Read {
        /// Document id.
        doc: String,
        /// What to read.
        kind: super::ReadKind,
    },
    /// Heavy work on `doc` (a large push or client sync message): take it with
    /// [`Replica::take_job`](super::Replica::take_job), run it off the driver's task
    /// ([`Job::run`](super::Job::run)) and hand it back with
    /// [`Replica::job_done`](super::Replica::job_done). Work that needs the document waits
    /// in the core until then; everything else goes on.
    Apply {
        /// Document id.
        doc: String,
    },
    /// Delete the stored document `doc`: this node does not replicate it, and every
    /// replica holds it durably (see the replica's `handoff`). The core has forgotten it.
    Drop {
        /// Document id.
        doc: String,
    },
    /// The document's visible state changed (local or remote change); these are its heads.
    Notify {
        /// Document id.
        doc: String,
        /// New heads.
        heads: Vec<ChangeHash>,
    },
}
