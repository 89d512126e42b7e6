//! Clients of documents this node does not replicate: the node keeps a copy while its
//! automerge-repo clients follow such a document or something watches it here (see
//! [`Replica::set_watched`]), and asks the document's connected
//! replicas to push the document's changes to it ([`Message::Follow`]); a replica that
//! starts pushing to a follower first compares heads with it (a `Want`), so the follower's
//! copy catches up and its clients' changes reach the replica. A replica also passes a
//! change on to its followers whatever the router says (in a mesh the writer pushes to
//! every replica and nobody forwards, so a follower would otherwise never hear of a change
//! written elsewhere). Once no client follows the document, the node stops following and
//! its copy is handed off and dropped like any document it does not replicate (see
//! `handoff`).
//!
//! Where the node is not linked to a replica (a ring of more than three nodes), it follows
//! at the next hop towards the replicas instead, which relays: it follows the document
//! itself in turn, keeps a copy, and passes changes on both ways (a node pushes a
//! document's changes to the peers it follows it at as well as to those that follow it
//! there).

use std::collections::BTreeSet;

use super::Replica;
use crate::core::peers::Wanted;
use crate::core::Effect;
use crate::wire::Message;

impl Replica {
    /// At each flush: follows of the documents this node's clients follow (or wait for),
    /// watchers watch or peers follow here but it does not replicate are asked of the
    /// next hops towards their replicas (the replicas themselves where linked), and ended
    /// where nothing follows any more.
    pub(super) fn sync_follows(&mut self) {
        let Some(placement) = self.router.placement() else {
            return;
        };
        let wanted: BTreeSet<String> = self
            .clients
            .followed_docs()
            .chain(self.clients.waiting.keys())
            .chain(self.watched.iter())
            .chain(self.remote_followers.keys())
            .filter(|doc| !placement.holds_doc(&self.id, doc))
            .cloned()
            .collect();
        let mut sends: Vec<(String, String, bool)> = Vec::new();
        for doc in &wanted {
            let asked = self.following.entry(doc.clone()).or_default();
            for r in placement.replicas_of(doc) {
                let Some(hop) = self.router.next_hop(&self.id, r, &self.connected) else {
                    continue;
                };
                let relayed_by_it = self
                    .remote_followers
                    .get(doc)
                    .is_some_and(|f| f.contains(&hop));
                if !relayed_by_it && asked.insert(hop.clone()) {
                    sends.push((hop, doc.clone(), true));
                }
            }
        }
        let ended: Vec<String> = self
            .following
            .keys()
            .filter(|doc| !wanted.contains(*doc))
            .cloned()
            .collect();
        for doc in ended {
            for peer in self.following.remove(&doc).unwrap_or_default() {
                sends.push((peer, doc.clone(), false));
            }
        }
        for (to, doc, follow) in sends {
            self.effects.push(Effect::Send {
                to,
                msg: Message::Follow {
                    docs: vec![doc],
                    follow,
                },
            });
        }
    }

    /// Something here watches `doc` for its changes (or no longer): a document this node
    /// does not replicate is then fetched from its replicas (if it is not here) and
    /// followed there, so that its changes arrive here too.
    pub fn set_watched(&mut self, doc: &str, watched: bool) {
        if !watched {
            self.watched.remove(doc);
            return;
        }
        let elsewhere = self.placed_elsewhere(doc);
        if self.watched.insert(doc.to_string()) && elsewhere && self.docs.index().get(doc).is_none()
        {
            self.ask_peers(doc);
        }
    }

    /// Whether a placement puts `doc` on other nodes than this one.
    pub(super) fn placed_elsewhere(&self, doc: &str) -> bool {
        self.router
            .placement()
            .is_some_and(|p| !p.holds_doc(&self.id, doc))
    }

    /// Whether clients, watchers or peers here follow `doc`.
    pub(super) fn followed_here(&self, doc: &str) -> bool {
        self.clients.is_followed(doc)
            || self.watched.contains(doc)
            || self.remote_followers.contains_key(doc)
    }

    /// A peer follows (or no longer) documents this node replicates, or relays towards
    /// their replicas.
    pub(super) fn receive_follow(&mut self, from: &str, docs: Vec<String>, follow: bool) {
        if self.router.placement().is_none() {
            return;
        }
        for doc in docs
            .into_iter()
            .filter(|d| crate::doc_id::is_valid_doc_id(d))
        {
            if !follow {
                if let Some(set) = self.remote_followers.get_mut(&doc) {
                    set.remove(from);
                    if set.is_empty() {
                        self.remote_followers.remove(&doc);
                    }
                }
                continue;
            }
            let added = self
                .remote_followers
                .entry(doc.clone())
                .or_default()
                .insert(from.to_string());
            let here = !self.placed_elsewhere(&doc) || self.docs.has_doc(&doc);
            if added && here {
                // Compare heads with the follower: each side then sends what the other
                // lacks. (A relay without a copy yet has nothing to compare: what it gets
                // from the replicas goes on to the follower.)
                if let Some(p) = self.peers.get_mut(from) {
                    p.want(Wanted {
                        doc,
                        reply: false,
                        theirs: None,
                    });
                }
            }
        }
    }

    /// The link to `peer` is gone: its follows end, and ours of it are asked again when
    /// it is back.
    pub(super) fn follows_peer_down(&mut self, peer: &str) {
        self.remote_followers.retain(|_, set| {
            set.remove(peer);
            !set.is_empty()
        });
        for asked in self.following.values_mut() {
            asked.remove(peer);
        }
    }

    /// The peers following `doc` here, and those this node follows it at: its changes go
    /// to both (see the module doc).
    pub(super) fn followers_of(&self, doc: &str) -> impl Iterator<Item = &String> {
        self.remote_followers
            .get(doc)
            .into_iter()
            .flatten()
            .chain(self.following.get(doc).into_iter().flatten())
    }
}
