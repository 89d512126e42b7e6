//! Reads and writes of documents this node does not replicate (a topology with
//! `replicas` below the number of nodes, see [`crate::placement`]): the [`Node`] sends them
//! over the peer links to a replica of the document, which carries them out as if they had
//! been made there, and answers with its result (see the driver's `forward` for the
//! routing). A change function ([`Node::change`]) runs here on a copy of the document read
//! from the replica, and its change is merged there.
//!
//! A write for which no replica is reachable is made here instead and kept as a hint: the
//! node stores it like any document and hands it to the document's replicas once they
//! are back (see the core's `handoff`). It is made on this node's copy of the document:
//! none (an empty document) unless it took hinted writes of it before, so JSON ops whose
//! path goes through objects that only the replicas have cannot be kept so: refused with
//! 503 naming the replicas ([`Error::NotHinted`]), like a read then.
//!
//! This module owns the conversion between the [`Node`] API and the forwarded requests and
//! their outcomes ([`crate::wire::Forward`]); it sends nothing itself.

use automerge::transaction::Transaction;
use automerge::{Automerge, ChangeHash};
use serde_bytes::ByteBuf;
use tokio::sync::oneshot;

use super::{Command, Error, Node, Written};
use crate::ops::{Ack, WriteRequest};
use crate::wire::{ForwardOutcome, ForwardRequest, Reply};

/// How long a forwarded read waits for the replica's answer, in ms.
pub(crate) const READ_TIMEOUT_MS: u64 = 10_000;
/// What a forwarded write waits beyond its write concern's timeout, in ms.
pub(crate) const WRITE_MARGIN_MS: u64 = 5_000;

impl Node {
    /// Whether this node serves `doc` from its own copy: it replicates it (every node
    /// does with `replicas` unset), and the document's partition is not one it took over
    /// lately and is still filling from the other replicas. Otherwise it forwards reads
    /// and writes of it to a replica.
    pub fn replicates(&self, doc: &str) -> bool {
        self.holds(doc)
            && !self
                .filling
                .borrow()
                .contains(crate::placement::partition_of(
                    doc,
                    crate::placement::PARTITIONS,
                ))
    }

    /// Whether this node is one of `doc`'s replicas (filled or not).
    pub(super) fn holds(&self, doc: &str) -> bool {
        self.topology.borrow().holds(&self.id, doc)
    }

    /// The most replicas besides one that hold a document: the largest integer `ack` of a
    /// write (the other nodes, with `replicas` unset).
    pub fn other_replicas(&self) -> usize {
        self.topology.borrow().replicas().saturating_sub(1)
    }

