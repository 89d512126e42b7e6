//! The API's accept loop: every connection is served by hyper (HTTP/1.1, upgrades for
//! `/v1/sync`) under the caps of [`super::limits`], until the server shuts down.
//!
//! - A connection first takes a place under `api_connections`; it has
//!   `api_header_timeout_ms` to send its first request's head, then each later request's
//!   head must come within `api_idle_timeout_ms` of the previous answer; past either it is
//!   closed. A place is held as long as the socket is open (a WebSocket included).
//! - Over the cap, one of [`super::limits::HEALTH_RESERVE`] places is taken for a moment:
//!   the connection's head is read (at most [`OVERFLOW_HEAD`]), a `GET /v1/health` is
//!   answered, anything else gets 503 with `Retry-After`. Over that too, the 503 is written
//!   at once and the socket closed: the accept never waits.
//! - Shutdown: the listener closes, every connection finishes its request in progress
//!   (hyper's graceful shutdown, at most [`SHUTDOWN_GRACE`]) and the loop returns once all
//!   are closed; upgraded
//!   connections and streams end through the server's `stopping` signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::conn_io::ConnIo;
use super::limits::{Limits, Slot};

/// The longest a connection over the cap is read to see if it asks for `/v1/health`.
pub const OVERFLOW_HEAD: Duration = Duration::from_secs(1);

/// The longest the 503 to a refused connection may take to write.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// The longest a connection may take to finish its answer once the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Pause after an accept that failed for want of resources (file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Where a connection stands.
enum Place {
    /// Under the cap.
    Served(Slot),
    /// Over it, in the reserve for `/v1/health`.
    Reserve(Slot),
}

/// Serves `app` on `listener` until `shutdown` completes, then until every connection has
/// closed; `stopping` must become true when `shutdown` completes (it ends the connections).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Arc<Limits>,
    stopping: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    // Every connection holds a receiver: the loop's end waits until all are dropped.
    let (open_tx, open_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY a small answer can wait for the client's delayed ACK (about
        // 40 ms on Linux): measured as the p99 of client-to-client latency over /v1/sync.
        let _ = tcp.set_nodelay(true);
        let place = if let Some(slot) = limits.connections.take() {
            Place::Served(slot)
        } else if let Some(slot) = limits.health.take() {
            Place::Reserve(slot)
        } else {
            limits.refused("connections");
            // Written without waiting: a fresh socket's send buffer takes it.
            let _ = tcp.try_write(&limits.raw_refusal);
            continue;
        };
        tokio::spawn(connection(
            tcp,
            place,
            app.clone(),
            Arc::clone(&limits),
            stopping.clone(),
            open_rx.clone(),
        ));
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}

/// An accept failed: connection errors concern that connection only; others (out of file
/// descriptors) pause the loop a moment rather than spin.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::warn!("HTTP API: accept failed: {e}");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Serves one connection until it closes, or until the server stops.
async fn connection(
    tcp: TcpStream,
    place: Place,
    app: Router,
    limits: Arc<Limits>,
    mut stopping: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
) {
    let (slot, reserve) = match place {
        Place::Served(slot) => (slot, false),
        Place::Reserve(slot) => (slot, true),
    };
    let mut wait = limits.conns.header_timeout;
    if reserve {
        wait = wait.min(OVERFLOW_HEAD);
    }
    let mut io = ConnIo::new(tcp, slot);
    let head = tokio::select! {
        head = tokio::time::timeout(wait, io.read_head()) => head,
        _ = stopping.wait_for(|s| *s) => return,
    };
    let in_time = match head {
        Ok(Ok(())) => true,
        Ok(Err(_)) => return,
        Err(_) if !reserve => {
            limits.refused("header_timeout");
            return;
        }
        Err(_) => false,
    };
    // Over the cap, only a health check read in time is served.
    if reserve && !(in_time && io.asks_health()) {
        limits.refused("connections");
        io.answer_and_close(&limits.raw_refusal, REFUSAL_WRITE)
            .await;
        return;
    }
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.conns.idle_timeout)
        .keep_alive(!reserve);
    let conn = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(conn);
    let mut closing = None;
    loop {
        let grace = closing.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::trace!("HTTP API connection: {e}");
                }
                return;
            }
            _ = stopping.wait_for(|s| *s), if closing.is_none() => {
                closing = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                conn.as_mut().graceful_shutdown();
            }
            // A client that does not take its answer does not hold the shutdown.
            () = tokio::time::sleep_until(grace), if closing.is_some() => return,
        }
    }
}
