//! Durable storage of documents as opaque bytes.
//!
//! Owns: the [`Store`] trait, its error type, and two implementations: [`RedbStore`] (a redb
//! database file, every commit fsync'd) and [`MemoryStore`] (shared in-memory data for tests
//! and the deterministic simulation).
//!
//! Must not touch: Automerge semantics. A stored document is a snapshot (an Automerge
//! `save()`) plus the changes appended since; storage never decodes them, the caller does.
//! No networking, no tokio: a store is driven from one dedicated thread.
//!
//! Durability model: [`Store::append`] writes a batch for many documents in one durable
//! commit, so under load many writes share one fsync. [`Store::compact`] replaces a
//! document's snapshot and log in one atomic commit, so a crash at any instant leaves
//! either the old state or the new one.

use std::path::PathBuf;

mod checksum;
mod memory;
mod redb_store;

pub use memory::MemoryStore;
pub use redb_store::{RedbStore, DB_FILE, FORMAT_VERSION};

/// One document as stored: the latest snapshot (an Automerge `save()`), if any, plus every
/// change appended since, in append order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDoc {
    /// Document id.
    pub id: String,
    /// The snapshot written by the last [`Store::compact`] of this document, if any.
    pub snapshot: Option<Vec<u8>>,
    /// Changes appended since that snapshot (including the `keep` list of the compaction),
    /// in append order.
    pub changes: Vec<Vec<u8>>,
}

/// One document's compaction: its new snapshot and the changes the snapshot does not
/// contain, which replace the document's whole log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// Document id.
    pub doc: String,
    /// The saved document.
    pub snapshot: Vec<u8>,
    /// Changes that must stay in the log (not in the snapshot).
    pub keep: Vec<Vec<u8>>,
}

/// A storage failure. Every variant names the file (or "memory") it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database could not be opened (bad permissions, not a redb file, ...).
    #[error("cannot open store {path}: {detail}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The file is damaged (bad checksum, truncated, missing tables, undecodable entry).
    /// Nothing was changed; the file is left as found for inspection or restore.
    #[error("store {path} is corrupt: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is damaged.
        detail: String,
    },
    /// The file was written by a different, unknown format version.
    #[error("store {path} has format version {found}; this build reads only version {supported}")]
    UnsupportedVersion {
        /// The database file.
        path: PathBuf,
        /// Version recorded in the file.
        found: u64,
        /// Version this build reads and writes.
        supported: u64,
    },
    /// Another process (or another store in this process) holds the database open.
    #[error("store {path} is already open by another process or store")]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// An I/O error while creating, reading or writing.
    #[error("I/O error on {path} while {action}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the store was doing.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A transaction failed to commit; none of its writes are visible.
    #[error("commit to {path} failed ({action}); nothing of it was stored: {detail}")]
    Commit {
        /// The database file.
        path: PathBuf,
        /// What the transaction was doing.
        action: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// Any other database error during a read or write transaction.
    #[error("store {path}: {action} failed: {detail}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What the store was doing.
        action: &'static str,
        /// What went wrong.
        detail: String,
    },
}

/// A durable store of documents. Implementations must be `Send + 'static` (used from a
/// dedicated thread).
pub trait Store: Send + 'static {
    /// Every stored document (order unspecified).
    fn load_all(&mut self) -> Result<Vec<StoredDoc>, StorageError>;

    /// Appends changes for several documents in ONE durable commit (fsync). When it returns
    /// Ok, all of it is on disk; on Err, none of it is visible.
    fn append(&mut self, batch: Vec<(String, Vec<Vec<u8>>)>) -> Result<(), StorageError>;

    /// Atomically replaces, for every given document, its snapshot and ALL its appended
    /// changes with `snapshot` followed by `keep` (changes the snapshot does not contain).
    /// One durable commit for all of them. A crash at any instant leaves either the old or
    /// the new state, never a mix that loses data.
    fn compact(&mut self, docs: Vec<Compaction>) -> Result<(), StorageError>;

    /// Number of changes appended to `doc` since its last compaction (0 for unknown docs).
    /// After a compaction this counts its `keep` list.
    fn log_len(&self, doc: &str) -> usize;

    /// Documents whose [`Store::log_len`] is at least `min`.
    fn docs_with_log(&self, min: usize) -> Vec<String>;

    /// Human-readable location, for messages ("/path/to/concordant.redb" or "memory").
    fn location(&self) -> String;
}

#[cfg(test)]
mod tests;
