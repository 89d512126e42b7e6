//! Documents on demand over real QUIC and redb: a 3-node mesh whose nodes keep only a few
//! documents in memory converges over thousands of documents, through a node's restart
//! (bulk repair of what it missed), and its memory stays within the cache budget.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::ROOT;
use concordant::config::{TopologyKind, Tuning};
use concordant::local::LocalCluster;
use concordant::node::Node;
use tokio::task::JoinSet;

const CACHE_DOCS: usize = 8;
const LIMIT: Duration = Duration::from_secs(60);

/// Every node writes `per_node` single-op changes to documents `doc-{first + i * n + k}`.
async fn write_spread(nodes: &[Node], first: usize, per_node: usize, value: i64) {
    let n = nodes.len();
    let mut set = JoinSet::new();
    for (k, node) in nodes.iter().cloned().enumerate() {
        set.spawn(async move {
            for i in 0..per_node {
                let doc = format!("doc-{}", first + i * n + k);
                node.change(&doc, move |tx| tx.put(ROOT, "v", value))
                    .await
                    .expect("write");
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("writer task");
    }
}

/// Waits until every node of the cluster keeps at most the cache budget in memory.
async fn wait_within_budget(nodes: &[Node]) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let mut loaded = Vec::new();
        for node in nodes {
            loaded.push(node.status().await.expect("status").docs_loaded);
        }
        if loaded.iter().all(|&l| l <= CACHE_DOCS) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "documents in memory stay above the budget of {CACHE_DOCS}: {loaded:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_cache_mesh_converges_over_thousands_of_documents_through_a_restart() {
    let tuning = Tuning {
        cache_docs: CACHE_DOCS,
        anti_entropy_ms: 500,
        ..Tuning::default()
    };
    let mut cluster = LocalCluster::start("scale", 3, TopologyKind::Mesh, Vec::new(), None, tuning)
        .await
        .expect("cluster starts");
    assert!(cluster.wait_linked(LIMIT).await.expect("status"));
    let nodes: Vec<Node> = cluster.live().cloned().collect();
    write_spread(&nodes, 0, 500, 1).await;
    assert!(
        cluster
            .wait_converged(LIMIT)
            .await
            .expect("listing")
            .is_some(),
        "1,500 documents did not converge"
    );
    for node in &nodes {
        let s = node.status().await.expect("status");
        assert_eq!(s.docs, 1500, "{}", s.node);
        assert!(s.core.doc_evictions > 0, "{} never evicted", s.node);
    }
    wait_within_budget(&nodes).await;

    // n3 stops; the others rewrite documents it has and create new ones.
    cluster.stop_node(2).await.expect("stop n3");
    let live: Vec<Node> = cluster.live().cloned().collect();
    write_spread(&live, 0, 400, 2).await;
    write_spread(&live, 1500, 250, 3).await;
    let restarted = cluster.start_node(2).await.expect("restart n3").clone();
    assert!(
        cluster
            .wait_converged(LIMIT)
            .await
            .expect("listing")
            .is_some(),
        "the restarted node did not catch up"
    );
    let s = restarted.status().await.expect("status");
    assert_eq!(s.docs, 2000);
    assert!(s.core.wants_sent > 0, "caught up by bulk repair");
    // Values, read through the cache (most documents are on disk only).
    for (doc, value) in [
        ("doc-0", 2),
        ("doc-799", 2),
        ("doc-1200", 1),
        ("doc-1999", 3),
    ] {
        let json = restarted.json(doc).await.expect("read").expect("has it");
        assert_eq!(json["v"], value, "{doc}");
    }
    let all: Vec<Node> = cluster.live().cloned().collect();
    wait_within_budget(&all).await;
    cluster.shutdown().await.expect("shutdown");
}
