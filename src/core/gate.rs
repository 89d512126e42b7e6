//! One repair of a document at a time, where it helps: [`SyncGate`].
//!
//! A node that comes back after missing many writes finds every document different from
//! every neighbour's. Without a gate it repairs each document with all neighbours at once,
//! and each of them sends the same missing changes: in a mesh of five, four copies of
//! everything to decode and throw away, and four times the work on the senders.
//!
//! The gate lets a document's repair run with one peer first: while this node waits for
//! the first answer of a repair it started for a document, it starts no other repair of
//! that document and holds the opening message of a repair another peer starts for it.
//! Once the first answer is in (the node now has what that peer had), the held openings
//! are answered, with up-to-date heads, so those peers send only what is still missing.
//! Waiting is bounded: a repair whose answer does not come within the hold time stops
//! holding the others (lost message, slow or dead peer).
//!
//! Bulk repair uses the same bookkeeping: a document asked of one peer (a `Want`) is not
//! asked of another until that peer answers or the hold time passes, and the number of
//! documents awaited from a peer bounds how many more are asked of it.
//!
//! Owns only this bookkeeping; the replica decides what to send and applies messages.

use std::collections::{BTreeMap, HashMap};

/// Held opening messages at most (beyond this they are answered at once).
const MAX_HELD: usize = 100_000;

/// Bookkeeping of the repairs this node started and the openings it holds.
#[derive(Default)]
pub(crate) struct SyncGate {
    /// (document, peer) → when this node started a repair still waiting for its answer.
    awaiting: BTreeMap<(String, String), u64>,
    /// document → opening messages from other peers: (peer, data, received at).
    held: BTreeMap<String, Vec<(String, Vec<u8>, u64)>>,
    held_count: usize,
    /// Entries of `awaiting` per peer.
    per_peer: HashMap<String, usize>,
}

/// What to do with an incoming sync message.
pub(crate) enum Admit {
    /// Apply it now.
    Process,
    /// Apply it now; it answers this node's own repair, so held openings of the document
    /// may be released afterwards with [`SyncGate::release`].
    ProcessThenRelease,
    /// The gate keeps it for later.
    Held,
}

impl SyncGate {
    /// True unless a repair of `doc` with another peer waits for its first answer.
    pub(crate) fn may_start(&self, doc: &str, peer: &str) -> bool {
        !self.waiting_for_other(doc, peer)
    }

    /// This node started a repair of `doc` with `peer` at `now`.
    pub(crate) fn started(&mut self, doc: &str, peer: &str, now: u64) {
        if self
            .awaiting
            .insert((doc.to_string(), peer.to_string()), now)
            .is_none()
        {
            *self.per_peer.entry(peer.to_string()).or_default() += 1;
        }
    }

    /// `peer` answered about `doc` (outside a sync session: changes or a want): true if
    /// this node was waiting for it, in which case held openings may now be released.
    pub(crate) fn answered(&mut self, doc: &str, peer: &str) -> bool {
        self.forget(doc, peer)
    }

    /// True if a repair of `doc` started with `peer` waits for its answer.
    pub(crate) fn is_awaiting(&self, doc: &str, peer: &str) -> bool {
        self.awaiting
            .contains_key(&(doc.to_string(), peer.to_string()))
    }

    /// Repairs started with `peer` still waiting for their answer.
    pub(crate) fn awaiting_from(&self, peer: &str) -> usize {
        self.per_peer.get(peer).copied().unwrap_or(0)
    }

    fn forget(&mut self, doc: &str, peer: &str) -> bool {
        let found = self
            .awaiting
            .remove(&(doc.to_string(), peer.to_string()))
            .is_some();
        if found {
            if let Some(n) = self.per_peer.get_mut(peer) {
                *n -= 1;
                if *n == 0 {
                    self.per_peer.remove(peer);
                }
            }
        }
        found
    }

    /// Decides about a sync message from `peer` for `doc`; `in_session` tells whether a
    /// session with that peer for that document exists (false: the peer opens one).
    pub(crate) fn admit(
        &mut self,
        doc: &str,
        peer: &str,
        in_session: bool,
        data: &[u8],
        now: u64,
    ) -> Admit {
        if self.forget(doc, peer) {
            return Admit::ProcessThenRelease;
        }
        if !in_session && self.held_count < MAX_HELD && self.waiting_for_other(doc, peer) {
            self.held.entry(doc.to_string()).or_default().push((
                peer.to_string(),
                data.to_vec(),
                now,
            ));
            self.held_count += 1;
            return Admit::Held;
        }
        Admit::Process
    }

