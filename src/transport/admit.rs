//! Which connection is a peer's link: admission of handshaken connections, removal of dead
//! ones, and the coordination of our dial attempts with incoming connections.
//!
//! The rules keep at most one link per peer on each side, and the same one on both sides:
//! - A dial starts only while the peer has no link (`begin_dial`, atomically with admission).
//! - Simultaneous dials: the node with the smaller id refuses the larger's connection while
//!   its own handshaken dial exchanges Hellos or has succeeded (`Refusal::Duplicate`); it
//!   waits (bounded) for that attempt before deciding, so the refused connection was never
//!   used and no message is lost in it. The larger node only ever admits the survivor. A
//!   dial of ours still waiting for its QUIC handshake yields: the larger's connection is
//!   admitted, and ours, once handshaken, finds the link and closes before its Hello
//!   (`dial_handshaken`).
//! - Any other admitted connection replaces the existing link, which is then stale: its
//!   dialer only dialed because it had lost it (for example after a restart). The peer
//!   sees Down then Up in that case.
//!
//! Every change happens under the `transitions` lock, held until its event is delivered, so
//! a peer's Up and Down events come out in the order of the changes.

use std::sync::Arc;
use std::time::Duration;

use super::frames::FrameReader;
use super::link;
use super::peers::{Dialing, Link, Session, SharedQueue};
use super::state::{code, Inner, WriterGuard};
use super::stats::PeerCounters;
use super::TransportEvent;

/// A handshaken connection offered to [`Inner::admit`].
pub(crate) struct NewLink {
    pub(crate) conn: quinn::Connection,
    pub(crate) send: quinn::SendStream,
    pub(crate) frames: FrameReader,
    /// The first frame to write (the acceptor's Hello), if not written yet.
    pub(crate) first_frame: Option<Vec<u8>>,
    /// `Some(generation)` if we dialed it: admitted only while that dial is still wanted.
    pub(crate) dial_generation: Option<u64>,
    /// Both Hellos offered deflate: everything after them is compressed, both ways.
    pub(crate) compress: bool,
    /// The protocol version of the connection (see [`crate::wire`]).
    pub(crate) version: u8,
}

/// Why [`Inner::admit`] refused a connection (it has been closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// We have the smaller id and keep (or are making) the connection we dialed.
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

