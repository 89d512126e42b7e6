//! The storage thread: runs blocking store calls off the async runtime and groups every
//! queued append into one durable commit (one fsync for many writes under load).
//!
//! Its job queue is a plain channel that never blocks the driver; the driver bounds it (see
//! `driver::storage`): every job carries its bytes, the thread reports them back when the
//! job is done, and past the limit the driver stops taking new work until the queue drains.
//! A failed append reports the documents it held, so that the replica can write them again.
//!
//! On Linux the thread runs at nice [`NICE`], below the async runtime's threads: while the
//! CPU is saturated, replication and clients run first and more appends wait for each
//! commit, so commits grow instead of taking the CPU one small batch at a time. Only
//! durability waits longer, and only while the CPU is saturated; with a free core the
//! thread runs at once.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::Health;
use crate::panics::panic_text;
use crate::storage::{Compaction, DocAppend, StorageError, Store};

/// The storage thread's nice value on Linux (the runtime's threads keep 0).
pub(crate) const NICE: i32 = 10;

/// Work for the storage thread.
pub(crate) enum StoreJob {
    Append {
        token: u64,
        docs: Vec<DocAppend>,
        /// Bytes the job holds (counted against the queue's bound).
        bytes: usize,
    },
    /// Replaces these documents' logs with their snapshots (one commit for the run of
    /// consecutive compactions).
    Compact { docs: Vec<Compaction>, bytes: usize },
    /// Deletes documents handed off to their replicas (after what is queued).
    Remove(Vec<String>),
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
        /// On failure, what the batches held (nothing of it is stored).
        failed: Vec<DocAppend>,
        /// Bytes of the jobs, no longer queued.
        bytes: usize,
    },
    /// A compaction finished: `Ok`, or failed with the old state intact.
    Compacted {
        docs: Vec<String>,
        result: Result<(), StorageError>,
        /// Bytes of the jobs, no longer queued.
        bytes: usize,
    },
}

/// Bytes of a persist batch: its changes and heads.
pub(crate) fn append_bytes(docs: &[DocAppend]) -> usize {
    docs.iter()
        .map(|d| d.doc.len() + 32 * d.heads.len() + d.changes.iter().map(Vec::len).sum::<usize>())
        .sum()
}

/// Bytes of a compaction: its snapshots and kept changes.
pub(crate) fn compaction_bytes(docs: &[Compaction]) -> usize {
    docs.iter()
        .map(|c| c.doc.len() + c.snapshot.len() + c.keep.iter().map(Vec::len).sum::<usize>())
        .sum()
}

/// Starts the thread; it ends when the job sender is dropped.
pub(crate) fn spawn(
    mut store: Box<dyn Store>,
    compact_after: usize,
    done: mpsc::UnboundedSender<StoreDone>,
    health: Arc<watch::Sender<Health>>,
) -> std_mpsc::Sender<StoreJob> {
    let (tx, rx) = std_mpsc::channel::<StoreJob>();
    let failed = health.clone();
    let started = std::thread::Builder::new()
        .name("concordant-store".into())
        .spawn(move || {
            lower_priority();
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
                    let why = format!("the storage thread panicked: {}", panic_text(payload));
                    tracing::error!("{why}");
                    health.send_replace(Health::Failed(why));
                }
            }
        });
    if let Err(e) = started {
        let why = format!("cannot start the storage thread: {e}");
        tracing::error!("{why}");
        failed.send_replace(Health::Failed(why));
    }
    tx
}

