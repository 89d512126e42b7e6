//! Who a request acts for, and what it may reach.
//!
//! With an admin token configured (`[api] token`), every request but `GET /v1/health` and
//! the page at `/` needs a token: `Authorization: Bearer <token>`, or for `GET /v1/sync` (a
//! WebSocket, which browsers open without custom headers) `?token=<token>`. The admin token
//! (compared in constant time) reaches everything. With a token key (`[api] token_key`), a
//! user token (a JWT, see [`crate::tokens`]) is verified offline: a missing, malformed,
//! badly signed, expired or revoked token answers 401 saying which; a valid one reaches
//! only the document endpoints and `/v1/sync`, and of the documents only those in its
//! scope (403 otherwise, whether the document exists or not; 403 for a write with a
//! read-only token, or a creation without `create`). The request carries its access
//! ([`crate::tokens::Access`]) on to the handlers: the listing shows a user only its
//! documents, `/v1/sync` checks each message. Refusals are counted by reason; a token is
//! never logged. Without an admin token or a token key nothing is checked.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, HttpError};
use crate::tokens::{Access, Refusal, UserToken, Verifier};

/// A refused request: the reason counted, the status and what it says.
struct Refused {
    reason: &'static str,
    status: StatusCode,
    message: String,
}

impl Refused {
    fn unauthorized(reason: &'static str, message: impl Into<String>) -> Refused {
        Refused {
            reason,
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }

    fn forbidden(message: impl Into<String>) -> Refused {
        Refused {
            reason: "forbidden",
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Refused {
        Refused::unauthorized(r.reason(), r.to_string())
    }
}

/// Middleware: finds who the request acts for and refuses what that may not reach.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // The page asks for the token itself; the data behind it needs it.
    if matches!(request.uri().path(), "/v1/health" | "/") {
        return next.run(request).await;
    }
    let checked = match authenticate(&state, &request) {
        Ok(access) => match access.user() {
            Some(user) => authorize(&state, user, request.method(), request.uri().path())
                .await
                .map(|()| access),
            None => Ok(access),
        },
        Err(refused) => Err(refused),
    };
    match checked {
        Ok(access) => {
            request.extensions_mut().insert(access);
            next.run(request).await
        }
        Err(refused) => {
            state.sync.counters().auth_refused.count(refused.reason);
            let unauthorized = refused.status == StatusCode::UNAUTHORIZED;
            let mut response = HttpError::new(refused.status, refused.message).into_response();
            if unauthorized {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

/// The request's access from the token it presents.
fn authenticate(state: &AppState, request: &Request) -> Result<Access, Refused> {
    let admin = state.token.as_deref();
    // Without authentication a token is not looked at.
    if admin.is_none() && state.verifier.is_none() {
        return Ok(Access::Admin);
    }
    let in_query = (request.uri().path() == "/v1/sync")
        .then(|| query_token(request.uri().query().unwrap_or("")))
        .flatten();
    let presented = match (request.headers().get(header::AUTHORIZATION), in_query) {
        (None, given) => given,
        (Some(value), _) => match value.to_str().ok().and_then(bearer) {
            Some(given) => Some(given.to_string()),
            None if admin.is_none() => None,
            None => {
                return Err(Refused::unauthorized(
                    "malformed",
                    "the Authorization header is not \"Bearer <token>\"",
                ))
            }
        },
    };
    let Some(given) = presented else {
        return match admin {
            None => Ok(Access::Admin),
            Some(_) => Err(Refused::unauthorized(
                "missing",
                "missing \"Authorization: Bearer <token>\" header",
            )),
        };
    };
    if admin.is_some_and(|t| constant_time_eq(given.as_bytes(), t.as_bytes())) {
        return Ok(Access::Admin);
    }
    match &state.verifier {
        Some(verifier) if Verifier::looks_like_jwt(&given) => {
            let user = verifier.verify(&given, crate::tokens::unix_now())?;
            if state.node.revokes(&user) {
                return Err(Refusal::Revoked.into());
            }
            Ok(Access::User(Arc::new(user)))
        }
        // Without an admin token, anything but a user token is not looked at.
        _ if admin.is_none() => Ok(Access::Admin),
        _ => Err(Refused::unauthorized("wrong-token", "wrong API token")),
    }
}

/// What a user token may reach: the document endpoints within its scope (the documents
/// it names, and with `owner` those its user created), and `/v1/sync`.
async fn authorize(
    state: &AppState,
    user: &UserToken,
    method: &Method,
    path: &str,
) -> Result<(), Refused> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (read, write) = (method == Method::GET, method == Method::POST);
    let (id, writing) = match parts.as_slice() {
        ["v1", "sync"] | ["v1", "docs"] if read => return Ok(()),
        ["v1", "docs"] if write && user.create => return Ok(()),
        ["v1", "docs"] if write => {
            return Err(Refused::forbidden("this token may not create documents"))
        }
        ["v1", "docs", id] | ["v1", "docs", id, "automerge" | "watch" | "history"] if read => {
            (percent_decode(id), false)
        }
        ["v1", "docs", id, "ops" | "automerge"] if write => (percent_decode(id), true),
        _ => {
            return Err(Refused::forbidden(
                "a user token reaches the document endpoints and /v1/sync only",
            ))
        }
    };
    let reaches = user.names(&id) || (user.owner && owns(state, user, &id).await);
    if !reaches {
        return Err(Refused::forbidden(format!(
            "this token does not reach document {id:?}"
        )));
    }
    if writing && !user.writes() {
        return Err(Refused::forbidden(format!(
            "this token is read-only: it cannot change document {id:?}"
        )));
    }
    Ok(())
}

/// Whether `user` created `doc` (its owner records name the user). A document that cannot
/// be read now counts as not created by the user. A document's owners are only ever added
/// to (at its creation), so a user found among them is remembered ([`OwnedCache`]).
async fn owns(state: &AppState, user: &UserToken, doc: &str) -> bool {
    if !crate::doc_id::is_valid_doc_id(doc) {
        return false;
    }
    let key = (doc.to_string(), user.sub.clone());
    if state.owned.contains(&key) {
        return true;
    }
    let owns =
        matches!(state.node.owners(doc).await, Ok(Some(owners)) if owners.contains(&user.sub));
    if owns {
        state.owned.insert(key);
    }
    owns
}

/// The (document, user) pairs found owned lately, at most [`OwnedCache::MAX`] (then it
/// starts again empty): an owner token's requests read the document's history once.
#[derive(Debug, Default)]
pub(crate) struct OwnedCache(std::sync::Mutex<std::collections::HashSet<(String, String)>>);

impl OwnedCache {
    const MAX: usize = 100_000;

    fn contains(&self, key: &(String, String)) -> bool {
        self.0.lock().is_ok_and(|set| set.contains(key))
    }

    fn insert(&self, key: (String, String)) {
        if let Ok(mut set) = self.0.lock() {
            if set.len() >= Self::MAX {
                set.clear();
            }
            set.insert(key);
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
    query_value(query, "token")
}

/// The value of `key=` in a query string (percent-decoded; the last one counts).
pub(super) fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
        .next_back()
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
