//! Write concern: local writes waiting to be durable here and, if asked, acknowledged as
//! durable by k peers or by every node, with a deadline.

use std::collections::{BTreeSet, HashMap};

use automerge::ChangeHash;
use tokio::sync::oneshot;

use super::{Ack, WriteOutcome};

/// A write whose caller waits.
struct Waiting {
    need: usize,
    durable: bool,
    acked_by: BTreeSet<String>,
    heads: Vec<ChangeHash>,
    deadline_ms: u64,
    reply: oneshot::Sender<WriteOutcome>,
}

/// All writes waiting for durability or acknowledgements.
#[derive(Default)]
pub(crate) struct Writes {
    by_hash: HashMap<ChangeHash, Waiting>,
    by_token: HashMap<u64, Vec<ChangeHash>>,
    /// Merges: answered as soon as their batch is durable.
    token_only: HashMap<u64, Vec<oneshot::Sender<WriteOutcome>>>,
}

impl Writes {
    /// Registers a write; `others` is the number of other nodes in the topology.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn wait(
        &mut self,
        token: u64,
        hash: ChangeHash,
        heads: Vec<ChangeHash>,
        ack: Ack,
        others: usize,
        deadline_ms: u64,
        reply: oneshot::Sender<WriteOutcome>,
    ) {
        let need = match ack {
            Ack::Local => 0,
            Ack::Peers(k) => k.min(others),
            Ack::All => others,
        };
        self.by_token.entry(token).or_default().push(hash);
        self.by_hash.insert(
            hash,
            Waiting {
                need,
                durable: false,
                acked_by: BTreeSet::new(),
                heads,
                deadline_ms,
                reply,
            },
        );
    }

    /// Answers `reply` once the persist batch `token` is durable.
    pub(crate) fn wait_durable(&mut self, token: u64, reply: oneshot::Sender<WriteOutcome>) {
        self.token_only.entry(token).or_default().push(reply);
    }

    /// The persist batch `token` is durable (`Ok`) or failed (`Err`).
    pub(crate) fn persisted(&mut self, token: u64, result: &Result<(), String>) {
        for reply in self.token_only.remove(&token).unwrap_or_default() {
            let _ = reply.send(match result {
                Ok(()) => WriteOutcome::Done {
                    heads: Vec::new(),
                    acked_by: Vec::new(),
                },
                Err(e) => WriteOutcome::StorageFailed(e.clone()),
            });
        }
        for hash in self.by_token.remove(&token).unwrap_or_default() {
            match result {
                Ok(()) => {
                    if let Some(w) = self.by_hash.get_mut(&hash) {
                        w.durable = true;
                    }
                    self.finish_if_done(&hash);
                }
                Err(e) => {
                    if let Some(w) = self.by_hash.remove(&hash) {
                        let _ = w.reply.send(WriteOutcome::StorageFailed(e.clone()));
                    }
                }
            }
        }
    }

    /// Peer `by` has the change durably.
    pub(crate) fn acked(&mut self, hash: &ChangeHash, by: &str) {
        if let Some(w) = self.by_hash.get_mut(hash) {
            w.acked_by.insert(by.to_string());
        }
        self.finish_if_done(hash);
    }

    /// Answers every write past its deadline with the peers that did acknowledge.
    pub(crate) fn expire(&mut self, now_ms: u64) {
        let late: Vec<ChangeHash> = self
            .by_hash
            .iter()
            .filter(|(_, w)| w.durable && now_ms >= w.deadline_ms)
            .map(|(h, _)| *h)
            .collect();
        for hash in late {
            if let Some(w) = self.by_hash.remove(&hash) {
                let _ = w.reply.send(WriteOutcome::TimedOut {
                    heads: w.heads,
                    acked_by: w.acked_by.into_iter().collect(),
                });
            }
        }
    }

    /// Number of writes waiting.
    pub(crate) fn len(&self) -> usize {
        self.by_hash.len()
    }

    fn finish_if_done(&mut self, hash: &ChangeHash) {
        let done = self
            .by_hash
            .get(hash)
            .is_some_and(|w| w.durable && w.acked_by.len() >= w.need);
        if done {
            if let Some(w) = self.by_hash.remove(hash) {
                let _ = w.reply.send(WriteOutcome::Done {
                    heads: w.heads,
                    acked_by: w.acked_by.into_iter().collect(),
                });
            }
        }
    }
}
