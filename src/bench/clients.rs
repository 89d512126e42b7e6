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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

mod report;

use super::repo_client::{DocCopy, RepoClient};
use super::BenchError;
use crate::config::{TopologyKind, Tuning};
use crate::local::LocalCluster;
use crate::sync::codec::RepoMessage;
use crate::sync::doc_id::new_document_id;
use report::report;
pub use report::SyncReport;

/// Nodes of the mesh.
const NODES: usize = 3;

/// Bound on each step of a client's connection (TCP connect, upgrade, `peer` answer).
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Clients connecting at once (TCP connect, upgrade and `join`); the rest wait their turn.
const CONNECTING: usize = 64;

/// After the window, the longest wait for its changes to reach every reader.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);

/// The longest wait for the clients' tasks to end once told to stop.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// How often progress lines are printed during long waits.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

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
    let mut cluster =
        LocalCluster::prepare("bench-sync", NODES, TopologyKind::Mesh, Vec::new(), tuning)?;
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

/// Every node's HTTP API, served in this process.
struct Apis {
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<(), crate::api::ApiError>>,
}

impl Apis {
    async fn start(cluster: &LocalCluster, opts: &SyncBenchOptions) -> Result<Apis, BenchError> {
        let mut listeners = Vec::new();
        for _ in cluster.live() {
            let listener = crate::api::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .map_err(|e| BenchError::SyncClients(format!("HTTP API: {e}")))?;
            let addr = listener
                .local_addr()
                .map_err(|e| BenchError::SyncClients(format!("HTTP API address: {e}")))?;
            listeners.push((listener, addr));
        }
        let (stop, stopped) = watch::channel(false);
        let mut apis = Apis {
            addrs: Vec::new(),
            stop,
            tasks: JoinSet::new(),
        };
        for (node, (listener, addr)) in cluster.live().zip(listeners) {
            let mut options = crate::api::ApiOptions::new(None);
            let wanted = opts.hold + opts.clients_per_node + 16;
            options.sync.max_clients = options.sync.max_clients.max(wanted);
            let mut stopped = stopped.clone();
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            apis.tasks.spawn(crate::api::serve_with(
                node.clone(),
                listener,
                options,
                shutdown,
            ));
            apis.addrs.push(addr);
        }
        Ok(apis)
    }

    /// Stops every API (their sockets close) and waits for them, at most 10 s.
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
    }
}

/// Where the clients are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting and syncing.
    Setup,
    /// Editing (the window is in [`Ctx::window`]).
    Edit,
    /// Close the socket and end.
    Stop,
}

/// The edit phase's times, µs since [`Ctx::epoch`].
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Editing starts.
    start: u64,
    /// The measured window starts.
    from: u64,
    /// The window ends; no edits after it.
    to: u64,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        (self.from..self.to).contains(&t)
    }
}

/// What the clients of one phase share with the run.
struct Ctx {
    epoch: Instant,
    connecting: Semaphore,
    edit_ms: (u64, u64),
    window: OnceLock<Window>,
    /// Clients synced and still connected.
    synced: AtomicUsize,
    /// Clients that failed.
    failed: AtomicUsize,
    first_failure: Mutex<Option<String>>,
    /// Changes committed in the window.
    writes: AtomicU64,
    /// Receptions of those changes by other clients.
    received: AtomicU64,
    /// Tells the fan-out writer to make its change.
    fanout: Notify,
    fanout_received: AtomicUsize,
    fanout_max_us: AtomicU64,
}

impl Ctx {
    fn new(edit_ms: (u64, u64)) -> Arc<Ctx> {
        Arc::new(Ctx {
            epoch: Instant::now(),
            connecting: Semaphore::new(CONNECTING),
            edit_ms,
            window: OnceLock::new(),
            synced: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            first_failure: Mutex::new(None),
            writes: AtomicU64::new(0),
            received: AtomicU64::new(0),
            fanout: Notify::new(),
            fanout_received: AtomicUsize::new(0),
            fanout_max_us: AtomicU64::new(0),
        })
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn at(&self, us: u64) -> Instant {
        self.epoch + Duration::from_micros(us)
    }

    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failure.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(why);
    }

