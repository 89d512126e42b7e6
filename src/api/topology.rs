//! The live topology: `GET /v1/topology`, `POST /v1/topology/nodes` (a node joins) and
//! `DELETE /v1/topology/nodes/{id}` (a node leaves). A change made at any node spreads to
//! every node (see [`crate::membership`]); an invalid one answers 409 and changes nothing.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{AppState, HttpError};
use crate::node::TopologyChange;

type Answer = Result<Response, HttpError>;

/// The body of `POST /v1/topology/nodes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNode {
    id: String,
    peer: SocketAddr,
    api: SocketAddr,
    #[serde(default)]
    links: Vec<String>,
}

fn no_topology() -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "this node was not started from a topology file: it has no live topology",
    )
}

/// `GET /v1/topology`.
pub(crate) async fn get(State(state): State<AppState>) -> Answer {
    match state.node.topology().await {
        Ok(Some(t)) => Ok(Json(t).into_response()),
        Ok(None) => Err(no_topology()),
        Err(e) => Err(HttpError::from_node("", e)),
    }
}

/// `POST /v1/topology/nodes` with `{"id","peer","api","links"?}`.
pub(crate) async fn add(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = body.map_err(|e| HttpError::new(e.status(), e.body_text()))?;
    let new: NewNode = serde_json::from_slice(&body).map_err(|e| {
        HttpError::bad_request(format!(
            "expected {{\"id\",\"peer\",\"api\",\"links\"?}} with socket addresses: {e}"
        ))
    })?;
    let change = TopologyChange::Add {
        id: new.id,
        peer: new.peer,
        api: new.api,
        links: new.links,
    };
    let topology = state
        .node
        .change_topology(change)
        .await
        .map_err(|e| HttpError::from_node("", e))?;
    Ok(Json(topology).into_response())
}

/// `DELETE /v1/topology/nodes/{id}`.
pub(crate) async fn remove(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    let Path(id) =
        path.map_err(|e| HttpError::bad_request(format!("bad path: {}", e.body_text())))?;
    let topology = state
        .node
        .change_topology(TopologyChange::Remove { id })
        .await
        .map_err(|e| HttpError::from_node("", e))?;
    Ok(Json(topology).into_response())
}
