//! Heavy work off the driver's task: a large local change or merge, or a read of a large
//! document, runs on a reader thread on a document lent by the replica
//! ([`Replica::lend`](crate::core::Replica::lend)), and so does the replica's own heavy
//! work (a large push from a peer or sync message from a client:
//! [`crate::core::Effect::Apply`]); meanwhile the driver goes on serving
//! peers, clients, `/v1/health` and every other document. Work on the lent document waits
//! (in the replica, and commands here in `parked`, as for a read) and runs in order once it
//! is given back ([`Returned`]).
//!
//! What is heavy: a change of at least [`HEAVY_OPS`] ops (as
//! [`crate::ops::change_size`] counts them), every merge (its data may be a few compressed
//! bytes that expand to any number of ops within the client limits), a read of a document
//! of at least [`HEAVY_DOC_BYTES`] in memory. Lighter work runs in place, which costs less
//! than handing it over.

use std::time::Duration;

use tokio::sync::oneshot;

use super::Driver;
pub(super) use crate::core::HEAVY_OPS;
use crate::core::{CoreError, Job, Lent, LocalWrite, Made, Merged};
use crate::node::{Ack, ChangeFn, Error, MergeStarted, ReadFn, WriteOutcome};
use crate::panics::panic_text;

/// Reads of documents at least this large in memory run off the driver's task.
pub(super) const HEAVY_DOC_BYTES: usize = 1 << 20;

/// A lent document back from a reader thread, with what was done on it and whom to answer.
pub(super) enum Returned {
    Change {
        lent: Lent,
        done: Result<Option<Made>, Box<dyn std::error::Error + Send + Sync>>,
        reply: ChangeReply,
    },
    Merge {
        lent: Lent,
        merged: Result<Merged, CoreError>,
        concern: (Ack, Duration),
        reply: oneshot::Sender<Result<MergeStarted, Error>>,
    },
    Read {
        lent: Lent,
    },
    /// The replica's own heavy work ([`crate::core::Effect::Apply`]).
    Job(Job),
    /// The work on `doc` panicked; the document did not come back.
    Panicked {
        doc: String,
        why: String,
    },
}

/// What a change's writer waits for.
pub(super) struct ChangeReply {
    pub(super) ack: Ack,
    pub(super) timeout: Duration,
    pub(super) started: oneshot::Sender<Result<bool, Error>>,
    pub(super) outcome: oneshot::Sender<WriteOutcome>,
}

impl Driver {
    /// Runs a heavy change on a reader thread.
    pub(super) fn lend_change(&mut self, doc: &str, f: ChangeFn, reply: ChangeReply) {
        let mut lent = match self.replica.lend(doc) {
            Ok(lent) => lent,
            Err(e) => {
                let _ = reply.started.send(Err(Error::store(e)));
                return;
            }
        };
        self.off_loop(doc, move || {
            let done = lent.change(f).map(|((), made)| made);
            Returned::Change { lent, done, reply }
        });
    }

    /// Runs a heavy merge on a reader thread.
    pub(super) fn lend_merge(
        &mut self,
        doc: &str,
        data: Vec<u8>,
        concern: (Ack, Duration),
        reply: oneshot::Sender<Result<MergeStarted, Error>>,
    ) {
        let mut lent = match self.replica.lend(doc) {
            Ok(lent) => lent,
            Err(e) => {
                let _ = reply.send(Err(Error::Merge(Box::new(e))));
                return;
            }
        };
        self.off_loop(doc, move || {
            let merged = lent.merge(&data);
            Returned::Merge {
                lent,
                merged,
                concern,
                reply,
            }
        });
    }

    /// Runs a read of a large document on a reader thread; gives `f` back if the document
    /// is not that large (or not in memory): read it in place.
    pub(super) fn lend_read(&mut self, doc: &str, f: ReadFn) -> Result<(), ReadFn> {
        if self
            .replica
            .loaded_size(doc)
            .is_none_or(|size| size < HEAVY_DOC_BYTES)
        {
            return Err(f);
        }
        let lent = match self.replica.lend(doc) {
            Ok(lent) => lent,
            Err(e) => {
                f(Err(e));
                return Ok(());
            }
        };
        self.off_loop(doc, move || {
            f(Ok(Some(lent.doc())));
            Returned::Read { lent }
        });
        Ok(())
    }

