//! Lending documents out of the replica for heavy work on other threads (see
//! `crate::core::lend`): the driver's own heavy work ([`Replica::lend`] and the `return_*`
//! methods) and the replica's ([`Effect::Apply`]: a peer's large push or a client's large
//! sync message, applied on a lent document and accepted when it comes back).

use std::collections::HashSet;

use automerge::{sync, Change};

use super::ClientError;
use super::Replica;
use crate::core::lend::{Job, Lent, Made, Merged, Work};
use crate::core::{CoreError, Effect, LocalWrite};

impl Replica {
    /// The memory the cache counts for `doc` (an estimate, see `footprint`), if it is in
    /// memory.
    pub fn loaded_size(&self, doc: &str) -> Option<usize> {
        self.docs.peek(doc).map(|d| d.size())
    }

    /// Takes `doc` out of memory for heavy work on another thread (see `lend`): until it
    /// is given back with [`Replica::return_change`], [`Replica::return_merge`] or
    /// [`Replica::return_read`], work on it waits and [`Replica::prepare`] says it is not
    /// ready. A stored document must be in memory ([`Replica::prepare`] first); a new one
    /// is created empty.
    pub fn lend(&mut self, doc: &str) -> Result<Lent, CoreError> {
        self.apply_doc(doc);
        self.docs.get_or_create(doc)?;
        let state = self.docs.lend(doc).ok_or_else(|| CoreError::NotRead {
            doc: doc.to_string(),
        })?;
        self.stats.lent += 1;
        Ok(Lent {
            id: doc.to_string(),
            state: Box::new(state),
        })
    }

    /// A lent document comes back after [`Lent::change`] made the change `made` (or
    /// none): what [`Replica::local_change`] does after its transaction, then the work
    /// that waited runs.
    pub fn return_change(
        &mut self,
        now: u64,
        lent: Lent,
        made: Option<Made>,
        want_ack: bool,
    ) -> LocalWrite<()> {
        self.now = self.now.max(now);
        let doc = self.docs.give_back(lent);
        let write = self.committed(now, &doc, made, want_ack);
        self.resume_parked(now, &doc, false);
        write
    }

    /// A lent document comes back after [`Lent::merge`]: what [`Replica::merge`] does
    /// after merging (with `want_ack`, the last new change's acknowledgements are
    /// awaited: its hash is the write's), then the work that waited runs. The value is the
    /// number of new changes.
    pub fn return_merge(
        &mut self,
        now: u64,
        lent: Lent,
        merged: Result<Merged, CoreError>,
        want_ack: bool,
    ) -> Result<LocalWrite<usize>, CoreError> {
        self.now = self.now.max(now);
        let doc = self.docs.give_back(lent);
        let answer = self.merged(now, &doc, merged, want_ack);
        self.resume_parked(now, &doc, false);
        answer
    }

    /// A lent document comes back unchanged (it was only read); the work that waited runs.
    pub fn return_read(&mut self, now: u64, lent: Lent) {
        self.now = self.now.max(now);
        let doc = self.docs.give_back(lent);
        self.docs.remove_if_empty(&doc);
        self.resume_parked(now, &doc, false);
    }

    /// Lends `doc` for heavy work of the replica's own: the driver takes it
    /// ([`Effect::Apply`], [`Replica::take_job`]) and hands it back with
    /// [`Replica::job_done`].
    pub(super) fn lend_job(&mut self, doc: &str, work: Work) {
        let lent = match self.lend(doc) {
            Ok(lent) => lent,
            Err(e) => {
                tracing::warn!(node = %self.id, doc, "cannot lend a document: {e}");
                return;
            }
        };
        self.jobs.insert(doc.to_string(), Some(Job { lent, work }));
        self.effects.push(Effect::Apply {
            doc: doc.to_string(),
        });
    }

    /// The heavy work announced by [`Effect::Apply`] for `doc`: run it
    /// ([`Job::run`], on any thread) and hand it back with [`Replica::job_done`].
    pub fn take_job(&mut self, doc: &str) -> Option<Job> {
        self.jobs.get_mut(doc)?.take()
    }

    /// Heavy work taken with [`Replica::take_job`] is done: its document comes back, what
    /// was applied is accepted (persisted, pushed on, acknowledged) as if applied in place,
    /// and the work that waited runs. A client whose sync message Automerge refused is
    /// returned with the error: close it (as [`Replica::client_sync`] would have asked).
    pub fn job_done(&mut self, now: u64, job: Job) -> Option<(u64, ClientError)> {
        self.now = self.now.max(now);
        let Job { lent, work } = job;
        self.jobs.remove(lent.id());
        let doc = self.docs.give_back(lent);
        let failed = match work {
            Work::Push {
                from,
                origin,
                want_ack,
                changes,
                applied,
            } => {
                let applied = applied.unwrap_or_default();
                let rejected: HashSet<&[u8]> = applied.rejected.iter().map(Vec::as_slice).collect();
                self.stats.bad_changes += rejected.len() as u64;
                let accepted: Vec<Change> = changes
                    .into_iter()
                    .filter(|c| !rejected.contains(c.raw_bytes()))
                    .collect();
                self.accept_fresh(now, &from, &doc, &origin, want_ack, accepted, false);
                if let Some(state) = self.docs.peek_mut(&doc) {
                    state.last_change_ms = now;
                    if applied.changed {
                        let heads = state.doc.get_heads();
                        self.notify(doc.clone(), heads);
                    }
                }
                if !applied.extra.is_empty() {
                    let me = self.id.clone();
                    self.accept_new(&doc, &me, None, false, applied.extra);
                }
                None
            }
            Work::Client {
                client,
                session,
                received,
                ..
            } => {
                if let Some(open) = self.clients.session(client, &doc) {
                    *open = *session;
                }
                let result = match received {
                    Some((before, offered, Ok(()))) => {
                        self.client_synced(now, client, &doc, before, offered);
                        Ok(())
                    }
                    Some((_, _, Err(detail))) => Err(ClientError::BadSync {
                        doc: doc.clone(),
                        detail,
                    }),
                    None => Ok(()),
                };
                self.docs.remove_if_empty(&doc);
                result.err().map(|e| (client, e))
            }
        };
        self.resume_parked(now, &doc, false);
        failed
    }

    /// Heavy work of the replica's own under way (documents lent for [`Effect::Apply`]).
    pub fn jobs_in_flight(&self) -> usize {
        self.jobs.len()
    }
}

/// Ops of these changes (what applying them costs).
pub(super) fn ops(changes: &[Change]) -> usize {
    changes.iter().map(Change::len).sum()
}

/// Ops of the changes of a sync message that decode.
pub(super) fn sync_ops(msg: &sync::Message) -> usize {
    msg.changes
        .iter()
        .filter_map(|c| Change::from_bytes(c.to_vec()).ok())
        .map(|c| c.len())
        .sum()
}
