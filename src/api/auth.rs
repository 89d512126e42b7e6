//! The bearer-token check: with a token configured, every request but `GET /v1/health`
//! and the page at `/` needs `Authorization: Bearer <token>`, compared in constant time. `GET /v1/sync` (a
//! WebSocket, which browsers open without custom headers) may give it as `?token=<token>`.

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
    // The page asks for the token itself; the data behind it needs it.
    if matches!(request.uri().path(), "/v1/health" | "/") {
        return next.run(request).await;
    }
    let in_query = (request.uri().path() == "/v1/sync")
        .then(|| query_token(request.uri().query().unwrap_or("")))
        .flatten();
    let problem = match (request.headers().get(header::AUTHORIZATION), in_query) {
        (None, Some(given)) if constant_time_eq(given.as_bytes(), token.as_bytes()) => None,
        (None, Some(_)) => Some("wrong API token"),
        (None, None) => Some("missing \"Authorization: Bearer <token>\" header"),
        (Some(value), _) => match value.to_str().ok().and_then(bearer) {
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

/// The value of `token=` in a query string (percent-decoded; the last one counts).
fn query_token(query: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("token="))
        .next_back()
        .map(percent_decode)
}

/// Decodes `%XX` escapes and `+` (a malformed escape is kept as it is).
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                Some(digit(*h) * 16 + digit(*l))
            }
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares in time that does not depend on where the bytes differ (`subtle`).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    // `subtle` answers a length mismatch at once; the length of a token is no secret.
    bool::from(a.ct_eq(b))
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
    fn reads_the_token_from_the_query() {
        assert_eq!(query_token("token=abc"), Some("abc".into()));
        assert_eq!(query_token("x=1&token=a%2Fb+c&y"), Some("a/b c".into()));
        assert_eq!(query_token("token=1&token=2"), Some("2".into()));
        assert_eq!(query_token("tokens=1"), None);
        assert_eq!(query_token(""), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
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
