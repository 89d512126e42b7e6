//! What a replica keeps per connected peer: the changes waiting to be pushed to it (its
//! dirty documents) and what rides on them, the Automerge sync sessions in progress with
//! it, the documents to ask it for (bulk repair), and whether it is due a reconciliation.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use automerge::sync;
use serde_bytes::ByteBuf;

use super::lag::Lag;
use crate::wire::{Ack, DocChanges, Fingerprints, Message, BATCH_BUDGET};

/// Key of one group of outgoing changes: (document, origin, want_ack).
type GroupKey = (String, String, bool);

/// A document to ask a peer for.
pub(crate) struct Wanted {
    pub(crate) doc: String,
    /// The ask answers one of the peer's.
    pub(crate) reply: bool,
    /// The peer's heads digest of it, where known: once ours equals it, nothing is asked.
    pub(crate) theirs: Option<u64>,
}

/// A routine anti-entropy round's messages to one peer, which ride on pushes (see
/// `replica::repair`).
#[derive(Default)]
pub(crate) struct Ride {
    /// A routine round's opening is due.
    open: bool,
    /// Fingerprints that came on pushes from the peer, to answer on a push.
    answer: Vec<Fingerprints>,
    /// When what waits goes on a push of its own, if no push to the peer carried it by
    /// then.
    alone_at: Option<u64>,
    /// Fingerprints made (at the time of the push) for the next push to carry.
    pub(crate) ready: Vec<Fingerprints>,
}

impl Ride {
    /// Whether anything waits for a push.
    pub(crate) fn waits(&self) -> bool {
        self.open || !self.answer.is_empty()
    }

    /// `f` came on a push at `now`: answered on a push too, unless [`RIDING_ANSWERS`]
    /// wait already (then it is returned, to answer at once).
    pub(crate) fn answer_later(&mut self, f: Fingerprints, now: u64) -> Option<Fingerprints> {
        if self.answer.len() >= RIDING_ANSWERS {
            return Some(f);
        }
        self.answer.push(f);
        self.alone_at
            .get_or_insert(now.saturating_add(ALONE_AFTER_MS));
        None
    }

    /// The routine round's opening is not due after all (a round opens at once instead).
    pub(crate) fn cancel_open(&mut self) {
        self.open = false;
        if self.answer.is_empty() {
            self.alone_at = None;
        }
    }

    /// What waits, taken: whether an opening is due, and the fingerprints to answer.
    pub(crate) fn take(&mut self) -> (bool, Vec<Fingerprints>) {
        self.alone_at = None;
        (
            std::mem::take(&mut self.open),
            std::mem::take(&mut self.answer),
        )
    }

    /// When what waits goes on a push of its own, if anything waits.
    pub(crate) fn alone_at(&self) -> Option<u64> {
        self.alone_at.filter(|_| self.waits())
    }

    /// A routine round's opening is due at `now`.
    pub(crate) fn open_later(&mut self, now: u64) {
        self.open = true;
        self.alone_at
            .get_or_insert(now.saturating_add(ALONE_AFTER_MS));
    }
}

/// How long what can ride on a push to a peer (a receipt, a routine round's fingerprints)
/// waits for one, ms, before it goes alone (a receipt as a `Receipt`, fingerprints on a
/// push without changes): on a link with traffic both ways it costs no message of its own.
pub(crate) const ALONE_AFTER_MS: u64 = 1_000;

/// Fingerprints from a peer waiting for a push to answer on, at most (an honest peer has a
/// round or two in progress with this node; what a peer sends beyond is answered at once).
const RIDING_ANSWERS: usize = 16;

/// A peer with a live link.
pub(crate) struct Peer {
    outbox: BTreeMap<GroupKey, Vec<ByteBuf>>,
    outbox_bytes: usize,
    /// Automerge sync sessions, by document, with the time of the last message.
    pub(crate) sessions: HashMap<String, (sync::State, u64)>,
    /// A push to this peer was dropped: reconcile with it as soon as
    /// [`Peer::reconcile_due`] allows.
    pub(crate) needs_reconcile: bool,
    /// Wait between reconciliations asked for by failures, in ms (0: none lately), and the
    /// time before which none opens.
    reconcile_backoff: u64,
    reconcile_after: u64,
    /// Documents to ask this peer for, with whether the ask answers one of its own, and
    /// the same documents as a set (each is queued once).
    wants: VecDeque<Wanted>,
    wanted: HashSet<String>,
    /// When the link came up.
    pub(crate) since: u64,
    /// Pushes not yet confirmed, receipts owed, divergence (see `core::lag`).
    pub(crate) lag: Lag,
    /// Wants started once their document's heads were read, sent with the next pump.
    pub(crate) ready_wants: Vec<crate::wire::Want>,
    /// When acknowledgements owed are sent again (see `timers`).
    pub(crate) owed_at: Option<u64>,
    /// When a receipt of the changes received is sent alone (see `timers`), unless a push
    /// to the peer carries it first.
    pub(crate) receipt_at: Option<u64>,
    /// A routine anti-entropy round's messages waiting for a push to the peer.
    pub(crate) ride: Ride,
    /// Acknowledgements that could not be sent, sent again at `owed_at`.
    owed_acks: Vec<Ack>,
    /// The link's round-trip time, ms, as the driver last measured it (0: not yet).
    pub(crate) rtt_ms: u64,
}

