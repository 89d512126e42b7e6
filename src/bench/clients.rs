//! `concordant bench --sync-clients K --sync-hold N`: the benchmark of `GET /v1/sync`, the
//! automerge-repo WebSocket endpoint, on a 3-node mesh in this process (QUIC on loopback,
//! redb with fsync, every node's HTTP API on 127.0.0.1), with clients in this process
//! too ([`super::repo_client`]: the protocol as automerge-repo 2.5 speaks it).
//!
//! Phases:
//! 1. edit — K clients per node. Document j (of K) is followed by one client on every node;
//!    the client on node j mod 3 makes it (`sync`), the others then find it (`request`).
//!    Once all 3K clients are synced, each edits its document every 200–500 ms (uniform
//!    jitter; a real client throttles a document's sync to one message per 100 ms) for a
//!    warm-up and then the measured window. A change carries its commit time (µs since
//!    the run began) in its message; a client that receives it through a `sync` message
//!    records the time from that commit until its copy applied it. Every client of a
//!    document is on another node, so every sample crosses nodes (client → node A → QUIC
//!    → node B → client). Only changes committed in the window count; after the window the
//!    run waits until every such change has reached the document's other clients (bounded),
//!    and reports those that did not as missing.
//! 2. hold — N clients on node n1, each joined and syncing one document: each its own
//!    document (made by the client), or with `shared` all one document (made by the first,
//!    found by the others), plus then one change by the first client timed until every
//!    other client has it (`fan-out`). Reported: how many are connected and synced, the
//!    time until they all were, the node's count of clients, and the growth of this
//!    process's resident memory while they connected (clients' side included).
//!
//! Every wait is bounded: a client that cannot connect, join or sync, whose socket ends, or
//! that gets an `error` from the node is a failure, and a phase that does not finish in
//! time ends the run with an error (edit) or reports what it reached (hold).
//!
//! Files: this one holds the options and the run; `clients/setup.rs` serves every node's
//! HTTP API, `clients/runtime.rs` is one client's life and what the clients share,
//! `clients/phases.rs` the two phases, `clients/report.rs` the figures.

use std::time::Duration;

mod phases;
mod report;
mod runtime;
mod setup;

use super::BenchError;
use crate::config::{TopologyKind, Tuning};
use crate::local::LocalCluster;
use phases::{edit_phase, hold_phase};
use report::report;
pub use report::SyncReport;
use setup::Apis;

/// Nodes of the mesh.
const NODES: usize = 3;

/// Options of the sync-clients benchmark.
#[derive(Debug, Clone)]
pub struct SyncBenchOptions {
    /// Editing clients per node in the edit phase (0: skip it).
    pub clients_per_node: usize,
    /// Clients held on node n1 in the hold phase (0: skip it).
    pub hold: usize,
    /// Hold clients follow one shared document (else each its own).
    pub hold_shared: bool,
    /// Seconds of the measured window of the edit phase.
    pub secs: f64,
    /// Seconds of editing before the window (not counted).
    pub warmup_secs: f64,
    /// Each client's edits are this many ms apart, uniformly at random (min, max).
    pub edit_ms: (u64, u64),
    /// Period of the nodes' anti-entropy, ms.
    pub anti_entropy_ms: u64,
    /// Print progress lines to stderr.
    pub progress: bool,
}

impl Default for SyncBenchOptions {
    /// The CLI's defaults: 100 clients per node editing for 20 s after a 2 s warm-up, each
    /// every 200–500 ms; 1,000 clients held, each with its own document.
    fn default() -> Self {
        SyncBenchOptions {
            clients_per_node: 100,
            hold: 1000,
            hold_shared: false,
            secs: 20.0,
            warmup_secs: 2.0,
            edit_ms: (200, 500),
            anti_entropy_ms: Tuning::default().anti_entropy_ms,
            progress: false,
        }
    }
}

/// Runs the benchmark.
pub async fn run(opts: &SyncBenchOptions) -> Result<SyncReport, BenchError> {
    check(opts)?;
    let tuning = super::in_process_tuning(opts.anti_entropy_ms);
    let progress = |msg: String| {
        if opts.progress {
            eprintln!("bench: {msg}");
        }
    };
    progress(format!(
        "starting {NODES} nodes (mesh) over QUIC on 127.0.0.1, storage redb with fsync, \
         each with its HTTP API"
    ));
    let mut cluster = LocalCluster::prepare(
        "bench-sync",
        NODES,
        TopologyKind::Mesh,
        Vec::new(),
        None,
        tuning,
    )?;
    cluster.start_all().await?;
    let apis = match Apis::start(&cluster, opts).await {
        Ok(apis) => apis,
        Err(e) => {
            cluster.shutdown().await?;
            return Err(e);
        }
    };
    let measured = async {
        if !cluster.wait_linked(Duration::from_secs(20)).await? {
            return Err(BenchError::Timeout(
                "links did not come up within 20 s".into(),
            ));
        }
        let edit = if opts.clients_per_node > 0 {
            Some(edit_phase(&apis.addrs, opts, &progress).await?)
        } else {
            None
        };
        let hold = if opts.hold > 0 {
            Some(hold_phase(&cluster, apis.addrs[0], opts, &progress).await?)
        } else {
            None
        };
        Ok((edit, hold))
    }
    .await;
    apis.stop().await;
    cluster.shutdown().await?;
    let (edit, hold) = measured?;
    Ok(report(opts, edit, hold))
}

fn check(opts: &SyncBenchOptions) -> Result<(), BenchError> {
    if opts.clients_per_node == 0 && opts.hold == 0 {
        return Err(BenchError::Options(
            "--sync-clients and --sync-hold are both 0: nothing to measure".into(),
        ));
    }
    let positive = opts.secs.is_finite() && opts.secs > 0.0;
    let warmup = opts.warmup_secs.is_finite() && opts.warmup_secs >= 0.0;
    if !positive || !warmup {
        return Err(BenchError::Options(
            "--sync-secs must be a positive number".into(),
        ));
    }
    if opts.edit_ms.0 == 0 || opts.edit_ms.0 > opts.edit_ms.1 {
        return Err(BenchError::Options(
            "the edit interval must be at least 1 ms and min <= max".into(),
        ));
    }
    if opts.anti_entropy_ms == 0 {
        return Err(BenchError::Options(
            "--anti-entropy-ms must be at least 1".into(),
        ));
    }
    Ok(())
}
