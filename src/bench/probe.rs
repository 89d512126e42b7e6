//! [`LatencyProbe`]: times single writes until every node (every replica of the document)
//! shows them. Shared by the
//! benchmark's latency phase and the criterion convergence bench (`benches/convergence.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ChangeHash, ROOT};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use crate::node::{Error, Node};
use crate::topology::Topology;

/// A notification as one node's watcher saw it: node index, arrival time, heads.
type Seen = (usize, Instant, Vec<ChangeHash>);

/// Writes at each node in turn and times each write until every replica of its document
/// shows it: one document on every node ([`LatencyProbe::new`]), or for each writer a
/// document it replicates under a placement ([`LatencyProbe::placed`]). Every watching
/// node's change notifications are timestamped by a task as they arrive, so the figure
/// does not include the probe's own scheduling. The watchers stop when the probe is
/// dropped.
pub struct LatencyProbe {
    nodes: Vec<Node>,
    docs: Vec<ProbeDoc>,
    /// For each writer in turn: its index in `nodes` and its document's in `docs`.
    writers: Vec<(usize, usize)>,
    seen: mpsc::UnboundedReceiver<Seen>,
    writes: u64,
    _watchers: JoinSet<()>,
}

/// A document the probe writes to, and the nodes (indices) that must show each write.
struct ProbeDoc {
    id: String,
    watchers: Vec<usize>,
}

impl LatencyProbe {
    /// Subscribes to `doc` on every node of `nodes` (at least one); every node writes to
    /// it in turn and every node must show each write.
    pub async fn new(nodes: Vec<Node>, doc: &str) -> Result<LatencyProbe, Error> {
        let docs = vec![ProbeDoc {
            id: doc.to_string(),
            watchers: (0..nodes.len()).collect(),
        }];
        let writers = (0..nodes.len()).map(|w| (w, 0)).collect();
        LatencyProbe::watch(nodes, docs, writers).await
    }

    /// Like [`LatencyProbe::new`], but each document only on its replicas under
    /// `topology`: each node of `nodes` writes in turn to the first of `prefix`,
    /// `prefix-1`, `prefix-2`… it replicates, and each write is timed until every replica
    /// of that document among `nodes` shows it (a node replicating none of the first 4096
    /// candidates does not write). Without a placement, the same as
    /// `LatencyProbe::new(nodes, prefix)`. Refused if a node is not in `topology`.
    pub async fn placed(
        nodes: Vec<Node>,
        topology: &Topology,
        prefix: &str,
    ) -> Result<LatencyProbe, Error> {
        let mut docs: Vec<ProbeDoc> = Vec::new();
        let mut writers = Vec::with_capacity(nodes.len());
        for (w, node) in nodes.iter().enumerate() {
            if !topology.contains(node.id()) {
                return Err(Error::UnknownNode(node.id().to_string()));
            }
            let Some(id) = (0..)
                .map(|k| probe_doc_id(prefix, k))
                .take(MAX_CANDIDATES)
                .find(|doc| topology.holds(node.id(), doc))
            else {
                continue;
            };
            let d = match docs.iter().position(|d| d.id == id) {
                Some(d) => d,
                None => {
                    let replicas = topology.replicas_of(&id);
                    let watchers = (0..nodes.len())
                        .filter(|&i| replicas.contains(&nodes[i].id()))
                        .collect();
                    docs.push(ProbeDoc { id, watchers });
                    docs.len() - 1
                }
            };
            writers.push((w, d));
        }
        LatencyProbe::watch(nodes, docs, writers).await
    }

    /// The documents the probe writes to.
    pub fn docs(&self) -> impl Iterator<Item = &str> {
        self.docs.iter().map(|d| d.id.as_str())
    }

    /// Subscribes to each document on its watching nodes.
    async fn watch(
        nodes: Vec<Node>,
        docs: Vec<ProbeDoc>,
        writers: Vec<(usize, usize)>,
    ) -> Result<LatencyProbe, Error> {
        let (tx, seen) = mpsc::unbounded_channel::<Seen>();
        let mut watchers = JoinSet::new();
        for doc in &docs {
            for &i in &doc.watchers {
                let mut sub = nodes[i].subscribe(&doc.id).await?;
                let tx = tx.clone();
                watchers.spawn(async move {
                    loop {
                        match sub.recv().await {
                            Ok(ev) => {
                                if tx.send((i, Instant::now(), ev.heads)).is_err() {
                                    return;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                });
            }
        }
        Ok(LatencyProbe {
            nodes,
            docs,
            writers,
            seen,
            writes: 0,
            _watchers: watchers,
        })
    }

    /// Writes once at the next writer in turn (the first call writes at the first node)
    /// and returns the time from the start of the write until the last node that must
    /// show it did, or `None` if some such node did not show it within `limit`.
    pub async fn write(&mut self, limit: Duration) -> Result<Option<Duration>, Error> {
        let n = self.writes;
        self.writes += 1;
        let Some(&(w, d)) = self.writers.get(n as usize % self.writers.len().max(1)) else {
            return Ok(None);
        };
        let (Some(writer), Some(doc)) = (self.nodes.get(w), self.docs.get(d)) else {
            return Ok(None);
        };
        let start = Instant::now();
        let written = writer
            .change(&doc.id, move |tx| tx.put(ROOT, "seq", n))
            .await?;
        let Some(hash) = written.heads.first().copied() else {
            return Ok(None);
        };
        let mut seen: BTreeMap<usize, Instant> = BTreeMap::new();
        let deadline = start + limit;
        while seen.len() < doc.watchers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.seen.recv()).await {
                Ok(Some((i, at, heads))) => {
                    if heads.contains(&hash) && doc.watchers.contains(&i) {
                        seen.entry(i).or_insert(at);
                    }
                }
                Ok(None) | Err(_) => return Ok(None),
            }
        }
        let last = seen.values().max().copied().unwrap_or(start);
        Ok(Some(last.saturating_duration_since(start)))
    }
}

/// Candidate documents [`LatencyProbe::placed`] tries per node before giving up (a node
/// replicating a fraction f of the partitions misses all of them with probability
/// (1 - f)^4096).
const MAX_CANDIDATES: usize = 4096;

/// The `k`-th candidate document of [`LatencyProbe::placed`]: `prefix` itself, then
/// `prefix-1`, `prefix-2`….
fn probe_doc_id(prefix: &str, k: usize) -> String {
    if k == 0 {
        prefix.to_string()
    } else {
        format!("{prefix}-{k}")
    }
}
