//! `concordant bench`: the convergence benchmark of the SPEC, over real QUIC on loopback
//! with real storage (redb, fsync on every commit), all nodes in this process.
//!
//! With `--replicas R` below the nodes, each document lives on R of them (the topology's
//! placement): every write and read goes to a replica of its document, as a
//! placement-aware client would send it, each node is expected to have the writes to the
//! documents it replicates, and documents are compared across their replicas only. The
//! report then adds `replicas` and `stored_docs_per_node` (the mean over the nodes of the
//! documents each stores at the end, by its status, over all documents the run wrote).
//!
//! Before the nodes start, `--preload N` puts the same N one-change documents
//! (`pre-0000000`…) into every node's store (with R below the nodes, into the stores of
//! each document's replicas), so that the cluster starts converged with N documents. The CLI does it in a child process (see [`BenchOptions::preload_exe`]), so
//! that the preload's memory is not counted as the nodes'; its time is reported
//! (`preload_s`) but is no phase. The measured writes go to `--docs` D documents: with at
//! least D preloaded documents, to preloaded ones spread evenly over them (every N/D-th),
//! else to new documents `doc-*`.
//!
//! With `--link-delay-ms D [--link-jitter-ms J] [--link-loss PCT]` every directed link
//! crosses a relay that delays each datagram by D ± J ms and drops PCT % of them (see
//! [`links`]); the report then adds the options, `messages_per_write` (peer messages every
//! node sent during the throughput phase / W), the round-trip times QUIC measured, the
//! links lost and what the cluster view saw. `--topology tree --fanout K` runs an `edges`
//! topology laid out as a tree ([`links::tree_links`]).
//!
//! Phases: (1) latency — single writes at one node, writers rotating, each timed until
//! every node (every replica of the document) shows it, then `--ack-samples` writes with
//! `ack: all`, each timed until answered ([`acks`]); (2) throughput — W single-op writes spread over D documents and
//! all nodes, timed until every node's counters show all of them, then every replica's
//! listing is compared (should they differ, the time runs on until they agree);
//! (3) idle — once converged and settled (1 s), the peer bytes every node sends over a
//! window of `--idle-secs`, at least two anti-entropy periods, per node per second;
//! (4) catch-up — one node stopped while W writes happen elsewhere, then restarted and
//! timed until it serves (`restart_s`: `Node::start` returned and its status answered),
//! until its first link (`first_link_s`) and until it has every missed write
//! (`catchup_s`: its counters show them and its listing equals a live node's); then every
//! replica's listing is compared (`converged`).
//!
//! Listings grow with the documents (about 1.5 s per 1,000,000) and run in the node's event
//! loop, holding it up meanwhile: the phases compare them only once the counters are
//! complete, and space further comparisons out. They also allocate in this process (about
//! 130 bytes per document, one listing at a time), which the memory figure includes.
//!
//! Periodic anti-entropy runs at the node's default period (5,000 ms, `--anti-entropy-ms`)
//! during every phase: reconciling converged replicas costs next to nothing, and the idle
//! phase measures what it does cost. Resident memory of the process per node is sampled
//! after the idle phase and at the end; the larger sample is reported.
//!
//! [`plot`] draws a run as SVG; [`sweep`] runs the benchmark over a grid of sizes, each
//! configuration in its own process; [`clients`] measures automerge-repo clients over
//! `GET /v1/sync` (`--sync-clients`, `--sync-hold`).

mod acks;
pub mod clients;
pub mod links;
mod phases;
pub mod plot;
mod preload;
mod probe;
mod repo_client;
mod report;
pub mod sweep;

use std::path::PathBuf;
use std::time::Duration;

pub use links::LinkOptions;
pub use probe::LatencyProbe;
pub use report::BenchReport;

use crate::config::{RingDirection, TopologyKind, Tuning};
use crate::local::{LocalCluster, LocalError};
use crate::topology::Topology;

