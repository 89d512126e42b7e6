//! A network emulator on loopback: one UDP relay per directed pair of nodes that delays,
//! drops, duplicates and reorders datagrams, and cuts links, per direction, changeable at
//! run time. The chaos tests break the network with it; `concordant bench --link-delay-ms`
//! makes every link a slow one.
//!
//! Owns: [`Relays`] (the relays between N nodes, their faults and counters), [`LinkFaults`]
//! (what happens to datagrams going one way between two nodes) and [`LinkStats`]. The
//! relays know nothing of QUIC or of nodes beyond their addresses; the caller tells each
//! node to reach the others through them (see [`Relays::route`]). One relay is in
//! `netem/relay.rs`.
//!
//! # How traffic crosses the relays
//! For nodes `i` and `j`, relay `i→j` listens on its own `127.0.0.1` port
//! ([`Relays::route`]); node `i` is told that `j` lives there. What `i` sends it goes out to
//! `j`'s real address ([`Relays::set_target`]) from the relay's upstream socket, and what
//! `j` answers there goes back to `i`. Connections `i` dials to `j` cross relay `i→j`,
//! those `j` dials to `i` cross relay `j→i`; both apply the faults of direction `i→j` to
//! datagrams from `i` to `j` and those of `j→i` to datagrams from `j` to `i`. Datagrams
//! for a node whose address is not known yet are dropped.
//!
//! # Timing
//! A delayed datagram waits in its direction's delay line, in the order of the time it is
//! due: with a fixed delay datagrams keep their order (as Linux netem does without jitter),
//! with jitter they may overtake each other. Delays are kept with tokio's timer, so each
//! is up to about a millisecond longer than asked.
//!
//! Decisions come from seeded RNGs (one per relay, derived from the seed), so a failing
//! run can print its seed. The relay tasks stop when the [`Relays`] are dropped.

mod relay;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What happens to datagrams going one way between two nodes. The default forwards
/// everything at once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFaults {
    /// Drop everything (a cut link).
    pub cut: bool,
    /// Probability of dropping a datagram.
    pub drop: f64,
    /// Fixed delay of every datagram.
    pub delay: Duration,
    /// Extra delay, uniform in `0..=jitter` (reorders datagrams too).
    pub jitter: Duration,
    /// Probability of sending a datagram twice.
    pub duplicate: f64,
    /// Probability of holding a datagram back by `reorder_delay` more.
    pub reorder: f64,
    /// How much longer a reordered datagram waits.
    pub reorder_delay: Duration,
}

impl LinkFaults {
    /// A cut link: nothing gets through.
    pub fn cut() -> LinkFaults {
        LinkFaults {
            cut: true,
            ..LinkFaults::default()
        }
    }

    /// Lossy and jittery: drops `drop`, delays uniformly in `0..=jitter`, duplicates and
    /// reorders 2% of datagrams.
    pub fn lossy(drop: f64, jitter: Duration) -> LinkFaults {
        LinkFaults {
            drop,
            jitter,
            duplicate: 0.02,
            reorder: 0.02,
            reorder_delay: jitter * 2,
            ..LinkFaults::default()
        }
    }

    /// A slow link: every datagram delayed by `delay` ± `jitter` (uniformly; `jitter` is
    /// capped at `delay`) and dropped with probability `drop`.
    pub fn slow(delay: Duration, jitter: Duration, drop: f64) -> LinkFaults {
        let jitter = jitter.min(delay);
        LinkFaults {
            delay: delay - jitter,
            jitter: jitter * 2,
            drop,
            ..LinkFaults::default()
        }
    }
}

/// Counters of one direction of one link.
#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
}

/// Datagram counts of one direction of one link (or a sum of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams sent on (duplicates included).
    pub forwarded: u64,
    /// Datagrams dropped (lost or cut).
    pub dropped: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
    /// Datagrams held back (delay, jitter or reordering).
    pub delayed: u64,
}

impl std::ops::AddAssign for LinkStats {
    fn add_assign(&mut self, o: LinkStats) {
        self.forwarded += o.forwarded;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
    }
}

