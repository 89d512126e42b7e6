//! The documents of one replica: an index of every document it has (id → digest of its
//! heads, kept in the reconciliation tree) and a bounded cache of loaded Automerge
//! documents, each with the remote changes waiting to be applied in one batch and the
//! changes Automerge holds back because their dependencies have not arrived yet.
//!
//! A document not in memory is never read here: the core asks its driver to read it
//! (`Residency::Reading`, then [`crate::core::Effect::Read`]) and goes on with other work
//! until [`Docs::read_done`] brings it. The cache has a budget by count and by bytes (the
//! memory a document holds, estimated by [`super::footprint`] from lengths: measured where
//! a document is decoded, and kept up to date as changes are applied); past it, the least
//! recently used documents are dropped, except pinned ones: those with changes not yet
//! durable, pending or held back.
//! A dropped document is exactly what the store holds, so reading it again gives the same
//! heads.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};

use super::reconcile::{Bulk, Index};
use super::{CoreError, Fetched, Lent, LoadedDoc, ReadKind, StoredLog};
use crate::wire::heads_digest;

/// A store's list of documents and their heads, gathered at start-up for
/// [`super::Replica::set_store`]. Adding is cheap; the replica's index is then built in one
/// pass (about 0.25 s for 1,000,000 documents, against 0.9 s one by one).
#[derive(Default)]
pub struct StoredIndex {
    bulk: Bulk,
}

impl StoredIndex {
    /// An empty list.
    pub fn new() -> Self {
        StoredIndex::default()
    }

    /// Adds a stored document with its heads (a document without heads holds nothing and is
    /// left out). A later add of the same document replaces an earlier one.
    pub fn add(&mut self, doc: &str, heads: &[[u8; 32]]) {
        if !heads.is_empty() {
            self.bulk.add(doc, heads_digest(heads));
        }
    }

    /// Documents added (those without heads not counted).
    pub fn len(&self) -> usize {
        self.bulk.len()
    }

    /// True if no document was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`DocState::apply_pending`] did.
#[derive(Default)]
pub(crate) struct Applied {
    /// The heads changed.
    pub(crate) changed: bool,
    /// Changes Automerge applied besides the pending ones: changes it had queued (they
    /// arrived through the sync protocol before their dependencies) and that were never
    /// accepted, so the caller must persist and forward them now.
    pub(crate) extra: Vec<Vec<u8>>,
    /// Pending changes Automerge refused (encoded): they must not be persisted or pushed.
    pub(crate) rejected: Vec<Vec<u8>>,
}

/// One document and its replication bookkeeping.
pub(crate) struct DocState {
    pub(crate) doc: Automerge,
    /// Remote changes accepted but not yet applied (applied together by `apply_pending`).
    pending: Vec<Change>,
    pending_hashes: HashSet<ChangeHash>,
    /// Changes received whose dependencies are missing (Automerge holds them back). They
    /// are tracked here for deduplication, and compaction keeps them next to the snapshot
    /// explicitly rather than relying on `save()` to include Automerge's queue.
    orphans: HashMap<ChangeHash, Vec<u8>>,
    /// When the document last changed (for anti-entropy: busy documents wait).
    pub(crate) last_change_ms: u64,
    /// The persist batch that last took changes of this document (0: none this run).
    pub(crate) persist_token: u64,
    /// Bytes of Automerge data the document was built from, uncompressed (its stored data
    /// when loaded, plus the changes accepted since).
    data: usize,
    /// The memory it holds, estimated from `data` and its stats when last measured (what
    /// the cache counts).
    size: usize,
    /// Position in the cache's use order.
    stamp: u64,
}

impl DocState {
    fn new(doc: Automerge) -> Self {
        DocState {
            doc,
            pending: Vec::new(),
            pending_hashes: HashSet::new(),
            orphans: HashMap::new(),
            last_change_ms: 0,
            persist_token: 0,
            data: 0,
            size: 0,
            stamp: 0,
        }
    }

    /// The memory it holds, as the cache counts it (see `size`).
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// True if the change is applied, queued in Automerge, or pending here.
    pub(crate) fn has(&self, hash: &ChangeHash) -> bool {
        self.pending_hashes.contains(hash)
            || self.orphans.contains_key(hash)
            || self.doc.get_change_meta_by_hash(hash).is_some()
    }

