//! Round-trip times of the peer links: QUIC's estimate of each connection, read from the
//! transport at most once per [`REFRESH_MS`] while the driver works (and at the end of the
//! batch in which a link came up, so that a new link's first repairs already know it),
//! handed to the core (bulk repair's window, the hold of a repair; see
//! `core/replica/rtt.rs`) and used by the driver's own waits that span round trips: the
//! cluster view's wait for answers and a drain's rounds. An idle node reads nothing.

use std::collections::BTreeMap;

use super::Driver;

/// How often the round-trip times are read while the driver works, ms.
const REFRESH_MS: u64 = 1_000;

/// The round-trip times last read.
#[derive(Default)]
pub(super) struct Rtts {
    /// When they were read (driver ms); `None`: read at the end of this batch.
    at: Option<u64>,
    /// By peer, ms, for the peers with a link.
    by_peer: BTreeMap<String, u64>,
}

impl Driver {
    /// A link came up: read the round-trip times at the end of this batch.
    pub(super) fn rtts_stale(&mut self) {
        self.rtts.at = None;
    }

    /// Reads the round-trip times if due, and hands them to the core.
    pub(super) fn refresh_rtts(&mut self, now: u64) {
        if self
            .rtts
            .at
            .is_some_and(|at| now.saturating_sub(at) < REFRESH_MS)
        {
            return;
        }
        self.rtts.at = Some(now);
        let stats = self.transport.stats();
        self.rtts.by_peer = stats
            .peers
            .into_iter()
            .filter_map(|(peer, p)| {
                let ms = p.rtt?.as_millis();
                Some((peer, u64::try_from(ms).unwrap_or(u64::MAX)))
            })
            .collect();
        for (peer, ms) in &self.rtts.by_peer {
            self.replica.set_peer_rtt(peer, *ms);
        }
    }

    /// The longest round trip of the links, ms (0 without a link).
    pub(super) fn max_rtt_ms(&self) -> u64 {
        self.rtts.by_peer.values().copied().max().unwrap_or(0)
    }
}