/// Acknowledged hashes kept for resending to one peer, at most (a peer that cannot take
/// them for that long has its writers' write concerns time out instead).
const OWED_ACKS: usize = 100_000;

/// The shortest wait between two reconciliations asked for by failed sends, in ms.
pub(crate) const RECONCILE_RETRY_MIN_MS: u64 = 100;

/// What to do with a document wanted of a peer (see `Replica::want_step`).
pub(crate) enum WantStep {
    /// Ask for it now (its repair is started).
    Send(crate::wire::Want),
    /// Not at all (asked already, or repaired meanwhile).
    Skip,
    /// Later (another peer is asked first).
    Later(Wanted),
    /// Once its heads are read.
    Read(Wanted),
}

impl Peer {
    pub(crate) fn new(since: u64) -> Self {
        Peer {
            outbox: BTreeMap::new(),
            outbox_bytes: 0,
            sessions: HashMap::new(),
            needs_reconcile: false,
            reconcile_backoff: 0,
            reconcile_after: 0,
            wants: VecDeque::new(),
            wanted: HashSet::new(),
            since,
            lag: Lag::default(),
            owed_acks: Vec::new(),
            ready_wants: Vec::new(),
            owed_at: None,
            receipt_at: None,
            ride: Ride::default(),
            rtt_ms: 0,
        }
    }

    /// Whether a reconciliation asked for by a failure (`needs_reconcile`) may open at
    /// `now`. The first opens at once; while failures keep asking, each waits twice as long
    /// as the one before, up to `max` ms (the anti-entropy period), so a peer whose queue
    /// stays full is not sent a digest every time. A peer that asked nothing for a whole
    /// wait starts again from no wait.
    pub(crate) fn reconcile_due(&mut self, now: u64) -> bool {
        if !self.needs_reconcile {
            if now >= self.reconcile_after.saturating_add(self.reconcile_backoff) {
                self.reconcile_backoff = 0;
            }
            return false;
        }
        now >= self.reconcile_after
    }

    /// A reconciliation asked for by a failure opens at `now`: the next one waits longer.
    pub(crate) fn reconcile_opened(&mut self, now: u64, max: u64) {
        self.reconcile_backoff = self
            .reconcile_backoff
            .saturating_mul(2)
            .clamp(RECONCILE_RETRY_MIN_MS, max.max(RECONCILE_RETRY_MIN_MS));
        self.reconcile_after = now.saturating_add(self.reconcile_backoff);
    }

    /// When a reconciliation asked for by a failure may open, if one is asked for.
    pub(crate) fn reconcile_at(&self) -> Option<u64> {
        self.needs_reconcile.then_some(self.reconcile_after)
    }

    /// Queues one change; returns false (and drops it) if the outbox is over `limit` bytes,
    /// in which case the peer is marked for reconciliation.
    pub(crate) fn queue(
        &mut self,
        doc: &str,
        origin: &str,
        want_ack: bool,
        bytes: &[u8],
        limit: usize,
    ) -> bool {
        if self.outbox_bytes + bytes.len() > limit {
            self.needs_reconcile = true;
            return false;
        }
        self.outbox_bytes += bytes.len();
        self.outbox
            .entry((doc.to_string(), origin.to_string(), want_ack))
            .or_default()
            .push(ByteBuf::from(bytes.to_vec()));
        true
    }

    /// Drains the outbox into as few Push messages as fit `budget` bytes each (at most
    /// [`BATCH_BUDGET`]; one change larger than that goes alone), the last carrying the
    /// receipt owed to the peer, if one is, and the fingerprints made ready to ride.
    pub(crate) fn drain_pushes(&mut self, now: u64, budget: usize) -> Vec<Message> {
        let budget = budget.clamp(1, BATCH_BUDGET);
        let mut messages = Vec::new();
        let mut current: Vec<DocChanges> = Vec::new();
        let mut size = 0usize;
        for ((doc, origin, want_ack), changes) in std::mem::take(&mut self.outbox) {
            let mut group = DocChanges {
                doc,
                origin,
                changes: Vec::new(),
                want_ack,
            };
            for change in changes {
                let len = change.len() + 16;
                if size + len > budget && size > 0 {
                    if !group.changes.is_empty() {
                        let next = DocChanges {
                            doc: group.doc.clone(),
                            origin: group.origin.clone(),
                            changes: Vec::new(),
                            want_ack,
                        };
                        current.push(std::mem::replace(&mut group, next));
                    }
                    messages.push(Message::push(std::mem::take(&mut current)));
                    size = 0;
                }
                size += len;
                group.changes.push(change);
            }
            if !group.changes.is_empty() {
                size += group.doc.len() + group.origin.len() + 8;
                current.push(group);
            }
        }
        if !current.is_empty() {
            messages.push(Message::push(current));
        }
        for m in &messages {
            if let Message::Push { groups, .. } = m {
                let (changes, bytes) = push_totals(groups);
                self.lag.sent(changes, bytes, now);
            }
        }
        // The receipt owed to the peer and the fingerprints made ready ride on the last
        // push, instead of going alone.
        if let Some(Message::Push {
            receipt,
            fingerprints,
            ..
        }) = messages.last_mut()
        {
            *receipt = self.take_receipt();
            *fingerprints = std::mem::take(&mut self.ride.ready);
        }
        self.outbox_bytes = 0;
        messages
    }

