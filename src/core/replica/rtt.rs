//! Round-trip times of the links, as the driver measures them (QUIC's estimate of each
//! connection), and what they scale in the core, so that no constant tuned on loopback
//! decides how fast a slow link repairs:
//! - bulk repair keeps a round trip's worth of documents asked of a peer and not answered
//!   yet ([`CoreConfig::want_rate`] per ms of round trip), never fewer than
//!   [`CoreConfig::want_window`];
//! - a repair held for its first answer holds the document's other repairs for at least
//!   two round trips of the slowest link ([`CoreConfig::repair_hold_ms`] at least).
//!
//! The core reads no clock for them: the driver hands them in ([`Replica::set_peer_rtt`]).
//! A peer whose round trip is not known yet counts as a loopback one.

use super::Replica;
#[cfg(doc)]
use crate::core::CoreConfig;

impl Replica {
    /// The round-trip time of the link to `peer` is now `rtt_ms` (ignored for a peer
    /// without a link).
    pub fn set_peer_rtt(&mut self, peer: &str, rtt_ms: u64) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.rtt_ms = rtt_ms;
        }
    }

    /// The round-trip time last set for `peer`, ms (0 if unknown or not connected).
    pub fn peer_rtt(&self, peer: &str) -> u64 {
        self.peers.get(peer).map_or(0, |p| p.rtt_ms)
    }

    /// Documents asked of `peer` by bulk repair and not answered yet, at most: a round
    /// trip's worth at `want_rate` per ms, and never fewer than `want_window`.
    pub(super) fn want_window(&self, peer: &str) -> usize {
        let rtt = usize::try_from(self.peer_rtt(peer)).unwrap_or(usize::MAX);
        self.config
            .want_window
            .max(self.config.want_rate.saturating_mul(rtt))
    }

    /// How long a repair waiting for its first answer holds the other repairs of its
    /// document, ms: `repair_hold_ms`, or two round trips of the slowest link if longer.
    pub(super) fn repair_hold_ms(&self) -> u64 {
        let slowest = self.peers.values().map(|p| p.rtt_ms).max().unwrap_or(0);
        self.config.repair_hold_ms.max(slowest.saturating_mul(2))
    }
}
