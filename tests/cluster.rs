//! Integration tests of whole clusters over real QUIC with mutual TLS on 127.0.0.1 and
//! durable storage: convergence after concurrent writes (mesh, ring, forward ring), ring
//! failover with one and two nodes down and catch-up on restart, write concerns, refusal of
//! foreign nodes, and durability across a restart.

mod common;

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use common::{
    check_content, create_shared, identity_for, ops, ops_with, write_everywhere, Expected,
    TestCluster, CLUSTER, CONVERGE_TIMEOUT, DOC, LINK_TIMEOUT,
};
use concordant::certs::{generate_ca, TlsIdentity};
use concordant::config::{RingDirection, TopologyKind};
use concordant::node::{Ack, Node, NodeBuilder};
use concordant::storage::{RedbStore, Store};
use concordant::Error;
use serde_json::json;

const RING: TopologyKind = TopologyKind::Ring(RingDirection::Both);
const RING_FORWARD: TopologyKind = TopologyKind::Ring(RingDirection::Forward);

/// Starts `n` nodes, creates the shared doc, has every node write concurrently, and checks
/// every replica ends identical with exactly the expected content.
async fn concurrent_writes_converge(n: usize, kind: TopologyKind) {
    let cluster = TestCluster::start(n, kind).await;
    create_shared(&cluster.node(0)).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    let mut expected = Expected::default();
    write_everywhere(&cluster, "a", 8, &mut expected).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    check_content(&cluster, &expected).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_of_three_converges_after_concurrent_writes() {
    concurrent_writes_converge(3, TopologyKind::Mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_five_converges_after_concurrent_writes() {
    concurrent_writes_converge(5, RING).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_ring_of_five_converges_after_concurrent_writes() {
    concurrent_writes_converge(5, RING_FORWARD).await;
}

/// Every node of a ring in turn: stopped, the other four keep writing and converging,
/// restarted on the same port from the same data dir, it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_survives_each_node_stopping_and_catches_it_up() {
    let mut cluster = TestCluster::start(5, RING).await;
    create_shared(&cluster.node(0)).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    let mut expected = Expected::default();
    for victim in 0..cluster.len() {
        cluster.stop_node(victim).await;
        write_everywhere(&cluster, &format!("without-{victim}"), 2, &mut expected).await;
        cluster.wait_converged(CONVERGE_TIMEOUT).await;
        check_content(&cluster, &expected).await;

        cluster.start_node(victim).await;
        cluster.wait_converged(CONVERGE_TIMEOUT).await;
        check_content(&cluster, &expected).await;
        // The original ring links come back.
        cluster.wait_linked(LINK_TIMEOUT).await;
    }
    cluster.shutdown().await;
}

/// Two non-adjacent nodes of a ring down at once: the other three still converge; both
/// restarted, all five converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_survives_two_non_adjacent_nodes_down() {
    let mut cluster = TestCluster::start(5, RING).await;
    create_shared(&cluster.node(0)).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    let mut expected = Expected::default();
    write_everywhere(&cluster, "all", 2, &mut expected).await;

    cluster.stop_node(1).await;
    cluster.stop_node(3).await;
    write_everywhere(&cluster, "three", 3, &mut expected).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    check_content(&cluster, &expected).await;
    // n1, n3 and n5 heal into a triangle around n2 and n4.
    cluster.wait_linked(LINK_TIMEOUT).await;

    cluster.start_node(1).await;
    cluster.start_node(3).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    check_content(&cluster, &expected).await;
    write_everywhere(&cluster, "back", 1, &mut expected).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    check_content(&cluster, &expected).await;
    cluster.wait_linked(LINK_TIMEOUT).await;
    cluster.shutdown().await;
}

/// Whether `node` has every change of `heads` (as of now).
async fn has_changes(node: &Node, doc: &str, heads: &[automerge::ChangeHash]) -> bool {
    let heads = heads.to_vec();
    node.with_doc(doc, move |d| {
        heads.iter().all(|h| d.get_change_by_hash(h).is_some())
    })
    .await
    .expect("with_doc")
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_concerns_in_a_mesh_of_three() {
    let mut cluster = TestCluster::start(3, TopologyKind::Mesh).await;
    let n1 = cluster.node(0);

    // Ack::All: both peers acknowledge, and already hold the change when we are answered.
    let written = ops_with(
        &n1,
        "wc",
        json!([{"op": "set", "path": ["first"], "value": 1}]),
        Ack::All,
        Duration::from_secs(10),
    )
    .await
    .expect("Ack::All with every node up");
    assert_eq!(written.acked_by, vec!["n2".to_string(), "n3".to_string()]);
    for i in [1, 2] {
        let node = cluster.node(i);
        assert!(
            has_changes(&node, "wc", &written.heads).await,
            "{} acknowledged a change it does not have",
            node.id()
        );
        assert_eq!(
            node.json("wc").await.expect("json"),
            Some(json!({"first": 1}))
        );
    }

    // One node down: Ack::All times out naming the one peer that acknowledged.
    cluster.stop_node(2).await;
    let timeout = Duration::from_millis(800);
    let started = Instant::now();
    let result = n1
        .change_with("wc", Ack::All, timeout, |tx| tx.put(ROOT, "second", 2))
        .await;
    let took = started.elapsed();
    let heads = match result {
        Err(Error::AckTimeout { heads, acked_by }) => {
            assert_eq!(acked_by, vec!["n2".to_string()]);
            heads
        }
        other => panic!("expected AckTimeout, got {:?}", other.map(|w| w.acked_by)),
    };
    assert!(
        took >= timeout,
        "answered after {took:?}, before the timeout"
    );
    assert!(
        took < timeout + Duration::from_secs(3),
        "answered only after {took:?}"
    );
    assert!(
        has_changes(&n1, "wc", &heads).await,
        "the write is kept locally"
    );
    assert_eq!(
        n1.json("wc").await.expect("json"),
        Some(json!({"first": 1, "second": 2}))
    );

    // Ack::Peers(1) is met by the remaining peer.
    let written = ops_with(
        &n1,
        "wc",
        json!([{"op": "set", "path": ["third"], "value": 3}]),
        Ack::Peers(1),
        Duration::from_secs(10),
    )
    .await
    .expect("Ack::Peers(1) with one node down");
    assert_eq!(written.acked_by, vec!["n2".to_string()]);
    assert!(has_changes(&cluster.node(1), "wc", &written.heads).await);

    // The stopped node gets the timed-out write when it is back.
    cluster.start_node(2).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    let n3 = cluster.node(2);
    assert!(has_changes(&n3, "wc", &heads).await);
    assert_eq!(
        n3.json("wc").await.expect("json"),
        Some(json!({"first": 1, "second": 2, "third": 3}))
    );
    cluster.shutdown().await;
}

/// Runs an intruder claiming to be `n3` (its cluster id and TLS identity made by `make`
/// from the real cluster) next to `n1` and `n2` of a three-node mesh whose real `n3` never starts, for
/// a while, both sides dialing each other: it must never show as connected on either side
/// and never get a document, while `n1` and `n2` replicate normally. Returns the refusal
/// counters summed over the three nodes.
async fn intruder_is_refused(
    make: impl FnOnce(&TestCluster) -> (String, TlsIdentity),
) -> concordant::transport::RejectedStats {
    let mut cluster = TestCluster::new(3, TopologyKind::Mesh);
    cluster.start_node(0).await;
    cluster.start_node(1).await;
    let (intruder_cluster, identity) = make(&cluster);
    let intruder = NodeBuilder::new("n3", &intruder_cluster, identity)
        .topology(cluster.topology.clone())
        .tuning(cluster.tuning.clone())
        .start()
        .await
        .expect("intruder starts");
    for i in [0, 1] {
        let node = cluster.node(i);
        node.set_peer_addr("n3", intruder.peer_addr())
            .await
            .expect("set addr");
        intruder
            .set_peer_addr(&cluster.ids[i], node.peer_addr())
            .await
            .expect("set addr");
    }
    ops(
        &cluster.node(0),
        "secret",
        json!([{"op": "set", "path": ["k"], "value": 1}]),
    )
    .await;

    // Watch for a while: several dial rounds in both directions, writes going on.
    let watch = Instant::now();
    let mut writes = 0;
    while watch.elapsed() < Duration::from_millis(2000) {
        for i in [0, 1] {
            let status = cluster.node(i).status().await.expect("status");
            let n3 = status
                .peers
                .iter()
                .find(|p| p.id == "n3")
                .expect("n3 listed");
            assert!(
                !n3.connected,
                "{} shows the intruder connected",
                status.node
            );
        }
        let status = intruder.status().await.expect("status");
        assert!(
            status.peers.iter().all(|p| !p.connected),
            "the intruder is connected: {:?}",
            status.peers
        );
        assert!(
            intruder.docs().await.expect("docs").is_empty(),
            "the intruder received a document"
        );
        writes += 1;
        let n2 = cluster.node(1);
        ops(
            &n2,
            "secret",
            json!([{"op": "set", "path": ["n2"], "value": writes}]),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    assert_eq!(
        cluster.node(0).json("secret").await.expect("json"),
        Some(json!({"k": 1, "n2": writes}))
    );
    assert!(intruder.docs().await.expect("docs").is_empty());

    let mut total = concordant::transport::RejectedStats::default();
    let mut nodes = vec![intruder.clone()];
    nodes.extend(cluster.live().into_iter().map(|(_, n)| n));
    for node in nodes {
        let r = node.status().await.expect("status").transport.rejected;
        total.wrong_cluster += r.wrong_cluster;
        total.tls += r.tls;
        total.cert_mismatch += r.cert_mismatch;
        total.unknown_node += r.unknown_node;
        total.bad_hello += r.bad_hello;
    }
    intruder.shutdown().await.expect("shutdown");
    cluster.shutdown().await;
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_of_another_cluster_cannot_join() {
    // A certificate from the cluster's own CA for a node of the topology, but another
    // cluster id.
    let rejected = intruder_is_refused(|cluster| {
        (
            "another-cluster".to_string(),
            identity_for(&cluster.ca, "n3"),
        )
    })
    .await;
    assert!(
        rejected.wrong_cluster > 0,
        "no wrong-cluster refusal counted: {rejected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_a_certificate_from_another_ca_cannot_join() {
    // The right cluster id and node id, but a certificate from another CA.
    let rejected = intruder_is_refused(|_| {
        let foreign_ca = generate_ca(CLUSTER).expect("foreign CA");
        (CLUSTER.to_string(), identity_for(&foreign_ca, "n3"))
    })
    .await;
    assert!(rejected.tls > 0, "no TLS refusal counted: {rejected:?}");
}

/// Write at every node, stop them all, restart one alone (its peers stay down): it has
/// every document, with the same heads and content, from its data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_data() {
    let mut cluster = TestCluster::start(3, TopologyKind::Mesh).await;
    create_shared(&cluster.node(0)).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    let mut expected = Expected::default();
    write_everywhere(&cluster, "durable", 3, &mut expected).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    let before = cluster.node(0).docs().await.expect("docs");
    let json_before = cluster.node(0).json(DOC).await.expect("json");
    cluster.stop_all().await;

    // A graceful stop compacts long logs, so the restart loads a snapshot.
    {
        let mut store = RedbStore::open(&cluster.data_dir(0)).expect("store");
        let stored = store.load_all().expect("load");
        let shared = stored.iter().find(|d| d.id == DOC).expect("shared doc");
        assert!(
            shared.snapshot.is_some() && shared.changes.is_empty(),
            "log of {} changes left after a graceful stop",
            shared.changes.len()
        );
    }

    let n1 = cluster.start_node(0).await;
    assert_eq!(
        n1.docs().await.expect("docs"),
        before,
        "heads after restart"
    );
    assert_eq!(n1.json(DOC).await.expect("json"), json_before);
    check_content(&cluster, &expected).await;
    let status = n1.status().await.expect("status");
    assert!(
        status.peers.iter().all(|p| !p.connected),
        "peers are stopped"
    );

    // It still accepts writes alone, and keeps them across another restart.
    let written = ops(
        &n1,
        DOC,
        json!([{"op": "inc", "path": ["count"], "by": 10}]),
    )
    .await;
    cluster.stop_node(0).await;
    let n1 = cluster.start_node(0).await;
    let docs = n1.docs().await.expect("docs");
    let heads = docs
        .iter()
        .find(|(d, _)| d == DOC)
        .map(|(_, h)| h.clone())
        .expect("shared doc");
    assert_eq!(heads, written.heads);
    let json = n1.json(DOC).await.expect("json").expect("shared doc");
    assert_eq!(json["count"], json!(expected.items.len() + 10));
    cluster.shutdown().await;
}

/// `Node::shutdown` releases the node's UDP port and its store before it returns, so the
/// node can be started again at once on the same address from the same data dir (this
/// is how an embedding application restarts a node). The ring is first taken through a
/// stop and restart of n1, after which n2's endpoint has handshakes in flight when it
/// shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restarts_at_once_after_shutdown() {
    let mut cluster = TestCluster::start(5, RING).await;
    create_shared(&cluster.node(0)).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    for victim in [0, 1, 2] {
        cluster.stop_node(victim).await;
        if let Err(e) = cluster.try_start_node(victim).await {
            panic!(
                "{} could not restart right after shutdown: {e}",
                cluster.ids[victim]
            );
        }
        cluster.wait_converged(CONVERGE_TIMEOUT).await;
        cluster.wait_linked(LINK_TIMEOUT).await;
    }
    cluster.shutdown().await;
}

/// The core is woken when it asks, not on a fixed tick: a lone idle node with nothing timed
/// never wakes for a timeout, and a linked idle pair wakes about once per anti-entropy period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_nodes_wake_only_for_the_timers_they_ask_for() {
    let mut lone = TestCluster::new(1, TopologyKind::Mesh);
    let node = lone.start_node(0).await;
    node.change("d", |tx| tx.put(ROOT, "k", 1)).await.unwrap();
    // After a write the write rate of the cluster view is taken once a second until it is
    // 0 again (two wake-ups); then nothing is timed.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let before = node.status().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after = node.status().await.unwrap();
    assert_eq!(
        after.timer_wakeups, before.timer_wakeups,
        "a node with nothing timed sleeps until its next input"
    );
    lone.shutdown().await;

    let pair = TestCluster::start(2, TopologyKind::Mesh).await;
    let period = common::test_tuning().anti_entropy_ms;
    pair.node(0)
        .change("d", |tx| tx.put(ROOT, "k", 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = pair.node(0).status().await.unwrap();
    let window = Duration::from_millis(10 * period);
    tokio::time::sleep(window).await;
    let after = pair.node(0).status().await.unwrap();
    let woken = after.timer_wakeups - before.timer_wakeups;
    // n1 opens the reconciliations: one timeout per period (a fixed 50 ms tick would be
    // 60 over this window), with room for a receipt or two.
    assert!(
        (5..=16).contains(&woken),
        "{woken} timer wake-ups in {window:?}"
    );
    pair.shutdown().await;
}
