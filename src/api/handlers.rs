//! The JSON endpoints: health, status, documents, ops, and Automerge binary export and
//! import (the document list is [`super::listing`]).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::auth::query_value;
use super::error::heads_json;
use super::{is_valid_doc_id, AppState, HttpError, MAX_DOC_ID, MAX_TIMEOUT_MS};
use crate::node::{Health, MemberState, NodeStatus};
use crate::ops::{parse_write_request, Ack};
use crate::tokens::Access;

type Answer = Result<Response, HttpError>;

/// The document id of the path, checked.
pub(crate) fn doc_id(path: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    let Path(id) =
        path.map_err(|e| HttpError::bad_request(format!("bad path: {}", e.body_text())))?;
    if is_valid_doc_id(&id) {
        Ok(id)
    } else {
        let shown: String = id.chars().take(64).collect();
        Err(HttpError::bad_request(format!(
            "invalid document id {shown:?}: ids are 1 to {MAX_DOC_ID} characters of \
             A-Z a-z 0-9 _ . ~ -, other than . and .."
        )))
    }
}

/// The request body, or the error answer (413 when over the limit).
fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, HttpError> {
    body.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than the limit of this server".to_string()
        } else {
            format!("cannot read the request body: {}", e.body_text())
        };
        HttpError::new(status, message)
    })
}

/// `GET /v1/health`: 200 `{"status":"ok"}`; 503 with `"status"` saying why it should get
/// no traffic: `"storage-failing"` while storage fails (recoverable), `"failed"` for a node
/// that stopped working, `"leaving"` while `remove-node` drains it, `"removed"` once it is out
/// of the live topology. A load balancer checking it takes such a node out by itself.
pub(crate) async fn health(State(state): State<AppState>) -> Answer {
    let unhealthy = |status: &str, message: String| {
        let mut err = HttpError::new(StatusCode::SERVICE_UNAVAILABLE, message);
        err.extra.insert("status".into(), json!(status));
        err.extra.insert("node".into(), json!(state.node.id()));
        err
    };
    match state.node.health() {
        Health::Failed(why) => return Err(unhealthy("failed", why)),
        Health::StorageFailing(why) => {
            return Err(unhealthy(
                "storage-failing",
                format!(
                    "storage is failing: writes are refused until a write to storage \
                     succeeds (retried every half second): {why}"
                ),
            ))
        }
        Health::Ok => {}
    }
    let status = state
        .node
        .status()
        .await
        .map_err(|e| HttpError::from_node("", e))?;
    let id = state.node.id();
    match status.member {
        MemberState::Member => Ok(Json(json!({"status": "ok", "node": id})).into_response()),
        MemberState::Leaving => Err(unhealthy(
            "leaving",
            format!(
                "node {id:?} is leaving the cluster (remove-node): it hands its documents to \
                 its neighbours and takes no writes; send requests to another node"
            ),
        )),
        MemberState::Removed => Err(unhealthy(
            "removed",
            format!(
                "node {id:?} has been removed from the cluster: it takes no writes and no \
                 longer replicates; send requests to another node"
            ),
        )),
    }
}

/// `GET /v1/status`.
pub(crate) async fn status(State(state): State<AppState>) -> Answer {
    let status = state
        .node
        .status()
        .await
        .map_err(|e| HttpError::from_node("", e))?;
    Ok(Json(status_json(&status)).into_response())
}

