//! The sans-IO replication core.
//!
//! [`Replica`] holds a node's documents and what it knows of its connected peers, and turns
//! inputs (local changes, peer messages, timeouts it asked for, storage confirmations,
//! documents read) into [`Effect`]s
//! (messages to send, batches to persist, acknowledgements, notifications). It owns the
//! replication protocol: push and forwarding, batched application, deduplication,
//! reconciliation of document sets (`reconcile`), bulk repair, repair of diverged histories
//! with Automerge's sync protocol, and durable acknowledgements. Documents are held in a
//! bounded cache over the node's store (`docs`); the core never reads the store itself:
//! it asks for a document ([`Effect::Read`]), parks the work that needs it, and goes on
//! with other documents until the driver hands the document over
//! ([`Replica::read_done`]).
//!
//! It must not touch tokio, sockets, files or clocks: time comes in as `now` (milliseconds
//! of any monotonic clock) and randomness as the actor seed, so a simulation can drive it
//! deterministically. The driver (`node`) and the simulation (`tests/sim.rs`) run it.

mod clients;
mod docs;
mod effect;
pub mod footprint;
mod gate;
mod history;
mod lag;
mod lend;
mod loaded;
mod memory;
mod peers;
mod reconcile;
mod replica;
mod router;
mod untrusted;

pub use clients::ClientMsg;
pub use docs::StoredIndex;
pub use effect::Effect;
pub use lag::LagView;
pub use lend::{Job, Lent, Made, Merged, HEAVY_OPS};
pub use loaded::{Fetched, LoadedDoc, ReadKind, StoredLog};
pub use replica::{
    ChangeError, ClientError, CoreConfig, CoreStats, DocCounts, LocalWrite, Replica, Snapshot,
    Unsent,
};
pub use router::{Flood, Router};

/// Errors of the core. None of them leaves a partial change behind.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A stored snapshot or change could not be decoded; the document is not loaded.
    #[error("document {doc:?}: stored data is corrupt: {detail}")]
    CorruptStored {
        /// Document id.
        doc: String,
        /// What failed to decode.
        detail: String,
    },
    /// Automerge refused an operation; nothing was changed.
    #[error("document {doc:?}: {source}")]
    Automerge {
        /// Document id.
        doc: String,
        /// The Automerge error.
        source: Box<automerge::AutomergeError>,
    },
    /// The document could not be read from the store; nothing was changed.
    #[error("document {doc:?}: cannot read it from the store: {detail}")]
    Storage {
        /// Document id.
        doc: String,
        /// What failed.
        detail: String,
    },
    /// The document is stored but not in memory: it must be read first (the core asked
    /// for it with [`Effect::Read`]; see [`Replica::prepare`]). Nothing was changed.
    #[error("document {doc:?} is not read from the store yet")]
    NotRead {
        /// Document id.
        doc: String,
    },
    /// Bytes given to merge are neither a saved document nor changes.
    #[error("document {doc:?}: not Automerge data: {detail}")]
    BadAutomergeData {
        /// Document id.
        doc: String,
        /// Why the bytes were refused.
        detail: String,
    },
}

#[cfg(test)]
mod tests;