    /// Accepts a remote change for the next batch; false if already known.
    pub(crate) fn push_pending(&mut self, change: Change) -> bool {
        let hash = change.hash();
        if self.has(&hash) {
            return false;
        }
        self.pending_hashes.insert(hash);
        self.pending.push(change);
        true
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Applies every pending change in one Automerge call. If Automerge refuses the batch
    /// (a change reuses an actor's sequence number), applies them one by one instead and
    /// reports the refused ones, so one bad change does not drop the good ones with it.
    pub(crate) fn apply_pending(&mut self) -> Applied {
        let mut applied = Applied::default();
        if self.pending.is_empty() {
            return applied;
        }
        let before = self.doc.get_heads();
        let queued_before = !self.doc.get_missing_deps(&[]).is_empty();
        let pending = std::mem::take(&mut self.pending);
        let mut accepted = std::mem::take(&mut self.pending_hashes);
        if self.doc.apply_changes(pending.iter().cloned()).is_err() {
            for change in &pending {
                if self.doc.apply_changes([change.clone()]).is_err() {
                    accepted.remove(&change.hash());
                    applied.rejected.push(change.raw_bytes().to_vec());
                }
            }
        }
        applied.changed = self.doc.get_heads() != before;
        if applied.changed && queued_before {
            applied.extra = self.unaccepted_since(&before, &accepted);
        }
        self.track_orphans(
            pending
                .into_iter()
                .filter(|c| accepted.contains(&c.hash()))
                .collect(),
        );
        applied
    }

    /// Changes applied since `before` that are neither in `accepted` nor tracked orphans
    /// (which were persisted when they arrived).
    pub(crate) fn unaccepted_since(
        &self,
        before: &[ChangeHash],
        accepted: &HashSet<ChangeHash>,
    ) -> Vec<Vec<u8>> {
        self.doc
            .get_changes(before)
            .iter()
            .filter(|c| !accepted.contains(&c.hash()) && !self.orphans.contains_key(&c.hash()))
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    /// After an apply: remember the changes Automerge queued, forget the ones it now has.
    pub(crate) fn track_orphans(&mut self, mut candidates: Vec<Change>) {
        if self.doc.get_missing_deps(&[]).is_empty() {
            self.orphans.clear();
            return;
        }
        for c in candidates.iter_mut() {
            self.orphans.insert(c.hash(), c.raw_bytes().to_vec());
        }
        let doc = &self.doc;
        self.orphans
            .retain(|h, _| doc.get_change_meta_by_hash(h).is_none());
    }

    /// Changes that a snapshot (`save()`) would not contain.
    pub(crate) fn orphan_bytes(&self) -> Vec<Vec<u8>> {
        self.orphans.values().cloned().collect()
    }

    /// Changes are held back waiting for their dependencies.
    pub(crate) fn has_orphans(&self) -> bool {
        !self.orphans.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.doc.get_heads().is_empty() && !self.has_pending() && self.orphans.is_empty()
    }
}

/// Budget of the document cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Documents in memory, at most (pinned ones excepted).
    pub(crate) docs: usize,
    /// Memory of the documents in memory, estimated, at most (pinned ones excepted).
    pub(crate) bytes: usize,
}

/// Counters of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheStats {
    pub(crate) loads: u64,
    pub(crate) evictions: u64,
    pub(crate) load_errors: u64,
}

/// Heads of documents not in memory remembered, at most (see `Docs::known`).
const KNOWN_HEADS: usize = 8_192;

/// What a piece of work needs of a document (see [`Docs::ready`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Its heads (a push that may extend them directly, a want to send).
    Heads,
    /// Its heads and stored change log (a peer's want, answered from the log).
    Log,
    /// The document itself, loaded into Automerge.
    Doc,
}

/// Whether a document can be worked on now (see [`Docs::ready`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Residency {
    /// What the work needs is here (in memory, known, or the document is new).
    Ready,
    /// A read from the store is under way; `Some(kind)` if this call started it (the
    /// caller asks its driver for the read).
    Reading(Option<ReadKind>),
}

/// Changes accepted for a document that is not in memory, not yet durable.
struct Unsaved {
    heads: Vec<ChangeHash>,
    changes: Vec<Change>,
    /// The persist batch that took the last of them.
    token: u64,
}

