//! Fault injection under real QUIC: a loopback UDP relay per directed pair of nodes that
//! drops, delays, duplicates and reorders datagrams, and cuts links, per direction,
//! changeable at run time.
//!
//! Owns: [`Net`] (the relays of one [`TestCluster`], partitions, one-way cuts, healing,
//! per-link counters), [`LinkFaults`] (what happens to datagrams going one way between two
//! nodes) and [`LinkStats`].
//!
//! # How traffic crosses the relays
//! For nodes `i` and `j`, relay `i→j` listens on its own `127.0.0.1` port; node `i` is told
//! that `j` lives there ([`TestCluster::routes`]). What `i` sends it goes out to `j`'s real
//! address from the relay's upstream socket, and what `j` answers there goes back to `i`.
//! Connections `i` dials to `j` cross relay `i→j`, those `j` dials to `i` cross relay
//! `j→i`; both apply the faults of direction `i→j` to datagrams from `i` to `j` and those
//! of `j→i` to datagrams from `j` to `i`. Nodes keep their address across restarts, so the
//! relays stay valid; start nodes with [`Net::start_node`] so the relays learn it.
//!
//! Decisions come from seeded RNGs (one per relay direction, derived from the [`Net`]'s
//! seed), so a failing run can print its seed. The relay tasks stop when the [`Net`] is
//! dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concordant::node::Node;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::TestCluster;

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

/// Shared state of every relay of a [`Net`]: faults and counters per direction
/// (`from * n + to`), and each node's real address once started.
struct State {
    n: usize,
    faults: Mutex<Vec<LinkFaults>>,
    counters: Vec<Counters>,
    targets: Mutex<Vec<Option<SocketAddr>>>,
}

impl State {
    fn faults(&self, from: usize, to: usize) -> LinkFaults {
        self.faults.lock().expect("faults lock")[from * self.n + to]
    }

    fn target(&self, j: usize) -> Option<SocketAddr> {
        self.targets.lock().expect("targets lock")[j]
    }
}

/// The relays between the nodes of one cluster, and the handle to break the network.
pub struct Net {
    seed: u64,
    state: Arc<State>,
    /// `routes[i][j]`: the address of relay `i→j` (unused on the diagonal).
    routes: Vec<Vec<SocketAddr>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Net {
    /// Binds a relay for every directed pair of `cluster`'s nodes and routes the cluster
    /// through them; call before starting any node, then start nodes with
    /// [`Net::start_node`].
    pub async fn attach(cluster: &mut TestCluster, seed: u64) -> Net {
        assert!(
            cluster.live().is_empty(),
            "attach the relays before starting any node"
        );
        let n = cluster.len();
        let state = Arc::new(State {
            n,
            faults: Mutex::new(vec![LinkFaults::default(); n * n]),
            counters: (0..n * n).map(|_| Counters::default()).collect(),
            targets: Mutex::new(vec![None; n]),
        });
        let mut routes = vec![vec![super::any_port(); n]; n];
        let mut tasks = Vec::new();
        for (i, row) in routes.iter_mut().enumerate() {
            for (j, route) in row.iter_mut().enumerate() {
                if i == j {
                    continue;
                }
                let front = UdpSocket::bind(super::any_port())
                    .await
                    .expect("relay bind");
                let back = UdpSocket::bind(super::any_port())
                    .await
                    .expect("relay bind");
                *route = front.local_addr().expect("relay address");
                let relay = Relay {
                    from: i,
                    to: j,
                    front: Arc::new(front),
                    back: Arc::new(back),
                    state: state.clone(),
                    rng: StdRng::seed_from_u64(
                        seed ^ ((i * n + j) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ),
                };
                tasks.push(tokio::spawn(relay.run()));
            }
        }
        cluster.routes = Some(routes.clone());
        Net {
            seed,
            state,
            routes,
            tasks,
        }
    }

    /// The seed the relays' decisions derive from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Starts (or restarts) node `i` of `cluster` and lets the relays towards it know its
    /// address.
    pub async fn start_node(&self, cluster: &mut TestCluster, i: usize) -> Node {
        let node = cluster.start_node(i).await;
        self.state.targets.lock().expect("targets lock")[i] = Some(node.peer_addr());
        node
    }

    /// Starts every node of `cluster` and waits for its links (bounded, panics with a
    /// report).
    pub async fn start_all(&self, cluster: &mut TestCluster) {
        for i in 0..cluster.len() {
            self.start_node(cluster, i).await;
        }
        cluster.wait_linked(super::LINK_TIMEOUT).await;
    }

    /// Sets the faults of direction `from → to`.
    pub fn set(&self, from: usize, to: usize, faults: LinkFaults) {
        assert_ne!(from, to, "no link from a node to itself");
        self.state.faults.lock().expect("faults lock")[from * self.state.n + to] = faults;
    }

    /// Sets the faults of both directions of every link.
    pub fn set_all(&self, faults: LinkFaults) {
        let mut all = self.state.faults.lock().expect("faults lock");
        for from in 0..self.state.n {
            for to in 0..self.state.n {
                if from != to {
                    all[from * self.state.n + to] = faults;
                }
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
        let c = &self.state.counters[from * self.state.n + to];
        LinkStats {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
        }
    }

    /// Counters summed over every direction of every link.
    pub fn total(&self) -> LinkStats {
        let mut sum = LinkStats::default();
        for from in 0..self.state.n {
            for to in 0..self.state.n {
                if from != to {
                    sum += self.stats(from, to);
                }
            }
        }
        sum
    }

    /// The address of relay `from → to`.
    pub fn route(&self, from: usize, to: usize) -> SocketAddr {
        self.routes[from][to]
    }
}

/// The relay carrying connections node `from` dials to node `to`.
struct Relay {
    from: usize,
    to: usize,
    /// Where node `from` sends.
    front: Arc<UdpSocket>,
    /// Talks to node `to`'s real address.
    back: Arc<UdpSocket>,
    state: Arc<State>,
    rng: StdRng,
}

impl Relay {
    async fn run(mut self) {
        let mut up = vec![0u8; 65536];
        let mut down = vec![0u8; 65536];
        // Node `from`'s address, learnt from what it sends.
        let mut client: Option<SocketAddr> = None;
        loop {
            tokio::select! {
                got = self.front.recv_from(&mut up) => {
                    let Ok((len, src)) = got else { continue };
                    client = Some(src);
                    if let Some(target) = self.state.target(self.to) {
                        let socket = self.back.clone();
                        self.forward(self.from, self.to, &up[..len], socket, target);
                    }
                }
                got = self.back.recv_from(&mut down) => {
                    let Ok((len, src)) = got else { continue };
                    if Some(src) != self.state.target(self.to) {
                        continue;
                    }
                    if let Some(client) = client {
                        let socket = self.front.clone();
                        self.forward(self.to, self.from, &down[..len], socket, client);
                    }
                }
            }
        }
    }

    /// Applies the faults of direction `a → b` to one datagram and sends what is left of
    /// it on `socket` to `dest`.
    fn forward(
        &mut self,
        a: usize,
        b: usize,
        data: &[u8],
        socket: Arc<UdpSocket>,
        dest: SocketAddr,
    ) {
        let f = self.state.faults(a, b);
        let c = &self.state.counters[a * self.state.n + b];
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
            let data = data.to_vec();
            let socket = socket.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = socket.send_to(&data, dest).await;
            });
        }
    }
}
