//! Start-up: opens the node's store and gives the replica its index of documents (id and
//! heads), without reading any document: documents are read when first used (by the
//! reader threads, see `read_pool`); the index rows are read by one thread and filed by
//! another. A store
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
    let (mut index, unindexed) = scan_index(store.as_ref())?;
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

/// Bytes of index rows handed from the scan to the indexing thread at once.
const SCAN_BATCH: usize = 256 << 10;

/// Marks a row without heads (written by an older version) in a scan batch.
const NO_HEADS: u32 = u32::MAX;

/// Reads every index row into a [`StoredIndex`], and the ids of rows without heads. Two
/// threads share the work (a restart reads millions of rows before the node serves): this
/// one reads the store, another hashes and files the rows, taking them in batches.
fn scan_index(store: &dyn Store) -> Result<(StoredIndex, Vec<String>), Error> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    thread::scope(|scope| {
        let indexer = scope.spawn(move || {
            let mut index = StoredIndex::new();
            let mut unindexed = Vec::new();
            for batch in rx {
                unpack_rows(&batch, |doc, heads| match heads {
                    Some(heads) => index.add(doc, heads),
                    None => unindexed.push(doc.to_string()),
                });
            }
            (index, unindexed)
        });
        let mut batch = Vec::with_capacity(SCAN_BATCH + 4096);
        let scanned = store.scan_index(&mut |doc, heads| {
            pack_row(&mut batch, doc, heads);
            if batch.len() >= SCAN_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(SCAN_BATCH + 4096));
                let _ = tx.send(full);
            }
        });
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
        drop(tx);
        let indexed = match indexer.join() {
            Ok(indexed) => indexed,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        scanned?;
        Ok(indexed)
    })
}

/// Appends one index row to a scan batch: the id's length and bytes, then the number of
/// heads ([`NO_HEADS`] for none) and the heads.
fn pack_row(batch: &mut Vec<u8>, doc: &str, heads: Option<&[[u8; 32]]>) {
    batch.extend_from_slice(&(doc.len() as u32).to_le_bytes());
    batch.extend_from_slice(doc.as_bytes());
    match heads {
        Some(heads) => {
            batch.extend_from_slice(&(heads.len() as u32).to_le_bytes());
            for head in heads {
                batch.extend_from_slice(head);
            }
        }
        None => batch.extend_from_slice(&NO_HEADS.to_le_bytes()),
    }
}

/// Calls `f` with each row of a batch packed by [`pack_row`] (in this process: its layout
/// is trusted).
fn unpack_rows(mut batch: &[u8], mut f: impl FnMut(&str, Option<&[[u8; 32]]>)) {
    fn take<'a>(batch: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
        let (taken, rest) = batch.split_at_checked(len)?;
        *batch = rest;
        Some(taken)
    }
    let next_u32 =
        |batch: &mut &[u8]| take(batch, 4).and_then(|n| n.try_into().ok().map(u32::from_le_bytes));
    while let Some(len) = next_u32(&mut batch) {
        let Some(doc) = take(&mut batch, len as usize).and_then(|id| std::str::from_utf8(id).ok())
        else {
            return;
        };
        match next_u32(&mut batch) {
            Some(NO_HEADS) => f(doc, None),
            Some(count) => {
                let Some(heads) = take(&mut batch, count as usize * 32) else {
                    return;
                };
                f(doc, Some(heads.as_chunks::<32>().0));
            }
            None => return,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_batches_give_back_every_row() {
        let rows: Vec<(String, Option<Vec<[u8; 32]>>)> = vec![
            ("a".into(), Some(vec![[1; 32]])),
            ("b-é".into(), None),
            ("c".into(), Some(vec![[2; 32], [3; 32]])),
            ("d".into(), Some(Vec::new())),
            (String::new(), Some(vec![[4; 32]])),
        ];
        let mut batch = Vec::new();
        for (doc, heads) in &rows {
            pack_row(&mut batch, doc, heads.as_deref());
        }
        let mut back = Vec::new();
        unpack_rows(&batch, |doc, heads| {
            back.push((doc.to_string(), heads.map(<[[u8; 32]]>::to_vec)))
        });
        assert_eq!(back, rows);
    }

    #[test]
    fn a_store_is_indexed_by_two_threads_as_by_one() {
        use crate::storage::{DocAppend, MemoryStore};
        let mut store = MemoryStore::new();
        let appends: Vec<DocAppend> = (0..20_000)
            .map(|i| DocAppend {
                doc: format!("doc-{i}"),
                changes: Vec::new(),
                heads: vec![[(i % 251) as u8; 32]],
            })
            .collect();
        store.append(&appends).unwrap();
        let (index, unindexed) = scan_index(&store).unwrap();
        assert!(unindexed.is_empty());
        let mut one = StoredIndex::new();
        for a in &appends {
            one.add(&a.doc, &a.heads);
        }
        let fingerprint = |index: StoredIndex| {
            let mut r = Replica::new(
                "n",
                [0; 16],
                Box::new(crate::core::Flood),
                Default::default(),
            );
            r.set_store(index);
            (r.doc_count(), r.fingerprint())
        };
        assert_eq!(fingerprint(index), fingerprint(one));
    }
}
