//! Documents on R of N nodes (`replicas`): each document is stored by its replicas only,
//! and every node reads and writes every document, forwarding to a replica over the peer
//! links when it is not one. In-process clusters over real QUIC on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{ops, TestCluster, LINK_TIMEOUT};
use concordant::config::{RingDirection, TopologyKind};
use concordant::node::Ack;
use concordant::Node;
use serde_json::json;

const NODES: usize = 6;
const R: usize = 2;
const DOCS: usize = 48;
const WAIT: Duration = Duration::from_secs(20);

async fn cluster(kind: TopologyKind) -> TestCluster {
    let mut cluster = TestCluster::new(NODES, kind);
    cluster.topology = cluster
        .topology
        .clone()
        .with_replicas(Some(R))
        .expect("R = 2 of 6");
    for i in 0..NODES {
        cluster.start_node(i).await;
    }
    cluster.wait_linked(LINK_TIMEOUT).await;
    cluster
}

fn doc(i: usize) -> String {
    format!("doc-{i}")
}

/// Which nodes store which documents (from their listings).
async fn stored(cluster: &TestCluster) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, node) in cluster.live() {
        for (d, _) in node.docs().await.expect("listing") {
            out.entry(d).or_default().push(node.id().to_string());
        }
    }
    for holders in out.values_mut() {
        holders.sort();
    }
    out
}

fn replicas(cluster: &TestCluster, d: &str) -> Vec<String> {
    let mut r: Vec<String> = cluster
        .topology
        .replicas_of(d)
        .into_iter()
        .map(str::to_string)
        .collect();
    r.sort();
    r
}

