//! The storage thread: runs blocking store calls off the async runtime and groups every
//! queued append into one durable commit (one fsync for many writes under load).

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::storage::{Compaction, DocAppend, StorageError, Store};

/// Work for the storage thread.
pub(crate) enum StoreJob {
    Append {
        token: u64,
        docs: Vec<DocAppend>,
    },
    /// Replaces these documents' logs with their snapshots (one commit for the run of
    /// consecutive compactions).
    Compact(Vec<Compaction>),
    /// Commits what is queued, then answers with the documents whose log holds at least
    /// this many changes (to compact them before closing).
    LongLogs(usize, tokio::sync::oneshot::Sender<Vec<String>>),
    /// Closes the store (releasing its file) and answers; later jobs are refused.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// What the storage thread reports back.
pub(crate) enum StoreDone {
    /// These persist batches are durable (or failed together).
    Appended {
        tokens: Vec<u64>,
        result: Result<(), String>,
        /// Documents whose change log has grown past the compaction threshold.
        compact: Vec<String>,
    },
    /// A compaction finished: `Ok`, or failed with the old state intact.
    Compacted {
        docs: Vec<String>,
        result: Result<(), StorageError>,
    },
}

/// Starts the thread; it ends when the job sender is dropped.
pub(crate) fn spawn(
    mut store: Box<dyn Store>,
    compact_after: usize,
    done: mpsc::UnboundedSender<StoreDone>,
    failure: Arc<watch::Sender<Option<String>>>,
) -> std_mpsc::Sender<StoreJob> {
    let (tx, rx) = std_mpsc::channel::<StoreJob>();
    let failed = failure.clone();
    let started = std::thread::Builder::new()
        .name("concordant-store".into())
        .spawn(move || {
            let work = std::panic::AssertUnwindSafe(|| {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        jobs.push(more);
                    }
                    if let Some(close) = run_jobs(store.as_mut(), jobs, compact_after, &done) {
                        return Some(close);
                    }
                }
                None
            });
            match std::panic::catch_unwind(work) {
                Ok(Some(close)) => {
                    drop(store);
                    let _ = close.send(());
                }
                Ok(None) => {}
                Err(payload) => {
                    // Nothing more can be made durable: the node is failed.
                    let why = format!(
                        "the storage thread panicked: {}",
                        super::driver::panic_text(payload)
                    );
                    tracing::error!("{why}");
                    failure.send_replace(Some(why));
                }
            }
        });
    if let Err(e) = started {
        let why = format!("cannot start the storage thread: {e}");
        tracing::error!("{why}");
        failed.send_replace(Some(why));
    }
    tx
}

/// Runs jobs in order; consecutive appends share one commit, and so do consecutive
/// compactions. Order matters: a compaction's snapshot holds exactly the changes appended
/// before it was queued. Returns the reply of a `Close` job, after which nothing more runs.
fn run_jobs(
    store: &mut dyn Store,
    jobs: Vec<StoreJob>,
    compact_after: usize,
    done: &mpsc::UnboundedSender<StoreDone>,
) -> Option<tokio::sync::oneshot::Sender<()>> {
    let mut tokens = Vec::new();
    let mut batch: Vec<DocAppend> = Vec::new();
    let mut compactions: Vec<Compaction> = Vec::new();
    for job in jobs {
        if !matches!(job, StoreJob::Compact(_)) {
            compact(store, &mut compactions, done);
        }
        match job {
            StoreJob::Append { token, docs } => {
                tokens.push(token);
                batch.extend(docs);
            }
            StoreJob::Compact(docs) => {
                commit(store, &mut tokens, &mut batch, compact_after, done);
                compactions.extend(docs);
            }
            StoreJob::LongLogs(min, reply) => {
                commit(store, &mut tokens, &mut batch, compact_after, done);
                let _ = reply.send(store.docs_with_log(min));
            }
            StoreJob::Close(reply) => {
                commit(store, &mut tokens, &mut batch, compact_after, done);
                return Some(reply);
            }
        }
    }
    compact(store, &mut compactions, done);
    commit(store, &mut tokens, &mut batch, compact_after, done);
    None
}

fn compact(
    store: &mut dyn Store,
    compactions: &mut Vec<Compaction>,
    done: &mpsc::UnboundedSender<StoreDone>,
) {
    if compactions.is_empty() {
        return;
    }
    let compactions = std::mem::take(compactions);
    let docs = compactions.iter().map(|c| c.doc.clone()).collect();
    let result = store.compact(compactions);
    let _ = done.send(StoreDone::Compacted { docs, result });
}

fn commit(
    store: &mut dyn Store,
    tokens: &mut Vec<u64>,
    batch: &mut Vec<DocAppend>,
    compact_after: usize,
    done: &mpsc::UnboundedSender<StoreDone>,
) {
    if tokens.is_empty() {
        return;
    }
    let batch = std::mem::take(batch);
    let mut docs: Vec<String> = batch.iter().map(|d| d.doc.clone()).collect();
    let changes: usize = batch.iter().map(|d| d.changes.len()).sum();
    let started = std::time::Instant::now();
    let result = store.append(batch).map_err(|e| e.to_string());
    tracing::debug!(
        changes,
        batches = tokens.len(),
        micros = started.elapsed().as_micros() as u64,
        "storage commit"
    );
    docs.sort();
    docs.dedup();
    let compact = docs
        .into_iter()
        .filter(|d| store.log_len(d) >= compact_after)
        .collect();
    let _ = done.send(StoreDone::Appended {
        tokens: std::mem::take(tokens),
        result,
        compact,
    });
}
