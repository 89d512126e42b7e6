//! The documents of one replica: each an Automerge document plus the remote changes
//! waiting to be applied in one batch, and the changes Automerge holds back because their
//! dependencies have not arrived yet.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};

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
}

impl DocState {
    fn new(actor: &ActorId) -> Self {
        DocState {
            doc: Automerge::new().with_actor(actor.clone()),
            pending: Vec::new(),
            pending_hashes: HashSet::new(),
            orphans: HashMap::new(),
            last_change_ms: 0,
        }
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
}

/// All documents of a replica, by id.
pub(crate) struct Docs {
    actor: ActorId,
    map: BTreeMap<String, DocState>,
}

impl Docs {
    pub(crate) fn new(actor: ActorId) -> Self {
        Docs {
            actor,
            map: BTreeMap::new(),
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&DocState> {
        self.map.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut DocState> {
        self.map.get_mut(id)
    }

    pub(crate) fn get_or_create(&mut self, id: &str) -> &mut DocState {
        if !self.map.contains_key(id) {
            self.map.insert(id.to_string(), DocState::new(&self.actor));
        }
        self.map
            .get_mut(id)
            .expect("inserted just above when missing")
    }

    /// Removes a document that holds nothing (a failed first write must not leave it).
    pub(crate) fn remove_if_empty(&mut self, id: &str) {
        let empty = self.map.get(id).is_some_and(|d| {
            d.doc.get_heads().is_empty() && !d.has_pending() && d.orphans.is_empty()
        });
        if empty {
            self.map.remove(id);
        }
    }

    pub(crate) fn insert(&mut self, id: String, doc: Automerge) -> &mut DocState {
        let mut state = DocState::new(&self.actor);
        state.doc = doc.with_actor(self.actor.clone());
        self.map.insert(id.clone(), state);
        self.map.get_mut(&id).expect("inserted just above")
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &DocState)> {
        self.map.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
