//! [`HttpError`]: an error answer, `{"error": "<what and why>"}` with a status, and the
//! mapping of node errors onto statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::node::Error;
use crate::ops::OpError;

/// An error answer: a status and a JSON object with at least `"error"`.
#[derive(Debug)]
pub struct HttpError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and why.
    pub message: String,
    /// More fields of the answer (the 504 of a write concern adds `heads` and `acked_by`).
    pub extra: Map<String, Value>,
}

impl HttpError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// The answer for a node error met while handling a request about `doc`.
    pub fn from_node(doc: &str, e: Error) -> Self {
        match e {
            Error::Change(inner) => match inner.downcast_ref::<OpError>() {
                Some(op) => {
                    let status = StatusCode::from_u16(op.status())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    Self::new(status, format!("document {doc:?}: {op}"))
                }
                None => Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("document {doc:?}: change refused: {inner}"),
                ),
            },
            Error::Merge(inner) => Self::bad_request(inner.to_string()),
            Error::AckTimeout { heads, acked_by } => {
                let mut err = Self::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "document {doc:?}: the write is durable here but the write concern \
                         was not met before the timeout (acknowledged by {acked_by:?}); \
                         it keeps replicating"
                    ),
                );
                err.extra.insert("heads".into(), heads_json(&heads));
                err.extra.insert("acked_by".into(), json!(acked_by));
                err
            }
            Error::Stopped => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node has shut down".to_string(),
            ),
            Error::StorageFailed(why) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "document {doc:?}: outcome uncertain: the write is applied in memory on \
                     this node and may have replicated to peers, but storage failed, so it is \
                     not durable here (the node writes it again once storage works; if it \
                     stops first, the write survives only where it replicated): {why}"
                ),
            ),
            Error::StorageFailing(why) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "storage is failing, so this node refuses writes until it works again; \
                     nothing was written: {why}"
                ),
            ),
            e @ Error::StorageBusy { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            Error::Removed(id) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("node {id:?} has been removed from the cluster: it takes no writes"),
            ),
            e @ Error::Leaving(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            e @ Error::Revoke(_) => Self::new(StatusCode::BAD_REQUEST, e.to_string()),
            Error::Topology(why) => Self::new(
                StatusCode::CONFLICT,
                format!("topology change refused: {why}"),
            ),
            e @ (Error::Unreachable { .. } | Error::NotHinted { .. }) => {
                let listed = match &e {
                    Error::Unreachable { replicas, .. } | Error::NotHinted { replicas, .. } => {
                        json!(replicas)
                    }
                    _ => json!([]),
                };
                let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                err.extra.insert("replicas".into(), listed);
                err
            }
            Error::Remote {
                by,
                status,
                message,
            } => Self::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                if by.is_empty() {
                    message
                } else {
                    format!("replica {by:?} of document {doc:?}: {message}")
                },
            ),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        body.insert("error".into(), Value::String(self.message));
        (self.status, Json(Value::Object(body))).into_response()
    }
}

/// Heads as a JSON list of hex strings.
pub(crate) fn heads_json(heads: &[automerge::ChangeHash]) -> Value {
    Value::Array(heads.iter().map(|h| Value::String(h.to_string())).collect())
}