    /// Runs the replica's heavy work on `doc` ([`crate::core::Effect::Apply`]) on a reader
    /// thread.
    pub(super) fn run_job(&mut self, doc: &str) {
        let Some(mut job) = self.replica.take_job(doc) else {
            return;
        };
        self.off_loop(doc, move || {
            job.run();
            Returned::Job(job)
        });
    }

    /// Runs `work` on a reader thread; what it returns comes back to the driver. A panic
    /// there ends the node as a panic of the driver would (the document it held may be
    /// half-changed; nothing acknowledged is lost, and a restart is safe).
    fn off_loop(&self, doc: &str, work: impl FnOnce() -> Returned + Send + 'static) {
        let back = self.returned_tx.clone();
        let doc = doc.to_string();
        self.reads.run(Box::new(move || {
            let returned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|payload| Returned::Panicked {
                    doc,
                    why: panic_text(payload),
                });
            let _ = back.send(returned);
        }));
    }

    /// A lent document is back: the replica takes it and what was done on it, the waiting
    /// writer is answered, then the commands that waited for the document run.
    pub(super) fn returned(&mut self, now: u64, returned: Returned) {
        let doc = match returned {
            Returned::Change { lent, done, reply } => {
                let doc = lent.id().to_string();
                match done {
                    Ok(made) => {
                        let want_ack = !matches!(reply.ack, Ack::Local);
                        let write = self.replica.return_change(now, lent, made, want_ack);
                        self.change_made(now, &doc, write, reply);
                    }
                    Err(e) => {
                        self.replica.return_change(now, lent, None, false);
                        let _ = reply.started.send(Err(Error::Change(e)));
                    }
                }
                doc
            }
            Returned::Merge {
                lent,
                merged,
                concern,
                reply,
            } => {
                let doc = lent.id().to_string();
                let want_ack = concern.0 != Ack::Local;
                let answer = self.replica.return_merge(now, lent, merged, want_ack);
                let _ = reply.send(self.merge_started(now, &doc, answer, concern));
                doc
            }
            Returned::Read { lent } => {
                let doc = lent.id().to_string();
                self.replica.return_read(now, lent);
                doc
            }
            Returned::Panicked { doc, why } => {
                panic!("heavy work on document {doc:?} panicked: {why}")
            }
            Returned::Job(job) => {
                let doc = job.doc().to_string();
                if let Some((client, e)) = self.replica.job_done(now, job) {
                    self.refuse_client(client, e.to_string());
                }
                doc
            }
        };
        self.resume_commands(now, &doc, None);
    }

    /// A local change was made (or nothing was): its writer waits for its write concern.
    pub(super) fn change_made(
        &mut self,
        now: u64,
        doc: &str,
        write: LocalWrite<()>,
        reply: ChangeReply,
    ) {
        let (Some(hash), Some(token)) = (write.hash, write.persist_token) else {
            let _ = reply.started.send(Ok(false));
            return;
        };
        let deadline = now.saturating_add(reply.timeout.as_millis() as u64);
        self.writes.wait(
            token,
            doc,
            hash,
            write.heads,
            reply.ack,
            self.other_replicas(doc),
            deadline,
            reply.outcome,
        );
        let _ = reply.started.send(Ok(true));
    }

    /// A merge's answer: how many changes were new and, if any, when they are durable
    /// (and, with a write concern beyond local, acknowledged by enough replicas).
    pub(super) fn merge_started(
        &mut self,
        now: u64,
        doc: &str,
        answer: Result<LocalWrite<usize>, CoreError>,
        (ack, timeout): (Ack, Duration),
    ) -> Result<MergeStarted, Error> {
        let write = answer.map_err(|e| Error::Merge(Box::new(e)))?;
        let Some(token) = write.persist_token else {
            return Ok((write.value, None));
        };
        let (tx, rx) = oneshot::channel();
        match write.hash {
            Some(hash) => {
                let deadline = now.saturating_add(timeout.as_millis() as u64);
                let others = self.other_replicas(doc);
                self.writes
                    .wait(token, doc, hash, write.heads, ack, others, deadline, tx);
            }
            None => self.writes.wait_durable(token, tx),
        }
        Ok((write.value, Some(rx)))
    }
}