/// Whether every dependency of `changes` is among them: applied to an empty document, they
/// leave nothing waiting. For a document's [`Unsaved`] changes that means the document was
/// empty when they came: a change without dependencies is taken unloaded only into an
/// empty document (`history::fast_forward`), so those taken onto stored heads depend on them.
fn self_contained(changes: &[Change]) -> bool {
    let hashes: HashSet<ChangeHash> = changes.iter().map(|c| c.hash()).collect();
    changes
        .iter()
        .all(|c| c.deps().iter().all(|d| hashes.contains(d)))
}

/// What [`Docs::append_unloaded`] took: the indexes of the new changes, and the heads.
pub(crate) type Appended = (Vec<usize>, Vec<ChangeHash>);

/// Every document of a replica: the index of all, and the loaded ones.
pub(crate) struct Docs {
    /// The actor of the changes made here: `base`, then `base` followed by the number of
    /// documents forgotten so far (see [`Docs::forget`]).
    actor: ActorId,
    base: ActorId,
    forgotten: u64,
    loaded: HashMap<String, DocState>,
    /// Use order of loaded documents: stamp → id (oldest first).
    order: BTreeMap<u64, String>,
    clock: u64,
    bytes: usize,
    index: Index,
    /// Documents not in memory are in a store (read through the driver): only then are
    /// documents dropped from memory.
    stored: bool,
    /// Stored documents whose read is under way, and what is read.
    reading: HashMap<String, ReadKind>,
    /// Documents lent out of memory (see `lend`), with their heads when lent: work on them
    /// waits as for a read, and changes of theirs accepted before are persisted with these
    /// heads (nothing of theirs is accepted while they are out).
    lent: HashMap<String, Vec<ChangeHash>>,
    /// Changes accepted without loading their document, until durable.
    unsaved: HashMap<String, Unsaved>,
    /// The documents of `unsaved` by the persist batch that took their last changes, so
    /// that a batch made durable settles its own documents without a look at all the others
    /// ([`Docs::settle_unsaved`]; a catching-up node may hold 100,000). Entries of documents
    /// since batched again, loaded or settled are stale and skipped.
    settling: BTreeMap<u64, HashSet<String>>,
    /// A stored log read for the work resumed now (see [`Docs::read_done`]).
    fetched: Option<(String, StoredLog)>,
    /// Heads of documents not in memory learnt lately (from a log read, or changes taken
    /// unloaded that became durable), so that a push or a want soon after needs no read:
    /// a catching-up node reads a document once to ask for it and takes the answer without
    /// reading it again. Exact: a document's heads change only through this replica, which
    /// forgets the entry when it takes changes unloaded or loads the document. At most
    /// [`KNOWN_HEADS`]: when full, it starts again empty.
    known: HashMap<String, Vec<ChangeHash>>,
    budget: Budget,
    pub(crate) stats: CacheStats,
}

impl Docs {
    pub(crate) fn new(actor: ActorId, budget: Budget) -> Self {
        Docs {
            base: actor.clone(),
            forgotten: 0,
            actor,
            loaded: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            bytes: 0,
            index: Index::new(),
            stored: false,
            reading: HashMap::new(),
            lent: HashMap::new(),
            unsaved: HashMap::new(),
            settling: BTreeMap::new(),
            fetched: None,
            known: HashMap::new(),
            budget,
            stats: CacheStats::default(),
        }
    }

    /// Records stored documents' heads without loading them (start-up); from now on a
    /// document not in memory is read from the store when first needed, and the least
    /// recently used ones are dropped past the budget.
    pub(crate) fn index_stored(&mut self, stored: StoredIndex) {
        self.stored = true;
        self.index.extend(stored.bulk);
    }

    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    /// Whether work that needs `need` of `id` can run now. Otherwise a read is under way
    /// (started by this call if none was: `Reading(Some(kind))`, the caller asks its driver
    /// for it).
    pub(crate) fn ready(&mut self, id: &str, need: Need) -> Residency {
        if self.loaded.contains_key(id) {
            return Residency::Ready;
        }
        if self.reading.contains_key(id) || self.lent.contains_key(id) {
            return Residency::Reading(None);
        }
        let fetched = self.fetched.as_ref().is_some_and(|(f, _)| f == id);
        let known = match need {
            Need::Heads => fetched || self.unsaved.contains_key(id) || self.known.contains_key(id),
            Need::Log => fetched,
            Need::Doc => false,
        };
        if known || !self.stored || self.index.get(id).is_none() {
            return Residency::Ready;
        }
        if need == Need::Doc
            && self
                .unsaved
                .get(id)
                .is_some_and(|u| self_contained(&u.changes))
        {
            // New here, and every change of it taken unloaded (their batch is not durable
            // yet, or the store has them and nothing else): they are the whole document.
            self.join(id, LoadedDoc::empty(id));
            return Residency::Ready;
        }
        let kind = match need {
            Need::Doc => ReadKind::Doc,
            Need::Heads | Need::Log => ReadKind::Log,
        };
        self.reading.insert(id.to_string(), kind);
        Residency::Reading(Some(kind))
    }

