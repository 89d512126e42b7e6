//! Confirmations of handoff offers (see `handoff`): a node offered a document confirms the
//! heads it holds durably, or asks for what it lacks.
//!
//! Where the topology does not link a node holding a stray to a replica (a ring of more
//! than three nodes), its offer goes to the next hop towards it ([`Router::next_hop`]). A replica
//! offered a document by a node not linked to some other replica asks that replica in
//! turn (the next hop towards it) whether it holds the heads, and names in its
//! confirmation ([`HandoffDoc::by`]) the replicas that confirmed to it: on a ring,
//! confirmations come back along the replicas. A node that is not a replica, offered a
//! document by a node that is not linked to its replicas, carries it: it takes a copy
//! (asking for what it lacks), hands it on as its own stray, and names the replicas once
//! they all confirmed to it (also for a while after it dropped its copy). So a stray is
//! dropped only once every replica holds it, however far away it was written.
//!
//! [`Router::next_hop`]: crate::core::Router::next_hop

use std::collections::{BTreeMap, BTreeSet};

use automerge::ChangeHash;

use super::super::reads::Parked;
use super::super::Replica;
use crate::core::docs::Need;
use crate::core::peers::Wanted;
use crate::core::Effect;
use crate::placement::Placement;
use crate::wire::{HandoffDoc, Message};

/// Replicas known to hold a document's heads durably, and when they were asked.
pub(super) struct Known {
    pub(super) heads: Vec<ChangeHash>,
    pub(super) by: BTreeSet<String>,
    pub(super) at: u64,
}

/// How many anti-entropy periods confirmations passed on are remembered (and a document
/// asked for to carry it is waited for).
const KNOWN_PERIODS: u64 = 4;

impl Replica {
    /// A peer hands documents to this node: confirmed where this node holds every change
    /// of their heads durably (naming the replicas known to), asked for where it lacks
    /// some. Only documents this node replicates, carries (see the module doc) or takes
    /// from a leaving peer (see [`Replica::set_leaving`]); a replica also asks the
    /// replicas the peer is not linked to.
    pub(in crate::core::replica) fn receive_handoff(
        &mut self,
        from: &str,
        docs: Vec<HandoffDoc>,
        leaving: bool,
    ) {
        let Some(placement) = self.router.placement().cloned() else {
            return;
        };
        let mut confirmed = Vec::new();
        let mut passed: BTreeMap<String, Vec<HandoffDoc>> = BTreeMap::new();
        for offer in docs {
            if !crate::doc_id::is_valid_doc_id(&offer.doc) {
                continue;
            }
            let mine = placement.holds_doc(&self.id, &offer.doc);
            // A leaving node holds nothing in its own placement: it confirms nothing.
            let taken = !mine && leaving && !self.handoff.leaving;
            let beyond: Vec<&str> = placement
                .replicas_of(&offer.doc)
                .filter(|r| *r != self.id && *r != from && !self.router.linked(from, r))
                .collect();
            let carried = !mine && !taken && !self.handoff.leaving && !beyond.is_empty();
            if !mine && !taken && !carried {
                continue;
            }
            if mine {
                for hop in self.ask_beyond(from, &offer, &beyond) {
                    let ask = HandoffDoc {
                        by: Vec::new(),
                        ..offer.clone()
                    };
                    passed.entry(hop).or_default().push(ask);
                }
            }
            let holder = mine || taken;
            if let Some(c) = self.confirmed_everywhere(&placement, &offer) {
                confirmed.push(c);
                continue;
            }
            if let Some(c) = self.same_heads_settled(&offer, holder) {
                confirmed.push(c);
                continue;
            }
            if !self.ready(&offer.doc, Need::Doc) {
                let from = from.to_string();
                let doc = offer.doc.clone();
                self.park(
                    &doc,
                    Parked::Handoff {
                        from,
                        offer,
                        holder,
                    },
                );
                continue;
            }
            if let Some(c) = self.check_offer(from, offer, holder) {
                confirmed.push(c);
            }
        }
        for (hop, docs) in passed {
            self.send_offers(hop, docs);
        }
        if !confirmed.is_empty() {
            self.effects.push(Effect::Send {
                to: from.to_string(),
                msg: Message::HandedOff(confirmed),
            });
        }
    }

