//! The report of `concordant bench --sync-clients`: the figures of a run, their text and
//! `--json` forms, and how they are computed from the phases' samples.

use serde::Serialize;

use super::phases::{Edited, Held};
use super::{SyncBenchOptions, NODES};

/// Results of a run; serialises to the `--json` line.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// Always "concordant".
    pub system: &'static str,
    /// Always "sync-clients".
    pub bench: &'static str,
    /// Nodes of the mesh (3).
    pub nodes: usize,
    /// Always "mesh".
    pub topology: &'static str,
    /// Editing clients per node.
    pub sync_clients_per_node: usize,
    /// Documents of the edit phase (each followed by one client per node).
    pub sync_docs: usize,
    /// Seconds until every editing client was connected and synced.
    pub sync_setup_s: f64,
    /// Length of the measured window, seconds.
    pub sync_secs: f64,
    /// Editing before the window, seconds.
    pub sync_warmup_s: f64,
    /// Each client's edits are this many ms apart, uniformly at random.
    pub sync_edit_interval_ms: [u64; 2],
    /// Changes committed by clients in the window.
    pub sync_writes: u64,
    /// `sync_writes` per second of the window.
    pub sync_writes_per_s: f64,
    /// A change by a client on one node until a client on another node applied it: median,
    /// ms.
    pub sync_latency_p50_ms: f64,
    /// 90th percentile, ms.
    pub sync_latency_p90_ms: f64,
    /// 99th percentile, ms.
    pub sync_latency_p99_ms: f64,
    /// Maximum, ms.
    pub sync_latency_max_ms: f64,
    /// Samples (changes in the window × the other clients of their document that got
    /// them).
    pub sync_latency_samples: usize,
    /// Changes of the window that had not reached a reader when the run stopped waiting.
    pub sync_latency_missing: u64,
    /// Editing clients that failed (socket ended, error from the node, ...).
    pub sync_client_failures: usize,
    /// Clients asked to connect to one node in the hold phase.
    pub sync_hold_requested: usize,
    /// "own" (each client its own document) or "shared" (one document for all).
    pub sync_hold_doc: &'static str,
    /// Hold clients connected and synced at the end of the phase.
    pub sync_held_clients: usize,
    /// Seconds from the first connection until every hold client was synced (None if not
    /// all of them got there).
    pub sync_hold_s: Option<f64>,
    /// Hold clients that failed.
    pub sync_hold_failures: usize,
    /// The node's own count of connected clients once held.
    pub sync_hold_node_clients: usize,
    /// Growth of this process's resident memory while the hold clients connected and
    /// synced, bytes (both ends of every connection: the clients live in this process).
    pub sync_hold_memory_bytes: Option<u64>,
    /// Shared document only: one change by a client until every other hold client applied
    /// it, ms (None if not all did).
    pub sync_hold_fanout_ms: Option<f64>,
    /// Shared document only: hold clients that applied that change.
    pub sync_hold_fanout_reached: usize,
    /// Latency of the n1 → n3 pair alone: (p50, p99, samples), text output only.
    #[serde(skip)]
    pub n1_n3: (f64, f64, usize),
}

impl SyncReport {
    /// True if nothing failed: no client failure, no missing change, every hold client
    /// held (and reached by the fan-out).
    pub fn ok(&self) -> bool {
        self.sync_client_failures == 0
            && self.sync_latency_missing == 0
            && self.sync_hold_failures == 0
            && self.sync_held_clients == self.sync_hold_requested
            && (self.sync_hold_doc != "shared"
                || self.sync_hold_requested < 2
                || self.sync_hold_fanout_ms.is_some())
    }

