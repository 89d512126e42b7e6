//! The two phases of `concordant bench --sync-clients` (see the module above): edit (K
//! clients per node editing shared documents, latency across nodes) and hold (N clients
//! on one node, connected and synced, and a fan-out to all of them).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::runtime::{
    client_task, setup_limit, stop_clients, wait_synced, ClientSpec, Ctx, Phase, Sample, Window,
    PROGRESS_EVERY,
};
use super::{SyncBenchOptions, NODES};
use crate::bench::BenchError;
use crate::local::LocalCluster;
use crate::sync::doc_id::new_document_id;

/// After the window, the longest wait for its changes to reach every reader.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);

/// What the edit phase measured.
pub(super) struct Edited {
    pub(super) setup_s: f64,
    pub(super) writes: u64,
    pub(super) missing: u64,
    pub(super) failures: usize,
    pub(super) samples: Vec<Sample>,
}

pub(super) async fn edit_phase(
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
pub(super) struct Held {
    pub(super) held: usize,
    pub(super) hold_s: Option<f64>,
    pub(super) failures: usize,
    pub(super) node_clients: usize,
    pub(super) memory: Option<u64>,
    pub(super) fanout_ms: Option<f64>,
    pub(super) fanout_reached: usize,
}

pub(super) async fn hold_phase(
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
    let rss_before = crate::bench::phases::memory_per_node_bytes(1);
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
        .zip(crate::bench::phases::memory_per_node_bytes(1))
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
