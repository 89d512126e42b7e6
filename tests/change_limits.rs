//! Limits on a single change (issue 26, item 2) on a three-node mesh with the default caps
//! (`max_op_bytes` 1 MiB, `max_change_ops` 100,000, `max_change_bytes` 4 MiB):
//! - the attack of the issue, one 15 MiB text, as a JSON `text` op (`POST
//!   /v1/docs/{id}/ops`), as an Automerge change of 15M characters (`POST
//!   /v1/docs/{id}/automerge`) and as the data of a `/v1/sync` client's message, is refused
//!   (413, or `error` and the socket closed) and counted by its limit, while `/v1/health`
//!   keeps answering; nothing of the refused documents exists on any node afterwards, and
//!   the documents written before are intact on every node;
//! - a saved document whose run-length encoded columns declare a trillion ops is refused
//!   (`max_doc_ops`) as a merge body and as sync data, and a bundle as a merge body (400);
//! - requests exactly at each cap are accepted and replicate; one over is refused;
//! - `Node::apply_ops` (the embedding API, which the HTTP API's check does not cover)
//!   refuses a change over `max_change_ops` and rolls it back.

mod common;

use std::time::{Duration, Instant};

use automerge::sync::{ChunkList, Message as SyncMessage, MessageVersion};
use automerge::transaction::Transactable;
use common::metrics_text::{metrics, refused};
use common::{TestCluster, CONVERGE_TIMEOUT};
use concordant::api::{self, ApiOptions};
use concordant::client::{doc_path, Answer, Client};
use concordant::config::TopologyKind;
use concordant::sync::codec::RepoMessage;
use concordant::sync::SyncOptions;
use hyper::Method;
use serde_json::{json, Value};

#[path = "common/bomb.rs"]
mod bomb;
#[path = "common/repo_socket.rs"]
mod repo_socket;
use repo_socket::{join, next, open, send};

/// Bound on any answer in these tests.
const LIMIT: Duration = Duration::from_secs(30);

/// The most `/v1/health` may take to answer while a node refuses an attack.
const HEALTH_BOUND: Duration = Duration::from_secs(5);

/// The text of the attack: 15 MiB of one character.
const ATTACK_CHARS: usize = 15 << 20;

/// A started three-node mesh, each node with its HTTP API (default caps); the API
/// clients and addresses, in node order.
async fn cluster() -> (TestCluster, Vec<Client>, Vec<String>) {
    let cluster = TestCluster::start(3, TopologyKind::Mesh).await;
    let mut clients = Vec::new();
    let mut addrs = Vec::new();
    for (_, node) in cluster.live() {
        let listener = api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut options = ApiOptions::new(None);
        options.sync = SyncOptions::from(&cluster.tuning);
        tokio::spawn(api::serve_with(
            node,
            listener,
            options,
            std::future::pending(),
        ));
        clients.push(Client::new(&format!("http://{addr}"), None).unwrap());
        addrs.push(addr);
    }
    (cluster, clients, addrs)
}

async fn request(client: &Client, method: Method, path: &str, body: Option<Vec<u8>>) -> Answer {
    tokio::time::timeout(LIMIT, client.request(method, path, body))
        .await
        .expect("an answer in time")
        .unwrap()
}

async fn merge(client: &Client, doc: &str, data: Vec<u8>) -> Answer {
    request(
        client,
        Method::POST,
        &doc_path(doc, "/automerge"),
        Some(data),
    )
    .await
}

async fn post_ops(client: &Client, doc: &str, ops: Value) -> Answer {
    let body = serde_json::to_vec(&json!({ "ops": ops })).unwrap();
    request(client, Method::POST, &doc_path(doc, "/ops"), Some(body)).await
}

async fn read(client: &Client, doc: &str) -> Option<Value> {
    let answer = request(client, Method::GET, &doc_path(doc, ""), None).await;
    (answer.status == 200).then(|| answer.json().unwrap())
}

