//! automerge-repo clients of this node (see `core::clients` for the bookkeeping and
//! `crate::sync` for the sockets): a client's sync message is applied to the document like
//! a local write (persisted, pushed to the peers with this node as origin); every change of
//! a document, whatever its source, is offered to the clients following it at the next
//! flush, except that a client hears back about its own changes only once they are durable; a request for a document this node lacks waits while the peers are asked, and is
//! answered `Unavailable` if nothing comes; ephemeral messages reach the document's clients
//! here and travel to the other nodes like pushes, once each.

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, Change, ChangeHash, ReadDoc};

use super::lending;
use super::reads::Parked;
use super::Replica;
use crate::core::clients::{ClientMsg, Waiting};
use crate::core::lend::{unseen_changes, Work};
use crate::core::untrusted;
use crate::core::{CoreError, Effect};
use crate::wire::{Ephemeral, Message, Want};

/// Why a client's message was refused; nothing changed. The connection should end.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The sync data is not an Automerge sync message, or Automerge refused it.
    #[error("bad sync message for document {doc}: {detail}")]
    BadSync {
        /// Document id.
        doc: String,
        /// What is wrong.
        detail: String,
    },
    /// The client is not connected (never opened, or closed).
    #[error("unknown client {0}")]
    Unknown(u64),
    /// The document could not be read from the store.
    #[error(transparent)]
    Store(#[from] CoreError),
}

impl Replica {
    /// A client connected under this number (unique among connected clients).
    pub fn client_open(&mut self, client: u64) {
        self.clients.open(client);
    }

