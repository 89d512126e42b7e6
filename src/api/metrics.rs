//! `GET /metrics`: the node's counters in the Prometheus text format, and the API's own
//! counters ([`ApiCounters`]).
//!
//! # Metrics
//! Gauges: `concordant_docs` (documents stored), `concordant_partitions` (partitions this
//! node replicates), `concordant_hints` (documents stored here but replicated elsewhere,
//! waiting to be handed to their replicas), `concordant_handoff_partitions{direction}`
//! (`in`: replicated here with documents still being fetched; `out`: stored here but
//! replicated elsewhere), `concordant_handed_off_total` (counter: documents dropped here
//! once every replica held them), `concordant_forwarding` (requests forwarded to a replica, waiting for
//! its answer), `concordant_fingerprint` (the top 53 bits
//! of the node's document-set fingerprint, `fingerprint >> 11`, so that the float64 of the
//! text format holds it exactly; equal on two nodes that hold the same documents at the same
//! heads), `concordant_docs_loaded` (documents in memory), `concordant_cache_bytes` (the
//! memory they hold, estimated), `concordant_pending_writes` (writes waiting for durability
//! or acknowledgements), `concordant_storage_queued_bytes` (bytes waiting to be written to
//! storage), `concordant_storage_failing` (1 while storage fails and writes are refused),
//! `concordant_peers`, `concordant_peers_connected`,
//! `concordant_peer_connected{peer}`, `concordant_peer_down{peer}`,
//! `concordant_peer_send_queue_messages{peer}` (messages waiting in the link's send queue),
//! `concordant_peer_lag_bytes{peer}`, `concordant_peer_unacked_changes{peer}`,
//! `concordant_peer_unacked_bytes{peer}`, `concordant_peer_unacked_oldest_ms{peer}`,
//! `concordant_peer_divergent_docs{peer}` (once a round with the peer said),
//! `concordant_quic_connections`.
//!
//! Counters: `concordant_writes_accepted_total` (local changes committed, through the API
//! or embedded), `concordant_api_writes_total` (writes answered 200 over HTTP),
//! `concordant_remote_changes_applied_total`, `concordant_apply_batches_total`,
//! `concordant_duplicate_changes_total`, `concordant_bad_input_total{source,kind}` (source
//! `core`: kinds `bad_change`, `bad_sync`, `unexpected_message`; `transport`: refused
//! connections by kind `bad_frame`, `bad_hello`, `wrong_cluster`, `unknown_node`,
//! `cert_mismatch`, `tls`; `api`: refused requests by HTTP status, 4xx),
//! `concordant_api_responses_total{status}` (every answer by status),
//! `concordant_peer_bytes_sent_total{peer}`, `concordant_peer_bytes_received_total{peer}`,
//! `concordant_peer_messages_sent_total{peer}`, `concordant_peer_messages_received_total{peer}`
//! (stream bytes, compressed when the link is, and messages),
//! `concordant_peer_dropped_messages_total{peer}` (refused by a full send queue),
//! `concordant_peer_dial_failures_total{peer}`, `concordant_peer_links_lost_total{peer}`,
//! `concordant_pushes_dropped_total`, `concordant_messages_dropped_total{kind}` (messages a
//! full link could not take, by kind; acknowledgements among them are sent again at the
//! `tick_ms` later), `concordant_messages_too_large_total{kind}` (messages over the wire's
//! message limit, never sent; the log names their documents),
//! `concordant_too_large_docs` (documents named by them), `concordant_doc_loads_total`
//! (documents read from storage, off the driver's task), `concordant_driver_wakeups_total`
//! and `concordant_driver_timer_wakeups_total` (the driver sleeps until an input or a
//! timeout it asked for),
//! `concordant_doc_evictions_total`, `concordant_doc_load_errors_total`,
//! `concordant_reconcile_rounds_total`, `concordant_reconcile_messages_total`,
//! `concordant_reconcile_bytes_total`, `concordant_repair_wants_total` (documents asked of a
//! peer), `concordant_repair_changes_sent_total`, `concordant_anti_entropy_repairs_total`
//! (sync sessions started for diverged histories),
//! `concordant_anti_entropy_repaired_changes_total`,
//! `concordant_sync_messages_sent_total`, `concordant_acks_sent_total`,
//! `concordant_persist_failures_total` (persist batches storage failed to make durable),
//! `concordant_docs_lent_total` (documents lent for heavy work off the event loop).
//!
//! automerge-repo clients ([`render_sync`]): `concordant_sync_clients` (gauge: connected),
//! `concordant_sync_client_queued_bytes` (gauge: waiting for them),
//! `concordant_sync_client_messages_received_total`,
//! `concordant_sync_client_messages_sent_total`, `concordant_sync_client_bytes_received_total`,
//! `concordant_sync_client_bytes_sent_total`, `concordant_sync_clients_refused_total`
//! (over `sync_clients`), `concordant_sync_client_errors_total` (closed for bad input),
//! `concordant_sync_clients_dropped_total` (too far behind),
//! `concordant_sync_client_changes_total`.
//!
//! Limits (`render_limits`): `concordant_api_connections` (open),
//! `concordant_api_connections_max`, `concordant_watch_streams` (open),
//! `concordant_limits_refused_total{limit}`: `connections` (503 over `api_connections`),
//! `header_timeout` (no request head within `api_header_timeout_ms`), `watch` (503 over
//! `watch_streams`), `sync_clients` (503 over `sync_clients`), `sync_client_queue_bytes`
//! (clients disconnected past their queue's bytes), `sync_client_write_timeout` (clients
//! disconnected because their socket took no write within `sync_client_write_timeout_ms`),
//! `inflated_bytes` (Automerge data from a client over its inflate budget), `op_bytes`,
//! `change_ops` and `change_bytes` (JSON ops or Automerge data from a client with a change
//! over `max_op_bytes`, `max_change_ops` or `max_change_bytes`; see [`crate::limits`]).
//!
//! # Replication lag
//! Per peer, the lag is what this node has and has not yet handed to the peer's link:
//! `concordant_peer_lag_bytes{peer}` is the bytes of changes queued for the peer in the
//! replication core (0 when the queue drained), and `concordant_peer_send_queue_messages`
//! the messages waiting to be written to its connection. While a peer is not connected
//! nothing is queued for it (`concordant_peer_connected` is 0): anti-entropy repairs the
//! difference when it comes back. Pushes dropped because a queue was full
//! (`concordant_pushes_dropped_total`, `concordant_peer_dropped_messages_total`) are also
//! left to anti-entropy: a rising count means peers lag behind this node.
//!
//! Past the link, `concordant_peer_unacked_changes` and `_bytes` count what was pushed to
//! the peer on this connection and not yet confirmed by its receipts (carried by its next
//! push back, or sent alone 1 s after something arrived), `_oldest_ms` the age of the
//! oldest of it; these are the lag figures of the cluster page.
//! `concordant_peer_divergent_docs` is the number of documents the last anti-entropy round
//! with the peer found different (0: they agree).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, HttpError};
use crate::node::{NodeStatus, PeerStatus};
use crate::sync::SyncCounters;
use crate::transport::PeerStats;