    /// A push without changes for the fingerprints made ready to ride when no changes wait
    /// to be pushed (with the receipt owed, if one is).
    pub(crate) fn lone_push(&mut self) -> Option<Message> {
        if self.ride.ready.is_empty() || self.has_pushes() {
            return None;
        }
        Some(Message::Push {
            groups: Vec::new(),
            receipt: self.take_receipt(),
            fingerprints: std::mem::take(&mut self.ride.ready),
        })
    }

    /// The receipt owed to the peer, if one is, for a message about to go: none is then
    /// owed alone.
    pub(crate) fn take_receipt(&mut self) -> Option<(u64, u64)> {
        let receipt = self.lag.receipt_due();
        if receipt.is_some() {
            self.receipt_at = None;
        }
        receipt
    }

    /// Drops queued changes of `doc` that turned out to be invalid.
    pub(crate) fn forget(&mut self, doc: &str, rejected: &[Vec<u8>]) {
        for ((d, _, _), changes) in self.outbox.iter_mut() {
            if d == doc {
                changes.retain(|c| {
                    let bad = rejected.iter().any(|r| r.as_slice() == c.as_slice());
                    if bad {
                        self.outbox_bytes -= c.len();
                    }
                    !bad
                });
            }
        }
        self.outbox.retain(|_, changes| !changes.is_empty());
    }

    /// Keeps acknowledgements that could not be sent, to send at `owed_at`.
    pub(crate) fn owe_acks(&mut self, acks: Vec<Ack>) {
        let held: usize = self.owed_acks.iter().map(|a| a.hashes.len()).sum();
        let mut room = OWED_ACKS.saturating_sub(held);
        for mut ack in acks {
            ack.hashes.truncate(room);
            room -= ack.hashes.len();
            if !ack.hashes.is_empty() {
                self.owed_acks.push(ack);
            }
        }
    }

    /// The acknowledgements owed, taken.
    pub(crate) fn take_owed_acks(&mut self) -> Vec<Ack> {
        std::mem::take(&mut self.owed_acks)
    }

    /// Queues `doc` to be asked of this peer, unless it is queued already.
    pub(crate) fn want(&mut self, wanted: Wanted) {
        if self.wanted.insert(wanted.doc.clone()) {
            self.wants.push_back(wanted);
        }
    }

    /// The next document to ask this peer for.
    pub(crate) fn next_want(&mut self) -> Option<Wanted> {
        let wanted = self.wants.pop_front()?;
        self.wanted.remove(&wanted.doc);
        Some(wanted)
    }

    /// Documents queued to be asked of this peer.
    pub(crate) fn wants_len(&self) -> usize {
        self.wants.len()
    }

    pub(crate) fn wants_queued(&self) -> bool {
        !self.wants.is_empty()
    }

    pub(crate) fn outbox_bytes(&self) -> usize {
        self.outbox_bytes
    }

    /// Whether changes wait to be pushed (the next `drain_pushes` makes a push).
    pub(crate) fn has_pushes(&self) -> bool {
        !self.outbox.is_empty()
    }
}

/// The changes, and their bytes, of one push.
pub(crate) fn push_totals(groups: &[DocChanges]) -> (u64, u64) {
    let changes = groups.iter().map(|g| g.changes.len() as u64).sum();
    let bytes = groups
        .iter()
        .flat_map(|g| &g.changes)
        .map(|c| c.len() as u64)
        .sum();
    (changes, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes_of(m: &Message) -> usize {
        match m {
            Message::Push { groups, .. } => groups.iter().map(|g| g.changes.len()).sum(),
            _ => 0,
        }
    }

    #[test]
    fn pushes_are_cut_at_the_batch_budget() {
        let mut peer = Peer::new(0);
        for i in 0..100u8 {
            assert!(peer.queue("doc", "n1", false, &[i; 84], usize::MAX));
        }
        // 100 bytes per change (84 + 16 of overhead): 10 per 1,000-byte push.
        let small = peer.drain_pushes(5, 1_000);
        assert_eq!(small.len(), 10);
        assert!(small.iter().all(|m| changes_of(m) == 10));
        for i in 0..100u8 {
            assert!(peer.queue("doc", "n1", false, &[i; 84], usize::MAX));
        }
        let large = peer.drain_pushes(6, 1 << 20);
        assert_eq!(large.len(), 1);
        assert_eq!(changes_of(&large[0]), 100);
        assert_eq!(peer.lag.view(6).changes, 200);
    }
}
