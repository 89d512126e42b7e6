//! [`MemoryStore`]: an in-memory [`Store`] for tests and the deterministic simulation.
//!
//! Owns nothing on disk. Clones share the same data, so a simulated crash can drop a node
//! and build a new one over the same store: exactly what was committed survives, as with
//! [`super::RedbStore`]. A clone is a new handle, as if the store were reopened: what
//! [`Store::docs_with_log`] remembers (the documents this handle wrote) starts empty.
//! Readers share the data too. Every operation is all-or-nothing under one lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    Compaction, DocAppend, DocReader, Heads, IndexVisitor, StorageError, Store, StoredDoc,
};

/// One document's committed state.
#[derive(Debug, Default, Clone)]
struct MemDoc {
    snapshot: Option<Vec<u8>>,
    changes: Vec<Vec<u8>>,
    /// `None`: not known (a document compacted before it was ever appended to).
    heads: Option<Vec<[u8; 32]>>,
}

type Docs = Arc<Mutex<BTreeMap<String, MemDoc>>>;

/// The data, even if a thread panicked while holding the lock: every operation
/// completes its change before it can panic, so the data is consistent.
fn lock(docs: &Docs) -> MutexGuard<'_, BTreeMap<String, MemDoc>> {
    docs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A [`Store`] in memory; `Clone` shares the underlying data (see the module docs).
#[derive(Debug, Default)]
pub struct MemoryStore {
    docs: Docs,
    /// Log lengths of the documents this handle appended to or compacted.
    touched: HashMap<String, usize>,
}

impl Clone for MemoryStore {
    fn clone(&self) -> MemoryStore {
        MemoryStore {
            docs: Arc::clone(&self.docs),
            touched: HashMap::new(),
        }
    }
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, MemDoc>> {
        lock(&self.docs)
    }
}

fn stored(id: &str, doc: &MemDoc) -> StoredDoc {
    StoredDoc {
        id: id.to_string(),
        snapshot: doc.snapshot.clone(),
        changes: doc.changes.clone(),
    }
}

impl Store for MemoryStore {
    fn load_all(&mut self) -> Result<Vec<StoredDoc>, StorageError> {
        Ok(self
            .lock()
            .iter()
            .map(|(id, doc)| stored(id, doc))
            .collect())
    }

    fn scan_index(&self, f: &mut IndexVisitor<'_>) -> Result<(), StorageError> {
        // A copy, so `f` may use a reader of this store (the lock is not reentrant).
        let index: Vec<(String, Option<Vec<[u8; 32]>>)> = self
            .lock()
            .iter()
            .map(|(id, doc)| (id.clone(), doc.heads.clone()))
            .collect();
        for (id, heads) in &index {
            f(id, heads.as_deref());
        }
        Ok(())
    }

    fn set_heads(&mut self, heads: Vec<(String, Vec<[u8; 32]>)>) -> Result<(), StorageError> {
        let mut docs = self.lock();
        for (id, doc_heads) in heads {
            if let Some(doc) = docs.get_mut(&id) {
                doc.heads = Some(doc_heads);
            }
        }
        Ok(())
    }

    fn append(&mut self, batch: Vec<DocAppend>) -> Result<(), StorageError> {
        let mut docs = lock(&self.docs);
        for append in batch {
            let doc = docs.entry(append.doc.clone()).or_default();
            doc.changes.extend(append.changes);
            doc.heads = Some(append.heads);
            self.touched.insert(append.doc, doc.changes.len());
        }
        Ok(())
    }

    fn compact(&mut self, docs: Vec<Compaction>) -> Result<(), StorageError> {
        let mut map = lock(&self.docs);
        for c in docs {
            let doc = map.entry(c.doc.clone()).or_default();
            doc.snapshot = Some(c.snapshot);
            doc.changes = c.keep;
            self.touched.insert(c.doc, doc.changes.len());
        }
        Ok(())
    }

    fn log_len(&self, doc: &str) -> usize {
        self.lock().get(doc).map_or(0, |d| d.changes.len())
    }

    fn docs_with_log(&self, min: usize) -> Vec<String> {
        self.touched
            .iter()
            .filter(|(_, &len)| len >= min)
            .map(|(doc, _)| doc.clone())
            .collect()
    }

    fn location(&self) -> String {
        "memory".into()
    }

    fn reader(&self) -> Arc<dyn DocReader> {
        Arc::new(MemoryReader {
            docs: Arc::clone(&self.docs),
        })
    }
}

/// A [`DocReader`] sharing a [`MemoryStore`]'s data.
struct MemoryReader {
    docs: Docs,
}

impl DocReader for MemoryReader {
    fn read(&self, doc: &str) -> Result<Option<StoredDoc>, StorageError> {
        Ok(lock(&self.docs).get(doc).map(|d| stored(doc, d)))
    }

    fn heads(&self, doc: &str) -> Result<Option<Vec<[u8; 32]>>, StorageError> {
        Ok(lock(&self.docs).get(doc).and_then(|d| d.heads.clone()))
    }

    fn all_heads(&self) -> Result<Vec<(String, Heads)>, StorageError> {
        Ok(lock(&self.docs)
            .iter()
            .filter_map(|(id, d)| Some((id.clone(), d.heads.clone()?)))
            .collect())
    }

    fn count(&self) -> Result<usize, StorageError> {
        Ok(lock(&self.docs).len())
    }

    fn location(&self) -> String {
        "memory".into()
    }
}
