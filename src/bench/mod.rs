//! `concordant bench`: the convergence benchmark of the SPEC, over real QUIC on loopback
//! with real storage (redb, fsync on every commit), all nodes in this process.
//!
//! Phases: (1) latency — single writes at one node, writers rotating, each timed until
//! every node shows it; (2) throughput — W single-op writes spread over D documents and
//! all nodes, timed until every node has all of them, with the bytes on the wire;
//! (3) catch-up — one node stopped while W writes happen elsewhere, timed from its restart
//! until it has them all; then every replica's heads are compared.
//!
//! [`plot`] draws a run as SVG; [`sweep`] runs the benchmark over a grid of sizes, each
//! configuration in its own process.

mod phases;
pub mod plot;
mod probe;
mod report;
pub mod sweep;

use std::path::PathBuf;
use std::time::Duration;

pub use probe::LatencyProbe;
pub use report::BenchReport;

use crate::config::{TopologyKind, Tuning};
use crate::local::{LocalCluster, LocalError};

/// Options of a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Topology.
    pub topology: TopologyKind,
    /// Documents the writes are spread over.
    pub docs: usize,
    /// Writes in the throughput and catch-up phases.
    pub writes: usize,
    /// Writes per second to aim for in the throughput phase (None: as fast as possible).
    pub rate: Option<u64>,
    /// Samples of the latency phase.
    pub latency_samples: usize,
    /// Print progress lines to stderr.
    pub progress: bool,
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Invalid options.
    #[error("invalid benchmark options: {0}")]
    Options(String),
    /// The local cluster failed.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// A node failed.
    #[error(transparent)]
    Node(#[from] crate::node::Error),
    /// A phase did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// A results file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The plot could not be drawn.
    #[error("cannot draw the plot {}: {message}", path.display())]
    Plot {
        /// The SVG file asked for.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Runs the benchmark.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    if opts.nodes < 2 {
        return Err(BenchError::Options("--nodes must be at least 2".into()));
    }
    if opts.docs == 0 || opts.writes == 0 {
        return Err(BenchError::Options(
            "--docs and --writes must be at least 1".into(),
        ));
    }
    if matches!(opts.topology, TopologyKind::Edges) {
        return Err(BenchError::Options(
            "the benchmark runs mesh or ring topologies".into(),
        ));
    }
    let tuning = Tuning {
        // Keep periodic anti-entropy out of the measured phases; connects still sync.
        anti_entropy_ms: 60_000,
        // All nodes share this process's cores: with many nodes a busy moment must not
        // look like a dead peer (a dropped link resyncs and inflates the bytes). Graceful
        // stops (the catch-up phase) close links at once, so this delays no measurement.
        keep_alive_ms: 1_000,
        idle_timeout_ms: 10_000,
        send_queue: 8192,
        ..Tuning::default()
    };
    let progress = |msg: String| {
        if opts.progress {
            eprintln!("bench: {msg}");
        }
    };
    progress(format!(
        "starting {} nodes ({}) over QUIC on 127.0.0.1, storage redb with fsync",
        opts.nodes, opts.topology
    ));
    let mut cluster =
        LocalCluster::start("bench", opts.nodes, opts.topology, Vec::new(), tuning).await?;
    if !cluster.wait_linked(Duration::from_secs(20)).await? {
        return Err(BenchError::Timeout(
            "links did not come up within 20 s".into(),
        ));
    }
    let latencies = phases::latency(&cluster, opts, &progress).await?;
    let throughput = phases::throughput(&cluster, opts, &progress).await?;
    let catchup = phases::catchup(&mut cluster, opts, &progress).await?;
    let converged = cluster.converged().await?;
    let memory = phases::memory_per_node_bytes(opts.nodes);
    cluster.shutdown().await?;
    Ok(BenchReport::new(
        opts, latencies, throughput, catchup, converged, memory,
    ))
}
