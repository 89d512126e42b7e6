//! The benchmark's phases, each measured on a running [`LocalCluster`]. With documents
//! on R of N nodes, every write goes to a replica of its document (as a placement-aware
//! client would send it) and each node is expected to see the writes to the documents it
//! replicates; documents are compared across their replicas only.

use std::hash::RandomState;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::ROOT;
use tokio::task::JoinSet;

use super::preload::Targets;
use super::{BenchError, BenchOptions, LatencyProbe};
use crate::local::{digests_match, partition_digests, LocalCluster};
use crate::node::Node;
use crate::topology::Topology;
use crate::wire::KINDS;

/// Writes in flight per node in the throughput phases (each waits for its fsync; under
/// load many share one commit).
const IN_FLIGHT: usize = 256;

/// Counts by message kind.
pub(crate) type ByKind = [u64; KINDS as usize];

/// Result of the throughput phase.
pub(crate) struct Throughput {
    pub(crate) seconds: f64,
    pub(crate) bytes: u64,
    /// Peer messages every node sent meanwhile, by kind (see [`crate::wire::KIND_NAMES`]).
    pub(crate) messages: ByKind,
    pub(crate) progress: Vec<(u64, usize, u64)>,
}

/// Result of the latency phase.
pub(crate) struct Latency {
    /// Every sample, µs, in order.
    pub(crate) samples: Vec<u64>,
    /// How many documents the probe wrote to.
    pub(crate) docs: usize,
}

/// Result of the idle phase.
pub(crate) struct Idle {
    /// Peer bytes sent per node per second.
    pub(crate) bytes_per_s: f64,
    /// Length of the window, seconds.
    pub(crate) window_s: f64,
}

/// Result of the catch-up phase.
pub(crate) struct Catchup {
    /// From the restart until the node had every missed write.
    pub(crate) seconds: f64,
    /// From the restart until the node served (`Node::start` returned, status answered).
    pub(crate) restart_s: f64,
    /// From the restart until the node had a connected peer.
    pub(crate) first_link_s: f64,
    /// The writes the node missed: those to documents it replicates.
    pub(crate) behind: u64,
}

/// Changes a node holds that it did not have at start-up: local, pushed and repaired.
async fn changes_seen(node: &Node) -> Result<u64, BenchError> {
    let s = node.status().await?;
    Ok(s.core.local_changes + s.core.remote_changes + s.core.repaired_changes)
}

/// Bytes written to the wire by every running node, and the messages they made by kind.
async fn wire_sent(cluster: &LocalCluster) -> Result<(u64, ByKind), BenchError> {
    let (mut bytes, mut messages) = (0, [0; KINDS as usize]);
    for node in cluster.live() {
        let totals = node.status().await?.transport.totals;
        bytes += totals.bytes_sent;
        for (m, n) in messages.iter_mut().zip(totals.sent_by_kind) {
            *m += n;
        }
    }
    Ok((bytes, messages))
}

