//! `GET /v1/docs/{id}/watch`: server-sent events, one `change` event per change of the
//! document (local or remote) with `{"doc","heads":[hex...]}`.
//!
//! A document this node does not store answers 404 (create it first, e.g. with
//! `POST /v1/docs` or a write). The subscription exists once the response headers are sent, so a client that has them
//! sees every later change. A watcher that falls behind the node's bounded notification
//! channel skips what it missed (the next event carries the current heads); the node never
//! waits for it. The stream ends when the node stops or the server shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::error::heads_json;
use super::handlers::{doc_id, no_such_doc};
use super::{AppState, HttpError};
use crate::node::DocEvent;

/// `GET /v1/docs/{id}/watch`.
pub(crate) async fn watch(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let id = doc_id(path)?;
    let events = state
        .node
        .subscribe(&id)
        .await
        .map_err(|e| HttpError::from_node(&id, e))?;
    // Checked after subscribing, so that a change between the two is not missed.
    let known = state
        .node
        .with_doc(&id, |_| ())
        .await
        .map_err(|e| HttpError::from_node(&id, e))?;
    if known.is_none() {
        return Err(no_such_doc(&id));
    }
    let stream = event_stream(events, state.stopping.clone());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn event_stream(
    events: broadcast::Receiver<DocEvent>,
    stopping: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(
        (events, stopping),
        |(mut events, mut stopping)| async move {
            loop {
                if *stopping.borrow() {
                    return None;
                }
                let next = tokio::select! {
                    e = events.recv() => e,
                    _ = stopping.changed() => return None,
                };
                match next {
                    Ok(event) => {
                        let data = json!({"doc": event.doc, "heads": heads_json(&event.heads)});
                        let event = Event::default().event("change").data(data.to_string());
                        return Some((Ok(event), (events, stopping)));
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "a watcher fell behind; skipping");
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    )
}
