//! Start-up loading: opens the node's store and decodes every stored document into a
//! [`LoadedDoc`], spread over the machine's cores (Automerge loading is CPU-bound and
//! documents are independent). Runs on a blocking thread, never on the async runtime.

use std::thread;

use super::builder::StorageChoice;
use super::Error;
use crate::core::LoadedDoc;
use crate::storage::{RedbStore, Store, StoredDoc};

/// Opens the store and decodes all its documents. A corrupt document fails the whole load.
pub(crate) fn open_and_load(
    storage: StorageChoice,
) -> Result<(Box<dyn Store>, Vec<LoadedDoc>), Error> {
    let mut store: Box<dyn Store> = match storage {
        StorageChoice::Dir(dir) => Box::new(RedbStore::open(&dir)?),
        StorageChoice::Memory(m) => Box::new(m),
    };
    let stored = store.load_all()?;
    let location = store.location();
    let docs = decode_parallel(stored).map_err(|source| Error::Load {
        location,
        source: Box::new(source),
    })?;
    Ok((store, docs))
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
