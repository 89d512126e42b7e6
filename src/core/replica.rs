//! [`Replica`]: the replication state machine of one node.
//!
//! Inputs: [`Replica::local_change`], [`Replica::merge`], [`Replica::handle_message`],
//! [`Replica::peer_up`] / [`Replica::peer_down`], [`Replica::tick`],
//! [`Replica::persisted`], [`Replica::send_failed`]. After a burst of inputs the driver
//! calls [`Replica::flush`], which applies every pending remote change of a document in one
//! Automerge call and drains every peer's queued changes into as few messages as fit, then
//! takes the effects with [`Replica::drain_effects`].

mod acks;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transaction;
use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};
use serde_bytes::ByteBuf;

use super::docs::{DocState, Docs};
use super::gate::{Admit, SyncGate};
use super::loaded::LoadedDoc;
use super::memory::Memory;
use super::peers::Peer;
use super::{CoreError, Effect, Router};
use crate::wire::{heads_digest, Ack, DigestEntry, Message};

/// Tuning of the core; every field has a default.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Period of the anti-entropy digest sent to every peer, in ms.
    pub anti_entropy_ms: u64,
    /// Documents changed more recently than this are left out of periodic digests (their
    /// pushes are still in flight); full digests on (re)connect include every document.
    pub quiet_ms: u64,
    /// A sync session with no message for this long is forgotten, in ms.
    pub session_timeout_ms: u64,
    /// While a repair of a document waits for its first answer, other peers' repairs of
    /// it wait too, for at most this long, in ms (see the `gate` module).
    pub repair_hold_ms: u64,
    /// Bytes of changes queued for one peer before further pushes to it are dropped (and
    /// repaired by anti-entropy).
    pub outbox_limit: usize,
    /// How many remembered ack routes and awaited local acks, at most.
    pub ack_memory: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            anti_entropy_ms: 5_000,
            quiet_ms: 1_000,
            session_timeout_ms: 10_000,
            repair_hold_ms: 300,
            outbox_limit: 64 << 20,
            ack_memory: 200_000,
        }
    }
}

/// Counters of what the core has done; exported as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Local changes committed.
    pub local_changes: u64,
    /// Remote changes accepted (new to this node).
    pub remote_changes: u64,
    /// Calls to Automerge's batched apply.
    pub apply_batches: u64,
    /// Remote changes received that this node already had.
    pub duplicates: u64,
    /// Changes from peers that could not be decoded or applied.
    pub bad_changes: u64,
    /// Sync messages from peers that could not be decoded or applied.
    pub bad_sync: u64,
    /// Messages from peers that are not connected or not expected.
    pub unexpected_messages: u64,
    /// Digests sent.
    pub digests_sent: u64,
    /// Sync sessions started because a digest showed a difference.
    pub repairs: u64,
    /// Changes obtained through the sync protocol.
    pub repaired_changes: u64,
    /// Sync messages sent.
    pub sync_sent: u64,
    /// Changes not pushed because a peer's queue was full.
    pub pushes_dropped: u64,
    /// Durable acknowledgements sent by this node for remote changes.
    pub acks_sent: u64,
}

/// The result of a local change.
#[derive(Debug)]
pub struct LocalWrite<R> {
    /// What the closure returned.
    pub value: R,
    /// The new change, if the closure made any operation.
    pub hash: Option<ChangeHash>,
    /// The document's heads afterwards.
    pub heads: Vec<ChangeHash>,
    /// The change is durable once [`Effect::Persist`] with this token has been carried out.
    pub persist_token: Option<u64>,
}

/// Acks owed to one peer once a persist batch is durable: (peer, doc) → hashes.
type AckWork = BTreeMap<(String, String), Vec<[u8; 32]>>;

/// The replication state machine of one node.
pub struct Replica {
    id: String,
    docs: Docs,
    peers: BTreeMap<String, Peer>,
    connected: Vec<String>,
    router: Box<dyn Router>,
    config: CoreConfig,
    effects: Vec<Effect>,
    /// Documents with pending remote changes.
    dirty: BTreeSet<String>,
    /// The persist batch being filled, its index by document, and its token.
    batch: Vec<(String, Vec<Vec<u8>>)>,
    batch_index: HashMap<String, usize>,
    batch_acks: AckWork,
    /// Acks owed for changes received with missing dependencies (Automerge holds them
    /// back): a change is acknowledged only once it is applied, so that the acknowledging
    /// node can rebuild it from its own storage. Moved to `batch_acks` when it applies.
    deferred_acks: AckWork,
    token: u64,
    ack_work: HashMap<u64, AckWork>,
    /// Which peer each want-ack or repaired change came from, to route acks back.
    ack_routes: Memory<String>,
    /// Whose acks of each change this node has relayed: each at most once, so acks end
    /// even where routes form a loop (routes are forgotten across restarts).
    relayed: Memory<Vec<String>>,
    /// Local changes whose writer waits for acks, with their document.
    awaited: Memory<String>,
    last_anti_entropy: u64,
    gate: SyncGate,
    stats: CoreStats,
}