impl std::fmt::Display for LinkStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "datagrams forwarded {}, dropped {}, duplicated {}, delayed {}",
            self.forwarded, self.dropped, self.duplicated, self.delayed
        )
    }
}

/// Shared state of every relay: faults and counters per direction (`from * n + to`), and
/// each node's real address once known.
struct State {
    n: usize,
    faults: Mutex<Vec<LinkFaults>>,
    counters: Vec<Counters>,
    targets: Mutex<Vec<Option<SocketAddr>>>,
}

/// A lock that a panicking holder cannot poison for the others: the data are plain values,
/// each write a whole one.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    fn faults(&self, from: usize, to: usize) -> LinkFaults {
        lock(&self.faults)[from * self.n + to]
    }

    fn target(&self, j: usize) -> Option<SocketAddr> {
        lock(&self.targets)[j]
    }

    fn counters(&self, from: usize, to: usize) -> &Counters {
        &self.counters[from * self.n + to]
    }
}

/// The relays between `n` nodes, and the handle to change what they do.
pub struct Relays {
    seed: u64,
    state: Arc<State>,
    /// `routes[i][j]`: the address of relay `i→j` (unused on the diagonal).
    routes: Vec<Vec<SocketAddr>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Relays {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relays")
            .field("nodes", &self.state.n)
            .field("seed", &self.seed)
            .finish()
    }
}