    /// The hops through which this replica asks the replicas `beyond` (those the offering
    /// peer is not linked to) whether they hold the offer's heads: none if they confirmed
    /// them already or were asked less than an anti-entropy period ago.
    fn ask_beyond(&mut self, from: &str, offer: &HandoffDoc, beyond: &[&str]) -> BTreeSet<String> {
        if beyond.is_empty() {
            return BTreeSet::new();
        }
        let now = self.now;
        let heads: Vec<ChangeHash> = offer.heads.iter().map(|h| ChangeHash(*h)).collect();
        let known = self
            .handoff
            .known
            .entry(offer.doc.clone())
            .or_insert_with(|| Known {
                heads: heads.clone(),
                by: BTreeSet::new(),
                at: 0,
            });
        if known.heads != heads {
            *known = Known {
                heads,
                by: BTreeSet::new(),
                at: 0,
            };
        }
        if known.at != 0 && now < known.at.saturating_add(self.config.anti_entropy_ms) {
            return BTreeSet::new();
        }
        known.at = now.max(1);
        let connected: Vec<String> = self.peers.keys().cloned().collect();
        beyond
            .iter()
            .filter(|r| !known.by.contains(**r))
            .filter_map(|r| self.router.next_hop(&self.id, r, &connected))
            .filter(|hop| hop != from)
            .collect()
    }

    /// The replicas known here to hold `doc` at `heads` durably: those that confirmed an
    /// offer this node passed on, and those that confirmed its own offer of the document.
    fn known_by(&self, doc: &str, heads: &[ChangeHash]) -> BTreeSet<String> {
        let mut by = BTreeSet::new();
        if let Some(k) = self.handoff.known.get(doc).filter(|k| k.heads == heads) {
            by.extend(k.by.iter().cloned());
        }
        if let Some((offered, confirmed)) = self.handoff.offered.get(doc) {
            if offered == heads {
                by.extend(confirmed.iter().cloned());
            }
        }
        by
    }

    /// The confirmation of `offer`, naming this node if it holds the document as a
    /// replica (`holder`) and the replicas known to hold it; `None` if it names nobody.
    fn confirmation(&self, offer: &HandoffDoc, holder: bool) -> Option<HandoffDoc> {
        let heads: Vec<ChangeHash> = offer.heads.iter().map(|h| ChangeHash(*h)).collect();
        let mut by = self.known_by(&offer.doc, &heads);
        if holder {
            by.insert(self.id.clone());
        }
        (!by.is_empty()).then(|| HandoffDoc {
            doc: offer.doc.clone(),
            heads: offer.heads.clone(),
            by: by.into_iter().collect(),
        })
    }

    /// The confirmation of `offer` if every replica of its document is known to hold its
    /// heads (a carrier that has handed it on and dropped its copy answers so).
    fn confirmed_everywhere(
        &self,
        placement: &Placement,
        offer: &HandoffDoc,
    ) -> Option<HandoffDoc> {
        let heads: Vec<ChangeHash> = offer.heads.iter().map(|h| ChangeHash(*h)).collect();
        let by = self.known_by(&offer.doc, &heads);
        let all = placement.replicas_of(&offer.doc).all(|r| by.contains(r));
        (all && !heads.is_empty()).then(|| HandoffDoc {
            doc: offer.doc.clone(),
            heads: offer.heads.clone(),
            by: by.into_iter().collect(),
        })
    }

