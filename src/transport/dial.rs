//! The dialer side: one loop per wanted peer that dials whenever the peer has no link (with
//! capped exponential backoff and jitter between attempts), and the dialer's handshake: send
//! our Hello on a new stream, read and check the acceptor's Hello, hand the connection to
//! `admit.rs` for admission. Does not decide duplicates (see `admit.rs`). Starting a dial
//! loop ([`Inner::connect`]) is here too, so that the shared state does not depend on the
//! dialer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use super::admit::{DialPermit, NewLink, Refusal};
use super::frames::{FrameError, FrameReader};
use super::peers::Wanted;
use super::state::{code, wait_closing, Inner};
use super::stats::{PeerCounters, Reject};
use super::tls::{is_no_common_version, is_tls_failure, negotiated_version};
use crate::certs::node_dns_name;
use crate::wire::{Message, WireError, VERSIONS};

/// Longest wait for an incoming connection's QUIC/TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait for the QUIC/TLS handshake of a dial attempt after one that succeeded, whatever the
/// idle timeout. QUIC resends an unanswered handshake ever more rarely (its probe timeout
/// doubles), so an attempt begun while the peer was down reaches it late once it is back; a
/// fresh attempt after this long finds it sooner. Enough for links with round trips below a
/// second (a dialer's handshake takes one round trip); see [`handshake_wait`] for slower.
const DIAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// The handshake wait of a dial attempt after `timeouts` attempts in a row whose handshake
/// timed out: 1, 2, 4 s, then 1 s again. A link with round trips of one to four seconds
/// comes up at the second or third attempt (those use
/// [`super::tls::patient_transport_params`]), and a peer that was down is still found by a
/// short attempt soon after it is back.
fn handshake_wait(timeouts: u32) -> Duration {
    DIAL_HANDSHAKE_TIMEOUT
        .saturating_mul(1 << (timeouts % 3))
        .min(super::tls::PATIENT_HANDSHAKE)
}

/// Wait for the Hello exchange once the TLS handshake is done, on links with round trips
/// below about 0.7 s; see [`hello_wait`].
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Wait for the Hello exchange on `conn`: [`HELLO_TIMEOUT`], or three of the round trips the
/// handshake measured when that is longer (the exchange takes one, and the accepting side
/// may hold its answer for up to half this wait; see [`Inner::await_own_dial`]), so that a
/// link whose handshake came through also exchanges its Hellos.
pub(crate) fn hello_wait(conn: &quinn::Connection) -> Duration {
    HELLO_TIMEOUT.max(conn.rtt().saturating_mul(3))
}

/// A dial loop's peer and its controls.
pub(crate) struct DialTarget {
    pub(crate) peer: String,
    pub(crate) addr: SocketAddr,
    /// Identifies this wish to link; a connection dialed for an older one is refused.
    pub(crate) generation: u64,
    /// Completes (with an error) when the wish is withdrawn.
    pub(crate) cancel: watch::Receiver<()>,
    /// Whether the peer has a link, in either direction.
    pub(crate) connected: watch::Receiver<bool>,
    pub(crate) counters: Arc<PeerCounters>,
}

impl Inner {
    /// See [`super::Transport::connect`].
    pub(crate) fn connect(self: &Arc<Self>, peer: &str, addr: SocketAddr) {
        if !self.is_member(peer) {
            tracing::warn!(
                peer,
                "not dialing: not a member of the cluster or this node itself"
            );
            return;
        }
        if self.is_closing() {
            return;
        }
        let generation = self.next_id();
        let (cancel_tx, cancel_rx) = watch::channel(());
        let (connected, counters) = {
            let mut peers = self.peers();
            let p = peers.get_or_create(peer);
            if p.wanted.as_ref().is_some_and(|w| w.addr == addr) {
                return;
            }
            p.wanted = Some(Wanted {
                addr,
                generation,
                _cancel: cancel_tx,
            });
            (p.connected.subscribe(), p.counters.clone())
        };
        self.spawn(dial_loop(
            self.clone(),
            DialTarget {
                peer: peer.to_string(),
                addr,
                generation,
                cancel: cancel_rx,
                connected,
                counters,
            },
        ));
    }
}

/// Capped exponential backoff with jitter: delays lie in `[max(min, d/2), d]` where `d`
/// doubles from `min` up to `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.min.saturating_mul(factor).min(self.max);
        let floor = (ceiling / 2).max(self.min);
        if floor >= ceiling {
            return ceiling;
        }
        rand::rng().random_range(floor..=ceiling)
    }
}

/// How a dial attempt ended, short of failing.
enum Outcome {
    /// The link is up.
    Up,
    /// The peer keeps another connection with us; nothing to do while it lives.
    Duplicate,
    /// The link is no longer wanted or the transport is closing.
    Stopped,
}

