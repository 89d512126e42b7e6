//! The benchmark's phases, each measured on a running [`LocalCluster`].

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::ROOT;
use tokio::task::JoinSet;

use super::{BenchError, BenchOptions, LatencyProbe};
use crate::local::LocalCluster;
use crate::node::Node;

/// Writes in flight per node in the throughput phases (each waits for its fsync; under
/// load many share one commit).
const IN_FLIGHT: usize = 256;

/// Result of the throughput phase.
pub(crate) struct Throughput {
    pub(crate) seconds: f64,
    pub(crate) bytes: u64,
    pub(crate) progress: Vec<(u64, usize, u64)>,
}

/// Result of the catch-up phase.
pub(crate) struct Catchup {
    pub(crate) seconds: f64,
}

/// Changes a node holds that it did not have at start-up: local, pushed and repaired.
async fn changes_seen(node: &Node) -> Result<u64, BenchError> {
    let s = node.status().await?;
    Ok(s.core.local_changes + s.core.remote_changes + s.core.repaired_changes)
}

/// Bytes written to the wire by every running node.
async fn wire_bytes(cluster: &LocalCluster) -> Result<u64, BenchError> {
    let mut total = 0;
    for node in cluster.live() {
        total += node.status().await?.transport.totals.bytes_sent;
    }
    Ok(total)
}

/// Single writes at one node (writers rotating), each timed until every node shows it.
pub(crate) async fn latency(
    cluster: &LocalCluster,
    opts: &BenchOptions,
    progress: &dyn Fn(String),
) -> Result<Vec<u64>, BenchError> {
    let mut probe = LatencyProbe::new(cluster.live().cloned().collect(), "bench-latency").await?;
    let mut samples = Vec::with_capacity(opts.latency_samples);
    let mut last_report = Instant::now();
    for n in 0..opts.latency_samples {
        let Some(took) = probe.write(Duration::from_secs(10)).await? else {
            return Err(BenchError::Timeout(format!(
                "latency write {n} was not visible on every node within 10 s"
            )));
        };
        samples.push(took.as_micros() as u64);
        if last_report.elapsed() > Duration::from_secs(1) {
            progress(format!(
                "latency: {}/{} samples",
                n + 1,
                opts.latency_samples
            ));
            last_report = Instant::now();
        }
    }
    progress(format!("latency: {} samples done", samples.len()));
    Ok(samples)
}

