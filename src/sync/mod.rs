//! automerge-repo clients over WebSocket: `GET /v1/sync` makes every node a sync server
//! for `@automerge/automerge-repo` (network protocol "1").
//!
//! - [`codec`]: the protocol's CBOR messages; [`doc_id`]: its document ids.
//! - [`connection`]: one client socket: the `join`/`peer` handshake, then its messages to
//!   and from the node ([`crate::node::Node`]'s client commands); [`pace`]: when it reads
//!   the client's next message.
//! - This file: what the connections of one node share ([`Server`]: the node's peer and
//!   storage ids, limits, counters, and who is connected, so that a client joining again
//!   replaces its earlier socket).
//!
//! An automerge-repo document id is a concordant document id: what clients write
//! replicates like any other change, and every change of a document reaches its clients on
//! every node. Must not touch the core, storage or the transport directly.

pub mod codec;
pub(crate) mod connection;
pub mod doc_id;
pub mod pace;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::config::Tuning;

/// Limits of the sync endpoint (from `[tuning]`), and the data limits the API shares.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Clients connected at once, at most; more are refused (503) before the upgrade.
    pub max_clients: usize,
    /// The largest WebSocket message accepted from a client, in bytes.
    pub max_message: usize,
    /// The limits on Automerge data from clients (inflate budget, caps on each change):
    /// their sync messages, and the bodies of `POST /v1/docs/{id}/automerge` (the API's
    /// other client of it, which also checks JSON ops against its change caps).
    pub data_limits: crate::limits::DataLimits,
    /// Messages queued for a client past which its own messages are not read
    /// (`sync_client_queue`).
    pub queue_messages: usize,
    /// Bytes queued for a client at most (`sync_client_queue_bytes`): its own messages are
    /// not read past half of it, and the node gives up on it past all of it.
    pub queue_bytes: usize,
    /// A socket that takes no write for this long is closed
    /// (`sync_client_write_timeout_ms`).
    pub write_timeout: std::time::Duration,
}

impl Default for SyncOptions {
    /// The limits of the default [`Tuning`].
    fn default() -> Self {
        SyncOptions::from(&Tuning::default())
    }
}

impl From<&Tuning> for SyncOptions {
    /// The limits `[tuning]` sets: `sync_clients`, `sync_message_bytes`,
    /// `sync_client_queue`, `sync_client_queue_bytes`, `sync_client_write_timeout_ms`, and
    /// the data limits (`max_inflated_bytes`, `max_inflate_ratio`, `max_op_bytes`,
    /// `max_change_ops`, `max_change_bytes`).
    fn from(t: &Tuning) -> Self {
        SyncOptions {
            max_clients: t.sync_clients,
            max_message: t.sync_message_bytes,
            data_limits: crate::limits::DataLimits::from(t),
            queue_messages: t.sync_client_queue,
            queue_bytes: t.sync_client_queue_bytes,
            write_timeout: std::time::Duration::from_millis(t.sync_client_write_timeout_ms),
        }
    }
}

/// Counters of the sync endpoint (exported as metrics).
#[derive(Debug, Default)]
pub struct SyncCounters {
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Messages received from clients.
    pub messages_in: AtomicU64,
    /// Messages sent to clients.
    pub messages_out: AtomicU64,
    /// Bytes received from clients (WebSocket payloads).
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Upgrades refused because the node had its maximum of clients.
    pub refused: AtomicU64,
    /// Connections closed for a malformed or refused message.
    pub errors: AtomicU64,
    /// Messages and requests refused by a limit (also the API's: the sync server is what
    /// its handlers and the client connections share).
    pub limits: crate::limits::LimitCounters,
    /// Connections closed because the client's socket took no write within the timeout.
    pub write_timeouts: AtomicU64,
    /// Requests and sockets refused for their token (the API's too).
    pub auth_refused: crate::tokens::Refusals,
}

impl SyncCounters {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What the client connections of one node share.
pub struct Server {
    /// This node's automerge-repo peer id.
    pub(crate) peer_id: String,
    /// This node's automerge-repo storage id.
    pub(crate) storage_id: String,
    pub(crate) options: SyncOptions,
    pub(crate) counters: SyncCounters,
    /// Connected clients by their peer id: a signal that closes the connection.
    joined: Mutex<HashMap<String, (u64, oneshot::Sender<()>)>>,
    next: AtomicU64,
}

impl Server {
    /// The sync server of node `node` of cluster `cluster`.
    pub fn new(cluster: &str, node: &str, options: SyncOptions) -> Server {
        Server {
            peer_id: format!("concordant-{cluster}-{node}"),
            storage_id: format!("concordant-storage-{cluster}-{node}"),
            options,
            counters: SyncCounters::default(),
            joined: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// The counters.
    pub fn counters(&self) -> &SyncCounters {
        &self.counters
    }

    /// Takes one of the client places; `None` if the node has its maximum.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Place> {
        let admitted = self
            .counters
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.options.max_clients).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        admitted.then(|| Place {
            server: Arc::clone(self),
        })
    }

    /// Records that the client `peer` joined on a new connection; an earlier connection of
    /// the same peer is told to close. Returns the connection's ticket for [`Server::left`]
    /// and the signal that closes it.
    pub(crate) fn joined(&self, peer: &str) -> (u64, oneshot::Receiver<()>) {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, old)) = joined.insert(peer.to_string(), (ticket, tx)) {
            let _ = old.send(());
        }
        (ticket, rx)
    }

    /// The connection with this ticket ended (a later one of the same peer stays).
    pub(crate) fn left(&self, peer: &str, ticket: u64) {
        let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
        if joined.get(peer).is_some_and(|(t, _)| *t == ticket) {
            joined.remove(peer);
        }
    }
}

/// One client place, given back when dropped.
pub(crate) struct Place {
    server: Arc<Server>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.server.counters.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_follow_the_tuning() {
        let tuning = Tuning {
            sync_clients: 7,
            sync_message_bytes: 4096,
            max_inflated_bytes: 5000,
            max_inflate_ratio: 3,
            max_op_bytes: 10,
            max_change_ops: 20,
            max_change_bytes: 30,
            sync_client_queue: 9,
            sync_client_queue_bytes: 1000,
            sync_client_write_timeout_ms: 1500,
            ..Tuning::default()
        };
        let options = SyncOptions::from(&tuning);
        assert_eq!((options.max_clients, options.max_message), (7, 4096));
        assert_eq!(
            (options.data_limits.max_bytes, options.data_limits.ratio),
            (5000, 3)
        );
        let change = options.data_limits.change;
        assert_eq!(
            (change.max_op_bytes, change.max_ops, change.max_bytes),
            (10, 20, 30)
        );
        assert_eq!((options.queue_messages, options.queue_bytes), (9, 1000));
        assert_eq!(options.write_timeout.as_millis(), 1500);
        let default = SyncOptions::default();
        let t = Tuning::default();
        assert_eq!(
            (default.max_clients, default.max_message),
            (t.sync_clients, t.sync_message_bytes)
        );
    }
}
