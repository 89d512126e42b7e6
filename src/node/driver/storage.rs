//! The driver's side of storage: persist batches and compactions queued for the storage
//! thread, what their outcome does to writes and to the replica, and the two states in
//! which the node refuses writes (see the module [`crate::node`] for what users see).
//!
//! - Failing: a commit failed. Its writes answer "uncertain" ([`Error::StorageFailed`]),
//!   the replica forgets the batches' acknowledgements and keeps their changes to write
//!   again ([`crate::core::Replica::persist_failed`]), and [`Health::StorageFailing`] is
//!   published: writes are refused with [`Error::StorageFailing`]. Recovery is detected by
//!   the next commit that succeeds: the replica's retry of what failed (every
//!   `persist_retry_ms`) is the probe, and any other commit counts too.
//! - Busy: more bytes wait to be written (queued jobs plus what failed and waits to be
//!   written again) than `store_queue_bytes`. Writes are refused with
//!   [`Error::StorageBusy`] and the driver stops reading transport events, so peers' pushes
//!   and repairs wait in the transport (QUIC flow control holds the senders back; a peer
//!   whose link stays full reconciles later). Nothing accepted is ever dropped: every
//!   persist the replica emits is queued; the bound is checked before each new input and
//!   counts the batch being filled, so it is exceeded by one input at most.
//!
//! Must not touch: the transport's sends (the driver's `run_effects` owns them).

use std::sync::Arc;

use tokio::sync::watch;

use super::super::store_thread::{self, StoreDone, StoreJob};
use super::super::{Error, Health};
use super::Driver;
use crate::storage::{Compaction, DocAppend};

/// Where the node's storage stands, as the driver sees it.
pub(super) struct StoreState {
    /// Bytes of jobs sent to the storage thread and not yet done.
    queued: usize,
    /// Bytes waiting to be written, at most, before new work is refused.
    limit: usize,
    /// Why the last commit failed, while no commit has succeeded since.
    failing: Option<String>,
    health: Arc<watch::Sender<Health>>,
}

impl StoreState {
    pub(super) fn new(limit: usize, health: Arc<watch::Sender<Health>>) -> Self {
        StoreState {
            queued: 0,
            limit: limit.max(1),
            failing: None,
            health,
        }
    }

    /// Records the outcome of a commit and publishes the health it implies (a failed node
    /// stays failed).
    fn commit_result(&mut self, result: &Result<(), String>) {
        let failing = result.as_ref().err().cloned();
        if failing == self.failing {
            return;
        }
        match &failing {
            Some(e) => tracing::warn!("storage is failing: writes are refused until it works: {e}"),
            None => tracing::info!("storage works again: writes are accepted"),
        }
        self.failing = failing;
        let health = match &self.failing {
            Some(e) => Health::StorageFailing(e.clone()),
            None => Health::Ok,
        };
        self.health.send_if_modified(|h| {
            if matches!(h, Health::Failed(_)) || *h == health {
                return false;
            }
            *h = health;
            true
        });
    }
}

impl Driver {
    /// Bytes waiting to be written: queued for the storage thread, or still in the
    /// replica (the batch being filled, which counts at once so that one round of input
    /// cannot overshoot the bound, and what a failed commit left to write again).
    pub(super) fn storage_queued(&self) -> usize {
        self.store.queued + self.replica.unwritten_bytes()
    }

    /// True while more bytes wait to be written than the bound: no new input is taken.
    pub(super) fn storage_full(&self) -> bool {
        self.storage_queued() >= self.store.limit
    }

    /// Why storage is failing, if it is.
    pub(super) fn storage_failing(&self) -> Option<&String> {
        self.store.failing.as_ref()
    }

    /// Why writes are refused because of storage, if they are.
    pub(super) fn storage_refusal(&self) -> Option<Error> {
        if let Some(why) = &self.store.failing {
            return Some(Error::StorageFailing(why.clone()));
        }
        self.storage_full().then(|| Error::StorageBusy {
            queued: self.storage_queued(),
            limit: self.store.limit,
        })
    }

    /// Queues persist batch `token` for the storage thread.
    pub(super) fn persist(&mut self, token: u64, docs: Vec<DocAppend>) {
        let bytes = store_thread::append_bytes(&docs);
        match self.jobs.send(StoreJob::Append { token, docs, bytes }) {
            Ok(()) => self.store.queued += bytes,
            Err(std::sync::mpsc::SendError(job)) => {
                // The storage thread is gone: the node has failed (see `store_thread`).
                let docs = match job {
                    StoreJob::Append { docs, .. } => docs,
                    _ => Vec::new(),
                };
                let result = Err("the storage thread has stopped".to_string());
                self.writes.persisted(token, &result);
                self.replica.persist_failed(&[token], docs);
            }
        }
    }

    pub(super) fn store_done(&mut self, done: StoreDone) {
        match done {
            StoreDone::Appended {
                tokens,
                result,
                compact,
                failed,
                bytes,
            } => {
                self.store.queued = self.store.queued.saturating_sub(bytes);
                match &result {
                    Err(e) if self.store.failing.is_none() => {
                        tracing::error!(node = %self.id, batches = tokens.len(), "storage append failed; its writes are uncertain and are written again later: {e}");
                    }
                    Err(e) => tracing::debug!(node = %self.id, "storage append failed again: {e}"),
                    Ok(()) => {}
                }
                for &token in &tokens {
                    self.writes.persisted(token, &result);
                    if result.is_ok() {
                        self.replica.persisted(token);
                    }
                }
                if result.is_err() {
                    self.replica.persist_failed(&tokens, failed);
                }
                self.store.commit_result(&result);
                let docs: Vec<String> = compact
                    .into_iter()
                    .filter(|doc| !self.compacting.contains(doc))
                    .collect();
                self.compact(docs);
            }
            StoreDone::Compacted {
                docs,
                result,
                bytes,
            } => {
                self.store.queued = self.store.queued.saturating_sub(bytes);
                if let Err(e) = result {
                    tracing::warn!(node = %self.id, docs = docs.len(), "compaction failed, logs kept: {e}");
                }
                for doc in docs {
                    self.compacting.remove(&doc);
                }
            }
        }
    }

    /// Queues one compaction of these documents (snapshots taken now).
    pub(super) fn compact(&mut self, docs: Vec<String>) {
        let compactions: Vec<Compaction> = docs
            .into_iter()
            .filter_map(|doc| {
                // A document no longer in memory is compacted after its next write.
                let (snapshot, keep) = self.replica.snapshot(&doc)?;
                Some(Compaction {
                    doc,
                    snapshot,
                    keep,
                })
            })
            .collect();
        if compactions.is_empty() {
            return;
        }
        self.compacting
            .extend(compactions.iter().map(|c| c.doc.clone()));
        let bytes = store_thread::compaction_bytes(&compactions);
        let job = StoreJob::Compact {
            docs: compactions,
            bytes,
        };
        if self.jobs.send(job).is_ok() {
            self.store.queued += bytes;
        }
    }
}
