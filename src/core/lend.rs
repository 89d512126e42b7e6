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
//! The replica also lends documents for heavy work of its own: a peer's push or a client's
//! sync message of at least `heavy_ops` ops ([`crate::core::CoreConfig::heavy_ops`]) on a
//! document in memory becomes a [`Job`], announced by
//! [`Effect::Apply`](super::Effect::Apply); the changes are accepted (persisted, pushed
//! on, acknowledged) only once the job is back, so nothing leaves the node before
//! Automerge has taken them. Which of its own work is heavy enough to lend is the driver's
//! choice; the core only guarantees the lent document is left alone meanwhile.

use std::collections::HashSet;

use automerge::sync;
use automerge::transaction::Transaction;
use automerge::{Automerge, Change, ChangeHash, ReadDoc};

use super::docs::{Applied, DocState};
use super::{untrusted, CoreError};

/// Work of at least this many ops is heavy: the default of
/// [`crate::core::CoreConfig::heavy_ops`], and the driver's measure for its own changes.
pub const HEAVY_OPS: usize = 10_000;

/// A document out of the replica's cache; give it back with a `return_*` method of
/// [`Replica`](super::Replica).
pub struct Lent {
    pub(super) id: String,
    pub(super) state: Box<DocState>,
}

/// What [`Lent::merge`] added: the new changes, encoded.
pub struct Merged {
    /// The changes new to the document, encoded: the data's, and any Automerge had queued
    /// that became applicable.
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
    /// `f` made any operation, encoded here too), for [`Replica::return_change`].
    ///
    /// [`Replica::local_change`]: super::Replica::local_change
    /// [`Replica::return_change`]: super::Replica::return_change
    pub fn change<R, E>(
        &mut self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
    ) -> Result<(R, Option<Made>), E> {
        transact(&mut self.state.doc, f)
    }

    /// Merges Automerge data, as [`Replica::merge`](super::Replica::merge) would, for
    /// [`Replica::return_merge`](super::Replica::return_merge).
    pub fn merge(&mut self, data: &[u8]) -> Result<Merged, CoreError> {
        merge_into(&self.id, &mut self.state, data)
    }
}

/// A change made by a transaction: its hash and its bytes (encoding a large change is
/// work too, done where the transaction ran).
#[derive(Debug, Clone)]
pub struct Made {
    pub(super) hash: ChangeHash,
    pub(super) bytes: Vec<u8>,
}

impl Made {
    /// The change's hash.
    pub fn hash(&self) -> ChangeHash {
        self.hash
    }
}

/// Runs `f` as one transaction on `doc`: its value and the new change, if any; on `Err`
/// rolled back.
pub(super) fn transact<R, E>(
    doc: &mut Automerge,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
) -> Result<(R, Option<Made>), E> {
    let mut tx = doc.transaction();
    match f(&mut tx) {
        Ok(value) => {
            let made = tx.commit().0.map(|hash| Made {
                hash,
                bytes: doc
                    .get_change_by_hash(&hash)
                    .map(|c| c.raw_bytes().to_vec())
                    .unwrap_or_default(),
            });
            Ok((value, made))
        }
        Err(e) => {
            tx.rollback();
            Err(e)
        }
    }
}

/// Merges Automerge data (a saved document or concatenated changes) into `state`. The data
/// is taken by a copy of the document (see `untrusted`): refused, it changes nothing.
pub(super) fn merge_into(id: &str, state: &mut DocState, data: &[u8]) -> Result<Merged, CoreError> {
    let bad = |detail: String| CoreError::BadAutomergeData {
        doc: id.to_string(),
        detail,
    };
    let load = |doc: &mut Automerge| doc.load_incremental(data).map_err(|e| e.to_string());
    let before = state.doc.get_heads();
    let missing_before: HashSet<ChangeHash> = state.doc.get_missing_deps(&[]).into_iter().collect();
    untrusted::on_copy(&mut state.doc, |copy| {
        if load(copy)? == 0 {
            // A document with history skips what it cannot parse (a new one refuses it):
            // nothing new is either data it has, or not Automerge data.
            load(&mut Automerge::new())?;
        }
        // Changes made on top of history (`save_after`) are fine if the document has it.
        if copy
            .get_missing_deps(&[])
            .iter()
            .any(|h| !missing_before.contains(h))
        {
            return Err(
                "changes depend on history that neither the data nor the document has".into(),
            );
        }
        Ok(())
    })
    .map_err(bad)?;
    // New: every change applied since (those Automerge had queued and could now apply
    // included), but those held back before, which were persisted when they came.
    let bytes = state.unaccepted_since(&before, &HashSet::new());
    Ok(Merged { bytes })
}

/// Heavy work the replica lends out by itself ([`Effect::Apply`](super::Effect::Apply)):
/// take it with [`Replica::take_job`](super::Replica::take_job), [`Job::run`] it on any
/// thread, and give it back with [`Replica::job_done`](super::Replica::job_done).
pub struct Job {
    pub(super) lent: Lent,
    pub(super) work: Work,
}

/// What a [`Job`] does, and what it found.
pub(super) enum Work {
    /// Changes pushed by a peer (new to the document), applied in one batch.
    Push {
        from: String,
        origin: String,
        want_ack: bool,
        changes: Vec<Change>,
        applied: Option<Applied>,
    },
    /// A client's sync message, received with (a copy of) its session.
    Client {
        client: u64,
        session: Box<sync::State>,
        msg: Option<sync::Message>,
        /// The changes it offers that the document lacks, if known (see `unseen_changes`).
        offered: Option<Vec<Change>>,
        /// Heads before, the changes offered that were new, and Automerge's verdict.
        received: Option<Received>,
    },
}

/// What receiving a client's sync message did: the heads before, the changes offered that
/// were new (if that is known), and Automerge's verdict.
pub(super) type Received = (Vec<ChangeHash>, Option<Vec<Change>>, Result<(), String>);

impl Job {
    /// The document it works on.
    pub fn doc(&self) -> &str {
        &self.lent.id
    }

    /// Does the work (once; blocking: a reader thread's work).
    pub fn run(&mut self) {
        let state = &mut self.lent.state;
        match &mut self.work {
            Work::Push {
                changes, applied, ..
            } => {
                if applied.is_none() {
                    for change in changes.iter() {
                        state.push_pending(change.clone());
                    }
                    *applied = Some(state.apply_pending());
                }
            }
            Work::Client {
                session,
                msg,
                offered,
                received,
                ..
            } => {
                if let Some(msg) = msg.take() {
                    let before = state.doc.get_heads();
                    let offered = offered.take();
                    let verdict = untrusted::receive_sync(&mut state.doc, session, msg);
                    *received = Some((before, offered, verdict));
                }
            }
        }
    }
}

/// The changes a sync message carries that `doc` does not have, if every chunk of it is a
/// plain change and `doc` has no changes queued for missing dependencies; `None` otherwise
/// (a message may also carry a whole compressed document).
pub(super) fn unseen_changes(doc: &Automerge, msg: &sync::Message) -> Option<Vec<Change>> {
    if !doc.get_missing_deps(&[]).is_empty() {
        return None;
    }
    let mut unseen = Vec::with_capacity(msg.changes.len());
    for chunk in msg.changes.iter() {
        let change = Change::from_bytes(chunk.to_vec()).ok()?;
        if doc.get_change_meta_by_hash(&change.hash()).is_none() {
            unseen.push(change);
        }
    }
    Some(unseen)
}
