//! [`Replica`]: the replication state machine of one node.
//!
//! Inputs: [`Replica::local_change`], [`Replica::merge`], [`Replica::handle_message`],
//! [`Replica::peer_up`] / [`Replica::peer_down`], [`Replica::handle_timeout`] (when
//! [`Replica::poll_timeout`] says), [`Replica::read_done`],
//! [`Replica::persisted`] / [`Replica::persist_failed`], [`Replica::send_failed`]. After a
//! burst of inputs the driver calls [`Replica::flush`], which applies every pending remote
//! change of a document in one Automerge call and drains every peer's queued changes into
//! as few messages as fit, then takes the effects with [`Replica::drain_effects`].
//!
//! Documents live in a bounded cache over the node's store (see `docs`): a replica given a
//! store's index with [`Replica::set_store`] asks for documents on first use
//! ([`Effect::Read`], see `reads`) and drops idle ones. The receive path is in `receive`,
//! anti-entropy and repair in `repair`, acknowledgements in `acks`, what a failed persist
//! batch leaves behind in `persist`.

mod acks;
mod batch;
pub(crate) mod clients;
mod follow;
mod handoff;
mod lending;
mod persist;
mod reads;
mod receive;
mod repair;
mod rtt;
mod timers;

pub use clients::ClientError;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::transaction::Transaction;
use automerge::{ActorId, Automerge, ChangeHash};

use super::clients::Clients;
use super::docs::{Budget, Docs, StoredIndex};
use super::gate::SyncGate;
use super::lend::{self, Made, Merged};
use super::loaded::LoadedDoc;
use super::memory::Memory;
use super::peers::Peer;
use super::{CoreError, Effect, Router};
use crate::storage::DocAppend;
use crate::wire::{Ack, Message};

/// Tuning of the core; every field has a default.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Acknowledgements a full link could not take are sent again this long after, in ms
    /// (`[tuning] tick_ms`).
    pub retry_ms: u64,
    /// Period of the reconciliation a node opens with one of its peers in turn, in ms.
    pub anti_entropy_ms: u64,
    /// Documents changed here more recently than this are not repaired when reconciliation
    /// finds them different (their pushes are still in flight), except on a link younger
    /// than this (nothing was in flight on it).
    pub quiet_ms: u64,
    /// A sync session with no message for this long is forgotten, in ms.
    pub session_timeout_ms: u64,
    /// While a repair of a document waits for its first answer, other peers' repairs of
    /// it wait too, for at most this long (two round trips of the slowest link if longer),
    /// in ms (see the `gate` module).
    pub repair_hold_ms: u64,
    /// Bytes of changes queued for one peer before further pushes to it are dropped (and
    /// repaired by anti-entropy).
    pub outbox_limit: usize,
    /// How many remembered ack routes and awaited local acks, at most.
    pub ack_memory: usize,
    /// Documents kept in memory, at most (documents with changes not yet durable stay
    /// besides). Only with a store ([`Replica::set_store`]); without one all stay.
    pub cache_docs: usize,
    /// The memory the documents kept in memory hold, estimated (see
    /// [`crate::core::footprint`]), at most (likewise).
    pub cache_bytes: usize,
    /// Documents asked of one peer by bulk repair and not answered yet, at least (more on
    /// a slow link: see `want_rate`). Also the most documents read at once for bulk repair.
    pub want_window: usize,
    /// Documents one peer answers per ms of bulk repair, as measured on loopback: the
    /// window of a link covers one round trip at this rate, so that a slow link is not
    /// held to `want_window` documents per round trip (see `core/replica/rtt.rs`).
    pub want_rate: usize,
    /// A client's request for a document this node lacks is answered "unavailable" after
    /// its peers were asked for this long without it arriving, in ms.
    pub unavailable_after_ms: u64,
    /// Target size of one push message's changes, in bytes (`[tuning] max_batch_bytes`).
    pub batch_bytes: usize,
    /// Changes whose persist batch failed are written again after this long, in ms (or at
    /// soon after any batch is durable); see [`Replica::persist_failed`].
    pub persist_retry_ms: u64,
    /// A peer's push or a client's sync message of at least this many ops, for a document
    /// in memory, is applied off the driver's task ([`Effect::Apply`]; text costs about
    /// 2 µs per op to apply).
    pub heavy_ops: usize,
}

