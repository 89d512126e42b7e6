//! Transport counters: lock-free per-peer traffic counters updated by the link tasks,
//! counters of refused connections by reason, and the plain-data snapshot returned by
//! `Transport::stats`. Counting only; no decisions are made here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(doc)]
use crate::wire::Message;
use crate::wire::KINDS;

/// Traffic counters of one peer, shared by its link tasks.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) dropped_full: AtomicU64,
    pub(crate) dropped_unencodable: AtomicU64,
    pub(crate) dial_failures: AtomicU64,
    /// The protocol version of the last connection admitted (0: none yet).
    pub(crate) protocol: AtomicU64,
    pub(crate) links_lost: AtomicU64,
    /// Messages written, by kind (index [`Message::kind_index`]).
    pub(crate) sent_by_kind: [AtomicU64; KINDS as usize],
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl PeerCounters {
    pub(crate) fn sent(&self, messages: u64, bytes: u64) {
        add(&self.messages_sent, messages);
        add(&self.bytes_sent, bytes);
    }

    /// A message of kind `kind` (its [`Message::kind_index`]) was encoded for the peer.
    pub(crate) fn sent_kind(&self, kind: usize) {
        if let Some(c) = self.sent_by_kind.get(kind) {
            add(c, 1);
        }
    }

    pub(crate) fn received(&self, bytes: u64) {
        add(&self.messages_received, 1);
        add(&self.bytes_received, bytes);
    }

    pub(crate) fn inc_dropped_full(&self) {
        add(&self.dropped_full, 1);
    }

    pub(crate) fn inc_dropped_unencodable(&self) {
        add(&self.dropped_unencodable, 1);
    }

    pub(crate) fn inc_dial_failures(&self) {
        add(&self.dial_failures, 1);
    }

    pub(crate) fn set_protocol(&self, version: u8) {
        self.protocol.store(u64::from(version), Ordering::Relaxed);
    }

    pub(crate) fn inc_links_lost(&self) {
        add(&self.links_lost, 1);
    }

    pub(crate) fn snapshot(
        &self,
        connected: bool,
        queue_depth: usize,
        rtt: Option<std::time::Duration>,
    ) -> PeerStats {
        PeerStats {
            connected,
            queue_depth,
            rtt,
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            messages_sent: get(&self.messages_sent),
            messages_received: get(&self.messages_received),
            dropped_full: get(&self.dropped_full),
            dropped_unencodable: get(&self.dropped_unencodable),
            dial_failures: get(&self.dial_failures),
            protocol: (connected && get(&self.protocol) != 0)
                .then(|| u8::try_from(get(&self.protocol)).unwrap_or(u8::MAX)),
            links_lost: get(&self.links_lost),
            sent_by_kind: std::array::from_fn(|k| get(&self.sent_by_kind[k])),
        }
    }
}

/// Why a connection was refused or closed by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    BadFrame,
    BadHello,
    WrongCluster,
    UnknownNode,
    CertMismatch,
    Tls,
    Busy,
}

/// Counters of refused connections, one per [`Reject`].
#[derive(Debug, Default)]
pub(crate) struct RejectCounters {
    bad_frame: AtomicU64,
    bad_hello: AtomicU64,
    wrong_cluster: AtomicU64,
    unknown_node: AtomicU64,
    cert_mismatch: AtomicU64,
    tls: AtomicU64,
    busy: AtomicU64,
}

impl RejectCounters {
    pub(crate) fn inc(&self, kind: Reject) {
        let c = match kind {
            Reject::BadFrame => &self.bad_frame,
            Reject::BadHello => &self.bad_hello,
            Reject::WrongCluster => &self.wrong_cluster,
            Reject::UnknownNode => &self.unknown_node,
            Reject::CertMismatch => &self.cert_mismatch,
            Reject::Tls => &self.tls,
            Reject::Busy => &self.busy,
        };
        add(c, 1);
    }

    pub(crate) fn snapshot(&self) -> RejectedStats {
        RejectedStats {
            bad_frame: get(&self.bad_frame),
            bad_hello: get(&self.bad_hello),
            wrong_cluster: get(&self.wrong_cluster),
            unknown_node: get(&self.unknown_node),
            cert_mismatch: get(&self.cert_mismatch),
            tls: get(&self.tls),
            busy: get(&self.busy),
        }
    }
}

