//! When one client's connection reads the client's next message: not while the node has
//! much queued for the client (`sync_client_queue` messages, or half of
//! `sync_client_queue_bytes`), nor while [`REQUEST_WINDOW`] of its `request`s wait for their
//! answer. A burst of requests (an app opening many documents after a reconnect) is then
//! answered at the pace the client reads, instead of piling up in the node: the client waits
//! in its socket, and the node gives up on it only past the queue's bytes.
//!
//! Every `request` is answered (a `sync`, or `doc-unavailable` after the peers were asked),
//! so the window empties; should answers stop coming, requests unanswered for [`STALL`] no
//! longer hold reads back.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::SyncOptions;
use crate::core::ClientMsg;

/// Requests of one client waiting for their answer, at most, before its next message is
/// read.
pub const REQUEST_WINDOW: usize = 256;

/// Time without any answer after which waiting requests no longer hold reads back.
pub const STALL: Duration = Duration::from_secs(5);

/// The reading pace of one client.
#[derive(Debug)]
pub(crate) struct Pace {
    max_messages: usize,
    max_bytes: usize,
    /// Documents requested and not answered yet.
    waiting: HashSet<String>,
    /// The last answer (or the first request after none waited).
    progress: Instant,
}

impl Pace {
    pub(crate) fn new(options: &SyncOptions) -> Pace {
        Pace {
            max_messages: options.queue_messages.max(1),
            max_bytes: (options.queue_bytes / 2).max(1),
            waiting: HashSet::new(),
            progress: Instant::now(),
        }
    }

    /// The client sent a `request` for `doc`.
    pub(crate) fn requested(&mut self, doc: &str) {
        if self.waiting.is_empty() {
            self.progress = Instant::now();
        }
        self.waiting.insert(doc.to_string());
    }

    /// The node sends `msg` to the client.
    pub(crate) fn sending(&mut self, msg: &ClientMsg) {
        let doc = match msg {
            ClientMsg::Sync { doc, .. } | ClientMsg::Unavailable { doc } => doc,
            ClientMsg::Ephemeral(_) => return,
        };
        if self.waiting.remove(doc) {
            self.progress = Instant::now();
        }
    }

    /// True if the client's next message may be read, with `queued` (messages, bytes)
    /// waiting for it.
    pub(crate) fn may_read(&self, (messages, bytes): (usize, usize)) -> bool {
        messages < self.max_messages && bytes < self.max_bytes && !self.held_by_requests()
    }

    /// True if reads wait for answers to requests.
    pub(crate) fn held_by_requests(&self) -> bool {
        self.waiting.len() >= REQUEST_WINDOW
    }

    /// When waiting requests stop holding reads back.
    pub(crate) fn stalls_at(&self) -> Instant {
        self.progress + STALL
    }

    /// No answer came for [`STALL`]: the waiting requests are forgotten.
    pub(crate) fn stalled(&mut self) {
        tracing::debug!(
            requests = self.waiting.len(),
            "sync client: requests unanswered for {STALL:?}; reading on"
        );
        self.waiting.clear();
        self.progress = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tuning;

    fn pace() -> Pace {
        let tuning = Tuning {
            sync_client_queue: 10,
            sync_client_queue_bytes: 1000,
            ..Tuning::default()
        };
        Pace::new(&SyncOptions::from(&tuning))
    }

    #[test]
    fn reads_wait_while_much_is_queued() {
        let p = pace();
        assert!(p.may_read((0, 0)));
        assert!(p.may_read((9, 499)));
        assert!(!p.may_read((10, 0)));
        assert!(!p.may_read((0, 500)));
    }

    #[test]
    fn reads_wait_for_answers_to_a_window_of_requests() {
        let mut p = pace();
        for i in 0..REQUEST_WINDOW {
            assert!(p.may_read((0, 0)));
            p.requested(&format!("d{i}"));
        }
        // A request again for a waiting document does not count twice.
        p.requested("d0");
        assert!(!p.may_read((0, 0)));
        assert!(p.held_by_requests());
        p.sending(&ClientMsg::Sync {
            doc: "other".into(),
            data: vec![1],
        });
        assert!(!p.may_read((0, 0)));
        p.sending(&ClientMsg::Unavailable { doc: "d7".into() });
        assert!(p.may_read((0, 0)));
        p.requested("d7");
        assert!(!p.may_read((0, 0)));
        assert!(p.stalls_at() > Instant::now());
        p.stalled();
        assert!(p.may_read((0, 0)));
    }
}
