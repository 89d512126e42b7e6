//! The acceptor side: the accept loop and the acceptor's handshake. A dialer's Hello is
//! checked (the connection's version, cluster, membership, certificate valid for the
//! claimed id) before we
//! send anything; a refusal closes the connection with an error code and reason and is
//! counted. An accepted connection goes to `admit.rs` for admission, with our Hello as the
//! first frame its writer sends.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;

use rustls_pki_types::CertificateDer;

use super::admit::NewLink;
use super::dial::{hello_wait, HANDSHAKE_TIMEOUT};
use super::frames::{FrameError, FrameReader};
use super::state::{code, wait_closing, Inner};
use super::stats::Reject;
use super::tls::{is_no_common_version, is_tls_failure, negotiated_version};
use crate::certs::cert_node_id_matches;
use crate::wire::{Hello, Message};

/// Most incoming connections in their handshake (TLS and Hello) at once; more are refused
/// unanswered until one finishes. Peers are few, so this only bounds the work a flood of
/// connection attempts can cause.
pub(crate) const MAX_HANDSHAKES: usize = 64;

/// Accepts connections until the endpoint closes or the transport shuts down.
pub(crate) async fn accept_loop(inner: Arc<Inner>, endpoint: quinn::Endpoint) {
    let mut closing = inner.closing_rx();
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = wait_closing(&mut closing) => None,
        };
        let Some(incoming) = incoming else {
            break;
        };
        match handshakes.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = inner.clone();
                inner.spawn(async move {
                    accept_one(shared, incoming).await;
                    drop(permit);
                });
            }
            Err(_) => {
                inner.rejected.inc(Reject::Busy);
                tracing::debug!(
                    remote = %incoming.remote_address(),
                    "refused a connection: {MAX_HANDSHAKES} handshakes in progress"
                );
                incoming.refuse();
            }
        }
    }
}

/// The leaf certificate the client presented.
fn peer_leaf_cert(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.into_iter().next()
}

/// Closes `conn`, counting why; `detail` is logged, `reason` is what the peer is told.
fn refuse(
    inner: &Inner,
    conn: &quinn::Connection,
    remote: SocketAddr,
    kind: Reject,
    reason: &str,
    detail: String,
) {
    inner.rejected.inc(kind);
    let code = match kind {
        Reject::WrongCluster => code::WRONG_CLUSTER,
        Reject::UnknownNode => code::UNKNOWN_NODE,
        Reject::CertMismatch => code::CERT_MISMATCH,
        Reject::BadFrame => code::BAD_FRAME,
        Reject::BadHello | Reject::Tls | Reject::Busy => code::BAD_HELLO,
    };
    tracing::warn!(%remote, reason, detail, "refused a connection");
    conn.close(code, reason.as_bytes());
}

enum HelloError {
    Lost,
    Frame(FrameError),
}

async fn read_hello(
    conn: &quinn::Connection,
    version: u8,
) -> Result<(FrameReader, Message), HelloError> {
    let recv = conn.accept_uni().await.map_err(|_| HelloError::Lost)?;
    let mut frames = FrameReader::new(recv, version);
    match frames.read().await {
        Ok((msg, _)) => Ok((frames, msg)),
        Err(FrameError::Lost(_)) => Err(HelloError::Lost),
        Err(e) => Err(HelloError::Frame(e)),
    }
}

/// Handshake of one incoming connection.
async fn accept_one(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Err(_) => {
            tracing::debug!(%remote, "incoming handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            if is_no_common_version(&e) {
                inner.rejected.inc(Reject::Tls);
                tracing::warn!(
                    %remote,
                    speaks = ?crate::wire::VERSIONS,
                    "refused a connection: the peer speaks no protocol version this node \
                     speaks (a release more than one version apart: upgrade one release at \
                     a time)"
                );
            } else if is_tls_failure(&e) {
                inner.rejected.inc(Reject::Tls);
                tracing::warn!(%remote, error = %e, "TLS handshake failed");
            } else {
                tracing::debug!(%remote, error = %e, "incoming connection failed");
            }
            return;
        }
        Ok(Ok(conn)) => conn,
    };
    let Some(version) = negotiated_version(&conn) else {
        let detail = "the handshake chose no protocol version".to_string();
        return refuse(
            &inner,
            &conn,
            remote,
            Reject::BadHello,
            "no version",
            detail,
        );
    };
    let wait = hello_wait(&conn);
    let hello = read_hello(&conn, version);
    let (frames, msg) = match tokio::time::timeout(wait, hello).await {
        Err(_) => {
            let detail = "no hello in time".to_string();
            return refuse(&inner, &conn, remote, Reject::BadHello, "no hello", detail);
        }
        Ok(Err(HelloError::Lost)) => return,
        Ok(Err(HelloError::Frame(e))) => {
            let detail = e.to_string();
            return refuse(&inner, &conn, remote, Reject::BadHello, "bad hello", detail);
        }
        Ok(Ok(x)) => x,
    };
    let Message::Hello(hello) = msg else {
        let detail = format!("first message is {}", msg.kind());
        return refuse(
            &inner,
            &conn,
            remote,
            Reject::BadHello,
            "expected hello",
            detail,
        );
    };
    if let Err((kind, reason)) = check_hello(&inner, &conn, &hello, version) {
        let detail = format!(
            "hello claims node {:?} of cluster {:?}, version {}",
            hello.node, hello.cluster, hello.version
        );
        return refuse(&inner, &conn, remote, kind, reason, detail);
    }
    let send = match tokio::time::timeout(wait, conn.open_uni()).await {
        Ok(Ok(send)) => send,
        _ => {
            conn.close(code::DONE, b"cannot open a stream");
            return;
        }
    };
    let answer = match inner.hello_frame(version) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode our hello");
            conn.close(code::DONE, b"internal error");
            return;
        }
    };
    // Well within the dialer's own hello wait.
    inner.await_own_dial(&hello.node, wait / 2).await;
    let new = NewLink {
        conn,
        send,
        frames,
        first_frame: Some(answer),
        dial_generation: None,
        compress: inner.compress_with(&hello),
        version,
    };
    if let Err(refusal) = inner.admit(&hello.node, new).await {
        tracing::debug!(peer = hello.node, ?refusal, "incoming connection not kept");
    }
}

/// The acceptor's checks of a dialer's Hello, in order.
fn check_hello(
    inner: &Inner,
    conn: &quinn::Connection,
    hello: &Hello,
    version: u8,
) -> Result<(), (Reject, &'static str)> {
    if hello.version != version {
        return Err((
            Reject::BadHello,
            "hello of another version than the connection's",
        ));
    }
    if hello.cluster != inner.settings.cluster {
        return Err((Reject::WrongCluster, "wrong cluster"));
    }
    if !inner.is_member(&hello.node) {
        return Err((Reject::UnknownNode, "unknown node"));
    }
    let cert_ok = peer_leaf_cert(conn).is_some_and(|c| cert_node_id_matches(&c, &hello.node));
    if !cert_ok {
        return Err((
            Reject::CertMismatch,
            "certificate does not match the node id",
        ));
    }
    Ok(())
}
