//! The HTTP API against in-process nodes over real QUIC on 127.0.0.1 (port 0): every
//! endpoint, every op, every error status of the SPEC, the token, the body limit, write
//! concern (including the 504 with a peer down), change events, metrics, and Automerge
//! export and import; the document listing and the fingerprint in [`listing`].

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, Automerge, ReadDoc, ROOT};
use concordant::api::{self, ApiOptions};
use concordant::certs::in_memory_identities;
use concordant::client::{doc_path, Answer, Client};
use concordant::config::{TopologyKind, Tuning};
use concordant::serve;
use concordant::topology::Topology;
use concordant::{Node, NodeBuilder};
use hyper::Method;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Bound on any wait in these tests.
const LIMIT: Duration = Duration::from_secs(20);

struct TestNode {
    id: String,
    node: Node,
    url: String,
    token: Option<String>,
    stop_api: Option<oneshot::Sender<()>>,
}

impl TestNode {
    fn client(&self) -> Client {
        Client::new(&self.url, self.token.clone()).unwrap()
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop_api.take() {
            let _ = stop.send(());
        }
        self.node.shutdown().await.unwrap();
    }
}

/// Starts `n` nodes (`n1`..) in a mesh, each with its API on 127.0.0.1:0.
async fn cluster(n: usize, token: Option<&str>) -> Vec<TestNode> {
    cluster_with(n, ApiOptions::new(token.map(str::to_string))).await
}

