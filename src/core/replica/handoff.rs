//! Handoff: documents this node stores but does not replicate go to their replicas, and
//! are dropped here once every replica holds them durably.
//!
//! Such documents ("strays") come from two places: writes this node took while no replica
//! of their document was reachable (hinted handoff: the node stores the write as a hint),
//! and partitions this node held before a topology change moved them elsewhere. Both are
//! handled alike, per partition, once per anti-entropy period while there are any: for at
//! most [`HANDOFF_BATCH`] of them, the node sends each connected replica of the document
//! the document's heads ([`Message::Handoff`]). A replica that has every change of those
//! heads, durably, confirms ([`Message::HandedOff`]); one that lacks some asks for them as
//! bulk repair does (a `Want`), and confirms at a later round. Once every replica of the
//! document has confirmed the heads the node still has, the node drops its copy
//! ([`Effect::Drop`]). A change that arrives meanwhile changes the heads and starts the
//! confirmations again, so nothing is dropped that a replica lacks; a node killed at any
//! step finds the same strays in its store at restart and goes on.
//!
//! The node never drops a document with changes not yet durable, being read, lent out,
//! followed by one of its automerge-repo clients or watched here.
//!
//! Where the topology does not link the node to a replica (a ring of more than three
//! nodes), the offer goes to the next hop towards it, and confirmations come back from
//! beyond it (see `confirm`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::ChangeHash;

mod confirm;

use super::reads::Parked;
use super::Replica;
use crate::core::docs::Need;
use crate::core::Effect;
use crate::placement::{Partition, PartitionSet, Placement, PARTITIONS};
use crate::wire::{HandoffDoc, Message};
use confirm::Known;

/// How long partitions taken over may fill before they serve anyway, in ms.
pub(crate) const FILL_LIMIT_MS: u64 = 60_000;

/// Documents offered per round, at most. A round that offers this many is followed by the
/// next one `retry_ms` later rather than an anti-entropy period later.
pub(crate) const HANDOFF_BATCH: usize = 2048;

/// What this node offers and what its replicas confirmed.
#[derive(Default)]
pub(super) struct Handoffs {
    /// The partitions this node replicates (`None`: all of them, no placement).
    pub(super) held: Option<PartitionSet>,
    /// Per document offered: the heads offered, and the replicas that confirmed them.
    offered: HashMap<String, (Vec<ChangeHash>, BTreeSet<String>)>,
    /// When each document was last offered: the same heads go out again only an
    /// anti-entropy period later (a replica that asked for them needs time to get them).
    offered_at: HashMap<String, u64>,
    /// When the last round ran.
    last: u64,
    /// The partition the next round starts from.
    cursor: u16,
    /// The last round offered a full batch: the next one comes soon, not a period later.
    more: bool,
    /// This node is leaving the cluster (see [`Replica::set_leaving`]).
    pub(super) leaving: bool,
    /// Partitions this node took over and is still filling from their other replicas, and
    /// until when at most (see [`Replica::filling`]).
    pub(super) filling: PartitionSet,
    filling_until: u64,
    /// Documents dropped after their handoff, since start.
    pub(super) dropped: u64,
    /// Per document: replicas known to hold these heads durably, from confirmations of
    /// offers this node passed on (as a replica or a carrier), answered on their behalf
    /// for [`KNOWN_PERIODS`] anti-entropy periods.
    known: HashMap<String, Known>,
    /// Documents this node asked for to carry them (see `confirm`), and when: their
    /// changes are taken although this node neither replicates nor has them.
    pub(super) carrying: HashMap<String, u64>,
    /// When `known` and `carrying` were last pruned.
    forgot_at: u64,
}

impl Replica {
    /// Documents this node stores but does not replicate: hinted writes and partitions it
    /// no longer holds, waiting to be handed to their replicas.
    pub fn stray_count(&self) -> usize {
        let Some(held) = &self.handoff.held else {
            return 0;
        };
        (0..PARTITIONS)
            .map(Partition)
            .filter(|&p| !held.contains(p))
            .map(|p| self.docs.index().partition_len(p))
            .sum()
    }