fn status_json(s: &NodeStatus) -> Value {
    let peers: Vec<Value> = s
        .peers
        .iter()
        .map(|p| {
            let t = s.transport.peers.get(&p.id).cloned().unwrap_or_default();
            json!({
                "id": p.id,
                "connected": p.connected,
                "linked": p.linked,
                "down": p.down,
                "healed": p.healed,
                "queued_bytes": p.queued_bytes,
                "unacked_changes": p.unacked_changes,
                "unacked_bytes": p.unacked_bytes,
                "unacked_oldest_ms": p.unacked_oldest_ms,
                "divergent": p.divergent,
                "send_queue": t.queue_depth,
                "bytes_sent": t.bytes_sent,
                "bytes_received": t.bytes_received,
                "messages_sent": t.messages_sent,
                "messages_received": t.messages_received,
                "protocol": t.protocol,
                "links_lost": t.links_lost,
                "rtt_ms": t.rtt.map(|r| r.as_secs_f64() * 1000.0),
            })
        })
        .collect();
    let c = &s.core;
    let r = &s.transport.rejected;
    json!({
        "node": s.node,
        "cluster": s.cluster,
        "topology": s.topology,
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": crate::wire::PROTOCOL_VERSION,
        "peers": peers,
        "docs": s.docs,
        "replicas": s.replicas,
        "partitions": s.partitions,
        "partitions_moving": {"in": s.partitions_in, "out": s.partitions_out},
        "forwarding": s.forwarding,
        "hints": s.hints,
        "handed_off": s.handed_off,
        "fingerprint": format!("{:016x}", s.fingerprint),
        "docs_loaded": s.docs_loaded,
        "cache_bytes": s.cache_bytes,
        "sync_clients": s.sync_clients,
        "pending_writes": s.pending_writes,
        "wakeups": {
            "total": s.wakeups,
            "timer": s.timer_wakeups,
        },
        "reads_in_flight": s.reads_in_flight,
        "storage": {
            "queued_bytes": s.storage_queued_bytes,
            "failing": s.storage_failing,
        },
        "membership": s.member.as_str(),
        "core": {
            "local_changes": c.local_changes,
            "remote_changes": c.remote_changes,
            "apply_batches": c.apply_batches,
            "duplicates": c.duplicates,
            "bad_changes": c.bad_changes,
            "bad_sync": c.bad_sync,
            "unexpected_messages": c.unexpected_messages,
            "repairs": c.repairs,
            "repaired_changes": c.repaired_changes,
            "pushes_dropped": c.pushes_dropped,
            "doc_loads": c.doc_loads,
            "doc_evictions": c.doc_evictions,
            "doc_load_errors": c.doc_load_errors,
            "reconcile_rounds": c.reconcile_rounds,
            "reconcile_messages": c.reconcile_messages,
            "reconcile_bytes": c.reconcile_bytes,
            "wants_sent": c.wants_sent,
            "repair_changes_sent": c.repair_changes_sent,
        },
        "rejected_connections": {
            "bad_frame": r.bad_frame,
            "bad_hello": r.bad_hello,
            "wrong_cluster": r.wrong_cluster,
            "unknown_node": r.unknown_node,
            "cert_mismatch": r.cert_mismatch,
            "tls": r.tls,
        },
    })
}

/// `POST /v1/docs`: a new empty document (one empty change, so that it has heads and
/// replicates) under a fresh automerge-repo id; answered once durable here.
pub(crate) async fn create_doc(
    State(state): State<AppState>,
    access: Option<Extension<Access>>,
) -> Answer {
    let id = crate::sync::doc_id::new_document_id();
    let mut scratch = automerge::Automerge::new();
    // A user's document records its owner (its first change: see `crate::owners`).
    let options = automerge::transaction::CommitOptions::default();
    let options = match access.as_ref().and_then(|Extension(a)| a.user()) {
        Some(user) => options.with_message(format!("{}{}", crate::owners::PREFIX, user.sub)),
        None => options,
    };
    scratch.empty_commit(options);
    state
        .node
        .merge(&id, scratch.save())
        .await
        .map_err(|e| HttpError::from_node(&id, e))?;
    let url = crate::sync::doc_id::url(&id);
    Ok((StatusCode::CREATED, Json(json!({"id": id, "url": url}))).into_response())
}

/// `GET /v1/docs/{id}`.
pub(crate) async fn get_doc(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Answer {
    let id = doc_id(path)?;
    let at = query_value(query.as_deref().unwrap_or(""), "at")
        .map(|text| {
            crate::history::parse_heads(&text)
                .map_err(|e| HttpError::bad_request(format!("?at=: {e}")))
        })
        .transpose()?;
    let found = match at {
        None => state.node.json(&id).await,
        Some(heads) => match state.node.json_at(&id, heads).await {
            Ok(Some(Err(lacking))) => {
                return Err(HttpError::bad_request(format!(
                    "document {id:?}: ?at=: {lacking}"
                )))
            }
            other => other.map(|then| then.and_then(Result::ok)),
        },
    };
    match found {
        Ok(Some(doc)) => Ok(Json(doc).into_response()),
        Ok(None) => Err(no_such_doc(&id)),
        Err(e) => Err(HttpError::from_node(&id, e)),
    }
}

/// `GET /v1/docs/{id}/history?limit=N`: the document's changes, newest first (at most
/// `limit`, 1 to [`MAX_HISTORY`], default [`DEFAULT_HISTORY`]).
pub(crate) async fn get_history(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Answer {
    let id = doc_id(path)?;
    let limit = match query_value(query.as_deref().unwrap_or(""), "limit") {
        None => DEFAULT_HISTORY,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_HISTORY).contains(&n) => n,
            _ => {
                return Err(HttpError::bad_request(format!(
                    "?limit={text}: expected 1 to {MAX_HISTORY}"
                )))
            }
        },
    };
    match state.node.history(&id, limit).await {
        Ok(Some(changes)) => Ok(Json(changes).into_response()),
        Ok(None) => Err(no_such_doc(&id)),
        Err(e) => Err(HttpError::from_node(&id, e)),
    }
}

/// The changes `GET /v1/docs/{id}/history` lists without `limit`, and at most.
const DEFAULT_HISTORY: usize = 100;
const MAX_HISTORY: usize = 10_000;