    /// The client is gone: its sync sessions and requests are dropped.
    pub fn client_close(&mut self, client: u64) {
        self.clients.close(client);
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// A `sync` message from a client (`request: false`), or a `request` (the client does
    /// not have the document): applies it to the document, which its changes create if
    /// new; the answers follow at the next flush. A request for a document this node does
    /// not have waits while its peers are asked; a message for a stored document not in
    /// memory waits for its read.
    pub fn client_sync(
        &mut self,
        now: u64,
        client: u64,
        doc: &str,
        data: &[u8],
        request: bool,
    ) -> Result<(), ClientError> {
        self.now = self.now.max(now);
        if !self.clients.is_open(client) {
            return Err(ClientError::Unknown(client));
        }
        let msg = sync::Message::decode(data).map_err(|e| ClientError::BadSync {
            doc: doc.to_string(),
            detail: e.to_string(),
        })?;
        if !self.prepare(doc) {
            let data = data.to_vec();
            self.park(
                doc,
                Parked::Client {
                    client,
                    data,
                    request,
                },
            );
            return Ok(());
        }
        self.apply_doc(doc);
        let have = self.docs.get(doc).is_some();
        if !have && request {
            let asked = self.clients.waiting.contains_key(doc);
            self.clients
                .waiting
                .entry(doc.to_string())
                .or_insert(Waiting {
                    since: now,
                    requests: Vec::new(),
                })
                .requests
                .push((client, data.to_vec()));
            if !asked {
                self.ask_peers(doc);
            }
            return Ok(());
        }
        self.sync_with_client(now, client, doc, msg)
    }

    /// An ephemeral message from a client: to the other clients of the document here and
    /// to the other nodes.
    pub fn client_ephemeral(&mut self, client: u64, mut e: Ephemeral) {
        if !self.clients.is_open(client)
            || !self.clients.first_sight(&e.sender, &e.session, e.count)
        {
            return;
        }
        e.origin = self.id.clone();
        self.deliver_ephemeral(Some(client), &e);
        self.forward_ephemeral(None, e);
    }

    /// An ephemeral message relayed by a peer.
    pub(super) fn receive_ephemeral(&mut self, from: &str, e: Ephemeral) {
        if !self.clients.first_sight(&e.sender, &e.session, e.count) {
            return;
        }
        self.deliver_ephemeral(None, &e);
        self.forward_ephemeral(Some(from), e);
    }

    /// The document's visible state changed: the notification, and its clients' turn.
    pub(super) fn notify(&mut self, doc: String, heads: Vec<ChangeHash>) {
        self.clients.mark(&doc);
        self.effects.push(Effect::Notify { doc, heads });
    }

    /// At each flush: answers requests whose document has arrived, then sends each client
    /// what it lacks of the documents that changed.
    pub(super) fn serve_clients(&mut self) {
        let now = self.now;
        let arrived: Vec<String> = self
            .clients
            .waiting
            .keys()
            .filter(|doc| self.docs.index().get(doc).is_some())
            .cloned()
            .collect();
        for doc in arrived {
            let Some(w) = self.clients.waiting.remove(&doc) else {
                continue;
            };
            // It may have arrived as changes taken without loading it: it is read first.
            if !self.prepare(&doc) {
                for (client, data) in w.requests {
                    let request = true;
                    self.park(
                        &doc,
                        Parked::Client {
                            client,
                            data,
                            request,
                        },
                    );
                }
                continue;
            }
            for (client, data) in w.requests {
                if let Ok(msg) = sync::Message::decode(&data) {
                    // Checked when it came; a failure now only loses this answer.
                    let _ = self.sync_with_client(now, client, &doc, msg);
                }
            }
        }
        let mut deferred = Vec::new();
        // A client may sync a document this node does not have yet: it then learns that
        // this node has nothing and sends everything.
        let mut empty = None;
        for doc in self.clients.take_changed() {
            let followers = self.clients.followers(&doc);
            if followers.is_empty() {
                continue;
            }
            if !self.prepare(&doc) {
                self.park(&doc, Parked::Serve);
                continue;
            }
            self.apply_doc(&doc);
            let doc_now = match self.docs.get(&doc) {
                Some(s) => &s.doc,
                None => &*empty.get_or_insert_with(Automerge::new),
            };
            let heads = doc_now.get_heads();
            for client in followers {
                // A client's own changes are acknowledged (our heads include them) only
                // once they are durable here.
                let batches = &self.batches;
                if self
                    .clients
                    .awaits_durability(client, &doc, |t| batches.is_durable(t))
                {
                    deferred.push(doc.clone());
                    continue;
                }
                let Some(session) = self.clients.session(client, &doc) else {
                    continue;
                };
                if in_step(session, &heads) {
                    continue;
                }
                if let Some(m) = doc_now.generate_sync_message(session) {
                    self.effects.push(Effect::Client {
                        client,
                        msg: ClientMsg::Sync {
                            doc: doc.clone(),
                            data: m.encode(),
                        },
                    });
                }
            }
        }
        for doc in deferred {
            self.clients.mark(&doc);
        }
    }

    /// At each tick: requests that waited too long are answered `Unavailable`. Their
    /// clients follow the document from then on, so they get it should it arrive later.
    pub(super) fn expire_client_requests(&mut self, now: u64) {
        let wait = self.config.unavailable_after_ms;
        let expired: Vec<String> = self
            .clients
            .waiting
            .iter()
            .filter(|(_, w)| now.saturating_sub(w.since) >= wait)
            .map(|(doc, _)| doc.clone())
            .collect();
        for doc in expired {
            let Some(w) = self.clients.waiting.remove(&doc) else {
                continue;
            };
            for (client, _) in w.requests {
                if self.clients.session(client, &doc).is_some() {
                    self.effects.push(Effect::Client {
                        client,
                        msg: ClientMsg::Unavailable { doc: doc.clone() },
                    });
                }
            }
        }
    }

    fn sync_with_client(
        &mut self,
        now: u64,
        client: u64,
        doc: &str,
        msg: sync::Message,
    ) -> Result<(), ClientError> {
        let state = self.docs.get_or_create(doc)?;
        let Some(session) = self.clients.session(client, doc) else {
            self.docs.remove_if_empty(doc);
            return Err(ClientError::Unknown(client));
        };
        let offered = unseen_changes(&state.doc, &msg);
        let ops = offered
            .as_deref()
            .map_or_else(|| lending::sync_ops(&msg), lending::ops);
        if ops >= self.config.heavy_ops {
            // Received off the driver's task, accepted when back (see `lending`).
            let work = Work::Client {
                client,
                session: Box::new(session.clone()),
                msg: Some(msg),
                offered,
                received: None,
            };
            self.lend_job(doc, work);
            return Ok(());
        }
        let before = state.doc.get_heads();
        if let Err(detail) = untrusted::receive_sync(&mut state.doc, session, msg) {
            self.docs.remove_if_empty(doc);
            return Err(ClientError::BadSync {
                doc: doc.to_string(),
                detail,
            });
        }
        self.client_synced(now, client, doc, before, offered);
        Ok(())
    }

    /// After a client's sync message was received into `doc` (whose heads were `before`;
    /// `offered`: the new changes it offered, if known): new changes are persisted, pushed
    /// to the peers and to the document's other clients.
    pub(super) fn client_synced(
        &mut self,
        now: u64,
        client: u64,
        doc: &str,
        before: Vec<ChangeHash>,
        offered: Option<Vec<Change>>,
    ) {
        let Some(state) = self.docs.peek_mut(doc) else {
            return;
        };
        let after = state.doc.get_heads();
        if after != before {
            let new: Vec<Vec<u8>> = match offered {
                // Nothing was or is queued, and every offered change was applied: they
                // are exactly the new ones (cheaper than asking Automerge for them).
                Some(offered)
                    if state.doc.get_missing_deps(&[]).is_empty()
                        && offered
                            .iter()
                            .all(|c| state.doc.get_change_meta_by_hash(&c.hash()).is_some()) =>
                {
                    offered.iter().map(|c| c.raw_bytes().to_vec()).collect()
                }
                _ => state
                    .doc
                    .get_changes(&before)
                    .iter()
                    .map(|c| c.raw_bytes().to_vec())
                    .collect(),
            };
            state.last_change_ms = now;
            self.docs.refresh(doc);
            self.stats.client_changes += new.len() as u64;
            let me = self.id.clone();
            self.accept_new(doc, &me, None, false, new);
            self.clients.wrote(client, doc, self.batches.token());
            self.notify(doc.to_string(), after);
        } else {
            self.docs.remove_if_empty(doc);
        }
        self.clients.mark(doc);
    }

    /// Asks every connected peer for all of a document this node lacks (a `Want` with no
    /// heads: a peer that has it sends it, one that has not stays silent).
    pub(super) fn ask_peers(&mut self, doc: &str) {
        let peers: Vec<String> = self.peers.keys().cloned().collect();
        for peer in peers {
            self.stats.wants_sent += 1;
            self.send_reconcile(
                &peer,
                Message::Want(vec![Want {
                    doc: doc.to_string(),
                    heads: Vec::new(),
                    reply: false,
                }]),
            );
        }
    }

    fn deliver_ephemeral(&mut self, except: Option<u64>, e: &Ephemeral) {
        for client in self.clients.followers(&e.doc) {
            if Some(client) != except {
                self.effects.push(Effect::Client {
                    client,
                    msg: ClientMsg::Ephemeral(e.clone()),
                });
            }
        }
    }

    fn forward_ephemeral(&mut self, from: Option<&str>, e: Ephemeral) {
        for to in self
            .router
            .targets(&self.id, &e.origin, from, &self.connected)
        {
            self.effects.push(Effect::Send {
                to,
                msg: Message::Ephemeral(e.clone()),
            });
        }
    }
}

/// True if the client was told our heads and says it has exactly them (so it lacks and
/// needs nothing): `generate_sync_message` would return nothing, after building a Bloom
/// filter and a list of changes to decide so. Most client messages are such
/// acknowledgements of what the node just sent.
pub(crate) fn in_step(session: &sync::State, heads: &[ChangeHash]) -> bool {
    session.have_responded
        && session.last_sent_heads == heads
        && session.their_heads.as_deref() == Some(heads)
        && session.their_need.as_ref().is_none_or(|n| n.is_empty())
}
