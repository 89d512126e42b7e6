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

use std::collections::BTreeSet;

use super::Replica;
use crate::core::peers::Wanted;
use crate::core::Effect;
use crate::wire::Message;

impl Replica {
    /// At each flush: follows of the documents this node's clients follow but it does not
    /// replicate are asked of their connected replicas, and ended where no client follows.
    pub(super) fn sync_follows(&mut self) {
        let Some(placement) = self.router.placement() else {
            return;
        };
        let wanted: BTreeSet<String> = self
            .clients
            .followed_docs()
            .chain(self.watched.iter())
            .filter(|doc| !placement.holds_doc(&self.id, doc))
            .cloned()
            .collect();
        let mut sends: Vec<(String, String, bool)> = Vec::new();
        for doc in &wanted {
            let asked = self.following.entry(doc.clone()).or_default();
            for r in placement.replicas_of(doc) {
                if self.peers.contains_key(r) && asked.insert(r.to_string()) {
                    sends.push((r.to_string(), doc.clone(), true));
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
        let elsewhere = self
            .router
            .placement()
            .is_some_and(|p| !p.holds_doc(&self.id, doc));
        if self.watched.insert(doc.to_string()) && elsewhere && self.docs.index().get(doc).is_none()
        {
            self.ask_peers(doc);
        }
    }

    /// Whether clients or watchers here follow `doc`.
    pub(super) fn followed_here(&self, doc: &str) -> bool {
        self.clients.is_followed(doc) || self.watched.contains(doc)
    }

    /// A peer follows (or no longer) documents this node replicates.
    pub(super) fn receive_follow(&mut self, from: &str, docs: Vec<String>, follow: bool) {
        let Some(placement) = self.router.placement() else {
            return;
        };
        let mine: Vec<String> = docs
            .into_iter()
            .filter(|d| crate::doc_id::is_valid_doc_id(d) && placement.holds_doc(&self.id, d))
            .collect();
        for doc in mine {
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
            if added {
                // Compare heads with the follower: each side then sends what the other
                // lacks.
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

    /// The peers following `doc` here (empty but for documents this node replicates).
    pub(super) fn followers_of(&self, doc: &str) -> impl Iterator<Item = &String> {
        self.remote_followers.get(doc).into_iter().flatten()
    }
}