/// Options of a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Topology. [`TopologyKind::Edges`] is laid out as a tree ([`links::tree_links`]) of
    /// `tree_fanout` children per node.
    pub topology: TopologyKind,
    /// Children per node of the tree of an `edges` topology (`--fanout`).
    pub tree_fanout: usize,
    /// Every directed link through a relay with these delays and losses (`--link-*`);
    /// `None`: nodes talk directly.
    pub link: Option<LinkOptions>,
    /// Writes with `ack: all` timed in the latency phase.
    pub ack_samples: usize,
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
    /// Documents put into every node's store before the nodes start (identical on every
    /// node, so the cluster starts converged; with `replicas`, on each one's replicas).
    pub preload: usize,
    /// Each document on this many nodes (`--replicas`; None: on every node). When given,
    /// the report has `replicas` and `stored_docs_per_node`.
    pub replicas: Option<usize>,
    /// Seconds of the idle window (raised to two anti-entropy periods if shorter).
    pub idle_secs: f64,
    /// Period of the nodes' anti-entropy, ms.
    pub anti_entropy_ms: u64,
    /// The links' QUIC keep-alive interval, ms (`--keep-alive-ms`; default 1,000, see
    /// [`in_process_tuning`]).
    pub keep_alive_ms: u64,
    /// The links' idle timeout, ms (`--idle-timeout-ms`; default 10,000, see
    /// [`in_process_tuning`]).
    pub idle_timeout_ms: u64,
    /// Compressed peer links (`[tuning] compress_links`; `--no-compress` turns it off).
    pub compress_links: bool,
    /// The `concordant` executable to run the preload in (`concordant bench --preload N
    /// --preload-into DIR...`), so that what it allocates (Automerge documents, redb's
    /// cache of every store it fills) is no part of this process's resident memory, which
    /// the memory figure divides among the nodes. None: preload in this process.
    pub preload_exe: Option<PathBuf>,
}

impl Default for BenchOptions {
    /// The CLI's defaults: 5 nodes in a mesh, 100 documents, 20,000 writes, 500 latency
    /// samples and 100 with `ack: all`, links without relays, no preload, a 5 s idle window (10 s with the default anti-entropy period).
    fn default() -> Self {
        BenchOptions {
            nodes: 5,
            topology: TopologyKind::Mesh,
            tree_fanout: 4,
            link: None,
            ack_samples: 100,
            docs: 100,
            writes: 20_000,
            rate: None,
            latency_samples: 500,
            progress: false,
            preload: 0,
            replicas: None,
            idle_secs: 5.0,
            anti_entropy_ms: Tuning::default().anti_entropy_ms,
            keep_alive_ms: IN_PROCESS_KEEP_ALIVE_MS,
            idle_timeout_ms: IN_PROCESS_IDLE_TIMEOUT_MS,
            compress_links: true,
            preload_exe: None,
        }
    }
}

impl BenchOptions {
    /// The idle window: `idle_secs`, but at least two anti-entropy periods.
    pub fn idle_window(&self) -> Duration {
        let two_periods = Duration::from_millis(self.anti_entropy_ms.saturating_mul(2));
        Duration::from_secs_f64(self.idle_secs.max(0.0)).max(two_periods)
    }
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
    /// A store could not be preloaded.
    #[error("preload: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// The preloaded documents could not be made.
    #[error("preload: {0}")]
    Preload(String),
    /// A phase did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// An automerge-repo client of `--sync-clients` failed, or its set-up did.
    #[error("sync clients: {0}")]
    SyncClients(String),
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
    if opts.anti_entropy_ms == 0 || !opts.idle_secs.is_finite() {
        return Err(BenchError::Options(
            "--anti-entropy-ms must be at least 1 and --idle-secs a number".into(),
        ));
    }
    if opts.topology == TopologyKind::Edges && opts.tree_fanout == 0 {
        return Err(BenchError::Options("--fanout must be at least 1".into()));
    }
    if let Some(link) = &opts.link {
        link.check()?;
    }
    check_replicas(opts)?;
    if opts.keep_alive_ms == 0 || opts.keep_alive_ms >= opts.idle_timeout_ms {
        return Err(BenchError::Options(format!(
            "--keep-alive-ms ({}) must be at least 1 and below --idle-timeout-ms ({})",
            opts.keep_alive_ms, opts.idle_timeout_ms
        )));
    }
    let tuning = Tuning {
        compress_links: opts.compress_links,
        keep_alive_ms: opts.keep_alive_ms,
        idle_timeout_ms: opts.idle_timeout_ms,
        ..in_process_tuning(opts.anti_entropy_ms)
    };
    let progress = |msg: String| {
        if opts.progress {
            eprintln!("bench: {msg}");
        }
    };
    let mut cluster = LocalCluster::prepare(
        "bench",
        opts.nodes,
        opts.topology,
        bench_links(opts),
        opts.replicas,
        tuning,
    )?;
    if let Some(link) = &opts.link {
        cluster.relay_links(link.faults(), rand::random()).await?;
    }
    let preload_s = preload_stores(&cluster, opts).await?;
    progress(format!(
        "starting {} nodes ({}{}) over QUIC on 127.0.0.1{}, storage redb with fsync",
        opts.nodes,
        topology_name(opts),
        match opts.replicas {
            Some(r) => format!(", each document on {r} of them"),
            None => String::new(),
        },
        match &opts.link {
            Some(l) => format!(
                ", every link through a relay: {} ± {} ms one way, {} % lost",
                l.delay_ms, l.jitter_ms, l.loss_pct
            ),
            None => String::new(),
        }
    ));
    cluster.start_all().await?;
    if !cluster.wait_linked(Duration::from_secs(20)).await? {
        return Err(BenchError::Timeout(
            "links did not come up within 20 s".into(),
        ));
    }
    let latency = phases::latency(&cluster, opts, &progress).await?;
    let rtt = links::rtt_ms(&cluster).await?;
    let ack_all = acks::ack_all(&cluster, opts.ack_samples, &progress).await?;
    let throughput = phases::throughput(&cluster, opts, &progress).await?;
    let idle = phases::idle(&cluster, opts, &progress).await?;
    let links = match &opts.link {
        Some(_) => Some(measure_links(&cluster, rtt, &progress).await?),
        None => None,
    };
    let mut memory = phases::memory_per_node_bytes(opts.nodes);
    let catchup = phases::catchup(&mut cluster, opts, &progress).await?;
    memory = memory.max(phases::memory_per_node_bytes(opts.nodes));
    let converged = cluster.converged().await?;
    let stored_docs_per_node = match opts.replicas {
        Some(_) => {
            let written = written_docs(opts) + latency.docs;
            Some(phases::stored_docs_per_node(&cluster, written).await?)
        }
        None => None,
    };
    cluster.shutdown().await?;
    Ok(BenchReport::new(
        opts,
        report::Measured {
            latencies: latency.samples,
            ack_all,
            links,
            stored_docs_per_node,
            throughput,
            idle,
            catchup,
            converged,
            memory,
            preload_s,
        },
    ))
}

