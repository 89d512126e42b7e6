//! The per-peer records kept by the transport: whether we want the link (and the dial
//! loop's cancel handle), the one live link, the send queue of the current connected period,
//! the counters, and the watch channels the dial loop waits on. Plain data: the rules that
//! change it live in `admit.rs` and `state.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::stats::PeerCounters;
use crate::wire::Message;

/// The receiving end of a peer's send queue. The writer of the current link holds the lock
/// while it drains; a writer that replaces it waits for the lock.
pub(crate) type SharedQueue = Arc<tokio::sync::Mutex<mpsc::Receiver<Message>>>;

/// The queue of one connected period of a peer (from Up to Down).
pub(super) struct Session {
    pub(super) tx: mpsc::Sender<Message>,
    pub(super) rx: SharedQueue,
}

impl Session {
    pub(super) fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        Session {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }
}

/// Our wish to keep a link to a peer; dropping it cancels the dial loop.
pub(super) struct Wanted {
    pub(super) addr: SocketAddr,
    pub(super) generation: u64,
    pub(super) _cancel: watch::Sender<()>,
}

/// The live, handshaken connection of a peer.
pub(super) struct Link {
    pub(super) id: u64,
    pub(super) conn: quinn::Connection,
    pub(super) dialed_by_us: bool,
}

/// Everything the transport knows about one peer.
pub(super) struct Peer {
    pub(super) wanted: Option<Wanted>,
    pub(super) link: Option<Link>,
    pub(super) session: Option<Session>,
    pub(super) counters: Arc<PeerCounters>,
    /// Whether `link` is set; the dial loop waits for it to become false.
    pub(super) connected: watch::Sender<bool>,
    /// Where a dial attempt of ours is (see `Inner::begin_dial`).
    pub(super) dialing: watch::Sender<Dialing>,
}

/// Where our dial attempt to a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialing {
    /// None in progress.
    No,
    /// Waiting for the QUIC handshake (which, for an attempt begun while the peer was down,
    /// may only complete seconds after it is back).
    Handshake,
    /// Handshaken, exchanging Hellos: about to be admitted.
    Hello,
}

impl Peer {
    fn new() -> Self {
        Peer {
            wanted: None,
            link: None,
            session: None,
            counters: Arc::default(),
            connected: watch::Sender::new(false),
            dialing: watch::Sender::new(Dialing::No),
        }
    }

    /// Sets or clears the link, keeping `connected` in step.
    pub(super) fn set_link(&mut self, link: Option<Link>) -> Option<Link> {
        self.connected.send_replace(link.is_some());
        std::mem::replace(&mut self.link, link)
    }
}

/// All peers ever dialed or admitted (members only, so the table is bounded).
#[derive(Default)]
pub(super) struct Peers {
    pub(super) by_id: HashMap<String, Peer>,
}

impl Peers {
    /// The record of `id`, created if new.
    pub(super) fn get_or_create(&mut self, id: &str) -> &mut Peer {
        self.by_id.entry(id.to_string()).or_insert_with(Peer::new)
    }
}