    /// The documents in memory (any order).
    pub(crate) fn loaded(&self) -> impl Iterator<Item = (&String, &DocState)> {
        self.loaded.iter()
    }

    /// Reads under way.
    pub(crate) fn reading_len(&self) -> usize {
        self.reading.len()
    }

    /// True if this replica has `id`: in memory, stored, read, lent out or taken unloaded.
    pub(crate) fn has_doc(&self, id: &str) -> bool {
        self.loaded.contains_key(id)
            || self.reading.contains_key(id)
            || self.lent.contains_key(id)
            || self.unsaved.contains_key(id)
            || self.index.get(id).is_some()
    }

    /// True if `id`'s read is under way.
    pub(crate) fn is_reading(&self, id: &str) -> bool {
        self.reading.contains_key(id)
    }

    /// The read of `id` ended. A document joins the cache, with the changes accepted
    /// unloaded since (the store may not have them yet); a stored log is kept for the work
    /// resumed now, until [`Docs::forget_fetched`]. `None`: the store does not have it.
    /// True if the document loaded to other heads than the index had: changes it stored
    /// waiting for dependencies now apply (their dependencies were taken while it was not
    /// in memory, see [`Docs::append_unloaded`]), and its store records stale heads.
    pub(crate) fn read_done(&mut self, id: &str, result: Result<Fetched, CoreError>) -> bool {
        if self.reading.remove(id).is_none() || self.loaded.contains_key(id) {
            return false;
        }
        match result {
            Ok(Fetched::Doc(Some(loaded))) => return self.join(id, *loaded),
            Ok(Fetched::Log(Some(log))) => {
                if !self.unsaved.contains_key(id) {
                    self.learn(id, log.heads.clone());
                }
                self.fetched = Some((id.to_string(), log));
            }
            Ok(Fetched::Doc(None) | Fetched::Log(None)) => {
                if !self.unsaved.contains_key(id) {
                    self.index.remove(id);
                }
            }
            Err(_) => self.stats.load_errors += 1,
        }
        false
    }

    /// `loaded` joins the cache with the changes accepted unloaded since (the store may
    /// not have them yet). True if that gave it other heads than the index had (see
    /// [`Docs::read_done`]).
    fn join(&mut self, id: &str, loaded: LoadedDoc) -> bool {
        self.stats.loads += 1;
        let LoadedDoc {
            mut doc,
            changes,
            mut data,
            ..
        } = loaded;
        let mut persist_token = 0;
        if let Some(u) = self.unsaved.remove(id) {
            // Accepted while unloaded: a change the store already has is a no-op.
            data += u.changes.iter().map(|c| c.raw_bytes().len()).sum::<usize>();
            if doc.apply_changes(u.changes).is_err() {
                self.stats.load_errors += 1;
                return false;
            }
            persist_token = u.token;
        }
        let mut state = DocState::new(doc.with_actor(self.actor.clone()));
        state.track_orphans(changes);
        state.data = data;
        state.persist_token = persist_token;
        self.insert_state(id.to_string(), state);
        self.resize(id);
        let before = self.index.get(id);
        self.refresh(id);
        self.index.get(id) != before
    }

    /// Takes the document in memory out of the cache until [`Docs::give_back`]; meanwhile
    /// it is not ready for any work (see `lend`).
    pub(crate) fn lend(&mut self, id: &str) -> Option<DocState> {
        let state = self.loaded.remove(id)?;
        self.order.remove(&state.stamp);
        self.bytes -= state.size;
        self.lent.insert(id.to_string(), state.doc.get_heads());
        Some(state)
    }

    /// The heads to persist with the document's changes in the batch being sealed: as in
    /// [`Docs::heads`], or for a lent document its heads when lent.
    pub(crate) fn persist_heads(&self, id: &str) -> Vec<ChangeHash> {
        match self.lent.get(id) {
            Some(heads) => heads.clone(),
            None => self.heads(id).unwrap_or_default(),
        }
    }