pub(crate) fn no_such_doc(id: &str) -> HttpError {
    HttpError::not_found(format!("this node has no document {id:?}"))
}

/// `POST /v1/docs/{id}/ops`.
pub(crate) async fn post_ops(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = doc_id(path)?;
    let raw = body(raw)?;
    let request = parse_write_request(&raw).map_err(|e| {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        HttpError::new(status, format!("document {id:?}: {e}"))
    })?;
    if let Ack::Peers(k) = request.ack {
        let others = state.node.other_replicas();
        if k > others {
            return Err(HttpError::bad_request(format!(
                "\"ack\": {k} peers asked, but each document has only {others} other \
                 replica(s)"
            )));
        }
    }
    if request.timeout_ms > MAX_TIMEOUT_MS {
        return Err(HttpError::bad_request(format!(
            "\"timeout_ms\": {} is more than the limit of {MAX_TIMEOUT_MS}",
            request.timeout_ms
        )));
    }
    let size = crate::ops::change_size(&request.ops);
    let caps = state.sync.options.data_limits.change;
    if let Err(refused) = caps.check(&size, true) {
        return Err(too_large(&state, &id, refused.label(), &refused));
    }
    let written = state
        .node
        .apply_ops(&id, request)
        .await
        .map_err(|e| HttpError::from_node(&id, e))?;
    state.counters.write_accepted();
    Ok(Json(json!({
        "heads": heads_json(&written.heads),
        "acked_by": written.acked_by,
    }))
    .into_response())
}

/// `GET /v1/docs/{id}/automerge`.
pub(crate) async fn get_automerge(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    let id = doc_id(path)?;
    match state.node.save(&id).await {
        Ok(Some(bytes)) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Bytes::from(bytes),
        )
            .into_response()),
        Ok(None) => Err(no_such_doc(&id)),
        Err(e) => Err(HttpError::from_node(&id, e)),
    }
}

/// `POST /v1/docs/{id}/automerge`.
pub(crate) async fn post_automerge(
    State(state): State<AppState>,
    access: Option<Extension<Access>>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = doc_id(path)?;
    let raw = body(raw)?;
    if raw.is_empty() {
        return Err(HttpError::bad_request(format!(
            "document {id:?}: the body is empty; expected Automerge data (a saved document \
             or changes)"
        )));
    }
    check_data(&state, &id, raw.clone()).await?;
    if access.is_some_and(|Extension(a)| a.user().is_some()) {
        let Some(named) = crate::owners::named_in_data(&raw) else {
            return Err(HttpError::bad_request(format!(
                "document {id:?}: the body is not Automerge data"
            )));
        };
        if !state.node.knows_owners(&id, &named).await {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                format!("document {id:?}: owner records are written by the cluster, not by users"),
            ));
        }
    }
    let new_changes = state.node.merge(&id, raw.to_vec()).await.map_err(|e| {
        if let crate::node::Error::Merge(why) = &e {
            // Automerge's own line about it is at debug level: one line per request here.
            tracing::warn!(doc = %id, "merge refused: {why}");
        }
        HttpError::from_node(&id, e)
    })?;
    let heads = state
        .node
        .with_doc(&id, |d| d.get_heads())
        .await
        .map_err(|e| HttpError::from_node(&id, e))?
        .unwrap_or_default();
    Ok(Json(json!({"new_changes": new_changes, "heads": heads_json(&heads)})).into_response())
}

/// Refuses (413) Automerge data that inflates past its budget, holds a change over a cap or
/// a saved document declaring too many rows, and (400) data holding a bundle, before the
/// node sees it; the check runs off the async workers (it inflates up to the
/// budget, and loads the saved documents the data holds).
async fn check_data(state: &AppState, id: &str, data: Bytes) -> Result<(), HttpError> {
    let limit = state.sync.options.data_limits;
    let checked = tokio::task::spawn_blocking(move || limit.check_data(&data))
        .await
        .map_err(|e| {
            // Automerge panics on some malformed data (see `core::untrusted`).
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("document {id:?}: not Automerge data this node can read: {e}"),
            )
        })?;
    checked.map_err(|refused| {
        tracing::warn!(doc = %id, "merge refused: {refused}");
        if refused.is_size() {
            too_large(state, id, refused.label(), &refused)
        } else {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("document {id:?}: {refused}"),
            )
        }
    })
}

/// The 413 answer to a request refused by a limit of [`crate::limits`], counted by label.
fn too_large(
    state: &AppState,
    id: &str,
    label: &'static str,
    refused: &dyn std::fmt::Display,
) -> HttpError {
    state.sync.counters.limits.refused(label);
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("document {id:?}: {refused}"),
    )
}

/// Any path that is not an endpoint.
pub(crate) async fn not_found(method: Method, uri: Uri) -> HttpError {
    HttpError::not_found(format!("no endpoint {method} {}", uri.path()))
}

/// A known path with a method it does not serve.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}", uri.path()),
    )
}