/// Single writes at one node (writers rotating), each timed until every node shows it (with
/// a placement: every replica of the document, one each writer replicates).
pub(crate) async fn latency(
    cluster: &LocalCluster,
    opts: &BenchOptions,
    progress: &dyn Fn(String),
) -> Result<Latency, BenchError> {
    let nodes: Vec<Node> = cluster.live().cloned().collect();
    let mut probe = LatencyProbe::placed(nodes, cluster.topology(), "bench-latency").await?;
    let mut samples = Vec::with_capacity(opts.latency_samples);
    let mut last_report = Instant::now();
    for n in 0..opts.latency_samples {
        let Some(took) = probe.write(Duration::from_secs(10)).await? else {
            return Err(BenchError::Timeout(format!(
                "latency write {n} was not visible on every replica within 10 s"
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
    Ok(Latency {
        samples,
        docs: probe.docs().count(),
    })
}

/// Who writes what: write `j` goes to document `targets.doc(j)` at one of its replicas
/// that writes (is live), the `j % L`-th of those `L` in order of preference; with every
/// node replicating everything, writer `j % N` (writer `j % (N - 1)` with one down).
struct Plan {
    /// For each writer, the writes it issues, ascending.
    by_writer: Vec<Vec<usize>>,
    /// For each node of the topology, the writes to documents it replicates (it sees each
    /// once, written there or received).
    expected: Vec<u64>,
    /// Writes made (writes whose document has no writing replica are not made).
    made: usize,
}

impl Plan {
    /// Plans `writes` writes over `targets` from `writers` (node ids) under `topology`.
    fn new(topology: &Topology, writers: &[&str], targets: Targets, writes: usize) -> Plan {
        let nodes = topology.nodes();
        // Per document: its writing replicas (indices into `writers`) and all its replicas
        // (indices into `nodes`).
        let per_doc: Vec<(Vec<usize>, Vec<usize>)> = (0..targets.len().min(writes))
            .map(|k| {
                let replicas = topology.replicas_of(&targets.doc(k));
                let live = replicas
                    .iter()
                    .filter_map(|r| writers.iter().position(|w| w == r))
                    .collect();
                let all = replicas
                    .iter()
                    .filter_map(|r| nodes.iter().position(|n| n == r))
                    .collect();
                (live, all)
            })
            .collect();
        let mut plan = Plan {
            by_writer: vec![Vec::new(); writers.len()],
            expected: vec![0; nodes.len()],
            made: 0,
        };
        for j in 0..writes {
            let Some((live, all)) = per_doc.get(j % targets.len()) else {
                continue;
            };
            if live.is_empty() {
                continue;
            }
            plan.by_writer[live[j % live.len()]].push(j);
            for &i in all {
                plan.expected[i] += 1;
            }
            plan.made += 1;
        }
        plan
    }

    /// The expected count of node `id`.
    fn expected_of(&self, topology: &Topology, id: &str) -> u64 {
        topology
            .nodes()
            .iter()
            .position(|n| n == id)
            .map_or(0, |i| self.expected[i])
    }
}

/// Issues the planned single-op writes (`plan.by_writer[w]` from `writers[w]`) to the
/// `targets`, `IN_FLIGHT` at a time per node, optionally paced to `rate` writes/s overall
/// (each writer its share).
fn spawn_writers(
    writers: Vec<Node>,
    plan: &Plan,
    targets: Targets,
    rate: Option<u64>,
    tag: &'static str,
) -> JoinSet<Result<(), crate::node::Error>> {
    let mut set = JoinSet::new();
    let made = plan.made.max(1) as f64;
    for (node, mine) in writers.into_iter().zip(plan.by_writer.iter().cloned()) {
        if mine.is_empty() {
            continue;
        }
        let share = mine.len() as f64 / made;
        let per_writer_rate = rate.map(|r| (r as f64 * share).max(1.0));
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
                    let doc = targets.doc(j);
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

/// Time limit of a phase: 60 s, plus 5 ms per write, plus 1 ms per 100 documents (the
/// listings compared grow with them).
fn limit_for(opts: &BenchOptions) -> Duration {
    let docs = opts.docs.max(opts.preload) as u64;
    Duration::from_secs(60 + opts.writes as u64 / 200) + Duration::from_millis(docs / 100)
}

/// Compares the running replicas' listings (see [`LocalCluster::replica_digests`]) until
/// they agree, or fails once `limit` has passed since `start`. Each listing holds up its
/// node's event loop, so comparisons are spaced to leave the nodes most of their time.
/// Returns whether the first comparison agreed, how long the last one took, and the
/// digests (made under `state`) agreed on.
async fn wait_agree(
    cluster: &LocalCluster,
    state: &RandomState,
    start: Instant,
    limit: Duration,
) -> Result<(bool, Duration, Vec<Option<(usize, u64)>>), BenchError> {
    let mut first = true;
    loop {
        let began = Instant::now();
        let agreed = cluster.replica_digests(state).await?;
        let took = began.elapsed();
        if let Some(agreed) = agreed {
            return Ok((first, took, agreed));
        }
        if start.elapsed() > limit {
            return Err(BenchError::Timeout(format!(
                "replicas did not reach identical heads within {limit:?}"
            )));
        }
        first = false;
        tokio::time::sleep((took * 2).max(Duration::from_millis(2))).await;
    }
}

/// W single-op writes over D documents from every node (each at a replica of its
/// document), until every node has all the writes to the documents it replicates.
pub(crate) async fn throughput(
    cluster: &LocalCluster,
    opts: &BenchOptions,
    progress: &dyn Fn(String),
) -> Result<Throughput, BenchError> {
    let nodes: Vec<Node> = cluster.live().cloned().collect();
    let ids: Vec<&str> = nodes.iter().map(Node::id).collect();
    let targets = Targets::new(opts.docs, opts.preload);
    let plan = Plan::new(cluster.topology(), &ids, targets, opts.writes);
    let mut target = Vec::new();
    for node in &nodes {
        target.push(changes_seen(node).await? + plan.expected_of(cluster.topology(), node.id()));
    }
    let before = wire_sent(cluster).await?;
    progress(format!(
        "throughput: {} writes over {} {}docs from {} nodes",
        opts.writes,
        opts.docs,
        if targets.preloaded() {
            "preloaded "
        } else {
            ""
        },
        nodes.len()
    ));
    let limit = limit_for(opts);
    let start = Instant::now();
    let mut writers = spawn_writers(nodes.clone(), &plan, targets, opts.rate, "t");
    let samples = wait_counts(&nodes, &target, limit, "throughput", progress).await?;
    let counted = start.elapsed().as_secs_f64();
    // The counters say every node received W changes; the heads must agree too. The time
    // stops at the counts if the first comparison agrees (listing many documents takes a
    // while and is no part of the convergence), else when a later comparison has agreed.
    let (first, took, _) = wait_agree(cluster, &RandomState::new(), start, limit).await?;
    let seconds = if first {
        counted
    } else {
        start.elapsed().as_secs_f64()
    };
    progress(format!(
        "throughput: counts complete at {counted:.3} s, identical heads at {seconds:.3} s \
         (the last comparison of the listings took {} ms)",
        took.as_millis()
    ));
    while let Some(done) = writers.join_next().await {
        done.map_err(|_| crate::node::Error::Stopped)??;
    }
    let after = wire_sent(cluster).await?;
    Ok(Throughput {
        seconds,
        bytes: after.0.saturating_sub(before.0),
        messages: std::array::from_fn(|k| after.1[k].saturating_sub(before.1[k])),
        progress: samples,
    })
}

/// Converged and quiet: after 1 s to settle, the peer bytes every node sends over the
/// idle window, per node per second.
pub(crate) async fn idle(
    cluster: &LocalCluster,
    opts: &BenchOptions,
    progress: &dyn Fn(String),
) -> Result<Idle, BenchError> {
    let window = opts.idle_window();
    progress(format!(
        "idle: settling 1 s, then counting peer bytes for {:.1} s (anti-entropy every {} ms)",
        window.as_secs_f64(),
        opts.anti_entropy_ms
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = wire_sent(cluster).await?.0;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let bytes = wire_sent(cluster).await?.0.saturating_sub(before);
    let window_s = start.elapsed().as_secs_f64();
    let nodes = cluster.live().count().max(1);
    let bytes_per_s = bytes as f64 / nodes as f64 / window_s;
    progress(format!(
        "idle: {bytes} bytes sent by {nodes} nodes in {window_s:.1} s = {bytes_per_s:.0} B/s per node"
    ));
    Ok(Idle {
        bytes_per_s,
        window_s,
    })
}

/// The last node is stopped, W writes happen at the live replicas of their documents, the
/// node restarts and catches up on the writes to the documents it replicates.
pub(crate) async fn catchup(
    cluster: &mut LocalCluster,
    opts: &BenchOptions,
    progress: &dyn Fn(String),
) -> Result<Catchup, BenchError> {
    let victim = cluster.ids().len() - 1;
    let victim_id = cluster.ids()[victim].clone();
    progress(format!("catch-up: stopping {victim_id}"));
    cluster.stop_node(victim).await?;
    let nodes: Vec<Node> = cluster.live().cloned().collect();
    let ids: Vec<&str> = nodes.iter().map(Node::id).collect();
    let targets = Targets::new(opts.docs, opts.preload);
    let plan = Plan::new(cluster.topology(), &ids, targets, opts.writes);
    let behind = plan.expected_of(cluster.topology(), &victim_id);
    if plan.made < opts.writes {
        progress(format!(
            "catch-up: {} of {} writes not made: their documents' only replica is down",
            opts.writes - plan.made,
            opts.writes
        ));
    }
    let mut target = Vec::new();
    for node in &nodes {
        target.push(changes_seen(node).await? + plan.expected_of(cluster.topology(), node.id()));
    }
    let limit = limit_for(opts);
    let mut writers = spawn_writers(nodes.clone(), &plan, targets, opts.rate, "c");
    wait_counts(&nodes, &target, limit, "catch-up writes", progress).await?;
    while let Some(done) = writers.join_next().await {
        done.map_err(|_| crate::node::Error::Stopped)??;
    }
    // What the restarted node must end with: what the live replicas of its documents agree
    // on, once they agree (counts can be complete a moment before every change is applied).
    let state = RandomState::new();
    let (_, _, reference) = wait_agree(cluster, &state, Instant::now(), limit).await?;
    let topology = cluster.topology().clone();
    let mut served = Vec::new();
    for node in &nodes {
        served.push(node.status().await?.core.repair_changes_sent);
    }
    progress(format!(
        "catch-up: restarting {victim_id} ({behind} writes behind)"
    ));
    let start = Instant::now();
    let node = cluster.start_node(victim).await?.clone();
    let mut status = node.status().await?;
    let restart_s = start.elapsed().as_secs_f64();
    progress(format!(
        "catch-up: node serving again after {} ms (store opened, status answered)",
        (restart_s * 1000.0).round()
    ));
    let mut first_link_s = None;
    // The node's counters are polled every millisecond; its listing (which grows with the
    // documents) is compared once they show every missed write, or now and then should
    // they never do (a repair that counts changes differently): once the counters have not
    // moved for a second. The time stops at the counts if the first comparison after them
    // agrees, else at the start of the first comparison that agrees: a listing runs in the
    // node's event loop, so it reads the state the node had when it began. As each listing
    // holds the node up, none is made while the counters move, and failed ones are spaced
    // to leave the node most of its time.
    let mut counted = None::<f64>;
    let mut compared_since_counted = false;
    let mut last_seen = (0, Instant::now());
    let mut next_listing = Instant::now() + STALL;
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let (seconds, listing_took) = loop {
        if first_link_s.is_none() && status.peers.iter().any(|p| p.connected) {
            let at = start.elapsed().as_secs_f64();
            first_link_s = Some(at);
            progress(format!(
                "catch-up: first link up {} ms after the restart began",
                (at * 1000.0).round()
            ));
        }
        let seen =
            status.core.local_changes + status.core.remote_changes + status.core.repaired_changes;
        if Instant::now() >= next_report && counted.is_none() {
            next_report += Duration::from_secs(1);
            progress(format!(
                "catch-up: {seen} of {behind} changes after {:.1} s",
                start.elapsed().as_secs_f64()
            ));
        }
        if seen != last_seen.0 && counted.is_none() {
            last_seen = (seen, Instant::now());
            next_listing = next_listing.max(last_seen.1 + STALL);
        }
        if counted.is_none() && seen >= behind {
            let at = start.elapsed().as_secs_f64();
            counted = Some(at);
            next_listing = Instant::now();
            progress(format!(
                "catch-up: counters show every missed write after {} ms",
                (at * 1000.0).round()
            ));
        }
        if Instant::now() >= next_listing {
            let began = start.elapsed().as_secs_f64();
            let listed = Instant::now();
            let digests = partition_digests(&node, &topology, &state).await?;
            let same = digests_match(&topology, &victim_id, &digests, &reference);
            let took = listed.elapsed();
            if same {
                let at = match counted {
                    Some(c) if !compared_since_counted => c,
                    _ => began,
                };
                break (at, took);
            }
            compared_since_counted = counted.is_some();
            let pause = if counted.is_some() {
                (took * 2).max(Duration::from_millis(2))
            } else {
                (took * 4).max(Duration::from_millis(500))
            };
            next_listing = Instant::now() + pause;
        }
        if start.elapsed() > limit {
            return Err(BenchError::Timeout(format!(
                "catch-up: the restarted node did not catch up within {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        status = node.status().await?;
    };
    // Catching up needs a link: if none was seen between two polls, it was up by the end.
    let first_link_s = first_link_s.unwrap_or(seconds).max(restart_s);
    let core = node.status().await?.core;
    progress(format!(
        "catch-up: done in {seconds:.3} s (listing compared in {} ms): {} changes received, \
         {} sync sessions started, {} sync messages sent, {} changes repaired, {} duplicates",
        listing_took.as_millis(),
        core.remote_changes,
        core.repairs,
        core.sync_sent,
        core.repaired_changes,
        core.duplicates
    ));
    let mut by_peer = Vec::new();
    for (node, before) in nodes.iter().zip(served) {
        let sent = node.status().await?.core.repair_changes_sent;
        by_peer.push(format!("{} {}", node.id(), sent.saturating_sub(before)));
    }
    progress(format!(
        "catch-up: changes sent by bulk repair: {}",
        by_peer.join(", ")
    ));
    Ok(Catchup {
        seconds,
        restart_s,
        first_link_s,
        behind,
    })
}

/// The mean over the running nodes of the documents each stores (its status's `docs`),
/// as a fraction of `total`.
pub(crate) async fn stored_docs_per_node(
    cluster: &LocalCluster,
    total: usize,
) -> Result<f64, BenchError> {
    let mut fractions = Vec::new();
    for node in cluster.live() {
        fractions.push(node.status().await?.docs as f64 / total.max(1) as f64);
    }
    Ok(fractions.iter().sum::<f64>() / fractions.len().max(1) as f64)
}

/// How long the catch-up counters must stand still before the bench compares listings
/// without them.
const STALL: Duration = Duration::from_secs(1);

/// Resident memory of this process divided by the nodes in it (Linux; None elsewhere).
pub(crate) fn memory_per_node_bytes(nodes: usize) -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident * 4096 / nodes.max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopologyKind;
    use crate::local::node_ids;

    fn topology(n: usize, replicas: Option<usize>) -> Topology {
        Topology::new(TopologyKind::Mesh, node_ids(n), Vec::new())
            .with_replicas(replicas)
            .expect("placeable")
    }

    #[test]
    fn bench_plan_with_every_node_a_replica_is_round_robin() {
        let t = topology(4, None);
        let ids: Vec<&str> = t.nodes().iter().map(String::as_str).collect();
        let plan = Plan::new(&t, &ids, Targets::new(3, 0), 10);
        assert_eq!(
            plan.by_writer,
            [vec![0, 4, 8], vec![1, 5, 9], vec![2, 6], vec![3, 7]]
        );
        assert_eq!(plan.expected, [10; 4]);
        assert_eq!(plan.made, 10);
        // One node down: the others take turns, and every node (the stopped one too)
        // expects every write.
        let plan = Plan::new(&t, &ids[..3], Targets::new(3, 0), 10);
        assert_eq!(
            plan.by_writer,
            [vec![0, 3, 6, 9], vec![1, 4, 7], vec![2, 5, 8]]
        );
        assert_eq!(plan.expected, [10; 4]);
    }

    #[test]
    fn bench_plan_writes_each_document_at_its_replicas_only() {
        let t = topology(6, Some(2));
        let ids: Vec<&str> = t.nodes().iter().map(String::as_str).collect();
        let targets = Targets::new(300, 0);
        let plan = Plan::new(&t, &ids, targets, 3000);
        assert_eq!(plan.made, 3000);
        for (w, writes) in plan.by_writer.iter().enumerate() {
            for &j in writes {
                assert!(t.holds(ids[w], &targets.doc(j)), "write {j} at {}", ids[w]);
            }
            // About W / N each.
            assert!(
                (300..=700).contains(&writes.len()),
                "{}: {}",
                ids[w],
                writes.len()
            );
        }
        for (i, id) in ids.iter().enumerate() {
            let mine = (0..3000).filter(|&j| t.holds(id, &targets.doc(j))).count();
            assert_eq!(plan.expected[i], mine as u64);
            assert_eq!(plan.expected_of(&t, id), mine as u64);
        }
        assert_eq!(plan.expected.iter().sum::<u64>(), 3000 * 2);
    }

    #[test]
    fn bench_plan_skips_documents_whose_only_replica_is_down() {
        let t = topology(3, Some(1));
        let ids: Vec<&str> = t.nodes().iter().map(String::as_str).collect();
        let targets = Targets::new(30, 0);
        let plan = Plan::new(&t, &ids[..2], targets, 60);
        let on_n3 = (0..60).filter(|&j| t.holds("n3", &targets.doc(j))).count();
        assert!(on_n3 > 0, "n3 replicates some of 30 documents");
        assert_eq!(plan.made, 60 - on_n3);
        assert_eq!(
            plan.expected_of(&t, "n3"),
            0,
            "n3 misses nothing that was written"
        );
        assert_eq!(
            plan.by_writer.iter().map(Vec::len).sum::<usize>(),
            plan.made
        );
    }
}
