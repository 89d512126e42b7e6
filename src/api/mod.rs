//! The HTTP API of one node (axum): JSON endpoints over a [`Node`], server-sent events for
//! document changes, Prometheus metrics, the bearer-token check and the body limit.
//!
//! Owns: the router, the mapping of node errors to HTTP statuses and `{"error": ...}`
//! bodies, the API's own counters. Must not touch: the replication core, storage or the
//! transport (it only calls the [`Node`] handle), nor parse ops itself ([`crate::ops`] does).
//!
//! # Endpoints
//! | method and path | answer |
//! | --- | --- |
//! | `GET /` | the live cluster page (self-contained HTML; see [`cluster`]); needs no token, the data behind it does |
//! | `GET /v1/cluster` | every node's view gathered over the peer links, links (configured and healed) up or down, recent events (see [`crate::cluster`]) |
//! | `GET /v1/health` | `{"status":"ok","node":id}`; never needs the token; 503 `{"error","status":"storage-failing"}` while storage fails (recovers by itself), 503 `{"error","status":"failed"}` once the node stopped working, 503 `"leaving"` while `remove-node` drains it, 503 `"removed"` once it is out of the live topology |
//! | `GET /v1/status` | node, cluster, topology, `version`, `protocol`, peers (`id`, `protocol`, `connected`, `linked`, `down`, `healed`, `queued_bytes`, `unacked_changes`, `unacked_bytes`, `unacked_oldest_ms`, `divergent`, traffic), `docs`, `fingerprint` (16 hex digits: equal on two nodes exactly when they hold the same documents at the same heads), `pending_writes`, `storage` (`queued_bytes`, `failing`), `membership` (`member`, `leaving`, `removed`), core counters |
//! | `GET /v1/docs` | the documents durable here, in id order: `[{"id","heads":[hex...]}]` streamed; with `?limit=N[&after=ID]` one page `{"docs":[...],"next":<id or null>}` (see [`listing`]) |
//! | `POST /v1/docs` | creates an empty document under a fresh automerge-repo id: `{"id","url"}` |
//! | `GET /v1/sync` | WebSocket for automerge-repo clients (see [`crate::sync`]); 503 past `sync_clients` |
//! | `GET /v1/topology` | the live topology: nodes in order, removed nodes, version, digest |
//! | `POST /v1/topology/nodes` | `{"id","peer","api","links"?}`: a node joins; 409 if invalid |
//! | `DELETE /v1/topology/nodes/{id}` | the node leaves; 409 if invalid |
//! | `GET /v1/docs/{id}` | the document as JSON; 404 if absent; `?at=<hex heads, comma-separated>` as it was then (400 for heads it lacks) |
//! | `GET /v1/docs/{id}/history` | its changes newest first, `?limit=N` (default 100, at most 10,000): `[{"hash","actor","seq","time","message","origin"}]` |
//! | `POST /v1/docs/{id}/ops` | `{"heads","acked_by"}`; 400 malformed, 409 does not fit, 504 write concern not met, 500 outcome uncertain (storage failed), 503 storage failing or busy |
//! | `GET /v1/docs/{id}/automerge` | `application/octet-stream` saved document; 404 if absent |
//! | `POST /v1/docs/{id}/automerge` | merges the raw body: `{"new_changes":n,"heads":[...]}`; 400 if not Automerge data |
//! | `GET /v1/docs/{id}/watch` | server-sent events `change` with `{"doc","heads"}` per change; 503 past `watch_streams` |
//! | `GET /metrics` | Prometheus text format (see [`metrics`]) |
//! | `POST /v1/revocations` | admin: `{"jti"}` or `{"sub"}` revokes user tokens on every node: `{"revocations": n}` |
//!
//! # Decisions
//! - Document ids are `[A-Za-z0-9_.~-]{1,256}` after percent-decoding; anything else is 400.
//! - Every error, including unknown paths (404), wrong methods (405), a missing or wrong
//!   token (401) and an oversized body (413), answers `{"error": "<what and why>"}`.
//! - An integer `ack` larger than the number of other nodes of the topology is 400 (it can
//!   never be met); `timeout_ms` above [`MAX_TIMEOUT_MS`] is 400.
//! - A write-concern timeout is 504 `{"error","heads","acked_by"}`: the change is durable
//!   here and keeps replicating.
//! - A write whose commit to storage failed is 500 and says its outcome is uncertain: it
//!   is applied in memory on this node and may have replicated, but it is not durable here
//!   (see [`crate::node`]). While storage fails, or while more than the node's bound waits
//!   to be written, writes are 503 with the reason and change nothing.
//! - The admin token is compared in constant time; only `GET /v1/health` and `/` are
//!   exempt. `GET /v1/sync` also takes it as `?token=<token>` (browsers cannot set headers
//!   on a WebSocket), and refuses a wrong one with 401 before any upgrade. User tokens
//!   (JWTs verified with `[api] token_key`) reach the document endpoints and `/v1/sync`
//!   within their scope, 403 elsewhere (see `auth.rs`).
//! - Connections, their timeouts and watch streams are capped (see [`limits`] and
//!   `conns.rs`): past a cap the answer is 503 with `Retry-After`, never a hung accept, and
//!   `GET /v1/health` is still answered on a reserve of connections.
//! - A watcher that falls behind skips the events it missed (each event carries the full
//!   heads, so the next one is current); the node never waits for a watcher. Watch streams
//!   end when the server shuts down, so shutdown never waits for them.

