//! Heavy work never holds a node's event loop (issue 26): while one large change or merge
//! is applied at a node (a text op of ~99,000 characters; Automerge data of three such
//! changes; a long read of a document over 1 MiB), the node keeps answering its status
//! (what `/v1/health` asks), takes small writes to, and reads of, other documents, and
//! takes a peer's changes; the peer, which applies the large change too, keeps writing
//! and sending. Two in-process nodes on 127.0.0.1. (The core's side is tested in
//! `core::tests::lend`.)
//!
//! How it is checked: probes run in a loop from just after the heavy request is sent until
//! it is answered. Without the heavy work off the event loop, the first probe waits for the
//! whole apply and is answered with it, and a probe takes several round trips to the node,
//! so at most one completes after the request reached the node; with it, probes complete
//! all along. The tests take turns ([`TURN`]): the heavy work of one must not starve the
//! probes of another on a machine of two cores.

mod common;

use std::time::{Duration, Instant};

use common::{ops, TestCluster, LINK_TIMEOUT};
use concordant::config::TopologyKind;
use concordant::node::Node;
use serde_json::json;

/// Bound on any wait in these tests.
const LIMIT: Duration = Duration::from_secs(120);

/// A status, a small write to another document and a read of it, and a change written
/// at the peer (if any) seen here: what must go on during heavy work.
async fn probe(here: &Node, peer: Option<&Node>, i: u64) {
    here.status().await.expect("status");
    ops(
        here,
        "light",
        json!([{"op": "set", "path": ["i"], "value": i}]),
    )
    .await;
    let seen = here.json("light").await.expect("read").unwrap();
    assert_eq!(seen["i"].as_u64(), Some(i));
    let Some(peer) = peer else {
        return;
    };
    ops(
        peer,
        "from-peer",
        json!([{"op": "set", "path": ["i"], "value": i}]),
    )
    .await;
    let deadline = Instant::now() + LIMIT;
    loop {
        let doc = here.json("from-peer").await.expect("read");
        if doc.and_then(|d| d["i"].as_u64()) == Some(i) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the peer's write {i} never arrived"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs `heavy` at node 0 while probing; returns (its duration, probe completion times
/// since it started).
async fn probe_during<F>(cluster: &TestCluster, heavy: F) -> (Duration, Vec<Duration>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let here = cluster.node(0);
    let peer = (cluster.len() > 1).then(|| cluster.node(1));
    let started = Instant::now();
    let mut heavy = tokio::spawn(heavy);
    let mut done = Vec::new();
    let mut i = 0;
    loop {
        tokio::select! {
            finished = &mut heavy => {
                finished.expect("the heavy request");
                return (started.elapsed(), done);
            }
            () = probe(&here, peer.as_ref(), i) => {
                done.push(started.elapsed());
                i += 1;
            }
        }
        assert!(started.elapsed() < LIMIT, "the heavy request never ended");
    }
}

/// The probes answered while the heavy request was at the node: after its first 50 ms
/// (which it may spend before reaching the node's event loop) and before its answer.
fn during(done: &[Duration]) -> usize {
    done.iter()
        .filter(|t| **t > Duration::from_millis(50))
        .count()
}

/// Prints what the probes saw and asserts that several were answered while the heavy work
/// went on (with the work on the event loop, at most one is).
fn assert_served(what: &str, total: Duration, done: &[Duration]) {
    let during = during(done);
    println!(
        "{what}: {total:?}; {} probes done, {during} after its first 50 ms: {done:?}",
        done.len()
    );
    assert!(
        during >= 3,
        "fewer than 3 probes were answered during the {what} ({total:?}): {done:?}"
    );
}

/// Held by each test for its whole run: one at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn linked_pair() -> TestCluster {
    let cluster = TestCluster::start(2, TopologyKind::Mesh).await;
    cluster.wait_linked(LINK_TIMEOUT).await;
    cluster
}

const CHARS: usize = 99_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_text_op_is_applied_while_the_node_serves_everything_else() {
    let _turn = TURN.lock().await;
    let cluster = linked_pair().await;
    let node = cluster.node(0);
    let text = "abcdefghij".repeat(CHARS / 10);
    let request = concordant::ops::parse_write_request(
        &serde_json::to_vec(&json!({"ops": [{"op": "text", "path": ["t"], "value": text}]}))
            .unwrap(),
    )
    .unwrap();
    let writer = node.clone();
    let (total, done) = probe_during(&cluster, async move {
        writer
            .apply_ops("heavy", request)
            .await
            .expect("the heavy write");
    })
    .await;
    assert_served("heavy text op", total, &done);
    let doc = node.json("heavy").await.unwrap().unwrap();
    assert_eq!(doc["t"].as_str().map(str::len), Some(CHARS));
    cluster.wait_converged(LIMIT).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_merge_is_applied_while_the_node_serves_everything_else() {
    let _turn = TURN.lock().await;
    use automerge::transaction::Transactable;
    use automerge::ReadDoc;
    let cluster = linked_pair().await;
    let node = cluster.node(0);
    // Several changes, each as large as one text op above.
    let mut outside = automerge::AutoCommit::new();
    let t = outside
        .put_object(automerge::ROOT, "t", automerge::ObjType::Text)
        .unwrap();
    let chunk = "klmnopqrst".repeat(CHARS / 10);
    for _ in 0..3 {
        let end = outside.length(&t);
        outside.splice_text(&t, end, 0, &chunk).unwrap();
        outside.commit();
    }
    let data = outside.save();
    let merger = node.clone();
    let (total, done) = probe_during(&cluster, async move {
        assert_eq!(merger.merge("merged", data).await.expect("the merge"), 3);
    })
    .await;
    assert_served("heavy merge", total, &done);
    let doc = node.json("merged").await.unwrap().unwrap();
    assert_eq!(doc["t"].as_str().map(str::len), Some(3 * CHARS));
    cluster.wait_converged(LIMIT).await;
    cluster.shutdown().await;
}

/// Merges a document over 1 MiB in memory (two strings of 600,000 bytes) into `doc`: reads
/// of it are heavy work.
async fn merge_large_doc(node: &Node, doc: &str) {
    use automerge::transaction::Transactable;
    let mut outside = automerge::AutoCommit::new();
    outside
        .put(automerge::ROOT, "a", "x".repeat(600_000))
        .unwrap();
    outside
        .put(automerge::ROOT, "b", "y".repeat(600_000))
        .unwrap();
    node.merge(doc, outside.save()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_read_of_a_large_document_runs_while_the_node_serves_everything_else() {
    let _turn = TURN.lock().await;
    let cluster = TestCluster::start(1, TopologyKind::Mesh).await;
    let node = cluster.node(0);
    // A document over 1 MiB, read by a closure that takes 300 ms (an embedding app's
    // `with_doc`; `GET /v1/docs/{id}` of a large document goes the same way).
    merge_large_doc(&node, "big").await;
    let reader = node.clone();
    let (total, done) = probe_during(&cluster, async move {
        let len = reader
            .with_doc("big", |d| {
                std::thread::sleep(Duration::from_millis(300));
                automerge::ReadDoc::length(d, automerge::ROOT)
            })
            .await
            .unwrap();
        assert_eq!(len, Some(2));
    })
    .await;
    assert_served("long read", total, &done);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_work_that_panics_fails_the_node_as_a_driver_panic_does() {
    let _turn = TURN.lock().await;
    let cluster = TestCluster::start(1, TopologyKind::Mesh).await;
    let node = cluster.node(0);
    merge_large_doc(&node, "big").await;
    let answer = node
        .with_doc("big", |_| -> () { panic!("a faulty read") })
        .await;
    assert!(answer.is_err(), "no answer from a failed node: {answer:?}");
    let why = tokio::time::timeout(LIMIT, node.failed())
        .await
        .expect("the node fails");
    assert!(
        why.contains("heavy work on document \"big\" panicked: a faulty read"),
        "{why}"
    );
    assert!(matches!(node.health(), concordant::node::Health::Failed(_)));
}
