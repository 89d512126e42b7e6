//! The QUIC transport: one endpoint per node, mutual TLS against the cluster CA, one
//! connection per pair of peers, reconnects with backoff, bounded per-peer send queues.
//!
//! It owns sockets, TLS and connection lifecycles, and turns frames into
//! [`TransportEvent`]s. It does not decide what to send or to whom (that is the core's and
//! the node driver's business) and it does not interpret messages beyond the handshake:
//! the byte format belongs to [`crate::wire`].
//!
//! # Protocol
//! - Mutual TLS 1.3: each side presents a certificate signed by the cluster CA; the dialer
//!   checks that the acceptor's certificate is valid for the node id it dialed (the TLS
//!   server name is [`crate::certs::node_dns_name`] of the id). Both offer the ALPN ids of
//!   the protocol versions they speak ([`crate::wire::alpns`]): the handshake picks the
//!   newest both speak, which every message of the connection is then encoded in, and a
//!   peer with none in common fails the handshake (logged as such).
//! - The dialer opens a unidirectional stream and sends [`Message::Hello`]. The acceptor
//!   checks cluster, version, membership and that the client certificate is valid for the
//!   claimed id; it refuses by closing the connection (application error code and reason,
//!   nothing else sent). Only then does it open its own stream and answer with its Hello.
//! - After the Hellos, each side sends its messages as frames on its one long-lived stream.
//!   When both Hellos offer [`crate::wire::DEFLATE`], everything after the Hello on each
//!   stream is one deflate stream, flushed after every batch of frames (`link.rs` writes
//!   it, `frames.rs` reads it). Traffic counters count the bytes on the stream.
//! - One connection per pair: a node dials only while it has no link to the peer. When both
//!   dial at once, the node with the smaller id refuses the other's connection (waiting for
//!   its own attempt first) and keeps the one it dialed; the refused one never carried a
//!   message and causes no event. Any other new connection replaces an existing one, which is
//!   stale (its dialer only dialed because it had lost it): the owner sees Down then Up.
//!
//! # Delivery
//! Messages to one peer arrive in the order they were queued, once at most: a message
//! queued when the link drops is lost (the queue belongs to one Up..Down period), and
//! `send` refuses at once when the queue is full. Repair is the caller's job (anti-entropy
//! on Up and periodically). Received messages wait for room in the event channel, which
//! slows the sending peer down through QUIC flow control.
//!
//! # Files
//! - `tls.rs`: rustls and quinn configuration.
//! - `frames.rs`: reading frames from a stream.
//! - `stats.rs`: counters and the [`TransportStats`] snapshot.
//! - `state.rs`: the shared state and the operations of the handle.
//! - `peers.rs`: the per-peer records.
//! - `admit.rs`: which connection is a peer's link; Up and Down events.
//! - `dial.rs`: the dial loop with backoff and the dialer's handshake.
//! - `accept.rs`: the accept loop and the acceptor's handshake.
//! - `link.rs`: the reader and writer task of one connection.

mod accept;
mod admit;
mod dial;
mod frames;
mod link;
mod peers;
mod state;
mod stats;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::certs::TlsIdentity;
use crate::wire::Message;

pub use state::code;
use state::Inner;
pub use stats::{PeerStats, RejectedStats, TrafficTotals, TransportStats};

/// Everything a transport needs to run.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Cluster id; a peer whose Hello names another cluster is refused.
    pub cluster: String,
    /// This node's id; its certificate must be valid for it (see
    /// [`crate::certs::node_dns_name`]).
    pub node: String,
    /// UDP address to bind (port 0 picks a free port; see [`Transport::local_addr`]).
    pub listen: SocketAddr,
    /// Cluster CA, this node's certificate chain and key.
    pub identity: TlsIdentity,
    /// Node ids allowed to connect (and to be dialed). This node's own id may be listed.
    pub members: Vec<String>,
    /// QUIC keep-alive interval; must be below `idle_timeout`.
    pub keep_alive: Duration,
    /// A connection silent for this long is considered dead.
    pub idle_timeout: Duration,
    /// Smallest delay between two dial attempts (also the delay before redialing a link
    /// that dropped).
    pub reconnect_min: Duration,
    /// Largest delay between two dial attempts.
    pub reconnect_max: Duration,
    /// Capacity of each peer's send queue, in messages.
    pub send_queue: usize,
    /// Offer deflate in the Hello: a link is compressed (one deflate stream per direction,
    /// flushed after every batch of frames) when both ends offer it. On by default.
    pub compress: bool,
}