    /// Sends `request` to a replica of `doc` and waits for its answer.
    async fn forward(
        &self,
        doc: &str,
        request: ForwardRequest,
        wait_ms: u64,
    ) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Forward {
            doc: doc.to_string(),
            request,
            wait_ms,
            reply: tx,
        })
        .await?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// [`Node::apply_ops`] at a replica.
    pub(super) async fn forward_ops(
        &self,
        doc: &str,
        request: &WriteRequest,
    ) -> Result<Written<()>, Error> {
        let wait = request.timeout_ms.saturating_add(WRITE_MARGIN_MS);
        let json = request.to_json().to_string();
        let reply = self.forward(doc, ForwardRequest::Ops(json), wait).await?;
        match reply.outcome {
            // The replica that wrote it has it durably too.
            ForwardOutcome::Written { heads, acked_by } => Ok(Written {
                value: (),
                heads: hashes(heads),
                acked_by: std::iter::once(reply.by).chain(acked_by).collect(),
            }),
            other => Err(failure(doc, reply.by, other)),
        }
    }

    /// [`Node::merge`] at a replica, with a write concern among the document's replicas:
    /// the number of new changes, and the replicas that have them durably.
    pub(super) async fn forward_merge(
        &self,
        doc: &str,
        data: Vec<u8>,
        ack: Ack,
        timeout: std::time::Duration,
    ) -> Result<(usize, Vec<String>), Error> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let request = ForwardRequest::Merge {
            data: ByteBuf::from(data),
            ack,
            timeout_ms,
        };
        let wait = timeout_ms.saturating_add(WRITE_MARGIN_MS);
        let reply = self.forward(doc, request, wait).await?;
        match reply.outcome {
            // The replica that merged it has it durably too.
            ForwardOutcome::Merged {
                new_changes,
                acked_by,
                ..
            } => Ok((
                usize::try_from(new_changes).unwrap_or(usize::MAX),
                std::iter::once(reply.by).chain(acked_by).collect(),
            )),
            other => Err(failure(doc, reply.by, other)),
        }
    }

    /// [`Node::json`] at a replica.
    pub(super) async fn forward_json(&self, doc: &str) -> Result<Option<serde_json::Value>, Error> {
        let reply = self
            .forward(doc, ForwardRequest::Json, READ_TIMEOUT_MS)
            .await?;
        match reply.outcome {
            ForwardOutcome::Json(None) => Ok(None),
            ForwardOutcome::Json(Some(text)) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| bad_answer(doc, &reply.by, e)),
            other => Err(failure(doc, reply.by, other)),
        }
    }

    /// The saved document, from a replica.
    pub(super) async fn forward_save(&self, doc: &str) -> Result<Option<Vec<u8>>, Error> {
        let reply = self
            .forward(doc, ForwardRequest::Save, READ_TIMEOUT_MS)
            .await?;
        match reply.outcome {
            ForwardOutcome::Saved(saved) => Ok(saved.map(ByteBuf::into_vec)),
            other => Err(failure(doc, reply.by, other)),
        }
    }

    /// [`Node::with_doc`] on a copy read from a replica.
    pub(super) async fn forward_read<R>(
        &self,
        doc: &str,
        f: impl FnOnce(&Automerge) -> R,
    ) -> Result<Option<R>, Error> {
        match self.forward_save(doc).await? {
            None => Ok(None),
            Some(saved) => read_copy(doc, &saved, f).map(Some),
        }
    }

    /// [`Node::change_with`] on a copy read from a replica: `f` runs here, its change is
    /// merged at the replica, which waits for the write concern among the document's
    /// replicas. With no replica reachable, `f` runs on this node's copy (a hint).
    pub(super) async fn forward_change<R, E, F>(
        &self,
        doc: &str,
        ack: Ack,
        timeout: std::time::Duration,
        f: F,
    ) -> Result<Written<R>, Error>
    where
        R: Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    {
        let mut copy = match self.forward_save(doc).await {
            Ok(Some(saved)) => load_copy(doc, &saved)?,
            Ok(None) => Automerge::new(),
            Err(Error::Unreachable { .. }) => {
                return self.change_weighted(doc, ack, timeout, 0, f).await;
            }
            Err(e) => return Err(e),
        };
        let before = copy.get_heads();
        let mut tx = copy.transaction();
        let value = match f(&mut tx) {
            Ok(value) => value,
            Err(e) => {
                tx.rollback();
                return Err(Error::Change(e.into()));
            }
        };
        tx.commit();
        let change: Vec<u8> = copy
            .get_changes(&before)
            .into_iter()
            .flat_map(|c| c.raw_bytes().to_vec())
            .collect();
        let mut acked_by = Vec::new();
        if !change.is_empty() {
            acked_by = self.forward_merge(doc, change, ack, timeout).await?.1;
        }
        Ok(Written {
            value,
            heads: copy.get_heads(),
            acked_by,
        })
    }
}