/// Counters of one peer at the time of the snapshot. Bytes are the bytes of the link's
/// stream (frames, compressed when the link is), not UDP bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Whether a live connection exists.
    pub connected: bool,
    /// Messages waiting in the send queue.
    pub queue_depth: usize,
    /// The link's round-trip time as QUIC estimates it (smoothed), while connected.
    pub rtt: Option<std::time::Duration>,
    /// Stream bytes written to the peer.
    pub bytes_sent: u64,
    /// Stream bytes read from the peer.
    pub bytes_received: u64,
    /// Messages written to the peer.
    pub messages_sent: u64,
    /// Messages read from the peer.
    pub messages_received: u64,
    /// Messages refused by `send` because the queue was full.
    pub dropped_full: u64,
    /// Queued messages dropped because they could not be encoded (never expected: sizes
    /// are checked by `send`).
    pub dropped_unencodable: u64,
    /// Failed dial attempts.
    pub dial_failures: u64,
    /// The protocol version the connection speaks (while connected): older than
    /// [`crate::wire::PROTOCOL_VERSION`] with a peer of an older release.
    pub protocol: Option<u8>,
    /// Links to the peer that went down (each a Down event: the connection closed, timed
    /// out or was replaced), since start.
    pub links_lost: u64,
    /// Messages written to the peer, by kind (names in [`crate::wire::KIND_NAMES`]).
    pub sent_by_kind: [u64; KINDS as usize],
}

/// Connections refused or closed by this node, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectedStats {
    /// A malformed, truncated or oversized frame after the handshake.
    pub bad_frame: u64,
    /// A missing, malformed, late or unexpected Hello, a version mismatch, or a Hello
    /// naming another node than the one dialed.
    pub bad_hello: u64,
    /// A Hello naming another cluster.
    pub wrong_cluster: u64,
    /// A Hello naming a node that is not a member (or this node itself).
    pub unknown_node: u64,
    /// A Hello naming a node its certificate is not valid for.
    pub cert_mismatch: u64,
    /// A failed TLS handshake (unknown CA, bad certificate, wrong ALPN...), either side.
    pub tls: u64,
    /// An incoming connection refused unanswered because as many handshakes as allowed
    /// were already in progress.
    pub busy: u64,
}

/// Sums of the traffic counters over all peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    /// Stream bytes written (compressed when the link is).
    pub bytes_sent: u64,
    /// Stream bytes read (compressed when the link is).
    pub bytes_received: u64,
    /// Messages written.
    pub messages_sent: u64,
    /// Messages read.
    pub messages_received: u64,
    /// Messages refused because a queue was full.
    pub dropped_full: u64,
    /// Messages waiting in all send queues.
    pub queue_depth: usize,
    /// Messages written, by kind (names in [`crate::wire::KIND_NAMES`]).
    pub sent_by_kind: [u64; KINDS as usize],
}

/// A snapshot of the transport's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Every peer this transport has dialed or heard from, by id.
    pub peers: BTreeMap<String, PeerStats>,
    /// Sums over `peers`.
    pub totals: TrafficTotals,
    /// QUIC connections open at the endpoint, including ones being set up, refused or
    /// closed but not yet drained.
    pub connections: usize,
    /// Refused connections by reason.
    pub rejected: RejectedStats,
}

impl TransportStats {
    pub(crate) fn new(
        peers: BTreeMap<String, PeerStats>,
        connections: usize,
        rejected: RejectedStats,
    ) -> Self {
        let mut totals = TrafficTotals::default();
        for p in peers.values() {
            totals.bytes_sent += p.bytes_sent;
            totals.bytes_received += p.bytes_received;
            totals.messages_sent += p.messages_sent;
            totals.messages_received += p.messages_received;
            totals.dropped_full += p.dropped_full;
            totals.queue_depth += p.queue_depth;
            for (total, n) in totals.sent_by_kind.iter_mut().zip(p.sent_by_kind) {
                *total += n;
            }
        }
        TransportStats {
            peers,
            totals,
            connections,
            rejected,
        }
    }
}