impl Replica {
    /// A replica for node `id`. `actor_seed` makes the Automerge actor id of this run's
    /// local changes: it must be fresh for every start of the node (random bytes in
    /// production, seeded in a simulation), so a restarted node never reuses a sequence
    /// number of a change it lost before persisting.
    pub fn new(
        id: impl Into<String>,
        actor_seed: [u8; 16],
        router: Box<dyn Router>,
        config: CoreConfig,
    ) -> Self {
        let ack_memory = config.ack_memory;
        Replica {
            id: id.into(),
            docs: Docs::new(ActorId::from(actor_seed)),
            peers: BTreeMap::new(),
            connected: Vec::new(),
            router,
            config,
            effects: Vec::new(),
            dirty: BTreeSet::new(),
            batch: Vec::new(),
            batch_index: HashMap::new(),
            batch_acks: BTreeMap::new(),
            deferred_acks: BTreeMap::new(),
            token: 1,
            ack_work: HashMap::new(),
            ack_routes: Memory::new(ack_memory),
            relayed: Memory::new(ack_memory),
            awaited: Memory::new(ack_memory),
            last_anti_entropy: 0,
            gate: SyncGate::default(),
            stats: CoreStats::default(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Replaces the router (for example when the topology's live links change).
    pub fn set_router(&mut self, router: Box<dyn Router>) {
        self.router = router;
    }

    /// Loads a stored document at start-up: a snapshot (if any) and the changes appended
    /// after it, applied in one batch. Corrupt data is an error and loads nothing.
    pub fn load_doc(
        &mut self,
        id: &str,
        snapshot: Option<&[u8]>,
        changes: &[Vec<u8>],
    ) -> Result<(), CoreError> {
        let loaded = LoadedDoc::decode(id, snapshot, changes)?;
        self.insert_loaded(loaded);
        Ok(())
    }

    /// Adds a document decoded by [`LoadedDoc::decode`] (which may run on other threads).
    pub fn insert_loaded(&mut self, loaded: LoadedDoc) {
        let state = self.docs.insert(loaded.id, loaded.doc);
        state.track_orphans(loaded.changes);
    }

    /// Runs `f` as one Automerge transaction on `doc` (created if new). On `Err` the
    /// transaction is rolled back and nothing changes. A change is pushed to peers and
    /// queued for persistence; it is durable once the returned token is persisted.
    pub fn local_change<R, E>(
        &mut self,
        now: u64,
        doc: &str,
        want_ack: bool,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
    ) -> Result<LocalWrite<R>, E> {
        // Keep the causal order simple: pending remote changes go in first.
        self.apply_doc(doc);
        let state = self.docs.get_or_create(doc);
        let mut tx = state.doc.transaction();
        let value = match f(&mut tx) {
            Ok(v) => v,
            Err(e) => {
                tx.rollback();
                self.docs.remove_if_empty(doc);
                return Err(e);
            }
        };
        let (hash, _) = tx.commit();
        let heads = state.doc.get_heads();
        let Some(hash) = hash else {
            self.docs.remove_if_empty(doc);
            return Ok(LocalWrite {
                value,
                hash: None,
                heads,
                persist_token: None,
            });
        };
        let bytes = state
            .doc
            .get_change_by_hash(&hash)
            .map(|c| c.raw_bytes().to_vec())
            .unwrap_or_default();
        state.last_change_ms = now;
        self.stats.local_changes += 1;
        if want_ack {
            self.awaited.insert(hash, doc.to_string());
        }
        let me = self.id.clone();
        self.accept_new(doc, &me, None, want_ack, vec![bytes]);
        self.effects.push(Effect::Notify {
            doc: doc.to_string(),
            heads: heads.clone(),
        });
        Ok(LocalWrite {
            value,
            hash: Some(hash),
            heads,
            persist_token: Some(self.token),
        })
    }

    /// Merges Automerge data (a saved document or concatenated changes) into `doc`. The
    /// data is checked completely before anything changes. Returns how many changes were
    /// new and the persist token that makes them durable.
    pub fn merge(
        &mut self,
        now: u64,
        doc: &str,
        data: &[u8],
    ) -> Result<(usize, Option<u64>), CoreError> {
        let bad = |detail: String| CoreError::BadAutomergeData {
            doc: doc.to_string(),
            detail,
        };
        let mut scratch = Automerge::new();
        scratch
            .load_incremental(data)
            .map_err(|e| bad(e.to_string()))?;
        self.apply_doc(doc);
        let missing = scratch.get_missing_deps(&[]);
        if !missing.is_empty() {
            // Changes made on top of history (`save_after`): fine if the document has it.
            let Some(existing) = self.docs.get(doc).filter(|d| {
                missing
                    .iter()
                    .all(|h| d.doc.get_change_meta_by_hash(h).is_some())
            }) else {
                return Err(bad(
                    "changes depend on history that neither the data nor the document has".into(),
                ));
            };
            scratch = existing.doc.clone();
            scratch
                .load_incremental(data)
                .map_err(|e| bad(e.to_string()))?;
        }
        let state = self.docs.get_or_create(doc);
        let new = state.doc.get_changes_added(&scratch);
        if new.is_empty() {
            self.docs.remove_if_empty(doc);
            return Ok((0, None));
        }
        let count = new.len();
        let mut bytes: Vec<Vec<u8>> = new.iter().map(|c| c.raw_bytes().to_vec()).collect();
        let accepted: std::collections::HashSet<ChangeHash> =
            new.iter().map(|c| c.hash()).collect();
        let before = state.doc.get_heads();
        let queued_before = !state.doc.get_missing_deps(&[]).is_empty();
        if let Err(source) = state.doc.apply_changes(new) {
            return Err(CoreError::Automerge {
                doc: doc.to_string(),
                source: Box::new(source),
            });
        }
        if queued_before {
            // Changes Automerge had queued may have become applicable: persist them too.
            bytes.extend(state.unaccepted_since(&before, &accepted));
        }
        state.last_change_ms = now;
        let heads = state.doc.get_heads();
        let me = self.id.clone();
        self.accept_new(doc, &me, None, false, bytes);
        self.effects.push(Effect::Notify {
            doc: doc.to_string(),
            heads,
        });
        Ok((count, Some(self.token)))
    }

    /// A link to `peer` is up: it becomes a push target and gets a full digest.
    pub fn peer_up(&mut self, now: u64, peer: &str) {
        self.peers.insert(peer.to_string(), Peer::new());
        self.refresh_connected();
        self.send_digest(now, peer, true);
    }

    /// The link to `peer` is gone: its queue and sync sessions are dropped, and repairs
    /// held for an answer from it go ahead.
    pub fn peer_down(&mut self, now: u64, peer: &str) {
        self.peers.remove(peer);
        self.refresh_connected();
        for doc in self.gate.peer_down(peer) {
            self.release_held(now, &doc);
        }
    }

    /// A message for `peer` could not be queued: anti-entropy will repair.
    pub fn send_failed(&mut self, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.needs_full_digest = true;
        }
        self.stats.pushes_dropped += 1;
    }

    /// The persist batch `token` is durable: acknowledge it to the peers waiting for it.
    pub fn persisted(&mut self, token: u64) {
        let Some(work) = self.ack_work.remove(&token) else {
            return;
        };
        for ((peer, doc), hashes) in work {
            if self.peers.contains_key(&peer) {
                self.stats.acks_sent += 1;
                self.effects.push(Effect::Send {
                    to: peer,
                    msg: Message::Ack(Ack {
                        doc,
                        by: self.id.clone(),
                        hashes,
                    }),
                });
            }
        }
    }

    /// Periodic work: anti-entropy digests and expiry of stale sync sessions.
    pub fn tick(&mut self, now: u64) {
        let timeout = self.config.session_timeout_ms;
        for peer in self.peers.values_mut() {
            peer.sessions
                .retain(|_, (_, last)| now.saturating_sub(*last) < timeout);
        }
        for doc in self.gate.expire(now, self.config.repair_hold_ms) {
            self.release_held(now, &doc);
        }
        let periodic = now.saturating_sub(self.last_anti_entropy) >= self.config.anti_entropy_ms;
        if periodic {
            self.last_anti_entropy = now;
        }
        let peers: Vec<(String, bool)> = self
            .peers
            .iter()
            .map(|(id, p)| (id.clone(), p.needs_full_digest))
            .collect();
        for (peer, full) in peers {
            if full || periodic {
                self.send_digest(now, &peer, full);
            }
        }
    }

    /// Handles one message from a connected peer.
    pub fn handle_message(&mut self, now: u64, from: &str, msg: Message) {
        if !self.peers.contains_key(from) {
            self.stats.unexpected_messages += 1;
            return;
        }
        match msg {
            Message::Push(groups) => {
                for g in groups {
                    self.receive_push(now, from, g.doc, g.origin, g.want_ack, g.changes);
                }
            }
            Message::Ack(ack) => self.receive_ack(from, ack),
            Message::Digest(entries) => self.receive_digest(now, from, entries),
            Message::Sync { doc, data } => self.receive_sync(now, from, &doc, &data),
            Message::Hello(_) => self.stats.unexpected_messages += 1,
        }
    }

    /// Applies pending remote changes (one Automerge call per document), emits the persist
    /// batch and drains every peer's queue into messages.
    pub fn flush(&mut self) {
        for doc in std::mem::take(&mut self.dirty) {
            self.apply_doc(&doc);
        }
        self.settle_acks();
        if !self.batch.is_empty() || !self.batch_acks.is_empty() {
            let token = self.token;
            self.token += 1;
            self.batch_index.clear();
            let acks = std::mem::take(&mut self.batch_acks);
            if !acks.is_empty() {
                self.ack_work.insert(token, acks);
            }
            self.effects.push(Effect::Persist {
                token,
                docs: std::mem::take(&mut self.batch),
            });
        }
        for (id, peer) in self.peers.iter_mut() {
            for msg in peer.drain_pushes() {
                self.effects.push(Effect::Send {
                    to: id.clone(),
                    msg,
                });
            }
        }
    }

    /// Takes the effects produced so far, in order.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The document, if this node has it.
    pub fn doc(&self, id: &str) -> Option<&Automerge> {
        self.docs.get(id).map(|d| &d.doc)
    }

    /// Every document with its heads, in id order.
    pub fn heads(&self) -> Vec<(String, Vec<ChangeHash>)> {
        self.docs
            .iter()
            .map(|(id, d)| (id.clone(), d.doc.get_heads()))
            .collect()
    }

    /// Number of documents.
    pub fn doc_count(&self) -> usize {
        self.docs.len()
    }

    /// A snapshot for compaction: the saved document and the changes it cannot contain
    /// (received, but waiting for dependencies).
    pub fn snapshot(&self, id: &str) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
        self.docs.get(id).map(|d| (d.doc.save(), d.orphan_bytes()))
    }

    /// Connected peers, in id order.
    pub fn connected(&self) -> &[String] {
        &self.connected
    }

    /// Bytes of changes queued for `peer`, if connected.
    pub fn queued_bytes(&self, peer: &str) -> Option<usize> {
        self.peers.get(peer).map(|p| p.outbox_bytes())
    }

    /// Counters.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    fn refresh_connected(&mut self) {
        self.connected = self.peers.keys().cloned().collect();
    }

    /// Applies a document's pending changes, persisting the ones Automerge accepted.
    fn apply_doc(&mut self, doc: &str) {
        let Some(state) = self.docs.get_mut(doc) else {
            return;
        };
        if !state.has_pending() {
            return;
        }
        self.stats.apply_batches += 1;
        let applied = state.apply_pending();
        if applied.changed {
            let heads = state.doc.get_heads();
            self.effects.push(Effect::Notify {
                doc: doc.to_string(),
                heads,
            });
        }
        if !applied.extra.is_empty() {
            let me = self.id.clone();
            self.accept_new(doc, &me, None, false, applied.extra);
        }
        if !applied.rejected.is_empty() {
            self.stats.bad_changes += applied.rejected.len() as u64;
            self.unaccept(doc, &applied.rejected);
        }
    }

    /// Takes back changes accepted by `accept_new` that Automerge then refused: they leave
    /// the persist batch being filled, the peers' queues and the acks owed (none of these
    /// has been flushed yet: pending changes are always applied before a flush ends).
    fn unaccept(&mut self, doc: &str, rejected: &[Vec<u8>]) {
        if let Some(&i) = self.batch_index.get(doc) {
            self.batch[i].1.retain(|c| !rejected.contains(c));
        }
        for peer in self.peers.values_mut() {
            peer.forget(doc, rejected);
        }
        let hashes: Vec<[u8; 32]> = rejected
            .iter()
            .filter_map(|b| Change::from_bytes(b.clone()).ok())
            .map(|c| c.hash().0)
            .collect();
        for ((_, d), owed) in self.batch_acks.iter_mut() {
            if d == doc {
                owed.retain(|h| !hashes.contains(h));
            }
        }
    }

    /// Records new changes (already in or pending for the document): persist them and push
    /// them on (asking the next nodes for acks if `want_ack`).
    fn accept_new(
        &mut self,
        doc: &str,
        origin: &str,
        from: Option<&str>,
        want_ack: bool,
        changes: Vec<Vec<u8>>,
    ) {
        let targets = self.router.targets(&self.id, origin, from, &self.connected);
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
        let index = match self.batch_index.get(doc) {
            Some(&i) => i,
            None => {
                self.batch.push((doc.to_string(), Vec::new()));
                self.batch_index
                    .insert(doc.to_string(), self.batch.len() - 1);
                self.batch.len() - 1
            }
        };
        self.batch[index].1.extend(changes);
    }

    fn receive_push(
        &mut self,
        now: u64,
        from: &str,
        doc: String,
        origin: String,
        want_ack: bool,
        changes: Vec<ByteBuf>,
    ) {
        let state = self.docs.get_or_create(&doc);
        let mut fresh = Vec::new();
        let mut owed = Vec::new();
        for bytes in changes {
            let bytes = bytes.into_vec();
            match Change::from_bytes(bytes.clone()) {
                Ok(change) => {
                    let hash = change.hash();
                    if state.push_pending(change) {
                        if want_ack {
                            self.ack_routes.insert(hash, from.to_string());
                            owed.push(hash.0);
                        }
                        fresh.push(bytes);
                    } else {
                        self.stats.duplicates += 1;
                    }
                }
                Err(_) => self.stats.bad_changes += 1,
            }
        }
        if fresh.is_empty() {
            self.docs.remove_if_empty(&doc);
            return;
        }
        state.last_change_ms = now;
        self.stats.remote_changes += fresh.len() as u64;
        self.dirty.insert(doc.clone());
        if !owed.is_empty() {
            self.batch_acks
                .entry((from.to_string(), doc.clone()))
                .or_default()
                .extend(owed);
        }
        self.accept_new(&doc, &origin, Some(from), want_ack, fresh);
    }

    fn send_digest(&mut self, now: u64, peer: &str, full: bool) {
        const ENTRIES_PER_MESSAGE: usize = 20_000;
        let quiet = self.config.quiet_ms;
        let entries: Vec<DigestEntry> = self
            .docs
            .iter()
            .filter(|(_, d)| full || now.saturating_sub(d.last_change_ms) >= quiet)
            .map(|(id, d)| DigestEntry {
                doc: id.clone(),
                heads: digest_of(&d.doc.get_heads()),
            })
            .collect();
        if let Some(p) = self.peers.get_mut(peer) {
            p.needs_full_digest = false;
        }
        if entries.is_empty() {
            return;
        }
        self.stats.digests_sent += 1;
        let mut entries = entries;
        while !entries.is_empty() {
            let rest = entries.split_off(entries.len().min(ENTRIES_PER_MESSAGE));
            self.effects.push(Effect::Send {
                to: peer.to_string(),
                msg: Message::Digest(entries),
            });
            entries = rest;
        }
    }

    fn receive_digest(&mut self, now: u64, from: &str, entries: Vec<DigestEntry>) {
        for entry in entries {
            let mine = self
                .docs
                .get(&entry.doc)
                .map(|d| digest_of(&d.doc.get_heads()))
                .unwrap_or_else(|| digest_of(&[]));
            let active = self
                .peers
                .get(from)
                .is_some_and(|p| p.sessions.contains_key(&entry.doc));
            if mine != entry.heads && !active && self.gate.may_start(&entry.doc, from) {
                self.start_sync(now, from, &entry.doc);
            }
        }
    }

    fn start_sync(&mut self, now: u64, peer: &str, doc: &str) {
        self.apply_doc(doc);
        let state = self.docs.get_or_create(doc);
        let mut session = sync::State::new();
        let msg = state.doc.generate_sync_message(&mut session);
        self.stats.repairs += 1;
        if let Some(msg) = msg {
            if let Some(p) = self.peers.get_mut(peer) {
                p.sessions.insert(doc.to_string(), (session, now));
            }
            self.gate.started(doc, peer, now);
            self.stats.sync_sent += 1;
            self.effects.push(Effect::Send {
                to: peer.to_string(),
                msg: Message::Sync {
                    doc: doc.to_string(),
                    data: ByteBuf::from(msg.encode()),
                },
            });
        }
    }

    fn receive_sync(&mut self, now: u64, from: &str, doc: &str, data: &[u8]) {
        if sync::Message::decode(data).is_err() {
            self.stats.bad_sync += 1;
            return;
        }
        let in_session = self
            .peers
            .get(from)
            .is_some_and(|p| p.sessions.contains_key(doc));
        match self.gate.admit(doc, from, in_session, data, now) {
            Admit::Held => {}
            Admit::Process => self.process_sync(now, from, doc, data),
            Admit::ProcessThenRelease => {
                self.process_sync(now, from, doc, data);
                self.release_held(now, doc);
            }
        }
    }

    /// Answers the repairs of `doc` the gate held, if it no longer waits for any answer.
    fn release_held(&mut self, now: u64, doc: &str) {
        for (peer, data) in self.gate.release(doc) {
            self.process_sync(now, &peer, doc, &data);
        }
    }

    fn process_sync(&mut self, now: u64, from: &str, doc: &str, data: &[u8]) {
        let Ok(msg) = sync::Message::decode(data) else {
            self.stats.bad_sync += 1;
            return;
        };
        self.apply_doc(doc);
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        let (mut session, _) = peer
            .sessions
            .remove(doc)
            .unwrap_or_else(|| (sync::State::new(), now));
        let state: &mut DocState = self.docs.get_or_create(doc);
        let before = state.doc.get_heads();
        if state.doc.receive_sync_message(&mut session, msg).is_err() {
            self.stats.bad_sync += 1;
            self.docs.remove_if_empty(doc);
            return;
        }
        // Automerge never resends a change it has sent in this session. If the message that
        // carried it was lost (a failed send), the peer asks for it in `need` forever and the
        // session ping-pongs without end: send what the peer explicitly needs again.
        if let Some(need) = session.their_need.as_ref() {
            for hash in need {
                session.sent_hashes.remove(hash);
            }
        }
        let after = state.doc.get_heads();
        if after != before {
            let changes = state.doc.get_changes(&before);
            let hashes: Vec<[u8; 32]> = changes.iter().map(|c| c.hash().0).collect();
            let new: Vec<Vec<u8>> = changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
            state.last_change_ms = now;
            self.stats.repaired_changes += new.len() as u64;
            self.effects.push(Effect::Notify {
                doc: doc.to_string(),
                heads: after,
            });
            // Acknowledge repaired changes to the peer they came from once durable, like
            // pushed ones, and route the acks of the nodes they are passed on to back the
            // same way: a write whose push was lost (dead connection, full queue, partition)
            // still meets its write concern once the change is everywhere.
            for hash in &hashes {
                let hash = ChangeHash(*hash);
                if self.ack_routes.get(&hash).is_none() {
                    self.ack_routes.insert(hash, from.to_string());
                }
            }
            self.batch_acks
                .entry((from.to_string(), doc.to_string()))
                .or_default()
                .extend(hashes);
            // Pass them on as if `from` had written them: the topology's routing then
            // spreads them away from `from` (into a healed ring's other side) and not back
            // to nodes that sync with `from` themselves (a mesh sends nothing on).
            self.accept_new(doc, from, Some(from), true, new);
        }
        let state = self.docs.get_or_create(doc);
        let reply = state.doc.generate_sync_message(&mut session);
        match reply {
            Some(reply) => {
                if let Some(p) = self.peers.get_mut(from) {
                    p.sessions.insert(doc.to_string(), (session, now));
                }
                self.stats.sync_sent += 1;
                self.effects.push(Effect::Send {
                    to: from.to_string(),
                    msg: Message::Sync {
                        doc: doc.to_string(),
                        data: ByteBuf::from(reply.encode()),
                    },
                });
            }
            None => self.docs.remove_if_empty(doc),
        }
    }
}

fn digest_of(heads: &[ChangeHash]) -> u64 {
    let raw: Vec<[u8; 32]> = heads.iter().map(|h| h.0).collect();
    heads_digest(&raw)
}
