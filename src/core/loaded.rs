//! [`LoadedDoc`]: a stored document decoded (on any thread) before it joins a replica.

use automerge::{Automerge, Change};

use super::CoreError;

/// A stored document decoded and loaded, ready for
/// [`Replica::insert_loaded`](super::Replica::insert_loaded).
pub struct LoadedDoc {
    pub(crate) id: String,
    pub(crate) doc: Automerge,
    pub(crate) changes: Vec<Change>,
    /// Encoded bytes it was decoded from (what the cache counts).
    pub(crate) size: usize,
}

impl LoadedDoc {
    /// The document id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Decodes a document as the store holds it (see [`LoadedDoc::decode`]).
    pub fn from_stored(stored: &crate::storage::StoredDoc) -> Result<LoadedDoc, CoreError> {
        LoadedDoc::decode(&stored.id, stored.snapshot.as_deref(), &stored.changes)
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

    /// The document's heads.
    pub fn heads(&self) -> Vec<[u8; 32]> {
        self.doc.get_heads().iter().map(|h| h.0).collect()
    }

    /// Loads the snapshot (if any) and applies the changes appended after it in one batch.
    /// Needs no replica, so documents can be decoded in parallel. Bytes that do not decode
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
        let size = snapshot.map_or(0, <[u8]>::len) + changes.iter().map(Vec::len).sum::<usize>();
        Ok(LoadedDoc {
            id: id.to_string(),
            doc,
            changes: decoded,
            size,
        })
    }
}