mod auth;
mod cluster;
mod conn_io;
mod conns;
mod error;
mod handlers;
pub mod limits;
mod listing;
pub mod metrics;
mod revocations;
mod sync;
mod topology;
mod watch;
mod watch_cap;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::node::Node;

pub use crate::doc_id::{is_valid_doc_id, MAX_DOC_ID};
pub use error::HttpError;
pub use limits::ConnLimits;

/// The default largest request body accepted, in bytes (16 MiB); larger bodies get 413.
pub const DEFAULT_BODY_LIMIT: usize = 16 << 20;

/// The longest write-concern wait a request may ask for (`timeout_ms`), in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Errors of the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listening address could not be bound.
    #[error("cannot bind the HTTP API at {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The node did not answer while the server started (it has stopped).
    #[error("HTTP API: {0}")]
    Node(#[from] crate::node::Error),
    /// Serving failed.
    #[error("HTTP API at {addr}: {source}")]
    Serve {
        /// The bound address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// The admin token: if set, every request but `GET /v1/health` needs
    /// `Authorization: Bearer <token>` (this one, or a user token).
    pub token: Option<String>,
    /// Verifies user tokens (`[api] token_key`; see [`crate::tokens`]); without it, only
    /// the admin token is accepted.
    pub verifier: Option<Arc<crate::tokens::Verifier>>,
    /// The largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Limits of `GET /v1/sync` (automerge-repo clients).
    pub sync: crate::sync::SyncOptions,
    /// Limits on connections, their timeouts and `watch` streams.
    pub limits: ConnLimits,
}

impl ApiOptions {
    /// Options with this token and the default body limit.
    pub fn new(token: Option<String>) -> Self {
        ApiOptions {
            token,
            verifier: None,
            body_limit: DEFAULT_BODY_LIMIT,
            sync: crate::sync::SyncOptions::default(),
            limits: ConnLimits::default(),
        }
    }
}

/// What every handler shares.
pub(crate) struct Shared {
    pub(crate) node: Node,
    pub(crate) token: Option<String>,
    pub(crate) verifier: Option<Arc<crate::tokens::Verifier>>,
    /// Documents found owned by the users of owner tokens (see `auth.rs`).
    pub(crate) owned: auth::OwnedCache,
    pub(crate) counters: metrics::ApiCounters,
    /// The automerge-repo sync endpoint's shared state.
    pub(crate) sync: Arc<crate::sync::Server>,
    /// Becomes true when the server shuts down; watch streams end then.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
    /// The caps on connections and streams, and their refusals.
    pub(crate) limits: Arc<limits::Limits>,
}

pub(crate) type AppState = Arc<Shared>;

/// Binds a TCP listener for the API at `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })
}

/// Serves the API of `node` on `listener` until `shutdown` completes, with the default
/// body limit. If `token` is set, requests need it (see [`ApiOptions::token`]).
pub async fn serve(
    node: Node,
    listener: TcpListener,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    serve_with(node, listener, ApiOptions::new(token), shutdown).await
}

/// Like [`serve`], with every option.
pub async fn serve_with(
    node: Node,
    listener: TcpListener,
    options: ApiOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let status = node.status().await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = Arc::new(limits::Limits::new(options.limits));
    let shared = Arc::new(Shared {
        node: node.clone(),
        token: options.token,
        verifier: options.verifier,
        owned: auth::OwnedCache::default(),
        counters: metrics::ApiCounters::default(),
        sync: Arc::new(crate::sync::Server::new(
            &status.cluster,
            node.id(),
            options.sync,
        )),
        stopping: stop_rx.clone(),
        limits: Arc::clone(&limits),
    });
    let app = router(shared, options.body_limit);
    tracing::info!(
        node = %node.id(),
        addr = %addr,
        connections = limits.conns.max,
        "HTTP API listening"
    );
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    conns::serve(listener, app, limits, stop_rx, signal).await;
    Ok(())
}

fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .route("/", get(cluster::page))
        .route("/v1/cluster", get(cluster::get))
        .route("/v1/health", get(handlers::health))
        .route("/v1/status", get(handlers::status))
        .route(
            "/v1/docs",
            get(listing::list_docs).post(handlers::create_doc),
        )
        .route("/v1/sync", get(sync::upgrade))
        .route("/v1/topology", get(topology::get))
        .route("/v1/revocations", post(revocations::post))
        .route("/v1/topology/nodes", post(topology::add))
        .route(
            "/v1/topology/nodes/{id}",
            axum::routing::delete(topology::remove),
        )
        .route("/v1/docs/{id}", get(handlers::get_doc))
        .route("/v1/docs/{id}/history", get(handlers::get_history))
        .route("/v1/docs/{id}/ops", post(handlers::post_ops))
        .route(
            "/v1/docs/{id}/automerge",
            get(handlers::get_automerge).post(handlers::post_automerge),
        )
        .route(
            "/v1/docs/{id}/watch",
            get(watch::watch).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                watch_cap::hold_place,
            )),
        )
        .route("/metrics", get(metrics::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_responses,
        ))
        .with_state(state)
}
