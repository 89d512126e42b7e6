//! Persist batches that storage failed to make durable.
//!
//! A local write is applied in memory and pushed to peers before it is durable (that is
//! what makes replication fast), so when the commit that holds it fails, the change already
//! exists here and perhaps on peers: its outcome is uncertain, not undone. The replica then
//! ([`Replica::persist_failed`]):
//! - forgets the batch's bookkeeping at once: its acknowledgements are never sent (a peer's
//!   write concern counts durable copies only; it times out instead), and its token is no
//!   longer awaited;
//! - keeps the batch's changes and writes them again in a later batch, `persist_retry_ms`
//!   after the failure, or as soon as any batch is durable
//!   (storage works again). Until they are durable, their documents stay in memory (the
//!   cache never drops them) and changes taken without loading their document are kept, so
//!   the store catches up with memory once storage works again. A retry is also the probe
//!   that tells the driver storage has recovered.
//!
//! Changes written again come after later ones in a document's log; a stored log is applied
//! in one Automerge call when the document is loaded, where order does not matter. If the
//! node stops before the retry succeeds, those changes are lost here; a peer that has them
//! brings them back by anti-entropy.

use std::collections::BTreeMap;

use super::Replica;
use crate::storage::DocAppend;

/// Changes of failed persist batches, by document, waiting to be written again.
#[derive(Default)]
pub(super) struct Retry {
    docs: BTreeMap<String, Vec<Vec<u8>>>,
    bytes: usize,
    /// Not written again before this time (ms).
    at: u64,
}

impl Retry {
    /// True if changes of `doc` wait to be written again.
    pub(super) fn holds(&self, doc: &str) -> bool {
        self.docs.contains_key(doc)
    }

    /// Write again at the next timeout (storage works).
    pub(super) fn soon(&mut self) {
        self.at = 0;
    }

    /// When the changes waiting are due to be written again, if any wait.
    pub(super) fn due_at(&self) -> Option<u64> {
        (!self.docs.is_empty()).then_some(self.at)
    }
}

impl Replica {
    /// The persist batches `tokens` failed: storage refused the commit that held them, so
    /// none of their changes is durable here. `docs` is what their
    /// [`Effect::Persist`](crate::core::Effect::Persist)s carried. Their acknowledgements are
    /// dropped (never sent), and their changes are written again in a later batch (see the
    /// module `persist`): `persist_retry_ms` from now, or as soon as any batch is durable.
    pub fn persist_failed(&mut self, tokens: &[u64], docs: Vec<DocAppend>) {
        for &token in tokens {
            self.batches.failed(token);
        }
        self.stats.persist_failures += tokens.len() as u64;
        for d in docs {
            self.retry.bytes += d.changes.iter().map(Vec::len).sum::<usize>();
            self.retry.docs.entry(d.doc).or_default().extend(d.changes);
        }
        self.retry.at = self.now.saturating_add(self.config.persist_retry_ms);
    }

    /// Bytes of changes not yet handed to storage: those of the persist batch being filled
    /// (emitted at the next [`Replica::flush`]), and those of failed batches waiting to be
    /// written again.
    pub fn unwritten_bytes(&self) -> usize {
        self.retry.bytes + self.batches.bytes()
    }

    /// Moves the changes of failed persist batches into the batch being filled now, whether
    /// or not they are due (at shutdown: one last try).
    pub fn retry_persists(&mut self) {
        self.retry.soon();
        self.retry_failed(self.now);
    }

    /// Moves the changes of failed batches into the batch being filled, when due.
    pub(super) fn retry_failed(&mut self, now: u64) {
        if self.retry.docs.is_empty() || now < self.retry.at {
            return;
        }
        for (doc, changes) in std::mem::take(&mut self.retry.docs) {
            // Pinned in memory until this batch is durable.
            self.docs.batched(&doc, self.batches.token(), 0);
            let bytes = changes.iter().map(Vec::len).sum();
            self.batches.add(&doc, changes, bytes);
        }
        self.retry.bytes = 0;
    }

    /// Persist bookkeeping, for tests: (batches awaited, batches whose acks wait,
    /// documents with changes to write again).
    #[cfg(test)]
    pub(crate) fn persist_bookkeeping(&self) -> (usize, usize, usize) {
        let (in_flight, owing) = self.batches.in_flight();
        (in_flight, owing, self.retry.docs.len())
    }
}
