//! One relay of [`super::Relays`]: the sockets of one directed pair of nodes, the faults
//! applied to each datagram, and the two delay lines (one per direction) that hold delayed
//! datagrams until they are due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::State;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_536;

/// A datagram waiting in a delay line: due time, arrival order (ties keep it), bytes and
/// where it goes.
struct Held {
    due: Instant,
    seq: u64,
    data: Vec<u8>,
    dest: SocketAddr,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// Sends what it is given on `socket` once due, earliest first.
async fn delay_line(socket: Arc<UdpSocket>, mut input: mpsc::UnboundedReceiver<Held>) {
    let mut heap: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    loop {
        let next_due = heap.peek().map(|Reverse(h)| h.due);
        tokio::select! {
            got = input.recv() => match got {
                Some(held) => heap.push(Reverse(held)),
                None => return,
            },
            () = sleep_until(next_due) => {
                let now = Instant::now();
                while heap.peek().is_some_and(|Reverse(h)| h.due <= now) {
                    if let Some(Reverse(h)) = heap.pop() {
                        // A full socket buffer loses the datagram, as a real network would.
                        let _ = socket.send_to(&h.data, h.dest).await;
                    }
                }
            }
        }
    }
}

/// Sleeps until `due`, or forever without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The relay carrying the connections node `from` dials to node `to`.
pub(super) struct Relay {
    from: usize,
    to: usize,
    /// Where node `from` sends.
    front: Arc<UdpSocket>,
    /// Talks to node `to`'s real address.
    back: Arc<UdpSocket>,
    state: Arc<State>,
    rng: StdRng,
    seq: u64,
}

impl Relay {
    pub(super) fn new(
        from: usize,
        to: usize,
        front: UdpSocket,
        back: UdpSocket,
        state: Arc<State>,
        seed: u64,
    ) -> Relay {
        Relay {
            from,
            to,
            front: Arc::new(front),
            back: Arc::new(back),
            state,
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
        }
    }

    /// Forwards both ways until aborted.
    pub(super) async fn run(mut self) {
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        let up_line = tokio::spawn(delay_line(self.back.clone(), up_rx));
        let down_line = tokio::spawn(delay_line(self.front.clone(), down_rx));
        // The delay lines stop with this task, aborted or not.
        let _lines = AbortOnDrop([up_line, down_line]);
        let mut up = vec![0u8; MAX_DATAGRAM];
        let mut down = vec![0u8; MAX_DATAGRAM];
        // Node `from`'s address, learnt from what it sends.
        let mut client: Option<SocketAddr> = None;
        loop {
            tokio::select! {
                got = self.front.recv_from(&mut up) => {
                    let Ok((len, src)) = got else { continue };
                    client = Some(src);
                    if let Some(target) = self.state.target(self.to) {
                        let (a, b, socket) = (self.from, self.to, self.back.clone());
                        self.forward(a, b, &up[..len], &socket, &up_tx, target);
                    }
                }
                got = self.back.recv_from(&mut down) => {
                    let Ok((len, src)) = got else { continue };
                    if Some(src) != self.state.target(self.to) {
                        continue;
                    }
                    if let Some(client) = client {
                        let (a, b, socket) = (self.to, self.from, self.front.clone());
                        self.forward(a, b, &down[..len], &socket, &down_tx, client);
                    }
                }
            }
        }
    }

    /// Applies the faults of direction `a → b` to one datagram and sends what is left of
    /// it to `dest`: at once on `socket`, or later through the delay line `line`.
    fn forward(
        &mut self,
        a: usize,
        b: usize,
        data: &[u8],
        socket: &UdpSocket,
        line: &mpsc::UnboundedSender<Held>,
        dest: SocketAddr,
    ) {
        let f = self.state.faults(a, b);
        let c = self.state.counters(a, b);
        if f.cut || (f.drop > 0.0 && self.rng.random_bool(f.drop.min(1.0))) {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let copies = if f.duplicate > 0.0 && self.rng.random_bool(f.duplicate.min(1.0)) {
            c.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut wait = f.delay;
            if !f.jitter.is_zero() {
                wait += self.rng.random_range(Duration::ZERO..=f.jitter);
            }
            if f.reorder > 0.0 && self.rng.random_bool(f.reorder.min(1.0)) {
                wait += f.reorder_delay;
            }
            c.forwarded.fetch_add(1, Ordering::Relaxed);
            if wait.is_zero() {
                // A full socket buffer loses the datagram, as a real network would.
                let _ = socket.try_send_to(data, dest);
                continue;
            }
            c.delayed.fetch_add(1, Ordering::Relaxed);
            self.seq += 1;
            let _ = line.send(Held {
                due: Instant::now() + wait,
                seq: self.seq,
                data: data.to_vec(),
                dest,
            });
        }
    }
}

/// Aborts its tasks when dropped.
struct AbortOnDrop<const N: usize>([tokio::task::JoinHandle<()>; N]);

impl<const N: usize> Drop for AbortOnDrop<N> {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
