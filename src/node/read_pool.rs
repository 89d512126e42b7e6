//! The reader threads: they serve the core's [`Effect::Read`](crate::core::Effect::Read)
//! requests off the async runtime, and run the driver's heavy work on lent documents
//! ([`ReadPool::run`], see `driver::lending`). Each read takes the document from the store (a redb
//! read transaction, which runs concurrently with the storage thread's commits) and decodes
//! what was asked ([`Fetched::read`]: the document into Automerge, or its heads and change
//! log); the result goes back to the driver as one input, so the driver's task never waits
//! for the disk nor spends its time decoding. A decode that panics is a failed read.
//!
//! The queue of reads is unbounded but holds only document ids: the core asks for each
//! document once until its read is done. Heavy work is queued behind the reads before it;
//! each job holds its lent document, so the queue holds at most one job per document.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::core::{CoreError, Fetched, ReadKind};
use crate::panics::panic_text;
use crate::storage::DocReader;

/// Reader threads per node.
pub(crate) const READ_THREADS: usize = 2;

/// A finished read: the document id and what was read.
pub(crate) type ReadDone = (String, Result<Fetched, CoreError>);

/// Work for the reader threads: a read, or a job that reports by itself.
enum Job {
    Read(String, ReadKind),
    Run(Box<dyn FnOnce() + Send>),
}

/// Reads `kind` of `doc`; decoding that panics (stored data Automerge cannot take) is a
/// failed read, as corrupt data is.
fn read(reader: &dyn DocReader, doc: &str, kind: ReadKind) -> Result<Fetched, CoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Fetched::read(reader, doc, kind)
    }))
    .unwrap_or_else(|payload| {
        Err(CoreError::CorruptStored {
            doc: doc.to_string(),
            detail: format!("decoding it panicked: {}", panic_text(payload)),
        })
    })
}

/// Hands reads to the reader threads; they end when it is dropped.
pub(crate) struct ReadPool {
    jobs: std_mpsc::Sender<Job>,
}

impl ReadPool {
    /// Starts `threads` readers over `reader`, reporting to `done`.
    pub(crate) fn spawn(
        reader: Arc<dyn DocReader>,
        threads: usize,
        done: mpsc::UnboundedSender<ReadDone>,
    ) -> std::io::Result<ReadPool> {
        let (jobs, rx) = std_mpsc::channel::<Job>();
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
                    match next {
                        Ok(Job::Read(doc, kind)) => {
                            let result = read(reader.as_ref(), &doc, kind);
                            if done.send((doc, result)).is_err() {
                                return;
                            }
                        }
                        Ok(Job::Run(job)) => job(),
                        Err(_) => return,
                    }
                })?;
        }
        Ok(ReadPool { jobs })
    }

    /// Queues a read of `kind` of `doc`; false if the readers are gone.
    pub(crate) fn read(&self, doc: String, kind: ReadKind) -> bool {
        self.jobs.send(Job::Read(doc, kind)).is_ok()
    }

    /// Runs `job` on a reader thread, or here and now if the readers are gone (it must
    /// run: it holds a lent document).
    pub(crate) fn run(&self, job: Box<dyn FnOnce() + Send>) {
        if let Err(std_mpsc::SendError(Job::Run(job))) = self.jobs.send(Job::Run(job)) {
            job();
        }
    }
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
        assert!(pool.read("a".into(), ReadKind::Doc));
        assert!(pool.read("missing".into(), ReadKind::Doc));
        assert!(pool.read("a".into(), ReadKind::Log));
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(rx.recv().await.unwrap());
        }
        let (mut docs, mut logs, mut missing) = (0, 0, 0);
        for (doc, result) in got {
            match result.unwrap() {
                Fetched::Doc(Some(loaded)) => {
                    assert_eq!((doc.as_str(), loaded.heads()), ("a", heads.clone()));
                    docs += 1;
                }
                Fetched::Log(Some(log)) => {
                    assert_eq!(doc, "a");
                    assert_eq!(log.changes.len(), 1);
                    let raw: Vec<[u8; 32]> = log.heads.iter().map(|h| h.0).collect();
                    assert_eq!(raw, heads);
                    logs += 1;
                }
                Fetched::Doc(None) => {
                    assert_eq!(doc, "missing");
                    missing += 1;
                }
                Fetched::Log(None) => panic!("a is stored"),
            }
        }
        assert_eq!((docs, logs, missing), (1, 1, 1));
    }
}
