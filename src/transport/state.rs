//! The transport's shared core: settings, the endpoint, the peer table, the event channel
//! and the shutdown flag, plus the operations of the public handle (connect, disconnect,
//! send, stats, shutdown). The std mutex on the peer table is never held across an await.
//!
//! Link admission and removal are in `admit.rs`; streams are read and written in `link.rs`;
//! handshakes are in `dial.rs` (which also starts dial loops: `connect`) and `accept.rs`.
//! This module imports none of them.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use super::peers::Peers;
use super::stats::{PeerStats, RejectCounters, TransportStats};
use super::tls::{self, Timing};
use super::{SendError, TransportConfig, TransportError, TransportEvent};
use crate::wire::Message;

/// How long `shutdown` waits for queued frames to be written and read by the peers.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `shutdown` waits for the peers to acknowledge the closes.
const IDLE_TIMEOUT: Duration = Duration::from_millis(200);

/// Application error codes this node sends when it closes a connection.
pub mod code {
    use quinn::VarInt;
    /// The peer finished its stream, or the link is no longer used.
    pub const DONE: VarInt = VarInt::from_u32(0);
    /// This node is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(1);
    /// The Hello named another cluster.
    pub const WRONG_CLUSTER: VarInt = VarInt::from_u32(2);
    /// The Hello was missing, malformed, late, unexpected or of another version.
    pub const BAD_HELLO: VarInt = VarInt::from_u32(3);
    /// The Hello named a node that is not a member.
    pub const UNKNOWN_NODE: VarInt = VarInt::from_u32(4);
    /// The Hello named a node the certificate is not valid for.
    pub const CERT_MISMATCH: VarInt = VarInt::from_u32(5);
    /// A malformed frame after the handshake.
    pub const BAD_FRAME: VarInt = VarInt::from_u32(6);
    /// Both nodes dialed; the connection dialed by the node with the smaller id is kept.
    pub const DUPLICATE: VarInt = VarInt::from_u32(7);
    /// A newer connection between the same two nodes replaced this (stale) one.
    pub const REPLACED: VarInt = VarInt::from_u32(8);
    /// The dialer no longer wants the link.
    pub const DISCONNECT: VarInt = VarInt::from_u32(9);
}

/// The parts of [`TransportConfig`] used after start-up.
pub(crate) struct Settings {
    pub(crate) cluster: String,
    pub(crate) node: String,
    /// The live members (changed by [`Inner::set_members`] when the topology changes).
    pub(crate) members: std::sync::RwLock<HashSet<String>>,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) send_queue: usize,
    pub(crate) compress: bool,
}

/// Everything shared by the transport's handle and tasks.
pub(crate) struct Inner {
    pub(crate) settings: Settings,
    pub(crate) local_addr: SocketAddr,
    pub(crate) client_config: quinn::ClientConfig,
    /// [`Inner::client_config`] for dials after one whose handshake timed out: see
    /// [`tls::patient_transport_params`].
    pub(crate) patient_client_config: quinn::ClientConfig,
    pub(crate) rejected: RejectCounters,
    events: mpsc::Sender<TransportEvent>,
    endpoint: Mutex<Option<quinn::Endpoint>>,
    peers: Mutex<Peers>,
    /// Held across every change of a peer's link and the delivery of its event.
    pub(super) transitions: tokio::sync::Mutex<()>,
    closing: watch::Sender<bool>,
    writers: watch::Sender<usize>,
    next_id: AtomicU64,
    rt: Handle,
}

fn config_error(field: &'static str, reason: impl Into<String>) -> TransportError {
    TransportError::Config {
        field,
        reason: reason.into(),
    }
}

fn validate(cfg: &TransportConfig) -> Result<(), TransportError> {
    if cfg.cluster.is_empty() {
        return Err(config_error("cluster", "empty"));
    }
    let cert_ok = cfg
        .identity
        .chain
        .first()
        .is_some_and(|leaf| crate::certs::cert_node_id_matches(leaf, &cfg.node));
    if !cert_ok {
        return Err(config_error(
            "identity",
            format!("the certificate is not valid for node id {:?}", cfg.node),
        ));
    }
    if cfg.keep_alive.is_zero() || cfg.keep_alive >= cfg.idle_timeout {
        return Err(config_error(
            "keep_alive",
            format!(
                "{:?} must be non-zero and below idle_timeout ({:?})",
                cfg.keep_alive, cfg.idle_timeout
            ),
        ));
    }
    if cfg.reconnect_min.is_zero() || cfg.reconnect_min > cfg.reconnect_max {
        return Err(config_error(
            "reconnect_min",
            format!(
                "{:?} must be non-zero and at most reconnect_max ({:?})",
                cfg.reconnect_min, cfg.reconnect_max
            ),
        ));
    }
    if cfg.send_queue == 0 {
        return Err(config_error("send_queue", "must be at least 1"));
    }
    Ok(())
}

