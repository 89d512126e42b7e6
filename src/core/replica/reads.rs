//! Documents read from the store as effects, never on the caller's time.
//!
//! Work that needs a stored document not in memory (a push, a peer's want, a sync message,
//! a client's message) is parked here, per document and in arrival order, and the core
//! asks its driver for what it needs with [`Effect::Read`]: the document itself, or only
//! its heads and change log ([`crate::core::ReadKind::Log`]: a push that extends the heads is taken
//! without loading the document, and a peer's want is answered from the log). Every other
//! document goes on meanwhile. When the driver hands the read over ([`Replica::read_done`]),
//! the parked work runs in order (work that turns out to need the whole document asks for
//! it and parks again, with everything after it); if the read failed, it is dropped as if
//! lost on the way (anti-entropy brings peers' changes again; clients hear `Unavailable`).
//!
//! Callers outside the core (the driver's local writes, merges and reads) ask
//! [`Replica::prepare`] first and wait for the same hand-over themselves.

use automerge::Change;

use super::Replica;
use crate::core::clients::ClientMsg;
use crate::core::docs::{Need, Residency};
use crate::core::peers::{WantStep, Wanted};
use crate::core::{CoreError, Effect, Fetched};
use crate::wire::Want;

/// Work waiting for its document's read.
pub(super) enum Parked {
    /// Changes pushed by `from` (see `receive_push`).
    Push {
        from: String,
        origin: String,
        want_ack: bool,
        changes: Vec<Change>,
    },
    /// A peer's want of the document (see `receive_wants`).
    Want { from: String, want: Want },
    /// The peer lacks the whole document (see `receive_items`).
    Missing { peer: String },
    /// A sync message of a repair, admitted by the gate (see `process_sync`).
    Sync { from: String, data: Vec<u8> },
    /// A client's sync message or request (checked to decode before it was parked).
    Client {
        client: u64,
        data: Vec<u8>,
        request: bool,
    },
    /// The document's clients are due a sync message (see `serve_clients`).
    Serve,
    /// A document to ask `peer` for, once its heads are read (see `pump_wants`).
    Wanted { peer: String, wanted: Wanted },
    /// A document this node stores but does not replicate, to offer to its replicas
    /// once its heads are read (see `handoff`).
    Offer,
    /// A document `from` hands to this node (see `handoff`).
    Handoff {
        from: String,
        offer: crate::wire::HandoffDoc,
        /// This node takes it as a replica (else it carries it on).
        holder: bool,
    },
}

impl Replica {
    /// True if `doc` can be worked on now: it is in memory, or this node does not have it
    /// (a new document). Otherwise its read has been asked for ([`Effect::Read`]): call
    /// again after [`Replica::read_done`] for it. Local changes, merges, [`Replica::load`]
    /// and [`Replica::snapshot`] need this first.
    pub fn prepare(&mut self, doc: &str) -> bool {
        self.ready(doc, Need::Doc)
    }

    /// True if work needing `need` of `doc` can run now; otherwise the read it needs is
    /// under way (asked for now if it was not).
    pub(super) fn ready(&mut self, doc: &str, need: Need) -> bool {
        match self.docs.ready(doc, need) {
            Residency::Ready => true,
            Residency::Reading(started) => {
                if let Some(kind) = started {
                    self.stats.reads_asked += 1;
                    self.effects.push(Effect::Read {
                        doc: doc.to_string(),
                        kind,
                    });
                }
                false
            }
        }
    }

    /// Reads of stored documents under way.
    pub fn reads_in_flight(&self) -> usize {
        self.docs.reading_len()
    }