impl Relays {
    /// Binds a relay on `127.0.0.1` for every directed pair of `n` nodes, forwarding
    /// everything at once until told otherwise. Must run inside a tokio runtime.
    pub async fn bind(n: usize, seed: u64) -> std::io::Result<Relays> {
        let state = Arc::new(State {
            n,
            faults: Mutex::new(vec![LinkFaults::default(); n * n]),
            counters: (0..n * n).map(|_| Counters::default()).collect(),
            targets: Mutex::new(vec![None; n]),
        });
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut relays = Relays {
            seed,
            state,
            routes: vec![vec![any; n]; n],
            tasks: Vec::new(),
        };
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                let front = UdpSocket::bind(any).await?;
                let back = UdpSocket::bind(any).await?;
                relays.routes[i][j] = front.local_addr()?;
                let rng_seed = seed ^ ((i * n + j) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let relay = relay::Relay::new(i, j, front, back, relays.state.clone(), rng_seed);
                relays.tasks.push(tokio::spawn(relay.run()));
            }
        }
        Ok(relays)
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.state.n
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.state.n == 0
    }

    /// The seed the relays' decisions derive from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The address node `from` reaches node `to` at: relay `from → to`.
    pub fn route(&self, from: usize, to: usize) -> SocketAddr {
        self.routes[from][to]
    }

    /// Every route: `routes()[i][j]` is [`Relays::route`]`(i, j)` (unused on the diagonal).
    pub fn routes(&self) -> Vec<Vec<SocketAddr>> {
        self.routes.clone()
    }

    /// Node `i` listens at `addr` (its real address): the relays towards it send there.
    pub fn set_target(&self, i: usize, addr: SocketAddr) {
        lock(&self.state.targets)[i] = Some(addr);
    }

    /// Sets the faults of direction `from → to`. Panics if `from == to`.
    pub fn set(&self, from: usize, to: usize, faults: LinkFaults) {
        assert_ne!(from, to, "no link from a node to itself");
        lock(&self.state.faults)[from * self.state.n + to] = faults;
    }

    /// Sets the faults of both directions of every link.
    pub fn set_all(&self, faults: LinkFaults) {
        let n = self.state.n;
        let mut all = lock(&self.state.faults);
        for from in 0..n {
            for to in (0..n).filter(|&to| to != from) {
                all[from * n + to] = faults;
            }
        }
    }

    /// Cuts every direction from a node of `from` to another node of `to` (a one-way
    /// partition: the other way still works).
    pub fn cut_one_way(&self, from: &[usize], to: &[usize]) {
        for &a in from {
            for &b in to.iter().filter(|&&b| b != a) {
                self.set(a, b, LinkFaults::cut());
            }
        }
    }

    /// Cuts both ways between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Cuts both ways between every two nodes of different `islands`.
    pub fn islands(&self, islands: &[&[usize]]) {
        for (k, a) in islands.iter().enumerate() {
            for b in &islands[k + 1..] {
                self.partition(a, b);
            }
        }
    }

    /// Removes every fault: every link forwards everything at once.
    pub fn heal(&self) {
        self.set_all(LinkFaults::default());
    }

    /// Counters of direction `from → to`.
    pub fn stats(&self, from: usize, to: usize) -> LinkStats {
        let c = self.state.counters(from, to);
        LinkStats {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
        }
    }

    /// Counters summed over every direction of every link.
    pub fn total(&self) -> LinkStats {
        let n = self.state.n;
        let mut sum = LinkStats::default();
        for from in 0..n {
            for to in (0..n).filter(|&to| to != from) {
                sum += self.stats(from, to);
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_links_center_the_jitter_on_the_delay() {
        let f = LinkFaults::slow(Duration::from_millis(50), Duration::from_millis(5), 0.01);
        assert_eq!(f.delay, Duration::from_millis(45));
        assert_eq!(f.jitter, Duration::from_millis(10));
        assert_eq!(f.drop, 0.01);
        let f = LinkFaults::slow(Duration::from_millis(5), Duration::from_millis(50), 0.0);
        assert_eq!(
            (f.delay, f.jitter),
            (Duration::ZERO, Duration::from_millis(10))
        );
    }

    /// Sends `count` numbered datagrams from a socket through relay 0→1 to node 1's socket
    /// and returns what arrived within `wait`, in order, with each one's delay.
    async fn through(relays: &Relays, count: u8, wait: Duration) -> Vec<(u8, Duration)> {
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        relays.set_target(1, b.local_addr().expect("address"));
        let start = tokio::time::Instant::now();
        for k in 0..count {
            a.send_to(&[k], relays.route(0, 1)).await.expect("send");
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while let Ok(Ok((len, _))) = tokio::time::timeout(wait, b.recv_from(&mut buf)).await {
            if len == 1 {
                got.push((buf[0], start.elapsed()));
            }
        }
        got
    }

    #[tokio::test]
    async fn a_delayed_link_keeps_the_order_and_the_delay() {
        let relays = Relays::bind(2, 7).await.expect("relays");
        let delay = Duration::from_millis(30);
        relays.set(0, 1, LinkFaults::slow(delay, Duration::ZERO, 0.0));
        let got = through(&relays, 50, Duration::from_millis(300)).await;
        let order: Vec<u8> = got.iter().map(|(k, _)| *k).collect();
        assert_eq!(order, (0..50).collect::<Vec<u8>>());
        assert!(got.iter().all(|(_, at)| *at >= delay), "{got:?}");
        assert_eq!(relays.stats(0, 1).delayed, 50);
        assert_eq!(relays.stats(1, 0), LinkStats::default());
    }

    #[tokio::test]
    async fn a_cut_link_drops_everything_and_counts_it() {
        let relays = Relays::bind(2, 7).await.expect("relays");
        relays.cut_one_way(&[0], &[1]);
        let got = through(&relays, 10, Duration::from_millis(100)).await;
        assert!(got.is_empty());
        assert_eq!(relays.stats(0, 1).dropped, 10);
        relays.heal();
        let got = through(&relays, 10, Duration::from_millis(100)).await;
        assert_eq!(got.len(), 10);
        assert_eq!(relays.total().forwarded, 10);
    }

    #[tokio::test]
    async fn losses_follow_the_probability() {
        let relays = Relays::bind(2, 11).await.expect("relays");
        relays.set(0, 1, LinkFaults::slow(Duration::ZERO, Duration::ZERO, 0.5));
        let got = through(&relays, 200, Duration::from_millis(100)).await;
        let s = relays.stats(0, 1);
        assert_eq!(s.forwarded + s.dropped, 200);
        assert_eq!(got.len() as u64, s.forwarded);
        assert!((50..150).contains(&s.dropped), "{s}");
    }
}
