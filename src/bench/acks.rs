//! The benchmark's write-concern phase: single writes with `ack: all` at each node in turn,
//! each timed from the write until its answer (durable on this node and every other
//! replica of the document). On links with a delay, one answer costs at least one round
//! trip: the change out, the acknowledgement back.

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::ROOT;

use super::BenchError;
use crate::local::LocalCluster;
use crate::node::{Ack, Node};

/// The document the phase writes to.
const DOC: &str = "bench-ack";

/// The longest one write may wait for its acknowledgements.
const LIMIT: Duration = Duration::from_secs(10);

/// `samples` writes with `ack: all`, writers rotating; every answer's time, µs, in order.
pub(crate) async fn ack_all(
    cluster: &LocalCluster,
    samples: usize,
    progress: &dyn Fn(String),
) -> Result<Vec<u64>, BenchError> {
    let nodes: Vec<Node> = cluster.live().cloned().collect();
    let mut out = Vec::with_capacity(samples);
    if nodes.is_empty() {
        return Ok(out);
    }
    for n in 0..samples {
        let node = &nodes[n % nodes.len()];
        let start = Instant::now();
        let written = node
            .change_with(DOC, Ack::All, LIMIT, move |tx| {
                tx.put(ROOT, "seq", n as u64)
            })
            .await;
        match written {
            Ok(_) => out.push(start.elapsed().as_micros() as u64),
            Err(crate::node::Error::AckTimeout { acked_by, .. }) => {
                return Err(BenchError::Timeout(format!(
                    "ack all: write {n} at {} was acknowledged by {acked_by:?} only within \
                     {LIMIT:?}",
                    node.id()
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    progress(format!("ack all: {} samples done", out.len()));
    Ok(out)
}
