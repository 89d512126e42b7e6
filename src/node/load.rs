//! Start-up: opens the node's store and gives the replica its index of documents (id and
//! heads), without reading any document: documents are read when first used (by the
//! reader threads, see `read_pool`). A store
//! written before the index existed (format 1) is indexed once here: its documents are
//! decoded, spread over the machine's cores, and their heads recorded. Runs on a blocking
//! thread, never on the async runtime.

use std::thread;

use super::builder::StorageChoice;
use super::Error;
use crate::core::{LoadedDoc, Replica, StoredIndex};
use crate::storage::{RedbStore, Store, StoredDoc};

/// Opens the store and indexes `replica` over it. A corrupt index row, or a corrupt
/// document of a store being indexed, fails the start.
pub(crate) fn open_store(
    storage: StorageChoice,
    mut replica: Replica,
) -> Result<(Box<dyn Store>, Replica), Error> {
    let mut store: Box<dyn Store> = match storage {
        StorageChoice::Dir(dir) => Box::new(RedbStore::open(&dir)?),
        StorageChoice::Memory(m) => Box::new(m),
    };
    let mut index = StoredIndex::new();
    let mut unindexed = Vec::new();
    store.scan_index(&mut |doc, heads| match heads {
        Some(heads) => index.add(doc, heads),
        None => unindexed.push(doc.to_string()),
    })?;
    let reader = store.reader();
    if !unindexed.is_empty() {
        tracing::info!(
            docs = unindexed.len(),
            store = %store.location(),
            "indexing documents stored by an older version (once)"
        );
        let mut stored = Vec::with_capacity(unindexed.len());
        for doc in &unindexed {
            if let Some(d) = reader.read(doc)? {
                stored.push(d);
            }
        }
        let location = store.location();
        let decoded = decode_parallel(stored).map_err(|source| Error::Load {
            location,
            source: Box::new(source),
        })?;
        let heads: Vec<(String, Vec<[u8; 32]>)> = decoded
            .iter()
            .map(|d| (d.id().to_string(), d.heads()))
            .collect();
        store.set_heads(heads.clone())?;
        for (doc, heads) in &heads {
            index.add(doc, heads);
        }
    }
    replica.set_store(index);
    Ok((store, replica))
}

fn decode_parallel(stored: Vec<StoredDoc>) -> Result<Vec<LoadedDoc>, crate::core::CoreError> {
    let workers = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(stored.len().max(1));
    let chunk = stored.len().div_ceil(workers).max(1);
    thread::scope(|scope| {
        let handles: Vec<_> = stored
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|d| LoadedDoc::decode(&d.id, d.snapshot.as_deref(), &d.changes))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut docs = Vec::with_capacity(stored.len());
        for handle in handles {
            match handle.join() {
                Ok(part) => docs.extend(part?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(docs)
    })
}
