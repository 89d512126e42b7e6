//! Requests forwarded between nodes (see `node::forward`): a node that does not replicate
//! a document sends the request to the nearest replica not known to be down (ties by the
//! placement's order of preference, so one node's requests for one document go to the same
//! replica while it lives), hop by hop over the peer links (`Topology::next_hop`: direct in
//! a mesh, around a ring); every node on the way passes it on, a replica serves it, and the
//! answer goes back the same way to the node that waits for it.
//!
//! Checked at every hop: the document id and its partition (a request naming another
//! partition than its document's is refused), and the hops taken (more than there are
//! nodes is a loop, refused). A request whose answer does not come within its wait, or
//! whose first link goes down before, fails with the outcome unknown.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::Driver;
use crate::node::forward::{failed, serve};
use crate::node::Error;
use crate::placement::{partition_of, PARTITIONS};
use crate::wire::{Forward, ForwardOutcome, ForwardRequest, Message, Reply};

/// A request this node forwarded and waits for.
struct Pending {
    reply: oneshot::Sender<Result<Reply, Error>>,
    /// The peer it was sent to.
    via: String,
    /// The replica it is meant for.
    target: String,
    deadline: u64,
}

/// The requests waiting for an answer, by number.
#[derive(Default)]
pub(super) struct Forwards {
    next_id: u64,
    pending: HashMap<u64, Pending>,
}

impl Forwards {
    /// When the next one times out.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Requests waiting.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }
}

/// A served request's outcome, for the node that waits for it.
pub(super) struct Served {
    pub(super) origin: String,
    pub(super) id: u64,
    pub(super) outcome: ForwardOutcome,
}

impl Driver {
    /// A request of this node's for a document it does not replicate: sent towards a
    /// replica, answered on `reply` when the replica's answer comes back.
    pub(super) fn forward(
        &mut self,
        now: u64,
        doc: String,
        request: ForwardRequest,
        wait_ms: u64,
        reply: oneshot::Sender<Result<Reply, Error>>,
    ) {
        // A removed node serves nothing; a leaving one takes no more writes.
        let write = matches!(
            request,
            ForwardRequest::Ops(_) | ForwardRequest::Merge { .. }
        );
        if self.removed {
            let _ = reply.send(Err(Error::Removed(self.id.clone())));
            return;
        }
        if write && self.draining.is_some() {
            let _ = reply.send(Err(Error::Leaving(self.id.clone())));
            return;
        }
        let Some((target, via)) = self.route(&doc, None) else {
            let replicas = self.replicas_of(&doc);
            let _ = reply.send(Err(Error::Unreachable { doc, replicas }));
            return;
        };
        self.forwards.next_id += 1;
        let id = self.forwards.next_id;
        let partition = partition_of(&doc, PARTITIONS).0;
        let msg = Message::Forward(Box::new(Forward {
            id,
            origin: self.id.clone(),
            target: target.clone(),
            hops: 0,
            doc,
            partition,
            request,
        }));
        if let Err(e) = self.transport.send(&via, msg) {
            let _ = reply.send(Err(Error::Remote {
                by: target,
                status: 503,
                message: format!("cannot send the request to {via}: {e}"),
            }));
            return;
        }
        let deadline = now.saturating_add(wait_ms);
        self.forwards.pending.insert(
            id,
            Pending {
                reply,
                via,
                target,
                deadline,
            },
        );
    }

    /// A forwarded request from a peer: served here if this node replicates its document,
    /// else passed on.
    pub(super) fn receive_forward(&mut self, from: &str, mut f: Forward) {
        let refuse = |status: u16, message: String| Served {
            origin: f.origin.clone(),
            id: f.id,
            outcome: failed(status, message),
        };
        if !crate::doc_id::is_valid_doc_id(&f.doc) {
            let refused = refuse(
                400,
                format!(
                    "forwarded request from {from}: invalid document id {:?}",
                    f.doc
                ),
            );
            return self.answer(refused);
        }
        let partition = partition_of(&f.doc, PARTITIONS).0;
        if f.partition != partition {
            let refused = refuse(
                400,
                format!(
                    "forwarded request from {from}: unknown partition {} for document {:?} \
                     (it is in partition {partition} of {PARTITIONS})",
                    f.partition, f.doc
                ),
            );
            return self.answer(refused);
        }
        let holds = self.topology.borrow().holds(&self.id, &f.doc);
        let filling = self
            .replica
            .filling()
            .contains(crate::placement::Partition(partition));
        if holds && !filling {
            return self.serve(f);
        }
        let max_hops = self.topology.borrow().nodes().len();
        if usize::from(f.hops) + 1 >= max_hops.max(2) {
            let refused = refuse(
                508,
                format!(
                    "forward loop: the request for document {:?} passed {} nodes without \
                     reaching a replica",
                    f.doc,
                    f.hops + 1
                ),
            );
            return self.answer(refused);
        }
        let Some((target, via)) = self.route(&f.doc, Some(&f.target)) else {
            if holds {
                // Filling, and no other replica reachable: served from this copy.
                return self.serve(f);
            }
            let replicas = self.replicas_of(&f.doc);
            let e = Error::Unreachable {
                doc: f.doc.clone(),
                replicas,
            };
            let refused = refuse(503, e.to_string());
            return self.answer(refused);
        };
        f.target = target;
        f.hops += 1;
        let _ = self.transport.send(&via, Message::Forward(Box::new(f)));
    }