    /// Partitions moving: in (taken over here, still filling: see [`Replica::filling`])
    /// and out (stored here but held elsewhere; 0 without a placement).
    pub fn partitions_moving(&self) -> (usize, usize) {
        let Some(held) = &self.handoff.held else {
            return (self.handoff.filling.len(), 0);
        };
        let out = (0..PARTITIONS)
            .map(Partition)
            .filter(|&p| !held.contains(p) && self.docs.index().partition_len(p) > 0)
            .count();
        (self.handoff.filling.len(), out)
    }

    /// Whether every document this node stores but does not replicate is held durably by
    /// each of its replicas this node is connected to, and by at least one node that took
    /// it (what a node leaving the cluster waits for: from there its documents go on to
    /// their replicas, hop by hop on a ring).
    pub fn handoff_settled(&self) -> bool {
        let (Some(held), Some(placement)) = (&self.handoff.held, self.router.placement()) else {
            return true;
        };
        (0..PARTITIONS)
            .map(Partition)
            .filter(|&p| !held.contains(p))
            .flat_map(|p| self.docs.index().partition_docs(p))
            .all(|(doc, _)| {
                let Some((offered, by)) = self.handoff.offered.get(&doc) else {
                    return false;
                };
                !by.is_empty()
                    && placement
                        .replicas_of(&doc)
                        .filter(|r| self.peers.contains_key(*r))
                        .all(|r| by.contains(r))
                    && self.docs.heads(&doc).as_ref() == Some(offered)
            })
    }

    /// Documents dropped here after every replica confirmed holding them.
    pub fn handed_off(&self) -> u64 {
        self.handoff.dropped
    }

    /// This node is leaving the cluster (or no longer): its router places documents as
    /// they will be without it, it takes no more pushed changes (see `receive_push`), and
    /// the nodes it hands them to take them even where they are not replicas yet (they
    /// will be once the removal is known). A node never drops a
    /// document on the word of a leaving node alone: it takes it but confirms a handoff of
    /// its own only to its replicas, and the leaving node, which holds nothing in its own
    /// placement, confirms none.
    pub fn set_leaving(&mut self, leaving: bool) {
        self.handoff.leaving = leaving;
    }

    /// Follows the router's placement: the partitions this node holds.
    pub(super) fn refresh_held(&mut self) {
        let before = self.handoff.held.take();
        self.handoff.held = self.router.placement().map(|p| {
            let mut set = PartitionSet::empty();
            for part in p.held_by(&self.id) {
                set.insert(part);
            }
            set
        });
        // Partitions taken over from other nodes fill before they serve; those still
        // filling and still held go on filling (every one, where every node holds all).
        let mut filling = PartitionSet::empty();
        let held = self.handoff.held.clone().unwrap_or_else(PartitionSet::full);
        for p in self.handoff.filling.iter().filter(|&p| held.contains(p)) {
            filling.insert(p);
        }
        if let (Some(before), Some(now)) = (&before, &self.handoff.held) {
            for p in now.iter().filter(|&p| !before.contains(p)) {
                filling.insert(p);
            }
        }
        if !filling.is_empty() && filling != self.handoff.filling {
            self.handoff.filling_until = self.now.saturating_add(FILL_LIMIT_MS);
        }
        self.handoff.filling = filling;
    }

    /// Partitions this node was filling when it stopped (kept by its driver): those it
    /// still replicates fill again, for at most [`FILL_LIMIT_MS`] from now.
    pub fn resume_filling(&mut self, stored: &PartitionSet) {
        let held = self.handoff.held.clone().unwrap_or_else(PartitionSet::full);
        let mut filling = self.handoff.filling.clone();
        for p in stored.iter().filter(|&p| held.contains(p)) {
            filling.insert(p);
        }
        if filling != self.handoff.filling {
            self.handoff.filling = filling;
            self.handoff.filling_until = self.now.saturating_add(FILL_LIMIT_MS);
        }
    }

