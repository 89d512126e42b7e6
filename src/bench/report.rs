//! The benchmark's results: the SPEC's fields, a readable summary and the full JSON.

use serde::Serialize;

use super::phases::{Catchup, Idle, Throughput};
use super::BenchOptions;

/// Results of one run. Serialises to the SPEC's JSON fields (plus extras).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Always "concordant".
    pub system: &'static str,
    /// Number of nodes.
    pub nodes: usize,
    /// Topology name.
    pub topology: String,
    /// Documents.
    pub docs: usize,
    /// Writes per phase.
    pub writes: usize,
    /// Median single-write latency until every node shows it, µs.
    pub latency_p50_us: u64,
    /// 99th percentile, µs.
    pub latency_p99_us: u64,
    /// Maximum, µs.
    pub latency_max_us: u64,
    /// Throughput phase: seconds from the first write until every node has all.
    pub converge_s: f64,
    /// Throughput phase: writes / converge_s.
    pub writes_per_s: f64,
    /// Throughput phase: bytes on the wire (UDP payload of QUIC packets: the transport's
    /// stream bytes, all nodes, both directions counted once as sent) / writes.
    pub bytes_per_write: f64,
    /// Catch-up phase: seconds from the restart until the node has every write.
    pub catchup_s: f64,
    /// Catch-up phase: the writes to documents the stopped node replicates, which it had
    /// to catch up on (only with `--replicas`; else every write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catchup_writes: Option<u64>,
    /// Catch-up phase: seconds from the restart until the node serves (`Node::start`
    /// returned and its status answered).
    pub restart_s: f64,
    /// Catch-up phase: seconds from the restart until the node has a connected peer.
    pub first_link_s: f64,
    /// Idle phase: peer bytes sent per node per second, converged and quiet.
    pub idle_bytes_per_s: f64,
    /// Idle phase: length of the window, seconds.
    pub idle_window_s: f64,
    /// Period of the nodes' anti-entropy during every phase, ms.
    pub anti_entropy_ms: u64,
    /// Documents put into every node's store before the nodes started.
    pub preload: usize,
    /// Seconds the preload took (no part of any phase).
    pub preload_s: f64,
    /// True only if every replica ended with identical heads.
    pub converged: bool,
    /// Storage used by every node.
    pub storage: &'static str,
    /// Resident memory of the whole process divided by the number of nodes, bytes: the
    /// larger of the samples after the idle phase and at the end.
    pub memory_per_node_bytes: Option<u64>,
    /// Samples in the latency phase.
    pub latency_samples: usize,
    /// The write rate asked for, if any.
    pub rate: Option<u64>,
    /// Nodes each document lives on (only with `--replicas`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// The mean over the nodes of the documents each stored at the end (its status's
    /// `docs`), as a fraction of every document the run wrote (measured documents,
    /// preloaded ones and the latency phase's), only with `--replicas`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_docs_per_node: Option<f64>,
    /// Every latency sample, µs, in order (only in `--out`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latencies_us: Option<Vec<u64>>,
    /// Progress of every replica during the throughput phase: (ms, node, changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Vec<(u64, usize, u64)>>,
}

/// What a run measured, phase by phase.
pub(crate) struct Measured {
    pub(crate) latencies: Vec<u64>,
    pub(crate) throughput: Throughput,
    pub(crate) idle: Idle,
    pub(crate) catchup: Catchup,
    pub(crate) converged: bool,
    pub(crate) memory: Option<u64>,
    pub(crate) preload_s: f64,
    pub(crate) stored_docs_per_node: Option<f64>,
}

