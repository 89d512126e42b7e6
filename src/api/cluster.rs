//! The live cluster page: `GET /` serves it (one self-contained HTML file with its CSS and
//! JavaScript, `ui/page.html`, embedded in the binary; it asks for the API token itself, so
//! the page needs none), and `GET /v1/cluster` answers the picture behind it (every node's
//! view gathered over the peer links, see [`crate::cluster`]).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{AppState, HttpError};

/// The page.
const PAGE: &str = include_str!("ui/page.html");

/// `GET /`.
pub(crate) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /v1/cluster`.
pub(crate) async fn get(State(state): State<AppState>) -> Result<Response, HttpError> {
    match state.node.cluster().await {
        Ok(picture) => Ok(Json(picture).into_response()),
        Err(e) => Err(HttpError::from_node("", e)),
    }
}