    /// The confirmation of `offer` if this node has exactly its heads, durably: no need
    /// to read the document (most offers, once a partition has moved).
    fn same_heads_settled(&self, offer: &HandoffDoc, holder: bool) -> Option<HandoffDoc> {
        let doc = offer.doc.as_str();
        let same = self.docs.index().get(doc) == Some(crate::wire::heads_digest(&offer.heads));
        if same && !offer.heads.is_empty() && self.settled(doc) {
            self.confirmation(offer, holder)
        } else {
            None
        }
    }

    /// Confirmations passed on, and documents asked for to carry them, are forgotten
    /// [`KNOWN_PERIODS`] anti-entropy periods on (looked at once a period).
    pub(in crate::core::replica) fn forget_known(&mut self, now: u64) {
        if self.forget_due().is_none_or(|at| at > now) {
            return;
        }
        self.handoff.forgot_at = now;
        let horizon = now.saturating_sub(KNOWN_PERIODS * self.config.anti_entropy_ms);
        self.handoff.known.retain(|_, k| k.at >= horizon);
        self.handoff.carrying.retain(|_, &mut at| at >= horizon);
    }

    /// When `forget_known` is next due, if anything is remembered.
    pub(in crate::core::replica) fn forget_due(&self) -> Option<u64> {
        let remembered = !self.handoff.known.is_empty() || !self.handoff.carrying.is_empty();
        remembered.then(|| {
            self.handoff
                .forgot_at
                .saturating_add(self.config.anti_entropy_ms)
        })
    }

    /// Whether every change of `doc` here is durable.
    fn settled(&self, doc: &str) -> bool {
        let (batches, retry) = (&self.batches, &self.retry);
        !self.dirty.contains(doc)
            && !retry.holds(doc)
            && self.docs.is_settled(doc, |d| batches.pins(d.persist_token))
    }

    /// A handed document in memory here (or new here): its confirmation if this node
    /// holds every change of its heads durably (see [`Replica::confirmation`]); else its
    /// missing changes are asked of `from`.
    pub(in crate::core::replica) fn check_offer(
        &mut self,
        from: &str,
        offer: HandoffDoc,
        holder: bool,
    ) -> Option<HandoffDoc> {
        let doc = offer.doc.as_str();
        let has_all = offer
            .heads
            .iter()
            .all(|h| self.docs.has_change(doc, &ChangeHash(*h)));
        if !has_all {
            if self.placed_elsewhere(doc) {
                // Carried on, or taken from a leaving node: its changes are let in.
                self.handoff
                    .carrying
                    .insert(doc.to_string(), self.now.max(1));
            }
            if let Some(p) = self.peers.get_mut(from) {
                p.want(Wanted {
                    doc: doc.to_string(),
                    reply: false,
                    theirs: None,
                });
            }
            return None;
        }
        if self.settled(doc) {
            self.confirmation(&offer, holder)
        } else {
            None
        }
    }

    /// A peer confirms documents this node offered or passed on: the nodes it names join
    /// those known to hold them; documents of this node's own confirmed by every replica
    /// at the heads it still has are dropped here.
    pub(in crate::core::replica) fn receive_handed_off(&mut self, docs: Vec<HandoffDoc>) {
        let Some(placement) = self.router.placement().cloned() else {
            return;
        };
        // A leaving node counts every node that took a document (see `handoff_settled`).
        let leaving = self.handoff.leaving;
        for confirmed in docs {
            let doc = confirmed.doc;
            let heads: Vec<ChangeHash> = confirmed.heads.into_iter().map(ChangeHash).collect();
            let named = confirmed
                .by
                .into_iter()
                .filter(|n| leaving || placement.holds_doc(n, &doc));
            if let Some(k) = self.handoff.known.get_mut(&doc) {
                if k.heads == heads {
                    k.by.extend(named.clone());
                }
            }
            let Some((offered, by)) = self.handoff.offered.get_mut(&doc) else {
                continue;
            };
            if *offered != heads || self.docs.heads(&doc).as_ref() != Some(&heads) {
                continue;
            }
            by.extend(named);
            self.try_drop(&placement, doc);
        }
    }
}
