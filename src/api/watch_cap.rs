//! The cap on `GET /v1/docs/{id}/watch` streams (`watch_streams`): a stream holds a place
//! from its request until its body is dropped (the client went away or the server
//! stopped); a request past the cap is answered 503 with `Retry-After`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use super::limits::unavailable;
use super::AppState;

/// Middleware of the watch route.
pub(crate) async fn hold_place(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(place) = state.limits.watches.take() else {
        state.limits.refused("watch");
        return unavailable(format!(
            "this node has its maximum of {} watch streams (tuning.watch_streams); retry later",
            state.limits.watches.max()
        ));
    };
    let response = next.run(request).await;
    // The place goes with the body: the stream's end, whenever that is.
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _held = &place;
            frame
        }))
    })
}
