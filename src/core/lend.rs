//! Documents lent out of the replica, so that heavy work on one (a large local change or
//! merge, reading a large document) runs on another thread while the core goes on with
//! everything else.
//!
//! [`Replica::lend`](super::Replica::lend) takes a document in memory out of the cache;
//! until it comes back, the document counts as being read: work that needs it is parked
//! exactly as for a read from the store, and [`Replica::prepare`](super::Replica::prepare)
//! says it is not ready. The borrower works on the [`Lent`] (one transaction with
//! [`Lent::change`], a merge with [`Lent::merge`], or reads with [`Lent::doc`]) and hands
//! it back with the matching `return_*` method of the replica, which does what the same work
//! done in place would have done next (persist and push a new change, notify watchers) and
//! then resumes the parked work in order.
//!
//! Which work is heavy enough to lend is the driver's choice; the core only guarantees the
//! lent document is left alone meanwhile.

use std::collections::HashSet;

use automerge::transaction::Transaction;
use automerge::{Automerge, ChangeHash, ReadDoc};

use super::docs::DocState;
use super::CoreError;

/// A document out of the replica's cache; give it back with a `return_*` method of
/// [`Replica`](super::Replica).
pub struct Lent {
    pub(super) id: String,
    pub(super) state: DocState,
}

/// What [`Lent::merge`] added: the new changes, encoded.
pub struct Merged {
    /// Changes new to the document (Automerge may hold some back until their dependencies
    /// arrive).
    pub(super) count: usize,
    /// Their bytes, with any changes Automerge had queued that became applicable.
    pub(super) bytes: Vec<Vec<u8>>,
}

impl Lent {
    /// The document id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The document.
    pub fn doc(&self) -> &Automerge {
        &self.state.doc
    }

    /// Runs `f` as one Automerge transaction, as [`Replica::local_change`] would; on `Err`
    /// it is rolled back and nothing changes. Returns `f`'s value and the new change (if
    /// `f` made any operation), for [`Replica::return_change`].
    ///
    /// [`Replica::local_change`]: super::Replica::local_change
    /// [`Replica::return_change`]: super::Replica::return_change
    pub fn change<R, E>(
        &mut self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
    ) -> Result<(R, Option<ChangeHash>), E> {
        transact(&mut self.state.doc, f)
    }

    /// Merges Automerge data, as [`Replica::merge`](super::Replica::merge) would, for
    /// [`Replica::return_merge`](super::Replica::return_merge).
    pub fn merge(&mut self, data: &[u8]) -> Result<Merged, CoreError> {
        merge_into(&self.id, &mut self.state, data)
    }
}

/// Runs `f` as one transaction on `doc`: its value and the new change, if any; on `Err`
/// rolled back.
pub(super) fn transact<R, E>(
    doc: &mut Automerge,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
) -> Result<(R, Option<ChangeHash>), E> {
    let mut tx = doc.transaction();
    match f(&mut tx) {
        Ok(value) => Ok((value, tx.commit().0)),
        Err(e) => {
            tx.rollback();
            Err(e)
        }
    }
}

/// Merges Automerge data (a saved document or concatenated changes) into `state`. The data
/// is checked completely before anything changes.
pub(super) fn merge_into(id: &str, state: &mut DocState, data: &[u8]) -> Result<Merged, CoreError> {
    let bad = |detail: String| CoreError::BadAutomergeData {
        doc: id.to_string(),
        detail,
    };
    let mut scratch = Automerge::new();
    scratch
        .load_incremental(data)
        .map_err(|e| bad(e.to_string()))?;
    let missing = scratch.get_missing_deps(&[]);
    if !missing.is_empty() {
        // Changes made on top of history (`save_after`): fine if the document has it.
        if !missing
            .iter()
            .all(|h| state.doc.get_change_meta_by_hash(h).is_some())
        {
            return Err(bad(
                "changes depend on history that neither the data nor the document has".into(),
            ));
        }
        scratch = state.doc.clone();
        scratch
            .load_incremental(data)
            .map_err(|e| bad(e.to_string()))?;
    }
    let new = state.doc.get_changes_added(&scratch);
    let count = new.len();
    if new.is_empty() {
        return Ok(Merged {
            count,
            bytes: Vec::new(),
        });
    }
    let mut bytes: Vec<Vec<u8>> = new.iter().map(|c| c.raw_bytes().to_vec()).collect();
    let accepted: HashSet<ChangeHash> = new.iter().map(|c| c.hash()).collect();
    let before = state.doc.get_heads();
    let queued_before = !state.doc.get_missing_deps(&[]).is_empty();
    state
        .doc
        .apply_changes(new)
        .map_err(|source| CoreError::Automerge {
            doc: id.to_string(),
            source: Box::new(source),
        })?;
    if queued_before {
        // Changes Automerge had queued may have become applicable: persist them too.
        bytes.extend(state.unaccepted_since(&before, &accepted));
    }
    Ok(Merged { count, bytes })
}