    /// The one-line JSON of `--json`.
    pub fn summary_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A readable summary.
    pub fn human(&self) -> String {
        let mut out = format!(
            "concordant bench (automerge-repo clients over GET /v1/sync): {} nodes, {}, in \
             this process (QUIC on loopback, redb with fsync)\n",
            self.nodes, self.topology
        );
        if self.sync_clients_per_node > 0 {
            let (p50, p99, n) = self.n1_n3;
            out += &format!(
                "edit: {} clients per node on {} documents (one client per node each), each \
                 editing every {}–{} ms; all {} connected and synced in {:.2} s\n\
                 latency (change by a client on one node → applied by a client on another): \
                 p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples over {:.0} s \
                 after {:.0} s of warm-up; {} missing)\n\
                 \x20 n1 → n3 only: p50 {p50:.2} ms, p99 {p99:.2} ms ({n} samples)\n\
                 writes: {} changes in the window = {:.0} changes/s; failed clients: {}\n",
                self.sync_clients_per_node,
                self.sync_docs,
                self.sync_edit_interval_ms[0],
                self.sync_edit_interval_ms[1],
                self.sync_clients_per_node * self.nodes,
                self.sync_setup_s,
                self.sync_latency_p50_ms,
                self.sync_latency_p90_ms,
                self.sync_latency_p99_ms,
                self.sync_latency_max_ms,
                self.sync_latency_samples,
                self.sync_secs,
                self.sync_warmup_s,
                self.sync_latency_missing,
                self.sync_writes,
                self.sync_writes_per_s,
                self.sync_client_failures,
            );
        }
        if self.sync_hold_requested > 0 {
            let time = self
                .sync_hold_s
                .map(|s| format!("in {s:.2} s"))
                .unwrap_or_else(|| "(not all of them)".into());
            let memory = self
                .sync_hold_memory_bytes
                .map(|b| {
                    format!(
                        "{:.1} MiB, {:.1} KiB per client",
                        b as f64 / (1024.0 * 1024.0),
                        b as f64 / 1024.0 / self.sync_hold_requested as f64
                    )
                })
                .unwrap_or_else(|| "n/a".into());
            out += &format!(
                "hold: {}/{} clients on n1 connected and synced ({} document) {time}; the \
                 node counts {} clients; {} failed\n\
                 memory: the process grew by {memory} (both ends of every connection)\n",
                self.sync_held_clients,
                self.sync_hold_requested,
                if self.sync_hold_doc == "shared" {
                    "one shared"
                } else {
                    "each its own"
                },
                self.sync_hold_node_clients,
                self.sync_hold_failures,
            );
            if self.sync_hold_doc == "shared" && self.sync_hold_requested > 1 {
                let fanout = self
                    .sync_hold_fanout_ms
                    .map(|ms| format!("in {ms:.1} ms"))
                    .unwrap_or_else(|| "(not all of them)".into());
                out += &format!(
                    "fan-out: one change reached {}/{} other clients {fanout}\n",
                    self.sync_hold_fanout_reached,
                    self.sync_hold_requested - 1
                );
            }
        }
        out += &format!("ok: {}", self.ok());
        out
    }
}

/// Percentiles of µs samples, in ms: (p50, p90, p99, max).
fn percentiles(us: &mut [u64]) -> (f64, f64, f64, f64) {
    us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if us.is_empty() {
            return 0.0;
        }
        let idx = ((us.len() as f64 - 1.0) * p).round() as usize;
        us[idx.min(us.len() - 1)] as f64 / 1000.0
    };
    (pct(0.5), pct(0.9), pct(0.99), pct(1.0))
}

pub(super) fn report(
    opts: &SyncBenchOptions,
    edit: Option<Edited>,
    hold: Option<Held>,
) -> SyncReport {
    let (setup_s, writes, missing, failures, samples) = match edit {
        Some(e) => (e.setup_s, e.writes, e.missing, e.failures, e.samples),
        None => (0.0, 0, 0, 0, Vec::new()),
    };
    let mut all: Vec<u64> = samples.iter().map(|s| s.us).collect();
    let (p50, p90, p99, max) = percentiles(&mut all);
    let mut pair: Vec<u64> = samples
        .iter()
        .filter(|s| s.from == 1 && s.to == 3)
        .map(|s| s.us)
        .collect();
    let (pair_p50, _, pair_p99, _) = percentiles(&mut pair);
    let hold_doc = if opts.hold_shared { "shared" } else { "own" };
    let hold = hold.unwrap_or(Held {
        held: 0,
        hold_s: None,
        failures: 0,
        node_clients: 0,
        memory: None,
        fanout_ms: None,
        fanout_reached: 0,
    });
    let measured = opts.clients_per_node > 0;
    SyncReport {
        system: "concordant",
        bench: "sync-clients",
        nodes: NODES,
        topology: "mesh",
        sync_clients_per_node: opts.clients_per_node,
        sync_docs: opts.clients_per_node,
        sync_setup_s: setup_s,
        sync_secs: if measured { opts.secs } else { 0.0 },
        sync_warmup_s: if measured { opts.warmup_secs } else { 0.0 },
        sync_edit_interval_ms: [opts.edit_ms.0, opts.edit_ms.1],
        sync_writes: writes,
        sync_writes_per_s: if measured {
            writes as f64 / opts.secs
        } else {
            0.0
        },
        sync_latency_p50_ms: p50,
        sync_latency_p90_ms: p90,
        sync_latency_p99_ms: p99,
        sync_latency_max_ms: max,
        sync_latency_samples: all.len(),
        sync_latency_missing: missing,
        sync_client_failures: failures,
        sync_hold_requested: opts.hold,
        sync_hold_doc: hold_doc,
        sync_held_clients: hold.held,
        sync_hold_s: hold.hold_s,
        sync_hold_failures: hold.failures,
        sync_hold_node_clients: hold.node_clients,
        sync_hold_memory_bytes: hold.memory,
        sync_hold_fanout_ms: hold.fanout_ms,
        sync_hold_fanout_reached: hold.fanout_reached,
        n1_n3: (pair_p50, pair_p99, pair.len()),
    }
}
