//! Anti-entropy of the replica: what makes replication correct when pushes are lost.
//!
//! - Reconciliation (`core::reconcile`): on every new link, periodically, and after a
//!   dropped push, a node sends a peer the fingerprints of the top of its tree over its
//!   (document, heads digest) pairs. The two descend only where fingerprints differ and end
//!   with the item lists of the differing leaf buckets. Equal replicas exchange one small
//!   message; d differences cost O(d log N) bytes whatever the number N of documents.
//! - Bulk repair: for each differing document the comparing node sends its heads in a
//!   `Want` (many documents per message, at most a window awaiting an answer per peer,
//!   the rest queued: `want_window`, or a round trip's worth on a slow link, see `rtt`).
//!   A peer that has everything those heads name answers with the changes after them
//!   (`get_changes`, no round trips), pushed in batches like any other changes. A peer
//!   that lacks some of them answers with its own heads; if neither side has all of the
//!   other's heads, the histories diverged and Automerge's sync protocol repairs that
//!   document.
//! - Of two peers, the one with the smaller id opens the reconciliations on a new link (and
//!   either after it dropped a push to the other), so the other is the one that compares
//!   and asks: asks seldom cross, and a crossing ask is left to the next round rather than
//!   answered twice. Periodic rounds go in turn ([`Replica::peer_in_turn`]).
//! - A periodic round rides on pushes ([`Replica::ride`]): its fingerprints go with the
//!   next push to the peer (on a push without changes when none went for
//!   `peers::ALONE_AFTER_MS`), and fingerprints that came on a push are answered on one. On
//!   a link with writes both ways, anti-entropy then costs no message of its own. Rounds
//!   asked for by failures, on new links and of a node filling partitions go at once.
//! - As before, a document is repaired with one peer at a time (`gate`).

use automerge::sync::{self, SyncDoc};
use automerge::ChangeHash;
use serde_bytes::ByteBuf;

use super::reads::Parked;

use super::Replica;
use crate::core::docs::Need;
use crate::core::peers::{WantStep, Wanted};
use crate::core::reconcile::Answer;
use crate::core::Effect;
use crate::placement::PartitionSet;
use crate::wire::{self, Bucket, Fingerprints, Message, Want, BATCH_BUDGET};

impl Replica {
    /// True if this node opens the periodic reconciliations with `peer`: one side per
    /// pair, so that the other side alone compares and asks, and asks never cross.
    pub(super) fn opens_with(&self, peer: &str) -> bool {
        self.id.as_str() < peer
    }

    /// The partitions this node and `peer` both replicate (`None`: everything), the only
    /// ones the two reconcile.
    fn shared_with(&self, peer: &str) -> Option<PartitionSet> {
        self.router.placement().map(|p| p.shared(&self.id, peer))
    }

    /// The peer whose turn it is for this period's reconciliation, if any. Each period a
    /// node reconciles with one peer: in the list of itself and its peers in id order, the
    /// one `d` places after it (going round), `d` taking the values 1 to n/2 in turn. In a
    /// cluster whose nodes all link to each other every node has the same list, so each
    /// pair is reconciled by one side once every n/2 periods (at a distance of exactly n/2,
    /// by the smaller id): N rounds per period in all, not one per pair. Each round repairs
    /// both sides, so a node missing changes that its peers hold has them after its next
    /// round with any of them; lost links and failed sends ask for rounds of their own at
    /// once ([`Replica::peer_down`], [`Replica::send_failed`]).
    pub(super) fn peer_in_turn(&mut self) -> Option<String> {
        let me = self.id.as_str();
        let mut all: Vec<&str> = self.peers.keys().map(String::as_str).collect();
        let m = all.partition_point(|id| *id < me);
        all.insert(m, me);
        let n = all.len();
        let half = n / 2;
        if half == 0 {
            return None;
        }
        let d = 1 + self.anti_entropy_turn % half;
        self.anti_entropy_turn = self.anti_entropy_turn.wrapping_add(1);
        let peer = all[(m + d) % n];
        (2 * d < n || me < peer).then(|| peer.to_string())
    }

