//! The reader threads: they serve the core's [`Effect::Read`](crate::core::Effect::Read)
//! requests off the async runtime. Each read takes the document from the store (a redb
//! read transaction, which runs concurrently with the storage thread's commits) and decodes
//! it into a [`LoadedDoc`]; the result goes back to the driver as one input, so the driver's
//! task never waits for the disk nor spends its time decoding.
//!
//! The queue of reads is unbounded but holds only document ids: the core asks for each
//! document once until its read is done.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::core::{CoreError, LoadedDoc};
use crate::storage::DocReader;

/// Reader threads per node.
pub(crate) const READ_THREADS: usize = 2;

/// A finished read: the document id and the decoded document (`None`: not stored).
pub(crate) type ReadDone = (String, Result<Option<LoadedDoc>, CoreError>);

/// Hands reads to the reader threads; they end when it is dropped.
pub(crate) struct ReadPool {
    jobs: std_mpsc::Sender<String>,
}

impl ReadPool {
    /// Starts `threads` readers over `reader`, reporting to `done`.
    pub(crate) fn spawn(
        reader: Arc<dyn DocReader>,
        threads: usize,
        done: mpsc::UnboundedSender<ReadDone>,
    ) -> std::io::Result<ReadPool> {
        let (jobs, rx) = std_mpsc::channel::<String>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let (rx, reader, done) = (Arc::clone(&rx), Arc::clone(&reader), done.clone());
            std::thread::Builder::new()
                .name(format!("concordant-read-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take one id.
                    let next = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(doc) = next else {
                        return;
                    };
                    let result = read(reader.as_ref(), &doc);
                    if done.send((doc, result)).is_err() {
                        return;
                    }
                })?;
        }
        Ok(ReadPool { jobs })
    }

    /// Queues the read of `doc`; false if the readers are gone.
    pub(crate) fn read(&self, doc: String) -> bool {
        self.jobs.send(doc).is_ok()
    }
}

/// Reads and decodes one document.
pub(crate) fn read(reader: &dyn DocReader, doc: &str) -> Result<Option<LoadedDoc>, CoreError> {
    let stored = reader.read(doc).map_err(|e| CoreError::Storage {
        doc: doc.to_string(),
        detail: e.to_string(),
    })?;
    stored.as_ref().map(LoadedDoc::from_stored).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DocAppend, MemoryStore, Store};

    #[tokio::test]
    async fn readers_decode_stored_documents_and_report_absent_ones() {
        let mut store = MemoryStore::new();
        let mut doc = automerge::AutoCommit::new();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "k", 1).unwrap();
        let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        let heads: Vec<[u8; 32]> = doc.get_heads().iter().map(|h| h.0).collect();
        store
            .append(&[DocAppend {
                doc: "a".into(),
                changes: vec![change],
                heads: heads.clone(),
            }])
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pool = ReadPool::spawn(store.reader(), 2, tx).unwrap();
        assert!(pool.read("a".into()));
        assert!(pool.read("missing".into()));
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(rx.recv().await.unwrap());
        }
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let loaded = got[0].1.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(loaded.heads(), heads);
        assert!(matches!(got[1].1, Ok(None)));
    }
}
