//! The caps of one node's API on what clients hold open: connections (with a reserve kept
//! for `GET /v1/health`), the time a connection has to send a request's head, and `watch`
//! streams; the refusals they made, by limit (`concordant_limits_refused_total{limit}`);
//! and the answer a cap gives, 503 with `Retry-After`.
//!
//! Owns the numbers and the counting only: the accept loop (`conns.rs`) and the
//! handlers decide when to ask. The default connection cap is derived from the process's
//! soft file limit (`RLIMIT_NOFILE`) so that open sockets can never take the descriptors
//! peers, storage and `/v1/health` need: see [`ConnLimits::from_tuning`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::HttpError;
use crate::config::Tuning;

/// Seconds a client refused by a cap is told to wait (`Retry-After`).
pub const RETRY_AFTER_S: u64 = 1;

/// File descriptors of the process kept out of every API's connection cap: peers (one UDP
/// socket per node), storage files, the reader threads, logs.
pub const FD_RESERVE: u64 = 128;

/// Connections over the cap that are still read, briefly, to answer `GET /v1/health`.
pub const HEALTH_RESERVE: usize = 32;

/// The smallest connection cap derived from a file limit.
const MIN_CONNECTIONS: usize = 16;

/// Connection limits of one API (from `[tuning]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at most; more are answered 503 (`api_connections`).
    pub max: usize,
    /// Connections over `max` read just long enough to answer `GET /v1/health`.
    pub health_reserve: usize,
    /// Time a new connection has to send its first request's head (`api_header_timeout_ms`).
    pub header_timeout: Duration,
    /// Time a kept-alive connection may wait between requests (`api_idle_timeout_ms`).
    pub idle_timeout: Duration,
    /// `watch` streams open at once at most (`watch_streams`).
    pub watch_streams: usize,
}

impl ConnLimits {
    /// The limits `[tuning]` sets for one of `nodes` APIs served by this process. Without
    /// `api_connections`, the cap is the soft file limit less [`FD_RESERVE`], shared among
    /// the nodes, less [`HEALTH_RESERVE`] (at least 16): 864 at a limit of 1,024.
    pub fn from_tuning(t: &Tuning, nodes: usize) -> Self {
        let max = t
            .api_connections
            .unwrap_or_else(|| derived_cap(file_limit(), nodes));
        ConnLimits {
            max,
            health_reserve: HEALTH_RESERVE,
            header_timeout: Duration::from_millis(t.api_header_timeout_ms),
            idle_timeout: Duration::from_millis(t.api_idle_timeout_ms),
            watch_streams: t.watch_streams,
        }
    }
}

impl Default for ConnLimits {
    /// The limits of the default [`Tuning`] for a process serving one node.
    fn default() -> Self {
        ConnLimits::from_tuning(&Tuning::default(), 1)
    }
}

/// The connection cap for a soft file limit shared by `nodes` APIs.
fn derived_cap(file_limit: u64, nodes: usize) -> usize {
    let per_node = file_limit.saturating_sub(FD_RESERVE) / nodes.max(1) as u64;
    let per_node = usize::try_from(per_node).unwrap_or(usize::MAX);
    per_node.saturating_sub(HEALTH_RESERVE).max(MIN_CONNECTIONS)
}

/// The process's soft limit on open files (a large number if unlimited).
pub fn file_limit() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        limit.current.unwrap_or(1 << 20)
    }
    // Elsewhere the limit is not read: the common default is assumed.
    #[cfg(not(target_os = "linux"))]
    {
        1024
    }
}

/// A pool of places; a [`Slot`] gives its place back when dropped.
#[derive(Debug)]
pub(crate) struct Slots {
    used: AtomicUsize,
    max: usize,
}

impl Slots {
    pub(crate) fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes a place; `None` if all are taken.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }

    /// Places taken now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Places in all.
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// One taken place of a [`Slots`].
#[derive(Debug)]
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the caps of one API share: their places and their refusals.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) conns: ConnLimits,
    pub(crate) connections: Arc<Slots>,
    pub(crate) health: Arc<Slots>,
    pub(crate) watches: Arc<Slots>,
    refused: crate::limits::LimitCounters,
    /// The whole answer written to a connection over the caps.
    pub(crate) raw_refusal: Vec<u8>,
}

impl Limits {
    pub(crate) fn new(conns: ConnLimits) -> Limits {
        Limits {
            connections: Slots::new(conns.max),
            health: Slots::new(conns.health_reserve),
            watches: Slots::new(conns.watch_streams),
            refused: crate::limits::LimitCounters::default(),
            raw_refusal: raw_503(&format!(
                "this node has its maximum of {} open API connections (tuning.api_connections); retry later",
                conns.max
            )),
            conns,
        }
    }

    /// Counts one refusal by `limit`.
    pub(crate) fn refused(&self, limit: &'static str) {
        self.refused.refused(limit);
    }

    /// Refusals so far, by limit.
    pub(crate) fn refusals(&self) -> BTreeMap<&'static str, u64> {
        self.refused.snapshot()
    }
}

/// The answer of a cap: 503 `{"error"}` with `Retry-After`.
pub(crate) fn unavailable(why: impl Into<String>) -> Response {
    let mut response = HttpError::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    response
}

/// A complete HTTP/1.1 503 answer with `Retry-After` that closes the connection.
fn raw_503(why: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": why }).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: {RETRY_AFTER_S}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_below_the_file_limit() {
        assert_eq!(derived_cap(1024, 1), 1024 - 128 - 32);
        assert_eq!(derived_cap(1024, 4), 224 - 32);
        assert_eq!(derived_cap(100, 1), MIN_CONNECTIONS);
        assert!(derived_cap(1024, 1) + HEALTH_RESERVE + FD_RESERVE as usize <= 1024);
        let t = Tuning {
            api_connections: Some(7),
            ..Tuning::default()
        };
        assert_eq!(ConnLimits::from_tuning(&t, 3).max, 7);
        assert!(file_limit() > 0);
    }

    #[test]
    fn slots_are_given_back() {
        let slots = Slots::new(2);
        let a = slots.take().unwrap();
        let b = slots.take().unwrap();
        assert!(slots.take().is_none());
        assert_eq!((slots.used(), slots.max()), (2, 2));
        drop(a);
        let _c = slots.take().unwrap();
        drop(b);
        assert_eq!(slots.used(), 1);
    }

    #[test]
    fn refusals_count_by_limit_and_answer_503_with_retry_after() {
        let limits = Limits::new(ConnLimits::default());
        limits.refused("watch");
        limits.refused("watch");
        limits.refused("connections");
        let r = limits.refusals();
        assert_eq!((r["watch"], r["connections"]), (2, 1));
        let answer = unavailable("full");
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "1");
        let raw = String::from_utf8(limits.raw_refusal.clone()).unwrap();
        assert!(raw.starts_with("HTTP/1.1 503 "), "{raw}");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("retry-after: 1"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("api_connections"), "{body}");
    }
}