impl Inner {
    /// Our Hello in `version` (the connection's), framed: the one both sides of a new
    /// connection send (dialer first).
    pub(crate) fn hello_frame(&self, version: u8) -> Result<Vec<u8>, crate::wire::WireError> {
        let hello = crate::wire::Hello {
            cluster: self.settings.cluster.clone(),
            node: self.settings.node.clone(),
            version,
            compression: if self.settings.compress {
                vec![crate::wire::DEFLATE.to_string()]
            } else {
                Vec::new()
            },
        };
        crate::wire::encode_as(&Message::Hello(hello), version)
    }

    /// Whether a link with the peer that sent `hello` is compressed: both offered deflate.
    pub(crate) fn compress_with(&self, hello: &crate::wire::Hello) -> bool {
        self.settings.compress && hello.compression.iter().any(|c| c == crate::wire::DEFLATE)
    }

    /// Validates `cfg`, builds the TLS configurations and binds the endpoint.
    pub(crate) fn bind(
        cfg: TransportConfig,
        events: mpsc::Sender<TransportEvent>,
    ) -> Result<Arc<Inner>, TransportError> {
        validate(&cfg)?;
        let timing = Timing {
            keep_alive: cfg.keep_alive,
            idle_timeout: cfg.idle_timeout,
        };
        let server = tls::server_config(&cfg.node, &cfg.identity, timing)?;
        let client_config = tls::client_config(&cfg.node, &cfg.identity, timing)?;
        let mut patient_client_config = client_config.clone();
        patient_client_config.transport_config(Arc::new(tls::patient_transport_params(timing)?));
        let bind_error = |source| TransportError::Bind {
            addr: cfg.listen,
            source,
        };
        let rt = Handle::try_current()
            .map_err(|e| bind_error(std::io::Error::other(format!("no tokio runtime: {e}"))))?;
        let endpoint = quinn::Endpoint::server(server, cfg.listen).map_err(bind_error)?;
        let local_addr = endpoint.local_addr().map_err(bind_error)?;
        Ok(Arc::new(Inner {
            settings: Settings {
                cluster: cfg.cluster,
                node: cfg.node,
                members: std::sync::RwLock::new(cfg.members.into_iter().collect()),
                reconnect_min: cfg.reconnect_min,
                reconnect_max: cfg.reconnect_max,
                send_queue: cfg.send_queue,
                compress: cfg.compress,
            },
            local_addr,
            client_config,
            patient_client_config,
            rejected: RejectCounters::default(),
            events,
            endpoint: Mutex::new(Some(endpoint)),
            peers: Mutex::new(Peers::default()),
            transitions: tokio::sync::Mutex::new(()),
            closing: watch::Sender::new(false),
            writers: watch::Sender::new(0),
            next_id: AtomicU64::new(1),
            rt,
        }))
    }