impl Default for CoreConfig {
    /// The knobs that are also `[tuning]` settings take their defaults from
    /// [`crate::config::Tuning`].
    fn default() -> Self {
        let t = crate::config::Tuning::default();
        CoreConfig {
            retry_ms: t.tick_ms,
            anti_entropy_ms: t.anti_entropy_ms,
            quiet_ms: 1_000,
            session_timeout_ms: 10_000,
            repair_hold_ms: 300,
            outbox_limit: 64 << 20,
            ack_memory: 200_000,
            cache_docs: t.cache_docs,
            cache_bytes: t.cache_bytes,
            want_window: 512,
            // 100,000 missed writes to 100,000 documents caught up from two peers in
            // 4.9 s on loopback (3 nodes, 2 cores): about 20 documents per ms.
            want_rate: 20,
            unavailable_after_ms: 1_000,
            batch_bytes: t.max_batch_bytes,
            persist_retry_ms: 500,
            heavy_ops: lend::HEAVY_OPS,
        }
    }
}

/// What the core needs to know of a message that could not be sent: its kind, and the
/// acknowledgements in it (to be sent again).
#[derive(Debug)]
pub struct Unsent {
    kind: &'static str,
    acks: Vec<Ack>,
}

impl Unsent {
    /// Of `msg` (clones only acknowledgements, which are small).
    pub fn of(msg: &Message) -> Unsent {
        Unsent {
            kind: msg.kind(),
            acks: match msg {
                Message::Ack(acks) => acks.clone(),
                _ => Vec::new(),
            },
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
    /// Reconciliations opened with a peer.
    pub reconcile_rounds: u64,
    /// Reconciliation messages (fingerprints, bucket items, wants) sent, alone or riding on
    /// pushes.
    pub reconcile_messages: u64,
    /// Encoded bytes of those messages.
    pub reconcile_bytes: u64,
    /// Documents asked of a peer by bulk repair.
    pub wants_sent: u64,
    /// Changes sent to peers by bulk repair.
    pub repair_changes_sent: u64,
    /// Sync sessions started for documents whose histories diverged on both sides.
    pub repairs: u64,
    /// Changes obtained through the sync protocol.
    pub repaired_changes: u64,
    /// Sync messages sent.
    pub sync_sent: u64,
    /// Changes not pushed because a peer's queue was full.
    pub pushes_dropped: u64,
    /// Messages that could not be queued for a peer (its link's queue was full), by kind
    /// (`push`, `ack`, `fingerprints`, ...).
    pub sends_dropped: BTreeMap<&'static str, u64>,
    /// Messages over the wire's message limit, never sent, by kind.
    pub sends_refused: BTreeMap<&'static str, u64>,
    /// Documents named by such messages since start-up.
    pub refused_docs: u64,
    /// Stored documents asked of the driver ([`Effect::Read`]).
    pub reads_asked: u64,
    /// Durable acknowledgements sent by this node for remote changes.
    pub acks_sent: u64,
    /// Documents read from the store into memory.
    pub doc_loads: u64,
    /// Documents dropped from memory.
    pub doc_evictions: u64,
    /// Documents that could not be read from the store.
    pub doc_load_errors: u64,
    /// Changes received from automerge-repo clients (new to this node).
    pub client_changes: u64,
    /// Persist batches that storage failed to make durable (their changes are written
    /// again; see [`Replica::persist_failed`]).
    pub persist_failures: u64,
    /// Documents lent for heavy work off the driver's task ([`Replica::lend`], and
    /// [`Effect::Apply`] for large pushes and client sync messages).
    pub lent: u64,
}

/// A document saved for compaction, and the changes the save cannot contain.
pub type Snapshot = (Vec<u8>, Vec<Vec<u8>>);

/// What a replica holds: documents stored and in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DocCounts {
    /// Documents this node has.
    pub stored: usize,
    /// Documents in memory.
    pub loaded: usize,
    /// The memory the documents in memory hold, estimated (see [`crate::core::footprint`]).
    pub loaded_bytes: usize,
}

/// A local change could not be made; nothing was written.
#[derive(Debug)]
pub enum ChangeError<E> {
    /// The change function failed.
    Refused(E),
    /// The document could not be read from the store.
    Core(CoreError),
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

impl LocalWrite<()> {
    /// No change was made; the document is at `heads`.
    fn nothing(heads: Vec<ChangeHash>) -> Self {
        LocalWrite {
            value: (),
            hash: None,
            heads,
            persist_token: None,
        }
    }

