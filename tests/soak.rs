//! Soak test: a 5-node cluster (mesh or ring, chosen by the seed) of real in-process nodes
//! over QUIC through fault-injecting relays, under a random fault schedule drawn from a
//! seed (partitions, one-way cuts, loss/jitter/duplication bursts, nodes stopped and
//! restarted) while every node writes continuously; then everything is healed and
//! restarted, the replicas must converge (bounded) and the checker must find nothing lost,
//! every counter right and no replica diverged.
//!
//! Environment: `CONCORDANT_SOAK_SECS` (default 10) is how long faults and writes go on;
//! `CONCORDANT_SOAK_SEED` (default random, printed) replays a schedule. By hand, e.g.:
//! `CONCORDANT_SOAK_SECS=300 cargo test --test soak -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::faults::{LinkFaults, Net};
use common::workload::{finish, prepare, Workload};
use common::{TestCluster, CONVERGE_TIMEOUT};
use concordant::config::{RingDirection, TopologyKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Nodes in the cluster.
const NODES: usize = 5;
/// At most this many nodes are stopped at once.
const MAX_DOWN: usize = 2;
/// Bound for convergence after the final heal.
const FINISH_TIMEOUT: Duration = Duration::from_secs(90);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// A random non-empty proper subset of the nodes.
fn random_side(rng: &mut StdRng) -> (Vec<usize>, Vec<usize>) {
    loop {
        let (a, b): (Vec<usize>, Vec<usize>) = (0..NODES).partition(|_| rng.random_bool(0.5));
        if !a.is_empty() && !b.is_empty() {
            return (a, b);
        }
    }
}

/// The random fault schedule and what it did.
struct Schedule {
    rng: StdRng,
    /// Stopped nodes with the number of steps before they restart.
    down: Vec<(usize, u32)>,
    /// Faults applied, by kind.
    applied: BTreeMap<&'static str, u32>,
}

impl Schedule {
    /// Applies one random step: restarts nodes whose time is up, then heals, partitions,
    /// cuts one way, makes links lossy, or stops a node.
    async fn step(&mut self, cluster: &mut TestCluster, net: &Net, workload: &Workload) {
        let mut still_down = Vec::new();
        for (i, left) in std::mem::take(&mut self.down) {
            if left == 0 {
                net.start_node(cluster, i).await;
                workload.refresh(cluster);
                *self.applied.entry("node restarted").or_default() += 1;
            } else {
                still_down.push((i, left - 1));
            }
        }
        self.down = still_down;
        let kind = match self.rng.random_range(0..10) {
            0 | 1 => {
                net.heal();
                "heal"
            }
            2 | 3 => {
                net.heal();
                let (a, b) = random_side(&mut self.rng);
                net.partition(&a, &b);
                "partition"
            }
            4 => {
                let (a, b) = random_side(&mut self.rng);
                net.cut_one_way(&a, &b);
                "one-way cut"
            }
            5 | 6 => {
                let drop = self.rng.random_range(0.02..0.3);
                let jitter = Duration::from_millis(self.rng.random_range(0..80));
                let faults = LinkFaults::lossy(drop, jitter);
                if self.rng.random_bool(0.5) {
                    net.set_all(faults);
                } else {
                    let from = self.rng.random_range(0..NODES);
                    let to = (from + self.rng.random_range(1..NODES)) % NODES;
                    net.set(from, to, faults);
                    net.set(to, from, faults);
                }
                "loss/jitter/duplication burst"
            }
            _ => {
                let up: Vec<usize> = (0..NODES).filter(|&i| cluster.is_live(i)).collect();
                if self.down.len() >= MAX_DOWN {
                    net.heal();
                    "heal"
                } else {
                    let victim = up[self.rng.random_range(0..up.len())];
                    workload.pause(victim);
                    cluster.stop_node(victim).await;
                    self.down.push((victim, self.rng.random_range(0..3)));
                    "node stopped"
                }
            }
        };
        *self.applied.entry(kind).or_default() += 1;
    }

    /// Heals the network and restarts every stopped node.
    async fn end(&mut self, cluster: &mut TestCluster, net: &Net, workload: &Workload) {
        net.heal();
        for (i, _) in std::mem::take(&mut self.down) {
            net.start_node(cluster, i).await;
            *self.applied.entry("node restarted").or_default() += 1;
        }
        workload.refresh(cluster);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_a_random_fault_schedule() {
    let secs = env_u64("CONCORDANT_SOAK_SECS").unwrap_or(10);
    let seed = env_u64("CONCORDANT_SOAK_SEED").unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let kind = if rng.random_bool(0.5) {
        TopologyKind::Mesh
    } else {
        TopologyKind::Ring(RingDirection::Both)
    };
    eprintln!(
        "soak: seed {seed} (CONCORDANT_SOAK_SEED), {secs} s (CONCORDANT_SOAK_SECS), \
         {NODES} nodes, {}",
        kind.name()
    );
    let mut cluster = TestCluster::new(NODES, kind);
    let net = Net::attach(&mut cluster, seed).await;
    net.start_all(&mut cluster).await;
    prepare(&cluster, CONVERGE_TIMEOUT).await;

    let mut workload = Workload::start(&cluster, "s", 2, usize::MAX, Duration::from_millis(10));
    let mut schedule = Schedule {
        rng,
        down: Vec::new(),
        applied: BTreeMap::new(),
    };
    let start = Instant::now();
    let duration = Duration::from_secs(secs);
    while start.elapsed() < duration {
        let pause = Duration::from_millis(schedule.rng.random_range(300..2000));
        tokio::time::sleep(pause.min(duration.saturating_sub(start.elapsed()))).await;
        schedule.step(&mut cluster, &net, &workload).await;
    }
    schedule.end(&mut cluster, &net, &workload).await;
    let ran = start.elapsed();
    let verdict = finish(&cluster, &mut workload, FINISH_TIMEOUT).await;

    let faults: Vec<String> = schedule
        .applied
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    eprintln!("soak: seed {seed}, topology {}, ran {ran:.1?}", kind.name());
    eprintln!("soak: faults applied: {}", faults.join(", "));
    eprintln!(
        "soak: writes acknowledged {} of {} attempted ({} uncertain)",
        verdict.acked, verdict.attempted, verdict.uncertain
    );
    eprintln!("soak: {}", net.total());
    eprintln!(
        "soak: verdict: lost = {}, counter mismatches = {}, diverged = {}",
        verdict.lost.len(),
        verdict.counters.len(),
        verdict.diverged.len()
    );
    assert!(verdict.is_ok(), "soak (seed {seed}): {verdict}");
    assert!(
        verdict.acked > 0,
        "soak (seed {seed}): nothing acknowledged"
    );
    cluster.shutdown().await;
}
