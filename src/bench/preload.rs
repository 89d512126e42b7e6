//! `--preload N`: fills every node's store with the same N one-change documents before any
//! node starts (with `--replicas R`, each document only its replicas' stores), so that the
//! cluster starts converged at scale, and names the documents the measured writes go to.
//!
//! Owns: making the preloaded changes (one Automerge change per document, made once, in
//! parallel over the cores) and appending them to each node's [`RedbStore`] through the
//! storage API, one durable commit per batch. Must not touch a running node: the stores are
//! opened, filled and dropped before the nodes open them.

use std::path::PathBuf;
use std::time::Instant;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};

use super::BenchError;
use crate::storage::{DocAppend, RedbStore, Store};
use crate::topology::Topology;

/// Documents per durable commit (one fsync each per store).
const BATCH: usize = 10_000;

/// Documents between two progress lines.
const PROGRESS_EVERY: usize = 100_000;

/// Fewest digits of a preloaded document's number (`pre-0000000`).
const MIN_DIGITS: usize = 7;

/// The id of preloaded document `i` of `total`: `pre-` and `i` zero-padded to at least 7
/// digits (more if `total` needs them), so that ids sort as their numbers do.
pub(crate) fn doc_id(i: usize, total: usize) -> String {
    let digits = total.saturating_sub(1).to_string().len().max(MIN_DIGITS);
    format!("pre-{i:0digits$}")
}

/// The documents the measured writes go to: `docs` of them. With at least as many
/// preloaded documents, they are preloaded ones spread evenly over the whole id range
/// (every `preload / docs`-th), so that the writes land all over the stores and their
/// fingerprint trees rather than in one corner; otherwise new documents `doc-0`….
#[derive(Debug, Clone, Copy)]
pub(crate) struct Targets {
    docs: usize,
    preload: usize,
}

impl Targets {
    pub(crate) fn new(docs: usize, preload: usize) -> Targets {
        Targets {
            docs: docs.max(1),
            preload,
        }
    }

    /// How many documents the writes go to.
    pub(crate) fn len(&self) -> usize {
        self.docs
    }

    /// True if the writes go to preloaded documents.
    pub(crate) fn preloaded(&self) -> bool {
        self.preload > 0 && self.preload >= self.docs
    }

    /// The document write number `j` goes to.
    pub(crate) fn doc(&self, j: usize) -> String {
        let k = j % self.docs;
        if self.preloaded() {
            doc_id(k * (self.preload / self.docs), self.preload)
        } else {
            format!("doc-{k}")
        }
    }
}

/// One preloaded document: a map whose key "n" holds its number, as one change.
fn make_doc(i: usize, total: usize) -> Result<DocAppend, BenchError> {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "n", i as u64)
        .map_err(|e| BenchError::Preload(format!("cannot make document {i}: {e}")))?;
    let change = doc
        .get_last_local_change()
        .ok_or_else(|| BenchError::Preload(format!("document {i} has no change")))?;
    Ok(DocAppend {
        doc: doc_id(i, total),
        changes: vec![change.raw_bytes().to_vec()],
        heads: vec![change.hash().0],
    })
}

/// Makes documents `range` in parallel over `threads` threads, in order.
fn make_batch(
    range: std::ops::Range<usize>,
    total: usize,
    threads: usize,
) -> Result<Vec<DocAppend>, BenchError> {
    let per_thread = range.len().div_ceil(threads.max(1)).max(1);
    let chunks: Vec<std::ops::Range<usize>> = range
        .clone()
        .step_by(per_thread)
        .map(|from| from..(from + per_thread).min(range.end))
        .collect();
    let parts: Vec<Result<Vec<DocAppend>, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| s.spawn(move || chunk.map(|i| make_doc(i, total)).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::Preload("a preload thread panicked".into()))
                })
            })
            .collect()
    });
    let mut batch = Vec::with_capacity(range.len());
    for part in parts {
        batch.extend(part?);
    }
    Ok(batch)
}

