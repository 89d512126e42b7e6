//! What the driver reads from the store for the core, on any thread: a document decoded
//! into Automerge ([`LoadedDoc`]) or just its heads and change log ([`StoredLog`]: enough to
//! take changes that extend it, or to answer a peer, without decoding the document).

use automerge::{Automerge, Change, ChangeHash, ReadDoc};

use super::CoreError;
use crate::storage::DocReader;

/// What [`Effect::Read`](super::Effect::Read) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// Its heads (from the store's index) and its change log: [`StoredLog::read`].
    Log,
    /// The whole document, decoded: [`LoadedDoc::read`].
    Doc,
}

/// A finished read, for [`Replica::read_done`](super::Replica::read_done); `None`: the
/// store does not have the document.
pub enum Fetched {
    /// For [`ReadKind::Log`].
    Log(Option<StoredLog>),
    /// For [`ReadKind::Doc`] (boxed: a decoded document is large).
    Doc(Option<Box<LoadedDoc>>),
}

impl Fetched {
    /// Carries out a read of `kind` of `doc` from `reader` (blocking: a reader thread's
    /// work).
    pub fn read(reader: &dyn DocReader, doc: &str, kind: ReadKind) -> Result<Fetched, CoreError> {
        match kind {
            ReadKind::Log => StoredLog::read(reader, doc).map(Fetched::Log),
            ReadKind::Doc => LoadedDoc::read(reader, doc).map(|d| Fetched::Doc(d.map(Box::new))),
        }
    }
}

/// A stored document's heads and the changes logged since its snapshot, decoded as
/// changes only (the snapshot is not loaded).
pub struct StoredLog {
    pub(crate) heads: Vec<ChangeHash>,
    pub(crate) changes: Vec<Change>,
}

impl StoredLog {
    /// Reads `doc`'s heads from the store's index and its log; `None` if not stored.
    pub fn read(reader: &dyn DocReader, doc: &str) -> Result<Option<StoredLog>, CoreError> {
        let Some(stored) = reader.read(doc).map_err(|e| storage_error(doc, e))? else {
            return Ok(None);
        };
        let heads = reader
            .heads(doc)
            .map_err(|e| storage_error(doc, e))?
            .unwrap_or_default();
        let mut changes = Vec::with_capacity(stored.changes.len());
        for (i, bytes) in stored.changes.into_iter().enumerate() {
            let change = Change::from_bytes(bytes).map_err(|e| CoreError::CorruptStored {
                doc: doc.to_string(),
                detail: format!("change #{i}: {e}"),
            })?;
            changes.push(change);
        }
        Ok(Some(StoredLog {
            heads: heads.into_iter().map(ChangeHash).collect(),
            changes,
        }))
    }
}

/// A stored document decoded and loaded, ready for
/// [`Replica::insert_loaded`](super::Replica::insert_loaded).
pub struct LoadedDoc {
    pub(crate) id: String,
    pub(crate) doc: Automerge,
    pub(crate) changes: Vec<Change>,
    /// Bytes of Automerge data it was built from, uncompressed (see
    /// [`footprint`](super::footprint)).
    pub(crate) data: usize,
}

impl LoadedDoc {
    /// The document id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A document with no changes.
    pub(crate) fn empty(id: &str) -> LoadedDoc {
        LoadedDoc {
            id: id.to_string(),
            doc: Automerge::new(),
            changes: Vec::new(),
            data: 0,
        }
    }

    /// Reads `doc` from the store and decodes it; `None` if not stored.
    pub fn read(reader: &dyn DocReader, doc: &str) -> Result<Option<LoadedDoc>, CoreError> {
        let stored = reader.read(doc).map_err(|e| storage_error(doc, e))?;
        stored
            .map(|s| LoadedDoc::decode(&s.id, s.snapshot.as_deref(), &s.changes))
            .transpose()
    }

    /// A snapshot for compaction, as [`Replica::snapshot`](super::Replica::snapshot) makes
    /// it: the saved document and the changes it cannot hold (waiting for dependencies).
    pub fn snapshot(&self) -> (Vec<u8>, Vec<Vec<u8>>) {
        let held_back = self
            .changes
            .iter()
            .filter(|c| self.doc.get_change_meta_by_hash(&c.hash()).is_none())
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        (self.doc.save(), held_back)
    }

    /// The document.
    pub fn doc(&self) -> &Automerge {
        &self.doc
    }

    /// The memory the document holds, estimated (what the document cache counts; see
    /// [`footprint`](super::footprint)).
    pub fn footprint(&self) -> usize {
        super::footprint::estimate(self.data, &self.doc.stats())
    }

    /// The document's heads.
    pub fn heads(&self) -> Vec<[u8; 32]> {
        self.doc.get_heads().iter().map(|h| h.0).collect()
    }

    /// Loads the snapshot (if any) and applies the changes appended after it in one batch.
    /// Needs no replica, so documents can be decoded in parallel. Measures the data for
    /// [`LoadedDoc::footprint`] here too (the snapshot's compressed columns are inflated
    /// once more), so that the driver's event loop never does. Bytes that do not decode
    /// are an error. A change that decodes but that Automerge refuses (stored unchecked
    /// while the document was not in memory, e.g. a faulty peer's reuse of a sequence
    /// number) is left out, as it would have been had the document been loaded.
    pub fn decode(
        id: &str,
        snapshot: Option<&[u8]>,
        changes: &[Vec<u8>],
    ) -> Result<LoadedDoc, CoreError> {
        let corrupt = |detail: String| CoreError::CorruptStored {
            doc: id.to_string(),
            detail,
        };
        let base = || match snapshot {
            Some(bytes) => Automerge::load(bytes).map_err(|e| corrupt(format!("snapshot: {e}"))),
            None => Ok(Automerge::new()),
        };
        let mut doc = base()?;
        let mut decoded = Vec::with_capacity(changes.len());
        for (i, bytes) in changes.iter().enumerate() {
            let change = Change::from_bytes(bytes.clone())
                .map_err(|e| corrupt(format!("change #{i}: {e}")))?;
            decoded.push(change);
        }
        if doc.apply_changes(decoded.iter().cloned()).is_err() {
            doc = base()?;
            decoded.retain(|c| doc.apply_changes([c.clone()]).is_ok());
        }
        let data = snapshot.map_or(0, super::footprint::uncompressed_len)
            + decoded.iter().map(|c| c.raw_bytes().len()).sum::<usize>();
        Ok(LoadedDoc {
            id: id.to_string(),
            doc,
            changes: decoded,
            data,
        })
    }
}

fn storage_error(doc: &str, e: crate::storage::StorageError) -> CoreError {
    CoreError::Storage {
        doc: doc.to_string(),
        detail: e.to_string(),
    }
}