async fn cluster_with(n: usize, options: ApiOptions) -> Vec<TestNode> {
    let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let identities = in_memory_identities("apitest", &refs).unwrap();
    let topology = Topology::new(TopologyKind::Mesh, ids.clone(), Vec::new());
    let tuning = Tuning {
        tick_ms: 20,
        anti_entropy_ms: 500,
        ..Tuning::default()
    };
    let mut nodes: Vec<TestNode> = Vec::new();
    for (id, identity) in ids.iter().zip(identities) {
        let node = NodeBuilder::new(id, "apitest", identity)
            .topology(topology.clone())
            .tuning(tuning.clone())
            .start()
            .await
            .unwrap();
        for other in &nodes {
            other
                .node
                .set_peer_addr(id, node.peer_addr())
                .await
                .unwrap();
            node.set_peer_addr(&other.id, other.node.peer_addr())
                .await
                .unwrap();
        }
        let listener = api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let serving = node.clone();
        let opts = options.clone();
        tokio::spawn(async move {
            api::serve_with(serving, listener, opts, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
        nodes.push(TestNode {
            id: id.clone(),
            node,
            url,
            token: options.token.clone(),
            stop_api: Some(stop_tx),
        });
    }
    nodes
}

/// Waits until `node` has a live connection to every id in `peers`.
async fn wait_connected(node: &Node, peers: &[&str]) {
    let start = Instant::now();
    loop {
        let status = node.status().await.unwrap();
        let up = peers.iter().all(|p| {
            status
                .peers
                .iter()
                .any(|s| s.id == *p && s.connected && s.linked)
        });
        if up {
            return;
        }
        assert!(start.elapsed() < LIMIT, "{peers:?} not connected in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(client: &Client, method: Method, path: &str, body: Option<Value>) -> Answer {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    client.request(method, path, body).await.unwrap()
}

async fn post_ops(client: &Client, doc: &str, body: Value) -> Answer {
    send(client, Method::POST, &doc_path(doc, "/ops"), Some(body)).await
}

async fn get_json(client: &Client, path: &str) -> (u16, Value) {
    let a = send(client, Method::GET, path, None).await;
    let v = a.json().unwrap_or(Value::Null);
    (a.status, v)
}

/// Asserts an error answer: the status and a JSON body with an "error" string.
fn assert_error(answer: &Answer, status: u16) -> String {
    let body = answer.json().unwrap_or(Value::Null);
    assert_eq!(answer.status, status, "answer: {body}");
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" string in {body}"))
        .to_string()
}

/// The document list (ids and heads) of a node over HTTP.
async fn docs(client: &Client) -> Value {
    let (status, v) = get_json(client, "/v1/docs").await;
    assert_eq!(status, 200);
    v
}

fn set(path: Value, value: Value) -> Value {
    json!({"ops": [{"op": "set", "path": path, "value": value}]})
}

/// The value of a sample line `name{labels} value` of a metrics text.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn health_status_and_docs() {
    let mut nodes = cluster(2, None).await;
    let c = nodes[0].client();
    let (status, health) = get_json(&c, "/v1/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["node"], "n1");

    let (status, docs0) = get_json(&c, "/v1/docs").await;
    assert_eq!((status, docs0), (200, json!([])));

    let answer = post_ops(&c, "d1", set(json!(["a"]), json!(1))).await;
    assert_eq!(answer.status, 200);
    let written = answer.json().unwrap();
    assert_eq!(written["acked_by"], json!([]));
    let heads = written["heads"].as_array().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].as_str().unwrap().len(), 64);
    assert_eq!(docs(&c).await, json!([{"id": "d1", "heads": heads}]));

    wait_connected(&nodes[0].node, &["n2"]).await;
    let (status, s) = get_json(&c, "/v1/status").await;
    assert_eq!(status, 200);
    assert_eq!(s["node"], "n1");
    assert_eq!(s["cluster"], "apitest");
    assert_eq!(s["topology"], "mesh");
    assert_eq!(s["docs"], 1);
    assert_eq!(s["pending_writes"], 0);
    let peers = s["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["id"], "n2");
    assert_eq!(peers[0]["connected"], true);
    assert_eq!(peers[0]["linked"], true);
    assert_eq!(peers[0]["down"], false);
    assert!(peers[0]["queued_bytes"].is_u64());

    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn every_op_through_http() {
    let mut nodes = cluster(1, None).await;
    let c = nodes[0].client();
    let steps = [
        json!({"op": "set", "path": ["title"], "value": "hello"}),
        json!({"op": "set", "path": ["obj"], "value": {"x": [1, 2], "y": null}}),
        json!({"op": "set", "path": ["gone"], "value": true}),
        json!({"op": "del", "path": ["gone"]}),
        json!({"op": "counter", "path": ["hits"], "value": 5}),
        json!({"op": "inc", "path": ["hits"], "by": -2}),
        json!({"op": "push", "path": ["obj", "x"], "value": 3}),
        json!({"op": "insert", "path": ["obj", "x", 0], "value": 0}),
        json!({"op": "text", "path": ["body"], "value": "hello world"}),
        json!({"op": "splice", "path": ["body"], "index": 6, "delete": 5, "insert": "there"}),
        json!({"op": "set", "path": [], "value": {"root2": 2.5}}),
    ];
    for op in &steps {
        let answer = post_ops(&c, "ops", json!({"ops": [op]})).await;
        assert_eq!(answer.status, 200, "{op}: {:?}", answer.json());
    }
    let (status, doc) = get_json(&c, "/v1/docs/ops").await;
    assert_eq!(status, 200);
    assert_eq!(
        doc,
        json!({
            "title": "hello",
            "obj": {"x": [0, 1, 2, 3], "y": null},
            "hits": 3,
            "body": "hello there",
            "root2": 2.5,
        })
    );
    // Several ops in one request are one change.
    let before = docs(&c).await;
    let answer = post_ops(
        &c,
        "ops",
        json!({"ops": [
            {"op": "set", "path": ["a"], "value": 1},
            {"op": "set", "path": ["b"], "value": 2},
        ], "ack": "local", "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(answer.status, 200);
    let change_count = nodes[0]
        .node
        .with_doc("ops", |d| d.get_changes(&[]).len())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change_count, steps.len() + 1);
    assert_ne!(docs(&c).await, before);
    nodes[0].stop().await;
}

#[tokio::test]
async fn refused_requests_change_nothing() {
    let mut nodes = cluster(2, None).await;
    let c = nodes[0].client();
    let answer = post_ops(&c, "doc", set(json!(["list"]), json!([1, 2]))).await;
    assert_eq!(answer.status, 200);
    let before_docs = docs(&c).await;
    let (_, before_doc) = get_json(&c, "/v1/docs/doc").await;

    let raw = |body: &str| Some(body.as_bytes().to_vec());
    let path = doc_path("doc", "/ops");
    // 400: not JSON, not an object, unknown op, missing field, empty ops, bad ack.
    for body in [
        "{not json",
        "[]",
        r#"{"ops":[{"op":"explode","path":["a"]}]}"#,
        r#"{"ops":[{"op":"set","path":["a"]}]}"#,
        r#"{"ops":[]}"#,
        r#"{"ops":[{"op":"set","path":["a"],"value":1}],"ack":"some"}"#,
        r#"{"ops":[{"op":"set","path":["a"],"value":1}],"ack":2}"#,
        r#"{"ops":[{"op":"set","path":["a"],"value":1}],"timeout_ms":999999999999}"#,
    ] {
        let answer = c.request(Method::POST, &path, raw(body)).await.unwrap();
        let error = assert_error(&answer, 400);
        assert!(!error.is_empty(), "{body}");
    }
    // 409: a path through a non-container, an index out of range, a missing counter; the
    // first op of the request is valid and must be rolled back too.
    for bad in [
        json!({"op": "set", "path": ["list", 0, "x"], "value": 1}),
        json!({"op": "insert", "path": ["list", 9], "value": 1}),
        json!({"op": "inc", "path": ["nothing"], "by": 1}),
        json!({"op": "del", "path": ["missing", "deeper"]}),
    ] {
        let body = json!({"ops": [{"op": "set", "path": ["first"], "value": 1}, bad]});
        let answer = post_ops(&c, "doc", body).await;
        assert_error(&answer, 409);
    }
    // 400: invalid document ids (percent-decoded by the server).
    for id in ["a b", "a/b", "é", &"x".repeat(257)] {
        let answer = post_ops(&c, id, set(json!(["a"]), json!(1))).await;
        let error = assert_error(&answer, 400);
        assert!(error.contains("document id"), "{error}");
    }
    // `.` and `..` are not document ids, however they are written.
    for path in [
        "/v1/docs/%2E/ops",
        "/v1/docs/%2E%2E/ops",
        "/v1/docs/.%2E/ops",
        &doc_path(".", "/ops"),
        &doc_path("..", "/ops"),
    ] {
        let answer = send(&c, Method::POST, path, Some(set(json!(["a"]), json!(1)))).await;
        let error = assert_error(&answer, 400);
        assert!(error.contains("document id"), "{path}: {error}");
    }
    // 404: absent document, its Automerge form, an unknown endpoint; 405: wrong method.
    assert_error(&send(&c, Method::GET, "/v1/docs/absent", None).await, 404);
    let absent = send(&c, Method::GET, "/v1/docs/absent/automerge", None).await;
    assert_error(&absent, 404);
    assert_error(&send(&c, Method::GET, "/v1/nothing", None).await, 404);
    assert_error(&send(&c, Method::DELETE, "/v1/docs/doc", None).await, 405);
    // A refused write to a new document does not create it.
    let answer = post_ops(
        &c,
        "newdoc",
        json!({"ops": [{"op": "inc", "path": ["x"], "by": 1}]}),
    )
    .await;
    assert_error(&answer, 409);
    assert_error(&send(&c, Method::GET, "/v1/docs/newdoc", None).await, 404);

    assert_eq!(docs(&c).await, before_docs);
    assert_eq!(get_json(&c, "/v1/docs/doc").await.1, before_doc);
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let mut nodes = cluster(1, Some("s3cret")).await;
    let good = nodes[0].client();
    let none = Client::new(&nodes[0].url, None).unwrap();
    let wrong = Client::new(&nodes[0].url, Some("s3cres".into())).unwrap();
    let longer = Client::new(&nodes[0].url, Some("s3cret2".into())).unwrap();

    assert_eq!(
        send(&none, Method::GET, "/v1/health", None).await.status,
        200
    );
    assert_eq!(
        send(&wrong, Method::GET, "/v1/health", None).await.status,
        200
    );
    for path in [
        "/v1/status",
        "/v1/docs",
        "/v1/docs/x",
        "/metrics",
        "/v1/nothing",
    ] {
        for client in [&none, &wrong, &longer] {
            assert_error(&send(client, Method::GET, path, None).await, 401);
        }
    }
    let refused = post_ops(&none, "d", set(json!(["a"]), json!(1))).await;
    assert_error(&refused, 401);
    let refused = post_ops(&wrong, "d", set(json!(["a"]), json!(1))).await;
    assert_error(&refused, 401);
    assert_eq!(docs(&good).await, json!([]));
    assert_eq!(
        post_ops(&good, "d", set(json!(["a"]), json!(1)))
            .await
            .status,
        200
    );
    assert_eq!(get_json(&good, "/v1/docs/d").await, (200, json!({"a": 1})));
    nodes[0].stop().await;

    // Without a configured token, none is needed.
    let mut open = cluster(1, None).await;
    let anyone = Client::new(&open[0].url, None).unwrap();
    assert_eq!(
        send(&anyone, Method::GET, "/v1/status", None).await.status,
        200
    );
    open[0].stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let mut nodes = cluster(1, None).await;
    let c = nodes[0].client();
    assert_eq!(
        post_ops(&c, "d", set(json!(["a"]), json!(1))).await.status,
        200
    );
    let before = docs(&c).await;

    // Valid JSON just over the 16 MiB default limit.
    let filler = "x".repeat(api::DEFAULT_BODY_LIMIT);
    let big = serde_json::to_vec(&set(json!(["big"]), json!(filler))).unwrap();
    let answer = c
        .request(Method::POST, &doc_path("d", "/ops"), Some(big.clone()))
        .await
        .unwrap();
    assert_error(&answer, 413);
    let answer = c
        .request(Method::POST, &doc_path("d", "/automerge"), Some(big))
        .await
        .unwrap();
    assert_error(&answer, 413);
    assert_eq!(docs(&c).await, before);
    nodes[0].stop().await;

    // A configured limit.
    let mut small = cluster_with(
        1,
        ApiOptions {
            body_limit: 100,
            ..ApiOptions::new(None)
        },
    )
    .await;
    let c = small[0].client();
    let body = set(json!(["a"]), json!("y".repeat(200)));
    assert_error(&post_ops(&c, "d", body).await, 413);
    assert_eq!(
        post_ops(&c, "d", set(json!(["a"]), json!(1))).await.status,
        200
    );
    small[0].stop().await;
}

#[tokio::test]
async fn write_concern_and_timeout_with_a_peer_down() {
    let mut nodes = cluster(3, None).await;
    wait_connected(&nodes[0].node, &["n2", "n3"]).await;
    let c = nodes[0].client();

    let answer = post_ops(
        &c,
        "wc",
        json!({"ops": [{"op": "set", "path": ["a"], "value": 1}], "ack": "all"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    assert_eq!(answer.json().unwrap()["acked_by"], json!(["n2", "n3"]));

    let answer = post_ops(
        &c,
        "wc",
        json!({"ops": [{"op": "set", "path": ["b"], "value": 2}], "ack": 1}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(!answer.json().unwrap()["acked_by"]
        .as_array()
        .unwrap()
        .is_empty());

    // More peers than the topology has.
    let too_many = json!({"ops": [{"op": "set", "path": ["c"], "value": 3}], "ack": 3});
    let before = docs(&c).await;
    assert_error(&post_ops(&c, "wc", too_many).await, 400);
    assert_eq!(docs(&c).await, before);

    // n3 stops: "all" cannot be met; the answer says n2 acknowledged.
    nodes[2].stop().await;
    let answer = post_ops(
        &c,
        "wc",
        json!({"ops": [{"op": "set", "path": ["d"], "value": 4}],
               "ack": "all", "timeout_ms": 1000}),
    )
    .await;
    let error = assert_error(&answer, 504);
    assert!(error.contains("n2"), "{error}");
    let body = answer.json().unwrap();
    assert_eq!(body["acked_by"], json!(["n2"]));
    let heads = body["heads"].clone();
    assert_eq!(heads.as_array().unwrap().len(), 1);
    // The write stays accepted: here and on n2.
    assert_eq!(
        docs(&c).await,
        json!([{"id": "wc", "heads": heads.clone()}])
    );
    assert_eq!(
        docs(&nodes[1].client()).await,
        json!([{"id": "wc", "heads": heads}])
    );
    assert_eq!(get_json(&nodes[1].client(), "/v1/docs/wc").await.1["d"], 4);

    nodes[0].stop().await;
    nodes[1].stop().await;
}

#[tokio::test]
async fn watch_sends_local_and_remote_changes() {
    let mut nodes = cluster(2, None).await;
    wait_connected(&nodes[0].node, &["n2"]).await;
    let c1 = nodes[0].client();
    let c2 = nodes[1].client();
    // A document this node does not have cannot be watched.
    let absent = c1.events(&doc_path("w", "/watch")).await;
    assert!(
        matches!(
            absent,
            Err(concordant::client::ClientError::Status { status: 404, .. })
        ),
        "watching an absent document: {:?}",
        absent.as_ref().err()
    );
    let created = post_ops(&c1, "w", set(json!(["created"]), json!(true))).await;
    assert_eq!(created.status, 200);
    let mut events = c1.events(&doc_path("w", "/watch")).await.unwrap();

    // Reads events until one has `heads`.
    async fn until_heads(events: &mut concordant::client::EventStream, heads: &Value) {
        let found = tokio::time::timeout(LIMIT, async {
            while let Some(event) = events.next().await.unwrap() {
                assert_eq!(event.event, "change");
                let data: Value = serde_json::from_str(&event.data).unwrap();
                assert_eq!(data["doc"], "w");
                if &data["heads"] == heads {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "no event with heads {heads}");
    }

    let local = post_ops(&c1, "w", set(json!(["a"]), json!(1))).await;
    assert_eq!(local.status, 200);
    until_heads(&mut events, &local.json().unwrap()["heads"]).await;

    // A remote write: n2 writes on top of what it has, with ack 1 so n1 has it.
    let remote = post_ops(
        &c2,
        "w",
        json!({"ops": [{"op": "set", "path": ["b"], "value": 2}], "ack": 1}),
    )
    .await;
    assert_eq!(remote.status, 200, "{:?}", remote.json());
    let remote_heads = remote.json().unwrap()["heads"].clone();
    until_heads(&mut events, &remote_heads).await;

    // Watching an invalid id is refused.
    let refused = c1.events(&doc_path("a b", "/watch")).await;
    assert!(matches!(
        refused,
        Err(concordant::client::ClientError::Status { status: 400, .. })
    ));

    // The stream ends when the server shuts down.
    nodes[0].stop().await;
    let end = tokio::time::timeout(LIMIT, async {
        while events.next().await.ok().flatten().is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the event stream did not end at shutdown");
    nodes[1].stop().await;
}

#[tokio::test]
async fn metrics_follow_what_happens() {
    let mut nodes = cluster(2, None).await;
    wait_connected(&nodes[0].node, &["n2"]).await;
    let c = nodes[0].client();
    let metrics = |c: Client| async move {
        let a = send(&c, Method::GET, "/metrics", None).await;
        assert_eq!(a.status, 200);
        assert!(a.content_type.unwrap().starts_with("text/plain"));
        String::from_utf8(a.body).unwrap()
    };
    let before = metrics(c.clone()).await;
    // Every family is declared once, before its samples.
    let mut families: Vec<&str> = before
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let count = families.len();
    families.dedup();
    assert_eq!(families.len(), count, "a family is declared twice");
    for name in [
        "concordant_writes_accepted_total",
        "concordant_remote_changes_applied_total",
        "concordant_duplicate_changes_total",
        "concordant_bad_input_total",
        "concordant_peer_bytes_sent_total",
        "concordant_peer_messages_received_total",
        "concordant_peers_connected",
        "concordant_anti_entropy_repairs_total",
        "concordant_peer_send_queue_messages",
        "concordant_peer_lag_bytes",
        "concordant_pending_writes",
    ] {
        assert!(families.contains(&name), "missing {name}");
    }
    assert_eq!(sample(&before, "concordant_peers_connected"), 1);
    assert!(before.contains("concordant_bad_input_total{source=\"core\",kind=\"bad_sync\"}"));
    assert!(before.contains("concordant_bad_input_total{source=\"transport\",kind=\"tls\"}"));

    let writes = "concordant_writes_accepted_total";
    let api_writes = "concordant_api_writes_total";
    let bad400 = "concordant_bad_input_total{source=\"api\",kind=\"400\"}";
    let sent = "concordant_peer_bytes_sent_total{peer=\"n2\"}";
    let answer = post_ops(
        &c,
        "m",
        json!({"ops": [{"op": "set", "path": ["a"], "value": 1}], "ack": 1}),
    )
    .await;
    assert_eq!(answer.status, 200);
    let bad = c
        .request(Method::POST, &doc_path("m", "/ops"), Some(b"nope".to_vec()))
        .await
        .unwrap();
    assert_error(&bad, 400);
    let after = metrics(c.clone()).await;
    assert_eq!(sample(&after, writes), sample(&before, writes) + 1);
    assert_eq!(sample(&after, api_writes), sample(&before, api_writes) + 1);
    assert_eq!(sample(&after, bad400), sample(&before, bad400) + 1);
    assert!(sample(&after, sent) > sample(&before, sent));
    assert_eq!(
        sample(&after, "concordant_api_responses_total{status=\"400\"}"),
        1
    );
    // n2 applied the change from n1.
    let n2 = metrics(nodes[1].client()).await;
    assert!(sample(&n2, "concordant_remote_changes_applied_total") >= 1);
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn automerge_export_and_import() {
    let mut nodes = cluster(1, None).await;
    let c = nodes[0].client();
    let answer = post_ops(
        &c,
        "am",
        json!({"ops": [
            {"op": "set", "path": ["a"], "value": {"b": [1, "two"]}},
            {"op": "text", "path": ["t"], "value": "text"},
        ]}),
    )
    .await;
    assert_eq!(answer.status, 200);

    // Export: loads in Automerge and shows the same JSON.
    let exported = send(&c, Method::GET, "/v1/docs/am/automerge", None).await;
    assert_eq!(exported.status, 200);
    assert_eq!(
        exported.content_type.as_deref(),
        Some("application/octet-stream")
    );
    let loaded = Automerge::load(&exported.body).unwrap();
    let (_, shown) = get_json(&c, "/v1/docs/am").await;
    assert_eq!(concordant::json::doc_to_json(&loaded), shown);
    assert_eq!(
        json!(loaded
            .get_heads()
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()),
        answer.json().unwrap()["heads"]
    );

    // Import a document made elsewhere, into an existing and into a new document.
    let mut other = AutoCommit::new();
    other.put(ROOT, "from", "elsewhere").unwrap();
    let saved = other.save();
    for doc in ["am", "fresh"] {
        let answer = c
            .request(
                Method::POST,
                &doc_path(doc, "/automerge"),
                Some(saved.clone()),
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.json());
        let body = answer.json().unwrap();
        assert_eq!(body["new_changes"], 1);
        let (_, shown) = get_json(&c, &doc_path(doc, "")).await;
        assert_eq!(shown["from"], "elsewhere");
        assert_eq!(
            docs(&c)
                .await
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == doc)
                .unwrap()["heads"],
            body["heads"]
        );
    }
    assert_eq!(get_json(&c, "/v1/docs/am").await.1["t"], "text");
    // The same data again: nothing new.
    let again = c
        .request(Method::POST, &doc_path("am", "/automerge"), Some(saved))
        .await
        .unwrap();
    assert_eq!(again.json().unwrap()["new_changes"], 0);

    // Not Automerge data, or nothing: 400, nothing changes, no document created.
    let before = docs(&c).await;
    for body in [b"definitely not automerge".to_vec(), Vec::new()] {
        for doc in ["am", "garbage"] {
            let answer = c
                .request(
                    Method::POST,
                    &doc_path(doc, "/automerge"),
                    Some(body.clone()),
                )
                .await
                .unwrap();
            assert_error(&answer, 400);
        }
    }
    assert_eq!(docs(&c).await, before);
    assert!(loaded.get(ROOT, "a").unwrap().is_some());
    nodes[0].stop().await;
}

/// A panic in the driver (here from a change function given by an embedding program) fails
/// the node: `failed()` says why, health answers 503 with it, and calls are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_driver_fails_the_node_instead_of_leaving_it_half_alive() {
    let mut nodes = cluster(1, None).await;
    let c = nodes[0].client();
    assert_eq!(get_json(&c, "/v1/health").await.0, 200);
    let node = nodes[0].node.clone();
    assert_eq!(node.failure(), None);
    let write = node.change("doc", |_tx| -> Result<(), std::io::Error> {
        panic!("a bug in a change function")
    });
    assert!(write.await.is_err());
    let why = tokio::time::timeout(LIMIT, node.failed())
        .await
        .expect("the node reports its failure");
    assert!(
        why.contains("the driver panicked: a bug in a change function"),
        "{why}"
    );
    assert_eq!(node.failure(), Some(why.clone()));
    let (status, health) = get_json(&c, "/v1/health").await;
    assert_eq!(status, 503);
    assert!(
        health["error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked")),
        "{health}"
    );
    let again = node.change("doc", |tx| {
        automerge::transaction::Transactable::put(tx, ROOT, "k", 1)
    });
    assert!(matches!(again.await, Err(concordant::Error::Stopped)));
    if let Some(stop) = nodes[0].stop_api.take() {
        let _ = stop.send(());
    }
}

/// One node with its API under [`serve::run`] (what `concordant node` and `concordant up`
/// run), stopped by `stop`: the node, its API's URL, and the run.
async fn served_node(
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    Node,
    Client,
    tokio::task::JoinHandle<Result<(), serve::RunError>>,
) {
    let identity = in_memory_identities("apitest", &["n1"]).unwrap().remove(0);
    let node = NodeBuilder::new("n1", "apitest", identity)
        .topology(Topology::new(
            TopologyKind::Mesh,
            vec!["n1".to_string()],
            Vec::new(),
        ))
        .start()
        .await
        .unwrap();
    let listener = api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let client = Client::new(&format!("http://{}", listener.local_addr().unwrap()), None).unwrap();
    let served = vec![serve::Served {
        node: node.clone(),
        listener,
        options: ApiOptions::new(None),
    }];
    let run = tokio::spawn(serve::run(served, stop));
    assert_eq!(get_json(&client, "/v1/health").await.0, 200);
    (node, client, run)
}

/// A failed node ends the process's run with an error naming the node and the failure
/// (the binary prints it and exits non-zero, for a supervisor to restart it), and the API
/// stops instead of answering 503 forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_node_ends_the_process_run_with_an_error() {
    let (node, client, run) = served_node(std::future::pending()).await;
    let write = node.change("doc", |_tx| -> Result<(), std::io::Error> {
        panic!("a bug in a change function")
    });
    assert!(write.await.is_err());
    let ended = tokio::time::timeout(LIMIT, run)
        .await
        .expect("the run ends by itself")
        .expect("the run does not panic");
    let err = ended.expect_err("a failed node ends the run with an error");
    assert!(
        matches!(&err, serve::RunError::NodeFailed { node, .. } if node == "n1"),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("the driver panicked: a bug in a change function")
            && text.contains("a restart is safe"),
        "{text}"
    );
    assert!(
        client
            .request(Method::GET, "/v1/health", None)
            .await
            .is_err(),
        "the API stopped with the run"
    );
}

/// A run that is stopped (the binary: SIGINT or SIGTERM) ends Ok with the node shut down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_ends_ok_with_the_node_shut_down() {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (node, client, run) = served_node(async {
        let _ = stop_rx.await;
    })
    .await;
    let _ = stop_tx.send(());
    let ended = tokio::time::timeout(LIMIT, run)
        .await
        .expect("the run ends once stopped")
        .expect("the run does not panic");
    assert!(ended.is_ok(), "{ended:?}");
    let write = node.change("doc", |tx| tx.put(ROOT, "k", 1));
    assert!(matches!(write.await, Err(concordant::Error::Stopped)));
    assert!(client
        .request(Method::GET, "/v1/health", None)
        .await
        .is_err());
}

#[path = "api/listing.rs"]
mod listing;

/// History: a document as it was at given heads, and its changes newest first with the
/// node each was made at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_documents_history_and_the_document_as_it_was() {
    let mut nodes = cluster(2, None).await;
    wait_connected(&nodes[0].node, &["n2"]).await;
    let (a, b) = (nodes[0].client(), nodes[1].client());
    let write = |c: &Client, v: i64| {
        let body = json!({"ops": [{"op": "set", "path": ["v"], "value": v}], "ack": "all"});
        let c = c.clone();
        async move {
            c.json(
                Method::POST,
                "/v1/docs/hist/ops",
                Some(body.to_string().into_bytes()),
            )
            .await
            .expect("written")
        }
    };
    let first = write(&a, 1).await;
    write(&b, 2).await;
    let heads: Vec<String> = first["heads"]
        .as_array()
        .expect("heads")
        .iter()
        .map(|h| h.as_str().expect("hex").to_string())
        .collect();
    let then = a
        .json(
            Method::GET,
            &format!("/v1/docs/hist?at={}", heads.join(",")),
            None,
        )
        .await
        .expect("the document then");
    assert_eq!(then, json!({"v": 1}));
    let now = a
        .json(Method::GET, "/v1/docs/hist", None)
        .await
        .expect("now");
    assert_eq!(now, json!({"v": 2}));
    let history = a
        .json(Method::GET, "/v1/docs/hist/history", None)
        .await
        .expect("history");
    let origins: Vec<&str> = history
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["origin"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(origins, ["n2", "n1"], "{history}");
    assert_eq!(history[1]["hash"], json!(heads[0]));
    assert_eq!(history[1]["seq"], 1);
    let one = a
        .json(Method::GET, "/v1/docs/hist/history?limit=1", None)
        .await
        .expect("history");
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    for (path, status) in [
        (format!("/v1/docs/hist?at={}", "ab".repeat(32)), 400),
        ("/v1/docs/hist?at=zz".to_string(), 400),
        ("/v1/docs/hist?at=".to_string(), 400),
        ("/v1/docs/hist/history?limit=0".to_string(), 400),
        ("/v1/docs/never/history".to_string(), 404),
    ] {
        let answer = a
            .request(Method::GET, &path, None)
            .await
            .expect("an answer");
        assert_eq!(answer.status, status, "{path}: {:?}", answer.json());
    }
    for n in &mut nodes {
        n.stop().await;
    }
}
