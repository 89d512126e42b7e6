//! The queue from the node to one automerge-repo client's connection, bounded in bytes:
//! the driver never waits for a client, and a client that falls behind holds at most
//! `sync_client_queue_bytes` of the node's memory before the node gives up on it.
//!
//! Each message counts its data plus [`MESSAGE_OVERHEAD`] bytes (so the bound also caps
//! the number of messages), and one message always fits in an empty queue (an answer
//! larger than the bound is still delivered). The connection reads how much is queued
//! ([`ClientReceiver::queued`]) to stop reading the client's own messages while it is
//! behind, and learns at once when the node gave up ([`ClientReceiver::given_up`]), even in
//! the middle of a write.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::ClientEvent;
use crate::core::ClientMsg;

/// Bytes a message counts besides its data: its slot, its strings' headers, the
/// encoding's framing.
pub(crate) const MESSAGE_OVERHEAD: usize = 128;

/// What the two ends share.
#[derive(Debug, Default)]
struct Shared {
    bytes: AtomicUsize,
    messages: AtomicUsize,
    given_up: AtomicBool,
    wake: Notify,
}

/// The node's end (the driver's).
#[derive(Debug)]
pub(crate) struct ClientSender {
    tx: mpsc::UnboundedSender<(ClientEvent, usize)>,
    shared: Arc<Shared>,
    max_bytes: usize,
}

/// The connection's end.
#[derive(Debug)]
pub(crate) struct ClientReceiver {
    rx: mpsc::UnboundedReceiver<(ClientEvent, usize)>,
    shared: Arc<Shared>,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unqueued {
    /// It would take the queue past its bound: `queued` bytes wait already.
    Full { queued: usize },
    /// The connection is gone.
    Closed,
}

/// A queue holding at most `max_bytes` (and always one message).
pub(crate) fn channel(max_bytes: usize) -> (ClientSender, ClientReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let sender = ClientSender {
        tx,
        shared: Arc::clone(&shared),
        max_bytes,
    };
    (sender, ClientReceiver { rx, shared })
}

/// The bytes a message counts.
fn cost(event: &ClientEvent) -> usize {
    MESSAGE_OVERHEAD
        + match event {
            ClientEvent::Msg(ClientMsg::Sync { doc, data }) => doc.len() + data.len(),
            ClientEvent::Msg(ClientMsg::Unavailable { doc }) => doc.len(),
            ClientEvent::Msg(ClientMsg::Ephemeral(e)) => {
                e.doc.len() + e.origin.len() + e.sender.len() + e.session.len() + e.data.len()
            }
            ClientEvent::Close(why) => why.len(),
        }
}

impl ClientSender {
    /// Queues a message for the client, if it fits.
    pub(crate) fn send(&self, msg: ClientMsg) -> Result<(), Unqueued> {
        let event = ClientEvent::Msg(msg);
        let cost = cost(&event);
        let queued = self.shared.bytes.load(Ordering::Acquire);
        if queued > 0 && queued + cost > self.max_bytes {
            return Err(Unqueued::Full { queued });
        }
        self.push(event, cost)
    }

    /// Bytes queued now.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }

    /// Tells the connection to close with this error (whatever the bound).
    pub(crate) fn close(&self, why: String) {
        let event = ClientEvent::Close(why);
        let cost = cost(&event);
        let _ = self.push(event, cost);
    }

    /// The node gives up on the client: the connection ends at once, its queue dropped.
    pub(crate) fn give_up(self) {
        self.shared.given_up.store(true, Ordering::Release);
        self.shared.wake.notify_waiters();
    }

    fn push(&self, event: ClientEvent, cost: usize) -> Result<(), Unqueued> {
        self.shared.bytes.fetch_add(cost, Ordering::AcqRel);
        self.shared.messages.fetch_add(1, Ordering::AcqRel);
        if self.tx.send((event, cost)).is_err() {
            self.shared.bytes.fetch_sub(cost, Ordering::AcqRel);
            self.shared.messages.fetch_sub(1, Ordering::AcqRel);
            return Err(Unqueued::Closed);
        }
        Ok(())
    }
}

impl ClientReceiver {
    /// The next event; `None` once the node dropped the client (or stopped) and the queue
    /// is empty, or at once if the node gave up on it.
    pub(crate) async fn recv(&mut self) -> Option<ClientEvent> {
        let (event, cost) = tokio::select! {
            biased;
            () = given_up(&self.shared) => return None,
            next = self.rx.recv() => next?,
        };
        self.shared.bytes.fetch_sub(cost, Ordering::AcqRel);
        self.shared.messages.fetch_sub(1, Ordering::AcqRel);
        Some(event)
    }

    /// Messages and bytes queued now.
    pub(crate) fn queued(&self) -> (usize, usize) {
        (
            self.shared.messages.load(Ordering::Acquire),
            self.shared.bytes.load(Ordering::Acquire),
        )
    }

    /// Resolves once the node gave up on the client.
    pub(crate) async fn given_up(&self) {
        given_up(&self.shared).await;
    }
}

/// Resolves once the node gave up on the client.
async fn given_up(shared: &Shared) {
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if shared.given_up.load(Ordering::Acquire) {
            return;
        }
        woken.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(len: usize) -> ClientMsg {
        ClientMsg::Sync {
            doc: "d".into(),
            data: vec![0; len],
        }
    }

    #[tokio::test]
    async fn bounded_in_bytes_with_one_message_always_fitting() {
        let (tx, mut rx) = channel(1000);
        // Larger than the bound, into an empty queue: it fits.
        tx.send(sync(5000)).unwrap();
        assert_eq!(rx.queued(), (1, 5000 + 1 + MESSAGE_OVERHEAD));
        assert!(matches!(tx.send(sync(1)), Err(Unqueued::Full { .. })));
        assert!(matches!(rx.recv().await, Some(ClientEvent::Msg(_))));
        assert_eq!(rx.queued(), (0, 0));
        tx.send(sync(100)).unwrap();
        tx.send(sync(100)).unwrap();
        tx.send(sync(100)).unwrap();
        assert_eq!(
            tx.send(sync(500)),
            Err(Unqueued::Full {
                queued: 3 * (101 + MESSAGE_OVERHEAD)
            })
        );
        // The overhead bounds the number of small messages too.
        tx.send(ClientMsg::Unavailable { doc: "x".into() }).unwrap();
        assert_eq!(rx.queued().0, 4);
        while rx.queued().1 + MESSAGE_OVERHEAD < 1000 {
            tx.send(ClientMsg::Unavailable { doc: "x".into() }).unwrap();
        }
        assert!(tx.send(ClientMsg::Unavailable { doc: "x".into() }).is_err());
        drop(rx);
        tx.close("why".into());
    }

    #[tokio::test]
    async fn giving_up_ends_the_receiver_at_once() {
        let (tx, mut rx) = channel(1 << 20);
        tx.send(sync(10)).unwrap();
        let waiting = tokio::spawn(async move {
            rx.given_up().await;
            rx.recv().await
        });
        tokio::task::yield_now().await;
        tx.give_up();
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert!(
            next.is_none(),
            "queued messages are not delivered after giving up"
        );
    }

    #[tokio::test]
    async fn a_gone_connection_is_seen_and_nothing_stays_counted() {
        let (tx, rx) = channel(1 << 20);
        drop(rx);
        assert_eq!(tx.send(sync(10)), Err(Unqueued::Closed));
        assert_eq!(tx.shared.bytes.load(Ordering::Acquire), 0);
    }
}
