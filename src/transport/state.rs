//! The transport's shared state: settings, the endpoint, the peers with their links and
//! send queues, and the rules that decide which connection becomes (or stays) a peer's link.
//! Every change to a peer's set of links happens under one async `transitions` lock that is
//! held until the resulting Up/Down event has been delivered, so events of a peer are
//! emitted in the order the changes happened. The std mutex on the state itself is never
//! held across an await.
//!
//! Does not read or write streams (see `link.rs`) nor perform handshakes (`dial.rs`,
//! `accept.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use super::frames::FrameReader;
use super::stats::{PeerCounters, PeerStats, RejectCounters, TransportStats};
use super::tls::{self, Timing};
use super::{link, SendError, TransportConfig, TransportError, TransportEvent};
use crate::wire::Message;

/// How long `shutdown` waits for queued frames to be written and read by the peers.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `shutdown` waits for the peers to acknowledge the closes.
const IDLE_TIMEOUT: Duration = Duration::from_millis(500);

/// Application error codes used when this node closes a connection.
pub(crate) mod code {
    use quinn::VarInt;
    /// The peer finished its stream, or the link is no longer used.
    pub(crate) const DONE: VarInt = VarInt::from_u32(0);
    /// This node is shutting down.
    pub(crate) const SHUTDOWN: VarInt = VarInt::from_u32(1);
    /// The Hello named another cluster.
    pub(crate) const WRONG_CLUSTER: VarInt = VarInt::from_u32(2);
    /// The Hello was missing, malformed, late, unexpected or of another version.
    pub(crate) const BAD_HELLO: VarInt = VarInt::from_u32(3);
    /// The Hello named a node that is not a member.
    pub(crate) const UNKNOWN_NODE: VarInt = VarInt::from_u32(4);
    /// The Hello named a node the certificate is not valid for.
    pub(crate) const CERT_MISMATCH: VarInt = VarInt::from_u32(5);
    /// A malformed frame after the handshake.
    pub(crate) const BAD_FRAME: VarInt = VarInt::from_u32(6);
    /// Another connection between the same two nodes is kept instead.
    pub(crate) const DUPLICATE: VarInt = VarInt::from_u32(7);
    /// A newer connection from the same dialer replaced this one.
    pub(crate) const REPLACED: VarInt = VarInt::from_u32(8);
    /// The dialer no longer wants the link.
    pub(crate) const DISCONNECT: VarInt = VarInt::from_u32(9);
}

/// The parts of [`TransportConfig`] used after start-up.
pub(crate) struct Settings {
    pub(crate) cluster: String,
    pub(crate) node: String,
    pub(crate) members: HashSet<String>,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) send_queue: usize,
}

/// The receiving end of a peer's send queue, shared by the writers of its links: the writer
/// holding the lock drains it, so queued messages survive a switch between duplicate links.
pub(crate) type SharedQueue = Arc<tokio::sync::Mutex<mpsc::Receiver<Message>>>;

/// The queue of one connected period of a peer (from Up to Down).
struct Session {
    tx: mpsc::Sender<Message>,
    rx: SharedQueue,
}

/// Our wish to keep a link to a peer; dropping it cancels the dial loop.
struct Wanted {
    addr: SocketAddr,
    generation: u64,
    _cancel: watch::Sender<()>,
}

/// One live, handshaken connection.
struct Link {
    id: u64,
    conn: quinn::Connection,
    dialed_by_us: bool,
}

struct Peer {
    wanted: Option<Wanted>,
    links: Vec<Link>,
    session: Option<Session>,
    counters: Arc<PeerCounters>,
    link_count: watch::Sender<usize>,
    /// A dial attempt of ours is in progress (see [`Inner::begin_dial`]).
    dialing: watch::Sender<bool>,
}

impl Peer {
    fn new() -> Self {
        Peer {
            wanted: None,
            links: Vec::new(),
            session: None,
            counters: Arc::default(),
            link_count: watch::Sender::new(0),
            dialing: watch::Sender::new(false),
        }
    }
}

#[derive(Default)]
struct State {
    peers: HashMap<String, Peer>,
}

impl State {
    fn peer(&mut self, id: &str) -> &mut Peer {
        self.peers.entry(id.to_string()).or_insert_with(Peer::new)
    }
}

/// A handshaken connection offered to [`Inner::admit`].
pub(crate) struct NewLink {
    pub(crate) conn: quinn::Connection,
    pub(crate) send: quinn::SendStream,
    pub(crate) frames: FrameReader,
    /// The first frame to write (the acceptor's Hello), if not written yet.
    pub(crate) first_frame: Option<Vec<u8>>,
    /// `Some(generation)` if we dialed it: admitted only while that dial is still wanted.
    pub(crate) dial_generation: Option<u64>,
}

