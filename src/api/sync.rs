//! `GET /v1/sync`: the upgrade to an automerge-repo client WebSocket (the connection itself
//! is [`crate::sync::connection`]). A node at its client limit answers 503 with
//! `Retry-After` before any upgrade; a request that is not a WebSocket upgrade gets the usual JSON error.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::{AppState, HttpError};
use crate::tokens::Access;

/// `GET /v1/sync`.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    access: Option<Extension<Access>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let access = access.map_or(Access::Admin, |Extension(a)| a);
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return HttpError::new(
                rejection.status(),
                format!(
                    "/v1/sync is a WebSocket endpoint: {}",
                    rejection.body_text()
                ),
            )
            .into_response()
        }
    };
    let Some(place) = state.sync.admit() else {
        state.limits.refused("sync_clients");
        return super::limits::unavailable(
            "this node has its maximum of sync clients (tuning.sync_clients); retry later",
        );
    };
    let node = state.node.clone();
    let server = state.sync.clone();
    let stopping = state.stopping.clone();
    // axum's default read buffer is 128 KiB per socket, zero-filled before every read by
    // tungstenite: most of a held client's memory and a few percent of CPU. 8 KiB holds a
    // typical sync message; larger ones grow it as needed.
    ws.read_buffer_size(8 * 1024)
        .max_message_size(server.options.max_message)
        .max_frame_size(server.options.max_message)
        .on_upgrade(move |socket| {
            crate::sync::connection::serve(socket, node, server, place, stopping, access)
        })
}
