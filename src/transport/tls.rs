//! TLS and QUIC configuration of the transport: mutual TLS 1.3 (ring) against the cluster
//! CA only, the wire ALPN, and the QUIC transport parameters (keep-alive, idle timeout,
//! receive windows, initial round trip and congestion window). Public so that tests and
//! tools can speak to a node with a raw quinn endpoint. Builds configurations only; it
//! opens no sockets.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::TransportError;
use crate::certs::TlsIdentity;

/// Receive window of one stream: large enough that a busy link never waits on flow control
/// over loopback or a LAN, small enough to bound memory per connection.
const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// Receive window of a whole connection (its two streams in practice).
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// QUIC timings of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Idle timeout after which a silent connection is dead.
    pub idle_timeout: Duration,
}

fn tls_error(node: &str, reason: impl std::fmt::Display) -> TransportError {
    TransportError::Tls {
        node: node.to_string(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(node: &str, identity: &TlsIdentity) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(identity.ca.clone())
        .map_err(|e| tls_error(node, format!("cluster CA certificate: {e}")))?;
    Ok(Arc::new(roots))
}

/// Round-trip time assumed before the first sample.
const INITIAL_RTT: Duration = Duration::from_millis(25);

/// QUIC's congestion window before it has measured anything (Cubic; QUIC's default is
/// 14,720 bytes). A link's window grows only while the link is busy, so a link that was
/// quiet meets a burst of writes or a catch-up with its initial window, and over a slow
/// link each doubling takes a round trip: with the default, 20,000 writes on a 5-node mesh
/// at 50 ms one way converged 0.4–0.5 s after the last was written (18,000 writes/s
/// against 22,000–24,000 with this), and a node caught up on them in 1.3–1.4 s against
/// 0.8–0.9 s. Sends are paced over the round trip, so this is no burst at once.
const INITIAL_WINDOW: u64 = 256 * 1024;

/// The longest round trip a patient handshake survives ([`patient_transport_params`]).
pub const PATIENT_HANDSHAKE: Duration = Duration::from_secs(4);

/// QUIC transport parameters: keep-alive and idle timeout from `timing`, one incoming
/// unidirectional stream, no bidirectional streams, generous receive windows, a larger
/// initial congestion window ([`INITIAL_WINDOW`]).
///
/// QUIC assumes 333 ms before it has measured the path, so a handshake packet lost to a
/// peer that was down is resent only after about a second, which delays reconnecting to a
/// restarted node. Cluster links are mostly short (the idle timeout is already about a
/// second), so these start from a LAN-sized estimate; a real sample replaces it at once.
/// A handshake then gives up when no answer came within the idle timeout: for slower
/// links, see [`patient_transport_params`].
pub fn transport_params(timing: Timing) -> Result<quinn::TransportConfig, TransportError> {
    params(timing, INITIAL_RTT)
}

/// [`transport_params`] for a handshake that may wait up to [`PATIENT_HANDSHAKE`] for each
/// answer. A QUIC connection that hears nothing for the longer of its idle timeout and
/// three probe timeouts is dropped, and before its first sample a probe timeout is three
/// times the assumed round trip: this assumes a ninth of [`PATIENT_HANDSHAKE`] (444 ms). The
/// acceptor uses these (it must wait a round trip for the dialer's last handshake
/// message), and so does a dial after one whose handshake timed out. Once the handshake
/// has measured the round trip, the two are the same.
pub fn patient_transport_params(timing: Timing) -> Result<quinn::TransportConfig, TransportError> {
    params(timing, PATIENT_HANDSHAKE / 9)
}

fn params(timing: Timing, initial_rtt: Duration) -> Result<quinn::TransportConfig, TransportError> {
    let idle = IdleTimeout::try_from(timing.idle_timeout).map_err(|e| TransportError::Config {
        field: "idle_timeout",
        reason: e.to_string(),
    })?;
    let mut t = quinn::TransportConfig::default();
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(INITIAL_WINDOW);
    t.congestion_controller_factory(Arc::new(cubic))
        .initial_rtt(initial_rtt)
        .keep_alive_interval(Some(timing.keep_alive))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(1))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW));
    Ok(t)
}

/// The acceptor's configuration: presents `identity`'s chain and requires a client
/// certificate signed by the cluster CA.
pub fn server_config(
    node: &str,
    identity: &TlsIdentity,
    timing: Timing,
) -> Result<quinn::ServerConfig, TransportError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(node, identity)?, provider.clone())
            .build()
            .map_err(|e| tls_error(node, format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(node, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| tls_error(node, format!("node certificate or key: {e}")))?;
    tls.alpn_protocols = crate::wire::alpns();
    let quic = QuicServerConfig::try_from(tls).map_err(|e| tls_error(node, e))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(patient_transport_params(timing)?));
    // Connection attempts not yet taken by the accept loop (which takes them at once and
    // caps the handshakes in progress): far below quinn's defaults of 65,536 and 100 MiB.
    cfg.max_incoming(1024)
        .incoming_buffer_size_total(16 * 1024 * 1024);
    Ok(cfg)
}

/// The dialer's configuration: trusts only the cluster CA and presents `identity`'s chain
/// as client certificate. The server name given when connecting must be
/// [`crate::certs::node_dns_name`] of the peer's id.
pub fn client_config(
    node: &str,
    identity: &TlsIdentity,
    timing: Timing,
) -> Result<quinn::ClientConfig, TransportError> {
    client_config_offering(node, identity, timing, crate::wire::alpns())
}

/// [`client_config`] offering these ALPN ids (a test speaking as another version).
pub fn client_config_offering(
    node: &str,
    identity: &TlsIdentity,
    timing: Timing,
    alpns: Vec<Vec<u8>>,
) -> Result<quinn::ClientConfig, TransportError> {
    let roots = roots(node, identity)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(node, e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| tls_error(node, format!("node certificate or key: {e}")))?;
    tls.alpn_protocols = alpns;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| tls_error(node, e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_params(timing)?));
    Ok(cfg)
}

/// The protocol version QUIC negotiated for `conn` (its ALPN id); `None` if it is not one
/// of [`crate::wire::VERSIONS`].
pub fn negotiated_version(conn: &quinn::Connection) -> Option<u8> {
    let data = conn.handshake_data()?;
    let data = data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    crate::wire::version_of_alpn(data.protocol.as_deref()?)
}

/// Whether a handshake failed because the two sides speak no common protocol version (TLS
/// alert 120, no_application_protocol: no ALPN id in common).
pub fn is_no_common_version(err: &quinn::ConnectionError) -> bool {
    const NO_APPLICATION_PROTOCOL: u64 = 0x100 + 120;
    match err {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code) == NO_APPLICATION_PROTOCOL,
        quinn::ConnectionError::ConnectionClosed(c) => {
            u64::from(c.error_code) == NO_APPLICATION_PROTOCOL
        }
        _ => false,
    }
}

/// Whether a connection error is a failed TLS handshake (a TLS alert, sent or received).
pub fn is_tls_failure(err: &quinn::ConnectionError) -> bool {
    let code = match err {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return false,
    };
    (0x100..0x200).contains(&code)
}