impl BenchReport {
    pub(crate) fn new(opts: &BenchOptions, measured: Measured) -> Self {
        let Measured {
            mut latencies,
            throughput,
            idle,
            catchup,
            converged,
            memory,
            preload_s,
            stored_docs_per_node,
        } = measured;
        let samples = latencies.clone();
        latencies.sort_unstable();
        let pct = |p: f64| -> u64 {
            if latencies.is_empty() {
                return 0;
            }
            let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies[idx.min(latencies.len() - 1)]
        };
        BenchReport {
            system: "concordant",
            nodes: opts.nodes,
            topology: opts.topology.to_string(),
            docs: opts.docs,
            writes: opts.writes,
            latency_p50_us: pct(0.50),
            latency_p99_us: pct(0.99),
            latency_max_us: latencies.last().copied().unwrap_or(0),
            converge_s: throughput.seconds,
            writes_per_s: opts.writes as f64 / throughput.seconds.max(1e-9),
            bytes_per_write: throughput.bytes as f64 / opts.writes as f64,
            catchup_s: catchup.seconds,
            catchup_writes: opts.replicas.map(|_| catchup.behind),
            restart_s: catchup.restart_s,
            first_link_s: catchup.first_link_s,
            idle_bytes_per_s: idle.bytes_per_s,
            idle_window_s: idle.window_s,
            anti_entropy_ms: opts.anti_entropy_ms,
            preload: opts.preload,
            preload_s,
            converged,
            storage: "redb, fsync on every commit",
            memory_per_node_bytes: memory,
            latency_samples: samples.len(),
            rate: opts.rate,
            replicas: opts.replicas,
            stored_docs_per_node,
            latencies_us: Some(samples),
            progress: Some(throughput.progress),
        }
    }

    /// The one-line JSON of `--json` (without per-sample arrays).
    pub fn summary_json(&self) -> String {
        let mut short = self.clone();
        short.latencies_us = None;
        short.progress = None;
        serde_json::to_string(&short).unwrap_or_default()
    }

    /// Everything, per-write latencies included (`--out`).
    pub fn full_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A readable summary.
    pub fn human(&self) -> String {
        let mem = self
            .memory_per_node_bytes
            .map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "n/a".into());
        let preload = if self.preload > 0 {
            format!(
                "preload: {} documents on {} in {:.1} s (before the nodes started)\n",
                self.preload,
                if self.replicas.is_some() {
                    "their replicas"
                } else {
                    "every node"
                },
                self.preload_s
            )
        } else {
            String::new()
        };
        let missed = match self.catchup_writes {
            Some(behind) => format!("{behind} (of {})", self.writes),
            None => self.writes.to_string(),
        };
        let (placement, visible_on, every) = match self.replicas {
            Some(r) => (
                format!(
                    "placement: each document on {r} of {} nodes; a node stores {} of all \
                     documents on average\n",
                    self.nodes,
                    self.stored_docs_per_node
                        .map(|f| format!("{f:.3}"))
                        .unwrap_or_else(|| "n/a".into())
                ),
                "its replicas",
                "replica",
            ),
            None => (String::new(), "all", "node"),
        };
        format!(
            "concordant bench: {} nodes, {}, {} docs, {} writes ({})\n\
             {placement}\
             {preload}\
             latency (write at one node → visible on {visible_on}): p50 {} µs, p99 {} µs, max {} µs ({} samples)\n\
             throughput: {} writes converged on every {every} in {:.3} s = {:.0} writes/s\n\
             wire: {:.0} bytes per write\n\
             idle: {:.0} B/s of peer traffic per node over {:.1} s (anti-entropy every {} ms)\n\
             catch-up: {} missed writes in {:.3} s after restart \
             (serving after {:.3} s, first link after {:.3} s)\n\
             memory: {} per node\n\
             converged: {}",
            self.nodes,
            self.topology,
            self.docs,
            self.writes,
            self.storage,
            self.latency_p50_us,
            self.latency_p99_us,
            self.latency_max_us,
            self.latency_samples,
            self.writes,
            self.converge_s,
            self.writes_per_s,
            self.bytes_per_write,
            self.idle_bytes_per_s,
            self.idle_window_s,
            self.anti_entropy_ms,
            missed,
            self.catchup_s,
            self.restart_s,
            self.first_link_s,
            mem,
            self.converged
        )
    }
}
