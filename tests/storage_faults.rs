//! A node whose storage fails or is slow, through the HTTP API and the embedding API, with
//! an in-memory store that fails or delays appends on demand (`MemoryStore::faults`):
//! - a write whose commit fails answers 500 "outcome uncertain" (it is in memory here and
//!   replicated), then writes are refused with 503 and health is 503 until storage works
//!   again, when the node recovers by itself and the uncertain write becomes durable;
//! - under a slow store, bytes waiting to be written stay bounded: writes are refused with
//!   503 "storage busy" instead, and every accepted write is durable.

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::ROOT;
use concordant::api;
use concordant::certs::in_memory_identities;
use concordant::client::{doc_path, Answer, Client};
use concordant::config::{TopologyKind, Tuning};
use concordant::core::LoadedDoc;
use concordant::node::Health;
use concordant::storage::{MemoryStore, Store};
use concordant::topology::Topology;
use concordant::{Error, Node, NodeBuilder};
use hyper::Method;
use serde_json::{json, Value};

/// Bound on any wait in these tests.
const LIMIT: Duration = Duration::from_secs(20);

fn tuning() -> Tuning {
    Tuning {
        tick_ms: 20,
        anti_entropy_ms: 500,
        ..Tuning::default()
    }
}

/// Serves `node`'s API on 127.0.0.1:0; returns a client for it.
async fn serve(node: &Node) -> Client {
    let listener = api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving = node.clone();
    tokio::spawn(async move { api::serve(serving, listener, None, std::future::pending()).await });
    Client::new(&url, None).unwrap()
}

