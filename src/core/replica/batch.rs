//! Persist batches: the one being filled (changes by document, the bytes they hold, the
//! acknowledgements owed once it is durable) and those emitted and not yet durable. A batch
//! is numbered by its token; a document's `persist_token` names the last batch that took
//! its changes, and a document is pinned in memory until that batch is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Acks owed to one peer once a persist batch is durable: (peer, doc) → hashes.
pub(super) type AckWork = BTreeMap<(String, String), Vec<[u8; 32]>>;

/// A sealed batch: its token and its changes by document.
pub(super) type Sealed = (u64, Vec<(String, Vec<Vec<u8>>)>);

/// The batch being filled, and the batches in flight.
pub(super) struct Batches {
    /// Changes of the batch being filled, by document in order of first change.
    docs: Vec<(String, Vec<Vec<u8>>)>,
    /// Position of each document in `docs`.
    index: HashMap<String, usize>,
    /// Bytes of the changes in `docs`.
    bytes: usize,
    /// Acks owed once the batch being filled is durable.
    pub(super) acks: AckWork,
    /// The token of the batch being filled (tokens start at 1; 0 means none).
    token: u64,
    /// Batches emitted and not yet durable.
    unpersisted: BTreeSet<u64>,
    /// The acks each of them owes.
    ack_work: HashMap<u64, AckWork>,
}

impl Default for Batches {
    fn default() -> Self {
        Batches {
            docs: Vec::new(),
            index: HashMap::new(),
            bytes: 0,
            acks: AckWork::new(),
            token: 1,
            unpersisted: BTreeSet::new(),
            ack_work: HashMap::new(),
        }
    }
}

impl Batches {
    /// The token of the batch being filled: a change added now is durable once the batch
    /// with this token is.
    pub(super) fn token(&self) -> u64 {
        self.token
    }

    /// Adds changes of `doc` (holding `bytes`) to the batch being filled (the document is
    /// recorded even with no changes: its heads are written with the batch).
    pub(super) fn add(&mut self, doc: &str, changes: Vec<Vec<u8>>, bytes: usize) {
        let slot = match self.index.get(doc) {
            Some(&i) => i,
            None => {
                self.docs.push((doc.to_string(), Vec::new()));
                self.index.insert(doc.to_string(), self.docs.len() - 1);
                self.docs.len() - 1
            }
        };
        self.docs[slot].1.extend(changes);
        self.bytes += bytes;
    }

    /// Takes changes back out of the batch being filled (Automerge refused them).
    pub(super) fn take_back(&mut self, doc: &str, rejected: &[Vec<u8>]) {
        if let Some(&i) = self.index.get(doc) {
            self.docs[i].1.retain(|c| !rejected.contains(c));
        }
        let hashes: Vec<[u8; 32]> = rejected
            .iter()
            .filter_map(|b| automerge::Change::from_bytes(b.clone()).ok())
            .map(|c| c.hash().0)
            .collect();
        for ((_, d), owed) in self.acks.iter_mut() {
            if d == doc {
                owed.retain(|h| !hashes.contains(h));
            }
        }
    }

    /// Bytes of the changes in the batch being filled.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Closes the batch being filled, if it holds anything: its token and documents. It is
    /// in flight until [`Batches::durable`] or [`Batches::failed`].
    pub(super) fn seal(&mut self) -> Option<Sealed> {
        if self.docs.is_empty() && self.acks.is_empty() {
            return None;
        }
        let token = self.token;
        self.token += 1;
        self.index.clear();
        self.bytes = 0;
        let acks = std::mem::take(&mut self.acks);
        if !acks.is_empty() {
            self.ack_work.insert(token, acks);
        }
        self.unpersisted.insert(token);
        Some((token, std::mem::take(&mut self.docs)))
    }

    /// Batch `token` is durable: whether it was in flight, and the acks it owed.
    pub(super) fn durable(&mut self, token: u64) -> (bool, Option<AckWork>) {
        (
            self.unpersisted.remove(&token),
            self.ack_work.remove(&token),
        )
    }

    /// Batch `token` failed: it is no longer in flight, and its acks are dropped.
    pub(super) fn failed(&mut self, token: u64) {
        self.unpersisted.remove(&token);
        self.ack_work.remove(&token);
    }

    /// True if batch `token` is durable (sealed and confirmed).
    pub(super) fn is_durable(&self, token: u64) -> bool {
        token < self.token && !self.unpersisted.contains(&token)
    }

    /// True if a document whose last changes went into batch `token` must stay in memory:
    /// that batch is still being filled or in flight.
    pub(super) fn pins(&self, token: u64) -> bool {
        token != 0 && (token >= self.token || self.unpersisted.contains(&token))
    }

    /// (batches in flight, batches whose acks wait), for tests.
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> (usize, usize) {
        (self.unpersisted.len(), self.ack_work.len())
    }
}
