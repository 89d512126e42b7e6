//! Durable acknowledgements of the replica: which acks wait for a change to apply
//! ([`Replica::settle_acks`]), and how acks of other nodes reach the writer, relayed along
//! the path each change took ([`Replica::receive_ack`]).

use std::collections::BTreeMap;

use automerge::ChangeHash;

use super::Replica;
use crate::core::Effect;
use crate::wire::{Ack, Message, BATCH_BUDGET};

impl Replica {
    /// Defers the acks of the batch being filled whose changes Automerge holds back
    /// (missing dependencies), and owes with this batch the deferred acks whose changes
    /// have been applied since: their dependencies are in this batch or an earlier one, so
    /// they are durable once this batch is. At most `ack_memory` acks wait; past that an
    /// ack is dropped (its writer's write concern times out).
    pub(super) fn settle_acks(&mut self) {
        let docs = &self.docs;
        let applied = |doc: &str, h: &[u8; 32]| docs.has_change(doc, &ChangeHash(*h));
        let mut waiting: usize = self.deferred_acks.values().map(Vec::len).sum();
        for ((peer, doc), hashes) in self.deferred_acks.iter_mut() {
            let (ready, still): (Vec<[u8; 32]>, Vec<[u8; 32]>) =
                hashes.iter().partition(|h| applied(doc, h));
            if !ready.is_empty() {
                waiting -= ready.len();
                self.batches
                    .acks
                    .entry((peer.clone(), doc.clone()))
                    .or_default()
                    .extend(ready);
                *hashes = still;
            }
        }
        self.deferred_acks.retain(|_, hashes| !hashes.is_empty());
        for ((peer, doc), hashes) in self.batches.acks.iter_mut() {
            if hashes.iter().all(|h| applied(doc, h)) {
                continue;
            }
            let (ready, held): (Vec<[u8; 32]>, Vec<[u8; 32]>) =
                hashes.iter().partition(|h| applied(doc, h));
            *hashes = ready;
            let room = self.config.ack_memory.saturating_sub(waiting);
            waiting += held.len().min(room);
            self.deferred_acks
                .entry((peer.clone(), doc.clone()))
                .or_default()
                .extend(held.into_iter().take(room));
        }
        self.batches.acks.retain(|_, hashes| {
            // A change repaired by sync may be owed twice (deferred, and as repaired).
            hashes.sort_unstable();
            hashes.dedup();
            !hashes.is_empty()
        });
        self.deferred_acks.retain(|_, hashes| !hashes.is_empty());
    }

    /// Acks from `from`: each reported if this node's own write awaits it, else relayed
    /// once along the route the change came by (one message per next hop).
    pub(super) fn receive_acks(&mut self, from: &str, acks: Vec<Ack>) {
        let mut relays: BTreeMap<String, Vec<Ack>> = BTreeMap::new();
        for ack in acks {
            for (to, hashes) in self.receive_ack(from, &ack) {
                relays.entry(to).or_default().push(Ack {
                    doc: ack.doc.clone(),
                    by: ack.by.clone(),
                    hashes,
                });
            }
        }
        for (to, acks) in relays {
            self.send_acks(&to, acks);
        }
    }

    /// Sends acks to `to`, as many per message as fit a batch.
    pub(super) fn send_acks(&mut self, to: &str, acks: Vec<Ack>) {
        let mut chunk = Vec::new();
        let mut size = 0;
        for ack in acks {
            size += ack.doc.len() + ack.by.len() + 32 * ack.hashes.len() + 8;
            chunk.push(ack);
            if size >= BATCH_BUDGET / 4 {
                size = 0;
                self.effects.push(Effect::Send {
                    to: to.to_string(),
                    msg: Message::Ack(std::mem::take(&mut chunk)),
                });
            }
        }
        if !chunk.is_empty() {
            self.effects.push(Effect::Send {
                to: to.to_string(),
                msg: Message::Ack(chunk),
            });
        }
    }

    /// One ack from `from`: reports it if awaited; returns the relays it needs.
    fn receive_ack(&mut self, from: &str, ack: &Ack) -> BTreeMap<String, Vec<[u8; 32]>> {
        let mut relay: BTreeMap<String, Vec<[u8; 32]>> = BTreeMap::new();
        if ack.by == self.id {
            // This node's own ack, come back round: its changes returned here (e.g. a
            // document it handed off, handed back after a topology change). It is no
            // other node's copy, for this node's writes or anyone's.
            return relay;
        }
        for &raw in &ack.hashes {
            let hash = ChangeHash(raw);
            if self.awaited.get(&hash).is_some() {
                self.effects.push(Effect::Acked {
                    doc: ack.doc.clone(),
                    hash,
                    by: ack.by.clone(),
                });
            } else if let Some(route) = self.ack_routes.get(&hash).cloned() {
                if route != from
                    && self.peers.contains_key(&route)
                    && self.first_relay(hash, &ack.by)
                {
                    relay.entry(route).or_default().push(raw);
                }
            }
        }
        relay
    }

    /// True the first time this node relays `by`'s ack of `hash`.
    fn first_relay(&mut self, hash: ChangeHash, by: &str) -> bool {
        match self.relayed.get_mut(&hash) {
            Some(list) if list.iter().any(|b| b == by) => false,
            Some(list) => {
                list.push(by.to_string());
                true
            }
            None => {
                self.relayed.insert(hash, vec![by.to_string()]);
                true
            }
        }
    }
}