    /// Serves a forwarded request on a task of its own, as the node's API would; the
    /// outcome comes back to the driver (`Input::Served`).
    fn serve(&mut self, f: Forward) {
        let Some(node) = self.weak_node.as_ref().and_then(|w| w.upgrade()) else {
            return;
        };
        let served = self.served_tx.clone();
        let Forward {
            id,
            origin,
            doc,
            request,
            ..
        } = f;
        tokio::spawn(async move {
            let outcome = serve(node, doc, request).await;
            let _ = served.send(Served {
                origin,
                id,
                outcome,
            });
        });
    }

    /// Sends an outcome back towards the node that waits for it.
    pub(super) fn answer(&mut self, served: Served) {
        let reply = Reply {
            id: served.id,
            origin: served.origin,
            by: self.id.clone(),
            hops: 0,
            outcome: served.outcome,
        };
        self.pass_reply(reply);
    }

    /// An answer from a peer: for a request of this node's, or passed on.
    pub(super) fn receive_reply(&mut self, mut r: Reply) {
        if r.origin == self.id {
            if let Some(p) = self.forwards.pending.remove(&r.id) {
                let _ = p.reply.send(Ok(r));
            }
            return;
        }
        if usize::from(r.hops) + 1 >= self.topology.borrow().nodes().len().max(2) {
            tracing::debug!(node = %self.id, origin = %r.origin, "forwarded answer dropped: too many hops");
            return;
        }
        r.hops += 1;
        self.pass_reply(r);
    }

    fn pass_reply(&mut self, r: Reply) {
        let connected = self.replica.connected();
        let via = self
            .topology
            .borrow()
            .next_hop(&self.id, &r.origin, connected);
        match via {
            Some(via) => {
                let _ = self.transport.send(&via, Message::Reply(Box::new(r)));
            }
            None => {
                tracing::debug!(node = %self.id, origin = %r.origin, "no route back for a forwarded answer")
            }
        }
    }

    /// Requests past their wait fail (their outcome unknown).
    pub(super) fn forwards_tick(&mut self, now: u64) {
        let late: Vec<u64> = self
            .forwards
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(p) = self.forwards.pending.remove(&id) {
                let message = format!(
                    "no answer from replica {:?} in time; the outcome is unknown",
                    p.target
                );
                let _ = p.reply.send(Err(Error::Remote {
                    by: p.target,
                    status: 504,
                    message,
                }));
            }
        }
    }

    /// The link to `peer` is down: requests sent through it fail (their outcome unknown).
    pub(super) fn forwards_peer_down(&mut self, peer: &str) {
        let lost: Vec<u64> = self
            .forwards
            .pending
            .iter()
            .filter(|(_, p)| p.via == peer)
            .map(|(&id, _)| id)
            .collect();
        for id in lost {
            if let Some(p) = self.forwards.pending.remove(&id) {
                let message = format!(
                    "the link to {peer} closed before replica {:?} answered; the outcome is \
                     unknown",
                    p.target
                );
                let _ = p.reply.send(Err(Error::Remote {
                    by: p.target,
                    status: 503,
                    message,
                }));
            }
        }
    }

    /// The replica a request for `doc` goes to, and the peer to send it through: `wanted`
    /// if it can be reached, else the nearest replica not known to be down (ties by the
    /// placement's preference) that a connected peer leads to.
    fn route(&self, doc: &str, wanted: Option<&str>) -> Option<(String, String)> {
        let topology = self.topology.borrow();
        let connected = self.replica.connected();
        let down = self.links.down();
        let reach = |r: &str| {
            if r == self.id || down.contains(r) {
                return None;
            }
            topology
                .next_hop(&self.id, r, connected)
                .map(|via| (r.to_string(), via))
        };
        if let Some(found) = wanted.and_then(reach) {
            return Some(found);
        }
        let mut replicas: Vec<(u32, usize, &str)> = topology
            .replicas_of(doc)
            .into_iter()
            .enumerate()
            .map(|(rank, r)| {
                let distance = topology.distance(&self.id, r).unwrap_or(u32::MAX);
                (distance, rank, r)
            })
            .collect();
        replicas.sort();
        replicas.into_iter().find_map(|(_, _, r)| reach(r))
    }

    fn replicas_of(&self, doc: &str) -> Vec<String> {
        self.topology
            .borrow()
            .replicas_of(doc)
            .into_iter()
            .map(str::to_string)
            .collect()
    }
}