    /// The held openings of `doc`, once no repair of it waits for an answer.
    pub(crate) fn release(&mut self, doc: &str) -> Vec<(String, Vec<u8>)> {
        let awaited = self
            .awaiting
            .range((doc.to_string(), String::new())..)
            .next()
            .is_some_and(|((d, _), _)| d == doc);
        if awaited {
            return Vec::new();
        }
        let held = self.held.remove(doc).unwrap_or_default();
        self.held_count -= held.len();
        held.into_iter().map(|(p, data, _)| (p, data)).collect()
    }

    /// `peer` is gone: forget its repairs and openings. Returns the documents whose held
    /// openings may now be released.
    pub(crate) fn peer_down(&mut self, peer: &str) -> Vec<String> {
        let mut freed: Vec<String> = Vec::new();
        self.awaiting.retain(|(doc, p), _| {
            if p == peer {
                freed.push(doc.clone());
            }
            p != peer
        });
        self.per_peer.remove(peer);
        for list in self.held.values_mut() {
            let before = list.len();
            list.retain(|(p, _, _)| p != peer);
            self.held_count -= before - list.len();
        }
        self.held.retain(|_, list| !list.is_empty());
        freed
    }

    /// When the oldest repair still waiting for its answer started, if any waits.
    pub(crate) fn oldest_wait(&self) -> Option<u64> {
        self.awaiting.values().copied().min()
    }

    /// Stops waiting for answers older than `hold_ms`. Returns the documents whose held
    /// openings may now be released.
    pub(crate) fn expire(&mut self, now: u64, hold_ms: u64) -> Vec<String> {
        let mut freed: Vec<String> = Vec::new();
        let per_peer = &mut self.per_peer;
        self.awaiting.retain(|(doc, peer), since| {
            let keep = now.saturating_sub(*since) < hold_ms;
            if !keep {
                freed.push(doc.clone());
                if let Some(n) = per_peer.get_mut(peer) {
                    *n = n.saturating_sub(1);
                }
            }
            keep
        });
        self.per_peer.retain(|_, n| *n > 0);
        freed
    }

    fn waiting_for_other(&self, doc: &str, peer: &str) -> bool {
        self.awaiting
            .range((doc.to_string(), String::new())..)
            .take_while(|((d, _), _)| d == doc)
            .any(|((_, p), _)| p != peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_wait_for_the_first_answer_then_are_released() {
        let mut g = SyncGate::default();
        g.started("d", "a", 0);
        assert!(!g.may_start("d", "b"), "one repair of a document at a time");
        assert!(g.may_start("d", "a") && g.may_start("e", "b"));
        assert!(matches!(g.admit("d", "b", false, b"x", 1), Admit::Held));
        assert!(matches!(g.admit("d", "c", true, b"y", 1), Admit::Process));
        assert!(matches!(g.admit("e", "b", false, b"z", 1), Admit::Process));
        assert!(g.release("d").is_empty(), "still waiting for a");
        assert!(matches!(
            g.admit("d", "a", true, b"answer", 2),
            Admit::ProcessThenRelease
        ));
        assert_eq!(g.release("d"), vec![("b".to_string(), b"x".to_vec())]);
        assert!(g.may_start("d", "b"));
    }

    #[test]
    fn waiting_ends_when_the_peer_goes_or_the_hold_time_passes() {
        let mut g = SyncGate::default();
        g.started("d", "a", 0);
        g.started("e", "a", 50);
        assert!(matches!(g.admit("d", "b", false, b"x", 1), Admit::Held));
        assert!(matches!(g.admit("e", "c", false, b"y", 1), Admit::Held));
        assert_eq!(g.expire(100, 100), vec!["d".to_string()]);
        assert_eq!(g.release("d").len(), 1);
        assert_eq!(g.peer_down("a"), vec!["e".to_string()]);
        assert_eq!(g.release("e").len(), 1);
        assert!(matches!(g.admit("e", "c", false, b"y", 2), Admit::Process));
        // Openings from a peer that went away are dropped.
        g.started("f", "a", 0);
        assert!(matches!(g.admit("f", "b", false, b"z", 1), Admit::Held));
        g.peer_down("b");
        g.peer_down("a");
        assert!(g.release("f").is_empty());
    }
}