    /// A lent document comes back into the cache (as the most recently used); its id.
    pub(crate) fn give_back(&mut self, lent: Lent) -> String {
        let Lent { id, state } = lent;
        let state = *state;
        self.lent.remove(&id);
        let size = state.size;
        self.insert_state(id.clone(), state);
        self.bytes += size;
        self.resize(&id);
        self.refresh(&id);
        id
    }

    /// Drops the stored log kept by [`Docs::read_done`].
    pub(crate) fn forget_fetched(&mut self) {
        self.fetched = None;
    }

    /// The loaded document, without changing the use order.
    pub(crate) fn peek(&self, id: &str) -> Option<&DocState> {
        self.loaded.get(id)
    }

    /// The loaded document, mutably, without changing the use order.
    pub(crate) fn peek_mut(&mut self, id: &str) -> Option<&mut DocState> {
        self.loaded.get_mut(id)
    }

    /// The document if it is in memory (marked as used).
    pub(crate) fn get(&mut self, id: &str) -> Option<&mut DocState> {
        self.touch(id);
        self.loaded.get_mut(id)
    }

    /// The document in memory, or created empty if this node does not have it. A stored
    /// document not in memory is an error: it must be read first (see `residency`).
    pub(crate) fn get_or_create(&mut self, id: &str) -> Result<&mut DocState, CoreError> {
        if !self.loaded.contains_key(id) {
            if self.reading.contains_key(id)
                || self.lent.contains_key(id)
                || self.unsaved.contains_key(id)
                || (self.stored && self.index.get(id).is_some())
            {
                return Err(CoreError::NotRead {
                    doc: id.to_string(),
                });
            }
            let doc = Automerge::new().with_actor(self.actor.clone());
            self.insert_state(id.to_string(), DocState::new(doc));
        }
        self.touch(id);
        self.loaded.get_mut(id).ok_or_else(|| CoreError::NotRead {
            doc: id.to_string(),
        })
    }

    /// The document's heads if known without reading it: from memory, from changes
    /// accepted unloaded, from a log just read, or empty for a document this node does not
    /// have; `None` for a stored document not in memory.
    pub(crate) fn heads(&self, id: &str) -> Option<Vec<ChangeHash>> {
        if let Some(d) = self.loaded.get(id) {
            return Some(d.doc.get_heads());
        }
        if let Some(u) = self.unsaved.get(id) {
            return Some(u.heads.clone());
        }
        if let Some(heads) = self.known.get(id) {
            return Some(heads.clone());
        }
        match &self.fetched {
            Some((f, log)) if f == id => Some(log.heads.clone()),
            _ if self.reading.contains_key(id)
                || self.lent.contains_key(id)
                || self.index.get(id).is_some() =>
            {
                None
            }
            _ => Some(Vec::new()),
        }
    }

    /// Adds a decoded document (start-up without a store, or tests).
    pub(crate) fn insert(&mut self, loaded: LoadedDoc) {
        let LoadedDoc {
            id,
            doc,
            changes,
            data,
        } = loaded;
        let mut state = DocState::new(doc.with_actor(self.actor.clone()));
        state.track_orphans(changes);
        state.data = data;
        self.insert_state(id.clone(), state);
        self.resize(&id);
        self.refresh(&id);
    }

    /// Updates the index after the document's heads may have changed.
    pub(crate) fn refresh(&mut self, id: &str) {
        match self.loaded.get(id).map(|d| d.doc.get_heads()) {
            Some(heads) if !heads.is_empty() => {
                let raw: Vec<[u8; 32]> = heads.iter().map(|h| h.0).collect();
                self.index.set(id, heads_digest(&raw));
            }
            Some(_) => self.index.remove(id),
            None => {}
        }
    }

    /// Records that persist batch `token` takes `bytes` more of the document's changes (in
    /// the document, or pending for it).
    pub(crate) fn batched(&mut self, id: &str, token: u64, bytes: usize) {
        if let Some(d) = self.loaded.get_mut(id) {
            d.data += bytes;
            d.persist_token = token;
            self.resize(id);
        } else if let Some(u) = self.unsaved.get_mut(id) {
            u.token = token;
            self.settling
                .entry(token)
                .or_default()
                .insert(id.to_string());
        }
    }

