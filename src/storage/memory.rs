//! [`MemoryStore`]: an in-memory [`Store`] for tests and the deterministic simulation.
//!
//! Owns nothing on disk. Clones share the same data, so a simulated crash can drop a node
//! and build a new one over the same store: exactly what was committed survives, as with
//! [`super::RedbStore`]. A clone is a new handle, as if the store were reopened: what
//! [`Store::docs_with_log`] remembers (the documents this handle wrote) starts empty.
//! Readers share the data too. Every operation is all-or-nothing under one lock.
//!
//! For tests of what a node does when its disk fails or is slow, [`MemoryStore::faults`]
//! makes appends fail (storing nothing) or take longer, on demand; clones share the faults
//! as they share the data.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

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
    faults: StoreFaults,
}

impl Clone for MemoryStore {
    fn clone(&self) -> MemoryStore {
        MemoryStore {
            docs: Arc::clone(&self.docs),
            touched: HashMap::new(),
            faults: self.faults.clone(),
        }
    }
}

/// Faults injected into a [`MemoryStore`]'s appends, for tests; cloned handles share them.
#[derive(Debug, Default, Clone)]
pub struct StoreFaults(Arc<Faults>);

#[derive(Debug, Default)]
struct Faults {
    fail_appends: AtomicBool,
    append_delay_ms: AtomicU64,
    appends: AtomicU64,
    largest_append: AtomicUsize,
}

impl StoreFaults {
    /// While `fail` is true, every append fails and stores nothing (as a full or broken
    /// disk would).
    pub fn fail_appends(&self, fail: bool) {
        self.0.fail_appends.store(fail, Ordering::SeqCst);
    }

    /// Every append takes at least this much longer (a slow disk).
    pub fn delay_appends(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.0.append_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Appends attempted so far (failed ones included).
    pub fn appends(&self) -> u64 {
        self.0.appends.load(Ordering::SeqCst)
    }

    /// The largest append attempted so far: the bytes of its changes.
    pub fn largest_append(&self) -> usize {
        self.0.largest_append.load(Ordering::SeqCst)
    }

    /// Waits as configured, then says whether this append fails.
    fn on_append(&self, bytes: usize) -> bool {
        self.0.appends.fetch_add(1, Ordering::SeqCst);
        self.0.largest_append.fetch_max(bytes, Ordering::SeqCst);
        let delay = self.0.append_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        self.0.fail_appends.load(Ordering::SeqCst)
    }
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The faults injected into this store's appends (shared with its clones).
    pub fn faults(&self) -> StoreFaults {
        self.faults.clone()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, MemDoc>> {
        lock(&self.docs)
    }

    /// Forgets documents (no store removes documents; tests of listings need it).
    #[cfg(test)]
    pub(super) fn remove_for_test(&self, ids: &[&str]) {
        let mut docs = self.lock();
        for id in ids {
            docs.remove(*id);
        }
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

    fn append(&mut self, batch: &[DocAppend]) -> Result<(), StorageError> {
        let bytes = batch.iter().flat_map(|d| &d.changes).map(Vec::len).sum();
        if self.faults.on_append(bytes) {
            return Err(StorageError::Io {
                path: "memory".into(),
                action: "appending",
                source: std::io::Error::other("injected fault: appends fail"),
            });
        }
        let mut docs = lock(&self.docs);
        for append in batch {
            let doc = docs.entry(append.doc.clone()).or_default();
            doc.changes.extend(append.changes.iter().cloned());
            doc.heads = Some(append.heads.clone());
            self.touched.insert(append.doc.clone(), doc.changes.len());
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

    fn remove(&mut self, docs: &[String]) -> Result<(), StorageError> {
        let mut map = lock(&self.docs);
        for doc in docs {
            map.remove(doc);
            self.touched.remove(doc);
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

    fn heads_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Heads)>, StorageError> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(lock(&self.docs)
            .range::<str, _>((from, Bound::Unbounded))
            .filter_map(|(id, d)| match &d.heads {
                Some(heads) if !heads.is_empty() => Some((id.clone(), heads.clone())),
                _ => None,
            })
            .take(limit)
            .collect())
    }

    fn count(&self) -> Result<usize, StorageError> {
        Ok(lock(&self.docs).len())
    }

    fn location(&self) -> String {
        "memory".into()
    }
}