/// What the run saw of its relayed links, once idle (before the catch-up phase stops a
/// node on purpose): the round-trip times `rtt` (mean, max) sampled after the latency
/// phase, the links lost so far, and the cluster view.
async fn measure_links(
    cluster: &LocalCluster,
    rtt: Option<(f64, f64)>,
    progress: &dyn Fn(String),
) -> Result<report::Links, BenchError> {
    let lost = links::links_lost(cluster).await?;
    let (view_up, view_ms) = links::cluster_view(cluster).await?;
    progress(format!(
        "links: round trips {}, {lost} links lost, the cluster view showed {view_up} of {} \
         nodes up in {view_ms:.0} ms",
        rtt.map_or("n/a".into(), |(mean, max)| format!(
            "{mean:.1} ms on average, {max:.1} ms at most"
        )),
        cluster.ids().len()
    ));
    Ok(report::Links {
        rtt_ms: rtt.map(|r| r.0),
        rtt_max_ms: rtt.map(|r| r.1),
        lost,
        view_up,
        view_ms,
    })
}

/// The links of an `edges` topology (a tree); none for the others.
fn bench_links(opts: &BenchOptions) -> Vec<(String, String)> {
    match opts.topology {
        TopologyKind::Edges => links::tree_links(opts.nodes, opts.tree_fanout),
        _ => Vec::new(),
    }
}

/// The topology as the report names it: a tree says its fanout.
pub(crate) fn topology_name(opts: &BenchOptions) -> String {
    match opts.topology {
        TopologyKind::Edges => format!("edges (a tree, fanout {})", opts.tree_fanout),
        kind => kind.to_string(),
    }
}

/// Refuses `opts.replicas` if the topology cannot place documents on that many nodes
/// (0, more than the nodes, or a topology without placement).
fn check_replicas(opts: &BenchOptions) -> Result<(), BenchError> {
    bench_topology(opts.nodes, opts.topology, opts.replicas).map(|_| ())
}

/// The topology of a benchmark's local cluster (nodes n1..nN, see
/// [`crate::local::node_ids`]), each document on `replicas` nodes (None: every node).
fn bench_topology(
    nodes: usize,
    kind: TopologyKind,
    replicas: Option<usize>,
) -> Result<Topology, BenchError> {
    Topology::new(kind, crate::local::node_ids(nodes), Vec::new())
        .with_replicas(replicas)
        .map_err(|e| BenchError::Options(format!("--replicas: {e}")))
}

/// The documents the throughput and catch-up writes go to and the preloaded ones, all
/// counted once.
fn written_docs(opts: &BenchOptions) -> usize {
    let targets = preload::Targets::new(opts.docs, opts.preload);
    if targets.preloaded() {
        opts.preload
    } else {
        opts.docs + opts.preload
    }
}