/// Why [`Inner::admit`] refused a connection (it has been closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// We already keep the connection we dialed (we have the smaller id).
    Duplicate,
    /// The dial that made it is no longer wanted.
    NotWanted,
    /// The transport is shutting down.
    Closing,
}

/// Whether a dial loop may dial now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DialPermit {
    /// Dial; the attempt is marked in progress until [`Inner::end_dial`].
    Go,
    /// The peer has a link (it appeared meanwhile): wait for it to drop.
    HasLink,
    /// The link is no longer wanted (or the transport is closing): stop.
    Stop,
}

/// What admitting a link does to the peer's events.
enum Change {
    /// No event (another link already carries the peer).
    Silent,
    /// The first link: Up.
    Up,
    /// A stale link was replaced by a newer one from the same dialer: Down then Up.
    Restarted,
}

/// Everything shared by the transport's handle and tasks.
pub(crate) struct Inner {
    pub(crate) settings: Settings,
    pub(crate) local_addr: SocketAddr,
    pub(crate) client_config: quinn::ClientConfig,
    pub(crate) rejected: RejectCounters,
    events: mpsc::Sender<TransportEvent>,
    endpoint: Mutex<Option<quinn::Endpoint>>,
    state: Mutex<State>,
    transitions: tokio::sync::Mutex<()>,
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

fn check_id(field: &'static str, id: &str) -> Result<(), TransportError> {
    rustls_pki_types::DnsName::try_from(id)
        .map(|_| ())
        .map_err(|_| config_error(field, format!("node id {id:?} is not a valid DNS name")))
}

fn validate(cfg: &TransportConfig) -> Result<(), TransportError> {
    if cfg.cluster.is_empty() {
        return Err(config_error("cluster", "empty"));
    }
    check_id("node", &cfg.node)?;
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
    for m in &cfg.members {
        check_id("members", m)?;
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
        let bind_error = |source| TransportError::Bind {
            addr: cfg.listen,
            source,
        };
        let endpoint = quinn::Endpoint::server(server, cfg.listen).map_err(bind_error)?;
        let local_addr = endpoint.local_addr().map_err(bind_error)?;
        Ok(Arc::new(Inner {
            settings: Settings {
                cluster: cfg.cluster,
                node: cfg.node,
                members: cfg.members.into_iter().collect(),
                reconnect_min: cfg.reconnect_min,
                reconnect_max: cfg.reconnect_max,
                send_queue: cfg.send_queue,
            },
            local_addr,
            client_config,
            rejected: RejectCounters::default(),
            events,
            endpoint: Mutex::new(Some(endpoint)),
            state: Mutex::new(State::default()),
            transitions: tokio::sync::Mutex::new(()),
            closing: watch::Sender::new(false),
            writers: watch::Sender::new(0),
            next_id: AtomicU64::new(1),
            rt: Handle::current(),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another task panicked mid-update of plain data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint, unless the transport has shut down.
    pub(crate) fn endpoint(&self) -> Option<quinn::Endpoint> {
        self.endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A receiver of the "shutting down" flag.
    pub(crate) fn closing_rx(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Whether a peer id may be linked to (a member other than ourselves).
    pub(crate) fn is_member(&self, peer: &str) -> bool {
        peer != self.settings.node && self.settings.members.contains(peer)
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

    /// Makes a handshaken connection a link of `peer` (emitting Up if it is the first) and
    /// starts its reader and writer, or closes it and says why not.
    pub(crate) async fn admit(self: &Arc<Self>, peer: &str, new: NewLink) -> Result<(), Refusal> {
        let _order = self.transitions.lock().await;
        let dialed_by_us = new.dial_generation.is_some();
        let id = self.next_id();
        let decided = {
            let mut st = self.state();
            self.decide(&mut st, peer, &new, id)
        };
        let (change, queue, counters) = match decided {
            Ok(d) => d,
            Err(refusal) => {
                let (code, reason): (_, &[u8]) = match refusal {
                    Refusal::Duplicate => (code::DUPLICATE, b"duplicate connection"),
                    Refusal::NotWanted => (code::DISCONNECT, b"link no longer wanted"),
                    Refusal::Closing => (code::SHUTDOWN, b"node shutting down"),
                };
                new.conn.close(code, reason);
                return Err(refusal);
            }
        };
        tracing::debug!(peer, dialed_by_us, "link up");
        match change {
            Change::Silent => {}
            Change::Up => self.emit(TransportEvent::Up(peer.to_string())).await,
            Change::Restarted => {
                self.emit(TransportEvent::Down(peer.to_string())).await;
                self.emit(TransportEvent::Up(peer.to_string())).await;
            }
        }
        self.writers.send_modify(|n| *n += 1);
        let guard = WriterGuard(self.clone());
        self.rt.spawn(link::run_writer(
            self.clone(),
            link::WriterArgs {
                peer: peer.to_string(),
                conn: new.conn.clone(),
                send: new.send,
                first_frame: new.first_frame,
                queue,
                counters: counters.clone(),
            },
            guard,
        ));
        self.rt.spawn(link::run_reader(
            self.clone(),
            peer.to_string(),
            id,
            new.conn,
            new.frames,
            counters,
        ));
        Ok(())
    }

    /// The admission rules (see the module docs of `transport`), applied to the state.
    fn decide(
        &self,
        st: &mut State,
        peer: &str,
        new: &NewLink,
        id: u64,
    ) -> Result<(Change, SharedQueue, Arc<PeerCounters>), Refusal> {
        if *self.closing.borrow() {
            return Err(Refusal::Closing);
        }
        let dialed_by_us = new.dial_generation.is_some();
        let we_are_smaller = self.settings.node.as_str() < peer;
        let send_queue = self.settings.send_queue;
        let p = st.peer(peer);
        if let Some(generation) = new.dial_generation {
            if p.wanted.as_ref().map(|w| w.generation) != Some(generation) {
                return Err(Refusal::NotWanted);
            }
        }
        if we_are_smaller
            && !dialed_by_us
            && (*p.dialing.borrow() || p.links.iter().any(|l| l.dialed_by_us))
        {
            return Err(Refusal::Duplicate);
        }
        let had_links = !p.links.is_empty();
        let mut stale = false;
        p.links.retain(|l| {
            if l.dialed_by_us == dialed_by_us {
                l.conn
                    .close(code::REPLACED, b"replaced by a newer connection");
                stale = true;
                false
            } else if we_are_smaller && dialed_by_us {
                l.conn.close(code::DUPLICATE, b"duplicate connection");
                false
            } else {
                true
            }
        });
        let change = if !had_links {
            Change::Up
        } else if stale && p.links.is_empty() {
            Change::Restarted
        } else {
            Change::Silent
        };
        if !matches!(change, Change::Silent) || p.session.is_none() {
            let (tx, rx) = mpsc::channel(send_queue);
            p.session = Some(Session {
                tx,
                rx: Arc::new(tokio::sync::Mutex::new(rx)),
            });
        }
        p.links.push(Link {
            id,
            conn: new.conn.clone(),
            dialed_by_us,
        });
        p.link_count.send_replace(p.links.len());
        let queue = match &p.session {
            Some(s) => s.rx.clone(),
            None => return Err(Refusal::Closing),
        };
        Ok((change, queue, p.counters.clone()))
    }

    /// Checks, atomically with admissions, that `peer` is still wanted by the dial loop of
    /// `generation` and has no link, and if so marks a dial attempt in progress.
    pub(crate) fn begin_dial(&self, peer: &str, generation: u64) -> DialPermit {
        if *self.closing.borrow() {
            return DialPermit::Stop;
        }
        let mut st = self.state();
        let p = st.peer(peer);
        if p.wanted.as_ref().map(|w| w.generation) != Some(generation) {
            return DialPermit::Stop;
        }
        if !p.links.is_empty() {
            return DialPermit::HasLink;
        }
        p.dialing.send_replace(true);
        DialPermit::Go
    }

    /// Ends the dial attempt marked by [`Inner::begin_dial`].
    pub(crate) fn end_dial(&self, peer: &str) {
        if let Some(p) = self.state().peers.get(peer) {
            p.dialing.send_replace(false);
        }
    }

    /// When a peer with a larger id dials us while we are dialing it, waits (bounded) for our
    /// own attempt to finish: if it succeeds, the peer's connection is refused as a duplicate
    /// before either side used it, so no message is ever lost in a connection that is
    /// dropped. Returns at once when we are not dialing.
    pub(crate) async fn await_own_dial(&self, peer: &str, limit: Duration) {
        if self.settings.node.as_str() >= peer {
            return;
        }
        let mut dialing = self.state().peer(peer).dialing.subscribe();
        let _ = tokio::time::timeout(limit, dialing.wait_for(|d| !*d)).await;
    }

    /// Called by a link's reader when its connection is over: forgets the link and emits
    /// Down if it was the peer's last.
    pub(crate) async fn link_gone(&self, peer: &str, id: u64) {
        let _order = self.transitions.lock().await;
        let down = {
            let mut st = self.state();
            let Some(p) = st.peers.get_mut(peer) else {
                return;
            };
            let before = p.links.len();
            p.links.retain(|l| l.id != id);
            p.link_count.send_replace(p.links.len());
            let last = before > 0 && p.links.is_empty();
            if last {
                p.session = None;
            }
            last
        };
        if down {
            tracing::debug!(peer, "link down");
            self.emit(TransportEvent::Down(peer.to_string())).await;
        }
    }

    /// See [`super::Transport::connect`].
    pub(crate) fn connect(self: &Arc<Self>, peer: &str, addr: SocketAddr) {
        if !self.is_member(peer) {
            tracing::warn!(
                peer,
                "not dialing: not a member of the cluster or this node itself"
            );
            return;
        }
        if *self.closing.borrow() {
            return;
        }
        let generation = self.next_id();
        let (cancel_tx, cancel_rx) = watch::channel(());
        let (links, counters) = {
            let mut st = self.state();
            let p = st.peer(peer);
            if p.wanted.as_ref().is_some_and(|w| w.addr == addr) {
                return;
            }
            p.wanted = Some(Wanted {
                addr,
                generation,
                _cancel: cancel_tx,
            });
            (p.link_count.subscribe(), p.counters.clone())
        };
        self.rt.spawn(super::dial::dial_loop(
            self.clone(),
            super::dial::DialTarget {
                peer: peer.to_string(),
                addr,
                generation,
                cancel: cancel_rx,
                links,
                counters,
            },
        ));
    }

    /// See [`super::Transport::disconnect`].
    pub(crate) fn disconnect(&self, peer: &str) {
        let mut st = self.state();
        if let Some(p) = st.peers.get_mut(peer) {
            p.wanted = None;
            for l in p.links.iter().filter(|l| l.dialed_by_us) {
                l.conn.close(code::DISCONNECT, b"link no longer wanted");
            }
        }
    }

    /// See [`super::Transport::send`].
    pub(crate) fn send(&self, peer: &str, msg: Message) -> Result<(), SendError> {
        let st = self.state();
        let Some(p) = st.peers.get(peer) else {
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
        let st = self.state();
        let mut out: Vec<String> = st
            .peers
            .iter()
            .filter(|(_, p)| !p.links.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// See [`super::Transport::stats`].
    pub(crate) fn stats(&self) -> TransportStats {
        let st = self.state();
        let peers: BTreeMap<String, PeerStats> = st
            .peers
            .iter()
            .map(|(id, p)| {
                let depth = p
                    .session
                    .as_ref()
                    .map_or(0, |s| self.settings.send_queue - s.tx.capacity());
                let stats = p
                    .counters
                    .snapshot(!p.links.is_empty(), p.links.len(), depth);
                (id.clone(), stats)
            })
            .collect();
        TransportStats::new(peers, self.rejected.snapshot())
    }

    /// See [`super::Transport::shutdown`].
    pub(crate) async fn shutdown(&self) {
        self.closing.send_replace(true);
        for p in self.state().peers.values_mut() {
            p.wanted = None;
        }
        let mut writers = self.writers.subscribe();
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, writers.wait_for(|n| *n == 0)).await;
        let conns: Vec<quinn::Connection> = {
            let mut st = self.state();
            let mut conns = Vec::new();
            for p in st.peers.values_mut() {
                conns.extend(p.links.drain(..).map(|l| l.conn));
                p.session = None;
                p.link_count.send_replace(0);
            }
            conns
        };
        for c in conns {
            c.close(code::SHUTDOWN, b"node shutting down");
        }
        let endpoint = self
            .endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(ep) = endpoint {
            ep.close(code::SHUTDOWN, b"node shutting down");
            let _ = tokio::time::timeout(IDLE_TIMEOUT, ep.wait_idle()).await;
        }
    }

    /// Stops everything at once (the last handle was dropped without `shutdown`).
    pub(crate) fn close_now(&self) {
        self.closing.send_replace(true);
        for p in self.state().peers.values_mut() {
            p.wanted = None;
        }
        let endpoint = self
            .endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(ep) = endpoint {
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

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.0.writers.send_modify(|n| *n = n.saturating_sub(1));
    }
}
