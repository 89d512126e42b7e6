//! The bearer-token check: with a token configured, every request but `GET /v1/health`
//! needs `Authorization: Bearer <token>`, compared in constant time.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, HttpError};

/// Middleware: refuses with 401 a request without the configured token.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = state.token.as_deref() else {
        return next.run(request).await;
    };
    if request.uri().path() == "/v1/health" {
        return next.run(request).await;
    }
    let problem = match request.headers().get(header::AUTHORIZATION) {
        None => Some("missing \"Authorization: Bearer <token>\" header"),
        Some(value) => match value.to_str().ok().and_then(bearer) {
            None => Some("the Authorization header is not \"Bearer <token>\""),
            Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => None,
            Some(_) => Some("wrong API token"),
        },
    };
    match problem {
        None => next.run(request).await,
        Some(why) => {
            let mut response = HttpError::new(StatusCode::UNAUTHORIZED, why).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// The token of a `Bearer <token>` header value (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer("Bearer xyz"), Some("xyz"));
        assert_eq!(bearer("bearer  xyz "), Some("xyz"));
        assert_eq!(bearer("Basic xyz"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