/// Why a dial attempt failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("cannot start connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection failed: {0}")]
    Connection(quinn::ConnectionError),
    #[error(
        "the peer speaks no protocol version this node speaks ({VERSIONS:?}): a release more \
         than one version apart; upgrade one release at a time"
    )]
    NoCommonVersion,
    #[error("refused by the peer (code {code}): {reason}")]
    Refused { code: u64, reason: String },
    #[error("timed out waiting for the TLS handshake")]
    HandshakeTimeout,
    #[error("bad hello from the peer: {0}")]
    Hello(String),
    #[error("cannot encode our hello: {0}")]
    Encode(#[from] WireError),
}

/// Keeps dialing `t.peer` while it is wanted and has no link.
pub(crate) async fn dial_loop(inner: Arc<Inner>, mut t: DialTarget) {
    let mut closing = inner.closing_rx();
    let mut backoff = Backoff::new(inner.settings.reconnect_min, inner.settings.reconnect_max);
    let mut delay: Option<Duration> = None;
    let mut timeouts = 0;
    loop {
        let stop = tokio::select! {
            _ = t.cancel.changed() => true,
            _ = wait_closing(&mut closing) => true,
            r = t.connected.wait_for(|c| !*c) => r.is_err(),
        };
        if stop {
            return;
        }
        if let Some(d) = delay.take() {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = t.cancel.changed() => return,
                _ = wait_closing(&mut closing) => return,
            }
        }
        match inner.begin_dial(&t.peer, t.generation) {
            DialPermit::Go => {}
            DialPermit::HasLink => continue,
            DialPermit::Stop => return,
        }
        let outcome = dial_once(&inner, &t, handshake_wait(timeouts)).await;
        inner.end_dial(&t.peer);
        timeouts = match outcome {
            Err(DialError::HandshakeTimeout) => timeouts.wrapping_add(1),
            _ => 0,
        };
        match outcome {
            Ok(Outcome::Up) => {
                backoff.reset();
                delay = Some(backoff.next());
            }
            Ok(Outcome::Duplicate) => delay = Some(backoff.next()),
            Ok(Outcome::Stopped) => return,
            Err(e) => {
                let loud = matches!(
                    e,
                    DialError::Refused { .. } | DialError::Hello(_) | DialError::NoCommonVersion
                );
                if loud {
                    tracing::warn!(peer = t.peer, addr = %t.addr, error = %e, "dial failed");
                } else {
                    tracing::debug!(peer = t.peer, addr = %t.addr, error = %e, "dial failed");
                }
                t.counters.inc_dial_failures();
                inner.dial_failed(&t.peer).await;
                delay = Some(backoff.next());
            }
        }
    }
}

/// What went wrong during the Hello exchange.
enum ExchangeError {
    Connection,
    Frame(FrameError),
}

impl From<quinn::ConnectionError> for ExchangeError {
    fn from(_: quinn::ConnectionError) -> Self {
        ExchangeError::Connection
    }
}

impl From<quinn::WriteError> for ExchangeError {
    fn from(_: quinn::WriteError) -> Self {
        ExchangeError::Connection
    }
}

async fn exchange_hellos(
    conn: &quinn::Connection,
    hello: &[u8],
    version: u8,
) -> Result<(quinn::SendStream, FrameReader, Message), ExchangeError> {
    let mut send = conn.open_uni().await?;
    send.write_all(hello).await?;
    let recv = conn.accept_uni().await?;
    let mut frames = FrameReader::new(recv, version);
    let (msg, _) = frames.read().await.map_err(ExchangeError::Frame)?;
    Ok((send, frames, msg))
}

/// Closes `conn` as refused by us, counting why.
fn refuse(inner: &Inner, conn: &quinn::Connection, kind: Reject, why: String) -> DialError {
    inner.rejected.inc(kind);
    let code = match kind {
        Reject::WrongCluster => code::WRONG_CLUSTER,
        _ => code::BAD_HELLO,
    };
    conn.close(code, why.as_bytes());
    DialError::Hello(why)
}

/// Turns a failed exchange into an outcome, from the connection's close reason.
fn exchange_failed(
    inner: &Inner,
    conn: &quinn::Connection,
    err: ExchangeError,
) -> Result<Outcome, DialError> {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            if close.error_code == code::DUPLICATE {
                return Ok(Outcome::Duplicate);
            }
            Err(DialError::Refused {
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            })
        }
        Some(e) => {
            if is_tls_failure(&e) {
                inner.rejected.inc(Reject::Tls);
            }
            Err(DialError::Connection(e))
        }
        None => {
            let why = match err {
                ExchangeError::Frame(e) => format!("no valid hello: {e}"),
                ExchangeError::Connection => "connection failed during the hello".to_string(),
            };
            Err(refuse(inner, conn, Reject::BadHello, why))
        }
    }
}