/// Puts `count` identical documents into the store in each of `dirs` (created if needed),
/// in batches of [`BATCH`] documents, one durable commit per batch and store; the stores
/// are written in parallel while the next batch is made, and closed before this returns.
/// With a `topology` that places documents, `dirs` are the data directories of its nodes
/// in its order, and each document goes only into its replicas' stores. Blocking: run it
/// off the async runtime.
pub(crate) fn preload(
    dirs: &[PathBuf],
    count: usize,
    topology: Option<&Topology>,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(), BenchError> {
    if count == 0 || dirs.is_empty() {
        return Ok(());
    }
    // Only a topology that places documents restricts where they go.
    let placed = topology.filter(|t| t.placement().is_some());
    let stores_of = match placed {
        Some(t) if t.nodes().len() != dirs.len() => {
            return Err(BenchError::Preload(format!(
                "{} data directories for a topology of {} nodes",
                dirs.len(),
                t.nodes().len()
            )));
        }
        Some(t) => format!(
            ", each in the stores of its {} replicas (of {} nodes)",
            t.replicas(),
            dirs.len()
        ),
        None => format!(" in each of {} stores", dirs.len()),
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut stores = dirs
        .iter()
        .map(|dir| RedbStore::open(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    std::thread::scope(|s| {
        // One batch made ahead while the stores write the current one (they wait on fsync).
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<DocAppend>, BenchError>>(1);
        s.spawn(move || {
            for from in (0..count).step_by(BATCH) {
                let batch = make_batch(from..(from + BATCH).min(count), count, threads);
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        let mut done = 0;
        let mut next_report = PROGRESS_EVERY;
        for batch in rx {
            let batch = batch?;
            done += batch.len();
            append_all(&mut stores, batch, placed)?;
            if done >= next_report || done == count {
                progress(format!(
                    "preload: {done}/{count} documents{stores_of} ({:.1} s)",
                    start.elapsed().as_secs_f64()
                ));
                next_report = done + PROGRESS_EVERY;
            }
        }
        if done == count {
            Ok(())
        } else {
            Err(BenchError::Preload(format!(
                "only {done} of {count} documents were made"
            )))
        }
    })
}

/// Appends `batch` to every store, the stores in parallel, one durable commit each; with
/// a topology that places documents (one node per store, in order), to each store only
/// the documents its node replicates.
fn append_all(
    stores: &mut [RedbStore],
    batch: Vec<DocAppend>,
    placed: Option<&Topology>,
) -> Result<(), BenchError> {
    let results: Vec<Result<(), BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter_mut()
            .enumerate()
            .map(|(i, store)| {
                let mine: Vec<DocAppend> = match placed {
                    Some(topology) => batch
                        .iter()
                        .filter(|d| {
                            topology
                                .nodes()
                                .get(i)
                                .is_some_and(|id| topology.holds(id, &d.doc))
                        })
                        .cloned()
                        .collect(),
                    None => batch.clone(),
                };
                s.spawn(move || store.append(&mine).map_err(BenchError::from))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::Preload("a preload writer panicked".into()))
                })
            })
            .collect()
    });
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_zero_padded_and_sort_as_numbers() {
        assert_eq!(doc_id(0, 1_000_000), "pre-0000000");
        assert_eq!(doc_id(999_999, 1_000_000), "pre-0999999");
        assert_eq!(doc_id(12, 10), "pre-0000012");
        assert_eq!(doc_id(5, 100_000_000), "pre-00000005");
        assert!(doc_id(9, 20) < doc_id(10, 20));
    }

    #[test]
    fn writes_spread_over_the_preloaded_documents() {
        let t = Targets::new(4, 100);
        assert!(t.preloaded());
        let docs: Vec<String> = (0..5).map(|j| t.doc(j)).collect();
        assert_eq!(
            docs,
            [
                "pre-0000000",
                "pre-0000025",
                "pre-0000050",
                "pre-0000075",
                "pre-0000000"
            ]
        );
        let fresh = Targets::new(3, 2);
        assert!(!fresh.preloaded());
        assert_eq!(fresh.doc(4), "doc-1");
        assert_eq!(Targets::new(3, 0).doc(2), "doc-2");
    }
}
