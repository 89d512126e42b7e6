//! [`MemoryStore`]: an in-memory [`Store`] for tests and the deterministic simulation.
//!
//! Owns nothing on disk. Clones share the same data, so a simulated crash can drop a node
//! and build a new one over the same store: exactly what was committed survives, as with
//! [`super::RedbStore`]. Every operation is all-or-nothing under one lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Compaction, StorageError, Store, StoredDoc};

/// One document's committed state.
#[derive(Debug, Default, Clone)]
struct MemDoc {
    snapshot: Option<Vec<u8>>,
    changes: Vec<Vec<u8>>,
}

/// A [`Store`] in memory; `Clone` shares the underlying data.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    docs: Arc<Mutex<HashMap<String, MemDoc>>>,
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The data, even if a thread panicked while holding the lock: every operation
    /// completes its change before it can panic, so the data is consistent.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, MemDoc>> {
        self.docs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn load_all(&mut self) -> Result<Vec<StoredDoc>, StorageError> {
        Ok(self
            .lock()
            .iter()
            .map(|(id, doc)| StoredDoc {
                id: id.clone(),
                snapshot: doc.snapshot.clone(),
                changes: doc.changes.clone(),
            })
            .collect())
    }

    fn append(&mut self, batch: Vec<(String, Vec<Vec<u8>>)>) -> Result<(), StorageError> {
        let mut docs = self.lock();
        for (id, changes) in batch {
            if !changes.is_empty() {
                docs.entry(id).or_default().changes.extend(changes);
            }
        }
        Ok(())
    }

    fn compact(&mut self, docs: Vec<Compaction>) -> Result<(), StorageError> {
        let mut map = self.lock();
        for c in docs {
            let new = MemDoc {
                snapshot: Some(c.snapshot),
                changes: c.keep,
            };
            map.insert(c.doc, new);
        }
        Ok(())
    }

    fn log_len(&self, doc: &str) -> usize {
        self.lock().get(doc).map_or(0, |d| d.changes.len())
    }

    fn docs_with_log(&self, min: usize) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, d)| d.changes.len() >= min)
            .map(|(doc, _)| doc.clone())
            .collect()
    }

    fn location(&self) -> String {
        "memory".into()
    }
}
