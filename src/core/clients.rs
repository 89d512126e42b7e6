//! The automerge-repo clients connected to this node, as the core sees them: numbered
//! clients, each with one Automerge sync session per document it syncs, the documents each
//! one follows, requests waiting for a document this node does not have yet, and the
//! ephemeral messages already relayed (so that none loops around a ring).
//!
//! Owns only this bookkeeping: the replica (`replica/clients`) applies and generates sync
//! messages; sockets, CBOR and peer ids belong to `crate::sync`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use automerge::sync;

/// Ephemeral messages remembered for de-duplication, at most.
const SEEN_EPHEMERAL: usize = 4_096;

/// What the core sends to one client (the driver routes it to the client's socket).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    /// An Automerge sync message for the document.
    Sync {
        /// Document id.
        doc: String,
        /// Encoded `automerge::sync::Message`.
        data: Vec<u8>,
    },
    /// The document is not on this node nor on the peers asked: `doc-unavailable`.
    Unavailable {
        /// Document id.
        doc: String,
    },
    /// Another client's ephemeral message for a document this client follows.
    Ephemeral(crate::wire::Ephemeral),
}

/// A `request` for a document this node does not have, held while its peers are asked.
pub(crate) struct Waiting {
    /// When the first request came (ms).
    pub(crate) since: u64,
    /// The requesting clients with their sync message.
    pub(crate) requests: Vec<(u64, Vec<u8>)>,
}

/// Every client's sync state.
#[derive(Default)]
pub(crate) struct Clients {
    /// client → document → its sync session with that client.
    sessions: HashMap<u64, HashMap<String, sync::State>>,
    /// document → the clients following it.
    followers: HashMap<String, BTreeSet<u64>>,
    /// Documents whose followers may need a sync message at the next flush.
    changed: BTreeSet<String>,
    /// Requests for documents this node does not have yet.
    pub(crate) waiting: BTreeMap<String, Waiting>,
    /// (client, document) → the persist batch holding the client's latest changes to it:
    /// the client hears back about the document only once that batch is durable.
    written: HashMap<(u64, String), u64>,
    seen: HashSet<(String, String, u64)>,
    seen_order: VecDeque<(String, String, u64)>,
}

impl Clients {
    /// When the oldest request still waiting for its document came, if any waits.
    pub(crate) fn oldest_request(&self) -> Option<u64> {
        self.waiting.values().map(|w| w.since).min()
    }

    /// A client connected.
    pub(crate) fn open(&mut self, client: u64) {
        self.sessions.entry(client).or_default();
    }

    /// True if the client is connected.
    pub(crate) fn is_open(&self, client: u64) -> bool {
        self.sessions.contains_key(&client)
    }

    /// A client went away: its sessions, follows and waiting requests go.
    pub(crate) fn close(&mut self, client: u64) {
        if let Some(docs) = self.sessions.remove(&client) {
            for doc in docs.keys() {
                self.unfollow_doc(client, doc);
            }
        }
        for w in self.waiting.values_mut() {
            w.requests.retain(|(c, _)| *c != client);
        }
        self.written.retain(|(c, _), _| *c != client);
        self.waiting.retain(|_, w| !w.requests.is_empty());
    }

    /// The client's session for `doc` (created, and the client made a follower, if new).
    pub(crate) fn session(&mut self, client: u64, doc: &str) -> Option<&mut sync::State> {
        let docs = self.sessions.get_mut(&client)?;
        if !docs.contains_key(doc) {
            docs.insert(doc.to_string(), sync::State::new());
            self.followers
                .entry(doc.to_string())
                .or_default()
                .insert(client);
        }
        self.sessions.get_mut(&client)?.get_mut(doc)
    }

    fn unfollow_doc(&mut self, client: u64, doc: &str) {
        if let Some(set) = self.followers.get_mut(doc) {
            set.remove(&client);
            if set.is_empty() {
                self.followers.remove(doc);
            }
        }
    }

    /// The client's changes to `doc` went into persist batch `token`.
    pub(crate) fn wrote(&mut self, client: u64, doc: &str, token: u64) {
        self.written.insert((client, doc.to_string()), token);
    }

    /// The persist batch of the client's latest changes to `doc`, while not known durable;
    /// `durable(token)` says whether it is, and forgets it if so.
    pub(crate) fn awaits_durability(
        &mut self,
        client: u64,
        doc: &str,
        durable: impl Fn(u64) -> bool,
    ) -> bool {
        let key = (client, doc.to_string());
        match self.written.get(&key) {
            Some(&token) if !durable(token) => true,
            Some(_) => {
                self.written.remove(&key);
                false
            }
            None => false,
        }
    }

    /// The documents some client follows.
    pub(crate) fn followed_docs(&self) -> impl Iterator<Item = &String> {
        self.followers.keys()
    }

    /// Whether some client follows `doc`.
    pub(crate) fn is_followed(&self, doc: &str) -> bool {
        self.followers.get(doc).is_some_and(|s| !s.is_empty())
    }

    pub(crate) fn followers(&self, doc: &str) -> Vec<u64> {
        self.followers
            .get(doc)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The document changed, or a follower sent a message: its followers get what they
    /// lack at the next flush.
    pub(crate) fn mark(&mut self, doc: &str) {
        if self.followers.contains_key(doc) {
            self.changed.insert(doc.to_string());
        }
    }

    /// The documents marked since the last call.
    pub(crate) fn take_changed(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed)
    }

    /// True the first time this ephemeral message is seen (by sender, session and count).
    pub(crate) fn first_sight(&mut self, sender: &str, session: &str, count: u64) -> bool {
        let key = (sender.to_string(), session.to_string(), count);
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.seen_order.push_back(key);
        if self.seen_order.len() > SEEN_EPHEMERAL {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Number of connected clients.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_end_with_the_client() {
        let mut c = Clients::default();
        assert!(c.session(1, "d").is_none(), "not open");
        c.open(1);
        c.open(2);
        assert!(c.session(1, "d").is_some() && c.session(2, "d").is_some());
        c.mark("d");
        c.mark("other");
        assert_eq!(c.take_changed().into_iter().collect::<Vec<_>>(), ["d"]);
        assert_eq!(c.followers("d"), [1, 2]);
        c.waiting.insert(
            "w".into(),
            Waiting {
                since: 0,
                requests: vec![(1, vec![1]), (2, vec![2])],
            },
        );
        c.close(1);
        assert_eq!(c.followers("d"), [2]);
        assert_eq!(c.waiting["w"].requests.len(), 1);
        c.close(2);
        assert!(c.followers("d").is_empty());
        assert!(c.waiting.is_empty() && c.len() == 0);
    }

    #[test]
    fn ephemeral_messages_are_seen_once_within_memory() {
        let mut c = Clients::default();
        assert!(c.first_sight("a", "s", 1));
        assert!(!c.first_sight("a", "s", 1));
        assert!(c.first_sight("a", "s", 2) && c.first_sight("b", "s", 1));
        for i in 0..SEEN_EPHEMERAL as u64 {
            c.first_sight("x", "s", i);
        }
        assert!(c.first_sight("a", "s", 1), "forgotten past the bound");
        assert!(c.seen.len() <= SEEN_EPHEMERAL);
    }
}
