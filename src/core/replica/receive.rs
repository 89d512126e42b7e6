//! The receive path of the replica: changes pushed by peers are decoded, de-duplicated
//! and queued for the next batched apply; every new change (local, pushed, merged,
//! repaired or from a client) is recorded for persistence and pushed on along the router's
//! targets; changes Automerge then refuses are taken back before anything leaves.

use std::collections::HashSet;

use automerge::Change;
use serde_bytes::ByteBuf;

use super::lending;
use super::reads::Parked;
use super::Replica;
use crate::core::docs::Need;
use crate::core::lend::Work;

impl Replica {
    /// Changes pushed by `from`: decoded (bad ones counted), then accepted once the
    /// document is in memory (parked while it is read).
    pub(super) fn receive_push(
        &mut self,
        now: u64,
        from: &str,
        doc: String,
        origin: String,
        want_ack: bool,
        changes: Vec<ByteBuf>,
    ) {
        if self.gate.answered(&doc, from) {
            self.release_held(now, &doc);
        }
        if self.foreign(&doc) || self.handoff.leaving {
            // A leaving node takes (and acknowledges) no more changes: its copies are
            // handed off as they are, and writers count their documents' other replicas.
            return;
        }
        let mut decoded = Vec::with_capacity(changes.len());
        for bytes in changes {
            match Change::from_bytes(bytes.into_vec()) {
                Ok(change) => decoded.push(change),
                Err(_) => self.stats.bad_changes += 1,
            }
        }
        if self.ready(&doc, Need::Heads) {
            self.accept_push(now, from, &doc, &origin, want_ack, decoded);
        } else {
            let work = Parked::Push {
                from: from.to_string(),
                origin,
                want_ack,
                changes: decoded,
            };
            self.park(&doc, work);
        }
    }

    /// True for a document this node neither replicates nor has, nor asked for (for its
    /// clients or watchers, or to carry it on to its replicas): the answer to a repair
    /// asked before it handed the document off, or a push from a peer with another
    /// topology. Taken, changes without their history would wait here for it forever: a
    /// stored document with no heads, which no handoff offers or drops. Its replicas have
    /// them or get them.
    fn foreign(&self, doc: &str) -> bool {
        self.placed_elsewhere(doc)
            && !self.docs.has_doc(doc)
            && !self.followed_here(doc)
            && !self.clients.waiting.contains_key(doc)
            && !self.handoff.carrying.contains_key(doc)
    }

    /// Pushed changes of a document whose heads are known: taken without loading it where
    /// they extend its heads directly, else once it is in memory (then they wait for the
    /// next batched apply, or, `heavy_ops` or more, are applied off the driver's task and
    /// accepted when back). New ones are persisted, acknowledged once durable if asked, and
    /// pushed on.
    pub(super) fn accept_push(
        &mut self,
        now: u64,
        from: &str,
        doc: &str,
        origin: &str,
        want_ack: bool,
        decoded: Vec<Change>,
    ) {
        let total = decoded.len();
        let (accepted, loaded) = match self.docs.append_unloaded(doc, &decoded) {
            Some((fresh, heads)) => {
                if !fresh.is_empty() {
                    self.notify(doc.to_string(), heads);
                }
                let picked: Vec<Change> = fresh.iter().map(|&i| decoded[i].clone()).collect();
                (picked, false)
            }
            None if !self.ready(doc, Need::Doc) => {
                let (from, origin) = (from.to_string(), origin.to_string());
                let changes = decoded;
                return self.park(
                    doc,
                    Parked::Push {
                        from,
                        origin,
                        want_ack,
                        changes,
                    },
                );
            }
            None => {
                // Not acknowledged, so not lost: anti-entropy brings the changes again.
                let Ok(state) = self.docs.get_or_create(doc) else {
                    return;
                };
                if lending::ops(&decoded) >= self.config.heavy_ops {
                    // Applied off the driver's task, accepted when back (see `lending`).
                    let mut seen = HashSet::new();
                    let changes: Vec<Change> = decoded
                        .into_iter()
                        .filter(|c| !state.has(&c.hash()) && seen.insert(c.hash()))
                        .collect();
                    self.stats.duplicates += (total - changes.len()) as u64;
                    if changes.is_empty() {
                        self.docs.remove_if_empty(doc);
                        return;
                    }
                    let (from, origin) = (from.to_string(), origin.to_string());
                    let work = Work::Push {
                        from,
                        origin,
                        want_ack,
                        changes,
                        applied: None,
                    };
                    return self.lend_job(doc, work);
                }
                let picked = decoded
                    .into_iter()
                    .filter(|c| state.push_pending(c.clone()))
                    .collect();
                (picked, true)
            }
        };
        self.stats.duplicates += (total - accepted.len()) as u64;
        self.accept_fresh(now, from, doc, origin, want_ack, accepted, loaded);
    }

