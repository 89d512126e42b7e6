//! Replication lag of one link, for the cluster page and `/metrics`: the changes (and their
//! bytes) this node pushed to the peer that the peer has not yet confirmed, and how long the
//! oldest has waited; the receipts this node owes the peer for what it received; and how
//! many documents the last anti-entropy round with the peer found different.
//!
//! Counts are cumulative per connection (both ends start at zero when the link comes up), so
//! a receipt confirms everything up to its totals and a lost receipt is made good by the
//! next one. A receipt rides on the next push to the peer (`wire::Message::Push`), or goes
//! alone (`wire::Message::Receipt`) `core::peers::ALONE_AFTER_MS` after something new arrived
//! if no push went meanwhile (at most that, and the round trip, of a link's lag is only a
//! receipt on its way): a link with traffic both ways sends no message for its receipts.

use std::collections::VecDeque;

/// Pushes sent to, and received from, one peer on the current connection.
#[derive(Debug, Default)]
pub(crate) struct Lag {
    /// Changes and bytes pushed so far.
    sent: (u64, u64),
    /// Changes and bytes the peer confirmed receiving.
    confirmed: (u64, u64),
    /// After each push: the changes pushed so far, and when (for the age of the oldest).
    marks: VecDeque<(u64, u64)>,
    /// Changes and bytes received from the peer so far.
    received: (u64, u64),
    /// The totals of the last receipt sent to the peer.
    receipted: (u64, u64),
    /// Documents the last anti-entropy round with the peer found different (`None` until a
    /// round says).
    pub(crate) divergent: Option<u64>,
}

/// What a link's lag looks like now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagView {
    /// Changes pushed and not yet confirmed.
    pub changes: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Age of the oldest of them, ms (0 if none).
    pub oldest_ms: u64,
    /// Documents the last anti-entropy round found different, if one did.
    pub divergent: Option<u64>,
}

/// Pushes that never confirmed are remembered up to this many times, then the oldest
/// age is kept by merging (the count and bytes stay exact).
const MARKS: usize = 4096;

impl Lag {
    /// A push of `changes` changes of `bytes` bytes left for the peer at `now`.
    pub(crate) fn sent(&mut self, changes: u64, bytes: u64, now: u64) {
        if changes == 0 {
            return;
        }
        self.sent.0 += changes;
        self.sent.1 += bytes;
        if self.marks.len() >= MARKS {
            // Keep the oldest time; the newest totals cover both.
            self.marks.pop_back();
        }
        self.marks.push_back((self.sent.0, now));
    }

    /// The peer confirmed receiving this many changes and bytes in all.
    pub(crate) fn confirm(&mut self, changes: u64, bytes: u64) {
        self.confirmed = (changes.min(self.sent.0), bytes.min(self.sent.1));
        while self
            .marks
            .front()
            .is_some_and(|&(total, _)| total <= self.confirmed.0)
        {
            self.marks.pop_front();
        }
    }

    /// A push of `changes` changes of `bytes` bytes arrived from the peer.
    pub(crate) fn received(&mut self, changes: u64, bytes: u64) {
        self.received.0 += changes;
        self.received.1 += bytes;
    }

    /// The totals to confirm to the peer, if they moved since the last receipt.
    pub(crate) fn receipt_due(&mut self) -> Option<(u64, u64)> {
        if self.received == self.receipted {
            return None;
        }
        self.receipted = self.received;
        Some(self.received)
    }

    /// The last receipt may not have reached the peer: the next one is due even if
    /// nothing new arrives.
    pub(crate) fn receipt_lost(&mut self) {
        self.receipted = (0, 0);
    }

    /// The lag at `now`.
    pub(crate) fn view(&self, now: u64) -> LagView {
        LagView {
            changes: self.sent.0 - self.confirmed.0,
            bytes: self.sent.1 - self.confirmed.1,
            oldest_ms: self
                .marks
                .front()
                .map_or(0, |&(_, at)| now.saturating_sub(at)),
            divergent: self.divergent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfirmed_pushes_count_until_a_receipt_covers_them() {
        let mut lag = Lag::default();
        assert_eq!(lag.view(5), LagView::default());
        lag.sent(2, 200, 10);
        lag.sent(3, 300, 20);
        assert_eq!(
            lag.view(50),
            LagView {
                changes: 5,
                bytes: 500,
                oldest_ms: 40,
                divergent: None
            }
        );
        lag.confirm(2, 200);
        let v = lag.view(50);
        assert_eq!((v.changes, v.bytes, v.oldest_ms), (3, 300, 30));
        // A receipt never confirms more than was sent.
        lag.confirm(9, 9_000);
        assert_eq!(lag.view(60), LagView::default());
    }

    #[test]
    fn receipts_are_due_only_when_something_new_arrived() {
        let mut lag = Lag::default();
        assert_eq!(lag.receipt_due(), None);
        lag.received(1, 100);
        lag.received(2, 50);
        assert_eq!(lag.receipt_due(), Some((3, 150)));
        assert_eq!(lag.receipt_due(), None);
        lag.received(1, 10);
        assert_eq!(lag.receipt_due(), Some((4, 160)));
    }

    #[test]
    fn many_unconfirmed_pushes_keep_the_oldest_age() {
        let mut lag = Lag::default();
        for t in 0..(MARKS as u64 + 10) {
            lag.sent(1, 1, 100 + t);
        }
        let v = lag.view(10_000);
        assert_eq!(v.changes, MARKS as u64 + 10);
        assert_eq!(v.oldest_ms, 10_000 - 100);
    }
}
