//! `POST /v1/revocations` (admin): `{"jti": ID}` revokes one user token, `{"sub": USER}`
//! every token of that user issued until now. The revocation reaches every node (see
//! [`crate::revocations`]); from then on requests with those tokens answer 401 and their
//! `/v1/sync` sockets close. Answers `{"revocations": <count held here>}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{AppState, HttpError};
use crate::revocations::Revoke;

/// The body: exactly one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    jti: Option<String>,
    sub: Option<String>,
}

/// `POST /v1/revocations`.
pub(crate) async fn post(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let body = body.map_err(|e| HttpError::new(e.status(), e.body_text()))?;
    let expected = "expected {\"jti\": ID} or {\"sub\": USER}";
    let parsed: Body = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("{expected}: {e}")))?;
    let what = match (parsed.jti, parsed.sub) {
        (Some(jti), None) => Revoke::Jti(jti),
        (None, Some(sub)) => Revoke::Sub(sub),
        _ => return Err(HttpError::bad_request(expected)),
    };
    let held = state
        .node
        .revoke(what)
        .await
        .map_err(|e| HttpError::from_node("", e))?;
    Ok(Json(json!({"revocations": held})).into_response())
}
