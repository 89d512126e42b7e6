//! The chaos workload: continuous writes from every node recorded in a checker
//! [`History`], an observer measuring when writes become visible, and the end of a run
//! (bounded convergence, final states, the checker's verdict).
//!
//! Owns: [`Workload`], [`DOCS`], [`prepare`], [`replica_states`], [`finish`]. Used by the
//! chaos scenarios and the soak test; faults are the caller's business ([`super::faults`]).
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concordant::node::{Ack, Node};
use serde_json::json;
use tokio::task::JoinHandle;

use super::checker::{check, ops_of, shared_history, Effect, ReplicaState, SharedHistory, Verdict};
use super::{ops, ops_with, TestCluster, POLL};

/// The documents written: each holds a map `set` of unique keys and a counter `count`.
pub const DOCS: [&str; 2] = ["chaos-a", "chaos-b"];

/// How long one write may wait for local durability.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest period of the visibility observer (it waits twice as long as a round took,
/// so that it never takes more than a third of the time with large documents).
const OBSERVE_EVERY: Duration = Duration::from_millis(100);

/// Creates every document of [`DOCS`] (empty set, counter at 0) on node 0 and waits until
/// every running node has them.
pub async fn prepare(cluster: &TestCluster, timeout: Duration) {
    let node = cluster.node(0);
    for doc in DOCS {
        ops(
            &node,
            doc,
            json!([
                {"op": "set", "path": ["set"], "value": {}},
                {"op": "counter", "path": ["count"], "value": 0},
            ]),
        )
        .await;
    }
    cluster.wait_converged(timeout).await;
}

/// The workload's view of which nodes run, updated by [`Workload::refresh`].
type Live = Arc<Mutex<Vec<Option<Node>>>>;

/// Continuous writers (several per node) and a visibility observer.
pub struct Workload {
    /// Every write attempted.
    pub history: SharedHistory,
    ids: Vec<String>,
    live: Live,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts `per_node` writers on every node of `cluster` (running or not: a writer waits
    /// while its node is stopped). Each writer makes at most `max_writes` writes, `pace`
    /// apart; most writes add a unique key to `set` and increment `count` in one change,
    /// every fifth only increments by 2. Keys carry `tag`, unique per workload.
    pub fn start(
        cluster: &TestCluster,
        tag: &str,
        per_node: usize,
        max_writes: usize,
        pace: Duration,
    ) -> Workload {
        let mut w = Workload {
            history: shared_history(),
            ids: cluster.ids.clone(),
            live: Arc::new(Mutex::new(vec![None; cluster.len()])),
            stop: Arc::new(AtomicBool::new(false)),
            errors: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
        };
        w.refresh(cluster);
        for i in 0..cluster.len() {
            for k in 0..per_node {
                let writer = Writer {
                    i,
                    id: cluster.ids[i].clone(),
                    key_prefix: format!("{tag}-{}-{k}", cluster.ids[i]),
                    live: w.live.clone(),
                    stop: w.stop.clone(),
                    errors: w.errors.clone(),
                    history: w.history.clone(),
                };
                w.tasks.push(tokio::spawn(writer.run(max_writes, pace)));
            }
        }
        w.tasks.push(tokio::spawn(observe(
            w.ids.clone(),
            w.live.clone(),
            w.stop.clone(),
            w.history.clone(),
        )));
        w
    }

    /// Tells the writers which nodes run now (call after every start or stop).
    pub fn refresh(&self, cluster: &TestCluster) {
        let mut live = self.live.lock().expect("live lock");
        for (i, slot) in live.iter_mut().enumerate() {
            *slot = cluster.is_live(i).then(|| cluster.node(i));
        }
    }

    /// Marks node `i` stopped for the writers, before it is stopped.
    pub fn pause(&self, i: usize) {
        self.live.lock().expect("live lock")[i] = None;
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.history.lock().expect("history lock").acked()
    }

    /// Waits until at least `n` writes are acknowledged, or all writers are done, or
    /// `timeout` passed.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) {
        let start = Instant::now();
        while self.acked() < n && start.elapsed() < timeout && !self.writers_done() {
            tokio::time::sleep(POLL).await;
        }
    }

