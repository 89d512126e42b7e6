//! The replica's timers, asked for rather than ticked: [`Replica::poll_timeout`] says when
//! the replica next has work that no input brings (as quinn-proto's `poll_timeout`), and
//! [`Replica::handle_timeout`] does everything due by then. An idle replica with peers
//! wakes once per anti-entropy period (but the larger id of two nodes, which never opens
//! a round); one without peers and without pending work never.
//!
//! What is timed: the periodic reconciliation (with one peer per period, in turn), a
//! reconciliation asked for by a failed send or a lost link (with its backoff),
//! acknowledgements a full link could not take (sent `retry_ms` later), receipts of pushed
//! changes that no push carried (sent alone `peers::ALONE_AFTER_MS` later), a periodic
//! round's fingerprints that no push carried (sent on a push of their own as long after
//! they were due), sync sessions without a message for `session_timeout_ms`, repairs held
//! for an answer (`repair_hold_ms`, longer on slow links: see `rtt`), client requests
//! unanswered for `unavailable_after_ms`, changes of failed persist batches, and the
//! handoff of documents stored here but replicated elsewhere (once per anti-entropy period
//! while there are any).

use super::Replica;
use crate::core::Effect;
use crate::wire::Message;

impl Replica {
    /// The earliest time (ms, on the clock of the `now`s given) at which
    /// [`Replica::handle_timeout`] has work; `None` while nothing is timed. Any input may
    /// move it: ask again after each batch of inputs. A time already past means at once.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut at = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        if self.opens_periodically() {
            at(self
                .last_anti_entropy
                .saturating_add(self.config.anti_entropy_ms));
        }
        for p in self.peers.values() {
            // A peer still being asked for documents is reconciled once that ends (an
            // input), not on a timer.
            if let Some(t) = p.reconcile_at().filter(|_| !p.wants_queued()) {
                at(t);
            }
            if let Some(t) = p.owed_at {
                at(t);
            }
            if let Some(t) = p.receipt_at {
                at(t);
            }
            if let Some(t) = p.ride.alone_at() {
                at(t);
            }
            if let Some(last) = p.sessions.values().map(|(_, last)| *last).min() {
                at(last.saturating_add(self.config.session_timeout_ms));
            }
        }
        if let Some(t) = self.gate.oldest_wait() {
            at(t.saturating_add(self.repair_hold_ms()));
        }
        if let Some(t) = self.clients.oldest_request() {
            at(t.saturating_add(self.config.unavailable_after_ms));
        }
        if let Some(t) = self.retry.due_at() {
            at(t);
        }
        if let Some(t) = self.handoff_due() {
            at(t);
        }
        if let Some(t) = self.fill_due() {
            at(t);
        }
        if let Some(t) = self.forget_due() {
            at(t);
        }
        next
    }

    /// Does everything timed that is due at `now` (see [`Replica::poll_timeout`]); calling
    /// it early, or more often, does no harm.
    pub fn handle_timeout(&mut self, now: u64) {
        self.now = self.now.max(now);
        let timeout = self.config.session_timeout_ms;
        for peer in self.peers.values_mut() {
            peer.sessions
                .retain(|_, (_, last)| now.saturating_sub(*last) < timeout);
        }
        self.expire_client_requests(now);
        self.retry_failed(now);
        self.handoff_tick(now);
        self.fill_tick(now);
        self.forget_known(now);
        for (id, peer) in self.peers.iter_mut() {
            if peer.owed_at.is_some_and(|t| t <= now) {
                peer.owed_at = None;
                let owed = peer.take_owed_acks();
                if !owed.is_empty() {
                    self.effects.push(Effect::Send {
                        to: id.clone(),
                        msg: Message::Ack(owed),
                    });
                }
            }
            if peer.receipt_at.is_some_and(|t| t <= now) {
                peer.receipt_at = None;
                if let Some((changes, bytes)) = peer.take_receipt() {
                    self.effects.push(Effect::Send {
                        to: id.clone(),
                        msg: Message::Receipt { changes, bytes },
                    });
                }
            }
        }
        for doc in self.gate.expire(now, self.repair_hold_ms()) {
            self.release_held(now, &doc);
        }
        self.ride(now);
        let periodic = now.saturating_sub(self.last_anti_entropy) >= self.config.anti_entropy_ms;
        let turn = if periodic {
            self.last_anti_entropy = now;
            self.peer_in_turn()
        } else {
            None
        };
        // A peer still being asked for documents is not reconciled again until that ends.
        // One whose sends failed, or every one after a link to another was lost, is
        // reconciled at once, then less and less often while that goes on (see
        // `Peer::reconcile_due`). A node filling partitions it took over reconciles with
        // every peer each period (the rounds with their other replicas fill them, see
        // `handoff::filled_from`).
        let every = periodic && !self.filling().is_empty();
        let max_wait = self.config.anti_entropy_ms;
        let due: Vec<(String, bool)> = self
            .peers
            .iter_mut()
            .filter_map(|(id, p)| {
                let asked = p.reconcile_due(now);
                if !(turn.as_ref() == Some(id) || every || asked) || p.wants_queued() {
                    return None;
                }
                if asked {
                    p.reconcile_opened(now, max_wait);
                }
                Some((id.clone(), asked || every))
            })
            .collect();
        // A round in turn rides on pushes; one asked for, or of a node filling partitions,
        // opens at once.
        for (peer, at_once) in due {
            if at_once {
                self.open_reconcile(&peer);
            } else {
                self.open_routine(now, &peer);
            }
        }
    }
}