/// The API's own counters.
#[derive(Debug, Default)]
pub struct ApiCounters {
    writes: AtomicU64,
    responses: Mutex<BTreeMap<u16, u64>>,
}

impl ApiCounters {
    /// A write was answered 200.
    pub fn write_accepted(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// An answer with this status was sent.
    pub fn response(&self, status: u16) {
        if let Ok(mut map) = self.responses.lock() {
            *map.entry(status).or_insert(0) += 1;
        }
    }

    /// Writes answered 200.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Answers sent, by status.
    pub fn responses(&self) -> BTreeMap<u16, u64> {
        self.responses.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Middleware: counts every answer by status.
pub(crate) async fn count_responses(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state.counters.response(response.status().as_u16());
    response
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, HttpError> {
    let status = state
        .node
        .status()
        .await
        .map_err(|e| HttpError::from_node("", e))?;
    let text = render(&status, &state.counters)
        + &render_sync(&status, state.sync.counters())
        + &render_limits(&status, state.sync.counters(), &state.limits);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Prometheus text for the caps on what clients hold (see [`super::limits`]).
pub(crate) fn render_limits(
    s: &NodeStatus,
    sync: &SyncCounters,
    limits: &super::limits::Limits,
) -> String {
    let mut m = Metrics::default();
    let open = limits.connections.used() + limits.health.used();
    m.gauge(
        "concordant_api_connections",
        "HTTP API connections open (WebSockets and streams included).",
        &[],
        open as u64,
    );
    m.gauge(
        "concordant_api_connections_max",
        "HTTP API connections served at once, at most (tuning.api_connections).",
        &[],
        limits.connections.max() as u64,
    );
    m.gauge(
        "concordant_watch_streams",
        "Watch streams (server-sent events) open.",
        &[],
        limits.watches.used() as u64,
    );
    let mut refused = limits.refusals();
    for (limit, n) in sync.limits.snapshot() {
        *refused.entry(limit).or_insert(0) += n;
    }
    let always = ["connections", "header_timeout", "watch", "sync_clients"];
    for limit in always.into_iter().chain(crate::limits::DATA_LABELS) {
        refused.entry(limit).or_insert(0);
    }
    refused.insert("sync_client_queue_bytes", s.sync_clients_dropped);
    refused.insert(
        "sync_client_write_timeout",
        sync.write_timeouts.load(Ordering::Relaxed),
    );
    for (limit, n) in refused {
        m.counter(
            "concordant_limits_refused_total",
            "Requests, messages or connections refused by a limit, by limit.",
            &[("limit", limit)],
            n,
        );
    }
    m.out
}

/// Prometheus text for the automerge-repo client endpoint (`GET /v1/sync`).
pub fn render_sync(s: &NodeStatus, sync: &SyncCounters) -> String {
    let mut m = Metrics::default();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    m.gauge(
        "concordant_sync_clients",
        "automerge-repo WebSocket clients connected.",
        &[],
        sync.clients.load(Ordering::Relaxed) as u64,
    );
    m.gauge(
        "concordant_sync_client_queued_bytes",
        "Bytes queued for automerge-repo clients (each at most tuning.sync_client_queue_bytes).",
        &[],
        s.sync_client_queued_bytes as u64,
    );
    for (name, help, value) in [
        (
            "concordant_sync_client_messages_received_total",
            "Messages received from automerge-repo clients.",
            load(&sync.messages_in),
        ),
        (
            "concordant_sync_client_messages_sent_total",
            "Messages sent to automerge-repo clients.",
            load(&sync.messages_out),
        ),
        (
            "concordant_sync_client_bytes_received_total",
            "WebSocket payload bytes received from clients.",
            load(&sync.bytes_in),
        ),
        (
            "concordant_sync_client_bytes_sent_total",
            "WebSocket payload bytes sent to clients.",
            load(&sync.bytes_out),
        ),
        (
            "concordant_sync_clients_refused_total",
            "Client upgrades refused because the node had its maximum of clients.",
            load(&sync.refused),
        ),
        (
            "concordant_sync_client_errors_total",
            "Client connections closed for a malformed or refused message.",
            load(&sync.errors),
        ),
        (
            "concordant_sync_clients_dropped_total",
            "Clients disconnected because they fell too far behind.",
            s.sync_clients_dropped,
        ),
        (
            "concordant_sync_client_changes_total",
            "Changes received from clients (new to this node).",
            s.core.client_changes,
        ),
    ] {
        m.counter(name, help, &[], value);
    }
    for (reason, n) in sync.auth_refused.snapshot() {
        m.counter(
            "concordant_auth_refused_total",
            "Requests and sync sockets refused for their token, by reason.",
            &[("reason", reason)],
            n,
        );
    }
    m.out
}

/// Prometheus text for a node status and the API counters.
pub fn render(s: &NodeStatus, api: &ApiCounters) -> String {
    let mut m = Metrics::default();
    let c = &s.core;
    m.gauge(
        "concordant_docs",
        "Documents on this node.",
        &[],
        s.docs as u64,
    );
    m.gauge(
        "concordant_partitions",
        "Partitions this node replicates.",
        &[],
        s.partitions as u64,
    );
    for (direction, n) in [("in", s.partitions_in), ("out", s.partitions_out)] {
        m.gauge(
            "concordant_handoff_partitions",
            "Partitions moving: in (replicated here, documents still being fetched), out \
             (stored here, replicated elsewhere).",
            &[("direction", direction)],
            n as u64,
        );
    }
    m.counter(
        "concordant_handed_off_total",
        "Documents dropped here after every replica confirmed holding them.",
        &[],
        s.handed_off,
    );
    m.gauge(
        "concordant_hints",
        "Documents stored here but replicated elsewhere (hinted writes, partitions moved \
         away), waiting for their replicas.",
        &[],
        s.hints as u64,
    );
    m.gauge(
        "concordant_forwarding",
        "Requests for documents this node does not replicate, forwarded and waiting for \
         the replica's answer.",
        &[],
        s.forwarding as u64,
    );
    m.gauge(
        "concordant_docs_loaded",
        "Documents in memory.",
        &[],
        s.docs_loaded as u64,
    );
    m.gauge(
        "concordant_fingerprint",
        "The top 53 bits of the document-set fingerprint (fingerprint >> 11, exact as a \
         float64): equal on two nodes exactly when they hold the same documents at the same \
         heads. /v1/status has all 64 bits in hex.",
        &[],
        s.fingerprint >> 11,
    );
    m.gauge(
        "concordant_cache_bytes",
        "The memory the documents in memory hold, estimated from their data and counts of \
         changes, ops and objects.",
        &[],
        s.cache_bytes as u64,
    );
    m.gauge(
        "concordant_pending_writes",
        "Writes waiting for durability or acknowledgements.",
        &[],
        s.pending_writes as u64,
    );
    m.gauge(
        "concordant_storage_queued_bytes",
        "Bytes waiting to be written to storage (queued, or held after a failed commit).",
        &[],
        s.storage_queued_bytes as u64,
    );
    m.gauge(
        "concordant_storage_failing",
        "1 while storage fails (the last commit failed) and writes are refused.",
        &[],
        u64::from(s.storage_failing.is_some()),
    );
    m.gauge(
        "concordant_peers",
        "Other nodes of the topology.",
        &[],
        s.peers.len() as u64,
    );
    let connected = s.connected_peers().len();
    m.gauge(
        "concordant_peers_connected",
        "Peers with a live connection.",
        &[],
        connected as u64,
    );
    m.gauge(
        "concordant_quic_connections",
        "QUIC connections open at the endpoint (also ones being set up or drained).",
        &[],
        s.transport.connections as u64,
    );
    m.counter(
        "concordant_writes_accepted_total",
        "Local changes committed (API and embedded writes).",
        &[],
        c.local_changes,
    );
    m.counter(
        "concordant_api_writes_total",
        "Writes answered 200 over HTTP.",
        &[],
        api.writes(),
    );
    m.counter(
        "concordant_remote_changes_applied_total",
        "Changes from peers applied (new to this node).",
        &[],
        c.remote_changes,
    );
    m.counter(
        "concordant_apply_batches_total",
        "Batched Automerge apply calls.",
        &[],
        c.apply_batches,
    );
    m.counter(
        "concordant_duplicate_changes_total",
        "Changes received that this node already had.",
        &[],
        c.duplicates,
    );

    let bad = "concordant_bad_input_total";
    let bad_help = "Bad input refused, by interface (core, transport, api) and kind.";
    let r = &s.transport.rejected;
    let mut bad_rows: Vec<(&str, String, u64)> = vec![
        ("core", "bad_change".into(), c.bad_changes),
        ("core", "bad_sync".into(), c.bad_sync),
        ("core", "unexpected_message".into(), c.unexpected_messages),
        ("transport", "bad_frame".into(), r.bad_frame),
        ("transport", "bad_hello".into(), r.bad_hello),
        ("transport", "wrong_cluster".into(), r.wrong_cluster),
        ("transport", "unknown_node".into(), r.unknown_node),
        ("transport", "cert_mismatch".into(), r.cert_mismatch),
        ("transport", "tls".into(), r.tls),
        ("transport", "busy".into(), r.busy),
    ];
    let responses = api.responses();
    for (status, n) in &responses {
        if (400..500).contains(status) {
            bad_rows.push(("api", status.to_string(), *n));
        }
    }
    for (source, kind, n) in &bad_rows {
        m.counter(
            bad,
            bad_help,
            &[("source", source), ("kind", kind.as_str())],
            *n,
        );
    }
    for (status, n) in &responses {
        m.counter(
            "concordant_api_responses_total",
            "HTTP answers by status.",
            &[("status", &status.to_string())],
            *n,
        );
    }

    type PeerValue = fn(&PeerStatus, &PeerStats) -> u64;
    let per_peer: [(&str, &str, &str, PeerValue); 14] = [
        (
            "concordant_peer_connected",
            "gauge",
            "1 if a live connection to the peer exists.",
            |p, _| u64::from(p.connected),
        ),
        (
            "concordant_peer_down",
            "gauge",
            "1 if the peer is believed down.",
            |p, _| u64::from(p.down),
        ),
        (
            "concordant_peer_lag_bytes",
            "gauge",
            "Bytes of changes queued for the peer, not yet handed to its link.",
            |p, _| p.queued_bytes as u64,
        ),
        (
            "concordant_peer_unacked_changes",
            "gauge",
            "Changes pushed to the peer on this connection that it has not yet confirmed.",
            |p, _| p.unacked_changes,
        ),
        (
            "concordant_peer_unacked_bytes",
            "gauge",
            "Bytes of the changes pushed to the peer and not yet confirmed.",
            |p, _| p.unacked_bytes,
        ),
        (
            "concordant_peer_unacked_oldest_ms",
            "gauge",
            "Age in ms of the oldest change pushed to the peer and not yet confirmed.",
            |p, _| p.unacked_oldest_ms,
        ),
        (
            "concordant_peer_send_queue_messages",
            "gauge",
            "Messages waiting in the peer's send queue.",
            |_, t| t.queue_depth as u64,
        ),
        (
            "concordant_peer_bytes_sent_total",
            "counter",
            "Bytes written to the peer's stream (frames, compressed when the link is).",
            |_, t| t.bytes_sent,
        ),
        (
            "concordant_peer_bytes_received_total",
            "counter",
            "Bytes read from the peer's stream (frames, compressed when the link is).",
            |_, t| t.bytes_received,
        ),
        (
            "concordant_peer_messages_sent_total",
            "counter",
            "Messages written to the peer.",
            |_, t| t.messages_sent,
        ),
        (
            "concordant_peer_messages_received_total",
            "counter",
            "Messages read from the peer.",
            |_, t| t.messages_received,
        ),
        (
            "concordant_peer_dropped_messages_total",
            "counter",
            "Messages refused because the peer's send queue was full.",
            |_, t| t.dropped_full,
        ),
        (
            "concordant_peer_dial_failures_total",
            "counter",
            "Failed dial attempts to the peer.",
            |_, t| t.dial_failures,
        ),
        (
            "concordant_peer_links_lost_total",
            "counter",
            "Links to the peer that went down (closed, timed out or replaced).",
            |_, t| t.links_lost,
        ),
    ];
    for (name, kind, help, value) in per_peer {
        for p in &s.peers {
            let t = s.transport.peers.get(&p.id).cloned().unwrap_or_default();
            m.sample(name, kind, help, &[("peer", &p.id)], value(p, &t));
        }
    }
    for p in &s.peers {
        if let Some(n) = p.divergent {
            m.sample(
                "concordant_peer_divergent_docs",
                "gauge",
                "Documents the last anti-entropy round with the peer found different.",
                &[("peer", &p.id)],
                n,
            );
        }
    }

    m.counter(
        "concordant_pushes_dropped_total",
        "Changes not pushed because a peer's queue was full (left to anti-entropy).",
        &[],
        c.pushes_dropped,
    );
    for (kind, n) in &c.sends_dropped {
        m.counter(
            "concordant_messages_dropped_total",
            "Messages a peer's full link could not take, by kind (acks are sent again).",
            &[("kind", kind)],
            *n,
        );
    }
    for (kind, n) in &c.sends_refused {
        m.counter(
            "concordant_messages_too_large_total",
            "Messages over the wire's message limit, never sent, by kind (the log names \
             their documents).",
            &[("kind", kind)],
            *n,
        );
    }
    m.gauge(
        "concordant_too_large_docs",
        "Documents named by a message over the wire's message limit since start-up.",
        &[],
        c.refused_docs,
    );
    for (name, help, value) in [
        (
            "concordant_doc_loads_total",
            "Documents read from storage into memory.",
            c.doc_loads,
        ),
        (
            "concordant_driver_wakeups_total",
            "Times the node's driver woke (any input or timeout).",
            s.wakeups,
        ),
        (
            "concordant_driver_timer_wakeups_total",
            "Times the node's driver woke for a timeout it asked for.",
            s.timer_wakeups,
        ),
        (
            "concordant_doc_evictions_total",
            "Documents dropped from memory.",
            c.doc_evictions,
        ),
        (
            "concordant_doc_load_errors_total",
            "Documents that could not be read from storage.",
            c.doc_load_errors,
        ),
        (
            "concordant_reconcile_rounds_total",
            "Reconciliations opened with a peer.",
            c.reconcile_rounds,
        ),
        (
            "concordant_reconcile_messages_total",
            "Reconciliation messages sent (fingerprints, bucket items, wants), alone or riding on pushes.",
            c.reconcile_messages,
        ),
        (
            "concordant_reconcile_bytes_total",
            "Encoded bytes of reconciliation messages sent.",
            c.reconcile_bytes,
        ),
        (
            "concordant_repair_wants_total",
            "Documents asked of a peer by bulk repair.",
            c.wants_sent,
        ),
        (
            "concordant_repair_changes_sent_total",
            "Changes sent to peers by bulk repair.",
            c.repair_changes_sent,
        ),
    ] {
        m.counter(name, help, &[], value);
    }
    m.counter(
        "concordant_anti_entropy_repairs_total",
        "Sync sessions started for documents whose histories diverged.",
        &[],
        c.repairs,
    );
    m.counter(
        "concordant_anti_entropy_repaired_changes_total",
        "Changes obtained through the sync protocol.",
        &[],
        c.repaired_changes,
    );
    m.counter(
        "concordant_sync_messages_sent_total",
        "Automerge sync messages sent.",
        &[],
        c.sync_sent,
    );
    m.counter(
        "concordant_acks_sent_total",
        "Durable acknowledgements sent for remote changes.",
        &[],
        c.acks_sent,
    );
    m.counter(
        "concordant_persist_failures_total",
        "Persist batches storage failed to make durable (their changes are written again).",
        &[],
        c.persist_failures,
    );
    m.counter(
        "concordant_docs_lent_total",
        "Documents lent for heavy work (large changes, merges, reads, pushes, client sync \
         messages) off the node's event loop.",
        &[],
        c.lent,
    );
    m.out
}

/// Writes samples, with `# HELP` and `# TYPE` once per family (samples of a family must
/// be written together).
#[derive(Default)]
struct Metrics {
    out: String,
    last_family: String,
}

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, "gauge", help, labels, value);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, "counter", help, labels, value);
    }

    fn sample(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], v: u64) {
        if self.last_family != name {
            let _ = writeln!(self.out, "# HELP {name} {help}");
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
            self.last_family = name.to_string();
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
