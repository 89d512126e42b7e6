//! [`LatencyProbe`]: times single writes until every node shows them. Shared by the
//! benchmark's latency phase and the criterion convergence bench (`benches/convergence.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ChangeHash, ROOT};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use crate::node::{Error, Node};

/// A notification as one node's watcher saw it: node index, arrival time, heads.
type Seen = (usize, Instant, Vec<ChangeHash>);

/// Writes to one document at each node in turn and times each write until every node
/// shows it. Every node's change notifications for the document are timestamped by a task
/// as they arrive, so the figure does not include the probe's own scheduling. The
/// watchers stop when the probe is dropped.
pub struct LatencyProbe {
    doc: String,
    nodes: Vec<Node>,
    seen: mpsc::UnboundedReceiver<Seen>,
    writes: u64,
    _watchers: JoinSet<()>,
}

impl LatencyProbe {
    /// Subscribes to `doc` on every node of `nodes` (at least one).
    pub async fn new(nodes: Vec<Node>, doc: &str) -> Result<LatencyProbe, Error> {
        let (tx, seen) = mpsc::unbounded_channel::<Seen>();
        let mut watchers = JoinSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let mut sub = node.subscribe(doc).await?;
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
        Ok(LatencyProbe {
            doc: doc.to_string(),
            nodes,
            seen,
            writes: 0,
            _watchers: watchers,
        })
    }

    /// Writes once at the next node in turn (the first call writes at the first node) and
    /// returns the time from the start of the write until the last node showed it, or
    /// `None` if some node did not show it within `limit`.
    pub async fn write(&mut self, limit: Duration) -> Result<Option<Duration>, Error> {
        let n = self.writes;
        self.writes += 1;
        let Some(writer) = self.nodes.get(n as usize % self.nodes.len().max(1)) else {
            return Ok(None);
        };
        let start = Instant::now();
        let written = writer
            .change(&self.doc, move |tx| tx.put(ROOT, "seq", n))
            .await?;
        let Some(hash) = written.heads.first().copied() else {
            return Ok(None);
        };
        let mut seen: BTreeMap<usize, Instant> = BTreeMap::new();
        let deadline = start + limit;
        while seen.len() < self.nodes.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.seen.recv()).await {
                Ok(Some((i, at, heads))) => {
                    if heads.contains(&hash) {
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