/// One dial attempt: TLS handshake (waited for at most `handshake`), Hello exchange,
/// admission.
async fn dial_once(
    inner: &Arc<Inner>,
    t: &DialTarget,
    handshake: Duration,
) -> Result<Outcome, DialError> {
    let Some(endpoint) = inner.endpoint() else {
        return Ok(Outcome::Stopped);
    };
    let server_name = node_dns_name(&t.peer);
    let config = if handshake > DIAL_HANDSHAKE_TIMEOUT {
        &inner.patient_client_config
    } else {
        &inner.client_config
    };
    let connecting = endpoint.connect_with(config.clone(), t.addr, &server_name)?;
    drop(endpoint);
    // A link that comes up meanwhile (the peer dialed us) ends the attempt.
    let mut connected = t.connected.clone();
    let handshaken = tokio::select! {
        r = tokio::time::timeout(handshake, connecting) => r,
        _ = connected.wait_for(|c| *c) => return Ok(Outcome::Duplicate),
    };
    let conn = match handshaken {
        // QUIC's own idle timeout (heard nothing) ends a handshake as ours does.
        Err(_) | Ok(Err(quinn::ConnectionError::TimedOut)) => {
            return Err(DialError::HandshakeTimeout)
        }
        Ok(Err(e)) => {
            if is_tls_failure(&e) {
                inner.rejected.inc(Reject::Tls);
            }
            if is_no_common_version(&e) {
                return Err(DialError::NoCommonVersion);
            }
            return Err(DialError::Connection(e));
        }
        Ok(Ok(conn)) => conn,
    };
    if !inner.dial_handshaken(&t.peer) {
        conn.close(code::DUPLICATE, b"linked meanwhile");
        return Ok(Outcome::Duplicate);
    }
    let Some(version) = negotiated_version(&conn) else {
        let why = "the handshake chose no protocol version".to_string();
        return Err(refuse(inner, &conn, Reject::BadHello, why));
    };
    let hello = inner.hello_frame(version)?;
    let exchange = exchange_hellos(&conn, &hello, version);
    let (send, frames, answer) = match tokio::time::timeout(hello_wait(&conn), exchange).await {
        Err(_) => {
            if let Some(reason) = conn.close_reason() {
                return Err(DialError::Connection(reason));
            }
            let why = "no hello from the peer in time".to_string();
            return Err(refuse(inner, &conn, Reject::BadHello, why));
        }
        Ok(Err(e)) => return exchange_failed(inner, &conn, e),
        Ok(Ok(x)) => x,
    };
    let Message::Hello(h) = answer else {
        let why = format!("expected a hello, got {}", answer.kind());
        return Err(refuse(inner, &conn, Reject::BadHello, why));
    };
    if h.cluster != inner.settings.cluster {
        let why = format!("peer is in cluster {:?}", h.cluster);
        return Err(refuse(inner, &conn, Reject::WrongCluster, why));
    }
    if h.version != version || h.node != t.peer {
        let why = format!("peer says it is {:?} version {}", h.node, h.version);
        return Err(refuse(inner, &conn, Reject::BadHello, why));
    }
    let new = NewLink {
        conn,
        send,
        frames,
        first_frame: None,
        dial_generation: Some(t.generation),
        compress: inner.compress_with(&h),
        version,
    };
    match inner.admit(&t.peer, new).await {
        Ok(()) => Ok(Outcome::Up),
        Err(Refusal::Duplicate) => Ok(Outcome::Duplicate),
        Err(Refusal::NotWanted | Refusal::Closing) => Ok(Outcome::Stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_between_min_and_max_and_grows() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(min, max);
        let mut last_ceiling = Duration::ZERO;
        for i in 0..40 {
            let d = b.next();
            assert!(d >= min && d <= max, "attempt {i}: {d:?}");
            let ceiling = min.saturating_mul(1 << i.min(20)).min(max);
            assert!(d <= ceiling && d >= (ceiling / 2).max(min));
            assert!(ceiling >= last_ceiling);
            last_ceiling = ceiling;
        }
        b.reset();
        assert_eq!(b.next(), min);
    }

    #[test]
    fn handshake_waits_grow_after_timeouts_then_start_short_again() {
        let waits: Vec<u64> = (0..7)
            .map(|k| handshake_wait(k).as_millis() as u64)
            .collect();
        assert_eq!(waits, [1_000, 2_000, 4_000, 1_000, 2_000, 4_000, 1_000]);
        assert!(handshake_wait(u32::MAX) <= HANDSHAKE_TIMEOUT);
    }
}