    /// The peer table. Never hold the guard across an await.
    pub(super) fn peers(&self) -> MutexGuard<'_, Peers> {
        // A poisoned lock only means another task panicked mid-update of plain data.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a task on the transport's runtime.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.rt.spawn(task);
    }

    /// Whether `shutdown` has started (or the last handle was dropped).
    pub(super) fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// The endpoint, unless the transport has shut down.
    pub(crate) fn endpoint(&self) -> Option<quinn::Endpoint> {
        self.endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A receiver of the "shutting down" flag.
    pub(crate) fn closing_rx(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Whether a peer id may be linked to (a member other than ourselves).
    pub(crate) fn is_member(&self, peer: &str) -> bool {
        peer != self.settings.node
            && self
                .settings
                .members
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(peer)
    }

    /// See [`super::Transport::set_members`].
    pub(crate) fn set_members(&self, members: Vec<String>) {
        let members: HashSet<String> = members.into_iter().collect();
        *self
            .settings
            .members
            .write()
            .unwrap_or_else(|e| e.into_inner()) = members.clone();
        let mut peers = self.peers();
        for (id, p) in peers.by_id.iter_mut() {
            if members.contains(id) {
                continue;
            }
            p.wanted = None;
            if let Some(l) = p.link.as_ref() {
                l.conn
                    .close(code::UNKNOWN_NODE, b"not a member of the cluster");
            }
        }
    }

    /// Sends an event unless the transport is shutting down (then it is dropped).
    pub(crate) async fn emit(&self, ev: TransportEvent) {
        let mut closing = self.closing_rx();
        tokio::select! {
            _ = self.events.send(ev) => {}
            _ = wait_closing(&mut closing) => {}
        }
    }

    /// Sends a message event, waiting for room (while shutting down it is dropped instead
    /// of waiting); false once the owner has dropped the receiver.
    pub(crate) async fn deliver(
        &self,
        ev: TransportEvent,
        closing: &mut watch::Receiver<bool>,
    ) -> bool {
        if *closing.borrow() {
            return !matches!(
                self.events.try_send(ev),
                Err(mpsc::error::TrySendError::Closed(_))
            );
        }
        tokio::select! {
            r = self.events.send(ev) => r.is_ok(),
            _ = wait_closing(closing) => true,
        }
    }

    /// See [`super::Transport::disconnect`].
    pub(crate) fn disconnect(&self, peer: &str) {
        let mut peers = self.peers();
        if let Some(p) = peers.by_id.get_mut(peer) {
            p.wanted = None;
            if let Some(l) = p.link.as_ref().filter(|l| l.dialed_by_us) {
                l.conn.close(code::DISCONNECT, b"link no longer wanted");
            }
        }
    }

    /// See [`super::Transport::send`].
    pub(crate) fn send(&self, peer: &str, msg: Message) -> Result<(), SendError> {
        if let Err(crate::wire::WireError::TooLarge { len, .. }) = crate::wire::check_fits(&msg) {
            return Err(SendError::TooLarge {
                len,
                docs: msg.docs(),
            });
        }
        let peers = self.peers();
        let Some(p) = peers.by_id.get(peer) else {
            return Err(SendError::NotConnected);
        };
        let Some(session) = &p.session else {
            return Err(SendError::NotConnected);
        };
        match session.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                p.counters.inc_dropped_full();
                Err(SendError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::NotConnected),
        }
    }

    /// See [`super::Transport::connected`].
    pub(crate) fn connected(&self) -> Vec<String> {
        let peers = self.peers();
        let mut out: Vec<String> = peers
            .by_id
            .iter()
            .filter(|(_, p)| p.link.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// See [`super::Transport::stats`].
    pub(crate) fn stats(&self) -> TransportStats {
        let connections = self.endpoint().map_or(0, |ep| ep.open_connections());
        let peers = self.peers();
        let by_peer: BTreeMap<String, PeerStats> = peers
            .by_id
            .iter()
            .map(|(id, p)| {
                let depth = p
                    .session
                    .as_ref()
                    .map_or(0, |s| self.settings.send_queue - s.tx.capacity());
                let rtt = p.link.as_ref().map(|l| l.conn.rtt());
                (
                    id.clone(),
                    p.counters.snapshot(p.link.is_some(), depth, rtt),
                )
            })
            .collect();
        TransportStats::new(by_peer, connections, self.rejected.snapshot())
    }

    /// Stops dialing and accepting; every later admission is refused.
    fn begin_closing(&self) {
        self.closing.send_replace(true);
        for p in self.peers().by_id.values_mut() {
            p.wanted = None;
        }
    }

    fn take_endpoint(&self) -> Option<quinn::Endpoint> {
        self.endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// See [`super::Transport::shutdown`].
    pub(crate) async fn shutdown(&self) {
        self.begin_closing();
        let mut writers = self.writers.subscribe();
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, writers.wait_for(|n| *n == 0)).await;
        let conns: Vec<quinn::Connection> = self
            .peers()
            .by_id
            .values_mut()
            .filter_map(|p| {
                p.session = None;
                p.set_link(None).map(|l| l.conn)
            })
            .collect();
        for c in conns {
            c.close(code::SHUTDOWN, b"node shutting down");
        }
        if let Some(ep) = self.take_endpoint() {
            ep.close(code::SHUTDOWN, b"node shutting down");
            let _ = tokio::time::timeout(IDLE_TIMEOUT, ep.wait_idle()).await;
            // Connections closed during their handshake drain for three probe timeouts
            // (seconds without an RTT sample) and keep the endpoint, and so our UDP port,
            // alive meanwhile. Move them to a throwaway socket so the port is free now;
            // quinn keeps the previous socket until traffic arrives on the new one, hence
            // twice.
            for _ in 0..2 {
                if let Ok(spare) = std::net::UdpSocket::bind((self.local_addr.ip(), 0)) {
                    let _ = ep.rebind(spare);
                }
            }
        }
    }

    /// Stops everything at once (the last handle was dropped without `shutdown`).
    pub(crate) fn close_now(&self) {
        self.begin_closing();
        if let Some(ep) = self.take_endpoint() {
            ep.close(code::SHUTDOWN, b"node shutting down");
        }
    }
}

/// Resolves once the transport is shutting down.
pub(crate) async fn wait_closing(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// Counts a running writer; `shutdown` waits for the count to reach zero.
pub(crate) struct WriterGuard(Arc<Inner>);

impl WriterGuard {
    /// Counts one more writer until the guard is dropped.
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        inner.writers.send_modify(|n| *n += 1);
        WriterGuard(inner)
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.0.writers.send_modify(|n| *n = n.saturating_sub(1));
    }
}