    /// Measures again the memory the document holds (see [`super::footprint`]), after
    /// changes were applied to it. Cheap: lengths only.
    pub(crate) fn resize(&mut self, id: &str) {
        if let Some(d) = self.loaded.get_mut(id) {
            let size = super::footprint::estimate(d.data, &d.doc.stats());
            self.bytes = self.bytes - d.size + size;
            d.size = size;
        }
    }

    /// True if the document has the change (applied in memory, or accepted unloaded).
    pub(crate) fn has_change(&self, id: &str, hash: &ChangeHash) -> bool {
        match self.loaded.get(id) {
            Some(d) => d.doc.get_change_meta_by_hash(hash).is_some(),
            None => self
                .unsaved
                .get(id)
                .is_some_and(|u| u.changes.iter().any(|c| c.hash() == *hash)),
        }
    }

    /// Accepts changes of a document that is not in memory without loading it, if they
    /// extend its heads (known: see [`Need::Heads`]) directly (`history::fast_forward`).
    /// Returns the indexes of the changes that are new and the document's heads after
    /// them; `None`: load it instead.
    pub(crate) fn append_unloaded(&mut self, id: &str, changes: &[Change]) -> Option<Appended> {
        if self.loaded.contains_key(id) || !self.stored {
            return None;
        }
        let base = self.heads(id)?;
        let (heads, fresh) = super::history::fast_forward(&base, changes)?;
        if fresh.is_empty() {
            return Some((fresh, heads));
        }
        self.known.remove(id);
        let entry = self.unsaved.entry(id.to_string()).or_insert(Unsaved {
            heads: Vec::new(),
            changes: Vec::new(),
            token: 0,
        });
        entry.heads = heads.clone();
        entry
            .changes
            .extend(fresh.iter().map(|&i| changes[i].clone()));
        let raw: Vec<[u8; 32]> = heads.iter().map(|h| h.0).collect();
        self.index.set(id, heads_digest(&raw));
        Some((fresh, heads))
    }

    /// Forgets accepted unloaded changes once durable (the batch that took the last of them
    /// is `durable`), unless `held` (written again after a failed batch): the store has
    /// them then. A read under way may have missed them: they stay until it is done. Looks
    /// only at the documents of durable batches.
    pub(crate) fn settle_unsaved(
        &mut self,
        durable: impl Fn(u64) -> bool,
        held: impl Fn(&str) -> bool,
    ) {
        let tokens: Vec<u64> = self
            .settling
            .keys()
            .copied()
            .filter(|&t| durable(t))
            .collect();
        for token in tokens {
            let Some(docs) = self.settling.remove(&token) else {
                continue;
            };
            let mut keep = HashSet::new();
            for doc in docs {
                if self.unsaved.get(&doc).is_none_or(|u| u.token != token) {
                    continue; // stale
                }
                if self.reading.contains_key(&doc) || held(&doc) {
                    keep.insert(doc);
                } else if let Some(u) = self.unsaved.remove(&doc) {
                    // Durable: the store's heads now.
                    self.learn(&doc, u.heads);
                }
            }
            if !keep.is_empty() {
                self.settling.insert(token, keep);
            }
        }
    }

    /// Remembers the heads of a document not in memory (see `known`).
    fn learn(&mut self, id: &str, heads: Vec<ChangeHash>) {
        if self.known.len() >= KNOWN_HEADS && !self.known.contains_key(id) {
            self.known.clear();
        }
        self.known.insert(id.to_string(), heads);
    }

    /// The changes of a document not in memory after `after`, from the stored log just
    /// read (see [`Need::Log`]) and the changes accepted unloaded; `None` if that needs
    /// the document.
    pub(crate) fn stored_changes_after(
        &self,
        id: &str,
        after: &[ChangeHash],
    ) -> Option<Vec<Vec<u8>>> {
        if self.loaded.contains_key(id) {
            return None;
        }
        let (_, stored) = self.fetched.as_ref().filter(|(f, _)| f == id)?;
        let mut log = stored.changes.clone();
        if let Some(u) = self.unsaved.get(id) {
            log.extend(u.changes.iter().cloned());
        }
        let in_log: HashSet<ChangeHash> = log.iter().map(|c| c.hash()).collect();
        // Where they name a change the log does not hold, the walk cannot stop there.
        if !after.iter().all(|h| in_log.contains(h)) {
            return None;
        }
        let heads = self.heads(id)?;
        let list = super::history::changes_after(&log, &heads, after)?;
        // Nothing to send although the heads differ: the asker has what this node lacks
        // (changes held back here for a missing dependency look alike in a log). Only the
        // document tells; it asks back from there.
        if list.is_empty() && !same_heads(&heads, after) {
            return None;
        }
        Some(list.iter().map(|c| c.raw_bytes().to_vec()).collect())
    }

