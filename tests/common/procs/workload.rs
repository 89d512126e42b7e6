//! Writers for the process tests: documents made of a set (a map of unique keys) and a
//! counter, single recorded writes ([`write`]) and concurrent writers ([`Workload`]), every
//! attempt recorded in a [`SharedHistory`] for the checker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Access, Failure, POLL, WAIT};
use crate::common::checker::{ops_of, Effect, History, ReplicaState, SharedHistory};

/// The map of set elements of every workload document.
pub const SET: &str = "set";
/// The counter of every workload document.
pub const COUNT: &str = "count";

/// Creates each of `docs` at `access` with an empty set map and a zero counter, acknowledged
/// by every node (so no node creates them concurrently); retried for at most [`WAIT`].
pub async fn create_docs(access: &Access, docs: &[String]) {
    let request = json!({
        "ops": [
            {"op": "set", "path": [SET], "value": {}},
            {"op": "counter", "path": [COUNT], "value": 0},
        ],
        "ack": "all",
        "timeout_ms": 5000,
    });
    let start = Instant::now();
    for doc in docs {
        loop {
            match access.op(doc, &request).await {
                Ok(_) => break,
                Err(e) if start.elapsed() < WAIT => {
                    eprintln!("creating {doc}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot create {doc}: {e}"),
            }
        }
    }
}

/// One recorded write through `access` (node `node`): one change that adds `key` = `key`
/// to `doc`'s set and increments its counter, with write concern `ack`. Recorded in
/// `history` before it is sent, then as acknowledged (the answer is returned), refused, or
/// left uncertain.
pub async fn write(
    history: &SharedHistory,
    access: &Access,
    node: &str,
    doc: &str,
    key: &str,
    ack: &Value,
    timeout_ms: u64,
) -> Result<Value, Failure> {
    let effects = vec![
        Effect::add(doc, &[SET], key, json!(key)),
        Effect::incr(doc, &[COUNT], 1),
    ];
    let request = json!({"ops": ops_of(&effects), "ack": ack, "timeout_ms": timeout_ms});
    let id = history.lock().expect("history").begin(node, effects);
    let result = access.op(doc, &request).await;
    match &result {
        Ok(_) => history.lock().expect("history").ack(id),
        Err(Failure::NotSent(_) | Failure::Refused(_)) => {
            history.lock().expect("history").refuse(id)
        }
        Err(Failure::Unknown(_)) => {}
    }
    result
}

/// Concurrent writers adding unique elements and incrementing counters through nodes'
/// APIs, every attempt recorded in a shared history.
pub struct Workload {
    /// Every write attempted, with its outcome.
    pub history: SharedHistory,
    /// Element key → the peers that acknowledged its write as durable (`acked_by` of the
    /// answer; only writes with a write concern beyond local).
    pub peer_acks: PeerAcks,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Writers spawned so far (numbers them, so element keys stay unique).
    writers: usize,
}

/// Element key → peers that acknowledged the write durable, shared by writer tasks.
pub type PeerAcks = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// What a writer writes and how.
#[derive(Debug, Clone)]
pub struct WriteSpec {
    /// Documents the writes rotate over (created by [`create_docs`]).
    pub docs: Vec<String>,
    /// The write concern of every write (`"local"`, `"all"` or a number).
    pub ack: Value,
    /// The write-concern timeout in ms.
    pub timeout_ms: u64,
    /// Stop after this many writes (shared by the writers of one [`Workload::spawn`]);
    /// `None`: until stopped.
    pub budget: Option<usize>,
}

impl WriteSpec {
    /// Endless writes over `docs`, acknowledged with `ack` within 2 s.
    pub fn endless(docs: &[String], ack: Value) -> WriteSpec {
        WriteSpec {
            docs: docs.to_vec(),
            ack,
            timeout_ms: 2000,
            budget: None,
        }
    }
}

impl Workload {
    /// A workload writing into `history`; no writer yet.
    pub fn new(history: SharedHistory) -> Workload {
        Workload {
            history,
            peer_acks: PeerAcks::default(),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
            writers: 0,
        }
    }

    /// Starts `writers` concurrent writers through `access` (node `node`), each writing
    /// elements `<node>-w<writer>-<seq>` with [`write`] until stopped or out of budget.
    pub fn spawn(&mut self, node: &str, access: Access, writers: usize, spec: &WriteSpec) {
        let budget = spec.budget.map(|b| Arc::new(AtomicUsize::new(b)));
        for _ in 0..writers {
            self.writers += 1;
            let prefix = format!("{node}-w{}", self.writers);
            let (history, peer_acks, stop, access, spec) = (
                self.history.clone(),
                self.peer_acks.clone(),
                self.stop.clone(),
                access.clone(),
                spec.clone(),
            );
            let budget = budget.clone();
            let node = node.to_string();
            self.tasks.push(tokio::spawn(async move {
                for seq in 0usize.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(b) = &budget {
                        let take = b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                            v.checked_sub(1)
                        });
                        if take.is_err() {
                            return;
                        }
                    }
                    let doc = &spec.docs[seq % spec.docs.len()];
                    let key = format!("{prefix}-{seq}");
                    let (ack, timeout) = (&spec.ack, spec.timeout_ms);
                    match write(&history, &access, &node, doc, &key, ack, timeout).await {
                        Ok(answer) => {
                            let by: Vec<String> = answer["acked_by"]
                                .as_array()
                                .map(Vec::as_slice)
                                .unwrap_or(&[])
                                .iter()
                                .filter_map(|p| p.as_str().map(str::to_string))
                                .collect();
                            if !by.is_empty() {
                                peer_acks.lock().expect("peer acks").insert(key, by);
                            }
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }
    }

    /// Waits (bounded by `timeout`) for writers with a budget to use it up.
    pub async fn wait_done(&mut self, timeout: Duration) {
        let start = Instant::now();
        while self.tasks.iter().any(|t| !t.is_finished()) {
            assert!(
                start.elapsed() < timeout,
                "writers not done within {timeout:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops every writer and waits for its last request to end; writers may be spawned
    /// again afterwards.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.expect("writer task");
        }
        self.stop.store(false, Ordering::Relaxed);
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.history.lock().expect("history").acked()
    }

    /// Writes acknowledged so far that were sent to `node`.
    pub fn acked_by(&self, node: &str) -> usize {
        let history = self.history.lock().expect("history");
        history
            .writes()
            .iter()
            .filter(|w| w.node == node && w.is_acked())
            .count()
    }
}

/// The adds of acknowledged writes that `node` acknowledged (sent to it, or acknowledged
/// by it as a peer per `peer_acks`) and that `state` does not hold: what a node restarted
/// alone (no peer to catch up from) lost of what it acknowledged.
pub fn missing_acked(
    history: &History,
    peer_acks: &BTreeMap<String, Vec<String>>,
    node: &str,
    state: &ReplicaState,
) -> Vec<String> {
    let mut out = Vec::new();
    for w in history.writes().iter().filter(|w| w.is_acked()) {
        for e in &w.effects {
            let Effect::Add {
                doc,
                map,
                key,
                value,
            } = e
            else {
                continue;
            };
            let by_peer = peer_acks
                .get(key)
                .is_some_and(|p| p.iter().any(|p| p == node));
            if w.node != node && !by_peer {
                continue;
            }
            if state.added(doc, map, key) != Some(value) {
                out.push(format!("{doc}/{key}"));
            }
        }
    }
    out
}