/// Puts `count` identical one-change documents (`pre-0000000`…) into the store in each
/// of `dirs`: the child process of a run with `--preload` (`concordant bench --preload N
/// --preload-into DIR... [--topology T --replicas R]`). With `placed` = (topology, R),
/// `dirs` are the data directories of a benchmark's nodes n1..nN in order, and each
/// document goes only into the stores of its R replicas in that topology. Blocking.
pub fn preload_into(
    dirs: &[PathBuf],
    count: usize,
    placed: Option<(TopologyKind, usize)>,
    progress: bool,
) -> Result<(), BenchError> {
    let topology = match placed {
        Some((kind, replicas)) => Some(bench_topology(dirs.len(), kind, Some(replicas))?),
        None => None,
    };
    preload::preload(dirs, count, topology.as_ref(), &|msg| {
        if progress {
            eprintln!("bench: {msg}");
        }
    })
}

/// Puts `opts.preload` documents into every node's store (nodes not started yet), in a
/// child process if `opts.preload_exe` says so; returns the seconds it took.
async fn preload_stores(cluster: &LocalCluster, opts: &BenchOptions) -> Result<f64, BenchError> {
    if opts.preload == 0 {
        return Ok(0.0);
    }
    let dirs: Vec<PathBuf> = (0..opts.nodes).map(|i| cluster.data_dir(i)).collect();
    let (count, verbose, exe) = (opts.preload, opts.progress, opts.preload_exe.clone());
    let placed = opts.replicas.map(|r| (opts.topology, r));
    let start = std::time::Instant::now();
    tokio::task::spawn_blocking(move || match exe {
        None => preload_into(&dirs, count, placed, verbose),
        Some(exe) => preload_child(&exe, &dirs, count, placed, verbose),
    })
    .await
    .map_err(|e| BenchError::Preload(format!("the preload task failed: {e}")))??;
    let seconds = start.elapsed().as_secs_f64();
    if opts.progress {
        let rss = phases::memory_per_node_bytes(1)
            .map(|b| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "n/a".into());
        let where_ = match opts.replicas {
            Some(r) => format!("each on {r} of {} nodes", opts.nodes),
            None => format!("on each of {} nodes", opts.nodes),
        };
        eprintln!(
            "bench: preload: {count} documents {where_} in {seconds:.1} s \
             (not part of any phase); this process's resident memory now {rss}"
        );
    }
    Ok(seconds)
}

/// Runs the preload in a child process of `exe`; its progress goes to this stderr.
fn preload_child(
    exe: &std::path::Path,
    dirs: &[PathBuf],
    count: usize,
    placed: Option<(TopologyKind, usize)>,
    progress: bool,
) -> Result<(), BenchError> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "--preload", &count.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if let Some((kind, replicas)) = placed {
        cmd.args(["--topology", cli_topology(kind)?])
            .args(["--replicas", &replicas.to_string()]);
    }
    if !progress {
        cmd.stderr(std::process::Stdio::null());
    }
    for dir in dirs {
        cmd.arg("--preload-into").arg(dir);
    }
    let status = cmd
        .status()
        .map_err(|e| BenchError::Preload(format!("cannot run {}: {e}", exe.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Preload(format!(
            "the preload process {} failed ({status})",
            exe.display()
        )))
    }
}

/// The `--topology` value naming `kind`.
fn cli_topology(kind: TopologyKind) -> Result<&'static str, BenchError> {
    match kind {
        TopologyKind::Mesh => Ok("mesh"),
        TopologyKind::Ring(RingDirection::Both) => Ok("ring"),
        TopologyKind::Ring(RingDirection::Forward) => Ok("ring-forward"),
        TopologyKind::Edges => Err(BenchError::Options(
            "the benchmark runs mesh or ring topologies".into(),
        )),
    }
}

/// The keep-alive of links between nodes of one process, ms (see [`in_process_tuning`]).
pub const IN_PROCESS_KEEP_ALIVE_MS: u64 = 1_000;

/// The idle timeout of links between nodes of one process, ms (see [`in_process_tuning`]).
pub const IN_PROCESS_IDLE_TIMEOUT_MS: u64 = 10_000;

/// The tuning of nodes that share this process's cores with each other (and with a
/// benchmark's clients): a busy moment must not look like a dead peer (a dropped link
/// resyncs and inflates the bytes). Graceful stops (the catch-up phase) close links at once,
/// so this delays no measurement.
pub(crate) fn in_process_tuning(anti_entropy_ms: u64) -> Tuning {
    Tuning {
        anti_entropy_ms,
        keep_alive_ms: IN_PROCESS_KEEP_ALIVE_MS,
        idle_timeout_ms: IN_PROCESS_IDLE_TIMEOUT_MS,
        send_queue: 8192,
        ..Tuning::default()
    }
}