    /// The read asked for by [`Effect::Read`] ended: the document joins the memory, or
    /// its stored log (a [`crate::core::ReadKind::Log`] read) serves the work parked for it, which runs
    /// in order (`None`: it is not stored after all). On `Err` the parked work is dropped
    /// (counted as a load error).
    pub fn read_done(&mut self, now: u64, doc: &str, result: Result<Fetched, CoreError>) {
        self.now = self.now.max(now);
        if !self.docs.is_reading(doc) {
            return;
        }
        let failed = match &result {
            Err(e) => {
                tracing::warn!(node = %self.id, doc, "cannot read a stored document: {e}");
                true
            }
            Ok(_) => false,
        };
        if self.docs.read_done(doc, result) {
            // Its store records heads from before changes it held back applied: the next
            // batch records the heads it has.
            self.docs.batched(doc, self.batches.token(), 0);
            self.batches.add(doc, Vec::new(), 0);
        }
        self.resume_parked(now, doc, failed);
        self.docs.forget_fetched();
    }

    /// Runs the work parked for `doc` in order, now that its read is done or it is given
    /// back (or drops it all: `failed`).
    pub(super) fn resume_parked(&mut self, now: u64, doc: &str, failed: bool) {
        let mut parked = self.parked.remove(doc).unwrap_or_default().into_iter();
        while let Some(work) = parked.next() {
            if failed {
                self.drop_parked(doc, work);
            } else if self.parked.contains_key(doc) {
                // Earlier work asked for more (the whole document): the rest waits too.
                self.park(doc, work);
                self.parked
                    .entry(doc.to_string())
                    .or_default()
                    .extend(parked.by_ref());
            } else {
                self.resume(now, doc, work);
            }
        }
    }

    /// Parks `work` until `doc` is read (after [`Replica::prepare`] said it must be).
    pub(super) fn park(&mut self, doc: &str, work: Parked) {
        self.parked.entry(doc.to_string()).or_default().push(work);
    }

    fn resume(&mut self, now: u64, doc: &str, work: Parked) {
        match work {
            Parked::Push {
                from,
                origin,
                want_ack,
                changes,
            } => self.accept_push(now, &from, doc, &origin, want_ack, changes),
            Parked::Want { from, want } => {
                if self.peers.contains_key(&from) {
                    self.answer_want(now, &from, want);
                }
            }
            Parked::Missing { peer } => self.send_missing(&peer, doc, &[]),
            Parked::Sync { from, data } => self.process_sync(now, &from, doc, &data),
            Parked::Client {
                client,
                data,
                request,
            } => {
                if let Err(e) = self.client_sync(now, client, doc, &data, request) {
                    tracing::debug!(node = %self.id, client, "client message refused: {e}");
                    self.effects.push(Effect::Client {
                        client,
                        msg: ClientMsg::Unavailable {
                            doc: doc.to_string(),
                        },
                    });
                }
            }
            Parked::Serve => self.clients.mark(doc),
            Parked::Offer => self.offer_read(doc, now),
            Parked::Handoff {
                from,
                offer,
                holder,
            } => {
                if self.peers.contains_key(&from) {
                    if let Some(offer) = self.check_offer(&from, offer, holder) {
                        self.effects.push(Effect::Send {
                            to: from,
                            msg: crate::wire::Message::HandedOff(vec![offer]),
                        });
                    }
                }
            }
            Parked::Wanted { peer, wanted } => {
                if !self.peers.contains_key(&peer) {
                    return;
                }
                match self.want_step(&peer, wanted, now) {
                    WantStep::Send(want) => {
                        if let Some(p) = self.peers.get_mut(&peer) {
                            p.ready_wants.push(want);
                        }
                    }
                    WantStep::Later(wanted) | WantStep::Read(wanted) => {
                        self.want_again(&peer, wanted)
                    }
                    WantStep::Skip => {}
                }
            }
        }
    }

    /// Work whose document could not be read: peers' changes are not acknowledged (so
    /// not lost: anti-entropy brings them again); a client hears the document is
    /// unavailable.
    fn drop_parked(&mut self, doc: &str, work: Parked) {
        if let Parked::Client { client, .. } = work {
            self.effects.push(Effect::Client {
                client,
                msg: ClientMsg::Unavailable {
                    doc: doc.to_string(),
                },
            });
        }
    }
}