    fn writers_done(&self) -> bool {
        let writers = &self.tasks[..self.tasks.len() - 1];
        writers.iter().all(|t| t.is_finished())
    }

    /// Stops every writer and the observer and waits for them. Returns the number of
    /// writes that failed (left uncertain in the history).
    pub async fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.expect("workload task");
        }
        self.errors.load(Ordering::Relaxed)
    }
}

/// One writer: writes to node `i` through whatever handle `live` holds for it.
struct Writer {
    i: usize,
    id: String,
    key_prefix: String,
    live: Live,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    history: SharedHistory,
}

impl Writer {
    async fn run(self, max_writes: usize, pace: Duration) {
        let mut seq = 0;
        while seq < max_writes && !self.stop.load(Ordering::Relaxed) {
            let node = self.live.lock().expect("live lock")[self.i].clone();
            let Some(node) = node else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            seq += 1;
            let doc = DOCS[seq % DOCS.len()];
            let effects = if seq % 5 == 0 {
                vec![Effect::incr(doc, &["count"], 2)]
            } else {
                let key = format!("{}-{seq}", self.key_prefix);
                vec![
                    Effect::add(doc, &["set"], &key, json!(seq)),
                    Effect::incr(doc, &["count"], 1),
                ]
            };
            let ops = ops_of(&effects);
            let id = self
                .history
                .lock()
                .expect("history lock")
                .begin(&self.id, effects);
            match ops_with(&node, doc, ops, Ack::Local, WRITE_TIMEOUT).await {
                Ok(_) => self.history.lock().expect("history lock").ack(id),
                Err(_) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(POLL).await;
                }
            }
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
    }
}

/// Polls every running node's documents and records which writes are visible there.
async fn observe(ids: Vec<String>, live: Live, stop: Arc<AtomicBool>, history: SharedHistory) {
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        let nodes: Vec<(usize, Node)> = {
            let live = live.lock().expect("live lock");
            live.iter()
                .enumerate()
                .filter_map(|(i, n)| n.clone().map(|n| (i, n)))
                .collect()
        };
        for (i, node) in nodes {
            for doc in DOCS {
                if let Ok(Some(json)) = node.json(doc).await {
                    history
                        .lock()
                        .expect("history lock")
                        .observe(&ids[i], doc, &json);
                }
            }
        }
        tokio::time::sleep(OBSERVE_EVERY.max(round.elapsed() * 2)).await;
    }
}

/// Every running node's final state (heads hex-encoded, JSON per document).
pub async fn replica_states(cluster: &TestCluster) -> Vec<ReplicaState> {
    let mut states = Vec::new();
    for (i, node) in cluster.live() {
        let mut docs = Vec::new();
        for (doc, heads) in node.docs().await.expect("docs") {
            let json = node.json(&doc).await.expect("json").unwrap_or_default();
            docs.push((doc, heads.iter().map(|h| hex::encode(h.0)).collect(), json));
        }
        states.push(ReplicaState::new(&cluster.ids[i], docs));
    }
    states
}

/// Ends a run: waits (at most `timeout`) until every node runs and all have converged,
/// records the final visibility, checks the history against every replica and prints the
/// verdict and the time until visible everywhere. Returns the verdict; panics with the
/// cluster's report and the verdict if the nodes did not converge.
pub async fn finish(cluster: &TestCluster, workload: &mut Workload, timeout: Duration) -> Verdict {
    workload.stop().await;
    let start = Instant::now();
    let mut converged = false;
    while start.elapsed() < timeout {
        if (0..cluster.len()).all(|i| cluster.is_live(i)) && cluster.converged().await {
            converged = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    if converged {
        eprintln!("converged {:?} after the writes stopped", start.elapsed());
    }
    let states = replica_states(cluster).await;
    let verdict = {
        let mut history = workload.history.lock().expect("history lock");
        for state in &states {
            for (doc, d) in &state.docs {
                history.observe(&state.node, doc, &d.json);
            }
        }
        let verdict = check(&history, &states);
        eprint!("{verdict}");
        eprintln!("{}", history.visibility(&cluster.ids));
        verdict
    };
    if !converged {
        panic!(
            "nodes did not converge within {timeout:?}:\n{}\n{verdict}",
            cluster.report().await
        );
    }
    verdict
}