impl TransportConfig {
    /// A configuration with the default timings of [`crate::config::Tuning`] (keep-alive
    /// 250 ms, idle timeout 1 s, reconnect backoff 50 ms to 2 s, 1024 queued messages per
    /// peer) and compression offered.
    pub fn new(
        cluster: impl Into<String>,
        node: impl Into<String>,
        listen: SocketAddr,
        identity: TlsIdentity,
        members: Vec<String>,
    ) -> Self {
        // The timings are `[tuning]` settings: their defaults live in `Tuning`.
        let t = crate::config::Tuning::default();
        TransportConfig {
            cluster: cluster.into(),
            node: node.into(),
            listen,
            identity,
            members,
            keep_alive: Duration::from_millis(t.keep_alive_ms),
            idle_timeout: Duration::from_millis(t.idle_timeout_ms),
            reconnect_min: Duration::from_millis(t.reconnect_min_ms),
            reconnect_max: Duration::from_millis(t.reconnect_max_ms),
            send_queue: t.send_queue,
            compress: t.compress_links,
        }
    }
}

/// What the transport reports to its owner, in order per peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// The first connection to this peer completed its handshake.
    Up(String),
    /// The last connection to this peer is gone.
    Down(String),
    /// One dial attempt to this peer failed and it has no link (another attempt follows
    /// after a backoff).
    DialFailed(String),
    /// A message arrived from a connected peer.
    Message {
        /// The peer's node id (authenticated by its certificate).
        from: String,
        /// The message.
        msg: Message,
    },
}

/// Errors that prevent a transport from starting. Nothing is left running after one.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the QUIC endpoint on {addr}: {source}")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The certificates or key could not be turned into a TLS configuration.
    #[error("TLS configuration of node {node}: {reason}")]
    Tls {
        /// This node's id.
        node: String,
        /// What rustls or quinn refused.
        reason: String,
    },
    /// A field of the [`TransportConfig`] is unusable.
    #[error("invalid transport configuration, field `{field}`: {reason}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

/// Why [`Transport::send`] did not queue a message. The message is dropped either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No live connection to that peer.
    NotConnected,
    /// The peer's send queue is full; the caller repairs later (anti-entropy).
    Full,
    /// The message is over [`crate::wire::MAX_MESSAGE`]: no peer would take it.
    TooLarge {
        /// Its encoded size.
        len: usize,
        /// The documents it carries.
        docs: Vec<String>,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotConnected => f.write_str("peer not connected"),
            SendError::Full => f.write_str("peer send queue full"),
            SendError::TooLarge { len, docs } => write!(
                f,
                "message of {len} bytes for documents {docs:?} is over the limit of {} bytes",
                crate::wire::MAX_MESSAGE
            ),
        }
    }
}

impl std::error::Error for SendError {}

/// A running QUIC endpoint with its connections. Cheap to clone; every clone drives the same
/// endpoint. Call [`Transport::shutdown`] to stop it; dropping the last clone closes the
/// endpoint abruptly.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    _guard: Arc<CloseOnDrop>,
}

/// Closes the endpoint when the last [`Transport`] handle goes away (tasks only hold
/// `Inner`, so they cannot keep it alive forever).
struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close_now();
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node", &self.inner.settings.node)
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

impl Transport {
    /// Binds the endpoint and starts accepting connections. Events go to `events`; the
    /// transport waits when it is full (backpressure on the peers).
    pub async fn bind(
        cfg: TransportConfig,
        events: mpsc::Sender<TransportEvent>,
    ) -> Result<Transport, TransportError> {
        let inner = Inner::bind(cfg, events)?;
        let endpoint = inner.endpoint().ok_or_else(|| TransportError::Config {
            field: "listen",
            reason: "endpoint closed while starting".into(),
        })?;
        inner.spawn(accept::accept_loop(inner.clone(), endpoint));
        Ok(Transport {
            _guard: Arc::new(CloseOnDrop(inner.clone())),
            inner,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The link to `peer` is wanted: dial it (with capped exponential backoff and jitter
    /// between `reconnect_min` and `reconnect_max`) until connected, and redial whenever it
    /// drops, until [`Transport::disconnect`]. Idempotent; a new `addr` replaces the old one.
    /// Emits [`TransportEvent::DialFailed`] after each failed attempt. A peer that is not a
    /// member, or this node itself, is ignored (logged).
    pub fn connect(&self, peer: &str, addr: SocketAddr) {
        self.inner.connect(peer, addr);
    }

    /// The link is no longer wanted from our side: stop dialing and close the connection if
    /// we dialed it. A connection the peer dialed stays while the peer wants it.
    pub fn disconnect(&self, peer: &str) {
        self.inner.disconnect(peer);
    }

    /// Replaces the set of members (the live topology changed): a node no longer in it is
    /// refused from now on and its connection, whoever dialed it, is closed.
    pub fn set_members(&self, members: Vec<String>) {
        self.inner.set_members(members);
    }

    /// Queues `msg` on the peer's bounded send queue without waiting.
    pub fn send(&self, peer: &str, msg: Message) -> Result<(), SendError> {
        self.inner.send(peer, msg)
    }

    /// Peers with a live connection, sorted.
    pub fn connected(&self) -> Vec<String> {
        self.inner.connected()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.inner.stats()
    }

    /// Closes every connection gracefully (queued frames are flushed first, waiting at most
    /// about a second) and stops the endpoint. No events are emitted afterwards. Once every
    /// handle is dropped the UDP port is free again.
    pub async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}