/// The error of a refused request, which must be a 413.
fn refusal(answer: &Answer) -> String {
    let body = answer.json().unwrap();
    assert_eq!(answer.status, 413, "{body}");
    body["error"].as_str().unwrap().to_string()
}

/// One uncompressed change chunk of a new text of `chars` characters at "t" (`chars + 1`
/// ops), built with Automerge.
fn text_change(chars: usize) -> Vec<u8> {
    let mut doc = automerge::Automerge::new();
    let mut tx = doc.transaction();
    let text = tx
        .put_object(automerge::ROOT, "t", automerge::ObjType::Text)
        .unwrap();
    tx.splice_text(&text, 0, 0, &"x".repeat(chars)).unwrap();
    tx.commit();
    let change = doc.get_changes(&[]).pop().unwrap();
    change.raw_bytes().to_vec()
}

/// Writes a few documents on every node and waits until every node has all of them;
/// returns them as JSON, by id.
async fn write_some(cluster: &TestCluster, clients: &[Client]) -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let id = format!("kept-{i}");
        let answer = post_ops(
            client,
            &id,
            json!([{"op": "set", "path": ["n"], "value": i},
                   {"op": "text", "path": ["t"], "value": "written before the attack"}]),
        )
        .await;
        assert_eq!(answer.status, 200, "{:?}", answer.json());
        docs.push((id.clone(), read(client, &id).await.unwrap()));
    }
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    docs
}