    /// Whether this node opens periodic reconciliations at all (see
    /// [`Replica::peer_in_turn`]): not the larger id of a node with one peer, unless it is
    /// filling partitions (then it reconciles with every peer).
    pub(super) fn opens_periodically(&self) -> bool {
        let me = self.id.as_str();
        self.peers.len() >= 2
            || self.peers.keys().any(|id| me < id.as_str())
            || (!self.peers.is_empty() && !self.filling().is_empty())
    }

    /// Opens a reconciliation with `peer` at once.
    pub(super) fn open_reconcile(&mut self, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.needs_reconcile = false;
            p.ride.cancel_open();
        }
        self.stats.reconcile_rounds += 1;
        let opening = self.opening(peer);
        self.send_reconcile(peer, Message::Fingerprints(opening));
    }

    /// Opens a routine reconciliation with `peer` (its turn came, see
    /// [`Replica::peer_in_turn`]): its messages ride on pushes ([`Replica::ride`]).
    pub(super) fn open_routine(&mut self, now: u64, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.ride.open_later(now);
            self.stats.reconcile_rounds += 1;
        }
    }

    /// The opening of a round with `peer`: the top of the tree over what both replicate.
    fn opening(&self, peer: &str) -> Fingerprints {
        let mask = self.shared_with(peer);
        let (level, nodes) = self.docs.index().opening(mask.as_ref());
        Fingerprints { level, nodes }
    }

    pub(super) fn receive_fingerprints(&mut self, from: &str, f: Fingerprints) {
        for msg in self.answer_fingerprints(from, f) {
            self.send_reconcile(from, msg);
        }
    }

    /// Fingerprints that came from `from` on a push: answered on a push too (a routine
    /// round), or at once if too many wait already.
    pub(super) fn receive_riding(&mut self, now: u64, from: &str, fingerprints: Vec<Fingerprints>) {
        for f in fingerprints {
            let over = match self.peers.get_mut(from) {
                Some(p) => p.ride.answer_later(f, now),
                None => return,
            };
            if let Some(f) = over {
                self.receive_fingerprints(from, f);
            }
        }
    }

    /// A routine round's messages waiting for a push to a peer ride on the push about to go
    /// to it: they are made now (from the index as it is after this flush's changes) and
    /// left in `Peer::ride` for `drain_pushes`. Those that waited `ALONE_AFTER_MS` for a
    /// push go at `now` on a push without changes (so that the peer still answers on a
    /// push: a round stays routine to its end), and answers that are items go alone (large,
    /// and rare).
    pub(super) fn ride(&mut self, now: u64) {
        let due: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.ride.waits() && (p.has_pushes() || p.ride.alone_at().is_some_and(|t| t <= now))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            let (open, answer) = p.ride.take();
            let mut out = Vec::new();
            if open {
                out.push(Message::Fingerprints(self.opening(&id)));
            }
            for f in answer {
                out.extend(self.answer_fingerprints(&id, f));
            }
            for msg in out {
                match msg {
                    Message::Fingerprints(f) => {
                        self.count_reconcile(&Message::Fingerprints(f.clone()));
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.ride.ready.push(f);
                        }
                    }
                    msg => self.send_reconcile(&id, msg),
                }
            }
            if let Some(msg) = self.peers.get_mut(&id).and_then(|p| p.lone_push()) {
                self.effects.push(Effect::Send { to: id, msg });
            }
        }
    }

    /// The answer to fingerprints from `from`: nothing (the replicas agree, said once to
    /// the opener), the fingerprints one level down where they differ, or the items of the
    /// leaf buckets that differ (in messages of bounded size).
    fn answer_fingerprints(&mut self, from: &str, f: Fingerprints) -> Vec<Message> {
        let mask = self.shared_with(from);
        match self.docs.index().answer(f.level, &f.nodes, mask.as_ref()) {
            Answer::Equal => {
                // A round's opening found nothing different: the replicas agree. The
                // opener hears so (an empty level-0 message, answered by nothing), so that
                // both sides know it.
                if f.level <= 1 {
                    if let Some(p) = self.peers.get_mut(from) {
                        p.lag.divergent = Some(0);
                    }
                    self.filled_from(from);
                }
                if f.level == 1 && !f.nodes.is_empty() {
                    let agreed = Fingerprints {
                        level: 0,
                        nodes: Vec::new(),
                    };
                    return vec![Message::Fingerprints(agreed)];
                }
                Vec::new()
            }
            Answer::Fingerprints(level, nodes) => {
                vec![Message::Fingerprints(Fingerprints { level, nodes })]
            }
            Answer::Buckets(buckets) => {
                let mut out = Vec::new();
                let mut chunk = Vec::new();
                let mut size = 0;
                for (bucket, docs) in buckets {
                    size += 8 + docs.iter().map(|(d, _)| d.len() + 10).sum::<usize>();
                    chunk.push(Bucket { bucket, docs });
                    if size >= BATCH_BUDGET / 4 {
                        size = 0;
                        out.push(Message::Items(std::mem::take(&mut chunk)));
                    }
                }
                if !chunk.is_empty() {
                    out.push(Message::Items(chunk));
                }
                out
            }
        }
    }

    /// The peer's items of buckets that differ: documents that differ are asked for, or
    /// sent whole where the peer has none of them.
    pub(super) fn receive_items(&mut self, now: u64, from: &str, buckets: Vec<Bucket>) {
        let buckets: Vec<(u32, Vec<(String, u64)>)> =
            buckets.into_iter().map(|b| (b.bucket, b.docs)).collect();
        let quiet = self.config.quiet_ms;
        let young = self
            .peers
            .get(from)
            .is_some_and(|p| now.saturating_sub(p.since) < quiet);
        let mask = self.shared_with(from);
        let differing = self.docs.index().diff(&buckets, mask.as_ref());
        if let Some(p) = self.peers.get_mut(from) {
            p.lag.divergent = Some(differing.len() as u64);
        }
        for d in differing {
            // Busy documents wait: their pushes are in flight (not on a new link).
            let busy = !young
                && self
                    .docs
                    .peek(&d.doc)
                    .is_some_and(|s| now.saturating_sub(s.last_change_ms) < quiet);
            if busy {
                continue;
            }
            if d.ours.is_some() && d.theirs.is_none() {
                if self.ready(&d.doc, Need::Log) {
                    self.send_missing(from, &d.doc, &[]);
                } else {
                    let peer = from.to_string();
                    self.park(&d.doc, Parked::Missing { peer });
                }
            } else if let Some(p) = self.peers.get_mut(from) {
                p.want(Wanted {
                    doc: d.doc,
                    reply: false,
                    theirs: d.theirs,
                });
            }
        }
    }

    /// Answers a peer's heads of documents: the changes it lacks, or our own heads where we
    /// lack some of its changes.
    pub(super) fn receive_wants(&mut self, now: u64, from: &str, wants: Vec<Want>) {
        for want in wants {
            if want.reply && self.gate.answered(&want.doc, from) {
                self.release_held(now, &want.doc);
            }
            if self.ready(&want.doc, Need::Log) {
                self.answer_want(now, from, want);
            } else {
                let doc = want.doc.clone();
                let from = from.to_string();
                self.park(&doc, Parked::Want { from, want });
            }
        }
    }

    /// Answers one want of a document whose stored log is at hand (or in memory, or that
    /// this node does not have): from the log where it holds the answer, else from the
    /// document (read first if need be).
    pub(super) fn answer_want(&mut self, now: u64, from: &str, want: Want) {
        let theirs: Vec<ChangeHash> = want.heads.iter().copied().map(ChangeHash).collect();
        if let Some(changes) = self.docs.stored_changes_after(&want.doc, &theirs) {
            return self.queue_repair(from, &want.doc, changes);
        }
        if !self.ready(&want.doc, Need::Doc) {
            let (doc, from) = (want.doc.clone(), from.to_string());
            return self.park(&doc, Parked::Want { from, want });
        }
        self.apply_doc(&want.doc);
        let known = self.docs.get(&want.doc).map(|state| {
            theirs
                .iter()
                .all(|h| state.doc.get_change_meta_by_hash(h).is_some())
        });
        match known {
            // We have all they have: send the rest.
            Some(true) => self.send_missing(from, &want.doc, &theirs),
            // A document this node neither has nor replicates (dropped after its handoff
            // while the ask was on its way): nothing to send, nothing to ask for, unless
            // something here follows it (then it is asked for below).
            None if !self.followed_here(&want.doc) && self.placed_elsewhere(&want.doc) => {}
            // We lack some of theirs: ask with our heads, once.
            Some(false) | None if !want.reply && !theirs.is_empty() => {
                if let Some(p) = self.peers.get_mut(from) {
                    p.want(Wanted {
                        doc: want.doc,
                        reply: true,
                        theirs: None,
                    });
                }
            }
            // Neither has it, or a reply we cannot place while we have nothing.
            Some(false) | None if !want.reply => {}
            // Both sides lack some of the other's changes: the histories diverged.
            Some(false) => {
                let active = self
                    .peers
                    .get(from)
                    .is_some_and(|p| p.sessions.contains_key(&want.doc));
                if !active && self.gate.may_start(&want.doc, from) {
                    self.start_sync(now, from, &want.doc);
                }
            }
            None => {}
        }
    }

    /// Queues for `peer` the changes of `doc` that follow `heads` (all of them if empty),
    /// as repaired changes: the peer acknowledges them and passes them on as if this node
    /// had written them. The document's stored log is at hand, or the document in memory
    /// (or this node does not have it); read first if the log does not hold the answer.
    pub(super) fn send_missing(&mut self, peer: &str, doc: &str, heads: &[ChangeHash]) {
        if let Some(changes) = self.docs.stored_changes_after(doc, heads) {
            return self.queue_repair(peer, doc, changes);
        }
        if !self.ready(doc, Need::Doc) {
            let peer = peer.to_string();
            return self.park(doc, Parked::Missing { peer });
        }
        let Some(state) = self.docs.get(doc) else {
            return;
        };
        let changes: Vec<Vec<u8>> = state
            .doc
            .get_changes(heads)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        self.queue_repair(peer, doc, changes);
    }

    fn queue_repair(&mut self, peer: &str, doc: &str, changes: Vec<Vec<u8>>) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        // Asked for, and bounded by the want window: not subject to the outbox limit.
        for bytes in &changes {
            p.queue(doc, &self.id, true, bytes, usize::MAX);
        }
        self.stats.repair_changes_sent += changes.len() as u64;
    }

    /// Sends queued wants to every peer, up to the window of unanswered ones. A document
    /// whose heads are not known without reading it waits for a read of its log (at most a
    /// window of reads at once), then goes out with the next pump.
    pub(super) fn pump_wants(&mut self) {
        let now = self.now;
        let ids: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.wants_queued() || !p.ready_wants.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for peer in ids {
            let mut out = Vec::new();
            let mut size = 0;
            let mut ready = self
                .peers
                .get_mut(&peer)
                .map(|p| std::mem::take(&mut p.ready_wants))
                .unwrap_or_default()
                .into_iter();
            // Each queued document is looked at once per pump at most.
            let mut budget = self.peers.get(&peer).map_or(0, |p| p.wants_len());
            while let Some(want) = ready
                .next()
                .or_else(|| self.next_want_to_send(&peer, &mut budget, now))
            {
                size += want.doc.len() + 32 * want.heads.len() + 8;
                out.push(want);
                if size >= BATCH_BUDGET / 4 {
                    size = 0;
                    self.send_reconcile(&peer, Message::Want(std::mem::take(&mut out)));
                }
            }
            if !out.is_empty() {
                self.send_reconcile(&peer, Message::Want(out));
            }
        }
    }

    /// The next document queued for `peer` to ask for now, looking at `budget` of them at
    /// most and within the window of unanswered wants. On the way, documents not to ask
    /// for now are queued again, and those whose heads are not known wait for a read of
    /// their log (at most a window of reads at once).
    fn next_want_to_send(&mut self, peer: &str, budget: &mut usize, now: u64) -> Option<Want> {
        let window = self.want_window(peer);
        let reads = self.config.want_window;
        while *budget > 0 && self.gate.awaiting_from(peer) < window {
            *budget -= 1;
            let wanted = self.peers.get_mut(peer)?.next_want()?;
            match self.want_step(peer, wanted, now) {
                WantStep::Send(want) => return Some(want),
                WantStep::Skip => {}
                WantStep::Later(wanted) => self.want_again(peer, wanted),
                WantStep::Read(wanted) if self.docs.reading_len() >= reads => {
                    self.want_again(peer, wanted);
                    return None;
                }
                WantStep::Read(wanted) => {
                    let doc = wanted.doc.clone();
                    if self.ready(&doc, Need::Heads) {
                        self.want_again(peer, wanted);
                    } else {
                        let peer = peer.to_string();
                        self.park(&doc, Parked::Wanted { peer, wanted });
                    }
                }
            }
        }
        None
    }

    /// Queues `wanted` for `peer` again (if still connected).
    pub(super) fn want_again(&mut self, peer: &str, wanted: Wanted) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.want(wanted);
        }
    }

    /// What to do with a document wanted of `peer`: ask for it now (the repair is
    /// started), not at all, later, or once its heads are read.
    pub(super) fn want_step(&mut self, peer: &str, wanted: Wanted, now: u64) -> WantStep {
        let Wanted { doc, reply, theirs } = wanted;
        if theirs.is_some() && self.docs.index().get(&doc) == theirs {
            return WantStep::Skip; // repaired meanwhile (from another peer)
        }
        if self.gate.is_awaiting(&doc, peer) {
            return WantStep::Skip; // asked already
        }
        if !self.gate.may_start(&doc, peer) {
            // Asked of another peer: ask this one later if that does not settle it.
            return WantStep::Later(Wanted { doc, reply, theirs });
        }
        let Some(heads) = self.docs.heads(&doc) else {
            return WantStep::Read(Wanted { doc, reply, theirs });
        };
        self.gate.started(&doc, peer, now);
        self.stats.wants_sent += 1;
        WantStep::Send(Want {
            doc,
            heads: heads.iter().map(|h| h.0).collect(),
            reply,
        })
    }

    pub(super) fn send_reconcile(&mut self, to: &str, msg: Message) {
        self.count_reconcile(&msg);
        self.effects.push(Effect::Send {
            to: to.to_string(),
            msg,
        });
    }

    /// Counts a reconciliation message, alone or riding on a push.
    fn count_reconcile(&mut self, msg: &Message) {
        self.stats.reconcile_messages += 1;
        self.stats.reconcile_bytes += wire::encoded_len(msg) as u64;
    }

    pub(super) fn start_sync(&mut self, now: u64, peer: &str, doc: &str) {
        self.apply_doc(doc);
        let Ok(state) = self.docs.get_or_create(doc) else {
            return;
        };
        let mut session = sync::State::new();
        let msg = state.doc.generate_sync_message(&mut session);
        self.stats.repairs += 1;
        if let Some(msg) = msg {
            if let Some(p) = self.peers.get_mut(peer) {
                p.sessions.insert(doc.to_string(), (session, now));
            }
            self.gate.started(doc, peer, now);
            self.stats.sync_sent += 1;
            self.effects.push(Effect::Send {
                to: peer.to_string(),
                msg: Message::Sync {
                    doc: doc.to_string(),
                    data: ByteBuf::from(msg.encode()),
                },
            });
        }
        self.docs.remove_if_empty(doc);
    }

    pub(super) fn receive_sync(&mut self, now: u64, from: &str, doc: &str, data: &[u8]) {
        use crate::core::gate::Admit;
        if sync::Message::decode(data).is_err() {
            self.stats.bad_sync += 1;
            return;
        }
        let in_session = self
            .peers
            .get(from)
            .is_some_and(|p| p.sessions.contains_key(doc));
        match self.gate.admit(doc, from, in_session, data, now) {
            Admit::Held => {}
            Admit::Process => self.process_sync(now, from, doc, data),
            Admit::ProcessThenRelease => {
                self.process_sync(now, from, doc, data);
                self.release_held(now, doc);
            }
        }
    }

    /// Answers the repairs of `doc` the gate held, if it no longer waits for any answer.
    pub(super) fn release_held(&mut self, now: u64, doc: &str) {
        for (peer, data) in self.gate.release(doc) {
            self.process_sync(now, &peer, doc, &data);
        }
    }

    pub(super) fn process_sync(&mut self, now: u64, from: &str, doc: &str, data: &[u8]) {
        let Ok(msg) = sync::Message::decode(data) else {
            self.stats.bad_sync += 1;
            return;
        };
        if !self.prepare(doc) {
            let (from, data) = (from.to_string(), data.to_vec());
            return self.park(doc, Parked::Sync { from, data });
        }
        self.apply_doc(doc);
        if !self.peers.contains_key(from) {
            return;
        }
        let Ok(state) = self.docs.get_or_create(doc) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        let (mut session, _) = peer
            .sessions
            .remove(doc)
            .unwrap_or_else(|| (sync::State::new(), now));
        let before = state.doc.get_heads();
        if state.doc.receive_sync_message(&mut session, msg).is_err() {
            self.stats.bad_sync += 1;
            self.docs.remove_if_empty(doc);
            return;
        }
        // Automerge never resends a change it has sent in this session. If the message that
        // carried it was lost (a failed send), the peer asks for it in `need` forever and the
        // session ping-pongs without end: send what the peer explicitly needs again.
        if let Some(need) = session.their_need.as_ref() {
            for hash in need {
                session.sent_hashes.remove(hash);
            }
        }
        let after = state.doc.get_heads();
        if after != before {
            let changes = state.doc.get_changes(&before);
            let hashes: Vec<[u8; 32]> = changes.iter().map(|c| c.hash().0).collect();
            let new: Vec<Vec<u8>> = changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
            state.last_change_ms = now;
            self.docs.refresh(doc);
            self.stats.repaired_changes += new.len() as u64;
            self.notify(doc.to_string(), after);
            // Acknowledge repaired changes to the peer they came from once durable, like
            // pushed ones, and route the acks of the nodes they are passed on to back the
            // same way: a write whose push was lost (dead connection, full queue, partition)
            // still meets its write concern once the change is everywhere.
            for hash in &hashes {
                let hash = ChangeHash(*hash);
                if self.ack_routes.get(&hash).is_none() {
                    self.ack_routes.insert(hash, from.to_string());
                }
            }
            self.batches
                .acks
                .entry((from.to_string(), doc.to_string()))
                .or_default()
                .extend(hashes);
            // Pass them on as if `from` had written them: the topology's routing then
            // spreads them away from `from` (into a healed ring's other side) and not back
            // to nodes that sync with `from` themselves (a mesh sends nothing on).
            self.accept_new(doc, from, Some(from), true, new);
        }
        let Ok(state) = self.docs.get_or_create(doc) else {
            return;
        };
        let reply = state.doc.generate_sync_message(&mut session);
        match reply {
            Some(reply) => {
                if let Some(p) = self.peers.get_mut(from) {
                    p.sessions.insert(doc.to_string(), (session, now));
                }
                self.stats.sync_sent += 1;
                self.effects.push(Effect::Send {
                    to: from.to_string(),
                    msg: Message::Sync {
                        doc: doc.to_string(),
                        data: ByteBuf::from(reply.encode()),
                    },
                });
            }
            None => self.docs.remove_if_empty(doc),
        }
    }
}