impl Inner {
    /// Makes a handshaken connection the link of `peer` (emitting Up, or Down and Up if it
    /// replaces a stale one) and starts its reader and writer; or closes it and says why.
    pub(crate) async fn admit(self: &Arc<Self>, peer: &str, new: NewLink) -> Result<(), Refusal> {
        let _order = self.transitions.lock().await;
        let id = self.next_id();
        let decided = self.decide(peer, &new, id);
        let (replaced, queue, counters) = match decided {
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
        counters.set_protocol(new.version);
        if new.version == crate::wire::PROTOCOL_VERSION {
            tracing::debug!(
                peer,
                dialed_by_us = new.dial_generation.is_some(),
                replaced,
                "link up"
            );
        } else {
            tracing::info!(
                peer,
                version = new.version,
                "link up with a peer of an older release: speaking its protocol version"
            );
        }
        if replaced {
            counters.inc_links_lost();
            self.emit(TransportEvent::Down(peer.to_string())).await;
        }
        self.emit(TransportEvent::Up(peer.to_string())).await;
        let guard = WriterGuard::new(self.clone());
        self.spawn(link::run_writer(
            self.clone(),
            link::WriterArgs {
                peer: peer.to_string(),
                conn: new.conn.clone(),
                send: new.send,
                first_frame: new.first_frame,
                queue,
                counters: counters.clone(),
                compress: new.compress,
                version: new.version,
            },
            guard,
        ));
        let mut frames = new.frames;
        if new.compress {
            frames.inflate();
        }
        self.spawn(link::run_reader(
            self.clone(),
            peer.to_string(),
            id,
            new.conn,
            frames,
            counters,
        ));
        Ok(())
    }

    /// Applies the admission rules; on success returns whether a stale link was replaced,
    /// the new session's queue and the peer's counters.
    fn decide(
        &self,
        peer: &str,
        new: &NewLink,
        id: u64,
    ) -> Result<(bool, SharedQueue, Arc<PeerCounters>), Refusal> {
        if self.is_closing() {
            return Err(Refusal::Closing);
        }
        let dialed_by_us = new.dial_generation.is_some();
        let we_are_smaller = self.settings.node.as_str() < peer;
        let capacity = self.settings.send_queue;
        let mut peers = self.peers();
        let p = peers.get_or_create(peer);
        if let Some(generation) = new.dial_generation {
            if p.wanted.as_ref().map(|w| w.generation) != Some(generation) {
                return Err(Refusal::NotWanted);
            }
        }
        let own_link = p.link.as_ref().is_some_and(|l| l.dialed_by_us);
        if we_are_smaller && !dialed_by_us && (*p.dialing.borrow() == Dialing::Hello || own_link) {
            return Err(Refusal::Duplicate);
        }
        let old = p.set_link(Some(Link {
            id,
            conn: new.conn.clone(),
            dialed_by_us,
        }));
        if let Some(old) = &old {
            old.conn
                .close(code::REPLACED, b"replaced by a newer connection");
        }
        let session = Session::new(capacity);
        let queue = session.rx.clone();
        p.session = Some(session);
        Ok((old.is_some(), queue, p.counters.clone()))
    }

    /// Called by a link's reader when its connection is over: forgets the link (unless it
    /// was replaced already) and emits Down.
    pub(crate) async fn link_gone(&self, peer: &str, id: u64) {
        let _order = self.transitions.lock().await;
        let down = {
            let mut peers = self.peers();
            match peers.by_id.get_mut(peer) {
                Some(p) if p.link.as_ref().is_some_and(|l| l.id == id) => {
                    p.set_link(None);
                    p.session = None;
                    p.counters.inc_links_lost();
                    true
                }
                _ => false,
            }
        };
        if down {
            tracing::debug!(peer, "link down");
            self.emit(TransportEvent::Down(peer.to_string())).await;
        }
    }

    /// Reports a failed dial attempt to `peer`, unless a link to it came up meanwhile (the
    /// peer dialed us): under the transitions lock, so the report never follows that link's
    /// Up (which would leave the peer believed down while connected).
    pub(crate) async fn dial_failed(&self, peer: &str) {
        let _order = self.transitions.lock().await;
        let linked = self
            .peers()
            .by_id
            .get(peer)
            .is_some_and(|p| p.link.is_some());
        if !linked {
            self.emit(TransportEvent::DialFailed(peer.to_string()))
                .await;
        }
    }

    /// Checks, atomically with admissions, that `peer` is still wanted by the dial loop of
    /// `generation` and has no link, and if so marks a dial attempt in progress.
    pub(crate) fn begin_dial(&self, peer: &str, generation: u64) -> DialPermit {
        if self.is_closing() {
            return DialPermit::Stop;
        }
        let mut peers = self.peers();
        let p = peers.get_or_create(peer);
        if p.wanted.as_ref().map(|w| w.generation) != Some(generation) {
            return DialPermit::Stop;
        }
        if p.link.is_some() {
            return DialPermit::HasLink;
        }
        p.dialing.send_replace(Dialing::Handshake);
        DialPermit::Go
    }

    /// Our dial attempt to `peer` is handshaken: true (and it goes on to the Hellos) unless
    /// a link came up meanwhile (the peer dialed us), atomically with admissions.
    pub(crate) fn dial_handshaken(&self, peer: &str) -> bool {
        let peers = self.peers();
        let Some(p) = peers.by_id.get(peer) else {
            return false;
        };
        if p.link.is_some() {
            return false;
        }
        p.dialing.send_replace(Dialing::Hello);
        true
    }

    /// Ends the dial attempt marked by [`Inner::begin_dial`].
    pub(crate) fn end_dial(&self, peer: &str) {
        if let Some(p) = self.peers().by_id.get(peer) {
            p.dialing.send_replace(Dialing::No);
        }
    }

    /// When a peer with a larger id dials us while our own handshaken attempt exchanges
    /// Hellos, waits (at most `limit`) for that attempt to end, so that admission can keep
    /// ours and refuse theirs before either is used. Returns at once when we are not
    /// dialing, or still wait for our QUIC handshake: theirs is done, so it is kept, and
    /// ours gives up once handshaken (see [`Inner::dial_handshaken`]), as an attempt begun
    /// while the peer was down can take seconds to reach it once it is back.
    pub(crate) async fn await_own_dial(&self, peer: &str, limit: Duration) {
        if self.settings.node.as_str() >= peer {
            return;
        }
        let mut dialing = self.peers().get_or_create(peer).dialing.subscribe();
        let _ = tokio::time::timeout(limit, dialing.wait_for(|d| *d != Dialing::Hello)).await;
    }
}