/// Polls `/v1/health` of every node until `stop`; fails if one answer takes longer than
/// [`HEALTH_BOUND`] or is not 200. Returns how many answers it got.
async fn poll_health(clients: Vec<Client>, stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let mut answers = 0;
    while !*stop.borrow() {
        for client in &clients {
            let started = Instant::now();
            let answer = tokio::time::timeout(
                HEALTH_BOUND,
                client.request(Method::GET, "/v1/health", None),
            )
            .await
            .expect("/v1/health answers within its bound during the attack")
            .unwrap();
            assert_eq!(answer.status, 200, "health after {:?}", started.elapsed());
            answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answers
}

/// A sync message carrying `data` as its one chunk of changes.
fn sync_message(data: Vec<u8>) -> Vec<u8> {
    SyncMessage {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(vec![data]),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode()
}

/// Sends `data` as the sync message of a `request` for `doc` from a new client; returns
/// the `error` it was answered with, and asserts the socket was closed after it.
async fn sync_attack(addr: &str, doc: &str, data: Vec<u8>) -> String {
    let mut socket = open(addr, "").await.unwrap();
    send(&mut socket, &join("attacker", &["1"])).await;
    let server = match next(&mut socket).await {
        Some(RepoMessage::Peer { sender_id, .. }) => sender_id,
        other => panic!("expected peer, got {other:?}"),
    };
    send(
        &mut socket,
        &RepoMessage::Request {
            sender_id: "attacker".into(),
            target_id: server,
            document_id: doc.into(),
            data,
        },
    )
    .await;
    let mut error = None;
    while let Some(msg) = next(&mut socket).await {
        if let RepoMessage::Error { message, .. } = msg {
            error = Some(message);
        }
    }
    error.expect("an error before the close")
}

/// What must hold after the attacks: every node answers, has every kept document as it
/// was, and has none of the attacked documents.
async fn assert_unharmed(clients: &[Client], kept: &[(String, Value)], attacked: &[&str]) {
    for client in clients {
        let health = request(client, Method::GET, "/v1/health", None).await;
        assert_eq!(health.status, 200);
        for (id, before) in kept {
            assert_eq!(read(client, id).await.as_ref(), Some(before), "{id} intact");
        }
        for id in attacked {
            assert_eq!(read(client, id).await, None, "{id} not created");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_15_mib_text_is_refused_as_json_ops_merge_data_and_sync_data() {
    let change = tokio::task::spawn_blocking(|| text_change(ATTACK_CHARS));
    let (cluster, clients, addrs) = cluster().await;
    let kept = write_some(&cluster, &clients).await;
    let change = change.await.unwrap();
    assert!(change.len() > ATTACK_CHARS && change.len() < 16 << 20);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let health = tokio::spawn(poll_health(clients.clone(), stopped));

    let text = "x".repeat(ATTACK_CHARS);
    let json = post_ops(
        &clients[0],
        "attacked-ops",
        json!([{"op": "text", "path": ["t"], "value": text}]),
    )
    .await;
    let error = refusal(&json);
    assert!(
        error.contains(
            "one op's value is 15728640 bytes, over this node's limit of 1048576 \
                        ([tuning] max_op_bytes); nothing was changed"
        ),
        "{error}"
    );

    let merged = merge(&clients[1], "attacked-merge", change.clone()).await;
    let error = refusal(&merged);
    assert!(
        error.contains(
            "one change has at least 100001 ops, over this node's limit of 100000 \
                        ([tuning] max_change_ops)"
        ),
        "{error}"
    );

    let message = sync_message(change);
    let error = sync_attack(&addrs[2], "attacked-sync", message).await;
    assert!(error.contains("[tuning] max_change_ops"), "{error}");

    stop.send(true).unwrap();
    assert!(
        health.await.unwrap() > 0,
        "health was polled during the attacks"
    );
    assert_unharmed(
        &clients,
        &kept,
        &["attacked-ops", "attacked-merge", "attacked-sync"],
    )
    .await;
    for (i, label) in [(0, "op_bytes"), (1, "change_ops"), (2, "change_ops")] {
        let text = metrics(&clients[i]).await;
        assert_eq!(refused(&text, label), 1, "n{}: {label}", i + 1);
        for label in ["op_bytes", "change_ops", "change_bytes", "inflated_bytes"] {
            let series = format!("concordant_limits_refused_total{{limit=\"{label}\"}}");
            assert!(text.contains(&series), "n{} shows {series}", i + 1);
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_at_the_caps_are_accepted_and_one_over_refused() {
    let (cluster, clients, _) = cluster().await;
    let client = &clients[0];
    // 100,000 ops: a text object and 99,999 characters.
    let text = |chars: usize| json!([{"op": "text", "path": ["t"], "value": "y".repeat(chars)}]);
    let at = post_ops(client, "ops-at-cap", text(99_999)).await;
    assert_eq!(at.status, 200, "{:?}", at.json());
    let over = post_ops(client, "ops-over-cap", text(100_000)).await;
    assert!(refusal(&over).contains("one change has 100001 ops"));

    // One value of 1 MiB.
    let value = |bytes: usize| json!([{"op": "set", "path": ["v"], "value": "z".repeat(bytes)}]);
    let at = post_ops(client, "value-at-cap", value(1 << 20)).await;
    assert_eq!(at.status, 200, "{:?}", at.json());
    let over = post_ops(client, "value-over-cap", value((1 << 20) + 1)).await;
    assert!(refusal(&over).contains("max_op_bytes"));

    // 4 MiB estimated: four keys of one byte, four values of L bytes, 16 bytes per op.
    let bytes = |extra: usize| {
        let l = ((4 << 20) - 4 * 17) / 4;
        json!([{"op": "set", "path": ["a"], "value": "a".repeat(l)},
               {"op": "set", "path": ["b"], "value": "b".repeat(l)},
               {"op": "set", "path": ["c"], "value": "c".repeat(l)},
               {"op": "set", "path": ["d"], "value": "d".repeat(l + extra)}])
    };
    let at = post_ops(client, "bytes-at-cap", bytes(0)).await;
    assert_eq!(at.status, 200, "{:?}", at.json());
    let over = post_ops(client, "bytes-over-cap", bytes(1)).await;
    assert!(refusal(&over).contains("max_change_bytes"));

    // The same op cap for Automerge data.
    let at = merge(&clients[1], "merge-at-cap", text_change(99_999)).await;
    assert_eq!(at.status, 200, "{:?}", at.json());
    let over = merge(&clients[1], "merge-over-cap", text_change(100_000)).await;
    assert!(refusal(&over).contains("max_change_ops"));

    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    let accepted = ["ops-at-cap", "value-at-cap", "bytes-at-cap", "merge-at-cap"];
    let refused_docs = [
        "ops-over-cap",
        "value-over-cap",
        "bytes-over-cap",
        "merge-over-cap",
    ];
    for client in &clients {
        for id in accepted {
            assert!(read(client, id).await.is_some(), "{id} everywhere");
        }
        for id in refused_docs {
            assert_eq!(read(client, id).await, None, "{id} nowhere");
        }
    }
    let text = metrics(&clients[0]).await;
    for label in ["op_bytes", "change_ops", "change_bytes"] {
        assert_eq!(refused(&text, label), 1, "{label}");
    }
    assert_eq!(refused(&metrics(&clients[1]).await, "change_ops"), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_declaring_a_trillion_ops_and_a_bundle_are_refused() {
    let (cluster, clients, addrs) = cluster().await;
    let kept = write_some(&cluster, &clients).await;
    let bomb = bomb::rle_ops_document(bomb::DocRows {
        ops: 1_000_000_000_000,
        succs_each: 0,
        changes: 1,
        deps_each: 0,
    });
    let merged = merge(&clients[0], "attacked-merge", bomb.clone()).await;
    let error = refusal(&merged);
    assert!(
        error.contains(
            "a saved document in the data declares 1000000000000 ops, over this node's \
             limit of 1000000 ([tuning] max_doc_ops); nothing was changed"
        ),
        "{error}"
    );
    let message = sync_message(bomb);
    let error = sync_attack(&addrs[1], "attacked-sync", message).await;
    assert!(error.contains("[tuning] max_doc_ops"), "{error}");

    let mut doc = automerge::AutoCommit::new();
    doc.put(automerge::ROOT, "k", 1).unwrap();
    let heads = doc.get_heads();
    let bundle = doc.bundle(heads).unwrap().bytes().to_vec();
    let answer = merge(&clients[2], "attacked-bundle", bundle).await;
    assert_eq!(answer.status, 400, "{:?}", answer.json());

    assert_unharmed(
        &clients,
        &kept,
        &["attacked-merge", "attacked-sync", "attacked-bundle"],
    )
    .await;
    for (i, expected) in [1, 1, 0].into_iter().enumerate() {
        let text = metrics(&clients[i]).await;
        assert_eq!(refused(&text, "doc_ops"), expected, "n{}", i + 1);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_apply_ops_refuses_a_change_over_the_op_cap() {
    use concordant::ops::{parse_write_request, OpError};
    let identity = concordant::certs::in_memory_identities("caps", &["n1"])
        .unwrap()
        .remove(0);
    let tuning = concordant::config::Tuning {
        max_change_ops: 10,
        ..concordant::config::Tuning::default()
    };
    let node = concordant::NodeBuilder::new("n1", "caps", identity)
        .tuning(tuning)
        .start()
        .await
        .unwrap();
    let text = |chars: usize| {
        let body = json!({"ops": [{"op": "text", "path": ["t"], "value": "w".repeat(chars)}]});
        parse_write_request(&serde_json::to_vec(&body).unwrap()).unwrap()
    };
    node.apply_ops("at-cap", text(9)).await.unwrap();
    let refused = node.apply_ops("over-cap", text(10)).await.unwrap_err();
    let concordant::node::Error::Change(inner) = &refused else {
        panic!("expected a refused change, got {refused:?}");
    };
    let op = inner.downcast_ref::<OpError>().expect("an OpError");
    assert!(matches!(op, OpError::TooLarge(_)), "{op:?}");
    assert!(op.to_string().contains("one change has 11 ops"), "{op}");
    assert_eq!(
        node.json("at-cap").await.unwrap(),
        Some(json!({"t": "wwwwwwwww"}))
    );
    assert_eq!(node.json("over-cap").await.unwrap(), None);
    node.shutdown().await.unwrap();
}
