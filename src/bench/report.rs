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
    /// Writes with `ack: all` (at each node in turn): median time until answered, µs.
    pub ack_all_p50_us: u64,
    /// 99th percentile, µs.
    pub ack_all_p99_us: u64,
    /// Samples of `ack: all` writes.
    pub ack_all_samples: usize,
    /// Children per node of the tree an `edges` topology is laid out as (only then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree_fanout: Option<usize>,
    /// One-way delay of every datagram on every directed link, ms (only with relays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_delay_ms: Option<u64>,
    /// Each datagram's delay varied by ± this, ms (only with relays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_jitter_ms: Option<u64>,
    /// Datagrams dropped on every link, percent (only with relays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_loss_pct: Option<f64>,
    /// Throughput phase: peer messages every node sent / writes (only with relays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_per_write: Option<f64>,
    /// The same by message kind (those sent at all; only with relays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_by_kind: Option<std::collections::BTreeMap<String, f64>>,
    /// Mean of QUIC's smoothed round-trip time over every link after the latency phase, ms
    /// (only with relays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_rtt_ms: Option<f64>,
    /// The largest of those, ms (only with relays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_rtt_max_ms: Option<f64>,
    /// Links that went down during the latency, throughput and idle phases, every node's
    /// count summed (only with relays; 0 means no peer was ever reported down).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links_lost: Option<u64>,
    /// Nodes the cluster view (`GET /v1/cluster` of n1) showed up after the idle phase
    /// (only with relays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_view_up: Option<usize>,
    /// How long that cluster view took to answer, ms (only with relays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_view_ms: Option<f64>,
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
    /// The links' QUIC keep-alive interval, ms.
    pub keep_alive_ms: u64,
    /// The links' idle timeout (a silent link is down after it), ms.
    pub idle_timeout_ms: u64,
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
    pub(crate) ack_all: Vec<u64>,
    pub(crate) links: Option<Links>,
    pub(crate) throughput: Throughput,
    pub(crate) idle: Idle,
    pub(crate) catchup: Catchup,
    pub(crate) converged: bool,
    pub(crate) memory: Option<u64>,
    pub(crate) preload_s: f64,
    pub(crate) stored_docs_per_node: Option<f64>,
}

/// What a run with relays saw of its links (see `bench::measure_links`).
pub(crate) struct Links {
    pub(crate) rtt_ms: Option<f64>,
    pub(crate) rtt_max_ms: Option<f64>,
    pub(crate) lost: u64,
    pub(crate) view_up: usize,
    pub(crate) view_ms: f64,
}

/// The `p`-quantile of `sorted` (nearest rank), 0 if empty.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

impl BenchReport {
    pub(crate) fn new(opts: &BenchOptions, measured: Measured) -> Self {
        let Measured {
            mut latencies,
            mut ack_all,
            links,
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
        ack_all.sort_unstable();
        let pct = |p: f64| percentile(&latencies, p);
        let link = opts.link;
        BenchReport {
            system: "concordant",
            nodes: opts.nodes,
            topology: opts.topology.to_string(),
            docs: opts.docs,
            writes: opts.writes,
            latency_p50_us: pct(0.50),
            latency_p99_us: pct(0.99),
            latency_max_us: latencies.last().copied().unwrap_or(0),
            ack_all_p50_us: percentile(&ack_all, 0.50),
            ack_all_p99_us: percentile(&ack_all, 0.99),
            ack_all_samples: ack_all.len(),
            tree_fanout: (opts.topology == crate::config::TopologyKind::Edges)
                .then_some(opts.tree_fanout),
            link_delay_ms: link.map(|l| l.delay_ms),
            link_jitter_ms: link.map(|l| l.jitter_ms),
            link_loss_pct: link.map(|l| l.loss_pct),
            messages_per_write: link
                .map(|_| throughput.messages.iter().sum::<u64>() as f64 / opts.writes as f64),
            messages_by_kind: link.map(|_| {
                let per_write = |n: u64| (n as f64 / opts.writes as f64 * 1000.0).round() / 1000.0;
                crate::wire::KIND_NAMES
                    .iter()
                    .zip(throughput.messages)
                    .filter(|(_, n)| *n > 0)
                    .map(|(kind, n)| (kind.to_string(), per_write(n)))
                    .collect()
            }),
            link_rtt_ms: links.as_ref().and_then(|l| l.rtt_ms),
            link_rtt_max_ms: links.as_ref().and_then(|l| l.rtt_max_ms),
            links_lost: links.as_ref().map(|l| l.lost),
            cluster_view_up: links.as_ref().map(|l| l.view_up),
            cluster_view_ms: links.as_ref().map(|l| l.view_ms),
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
            keep_alive_ms: opts.keep_alive_ms,
            idle_timeout_ms: opts.idle_timeout_ms,
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
        let topology = match self.tree_fanout {
            Some(k) => format!("{} (a tree, fanout {k})", self.topology),
            None => self.topology.clone(),
        };
        let links = match (self.link_delay_ms, self.link_jitter_ms, self.link_loss_pct) {
            (Some(d), Some(j), Some(l)) => format!(
                "links: every directed link through a relay, {d} ± {j} ms one way, {l} % \
                 lost; QUIC round trips {} ms on average, {} ms at most; {} messages per \
                 write{}; {} links lost (keep-alive {} ms, idle timeout {} ms); the cluster \
                 view showed {} of {} nodes up in {} ms\n",
                opt_f64(self.link_rtt_ms, 1),
                opt_f64(self.link_rtt_max_ms, 1),
                opt_f64(self.messages_per_write, 2),
                self.messages_by_kind
                    .as_ref()
                    .filter(|k| !k.is_empty())
                    .map(|kinds| {
                        let parts: Vec<String> =
                            kinds.iter().map(|(k, n)| format!("{k} {n:.2}")).collect();
                        format!(" ({})", parts.join(", "))
                    })
                    .unwrap_or_default(),
                self.links_lost.unwrap_or(0),
                self.keep_alive_ms,
                self.idle_timeout_ms,
                self.cluster_view_up.unwrap_or(0),
                self.nodes,
                opt_f64(self.cluster_view_ms, 0),
            ),
            _ => String::new(),
        };
        format!(
            "concordant bench: {} nodes, {topology}, {} docs, {} writes ({})\n\
             {links}\
             {placement}\
             {preload}\
             latency (write at one node → visible on {visible_on}): p50 {} µs, p99 {} µs, max {} µs ({} samples)\n\
             ack all (write at one node → durable on every {every}): p50 {} µs, p99 {} µs ({} samples)\n\
             throughput: {} writes converged on every {every} in {:.3} s = {:.0} writes/s\n\
             wire: {:.0} bytes per write\n\
             idle: {:.0} B/s of peer traffic per node over {:.1} s (anti-entropy every {} ms)\n\
             catch-up: {} missed writes in {:.3} s after restart \
             (serving after {:.3} s, first link after {:.3} s)\n\
             memory: {} per node\n\
             converged: {}",
            self.nodes,
            self.docs,
            self.writes,
            self.storage,
            self.latency_p50_us,
            self.latency_p99_us,
            self.latency_max_us,
            self.latency_samples,
            self.ack_all_p50_us,
            self.ack_all_p99_us,
            self.ack_all_samples,
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

/// `v` with `digits` decimals, or "n/a".
fn opt_f64(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}
