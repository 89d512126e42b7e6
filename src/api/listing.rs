//! `GET /v1/docs`: the documents durable on this node with their heads, in id order.
//!
//! - `?limit=N[&after=ID]`: one page, `{"docs":[{"id","heads"}...],"next":<id or null>}`;
//!   `next` is the last id of the page when more documents follow (the next page's
//!   `after`), `null` at the end. `limit` is 1 to [`MAX_PAGE`]; `after` a document id (it
//!   need not exist); `after` without `limit` is refused.
//! - Without `limit`: the whole listing, `[{"id","heads"}...]`, streamed as a chunked body
//!   a page of [`LIST_PAGE`] at a time (each page read only when the client has taken the
//!   previous one), so memory stays constant whatever the number of documents. The first
//!   page is read before the answer starts (an error then has its status); a failure later
//!   ends the body early, so the client sees a truncated, invalid JSON text, never a short
//!   valid one.
//! - With a user token: only the documents the token names that are stored here, in id
//!   order, in one answer (a token names at most [`crate::tokens::MAX_DOCS`]).
//!
//! Owns: the query parameters and the JSON of the listing. Must not touch: storage (pages
//! come from [`crate::node::Node::docs_page`]).

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use futures_util::stream;
use serde_json::{json, Value};

use super::auth::percent_decode;
use super::error::heads_json;
use super::{is_valid_doc_id, AppState, HttpError, MAX_DOC_ID};
use crate::node::{DocsPage, Node, LIST_PAGE};
use crate::tokens::Access;

/// The largest `limit` of a paged listing.
pub const MAX_PAGE: usize = 10_000;

/// `GET /v1/docs`.
pub(crate) async fn list_docs(
    State(state): State<AppState>,
    access: Option<Extension<Access>>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let (limit, after) = parse_query(query.as_deref().unwrap_or(""))?;
    let node = &state.node;
    let error = |e| HttpError::from_node("", e);
    if let Some(Extension(Access::User(user))) = access {
        // A user sees only the documents its token names (those stored here).
        let named = user
            .docs
            .iter()
            .filter(|d| after.as_ref().is_none_or(|a| d.as_str() > a.as_str()))
            .cloned()
            .collect();
        let mut docs = node.docs_named(named).await.map_err(error)?;
        return Ok(match limit {
            Some(limit) => {
                let next = (docs.len() > limit).then(|| docs[limit - 1].0.clone());
                docs.truncate(limit);
                let docs: Vec<Value> = docs.iter().map(|(id, h)| item(id, h)).collect();
                Json(json!({"docs": docs, "next": next})).into_response()
            }
            None => {
                let docs: Vec<Value> = docs.iter().map(|(id, h)| item(id, h)).collect();
                Json(Value::from(docs)).into_response()
            }
        });
    }
    match limit {
        Some(limit) => {
            let page = node
                .docs_page(after.as_deref(), limit)
                .await
                .map_err(error)?;
            let docs: Vec<Value> = page.docs.iter().map(|(id, h)| item(id, h)).collect();
            Ok(Json(json!({"docs": docs, "next": page.next})).into_response())
        }
        None => {
            let first = node.docs_page(None, LIST_PAGE).await.map_err(error)?;
            let body = Body::from_stream(pages(node.clone(), first));
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
    }
}

/// `limit` and `after` of the query (the last of each counts; other parameters are
/// ignored).
fn parse_query(query: &str) -> Result<(Option<usize>, Option<String>), HttpError> {
    let (mut limit, mut after) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(key).as_str() {
            "limit" => limit = Some(percent_decode(value)),
            "after" => after = Some(percent_decode(value)),
            _ => {}
        }
    }
    let limit = match limit {
        None => None,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Some(n),
            _ => {
                return Err(HttpError::bad_request(format!(
                    "\"limit\" must be a whole number from 1 to {MAX_PAGE}, not {:?}",
                    shown(&text)
                )))
            }
        },
    };
    if let Some(after) = &after {
        if limit.is_none() {
            return Err(HttpError::bad_request(
                "\"after\" pages the listing: give \"limit\" with it",
            ));
        }
        if !is_valid_doc_id(after) {
            return Err(HttpError::bad_request(format!(
                "\"after\" must be a document id (1 to {MAX_DOC_ID} characters of \
                 A-Z a-z 0-9 _ . ~ -), not {:?}",
                shown(after)
            )));
        }
    }
    Ok((limit, after))
}

/// At most 64 characters of a refused value, for the error message.
fn shown(text: &str) -> String {
    text.chars().take(64).collect()
}

/// One document of the listing.
fn item(id: &str, heads: &[automerge::ChangeHash]) -> Value {
    json!({"id": id, "heads": heads_json(heads)})
}

/// Where the streamed listing stands.
enum Cursor {
    /// The first page, read before the answer started.
    First(DocsPage),
    /// Read the page after this id next.
    After(String),
    /// The closing bracket is sent.
    End,
}

/// The whole listing as JSON text, a page per chunk: `[` and the first page, then each
/// following page with its separators, then `]`.
fn pages(
    node: Node,
    first: DocsPage,
) -> impl futures_util::Stream<Item = Result<Bytes, crate::node::Error>> + Send {
    stream::unfold(Cursor::First(first), move |cursor| {
        let node = node.clone();
        async move {
            let (page, opening) = match cursor {
                Cursor::End => return None,
                Cursor::First(page) => (page, true),
                Cursor::After(after) => match node.docs_page(Some(&after), LIST_PAGE).await {
                    Ok(page) => (page, false),
                    Err(e) => {
                        tracing::warn!(node = %node.id(), "listing ended early: {e}");
                        return Some((Err(e), Cursor::End));
                    }
                },
            };
            // Only a non-empty first page has a next one: every item after the first page
            // follows another.
            let mut chunk = Vec::with_capacity(page.docs.len() * 100 + 2);
            if opening {
                chunk.push(b'[');
            }
            for (i, (id, heads)) in page.docs.iter().enumerate() {
                if i > 0 || !opening {
                    chunk.push(b',');
                }
                // Writing a `Value` into a `Vec` cannot fail.
                let _ = serde_json::to_writer(&mut chunk, &item(id, heads));
            }
            let next = match page.next {
                Some(after) => Cursor::After(after),
                None => {
                    chunk.push(b']');
                    Cursor::End
                }
            };
            Some((Ok(Bytes::from(chunk)), next))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_limit_and_after() {
        assert_eq!(parse_query("").unwrap(), (None, None));
        assert_eq!(parse_query("limit=5").unwrap(), (Some(5), None));
        assert_eq!(
            parse_query("limit=10000&after=a%7Eb&x=1").unwrap(),
            (Some(10_000), Some("a~b".into()))
        );
        assert_eq!(parse_query("limit=1&limit=2").unwrap().0, Some(2));
        for bad in [
            "limit=0",
            "limit=10001",
            "limit=-1",
            "limit=ten",
            "limit=",
            "limit",
            "after=a",
            "limit=3&after=",
            "limit=3&after=a%2Fb",
        ] {
            let err = parse_query(bad).expect_err(bad);
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
