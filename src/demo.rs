//! `concordant demo`: a five-node ring on this machine, over real QUIC with mutual TLS and
//! real storage in a temporary directory, showing concurrent writes on every node, a node
//! stopped, writes going on without it while the ring heals around it, the node restarted
//! and catching up, and every replica converged. Everything it prints is measured.

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ChangeHash, ObjType, ReadDoc, ROOT};

use crate::config::{RingDirection, TopologyKind, Tuning};
use crate::local::{LocalCluster, LocalError};
use crate::node::Node;

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Setting up failed (temporary directory, certificates).
    #[error("demo set-up failed: {0}")]
    Setup(String),
    /// A node failed.
    #[error(transparent)]
    Node(#[from] crate::node::Error),
    /// The local cluster failed.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// Replicas did not converge in time.
    #[error("replicas did not converge within {0:?}")]
    NoConvergence(Duration),
}

const NODES: usize = 5;
const WRITES_PER_NODE: usize = 200;
const DOC: &str = "demo";

/// The demo's view of a [`LocalCluster`]: the demo document on every node.
struct Cluster {
    local: LocalCluster,
}

impl Cluster {
    fn live(&self) -> impl Iterator<Item = &Node> {
        self.local.live()
    }

    /// Heads of the demo document on every live node.
    async fn heads(&self) -> Result<Vec<Vec<ChangeHash>>, DemoError> {
        let mut all = Vec::new();
        for node in self.live() {
            all.push(
                node.with_doc(DOC, |d| d.get_heads())
                    .await?
                    .unwrap_or_default(),
            );
        }
        Ok(all)
    }

    async fn wait_converged(&self, limit: Duration) -> Result<Duration, DemoError> {
        self.local
            .wait_converged(limit)
            .await?
            .ok_or(DemoError::NoConvergence(limit))
    }

    async fn items(&self, node: &Node) -> Result<usize, DemoError> {
        Ok(node
            .with_doc(DOC, |d| {
                d.get(ROOT, "log")
                    .ok()
                    .flatten()
                    .map(|(_, id)| d.length(&id))
                    .unwrap_or(0)
            })
            .await?
            .unwrap_or(0))
    }
}

/// Writes `count` entries at node `i`: appends to a shared list and bumps a counter.
async fn write_burst(node: Node, id: String, count: usize) -> Result<(), DemoError> {
    for n in 0..count {
        let entry = format!("{id}#{n}");
        node.change(DOC, move |tx| {
            let Some((_, log)) = tx.get(ROOT, "log")? else {
                return Err(automerge::AutomergeError::InvalidObjId("log".into()));
            };
            let len = tx.length(&log);
            tx.insert(&log, len, entry)?;
            tx.increment(ROOT, "writes", 1)?;
            Ok(())
        })
        .await?;
    }
    Ok(())
}

async fn burst_all(cluster: &Cluster, count: usize) -> Result<Duration, DemoError> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, id) in cluster.local.ids().iter().enumerate() {
        if let Some(node) = cluster.local.node(i) {
            tasks.push(tokio::spawn(write_burst(node.clone(), id.clone(), count)));
        }
    }
    for t in tasks {
        t.await.map_err(|e| DemoError::Setup(e.to_string()))??;
    }
    Ok(start.elapsed())
}