/// Gives the calling thread nice [`NICE`] (see the module docs). Elsewhere than on Linux,
/// where the nice value belongs to the whole process, nothing changes.
fn lower_priority() {
    // Linux: `setpriority(PRIO_PROCESS, 0, ..)` sets the calling thread's nice value only.
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        tracing::debug!("storage thread keeps its priority: {e}");
    }
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
    let mut appends = Pending::default();
    let mut compactions = (Vec::new(), 0);
    for job in jobs {
        if !matches!(job, StoreJob::Compact { .. }) {
            compact(store, &mut compactions, done);
        }
        match job {
            StoreJob::Append { token, docs, bytes } => {
                appends.tokens.push(token);
                appends.docs.extend(docs);
                appends.bytes += bytes;
            }
            StoreJob::Compact { docs, bytes } => {
                commit(store, &mut appends, compact_after, done);
                compactions.0.extend(docs);
                compactions.1 += bytes;
            }
            StoreJob::Remove(docs) => {
                commit(store, &mut appends, compact_after, done);
                if let Err(e) = store.remove(&docs) {
                    // They stay stored, and are handed off again after a restart.
                    tracing::warn!(
                        count = docs.len(),
                        "cannot delete handed-off documents: {e}"
                    );
                }
            }
            StoreJob::LongLogs(min, reply) => {
                commit(store, &mut appends, compact_after, done);
                let _ = reply.send(store.docs_with_log(min));
            }
            StoreJob::Close(reply) => {
                commit(store, &mut appends, compact_after, done);
                return Some(reply);
            }
        }
    }
    compact(store, &mut compactions, done);
    commit(store, &mut appends, compact_after, done);
    None
}

/// Appends gathered for one commit.
#[derive(Default)]
struct Pending {
    tokens: Vec<u64>,
    docs: Vec<DocAppend>,
    bytes: usize,
}

fn compact(
    store: &mut dyn Store,
    compactions: &mut (Vec<Compaction>, usize),
    done: &mpsc::UnboundedSender<StoreDone>,
) {
    if compactions.0.is_empty() {
        return;
    }
    let (compactions, bytes) = std::mem::take(compactions);
    let docs = compactions.iter().map(|c| c.doc.clone()).collect();
    let result = store.compact(compactions);
    let _ = done.send(StoreDone::Compacted {
        docs,
        result,
        bytes,
    });
}

fn commit(
    store: &mut dyn Store,
    pending: &mut Pending,
    compact_after: usize,
    done: &mpsc::UnboundedSender<StoreDone>,
) {
    if pending.tokens.is_empty() {
        return;
    }
    let Pending {
        tokens,
        docs: batch,
        bytes,
    } = std::mem::take(pending);
    let mut docs: Vec<String> = batch.iter().map(|d| d.doc.clone()).collect();
    let changes: usize = batch.iter().map(|d| d.changes.len()).sum();
    let started = std::time::Instant::now();
    let result = store.append(&batch).map_err(|e| e.to_string());
    // Handed back if the commit failed (then nothing of it is stored), to be written again.
    let failed = if result.is_err() { batch } else { Vec::new() };
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
        tokens,
        result,
        compact,
        failed,
        bytes,
    });
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    /// The nice value of one of this process's threads, from `/proc/self/task/{tid}/stat`
    /// (the 19th field; the 2nd, the name in parentheses, may hold spaces).
    fn nice_of(task: &std::path::Path) -> Option<i32> {
        let stat = std::fs::read_to_string(task.join("stat")).ok()?;
        let (_, fields) = stat.rsplit_once(") ")?;
        fields.split_whitespace().nth(16)?.parse().ok()
    }

    /// The nice values of this process's storage threads.
    fn storage_threads_nice() -> Vec<i32> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        tasks
            .flatten()
            .map(|t| t.path())
            .filter(|t| {
                // The kernel keeps 15 bytes of a thread's name.
                std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "concordant-stor")
            })
            .filter_map(|t| nice_of(&t))
            .collect()
    }

    #[test]
    fn the_storage_thread_alone_runs_at_a_lower_priority() {
        let me = std::path::Path::new("/proc/thread-self");
        let before = nice_of(me).expect("this thread's nice value");
        let (done, _dones) = mpsc::unbounded_channel();
        let (health, _) = watch::channel(Health::Ok);
        let jobs = spawn(Box::new(MemoryStore::new()), 100, done, Arc::new(health));
        // Once it answered a job, the thread is past setting its priority.
        let (reply, answer) = tokio::sync::oneshot::channel();
        assert!(jobs.send(StoreJob::LongLogs(1, reply)).is_ok());
        assert_eq!(answer.blocking_recv().ok(), Some(Vec::new()));
        let nices = storage_threads_nice();
        assert!(
            nices.contains(&NICE),
            "storage threads' nice values: {nices:?}"
        );
        assert_eq!(nice_of(me), Some(before), "the other threads keep theirs");
    }
}