    /// Partitions this node replicates since a change of the topology but has not yet
    /// filled: until a reconciliation with one of their other replicas finds nothing
    /// different (or [`FILL_LIMIT_MS`] has passed), reads and writes of their documents go
    /// to another replica (see [`crate::Node::replicates`]).
    pub fn filling(&self) -> &PartitionSet {
        &self.handoff.filling
    }

    /// A reconciliation with `peer` found every partition the two share equal: those
    /// this node was filling are filled.
    pub(super) fn filled_from(&mut self, peer: &str) {
        if self.handoff.filling.is_empty() {
            return;
        }
        match self.router.placement().map(|p| p.shared(&self.id, peer)) {
            Some(shared) => {
                for p in shared.iter() {
                    self.handoff.filling.remove(p);
                }
            }
            // Every node holds every partition: the two share them all.
            None => self.handoff.filling = PartitionSet::empty(),
        }
    }

    /// Filling that took too long ends (its partitions' other replicas may be down).
    pub(super) fn fill_tick(&mut self, now: u64) {
        if !self.handoff.filling.is_empty() && now >= self.handoff.filling_until {
            tracing::warn!(
                node = %self.id,
                partitions = self.handoff.filling.len(),
                "partitions taken over did not fill from their other replicas in time; \
                 serving them as they are"
            );
            self.handoff.filling = PartitionSet::empty();
        }
    }

    /// When filling ends at the latest, if it is under way.
    pub(super) fn fill_due(&self) -> Option<u64> {
        (!self.handoff.filling.is_empty()).then_some(self.handoff.filling_until)
    }

    /// When the next handoff round is due, if there is anything to hand off.
    pub(super) fn handoff_due(&self) -> Option<u64> {
        (!self.peers.is_empty() && self.stray_count() > 0).then(|| {
            let wait = if self.handoff.more {
                self.config.retry_ms
            } else {
                self.config.anti_entropy_ms
            };
            self.handoff.last.saturating_add(wait)
        })
    }

    /// A handoff round, if due: each stray's heads to its connected replicas.
    pub(super) fn handoff_tick(&mut self, now: u64) {
        if self.handoff_due().is_none_or(|at| at > now) {
            return;
        }
        self.handoff.last = now;
        let (Some(held), Some(placement)) =
            (self.handoff.held.clone(), self.router.placement().cloned())
        else {
            return;
        };
        let connected: Vec<String> = self.peers.keys().cloned().collect();
        let mut by_peer: BTreeMap<String, Vec<HandoffDoc>> = BTreeMap::new();
        let mut confirmed = Vec::new();
        let mut budget = HANDOFF_BATCH;
        let start = self.handoff.cursor;
        for k in 0..PARTITIONS {
            let p = Partition((start + k) % PARTITIONS);
            if held.contains(p) || self.docs.index().partition_len(p) == 0 {
                continue;
            }
            if budget == 0 {
                self.handoff.cursor = p.0;
                break;
            }
            for (doc, _) in self.docs.index().partition_docs(p) {
                if budget == 0 {
                    break;
                }
                let recently = self
                    .handoff
                    .offered_at
                    .get(&doc)
                    .is_some_and(|&at| now < at.saturating_add(self.config.anti_entropy_ms));
                let same =
                    self.handoff.offered.get(&doc).is_some_and(|(offered, _)| {
                        self.docs.heads(&doc).as_ref() == Some(offered)
                    });
                if recently && same {
                    continue;
                }
                budget -= 1;
                if !self.ready(&doc, Need::Heads) {
                    // Offered once its heads are read.
                    self.park(&doc, Parked::Offer);
                    continue;
                }
                match self.offer(&placement, &doc, now, &connected) {
                    Some(Offer::Confirmed) => confirmed.push(doc),
                    Some(Offer::To(hops, offer)) => {
                        for hop in hops {
                            by_peer.entry(hop).or_default().push(offer.clone());
                        }
                    }
                    None => {}
                }
            }
        }
        for doc in confirmed {
            self.try_drop(&placement, doc);
        }
        self.handoff.more = budget == 0;
        for (peer, docs) in by_peer {
            self.send_offers(peer, docs);
        }
    }