/// Waits until every document is stored by exactly its replicas, with equal heads there.
async fn wait_placed(cluster: &TestCluster, docs: usize) {
    let start = Instant::now();
    loop {
        let held = stored(cluster).await;
        let placed = (0..docs).all(|i| held.get(&doc(i)) == Some(&replicas(cluster, &doc(i))))
            && held.len() == docs;
        let mut agree = true;
        if placed {
            for i in 0..docs {
                let d = doc(i);
                let mut heads = Vec::new();
                for r in replicas(cluster, &d) {
                    let k = cluster.ids.iter().position(|id| *id == r).expect("a node");
                    let node = cluster.node(k);
                    heads.push(node.with_doc(&d, |a| a.get_heads()).await.expect("read"));
                }
                agree &= heads.windows(2).all(|w| w[0] == w[1]);
            }
        }
        if placed && agree {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "documents not on exactly their replicas after {WAIT:?}: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_node_serves_every_document(kind: TopologyKind) {
    let cluster = cluster(kind).await;
    let nodes: Vec<Node> = (0..NODES).map(|i| cluster.node(i)).collect();
    // Each document written through every node, replica or not, with ops and with a
    // change function.
    for i in 0..DOCS {
        for (k, node) in nodes.iter().enumerate() {
            let key = format!("by-{}", node.id());
            if (i + k) % 2 == 0 {
                ops(
                    node,
                    &doc(i),
                    json!([{"op": "set", "path": [key], "value": k}]),
                )
                .await;
            } else {
                node.change(&doc(i), move |tx| {
                    automerge::transaction::Transactable::put(tx, automerge::ROOT, key, k as i64)
                })
                .await
                .unwrap_or_else(|e| panic!("change of {} at {}: {e}", doc(i), node.id()));
            }
        }
    }
    wait_placed(&cluster, DOCS).await;
    // Each node stores about R/N of the documents.
    let mut per_node = vec![0usize; NODES];
    for holders in stored(&cluster).await.values() {
        for h in holders {
            per_node[cluster.ids.iter().position(|id| id == h).expect("a node")] += 1;
        }
    }
    assert_eq!(per_node.iter().sum::<usize>(), DOCS * R);
    assert!(
        per_node.iter().all(|&n| n > 0 && n < DOCS),
        "documents spread: {per_node:?}"
    );
    // Every node reads every document whole, through any node.
    let want: serde_json::Value = (0..NODES)
        .map(|k| (format!("by-n{}", k + 1), json!(k)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    for i in 0..DOCS {
        for node in &nodes {
            let got = node.json(&doc(i)).await.expect("read");
            assert_eq!(got.as_ref(), Some(&want), "{} at {}", doc(i), node.id());
            let saved = node.save(&doc(i)).await.expect("save").expect("a document");
            assert!(!saved.is_empty());
        }
    }
    // A document nobody has is absent everywhere.
    for node in &nodes {
        assert_eq!(node.json("never-written").await.expect("read"), None);
    }
    // Write concern among the document's replicas: `all` at a non-replica is acknowledged
    // by both replicas, with a change function and with JSON ops.
    let d = doc(0);
    let outsider = nodes
        .iter()
        .find(|n| !n.replicates(&d))
        .expect("a node that does not replicate it");
    let written = common::ops_with(
        outsider,
        &d,
        json!([{"op": "set", "path": ["acked"], "value": true}]),
        Ack::All,
        Duration::from_secs(5),
    )
    .await;
    // A change function at a non-replica: merged at a replica, which waits for the other.
    let mut acked = written
        .expect("ack all with a change function at a non-replica")
        .acked_by;
    acked.sort();
    assert_eq!(
        acked,
        replicas(&cluster, &d),
        "a change function's change acknowledged by every replica"
    );
    let request = concordant::ops::parse_write_request(
        br#"{"ops":[{"op":"set","path":["acked_ops"],"value":true}],"ack":"all"}"#,
    )
    .expect("request");
    let written = outsider.apply_ops(&d, request).await.expect("ack all");
    let mut acked = written.acked_by.clone();
    acked.sort();
    assert_eq!(
        acked,
        replicas(&cluster, &d),
        "acknowledged by every replica"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_every_node_serves_every_document_stored_on_two_of_six() {
    every_node_serves_every_document(TopologyKind::Mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_every_node_serves_every_document_stored_on_two_of_six() {
    every_node_serves_every_document(TopologyKind::Ring(RingDirection::Both)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_replicas_down_reads_answer_503_and_writes_are_hinted_then_handed_off() {
    let mut cluster = cluster(TopologyKind::Mesh).await;
    let d = doc(7);
    let request = concordant::ops::parse_write_request(
        br#"{"ops":[{"op":"set","path":["x"],"value":1},{"op":"set","path":["obj"],"value":{}}],"ack":"all"}"#,
    )
    .expect("request");
    cluster
        .node(0)
        .apply_ops(&d, request)
        .await
        .expect("on both replicas");
    let down = replicas(&cluster, &d);
    for r in &down {
        let k = cluster.ids.iter().position(|id| id == r).expect("a node");
        cluster.stop_node(k).await;
    }
    let (_, survivor) = cluster.live().into_iter().next().expect("a live node");
    let start = Instant::now();
    let e = loop {
        match survivor.json(&d).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    start.elapsed() < WAIT,
                    "still readable with both replicas down"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(e.status(), 503, "{e}");
    let text = e.to_string();
    for r in &down {
        assert!(text.contains(r.as_str()), "{text} names {r}");
    }
    // Writes are still accepted: kept at the survivor as hints.
    ops(
        &survivor,
        &d,
        json!([{"op": "set", "path": ["hinted"], "value": 2}]),
    )
    .await;
    let stored_here = survivor.docs().await.expect("listing");
    assert!(
        stored_here.iter().any(|(id, _)| *id == d),
        "the hint is stored"
    );
    assert_eq!(survivor.status().await.expect("status").hints, 1);
    // A write through an object only the replicas have cannot be kept as a hint: 503
    // naming them, nothing changed.
    let request = concordant::ops::parse_write_request(
        br#"{"ops":[{"op":"set","path":["obj","k"],"value":3}]}"#,
    )
    .expect("request");
    let heads_here = |list: Vec<(String, Vec<automerge::ChangeHash>)>| {
        list.into_iter().find(|(id, _)| *id == d).map(|(_, h)| h)
    };
    let heads = heads_here(survivor.docs().await.expect("listing"));
    let e = survivor
        .apply_ops(&d, request)
        .await
        .expect_err("a path the survivor's copy lacks");
    assert_eq!(e.status(), 503, "{e}");
    for r in &down {
        assert!(e.to_string().contains(r.as_str()), "{e} names {r}");
    }
    assert_eq!(
        heads_here(survivor.docs().await.expect("listing")),
        heads,
        "nothing changed"
    );
    // The replicas come back: the hinted write reaches both, and the survivor drops it.
    for r in &down {
        let k = cluster.ids.iter().position(|id| id == r).expect("a node");
        cluster.start_node(k).await;
    }
    let start = Instant::now();
    loop {
        let mut on_replicas = true;
        for r in &down {
            let k = cluster.ids.iter().position(|id| id == r).expect("a node");
            let json = cluster.node(k).json(&d).await.expect("read");
            on_replicas &= json == Some(json!({"x": 1, "obj": {}, "hinted": 2}));
        }
        let kept = survivor.docs().await.expect("listing");
        if on_replicas && kept.iter().all(|(id, _)| *id != d) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the hint was not handed off in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(survivor.status().await.expect("status").hints, 0);
    assert_eq!(
        survivor.json(&d).await.expect("read"),
        Some(json!({"x": 1, "obj": {}, "hinted": 2}))
    );
    cluster.shutdown().await;
}

/// Plays node n3 of the cluster over a raw transport: sends n1 forwarded requests with bad
/// fields and reads n1's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_forwarded_requests_are_refused_and_change_nothing() {
    use concordant::placement::{partition_of, PARTITIONS};
    use concordant::transport::{Transport, TransportConfig, TransportEvent};
    use concordant::wire::{Forward, ForwardOutcome, ForwardRequest, Message};

    let mut cluster = TestCluster::new(3, TopologyKind::Mesh);
    cluster.topology = cluster
        .topology
        .clone()
        .with_replicas(Some(1))
        .expect("R = 1");
    let n1 = cluster.start_node(0).await;
    let identity = cluster.identities[2].clone();
    let (tx, mut events) = tokio::sync::mpsc::channel(64);
    let members = vec!["n1".to_string(), "n2".to_string()];
    let cfg = TransportConfig::new(
        common::CLUSTER,
        "n3",
        "127.0.0.1:0".parse().expect("address"),
        identity,
        members,
    );
    let raw = Transport::bind(cfg, tx).await.expect("raw transport");
    n1.set_peer_addr("n3", raw.local_addr())
        .await
        .expect("address");
    raw.connect("n1", n1.peer_addr());
    let deadline = Instant::now() + WAIT;
    async fn next(
        events: &mut tokio::sync::mpsc::Receiver<TransportEvent>,
        deadline: Instant,
    ) -> TransportEvent {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, events.recv())
            .await
            .expect("an event in time")
            .expect("events")
    }
    while next(&mut events, deadline).await != TransportEvent::Up("n1".into()) {}
    // A document n1 does not replicate (n2 does), so n1 would pass it on.
    let elsewhere = (0..)
        .map(|i| format!("d{i}"))
        .find(|d| cluster.topology.holds("n2", d))
        .expect("a document of n2");
    let mine = (0..)
        .map(|i| format!("d{i}"))
        .find(|d| cluster.topology.holds("n1", d))
        .expect("a document of n1");
    let forward = |id: u64, doc: &str, partition: u16, hops: u8| {
        Message::Forward(Box::new(Forward {
            id,
            origin: "n3".into(),
            target: "n1".into(),
            hops,
            doc: doc.to_string(),
            partition,
            request: ForwardRequest::Ops(r#"{"ops":[{"op":"set","path":["x"],"value":1}]}"#.into()),
        }))
    };
    let right = partition_of(&mine, PARTITIONS).0;
    let cases = [
        (
            1,
            forward(1, &mine, right.wrapping_add(1) % PARTITIONS, 0),
            400,
            "unknown partition",
        ),
        (
            2,
            forward(2, &mine, PARTITIONS + 7, 0),
            400,
            "unknown partition",
        ),
        (3, forward(3, "bad/id", 0, 0), 400, "invalid document id"),
        (
            4,
            forward(4, &elsewhere, partition_of(&elsewhere, PARTITIONS).0, 200),
            508,
            "forward loop",
        ),
    ];
    for (id, msg, status, says) in cases {
        raw.send("n1", msg).expect("sent");
        let reply = loop {
            if let TransportEvent::Message {
                msg: Message::Reply(r),
                ..
            } = next(&mut events, deadline).await
            {
                break r;
            }
        };
        assert_eq!(reply.id, id);
        match reply.outcome {
            ForwardOutcome::Failed {
                status: s, message, ..
            } => {
                assert_eq!(s, status, "{message}");
                assert!(message.contains(says), "{message}");
            }
            other => panic!("case {id}: {other:?}"),
        }
    }
    assert!(
        n1.docs().await.expect("listing").is_empty(),
        "nothing was written"
    );
    // A good request is served.
    raw.send("n1", forward(5, &mine, right, 0)).expect("sent");
    let reply = loop {
        if let TransportEvent::Message {
            msg: Message::Reply(r),
            ..
        } = next(&mut events, deadline).await
        {
            break r;
        }
    };
    assert!(
        matches!(reply.outcome, ForwardOutcome::Written { .. }),
        "{:?}",
        reply.outcome
    );
    assert_eq!(n1.json(&mine).await.expect("read"), Some(json!({"x": 1})));
    cluster.shutdown().await;
}

/// `watch` (`Node::subscribe`) at a node that does not replicate the document: the node
/// follows it at its replicas, so changes written anywhere reach the watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_at_a_node_that_does_not_replicate_a_document_sees_its_changes() {
    watch_at_an_outsider(TopologyKind::Mesh).await;
}

/// The same on a ring, at a node linked to neither replica: it follows through the node
/// between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_ring_a_watch_two_hops_from_the_replicas_sees_the_documents_changes() {
    watch_at_an_outsider(TopologyKind::Ring(RingDirection::Both)).await;
}

async fn watch_at_an_outsider(kind: TopologyKind) {
    let cluster = cluster(kind).await;
    let d = doc(3);
    let t = &cluster.topology;
    let replica = cluster
        .ids
        .iter()
        .position(|id| t.holds(id, &d))
        .expect("a replica");
    // Not a replica, and on a ring not a neighbour of one either.
    let outsider = cluster
        .ids
        .iter()
        .position(|id| {
            !t.holds(id, &d)
                && (kind == TopologyKind::Mesh || t.neighbours(id).iter().all(|n| !t.holds(n, &d)))
        })
        .expect("a node that does not replicate it");
    let writer = cluster.node(replica);
    ops(
        &writer,
        &d,
        json!([{"op": "set", "path": ["n"], "value": 0}]),
    )
    .await;
    let mut events = cluster
        .node(outsider)
        .subscribe(&d)
        .await
        .expect("subscribe");
    let start = Instant::now();
    let mut last = 0;
    for n in 1..=5 {
        ops(
            &writer,
            &d,
            json!([{"op": "set", "path": ["n"], "value": n}]),
        )
        .await;
        let want = writer
            .with_doc(&d, |a| a.get_heads())
            .await
            .expect("read")
            .expect("the document");
        loop {
            let left = WAIT.saturating_sub(start.elapsed());
            let event = tokio::time::timeout(left, events.recv())
                .await
                .expect("an event in time")
                .expect("events");
            if event.heads == want {
                break;
            }
        }
        last = n;
    }
    assert_eq!(last, 5);
    assert_eq!(
        cluster.node(outsider).json(&d).await.expect("read"),
        Some(json!({"n": 5}))
    );
    cluster.shutdown().await;
}