    fn first_failure(&self) -> String {
        self.first_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

/// One client of a phase.
struct ClientSpec {
    /// The node's API.
    addr: SocketAddr,
    /// Peer id.
    peer: String,
    /// The node's index.
    node: usize,
    /// Its document.
    doc: String,
    /// Makes the document (else finds it).
    create: bool,
    /// Edits during [`Phase::Edit`].
    edits: bool,
    /// Makes the fan-out change when told.
    fanout_writer: bool,
}

/// One latency sample: a change made on node `from`, applied by a client on node `to`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    from: u8,
    to: u8,
    us: u64,
}

/// What one client's task leaves.
#[derive(Default)]
struct Outcome {
    samples: Vec<Sample>,
    synced: bool,
}

/// Runs one client until told to stop; a failure is recorded in `ctx`.
async fn client_task(
    spec: ClientSpec,
    ctx: Arc<Ctx>,
    mut phase: watch::Receiver<Phase>,
) -> Vec<Sample> {
    let mut out = Outcome::default();
    if let Err(why) = run_client(&spec, &ctx, &mut phase, &mut out).await {
        // Errors while the run stops are no failures.
        if *phase.borrow() != Phase::Stop {
            if out.synced {
                ctx.synced.fetch_sub(1, Ordering::AcqRel);
            }
            ctx.fail(why);
        }
    }
    out.samples
}

async fn run_client(
    spec: &ClientSpec,
    ctx: &Ctx,
    phase: &mut watch::Receiver<Phase>,
    out: &mut Outcome,
) -> Result<(), String> {
    let mut client = {
        let _turn = ctx
            .connecting
            .acquire()
            .await
            .map_err(|_| "the run ended".to_string())?;
        RepoClient::connect(spec.addr, spec.peer.clone(), CONNECT_LIMIT).await?
    };
    let key = spec.peer.as_str();
    let mut copy = if spec.create {
        DocCopy::created(spec.doc.clone(), key)
    } else {
        DocCopy::wanted(spec.doc.clone())
    };
    client.send(&copy.opening(&client)?).await?;
    let mut editing = false;
    let mut next_edit: Option<Instant> = None;
    let mut value = 0_i64;
    loop {
        let now = *phase.borrow_and_update();
        match now {
            Phase::Stop => break,
            Phase::Edit if spec.edits && !editing => {
                editing = true;
                if let Some(w) = ctx.window.get() {
                    let first = rand::random_range(0..=ctx.edit_ms.1 * 1000);
                    next_edit = Some(ctx.at(w.start + first)).filter(|&t| t < ctx.at(w.to));
                }
            }
            _ => {}
        }
        let edit_at = next_edit.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            msg = client.recv() => {
                let msg = msg?;
                on_message(spec, ctx, &mut client, &mut copy, msg, out).await?;
            }
            _ = tokio::time::sleep_until(edit_at.into()), if next_edit.is_some() => {
                let Some(w) = ctx.window.get().copied() else {
                    next_edit = None;
                    continue;
                };
                value += 1;
                let t = ctx.now_us();
                copy.edit(key, value, format!("{}:{t}", spec.node + 1));
                if w.contains(t) {
                    ctx.writes.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(msg) = copy.outgoing(&client) {
                    client.send(&msg).await?;
                }
                let gap = rand::random_range(ctx.edit_ms.0..=ctx.edit_ms.1);
                next_edit = Some(Instant::now() + Duration::from_millis(gap))
                    .filter(|&t| t < ctx.at(w.to));
            }
            _ = ctx.fanout.notified(), if spec.fanout_writer => {
                value += 1;
                let t = ctx.now_us();
                copy.edit(key, value, format!("f:{t}"));
                if let Some(msg) = copy.outgoing(&client) {
                    client.send(&msg).await?;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    client.close().await;
    Ok(())
}

/// Handles one message from the node as automerge-repo does: a `sync` is applied and
/// answered at once.
async fn on_message(
    spec: &ClientSpec,
    ctx: &Ctx,
    client: &mut RepoClient,
    copy: &mut DocCopy,
    msg: RepoMessage,
    out: &mut Outcome,
) -> Result<(), String> {
    match msg {
        RepoMessage::Sync {
            document_id, data, ..
        } if document_id == copy.id => {
            let changes = copy.receive(&data)?;
            let applied = ctx.now_us();
            for change in &changes {
                record(spec, ctx, change.message(), applied, out);
            }
            if !out.synced && copy.synced() {
                out.synced = true;
                ctx.synced.fetch_add(1, Ordering::AcqRel);
            }
            if let Some(answer) = copy.outgoing(client) {
                client.send(&answer).await?;
            }
            Ok(())
        }
        RepoMessage::Sync { document_id, .. } => Err(format!(
            "{}: a sync message for {document_id}, which it never asked for",
            client.me()
        )),
        // The node follows the document for the client even so: it arrives when the node
        // gets it.
        RepoMessage::DocUnavailable { .. } => Ok(()),
        _ => Ok(()),
    }
}

/// Records the arrival of a change whose message is `"<node>:<µs>"` (an edit) or
/// `"f:<µs>"` (the fan-out change).
fn record(spec: &ClientSpec, ctx: &Ctx, message: Option<&str>, applied: u64, out: &mut Outcome) {
    let Some((tag, t)) = message.and_then(|m| m.split_once(':')) else {
        return;
    };
    let Ok(t) = t.parse::<u64>() else {
        return;
    };
    let us = applied.saturating_sub(t);
    if tag == "f" {
        ctx.fanout_received.fetch_add(1, Ordering::AcqRel);
        ctx.fanout_max_us.fetch_max(us, Ordering::AcqRel);
        return;
    }
    let (Ok(from), Some(w)) = (tag.parse::<u8>(), ctx.window.get()) else {
        return;
    };
    if w.contains(t) {
        ctx.received.fetch_add(1, Ordering::AcqRel);
        out.samples.push(Sample {
            from,
            to: spec.node as u8 + 1,
            us,
        });
    }
}

/// Waits until `want` clients are synced; an error if one fails or `limit` passes.
async fn wait_synced(
    ctx: &Ctx,
    want: usize,
    started: Instant,
    limit: Duration,
    what: &str,
    progress: &dyn Fn(String),
) -> Result<(), BenchError> {
    let mut report = Instant::now() + PROGRESS_EVERY;
    loop {
        let synced = ctx.synced.load(Ordering::Acquire);
        if ctx.failed.load(Ordering::Acquire) > 0 {
            return Err(BenchError::SyncClients(format!(
                "{what}: a client failed ({} so far): {}",
                ctx.failed.load(Ordering::Acquire),
                ctx.first_failure()
            )));
        }
        if synced >= want {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(BenchError::Timeout(format!(
                "{what}: {synced} of {want} clients synced after {limit:?}"
            )));
        }
        if Instant::now() >= report {
            progress(format!("sync: {what}: {synced}/{want} clients synced"));
            report += PROGRESS_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Bound on connecting and syncing `clients` clients.
fn setup_limit(clients: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(50) * clients as u32
}

/// Tells the clients to stop and collects their samples (tasks not done within
/// [`STOP_LIMIT`] are aborted).
async fn stop_clients(
    phase: &watch::Sender<Phase>,
    mut tasks: JoinSet<Vec<Sample>>,
) -> Vec<Sample> {
    let _ = phase.send(Phase::Stop);
    let mut samples = Vec::new();
    let all = async {
        while let Some(done) = tasks.join_next().await {
            if let Ok(mut s) = done {
                samples.append(&mut s);
            }
        }
    };
    let finished = tokio::time::timeout(STOP_LIMIT, all).await.is_ok();
    if !finished {
        tasks.abort_all();
    }
    samples
}

/// What the edit phase measured.
struct Edited {
    setup_s: f64,
    writes: u64,
    missing: u64,
    failures: usize,
    samples: Vec<Sample>,
}

async fn edit_phase(
    addrs: &[SocketAddr],
    opts: &SyncBenchOptions,
    progress: &dyn Fn(String),
) -> Result<Edited, BenchError> {
    let k = opts.clients_per_node;
    let total = k * NODES;
    let ctx = Ctx::new(opts.edit_ms);
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let docs: Vec<String> = (0..k).map(|_| new_document_id()).collect();
    let mut tasks = JoinSet::new();
    let spec = |node: usize, j: usize| ClientSpec {
        addr: addrs[node],
        peer: format!("bench-n{}-c{j}", node + 1),
        node,
        doc: docs[j].clone(),
        create: j % NODES == node,
        edits: true,
        fanout_writer: false,
    };
    progress(format!(
        "sync: edit phase: connecting {total} clients ({k} per node), {k} documents each \
         followed by one client on every node"
    ));
    let started = Instant::now();
    let limit = setup_limit(total);
    for j in 0..k {
        tasks.spawn(client_task(
            spec(j % NODES, j),
            ctx.clone(),
            phase_rx.clone(),
        ));
    }
    let setup = async {
        wait_synced(&ctx, k, started, limit, "making the documents", progress).await?;
        for node in 0..NODES {
            for j in (0..k).filter(|j| j % NODES != node) {
                tasks.spawn(client_task(spec(node, j), ctx.clone(), phase_rx.clone()));
            }
        }
        wait_synced(
            &ctx,
            total,
            started,
            limit,
            "finding the documents",
            progress,
        )
        .await
    };
    if let Err(e) = setup.await {
        stop_clients(&phase, tasks).await;
        return Err(e);
    }
    let setup_s = started.elapsed().as_secs_f64();
    progress(format!(
        "sync: {total} clients connected and synced in {setup_s:.2} s; editing for {:.1} s \
         of warm-up and a window of {:.1} s",
        opts.warmup_secs, opts.secs
    ));
    let start = ctx.now_us();
    let from = start + (opts.warmup_secs * 1e6) as u64;
    let window = Window {
        start,
        from,
        to: from + (opts.secs * 1e6) as u64,
    };
    let _ = ctx.window.set(window);
    let _ = phase.send(Phase::Edit);
    let end = ctx.at(window.to);
    while Instant::now() < end {
        let next = (Instant::now() + PROGRESS_EVERY).min(end);
        tokio::time::sleep_until(next.into()).await;
        progress(format!(
            "sync: editing: {} changes in the window so far, {} of their receptions, {} \
             failed clients",
            ctx.writes.load(Ordering::Relaxed),
            ctx.received.load(Ordering::Relaxed),
            ctx.failed.load(Ordering::Relaxed)
        ));
    }
    // Every change of the window should reach the document's other clients.
    let expected = ctx.writes.load(Ordering::Acquire) * (NODES as u64 - 1);
    let drain = Instant::now();
    while ctx.received.load(Ordering::Acquire) < expected && drain.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received = ctx.received.load(Ordering::Acquire);
    let missing = expected.saturating_sub(received);
    if missing > 0 {
        progress(format!(
            "sync: {missing} of {expected} receptions still missing after {DRAIN_LIMIT:?}"
        ));
    }
    let samples = stop_clients(&phase, tasks).await;
    let failures = ctx.failed.load(Ordering::Acquire);
    if failures > 0 {
        progress(format!(
            "sync: {failures} clients failed; the first: {}",
            ctx.first_failure()
        ));
    }
    Ok(Edited {
        setup_s,
        writes: ctx.writes.load(Ordering::Acquire),
        missing,
        failures,
        samples,
    })
}

/// What the hold phase measured.
struct Held {
    held: usize,
    hold_s: Option<f64>,
    failures: usize,
    node_clients: usize,
    memory: Option<u64>,
    fanout_ms: Option<f64>,
    fanout_reached: usize,
}

async fn hold_phase(
    cluster: &LocalCluster,
    addr: SocketAddr,
    opts: &SyncBenchOptions,
    progress: &dyn Fn(String),
) -> Result<Held, BenchError> {
    let n = opts.hold;
    let node = cluster
        .node(0)
        .ok_or_else(|| BenchError::SyncClients("node n1 is not running".into()))?;
    // The edit phase's clients have gone.
    let gone = Instant::now();
    while node.status().await?.sync_clients > 0 {
        if gone.elapsed() > Duration::from_secs(10) {
            return Err(BenchError::Timeout(
                "n1 still counts clients 10 s after they closed".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_before = super::phases::memory_per_node_bytes(1);
    let ctx = Ctx::new(opts.edit_ms);
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let shared_doc = new_document_id();
    let spec = |i: usize| ClientSpec {
        addr,
        peer: format!("bench-hold-{i}"),
        node: 0,
        doc: if opts.hold_shared {
            shared_doc.clone()
        } else {
            new_document_id()
        },
        create: !opts.hold_shared || i == 0,
        edits: false,
        fanout_writer: opts.hold_shared && i == 0,
    };
    progress(format!(
        "sync: hold phase: connecting {n} clients to n1, {}",
        if opts.hold_shared {
            "all following one document"
        } else {
            "each with its own document"
        }
    ));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let limit = setup_limit(n);
    let mut first = 0;
    if opts.hold_shared {
        tasks.spawn(client_task(spec(0), ctx.clone(), phase_rx.clone()));
        first = 1;
        if let Err(e) = wait_synced(&ctx, 1, started, limit, "making the document", progress).await
        {
            stop_clients(&phase, tasks).await;
            return Err(e);
        }
    }
    for i in first..n {
        tasks.spawn(client_task(spec(i), ctx.clone(), phase_rx.clone()));
    }
    // Every client synced, or failed, or the limit passed.
    let mut hold_s = None;
    let mut report = Instant::now() + PROGRESS_EVERY;
    loop {
        let synced = ctx.synced.load(Ordering::Acquire);
        let failed = ctx.failed.load(Ordering::Acquire);
        if synced >= n {
            hold_s = Some(started.elapsed().as_secs_f64());
            break;
        }
        if synced + failed >= n || started.elapsed() > limit {
            break;
        }
        if Instant::now() >= report {
            progress(format!(
                "sync: hold: {synced}/{n} clients synced, {failed} failed"
            ));
            report += PROGRESS_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let memory = rss_before
        .zip(super::phases::memory_per_node_bytes(1))
        .map(|(before, after)| after.saturating_sub(before));
    progress(format!(
        "sync: hold: {}/{n} clients synced{}; holding them for 1 s",
        ctx.synced.load(Ordering::Acquire),
        hold_s.map(|s| format!(" in {s:.2} s")).unwrap_or_default()
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node_clients = node.status().await?.sync_clients;
    let (mut fanout_ms, mut fanout_reached) = (None, 0);
    if opts.hold_shared && n > 1 {
        let others = n - 1;
        let t0 = Instant::now();
        ctx.fanout.notify_one();
        while ctx.fanout_received.load(Ordering::Acquire) < others
            && t0.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        fanout_reached = ctx.fanout_received.load(Ordering::Acquire);
        if fanout_reached >= others {
            fanout_ms = Some(ctx.fanout_max_us.load(Ordering::Acquire) as f64 / 1000.0);
        }
    }
    let held = ctx.synced.load(Ordering::Acquire);
    stop_clients(&phase, tasks).await;
    let failures = ctx.failed.load(Ordering::Acquire);
    if failures > 0 {
        progress(format!(
            "sync: hold: {failures} clients failed; the first: {}",
            ctx.first_failure()
        ));
    }
    Ok(Held {
        held,
        hold_s,
        failures,
        node_clients,
        memory,
        fanout_ms,
        fanout_reached,
    })
}