async fn post_ops(c: &Client, doc: &str, key: &str, value: i64) -> Answer {
    let body = json!({"ops": [{"op": "set", "path": [key], "value": value}]});
    c.request(
        Method::POST,
        &doc_path(doc, "/ops"),
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await
    .unwrap()
}

async fn get_json(c: &Client, path: &str) -> (u16, Value) {
    let a = c.request(Method::GET, path, None).await.unwrap();
    (a.status, a.json().unwrap_or(Value::Null))
}

async fn metrics(c: &Client) -> String {
    let a = c.request(Method::GET, "/metrics", None).await.unwrap();
    String::from_utf8(a.body).unwrap()
}

/// The error message of an answer with this status.
fn error_of(answer: &Answer, status: u16) -> String {
    let body = answer.json().unwrap_or(Value::Null);
    assert_eq!(answer.status, status, "answer: {body}");
    body["error"].as_str().unwrap().to_string()
}

/// Heads of `doc` as the store holds it (decoded from its snapshot and log).
fn stored_heads(store: &MemoryStore, doc: &str) -> Option<Vec<[u8; 32]>> {
    let all = store.clone().load_all().unwrap();
    let d = all.into_iter().find(|d| d.id == doc)?;
    Some(
        LoadedDoc::decode(doc, d.snapshot.as_deref(), &d.changes)
            .unwrap()
            .heads(),
    )
}

async fn node_heads(node: &Node, doc: &str) -> Vec<[u8; 32]> {
    node.with_doc(doc, |d| d.get_heads())
        .await
        .unwrap()
        .unwrap_or_default()
        .iter()
        .map(|h| h.0)
        .collect()
}

/// Waits until `f` holds, polling.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < LIMIT, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `node` shows `doc` with `key` set to `value`.
async fn shows(node: &Node, doc: &str, key: &str, value: i64) -> bool {
    node.json(doc)
        .await
        .unwrap()
        .is_some_and(|d| d[key] == value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_uncertain_then_writes_are_refused_until_storage_recovers() {
    let ids = ["n1", "n2"];
    let identities = in_memory_identities("faults", &ids).unwrap();
    let topology = Topology::new(
        TopologyKind::Mesh,
        ids.iter().map(|s| s.to_string()).collect(),
        Vec::new(),
    );
    let store = MemoryStore::new();
    let faults = store.faults();
    let mut identities = identities.into_iter();
    let n1 = NodeBuilder::new("n1", "faults", identities.next().unwrap())
        .topology(topology.clone())
        .tuning(tuning())
        .memory(store.clone())
        .start()
        .await
        .unwrap();
    let n2 = NodeBuilder::new("n2", "faults", identities.next().unwrap())
        .topology(topology)
        .tuning(tuning())
        .peer("n1", n1.peer_addr())
        .start()
        .await
        .unwrap();
    n1.set_peer_addr("n2", n2.peer_addr()).await.unwrap();
    let c = serve(&n1).await;
    assert_eq!(post_ops(&c, "d", "before", 1).await.status, 200);
    eventually("n2 has the first write", || shows(&n2, "d", "before", 1)).await;

    // The disk fails: the write's outcome is uncertain, and says why.
    faults.fail_appends(true);
    let answer = post_ops(&c, "d", "uncertain", 2).await;
    let message = error_of(&answer, 500);
    assert!(message.contains("outcome uncertain"), "{message}");
    assert!(message.contains("applied in memory"), "{message}");
    assert!(message.contains("not durable here"), "{message}");
    assert!(message.contains("injected fault"), "{message}");
    // Exactly that: it is applied here, and it replicated to n2.
    let (_, shown) = get_json(&c, &doc_path("d", "")).await;
    assert_eq!(shown["uncertain"], 2);
    eventually("the uncertain write replicated to n2", || {
        shows(&n2, "d", "uncertain", 2)
    })
    .await;
    assert_ne!(stored_heads(&store, "d"), Some(node_heads(&n1, "d").await));

    // While storage fails: writes 503, health 503; the node is degraded, not failed.
    let message = error_of(&post_ops(&c, "d", "refused", 3).await, 503);
    assert!(message.contains("storage is failing"), "{message}");
    assert!(message.contains("injected fault"), "{message}");
    assert!(matches!(n1.health(), Health::StorageFailing(ref e) if e.contains("injected fault")));
    assert_eq!(n1.failure(), None);
    let (status, health) = get_json(&c, "/v1/health").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "storage-failing");
    assert!(
        health["error"]
            .as_str()
            .is_some_and(|e| e.contains("storage is failing")),
        "{health}"
    );
    let merge = n1.merge("d", automerge::Automerge::new().save()).await;
    assert!(matches!(merge, Err(Error::StorageFailing(_))), "{merge:?}");
    let embedded = n1
        .change("d", |tx| tx.put(ROOT, "refused", 4))
        .await
        .map(|_| ());
    assert!(
        matches!(embedded, Err(Error::StorageFailing(_))),
        "{embedded:?}"
    );
    assert_eq!(n1.json("d").await.unwrap().unwrap().get("refused"), None);
    let (_, status) = get_json(&c, "/v1/status").await;
    assert!(status["storage"]["failing"].is_string(), "{status}");
    assert!(metrics(&c)
        .await
        .contains("\nconcordant_storage_failing 1\n"));

    // The disk recovers: the node sees it by itself (its retry of what failed succeeds).
    faults.fail_appends(false);
    eventually("health is ok again", || async {
        get_json(&c, "/v1/health").await.0 == 200
    })
    .await;
    assert_eq!(n1.health(), Health::Ok);
    assert_eq!(post_ops(&c, "d", "after", 5).await.status, 200);
    // Everything it holds is durable now, the uncertain write included.
    let heads = node_heads(&n1, "d").await;
    eventually("the store holds the document as the node does", || async {
        stored_heads(&store, "d") == Some(heads.clone())
    })
    .await;
    let (_, status) = get_json(&c, "/v1/status").await;
    assert_eq!(status["storage"]["failing"], Value::Null);
    let metrics = metrics(&c).await;
    assert!(metrics.contains("\nconcordant_storage_failing 0\n"));
    assert!(metrics.contains("\nconcordant_persist_failures_total "));
    n2.shutdown().await.unwrap();
    n1.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_gets_503_busy_instead_of_a_growing_queue() {
    const BOUND: usize = 4096;
    let identities = in_memory_identities("slow", &["n1"]).unwrap();
    let store = MemoryStore::new();
    let faults = store.faults();
    let node = NodeBuilder::new("n1", "slow", identities.into_iter().next().unwrap())
        .tuning(tuning())
        .memory(store.clone())
        .store_queue_bytes(BOUND)
        .start()
        .await
        .unwrap();
    faults.delay_appends(Duration::from_millis(150));
    let value = "x".repeat(200);
    // Waves of writes, each to its own document, far faster than the store commits.
    let mut tasks = Vec::new();
    for wave in 0..30 {
        for i in 0..10 {
            let node = node.clone();
            let doc = format!("d{wave}-{i}");
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let result = node
                    .change(&doc, move |tx| tx.put(ROOT, "v", value.as_str()))
                    .await;
                (doc, result)
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut accepted, mut busy) = (Vec::new(), 0);
    for task in tasks {
        let (doc, result) = task.await.unwrap();
        match result {
            Ok(written) => accepted.push((doc, written.heads)),
            Err(Error::StorageBusy { queued, limit }) => {
                assert!(queued >= limit && limit == BOUND, "{queued} / {limit}");
                assert_eq!(
                    node.json(&doc).await.unwrap(),
                    None,
                    "refused: nothing written"
                );
                busy += 1;
            }
            Err(e) => panic!("{doc}: {e}"),
        }
    }
    assert!(busy > 0, "no write was refused: the queue is unbounded");
    assert!(!accepted.is_empty());
    // One commit takes everything queued, so the largest append is what was queued at
    // most: the bound plus the one write that crossed it.
    let largest = faults.largest_append();
    eprintln!(
        "{} writes accepted, {busy} refused as busy, largest append {largest} bytes",
        accepted.len()
    );
    assert!(largest <= BOUND + 1024, "{largest} bytes queued at once");
    // Everything accepted is durable.
    for (doc, heads) in &accepted {
        let stored = stored_heads(&store, doc).expect("stored");
        assert_eq!(stored, heads.iter().map(|h| h.0).collect::<Vec<_>>());
    }
    // Once the store keeps up, writes are accepted again.
    faults.delay_appends(Duration::ZERO);
    eventually("the queue drains", || async {
        node.status().await.unwrap().storage_queued_bytes == 0
    })
    .await;
    node.change("later", |tx| tx.put(ROOT, "v", 1))
        .await
        .unwrap();
    let c = serve(&node).await;
    assert_eq!(get_json(&c, "/v1/health").await.0, 200);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_failed_commit_left_in_memory_is_written_at_shutdown() {
    let identities = in_memory_identities("stop", &["n1"]).unwrap();
    let store = MemoryStore::new();
    let faults = store.faults();
    let node = NodeBuilder::new("n1", "stop", identities.into_iter().next().unwrap())
        .tuning(tuning())
        .memory(store.clone())
        .start()
        .await
        .unwrap();
    node.change("d", |tx| tx.put(ROOT, "k", 1)).await.unwrap();
    faults.fail_appends(true);
    let uncertain = node.change("d", |tx| tx.put(ROOT, "k", 2)).await;
    assert!(
        matches!(uncertain, Err(Error::StorageFailed(_))),
        "{uncertain:?}"
    );
    let heads = node_heads(&node, "d").await;
    assert_ne!(stored_heads(&store, "d"), Some(heads.clone()));
    // Storage works again, and the node stops before its next retry: it tries once more.
    faults.fail_appends(false);
    node.shutdown().await.unwrap();
    assert_eq!(stored_heads(&store, "d"), Some(heads));
}