    /// Pushed changes new to the document (in memory and pending there if `loaded`, else
    /// taken unloaded): persisted, acknowledged once durable if asked, and pushed on.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn accept_fresh(
        &mut self,
        now: u64,
        from: &str,
        doc: &str,
        origin: &str,
        want_ack: bool,
        accepted: Vec<Change>,
        loaded: bool,
    ) {
        let mut fresh = Vec::with_capacity(accepted.len());
        let mut owed = Vec::new();
        for change in accepted {
            if want_ack {
                self.ack_routes.insert(change.hash(), from.to_string());
                owed.push(change.hash().0);
            }
            fresh.push(change.raw_bytes().to_vec());
        }
        if fresh.is_empty() {
            self.docs.remove_if_empty(doc);
            return;
        }
        self.stats.remote_changes += fresh.len() as u64;
        if loaded {
            if let Some(state) = self.docs.peek_mut(doc) {
                state.last_change_ms = now;
            }
            self.dirty.insert(doc.to_string());
        }
        if !owed.is_empty() {
            self.batches
                .acks
                .entry((from.to_string(), doc.to_string()))
                .or_default()
                .extend(owed);
        }
        self.accept_new(doc, origin, Some(from), want_ack, fresh);
    }

    /// Takes back changes accepted by `accept_new` that Automerge then refused: they leave
    /// the persist batch being filled, the peers' queues and the acks owed (none of these
    /// has been flushed yet: pending changes are always applied before a flush ends).
    pub(super) fn unaccept(&mut self, doc: &str, rejected: &[Vec<u8>]) {
        self.batches.take_back(doc, rejected);
        for peer in self.peers.values_mut() {
            peer.forget(doc, rejected);
        }
    }

    /// Records new changes (already in or pending for the document): persist them and push
    /// them on (asking the next nodes for acks if `want_ack`).
    pub(super) fn accept_new(
        &mut self,
        doc: &str,
        origin: &str,
        from: Option<&str>,
        want_ack: bool,
        changes: Vec<Vec<u8>>,
    ) {
        let mut targets = self.router.targets(&self.id, origin, from, &self.connected);
        if let Some(placement) = self.router.placement() {
            targets.retain(|t| placement.holds_doc(t, doc));
            // Peers whose clients follow the document (see `follow`).
            for f in self.followers_of(doc) {
                if Some(f.as_str()) != from && f != origin && !targets.contains(f) {
                    targets.push(f.clone());
                }
            }
        }
        for target in &targets {
            let Some(peer) = self.peers.get_mut(target) else {
                continue;
            };
            for bytes in &changes {
                if !peer.queue(doc, origin, want_ack, bytes, self.config.outbox_limit) {
                    self.stats.pushes_dropped += 1;
                }
            }
        }
        let bytes: usize = changes.iter().map(Vec::len).sum();
        self.docs.batched(doc, self.batches.token(), bytes);
        self.batches.add(doc, changes, bytes);
    }
}