/// Runs a forwarded request here (this node replicates the document) and says how it
/// went: what the driver sends back to the node that took it.
pub(crate) async fn serve(node: Node, doc: String, request: ForwardRequest) -> ForwardOutcome {
    let result = match request {
        ForwardRequest::Ops(json) => match crate::ops::parse_write_request(json.as_bytes()) {
            Err(e) => Err(failed(e.status(), format!("document {doc:?}: {e}"))),
            Ok(request) => node
                .apply_ops_here(&doc, request)
                .await
                .map(|w| ForwardOutcome::Written {
                    heads: raw(&w.heads),
                    acked_by: w.acked_by,
                })
                .map_err(outcome_of),
        },
        ForwardRequest::Merge {
            data,
            ack,
            timeout_ms,
        } => {
            let timeout = std::time::Duration::from_millis(timeout_ms);
            match node.merge_here(&doc, data.into_vec(), ack, timeout).await {
                Ok((new_changes, acked_by)) => node
                    .with_doc_here(&doc, |d| d.get_heads())
                    .await
                    .map(|heads| ForwardOutcome::Merged {
                        new_changes: new_changes as u64,
                        heads: raw(&heads.unwrap_or_default()),
                        acked_by,
                    })
                    .map_err(outcome_of),
                Err(e) => Err(outcome_of(e)),
            }
        }
        ForwardRequest::Json => node
            .with_doc_here(&doc, crate::json::doc_to_json)
            .await
            .map(|json| ForwardOutcome::Json(json.map(|v| v.to_string())))
            .map_err(outcome_of),
        ForwardRequest::Save => node
            .with_doc_here(&doc, |d| d.save())
            .await
            .map(|saved| ForwardOutcome::Saved(saved.map(ByteBuf::from)))
            .map_err(outcome_of),
    };
    result.unwrap_or_else(|failed| failed)
}

/// A refusal with this status and message.
pub(crate) fn failed(status: u16, message: String) -> ForwardOutcome {
    ForwardOutcome::Failed {
        status,
        message,
        heads: Vec::new(),
        acked_by: Vec::new(),
    }
}

/// The outcome that tells the origin about a node error here.
fn outcome_of(e: Error) -> ForwardOutcome {
    match e {
        Error::AckTimeout { heads, acked_by } => ForwardOutcome::Failed {
            status: 504,
            message: "the write concern was not met before the timeout".into(),
            heads: raw(&heads),
            acked_by,
        },
        other => failed(other.status(), other.to_string()),
    }
}

/// The node error at the origin for a replica's answer that is not the one asked for.
fn failure(doc: &str, by: String, outcome: ForwardOutcome) -> Error {
    match outcome {
        ForwardOutcome::Failed {
            status: 504,
            heads,
            acked_by,
            ..
        } => Error::AckTimeout {
            heads: hashes(heads),
            acked_by: std::iter::once(by).chain(acked_by).collect(),
        },
        ForwardOutcome::Failed {
            status, message, ..
        } => Error::Remote {
            by,
            status,
            message,
        },
        other => bad_answer(doc, &by, format!("unexpected answer {other:?}")),
    }
}

fn bad_answer(doc: &str, by: &str, e: impl std::fmt::Display) -> Error {
    Error::Remote {
        by: by.to_string(),
        status: 502,
        message: format!("document {doc:?}: the replica's answer cannot be read: {e}"),
    }
}

/// Runs `f` on a copy of a document saved by a replica.
pub(super) fn read_copy<R>(
    doc: &str,
    saved: &[u8],
    f: impl FnOnce(&Automerge) -> R,
) -> Result<R, Error> {
    Ok(f(&load_copy(doc, saved)?))
}

/// A copy of a document saved by a replica (a peer authenticated by the cluster's CA).
fn load_copy(doc: &str, saved: &[u8]) -> Result<Automerge, Error> {
    Automerge::load(saved).map_err(|e| Error::Remote {
        by: String::new(),
        status: 502,
        message: format!("document {doc:?}: the replica's copy cannot be loaded: {e}"),
    })
}

fn raw(heads: &[ChangeHash]) -> Vec<[u8; 32]> {
    heads.iter().map(|h| h.0).collect()
}

fn hashes(heads: Vec<[u8; 32]>) -> Vec<ChangeHash> {
    heads.into_iter().map(ChangeHash).collect()
}