    /// Stray `doc`: where to offer it (the next hops towards the replicas that have not
    /// confirmed its heads), or confirmed by all of them; `None` if its heads are not known.
    fn offer(
        &mut self,
        placement: &Placement,
        doc: &str,
        now: u64,
        connected: &[String],
    ) -> Option<Offer> {
        let heads = self.docs.heads(doc)?;
        let entry = self
            .handoff
            .offered
            .entry(doc.to_string())
            .or_insert_with(|| (heads.clone(), BTreeSet::new()));
        if entry.0 != heads {
            *entry = (heads.clone(), BTreeSet::new());
        }
        if placement.replicas_of(doc).all(|r| entry.1.contains(r)) {
            // Every replica confirmed these heads, but the drop had to wait.
            return Some(Offer::Confirmed);
        }
        let hops: BTreeSet<String> = placement
            .replicas_of(doc)
            .filter(|r| !entry.1.contains(*r))
            .filter_map(|r| self.router.next_hop(&self.id, r, connected))
            .collect();
        self.handoff.offered_at.insert(doc.to_string(), now);
        Some(Offer::To(hops, offer_of(doc, &heads)))
    }

    /// A stray whose heads were read for a handoff round: offered now.
    pub(super) fn offer_read(&mut self, doc: &str, now: u64) {
        let Some(placement) = self.router.placement().cloned() else {
            return;
        };
        if placement.holds_doc(&self.id, doc) {
            return;
        }
        let connected: Vec<String> = self.peers.keys().cloned().collect();
        match self.offer(&placement, doc, now, &connected) {
            Some(Offer::Confirmed) => self.try_drop(&placement, doc.to_string()),
            Some(Offer::To(hops, offer)) => {
                for hop in hops {
                    self.send_offers(hop, vec![offer.clone()]);
                }
            }
            None => {}
        }
    }

    pub(super) fn send_offers(&mut self, to: String, docs: Vec<HandoffDoc>) {
        self.effects.push(Effect::Send {
            to,
            msg: Message::Handoff {
                docs,
                leaving: self.handoff.leaving,
            },
        });
    }

    /// Drops `doc` here if every replica has confirmed the heads this node still has
    /// (see `receive_handed_off`) and nothing pins it: no change of it waits to be
    /// durable, it is not read, lent out, followed or watched. Tried again at every round
    /// while something pins it, since the replicas have nothing more to confirm. Changes
    /// held back for a dependency that never came do not pin it: the replicas hold them
    /// back too, or never got them from this node alone.
    fn try_drop(&mut self, placement: &Placement, doc: String) {
        let Some((offered, by)) = self.handoff.offered.get(&doc) else {
            return;
        };
        let all = placement.replicas_of(&doc).all(|r| by.contains(r));
        if !all
            || self.docs.heads(&doc).as_ref() != Some(offered)
            || placement.holds_doc(&self.id, &doc)
            || self.followed_here(&doc)
        {
            return;
        }
        let (batches, retry) = (&self.batches, &self.retry);
        let pinned =
            |d: &crate::core::docs::DocState| retry.holds(&doc) || batches.pins(d.persist_token);
        if !self.dirty.contains(&doc) && self.docs.forget(&doc, pinned) {
            if let Some((heads, by)) = self.handoff.offered.remove(&doc) {
                // Answered on the replicas' behalf to a node this one carried it for.
                let at = self.now.max(1);
                self.handoff
                    .known
                    .insert(doc.clone(), Known { heads, by, at });
            }
            self.handoff.carrying.remove(&doc);
            self.handoff.offered_at.remove(&doc);
            self.handoff.dropped += 1;
            self.effects.push(Effect::Drop { doc });
        }
    }
}

/// Where a stray goes (see `Replica::offer`).
enum Offer {
    /// To these hops, offered so.
    To(BTreeSet<String>, HandoffDoc),
    /// Nowhere: every replica confirmed it.
    Confirmed,
}

/// An offer of `doc` at `heads`.
fn offer_of(doc: &str, heads: &[ChangeHash]) -> HandoffDoc {
    HandoffDoc {
        doc: doc.to_string(),
        heads: heads.iter().map(|h| h.0).collect(),
        by: Vec::new(),
    }
}
