//! `GET /v1/cluster` on a real five-node ring of `concordant node` processes: every node
//! and ring link up; after SIGKILL of one node, that node down and the link that heals the
//! ring around it up (marked healed), as seen from one node that gathers the others' views
//! over the peer links; lag and divergence figures per peer in `/v1/status` and
//! `/metrics`; after the restart, every node up again, the healing link gone and the
//! restart among the events. The page at `/` is served without the token; the data behind
//! it is not.

mod common;

use std::time::{Duration, Instant};

use common::procs::access::Access;
use common::procs::{ProcCluster, WAIT};
use concordant::client::{self, Client};
use hyper::Method;
use serde_json::{json, Value};

const POLL: Duration = Duration::from_millis(100);

fn node_state<'a>(v: &'a Value, id: &str) -> Option<&'a str> {
    v["nodes"].as_array()?.iter().find(|n| n["id"] == id)?["state"].as_str()
}

/// (state, healed) of link `id`, if listed.
fn link(v: &Value, id: &str) -> Option<(String, bool)> {
    let l = v["links"].as_array()?.iter().find(|l| l["id"] == id)?;
    Some((l["state"].as_str()?.to_string(), l["healed"].as_bool()?))
}

fn ring_links() -> Vec<&'static str> {
    vec!["n1-n2", "n2-n3", "n3-n4", "n4-n5", "n1-n5"]
}

/// Polls `GET /v1/cluster` at n1 until `ok` holds; the last picture on timeout.
async fn wait_for(c: &Client, what: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < limit {
        if let Ok(v) = client::cluster(c).await {
            if ok(&v) {
                return v;
            }
            last = v;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("{what}: not seen within {limit:?}; last picture:\n{last:#}");
}

fn client_of(cluster: &ProcCluster, i: usize) -> Client {
    match cluster.access(i) {
        Access::Client(c) => c,
        Access::Netns { .. } => panic!("no network namespaces in this test"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_shows_a_killed_node_down_and_the_healed_ring() {
    let mut cluster = ProcCluster::start(5, "ring").await;
    let c = client_of(&cluster, 0);

    let all_up = wait_for(&c, "five nodes and the ring links up", WAIT, |v| {
        (1..=5).all(|i| node_state(v, &format!("n{i}")) == Some("up"))
            && ring_links()
                .iter()
                .all(|l| link(v, l) == Some(("up".into(), false)))
            && v["links"].as_array().is_some_and(|l| l.len() == 5)
    })
    .await;
    assert_eq!(all_up["node"], "n1");
    assert_eq!(all_up["topology"]["kind"], "ring");
    assert!(all_up["nodes"][1]["started_ms"].as_u64().is_some());

    // Writes at n1: its write count moves, and every peer confirms what it was sent.
    for i in 0..50 {
        let ops = json!({"ops": [{"op": "set", "path": ["k"], "value": i}], "ack": "all"});
        client::op(&c, &format!("doc{}", i % 5), &ops)
            .await
            .expect("write at n1");
    }
    let written = wait_for(&c, "writes counted and confirmed", WAIT, |v| {
        v["nodes"][0]["writes_total"].as_u64() == Some(50)
            && v["nodes"].as_array().is_some_and(|nodes| {
                nodes.iter().all(|n| {
                    n["peers"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().all(|p| p["lag_changes"] == 0))
                })
            })
    })
    .await;
    assert_eq!(written["nodes"][2]["docs"], 5, "n3 holds the documents");

    cluster.kill(2).await;
    let healed = wait_for(&c, "n3 down and the ring healed by n2-n4", WAIT, |v| {
        node_state(v, "n3") == Some("down")
            && link(v, "n2-n4") == Some(("up".into(), true))
            && link(v, "n2-n3") == Some(("down".into(), false))
            && link(v, "n3-n4") == Some(("down".into(), false))
    })
    .await;
    for id in ["n1", "n2", "n4", "n5"] {
        assert_eq!(node_state(&healed, id), Some("up"), "{id}: {healed:#}");
    }
    let texts: Vec<String> = healed["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| format!("{} {}", e["node"], e["text"]))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        texts.iter().any(|t| t.contains("link to n3 down")),
        "events: {texts:#?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("linking to n4")),
        "events: {texts:#?}"
    );

    // The per-peer figures behind the page, in the status and the metrics.
    let c2 = client_of(&cluster, 1);
    let status = client::status(&c2).await.expect("n2 status");
    let to_n4 = status["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"] == "n4"))
        .cloned()
        .expect("n4 among n2's peers");
    assert_eq!(to_n4["healed"], true, "{to_n4}");
    assert!(to_n4["unacked_changes"].is_u64(), "{to_n4}");
    let metrics = c2
        .request(Method::GET, "/metrics", None)
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    for name in [
        "concordant_peer_unacked_changes{peer=\"n4\"}",
        "concordant_peer_unacked_bytes{peer=\"n4\"}",
        "concordant_peer_unacked_oldest_ms{peer=\"n4\"}",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }

    // The page needs no token; the data does.
    let page = c.request(Method::GET, "/", None).await.expect("page");
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("v1/cluster") && html.contains("data-node"));
    let stranger = Client::new(&c.url(), None).expect("a client without the token");
    let refused = stranger
        .request(Method::GET, "/v1/cluster", None)
        .await
        .expect("an answer");
    assert_eq!(refused.status, 401);
    let page = stranger
        .request(Method::GET, "/", None)
        .await
        .expect("page");
    assert_eq!(page.status, 200);

    // Logs written to a file carry no colour escapes.
    let log = cluster.child(0).log_text();
    assert!(
        log.contains("peer up") && !log.contains('\u{1b}'),
        "n1's log:\n{log}"
    );

    cluster.restart(2).await;
    let back = wait_for(&c, "n3 back and the healing link gone", WAIT, |v| {
        (1..=5).all(|i| node_state(v, &format!("n{i}")) == Some("up"))
            && ring_links()
                .iter()
                .all(|l| link(v, l) == Some(("up".into(), false)))
            && link(v, "n2-n4").is_none()
    })
    .await;
    let restarts = back["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["node"] == "n3" && e["kind"] == "started")
                .count()
        })
        .unwrap_or(0);
    assert!(restarts >= 1, "n3's restart among the events: {back:#}");
    for i in 0..5 {
        cluster.kill(i).await;
    }
}