    /// Whether the document's changes are all durable: none accepted unloaded and not yet
    /// stored, and, in memory, none pending or pinned (`pinned`).
    pub(crate) fn is_settled(&self, id: &str, pinned: impl Fn(&DocState) -> bool) -> bool {
        !self.unsaved.contains_key(id)
            && !self.lent.contains_key(id)
            && self
                .loaded
                .get(id)
                .is_none_or(|d| !d.has_pending() && !pinned(d))
    }

    /// Forgets a document this replica hands off for good (see `replica::handoff`): out of
    /// memory and out of the index. Refused (false) while a read of it is under way, it is
    /// lent out, or it has changes not yet durable.
    pub(crate) fn forget(&mut self, id: &str, pinned: impl Fn(&DocState) -> bool) -> bool {
        if self.reading.contains_key(id)
            || self.lent.contains_key(id)
            || self.unsaved.contains_key(id)
            || self
                .loaded
                .get(id)
                .is_some_and(|d| d.has_pending() || pinned(d))
        {
            return false;
        }
        self.drop_loaded(id);
        self.known.remove(id);
        self.index.remove(id);
        // A change made here to this document later (a new hint) starts it afresh, with
        // no history: under the same actor it would reuse sequence numbers of the changes
        // handed off, and every replica would refuse it. Every document created or read
        // from now on takes a new actor (one in memory has every change of the current
        // actor to it, so it keeps its own).
        self.forgotten += 1;
        let mut actor = self.base.to_bytes().to_vec();
        actor.extend(self.forgotten.to_be_bytes());
        self.actor = ActorId::from(actor);
        true
    }

    /// Removes a document that holds nothing (a failed first write must not leave it).
    pub(crate) fn remove_if_empty(&mut self, id: &str) {
        if self.loaded.get(id).is_some_and(DocState::is_empty) {
            self.drop_loaded(id);
            self.index.remove(id);
        }
    }

    /// Drops least recently used documents until the cache is within its budget; documents
    /// for which `pinned` is true stay. Only with a store to read them back from.
    pub(crate) fn evict(&mut self, pinned: impl Fn(&str, &DocState) -> bool) {
        if !self.stored {
            return;
        }
        let mut kept = Vec::new();
        while self.loaded.len() > self.budget.docs || self.bytes > self.budget.bytes {
            let Some((stamp, id)) = self.order.pop_first() else {
                break;
            };
            match self.loaded.get(&id) {
                Some(state) if pinned(&id, state) || state.has_pending() => {
                    kept.push((stamp, id));
                }
                Some(_) => {
                    if let Some(state) = self.loaded.remove(&id) {
                        self.bytes -= state.size;
                        self.stats.evictions += 1;
                    }
                }
                None => {}
            }
        }
        self.order.extend(kept);
    }

    /// Documents this node has (in the index, or in memory with content).
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn loaded_len(&self) -> usize {
        self.loaded.len()
    }

    pub(crate) fn loaded_bytes(&self) -> usize {
        self.bytes
    }

    fn insert_state(&mut self, id: String, mut state: DocState) {
        self.known.remove(&id);
        self.clock += 1;
        state.stamp = self.clock;
        self.order.insert(self.clock, id.clone());
        if let Some(old) = self.loaded.insert(id, state) {
            self.order.remove(&old.stamp);
            self.bytes -= old.size;
        }
    }

    fn touch(&mut self, id: &str) {
        let Some(state) = self.loaded.get_mut(id) else {
            return;
        };
        if state.stamp == self.clock {
            return;
        }
        self.clock += 1;
        if let Some(key) = self.order.remove(&state.stamp) {
            self.order.insert(self.clock, key);
        }
        state.stamp = self.clock;
    }

    fn drop_loaded(&mut self, id: &str) {
        if let Some(state) = self.loaded.remove(id) {
            self.order.remove(&state.stamp);
            self.bytes -= state.size;
        }
    }
}

/// True if two lists of heads name the same changes.
fn same_heads(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    let a: HashSet<&ChangeHash> = a.iter().collect();
    let b: HashSet<&ChangeHash> = b.iter().collect();
    a == b
}
