//! Leaving the cluster with nothing lost: a node asked to remove itself (`remove-node`
//! sends the removal to the node itself when it answers) first drains. It takes no more
//! writes (503), and in rounds of [`ROUND_MS`] (on slow links [`ROUND_RTTS`] round trips
//! of its slowest link, so that a round's requests arrive within two rounds) it opens a
//! reconciliation with every
//! connected neighbour, whichever side usually opens: a neighbour compares and asks
//! (`Want`) for the documents that differ, and gets what it lacks. Once two rounds in a row
//! brought no such request and nothing waits to be sent, the neighbours hold everything
//! this node holds: it records its own removal, which spreads,
//! and its links close. If that does not happen within [`DRAIN_LIMIT_MS`] (no neighbour,
//! or repairs that do not settle), the removal is refused and the node serves again.
//!
//! With documents on fewer nodes than all (`replicas`), the node's own placement becomes
//! the one after its removal, where it holds nothing: every document it stores is handed
//! to its replicas there (see the core's `handoff`), and the drain also waits until each
//! is held durably by every one of them it is connected to (a mesh: all of them). So a
//! partition whose only copy was here (`replicas = 1`) has moved before the node leaves.

use serde_json::Value;
use tokio::sync::oneshot;

use super::Driver;
use crate::node::{Error, TopologyChange};
use crate::wire::Message;

/// One round of the drain on fast links, in ms.
const ROUND_MS: u64 = 500;

/// One round of the drain on slow links, in round trips of the slowest link: a
/// reconciliation descends its tree in a few round trips before the neighbour asks, and
/// the drain ends after two rounds without a request.
const ROUND_RTTS: u64 = 3;

/// The longest a drain may take before the removal is refused, in ms.
const DRAIN_LIMIT_MS: u64 = 30_000;

/// A drain under way.
pub(super) struct Drain {
    reply: oneshot::Sender<Result<Value, Error>>,
    until: u64,
    round_started: Option<u64>,
    /// A neighbour answered a reconciliation or sent a repair this round.
    heard: bool,
    quiet_rounds: u32,
}

impl Driver {
    /// Starts draining this node; `reply` gets the new topology once it has left.
    pub(super) fn start_drain(&mut self, reply: oneshot::Sender<Result<Value, Error>>) {
        tracing::info!(node = %self.id, "leaving the cluster: handing everything to the neighbours first");
        if let Some(m) = &self.membership {
            let mut after = m.clone();
            if after.propose_remove(&self.id, &self.id).is_ok()
                && after.topology().placement().is_some()
            {
                // Its handles forward to the documents' replicas after it, too.
                self.replica.set_router(Box::new(after.topology()));
                self.replica.set_leaving(true);
                self.topology.send_replace(after.topology());
            }
        }
        self.draining = Some(Drain {
            reply,
            until: self.now() + DRAIN_LIMIT_MS,
            round_started: None,
            heard: false,
            quiet_rounds: 0,
        });
    }

    /// The drain under way, if any, ends with `answer` (this node was removed meanwhile by
    /// another node: its removal is done all the same).
    pub(super) fn end_drain(&mut self, answer: Result<Value, Error>) {
        if let Some(d) = self.draining.take() {
            let _ = d.reply.send(answer);
        }
    }

    /// A drain that failed: the node serves again, placed as the live topology says.
    fn drain_failed(&mut self) {
        if let Some(m) = &self.membership {
            self.replica.set_router(Box::new(m.topology()));
            self.replica.set_leaving(false);
            self.topology.send_replace(m.topology());
        }
    }

    /// Notes a message from a peer while draining: a `Want` (the peer asks for changes of
    /// a document that differs) or a sync message (histories that diverged) means a
    /// neighbour may still lack something this node holds. Fingerprints and pushes do not:
    /// they flow whenever other nodes keep writing.
    pub(super) fn drain_heard(&mut self, msg: &Message) {
        if let Some(d) = self.draining.as_mut() {
            if matches!(msg, Message::Want(_) | Message::Sync { .. }) {
                d.heard = true;
            }
        }
    }

    /// One round of the drain, ms: [`ROUND_MS`], or [`ROUND_RTTS`] round trips of the
    /// slowest link if longer.
    fn drain_round_ms(&self) -> u64 {
        ROUND_MS.max(self.max_rtt_ms().saturating_mul(ROUND_RTTS))
    }

    /// At each tick: the next round, the end of the drain, or its failure.
    /// When the drain next has work (its next round or its limit), if one is under way.
    pub(super) fn drain_due(&self) -> Option<u64> {
        let d = self.draining.as_ref()?;
        let round = d.round_started.map_or(0, |at| at + self.drain_round_ms());
        Some(round.min(d.until))
    }

    pub(super) fn drain_tick(&mut self, now: u64) {
        let Some(d) = self.draining.as_mut() else {
            return;
        };
        if now >= d.until {
            self.drain_failed();
            if let Some(d) = self.draining.take() {
                let _ = d.reply.send(Err(Error::Topology(format!(
                    "node {:?} could not hand everything to a neighbour within {} s (no \
                     neighbour connected, or repairs that did not settle): it stays; remove \
                     it through another node to force it out",
                    self.id,
                    DRAIN_LIMIT_MS / 1000
                ))));
            }
            return;
        }
        let round_ms = self.drain_round_ms();
        let Some(d) = self.draining.as_mut() else {
            return;
        };
        if d.round_started.is_some_and(|at| now < at + round_ms) {
            return;
        }
        let neighbours: Vec<String> = self
            .transport
            .connected()
            .into_iter()
            .filter(|p| self.membership.as_ref().is_some_and(|m| m.is_live(p)))
            .collect();
        let idle = self.writes.len() == 0
            && neighbours
                .iter()
                .all(|p| self.replica.queued_bytes(p) == Some(0));
        let quiet = d.round_started.is_some()
            && !d.heard
            && idle
            && !neighbours.is_empty()
            && self.replica.handoff_settled();
        d.quiet_rounds = if quiet { d.quiet_rounds + 1 } else { 0 };
        if d.quiet_rounds >= 2 {
            if let Some(d) = self.draining.take() {
                let me = self.id.clone();
                let answer = self.change_topology(TopologyChange::Remove { id: me });
                let _ = d.reply.send(answer);
            }
            return;
        }
        d.round_started = Some(now);
        d.heard = false;
        for peer in neighbours {
            self.replica.reconcile_now(&peer);
        }
    }
}
