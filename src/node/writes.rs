//! Write concern: local writes waiting to be durable here and, if asked, acknowledged as
//! durable by k peers or by every node, with a deadline.

use std::collections::{BTreeSet, HashMap};

use automerge::ChangeHash;
use tokio::sync::oneshot;

use super::{Ack, WriteOutcome};

/// A write whose caller waits.
struct Waiting {
    /// The persist batch that holds its change.
    token: u64,
    /// Its document (an acknowledgement names the document too).
    doc: String,
    need: usize,
    durable: bool,
    acked_by: BTreeSet<String>,
    heads: Vec<ChangeHash>,
    deadline_ms: u64,
    reply: oneshot::Sender<WriteOutcome>,
}

impl Waiting {
    fn done(&self) -> bool {
        self.durable && self.acked_by.len() >= self.need
    }

    fn finish(self) {
        let _ = self.reply.send(WriteOutcome::Done {
            heads: self.heads,
            acked_by: self.acked_by.into_iter().collect(),
        });
    }
}

/// All writes waiting for durability or acknowledgements. Two writes can wait for the same
/// change hash: identical changes made in two documents (same actor, sequence number, time
/// and operations) are byte for byte the same change.
#[derive(Default)]
pub(crate) struct Writes {
    by_hash: HashMap<ChangeHash, Vec<Waiting>>,
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
        doc: &str,
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
        self.by_hash.entry(hash).or_default().push(Waiting {
            token,
            doc: doc.to_string(),
            need,
            durable: false,
            acked_by: BTreeSet::new(),
            heads,
            deadline_ms,
            reply,
        });
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
            let Some(waiting) = self.by_hash.get_mut(&hash) else {
                continue;
            };
            let (mine, others): (Vec<Waiting>, Vec<Waiting>) =
                waiting.drain(..).partition(|w| w.token == token);
            *waiting = others;
            for mut w in mine {
                match result {
                    Ok(()) => {
                        w.durable = true;
                        if w.done() {
                            w.finish();
                        } else {
                            waiting.push(w);
                        }
                    }
                    Err(e) => {
                        let _ = w.reply.send(WriteOutcome::StorageFailed(e.clone()));
                    }
                }
            }
            self.forget_if_empty(&hash);
        }
    }

    /// Peer `by` has the change of `doc` durably.
    pub(crate) fn acked(&mut self, doc: &str, hash: &ChangeHash, by: &str) {
        let Some(waiting) = self.by_hash.get_mut(hash) else {
            return;
        };
        for w in waiting.iter_mut().filter(|w| w.doc == doc) {
            w.acked_by.insert(by.to_string());
        }
        let (done, rest): (Vec<Waiting>, Vec<Waiting>) = waiting.drain(..).partition(Waiting::done);
        *waiting = rest;
        done.into_iter().for_each(Waiting::finish);
        self.forget_if_empty(hash);
    }

    /// Answers every write past its deadline with the peers that did acknowledge.
    pub(crate) fn expire(&mut self, now_ms: u64) {
        for waiting in self.by_hash.values_mut() {
            let (late, rest): (Vec<Waiting>, Vec<Waiting>) = waiting
                .drain(..)
                .partition(|w| w.durable && now_ms >= w.deadline_ms);
            *waiting = rest;
            for w in late {
                let _ = w.reply.send(WriteOutcome::TimedOut {
                    heads: w.heads,
                    acked_by: w.acked_by.into_iter().collect(),
                });
            }
        }
        self.by_hash.retain(|_, w| !w.is_empty());
    }

    /// When the next durable write waiting for acknowledgements times out, if any.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.by_hash
            .values()
            .flatten()
            .filter(|w| w.durable)
            .map(|w| w.deadline_ms)
            .min()
    }

    /// Number of writes waiting.
    pub(crate) fn len(&self) -> usize {
        self.by_hash.values().map(Vec::len).sum()
    }

    fn forget_if_empty(&mut self, hash: &ChangeHash) {
        if self.by_hash.get(hash).is_some_and(Vec::is_empty) {
            self.by_hash.remove(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(rx: &mut oneshot::Receiver<WriteOutcome>) -> Option<&'static str> {
        match rx.try_recv() {
            Ok(WriteOutcome::Done { .. }) => Some("done"),
            Ok(WriteOutcome::TimedOut { .. }) => Some("timed out"),
            Ok(_) => Some("other"),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some("dropped"),
        }
    }

    #[test]
    fn two_writes_of_the_same_change_hash_are_each_answered() {
        let hash = ChangeHash([7; 32]);
        let mut writes = Writes::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        writes.wait(1, "a", hash, vec![hash], Ack::Local, 2, 1_000, tx1);
        writes.wait(2, "b", hash, vec![hash], Ack::Peers(1), 2, 1_000, tx2);
        writes.wait(2, "c", hash, vec![hash], Ack::Peers(1), 2, 1_000, tx3);
        assert_eq!(writes.len(), 3);
        writes.persisted(1, &Ok(()));
        assert_eq!(outcome(&mut rx1), Some("done"));
        assert_eq!(outcome(&mut rx2), None);
        writes.persisted(2, &Ok(()));
        assert_eq!(outcome(&mut rx2), None, "it also waits for a peer");
        // An acknowledgement counts for the document it names only.
        writes.acked("b", &hash, "n2");
        assert_eq!(outcome(&mut rx2), Some("done"));
        assert_eq!(outcome(&mut rx3), None);
        writes.acked("c", &hash, "n3");
        assert_eq!(outcome(&mut rx3), Some("done"));
        assert_eq!(writes.len(), 0);
    }

    #[test]
    fn durable_writes_past_their_deadline_time_out() {
        let hash = ChangeHash([8; 32]);
        let mut writes = Writes::default();
        let (tx, mut rx) = oneshot::channel();
        writes.wait(1, "a", hash, vec![hash], Ack::All, 2, 50, tx);
        writes.expire(100);
        assert_eq!(outcome(&mut rx), None, "not durable yet");
        writes.persisted(1, &Ok(()));
        writes.expire(100);
        assert_eq!(outcome(&mut rx), Some("timed out"));
        assert_eq!(writes.len(), 0);
    }
}