    /// The same write, returning `value`.
    pub fn with<R>(self, value: R) -> LocalWrite<R> {
        LocalWrite {
            value,
            hash: self.hash,
            heads: self.heads,
            persist_token: self.persist_token,
        }
    }
}

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
    /// The persist batch being filled and those not yet durable (see `batch`).
    batches: batch::Batches,
    /// Acks owed for changes received with missing dependencies (Automerge holds them
    /// back): a change is acknowledged only once it is applied, so that the acknowledging
    /// node can rebuild it from its own storage. Moved to `batch_acks` when it applies.
    deferred_acks: batch::AckWork,
    /// Changes of failed persist batches, waiting to be written again (see `persist`).
    retry: persist::Retry,
    /// Which peer each want-ack or repaired change came from, to route acks back.
    ack_routes: Memory<String>,
    /// Whose acks of each change this node has relayed: each at most once, so acks end
    /// even where routes form a loop (routes are forgotten across restarts).
    relayed: Memory<Vec<String>>,
    /// Local changes whose writer waits for acks, with their document.
    awaited: Memory<String>,
    last_anti_entropy: u64,
    /// Periodic reconciliations so far: whose turn it is (see `repair::peer_in_turn`).
    anti_entropy_turn: usize,
    /// The latest `now` given to any input (for work done in `flush`).
    now: u64,
    gate: SyncGate,
    clients: Clients,
    /// Documents named by a message over the size limit (each is logged once).
    refused_docs: BTreeSet<String>,
    /// Work waiting for its document to be read, per document in arrival order.
    parked: HashMap<String, Vec<reads::Parked>>,
    /// Heavy work lent out ([`Effect::Apply`]): until the driver takes it, the job; then
    /// `None` until it is back (see `lending`).
    jobs: HashMap<String, Option<super::lend::Job>>,
    /// Documents stored here but replicated elsewhere, on their way there (see `handoff`).
    handoff: handoff::Handoffs,
    /// Peers following documents this node replicates, by document (see `follow`).
    remote_followers: HashMap<String, BTreeSet<String>>,
    /// Documents this node follows at their replicas, with the replicas asked.
    following: BTreeMap<String, BTreeSet<String>>,
    /// Documents watched here (change notifications: `watch`, `Node::subscribe`).
    watched: BTreeSet<String>,
    stats: CoreStats,
}

impl Replica {
    /// A replica for node `id`. `actor_seed` makes the Automerge actor id of this run's
    /// local changes: its last 8 bytes must be fresh for every start of the node (random
    /// bytes in production, seeded in a simulation), so a restarted node never reuses a
    /// sequence number of a change it lost before persisting; its first 8 are replaced by
    /// [`crate::history::actor_prefix`] of `id`.
    pub fn new(
        id: impl Into<String>,
        actor_seed: [u8; 16],
        router: Box<dyn Router>,
        config: CoreConfig,
    ) -> Self {
        let id = id.into();
        // The node's changes tell where they came from (see `crate::history`).
        let mut actor_seed = actor_seed;
        actor_seed[..8].copy_from_slice(&crate::history::actor_prefix(&id));
        let ack_memory = config.ack_memory;
        let budget = Budget {
            docs: config.cache_docs,
            bytes: config.cache_bytes,
        };
        let mut replica = Replica {
            id,
            docs: Docs::new(ActorId::from(actor_seed), budget),
            peers: BTreeMap::new(),
            connected: Vec::new(),
            router,
            config,
            effects: Vec::new(),
            dirty: BTreeSet::new(),
            batches: batch::Batches::default(),
            deferred_acks: BTreeMap::new(),
            retry: persist::Retry::default(),
            ack_routes: Memory::new(ack_memory),
            relayed: Memory::new(ack_memory),
            awaited: Memory::new(ack_memory),
            last_anti_entropy: 0,
            anti_entropy_turn: 0,
            now: 0,
            gate: SyncGate::default(),
            clients: Clients::default(),
            refused_docs: BTreeSet::new(),
            parked: HashMap::new(),
            jobs: HashMap::new(),
            handoff: handoff::Handoffs::default(),
            remote_followers: HashMap::new(),
            following: BTreeMap::new(),
            watched: BTreeSet::new(),
            stats: CoreStats::default(),
        };
        replica.refresh_held();
        replica
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Replaces the router (for example when the topology's live links change).
    pub fn set_router(&mut self, router: Box<dyn Router>) {
        self.router = router;
        self.refresh_held();
    }

    /// Backs the replica with a store: `index` lists every stored document with its
    /// heads (read at start-up, without loading documents). From now on a stored document
    /// not in memory is asked for with [`Effect::Read`] when first needed, and the least
    /// recently used ones are dropped past the cache budget.
    pub fn set_store(&mut self, index: StoredIndex) {
        self.docs.index_stored(index);
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
        self.docs.insert(loaded);
    }

    /// Runs `f` as one Automerge transaction on `doc` (created if new). On `Err` the
    /// transaction is rolled back and nothing changes. A stored document must be in
    /// memory ([`Replica::prepare`] first; else [`CoreError::NotRead`] and `f` is not run). A change is pushed to peers and
    /// queued for persistence; it is durable once the returned token is persisted.
    pub fn local_change<R, E>(
        &mut self,
        now: u64,
        doc: &str,
        want_ack: bool,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
    ) -> Result<LocalWrite<R>, ChangeError<E>> {
        self.now = self.now.max(now);
        // Keep the causal order simple: pending remote changes go in first.
        self.apply_doc(doc);
        let state = self.docs.get_or_create(doc).map_err(ChangeError::Core)?;
        match lend::transact(&mut state.doc, f) {
            Ok((value, made)) => Ok(self.committed(now, doc, made, want_ack).with(value)),
            Err(e) => {
                self.docs.remove_if_empty(doc);
                Err(ChangeError::Refused(e))
            }
        }
    }

    /// After a transaction on `doc` in memory: its change (if any) is pushed, queued for
    /// persistence and, with `want_ack`, awaited.
    fn committed(
        &mut self,
        now: u64,
        doc: &str,
        made: Option<Made>,
        want_ack: bool,
    ) -> LocalWrite<()> {
        let Some(state) = self.docs.peek_mut(doc) else {
            return LocalWrite::nothing(Vec::new());
        };
        let heads = state.doc.get_heads();
        let Some(Made { hash, bytes }) = made else {
            self.docs.remove_if_empty(doc);
            return LocalWrite::nothing(heads);
        };
        state.last_change_ms = now;
        self.docs.refresh(doc);
        self.stats.local_changes += 1;
        if want_ack {
            self.awaited.insert(hash, doc.to_string());
        }
        let me = self.id.clone();
        self.accept_new(doc, &me, None, want_ack, vec![bytes]);
        self.notify(doc.to_string(), heads.clone());
        LocalWrite {
            value: (),
            hash: Some(hash),
            heads,
            persist_token: Some(self.batches.token()),
        }
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
        self.now = self.now.max(now);
        self.apply_doc(doc);
        let state = self.docs.get_or_create(doc)?;
        let merged = lend::merge_into(doc, state, data);
        self.merged(now, doc, merged, false)
            .map(|w| (w.value, w.persist_token))
    }

    /// After a merge into `doc` in memory: its new changes are pushed and queued for
    /// persistence; with `want_ack`, the acknowledgements of the last new change are
    /// awaited (its `hash`: a change function's single change merged at a replica, see
    /// [`crate::wire::ForwardRequest::Merge`]). The value is the number of new changes.
    fn merged(
        &mut self,
        now: u64,
        doc: &str,
        merged: Result<Merged, CoreError>,
        want_ack: bool,
    ) -> Result<LocalWrite<usize>, CoreError> {
        let nothing = |heads| LocalWrite {
            value: 0,
            hash: None,
            heads,
            persist_token: None,
        };
        let bytes = match merged {
            Ok(m) if !m.bytes.is_empty() => m.bytes,
            other => {
                self.docs.remove_if_empty(doc);
                let heads = self.docs.heads(doc).unwrap_or_default();
                return other.map(|_| nothing(heads));
            }
        };
        let Some(state) = self.docs.peek_mut(doc) else {
            return Ok(nothing(Vec::new()));
        };
        state.last_change_ms = now;
        let heads = state.doc.get_heads();
        let count = bytes.len();
        self.docs.refresh(doc);
        // Bytes this replica encoded from a change it holds: they parse.
        let hash = bytes
            .last()
            .and_then(|b| automerge::Change::try_from(b.as_slice()).ok())
            .map(|c| c.hash())
            .filter(|_| want_ack);
        if let Some(hash) = hash {
            self.awaited.insert(hash, doc.to_string());
        }
        let me = self.id.clone();
        self.accept_new(doc, &me, None, want_ack, bytes);
        self.notify(doc.to_string(), heads.clone());
        Ok(LocalWrite {
            value: count,
            hash,
            heads,
            persist_token: Some(self.batches.token()),
        })
    }

    /// A link to `peer` is up: it becomes a push target, and the node of the two with the
    /// smaller id opens a reconciliation (see `repair`).
    pub fn peer_up(&mut self, now: u64, peer: &str) {
        self.now = self.now.max(now);
        self.peers.insert(peer.to_string(), Peer::new(now));
        self.refresh_connected();
        if self.opens_with(peer) {
            self.open_reconcile(peer);
        }
    }

    /// The link to `peer` is gone: its queue and sync sessions are dropped, repairs held
    /// for an answer from it go ahead, and every other peer is reconciled with at once
    /// (the lost peer may have pushed its last changes to some nodes and not to others).
    pub fn peer_down(&mut self, now: u64, peer: &str) {
        self.peers.remove(peer);
        for p in self.peers.values_mut() {
            p.needs_reconcile = true;
        }
        self.follows_peer_down(peer);
        self.refresh_connected();
        for doc in self.gate.peer_down(peer) {
            self.release_held(now, &doc);
        }
    }

    /// A message for `peer` could not be queued (its link's queue was full): counted by
    /// kind; acknowledgements are sent again `retry_ms` later, and anything else is left
    /// to the reconciliation that opens then.
    pub fn send_failed(&mut self, peer: &str, unsent: Unsent) {
        *self.stats.sends_dropped.entry(unsent.kind).or_default() += 1;
        let push = unsent.kind == "push";
        if push {
            self.stats.pushes_dropped += 1;
        }
        if let Some(p) = self.peers.get_mut(peer) {
            if push {
                // The receipt it may have carried goes again.
                p.lag.receipt_lost();
                p.receipt_at
                    .get_or_insert(self.now.saturating_add(super::peers::ALONE_AFTER_MS));
            }
            if unsent.acks.is_empty() {
                p.needs_reconcile = true;
            } else {
                p.owe_acks(unsent.acks);
                p.owed_at
                    .get_or_insert(self.now.saturating_add(self.config.retry_ms));
            }
        }
    }

    /// A message for `peer` is over the wire's message limit and was not sent: counted by
    /// kind and logged, naming the documents (once per document at warning level; they
    /// stay behind on that peer until they shrink or the limit grows).
    pub fn send_refused(&mut self, peer: &str, unsent: Unsent, len: usize, docs: Vec<String>) {
        *self.stats.sends_refused.entry(unsent.kind).or_default() += 1;
        for doc in docs {
            if self.refused_docs.insert(doc.clone()) {
                tracing::warn!(
                    peer,
                    doc,
                    kind = unsent.kind,
                    bytes = len,
                    limit = crate::wire::MAX_MESSAGE,
                    "a message is over the size limit and cannot be sent; the document does \
                     not replicate to this peer"
                );
            } else {
                tracing::debug!(peer, doc, bytes = len, "message over the size limit again");
            }
        }
        self.stats.refused_docs = self.refused_docs.len() as u64;
    }

    /// The persist batch `token` is durable: acknowledge it to the peers waiting for it
    /// (and write what failed before at once: storage works).
    pub fn persisted(&mut self, token: u64) {
        let (was_in_flight, work) = self.batches.durable(token);
        if was_in_flight {
            // Storage works: what failed before is written at the next timeout (now).
            self.retry.soon();
        }
        // Changes taken unloaded are in the store once their batch is: forget them here,
        // when durability changes, rather than on every message (not those of a document
        // with changes of a failed batch still to write).
        let (batches, retry) = (&self.batches, &self.retry);
        self.docs
            .settle_unsaved(|t| batches.is_durable(t), |doc| retry.holds(doc));
        let Some(work) = work else {
            return;
        };
        let mut by_peer: BTreeMap<String, Vec<Ack>> = BTreeMap::new();
        for ((peer, doc), hashes) in work {
            if self.peers.contains_key(&peer) {
                self.stats.acks_sent += 1;
                by_peer.entry(peer).or_default().push(Ack {
                    doc,
                    by: self.id.clone(),
                    hashes,
                });
            }
        }
        for (peer, acks) in by_peer {
            self.send_acks(&peer, acks);
        }
    }

    /// Handles one message from a connected peer.
    pub fn handle_message(&mut self, now: u64, from: &str, msg: Message) {
        self.now = self.now.max(now);
        if !self.peers.contains_key(from) {
            self.stats.unexpected_messages += 1;
            return;
        }
        match msg {
            Message::Push {
                groups,
                receipt,
                fingerprints,
            } => {
                if let Some(p) = self.peers.get_mut(from) {
                    if let Some((changes, bytes)) = receipt {
                        p.lag.confirm(changes, bytes);
                    }
                    let (changes, bytes) = super::peers::push_totals(&groups);
                    if changes > 0 {
                        p.lag.received(changes, bytes);
                        p.receipt_at
                            .get_or_insert(now.saturating_add(super::peers::ALONE_AFTER_MS));
                    }
                }
                for g in groups {
                    self.receive_push(now, from, g.doc, g.origin, g.want_ack, g.changes);
                }
                self.receive_riding(now, from, fingerprints);
            }
            Message::Ack(acks) => self.receive_acks(from, acks),
            Message::Fingerprints(f) => self.receive_fingerprints(from, f),
            Message::Items(buckets) => self.receive_items(now, from, buckets),
            Message::Want(wants) => self.receive_wants(now, from, wants),
            Message::Sync { doc, data } => self.receive_sync(now, from, &doc, &data),
            Message::Ephemeral(e) => self.receive_ephemeral(from, e),
            Message::Handoff { docs, leaving } => self.receive_handoff(from, docs, leaving),
            Message::HandedOff(docs) => self.receive_handed_off(docs),
            Message::Follow { docs, follow } => self.receive_follow(from, docs, follow),
            Message::Receipt { changes, bytes } => {
                if let Some(p) = self.peers.get_mut(from) {
                    p.lag.confirm(changes, bytes);
                }
            }
            // The handshake is the transport's; the topology, revocations, cluster view and
            // forwarded requests the driver's.
            Message::Hello(_)
            | Message::Forward(_)
            | Message::Reply(_)
            | Message::Topology(_)
            | Message::Revocations(_)
            | Message::ClusterAsk { .. }
            | Message::ClusterTell { .. } => self.stats.unexpected_messages += 1,
        }
        self.evict();
    }

    /// Applies pending remote changes (one Automerge call per document), emits the persist
    /// batch and drains every peer's queue into messages.
    pub fn flush(&mut self) {
        for doc in std::mem::take(&mut self.dirty) {
            self.apply_doc(&doc);
        }
        self.serve_clients();
        self.sync_follows();
        self.settle_acks();
        if let Some((token, docs)) = self.batches.seal() {
            let docs = docs
                .into_iter()
                .map(|(doc, changes)| {
                    // A document with changes in the batch is pinned in memory (or lent).
                    let heads = self.docs.persist_heads(&doc);
                    let heads = heads.iter().map(|h| h.0).collect();
                    DocAppend {
                        doc,
                        changes,
                        heads,
                    }
                })
                .collect();
            self.effects.push(Effect::Persist { token, docs });
        }
        self.pump_wants();
        self.ride(self.now);
        let (now, budget) = (self.now, self.config.batch_bytes);
        for (id, peer) in self.peers.iter_mut() {
            for msg in peer.drain_pushes(now, budget) {
                self.effects.push(Effect::Send {
                    to: id.clone(),
                    msg,
                });
            }
        }
        self.evict();
    }

    /// Takes the effects produced so far, in order.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The document if it is in memory (see [`Replica::load`]).
    pub fn doc(&self, id: &str) -> Option<&Automerge> {
        self.docs.peek(id).map(|d| &d.doc)
    }

    /// The document with its pending changes applied; `None` if this node does not have
    /// it. A stored document not in memory is [`CoreError::NotRead`]: [`Replica::prepare`]
    /// it first.
    pub fn load(&mut self, id: &str) -> Result<Option<&Automerge>, CoreError> {
        self.apply_doc(id);
        if self.docs.heads(id).is_none() {
            return Err(CoreError::NotRead {
                doc: id.to_string(),
            });
        }
        Ok(self.docs.get(id).map(|d| &d.doc))
    }

    /// Every document in memory with its heads, in id order: for a replica without a
    /// store, every document it has. (A node lists its stored documents from the store,
    /// see `Node::docs`.)
    pub fn heads(&self) -> Vec<(String, Vec<ChangeHash>)> {
        let mut all: Vec<(String, Vec<ChangeHash>)> = self
            .docs
            .loaded()
            .map(|(id, d)| (id.clone(), d.doc.get_heads()))
            .filter(|(_, heads)| !heads.is_empty())
            .collect();
        all.sort();
        all
    }

    /// Number of documents this node has.
    pub fn doc_count(&self) -> usize {
        self.docs.len()
    }

    /// Documents stored and in memory.
    pub fn doc_counts(&self) -> DocCounts {
        DocCounts {
            stored: self.docs.len(),
            loaded: self.docs.loaded_len(),
            loaded_bytes: self.docs.loaded_bytes(),
        }
    }

    /// A fingerprint of every (document, heads) pair this node has: equal on two nodes
    /// exactly when they hold the same heads of the same documents (up to a 2^-64 chance).
    pub fn fingerprint(&self) -> u64 {
        self.docs.index().root()
    }

    /// A snapshot for compaction: the saved document and the changes it cannot contain
    /// (received, but waiting for dependencies); `None` if the document is not in memory.
    pub fn snapshot(&mut self, id: &str) -> Option<Snapshot> {
        self.apply_doc(id);
        self.docs.peek(id).map(|d| (d.doc.save(), d.orphan_bytes()))
    }

    /// Connected peers, in id order.
    pub fn connected(&self) -> &[String] {
        &self.connected
    }

    /// Bytes of changes queued for `peer`, if connected.
    pub fn queued_bytes(&self, peer: &str) -> Option<usize> {
        self.peers.get(peer).map(|p| p.outbox_bytes())
    }

    /// The replication lag of the link to `peer`, if it is connected.
    pub fn peer_lag(&self, peer: &str) -> Option<super::LagView> {
        self.peers.get(peer).map(|p| p.lag.view(self.now))
    }

    /// Opens a reconciliation with `peer` now, whichever side usually opens (a node being
    /// removed uses it to hand everything over): the peer answers only where the two differ.
    pub fn reconcile_now(&mut self, peer: &str) {
        if self.peers.contains_key(peer) {
            self.open_reconcile(peer);
        }
    }

    /// A number that moves whenever writes or repairs happen (cheaper than
    /// [`Replica::stats`], for a driver deciding whether to look again).
    pub fn activity(&self) -> u64 {
        let s = &self.stats;
        s.local_changes + s.client_changes + s.wants_sent + s.repairs
    }

    /// Counters.
    pub fn stats(&self) -> CoreStats {
        let cache = self.docs.stats;
        CoreStats {
            doc_loads: cache.loads,
            doc_evictions: cache.evictions,
            doc_load_errors: cache.load_errors,
            ..self.stats.clone()
        }
    }

    /// Drops documents past the cache budget, keeping those with changes not yet durable.
    fn evict(&mut self) {
        let (batches, retry) = (&self.batches, &self.retry);
        self.docs
            .evict(|id, d| d.has_orphans() || retry.holds(id) || batches.pins(d.persist_token));
    }

    fn refresh_connected(&mut self) {
        self.connected = self.peers.keys().cloned().collect();
    }

    /// Applies a document's pending changes, persisting the ones Automerge accepted.
    fn apply_doc(&mut self, doc: &str) {
        let Some(state) = self.docs.peek_mut(doc) else {
            return;
        };
        if !state.has_pending() {
            return;
        }
        self.stats.apply_batches += 1;
        let applied = state.apply_pending();
        if applied.changed {
            let heads = state.doc.get_heads();
            self.docs.refresh(doc);
            self.notify(doc.to_string(), heads);
        }
        self.docs.resize(doc);
        if !applied.extra.is_empty() {
            let me = self.id.clone();
            self.accept_new(doc, &me, None, false, applied.extra);
        }
        if !applied.rejected.is_empty() {
            self.stats.bad_changes += applied.rejected.len() as u64;
            self.unaccept(doc, &applied.rejected);
        }
    }
}