/// Issues `writes` single-op writes from the given nodes, spread over `docs` documents,
/// `IN_FLIGHT` at a time per node, optionally paced to `rate` writes/s overall.
fn spawn_writers(
    writers: Vec<Node>,
    writes: usize,
    docs: usize,
    rate: Option<u64>,
    tag: &'static str,
) -> JoinSet<Result<(), crate::node::Error>> {
    let mut set = JoinSet::new();
    let count = writers.len();
    for (w, node) in writers.into_iter().enumerate() {
        let mine: Vec<usize> = (w..writes).step_by(count).collect();
        let per_writer_rate = rate.map(|r| (r as f64 / count as f64).max(1.0));
        set.spawn(async move {
            let mut inflight = JoinSet::new();
            let start = Instant::now();
            for (k, j) in mine.into_iter().enumerate() {
                if let Some(r) = per_writer_rate {
                    let due = start + Duration::from_secs_f64(k as f64 / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                while inflight.len() >= IN_FLIGHT {
                    if let Some(done) = inflight.join_next().await {
                        done.map_err(|_| crate::node::Error::Stopped)??;
                    }
                }
                let node = node.clone();
                inflight.spawn(async move {
                    let doc = format!("doc-{}", j % docs);
                    let key = format!("{tag}{j}");
                    node.change(&doc, move |tx| tx.put(ROOT, key, j as u64))
                        .await
                        .map(|_| ())
                });
            }
            while let Some(done) = inflight.join_next().await {
                done.map_err(|_| crate::node::Error::Stopped)??;
            }
            Ok(())
        });
    }
    set
}

/// Waits until each of `nodes` has seen `target[i]` changes; records progress.
async fn wait_counts(
    nodes: &[Node],
    target: &[u64],
    limit: Duration,
    what: &str,
    progress: &dyn Fn(String),
) -> Result<Vec<(u64, usize, u64)>, BenchError> {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut last_sample = None::<Instant>;
    let mut last_report = Instant::now();
    loop {
        let mut done = true;
        let mut slowest = u64::MAX;
        let sample_now = last_sample.is_none_or(|t| t.elapsed() >= Duration::from_millis(20));
        for (i, node) in nodes.iter().enumerate() {
            let seen = changes_seen(node).await?;
            done &= seen >= target[i];
            slowest = slowest.min(seen.saturating_sub(target[i].saturating_sub(target[0])));
            if sample_now {
                samples.push((start.elapsed().as_millis() as u64, i, seen));
            }
        }
        if sample_now {
            last_sample = Some(Instant::now());
        }
        if done {
            return Ok(samples);
        }
        if start.elapsed() > limit {
            return Err(BenchError::Timeout(format!(
                "{what}: not every node had every write within {limit:?}"
            )));
        }
        if last_report.elapsed() > Duration::from_secs(1) {
            progress(format!("{what}: {:.1} s", start.elapsed().as_secs_f64()));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn limit_for(writes: usize) -> Duration {
    Duration::from_secs(60 + writes as u64 / 200)
}

/// W single-op writes over D documents from every node, until every node has all.
pub(crate) async fn throughput(
    cluster: &LocalCluster,
    opts: &BenchOptions,
    progress: &dyn Fn(String),
) -> Result<Throughput, BenchError> {
    let nodes: Vec<Node> = cluster.live().cloned().collect();
    let mut target = Vec::new();
    for node in &nodes {
        target.push(changes_seen(node).await? + opts.writes as u64);
    }
    let bytes_before = wire_bytes(cluster).await?;
    progress(format!(
        "throughput: {} writes over {} docs from {} nodes",
        opts.writes,
        opts.docs,
        nodes.len()
    ));
    let start = Instant::now();
    let mut writers = spawn_writers(nodes.clone(), opts.writes, opts.docs, opts.rate, "t");
    let samples = wait_counts(
        &nodes,
        &target,
        limit_for(opts.writes),
        "throughput",
        progress,
    )
    .await?;
    let counted = start.elapsed().as_secs_f64();
    // The counters say every node accepted W changes; also wait for identical heads.
    let limit = limit_for(opts.writes);
    if cluster.wait_converged(limit).await?.is_none() {
        return Err(BenchError::Timeout(format!(
            "replicas did not reach identical heads within {limit:?}"
        )));
    }
    let seconds = start.elapsed().as_secs_f64();
    progress(format!(
        "throughput: counts complete at {counted:.3} s, identical heads at {seconds:.3} s"
    ));
    while let Some(done) = writers.join_next().await {
        done.map_err(|_| crate::node::Error::Stopped)??;
    }
    let bytes = wire_bytes(cluster).await? - bytes_before;
    Ok(Throughput {
        seconds,
        bytes,
        progress: samples,
    })
}

/// The last node is stopped, W writes happen elsewhere, the node restarts and catches up.
pub(crate) async fn catchup(
    cluster: &mut LocalCluster,
    opts: &BenchOptions,
    progress: &dyn Fn(String),
) -> Result<Catchup, BenchError> {
    let victim = cluster.ids().len() - 1;
    progress(format!("catch-up: stopping {}", cluster.ids()[victim]));
    cluster.stop_node(victim).await?;
    let nodes: Vec<Node> = cluster.live().cloned().collect();
    let mut target = Vec::new();
    for node in &nodes {
        target.push(changes_seen(node).await? + opts.writes as u64);
    }
    let mut writers = spawn_writers(nodes.clone(), opts.writes, opts.docs, opts.rate, "c");
    wait_counts(
        &nodes,
        &target,
        limit_for(opts.writes),
        "catch-up writes",
        progress,
    )
    .await?;
    while let Some(done) = writers.join_next().await {
        done.map_err(|_| crate::node::Error::Stopped)??;
    }
    let reference = nodes[0].docs().await?;
    progress(format!(
        "catch-up: restarting {} ({} writes behind)",
        cluster.ids()[victim],
        opts.writes
    ));
    let start = Instant::now();
    let node = cluster.start_node(victim).await?.clone();
    progress(format!(
        "catch-up: node running again after {} ms (store opened and loaded)",
        start.elapsed().as_millis()
    ));
    let limit = limit_for(opts.writes);
    let mut linked = false;
    loop {
        if !linked && node.status().await?.peers.iter().any(|p| p.connected) {
            linked = true;
            progress(format!(
                "catch-up: first link up {} ms after the restart began",
                start.elapsed().as_millis()
            ));
        }
        if node.docs().await? == reference {
            break;
        }
        if start.elapsed() > limit {
            return Err(BenchError::Timeout(format!(
                "catch-up: the restarted node did not catch up within {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let core = node.status().await?.core;
    progress(format!(
        "catch-up: done in {seconds:.3} s: {} sync sessions started, {} sync messages sent, \
         {} changes repaired, {} duplicates",
        core.repairs, core.sync_sent, core.repaired_changes, core.duplicates
    ));
    Ok(Catchup { seconds })
}

/// Resident memory of this process divided by the nodes in it (Linux; None elsewhere).
pub(crate) fn memory_per_node_bytes(nodes: usize) -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident * 4096 / nodes.max(1) as u64)
}
