//! Durable storage of documents as opaque bytes, with a per-document index.
//!
//! Owns: the [`Store`] trait (the writer, driven from one dedicated thread), the
//! [`DocReader`] trait (single-document reads from any thread), their error type, and two
//! implementations: [`RedbStore`] (a redb database file, every commit fsync'd) and
//! [`MemoryStore`] (shared in-memory data for tests and the deterministic simulation).
//!
//! Must not touch: Automerge semantics. A stored document is a snapshot (an Automerge
//! `save()`) plus the changes appended since; storage never decodes them, the caller does.
//! Heads are opaque 32-byte values the caller computes and hands over with its writes.
//! No networking, no tokio.
//!
//! Scale model: opening a store reads nothing per document. Each document has an index
//! entry (its log bookkeeping and its heads), so the caller can list every document and its
//! heads with [`Store::scan_index`] without reading document data, list them a page at a
//! time with [`DocReader::heads_page`], and load one document when it needs it with
//! [`DocReader::read`].
//!
//! Durability model: [`Store::append`] writes changes and heads for many documents in one
//! durable commit, so under load many writes share one fsync. [`Store::compact`] replaces a
//! document's snapshot and log in one atomic commit, so a crash at any instant leaves
//! either the old state or the new one. The index entries are written in the same commits
//! as the data they describe. A [`DocReader`] sees every commit that returned before a
//! read began, concurrently with later writes.

use std::path::PathBuf;
use std::sync::Arc;

mod checksum;
mod index;
mod memory;
mod migrate;
mod redb_reader;
mod redb_store;
mod schema;

pub use memory::{MemoryStore, StoreFaults};
pub use redb_store::{RedbStore, DB_FILE};
pub use schema::FORMAT_VERSION;

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

/// A document's heads as the index stores them: raw 32-byte change hashes.
pub type Heads = Vec<[u8; 32]>;

/// What [`Store::scan_index`] calls for each document: its id and its heads (None: not
/// known).
pub type IndexVisitor<'a> = dyn FnMut(&str, Option<&[[u8; 32]]>) + 'a;

/// One document's appended changes and its heads once they are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocAppend {
    /// Document id.
    pub doc: String,
    /// Encoded changes to append, in order (may be empty: then only `heads` is recorded).
    pub changes: Vec<Vec<u8>>,
    /// The document's heads once these changes are applied, recorded in its index entry.
    pub heads: Vec<[u8; 32]>,
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
    /// The file was written by a different, unknown format version. Nothing was changed.
    #[error(
        "store {path} has format version {found}; this build reads only version {supported} \
         (and migrates version 1)"
    )]
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
    /// The store was closed (dropped); a [`DocReader`] that outlived it cannot read.
    #[error("store {path} is closed")]
    Closed {
        /// The database file.
        path: PathBuf,
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

/// A durable store of documents: the single writer. Implementations must be
/// `Send + 'static` (used from a dedicated thread).
pub trait Store: Send + 'static {
    /// Every stored document, in id order (reads everything: for tools and tests).
    fn load_all(&mut self) -> Result<Vec<StoredDoc>, StorageError>;

    /// Calls `f` for every document of the index with its heads (None: not known, a store
    /// migrated from format 1), without reading document data. Order: by id. `f` must not
    /// write to this store.
    fn scan_index(&self, f: &mut IndexVisitor<'_>) -> Result<(), StorageError>;

    /// Records the heads of documents (after a migration), in one durable commit. Documents
    /// not in the index are ignored. All or nothing.
    fn set_heads(&mut self, heads: Vec<(String, Vec<[u8; 32]>)>) -> Result<(), StorageError>;

    /// Appends changes and records heads for several documents in ONE durable commit
    /// (fsync). A [`DocAppend`] with no changes still records its heads (creating the index
    /// entry if needed); for a document listed twice, the later heads win. When it returns
    /// Ok, all of it is on disk; on Err, none of it is visible.
    fn append(&mut self, batch: &[DocAppend]) -> Result<(), StorageError>;

    /// Atomically replaces, for every given document, its snapshot and ALL its appended
    /// changes with `snapshot` followed by `keep` (changes the snapshot does not contain).
    /// One durable commit for all of them. A crash at any instant leaves either the old or
    /// the new state, never a mix that loses data. Heads in the index are unchanged (unknown
    /// for a document compacted before it was ever appended to); the log length becomes
    /// `keep.len()`.
    fn compact(&mut self, docs: Vec<Compaction>) -> Result<(), StorageError>;

    /// Deletes these documents (index entry, snapshot and log) in one durable commit; ids
    /// not stored are ignored. All or nothing.
    fn remove(&mut self, docs: &[String]) -> Result<(), StorageError>;

    /// Number of changes in `doc`'s log: appended since its last compaction, counting that
    /// compaction's `keep` list (from the index; 0 for unknown documents or if it cannot be
    /// read).
    fn log_len(&self, doc: &str) -> usize;

    /// Documents appended to or compacted since the store was opened whose
    /// [`Store::log_len`] is at least `min` (order unspecified).
    fn docs_with_log(&self, min: usize) -> Vec<String>;

    /// Human-readable location, for messages ("/path/to/concordant.redb" or "memory").
    fn location(&self) -> String;

    /// A handle that reads from any thread, concurrently with this store's writes; every
    /// read sees every commit that returned before it began. A reader does not keep the
    /// store open: once the store is dropped, [`RedbStore`]'s readers fail with
    /// [`StorageError::Closed`] (the file is released at once).
    fn reader(&self) -> Arc<dyn DocReader>;
}

/// Reads single documents; shared with the replication core for on-demand loading.
pub trait DocReader: Send + Sync {
    /// The document's snapshot and log (checksums verified), or None if it is not stored.
    fn read(&self, doc: &str) -> Result<Option<StoredDoc>, StorageError>;

    /// The document's heads from the index: Ok(None) if not stored or heads unknown.
    fn heads(&self, doc: &str) -> Result<Option<Vec<[u8; 32]>>, StorageError>;

    /// Every stored document's heads from the index, in id order (for listings; unknown
    /// heads are left out).
    fn all_heads(&self) -> Result<Vec<(String, Heads)>, StorageError>;

    /// One page of the index: at most `limit` documents with their heads, in id order,
    /// every id strictly after `after` (from the first with `None`); documents whose heads
    /// are unknown or empty are left out. Each page is read on its own (one short read
    /// transaction), so a listing paged with the last id of each page as the next `after`
    /// holds in constant memory whatever the size of the store. It is not one snapshot: a
    /// document stored throughout the listing is listed exactly once; one added or removed
    /// meanwhile may or may not be.
    fn heads_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Heads)>, StorageError>;

    /// Number of documents in the index.
    fn count(&self) -> Result<usize, StorageError>;

    /// Human-readable location, for messages.
    fn location(&self) -> String;
}

#[cfg(test)]
mod tests;