/// Runs the demo, printing as it goes. Returns whether every replica ended identical.
pub async fn run() -> Result<bool, DemoError> {
    let tuning = Tuning {
        anti_entropy_ms: 1_000,
        ..Tuning::default()
    };
    let local = LocalCluster::start(
        "demo",
        NODES,
        TopologyKind::Ring(RingDirection::Both),
        Vec::new(),
        None,
        tuning,
    )
    .await?;
    let cluster = Cluster { local };
    println!("concordant demo: {NODES} nodes in a ring (n1-n2-n3-n4-n5-n1), QUIC + mutual TLS on 127.0.0.1,");
    println!(
        "durable storage (redb, fsync) in {}",
        cluster.local.dir().display()
    );
    let start = Instant::now();
    if cluster.local.wait_linked(Duration::from_secs(10)).await? {
        println!(
            "   all {NODES} nodes linked in {} ms",
            start.elapsed().as_millis()
        );
    } else {
        println!("   (not every link came up within 10 s)");
    }
    let mut cluster = cluster;

    // One node creates the shared list and counter; concurrent creation of the same key
    // on several nodes would be a conflict with one winner.
    if let Some(n1) = cluster.local.node(0) {
        n1.change(DOC, |tx| {
            tx.put_object(ROOT, "log", ObjType::List)?;
            tx.put(ROOT, "writes", automerge::ScalarValue::counter(0))?;
            Ok::<_, automerge::AutomergeError>(())
        })
        .await?;
    }
    cluster.wait_converged(Duration::from_secs(10)).await?;

    println!(
        "\n1. every node writes {WRITES_PER_NODE} entries to document {DOC:?} at the same time"
    );
    let took = burst_all(&cluster, WRITES_PER_NODE).await?;
    let conv = cluster.wait_converged(Duration::from_secs(30)).await?;
    report(&cluster, took, conv).await?;

    let victim = 2;
    println!("\n2. stopping n3 (its neighbours n2 and n4 lose their link)");
    cluster.local.stop_node(victim).await?;
    wait_healed(&cluster, Duration::from_secs(10)).await?;

    println!("\n3. the other four keep writing: {WRITES_PER_NODE} entries each");
    let took = burst_all(&cluster, WRITES_PER_NODE).await?;
    let conv = cluster.wait_converged(Duration::from_secs(30)).await?;
    report(&cluster, took, conv).await?;

    println!("\n4. restarting n3 from its data directory");
    let restart = Instant::now();
    let node = cluster.local.start_node(victim).await?.clone();
    println!(
        "   n3 reloaded {} entries from disk; catching up...",
        cluster.items(&node).await?
    );
    let conv = cluster.wait_converged(Duration::from_secs(30)).await?;
    println!(
        "   caught up {:.0} ms after the restart began ({} ms after the node was running)",
        restart.elapsed().as_secs_f64() * 1000.0,
        conv.as_millis()
    );

    println!("\n5. final state");
    let ok = final_check(&cluster).await?;
    cluster.local.shutdown().await?;
    Ok(ok)
}

async fn report(cluster: &Cluster, took: Duration, conv: Duration) -> Result<(), DemoError> {
    let mut counts = Vec::new();
    for (i, id) in cluster.local.ids().iter().enumerate() {
        if let Some(node) = cluster.local.node(i) {
            counts.push(format!("{id}={}", cluster.items(node).await?));
        }
    }
    println!(
        "   writes done in {} ms; all live replicas identical {} ms later; entries: {}",
        took.as_millis(),
        conv.as_millis(),
        counts.join(" ")
    );
    Ok(())
}

async fn wait_healed(cluster: &Cluster, limit: Duration) -> Result<(), DemoError> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let mut healed = true;
        let mut bridge = false;
        for node in cluster.live() {
            let s = node.status().await?;
            let up: Vec<&str> = s
                .peers
                .iter()
                .filter(|p| p.linked && p.connected)
                .map(|p| p.id.as_str())
                .collect();
            healed &= up.len() >= 2;
            bridge |= s.node == "n2" && up.contains(&"n4");
        }
        if healed && bridge {
            println!(
                "   ring healed in {} ms: n2 and n4 now link directly",
                start.elapsed().as_millis()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("   (ring did not heal within {limit:?})");
    Ok(())
}

async fn final_check(cluster: &Cluster) -> Result<bool, DemoError> {
    let heads = cluster.heads().await?;
    let mut jsons = Vec::new();
    for node in cluster.live() {
        jsons.push(node.json(DOC).await?.unwrap_or_default());
    }
    let expected = WRITES_PER_NODE * NODES + WRITES_PER_NODE * (NODES - 1);
    let mut ok = heads.windows(2).all(|w| w[0] == w[1]) && jsons.windows(2).all(|w| w[0] == w[1]);
    for (i, id) in cluster.local.ids().iter().enumerate() {
        let Some(node) = cluster.local.node(i) else {
            continue;
        };
        let items = cluster.items(node).await?;
        let writes = node
            .with_doc(DOC, |d| match d.get(ROOT, "writes") {
                Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
                    automerge::ScalarValue::Counter(c) => i64::from(c),
                    _ => -1,
                },
                _ => -1,
            })
            .await?
            .unwrap_or(-1);
        let head = heads[i]
            .iter()
            .map(|h| hex::encode(&h.0[..4]))
            .collect::<Vec<_>>()
            .join(",");
        println!("   {id}: {items} entries, counter {writes}, heads [{head}]");
        ok &= items == expected && writes == expected as i64;
    }
    if ok {
        println!("\nconverged: all {NODES} replicas have identical heads and identical JSON ({expected} entries each)");
    } else {
        println!("\nNOT converged: replicas differ (expected {expected} entries each)");
    }
    Ok(ok)
}
