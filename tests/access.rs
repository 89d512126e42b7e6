//! Per-user access over HTTP, against in-process nodes (real QUIC and HTTP on 127.0.0.1,
//! port 0) serving with an admin token and a token key: every endpoint with no token, a
//! token signed by another key, an expired token, a user token out of its scope, a read
//! token on a write, and the admin token; the listing filtered to the user's documents; a
//! user token on two nodes; the refusals counted by reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concordant::api::{self, ApiOptions};
use concordant::certs::in_memory_identities;
use concordant::client::Client;
use concordant::config::{TopologyKind, Tuning};
use concordant::tokens::{self, Rights, UserToken, Verifier};
use concordant::topology::Topology;
use concordant::{Node, NodeBuilder};
use hyper::Method;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";
const LIMIT: Duration = Duration::from_secs(20);

struct Cluster {
    nodes: Vec<Node>,
    urls: Vec<String>,
    private_pem: String,
}

impl Cluster {
    fn client(&self, i: usize, token: Option<String>) -> Client {
        Client::new(&self.urls[i], token).expect("a client")
    }

    fn mint(&self, token: &UserToken) -> String {
        tokens::mint(self.private_pem.as_bytes(), token, tokens::unix_now()).expect("minted")
    }
}

/// Two nodes in a mesh, both serving with the admin token and the token key.
async fn cluster() -> Cluster {
    let (private_pem, public_pem) = tokens::generate_key_pair().expect("a key pair");
    let verifier = Arc::new(Verifier::from_pem(public_pem.as_bytes()).expect("a verifier"));
    let ids = ["n1", "n2"];
    let identities = in_memory_identities("access", &ids).expect("identities");
    let topology = Topology::new(
        TopologyKind::Mesh,
        ids.iter().map(|s| s.to_string()).collect(),
        Vec::new(),
    );
    let tuning = Tuning {
        tick_ms: 20,
        anti_entropy_ms: 500,
        ..Tuning::default()
    };
    let mut nodes: Vec<Node> = Vec::new();
    let mut urls = Vec::new();
    for (id, identity) in ids.iter().zip(identities) {
        let node = NodeBuilder::new(id, "access", identity)
            .topology(topology.clone())
            .tuning(tuning.clone())
            .start()
            .await
            .expect("a node");
        for (k, other) in nodes.iter().enumerate() {
            other
                .set_peer_addr(id, node.peer_addr())
                .await
                .expect("address");
            node.set_peer_addr(ids[k], other.peer_addr())
                .await
                .expect("address");
        }
        let listener = api::bind("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("bound");
        urls.push(format!("http://{}", listener.local_addr().expect("bound")));
        let mut options = ApiOptions::new(Some(ADMIN.into()));
        options.verifier = Some(Arc::clone(&verifier));
        let serving = node.clone();
        tokio::spawn(async move {
            let _ = api::serve_with(serving, listener, options, std::future::pending()).await;
        });
        nodes.push(node);
    }
    Cluster {
        nodes,
        urls,
        private_pem,
    }
}

fn user(sub: &str, docs: &[&str], rights: Rights) -> UserToken {
    UserToken {
        sub: sub.into(),
        exp: tokens::unix_now() + 3600,
        iat: None,
        jti: Some(format!("{sub}-1")),
        docs: docs.iter().map(|d| d.to_string()).collect(),
        owner: false,
        rights,
        create: false,
    }
}

async fn call(c: &Client, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string().into_bytes());
    let answer = c.request(method, path, body).await.expect("an answer");
    (answer.status, answer.json().unwrap_or(Value::Null))
}

fn set(key: &str, value: i64) -> Value {
    json!({"ops": [{"op": "set", "path": [key], "value": value}]})
}

/// Every endpoint a request can reach, with a body where it takes one.
fn endpoints() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/v1/status", None),
        (Method::GET, "/v1/docs", None),
        (Method::POST, "/v1/docs", None),
        (Method::GET, "/v1/docs/doc-a", None),
        (Method::POST, "/v1/docs/doc-a/ops", Some(set("x", 1))),
        (Method::GET, "/v1/docs/doc-a/automerge", None),
        (Method::GET, "/v1/topology", None),
        (Method::GET, "/v1/cluster", None),
        (Method::GET, "/metrics", None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reach_what_they_allow_and_nothing_else() {
    let c = cluster().await;
    let admin = c.client(0, Some(ADMIN.into()));
    for d in ["doc-a", "doc-b"] {
        let (status, body) = call(
            &admin,
            Method::POST,
            &format!("/v1/docs/{d}/ops"),
            Some(set("v", 1)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    // No token, another key's signature, an expired token: 401 saying which, everywhere.
    let (other_private, _) = tokens::generate_key_pair().expect("a key pair");
    let forged = tokens::mint(
        other_private.as_bytes(),
        &user("alice", &["doc-a"], Rights::Write),
        tokens::unix_now(),
    )
    .expect("minted");
    let expired = c.mint(&UserToken {
        exp: tokens::unix_now() - tokens::LEEWAY_S - 60,
        ..user("alice", &["doc-a"], Rights::Write)
    });
    let refusals = [
        (None, "missing"),
        (Some(forged), "signature"),
        (Some(expired), "expired"),
        (Some("not-the-admin-token".to_string()), "wrong API token"),
        (Some("a.b.c".to_string()), "malformed"),
    ];
    for (token, says) in refusals {
        let client = c.client(0, token.clone());
        for (method, path, body) in endpoints() {
            let (status, answer) = call(&client, method.clone(), path, body).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            let message = answer["error"].as_str().unwrap_or_default();
            assert!(
                message.contains(says),
                "{method} {path}: {message:?} should say {says}"
            );
        }
    }
    // The health check needs no token.
    let (status, _) = call(&c.client(0, None), Method::GET, "/v1/health", None).await;
    assert_eq!(status, 200);

    // Alice may write doc-a and nothing else; bob may only read doc-a.
    let alice = c.mint(&user("alice", &["doc-a"], Rights::Write));
    let bob = c.mint(&user("bob", &["doc-a"], Rights::Read));
    for i in 0..2 {
        let alice_at = c.client(i, Some(alice.clone()));
        let bob_at = c.client(i, Some(bob.clone()));
        let (status, body) = call(
            &alice_at,
            Method::POST,
            "/v1/docs/doc-a/ops",
            Some(set(&format!("at{i}"), 2)),
        )
        .await;
        assert_eq!(status, 200, "alice writes doc-a through n{}: {body}", i + 1);
        let (status, body) = call(&alice_at, Method::GET, "/v1/docs/doc-a", None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["v"], 1);
        let (status, _) = call(&alice_at, Method::GET, "/v1/docs/doc-a/automerge", None).await;
        assert_eq!(status, 200);
        // Out of scope: 403 whether the document exists or not, and nothing of it shown.
        for d in ["doc-b", "never-written"] {
            for (method, path, body) in [
                (Method::GET, format!("/v1/docs/{d}"), None),
                (Method::GET, format!("/v1/docs/{d}/automerge"), None),
                (Method::GET, format!("/v1/docs/{d}/watch"), None),
                (Method::POST, format!("/v1/docs/{d}/ops"), Some(set("x", 3))),
            ] {
                let (status, answer) = call(&alice_at, method.clone(), &path, body).await;
                assert_eq!(status, 403, "{method} {path}: {answer}");
                assert!(!answer.to_string().contains("\"v\""), "{answer}");
            }
        }
        // Beyond the documents: 403.
        for path in ["/v1/status", "/v1/topology", "/v1/cluster", "/metrics"] {
            let (status, answer) = call(&alice_at, Method::GET, path, None).await;
            assert_eq!(status, 403, "{path}: {answer}");
        }
        let (status, answer) = call(&alice_at, Method::POST, "/v1/docs", None).await;
        assert_eq!(status, 403, "creating without the create claim: {answer}");
        // A read token reads but does not write.
        let (status, _) = call(&bob_at, Method::GET, "/v1/docs/doc-a", None).await;
        assert_eq!(status, 200);
        let (status, answer) = call(
            &bob_at,
            Method::POST,
            "/v1/docs/doc-a/ops",
            Some(set("bob", 1)),
        )
        .await;
        assert_eq!(status, 403, "{answer}");
        assert!(answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("read-only"));
        let (status, answer) = call(&bob_at, Method::POST, "/v1/docs/doc-a/automerge", None).await;
        assert_eq!(status, 403, "{answer}");
    }
    // bob's refused writes changed nothing.
    let (_, doc) = call(&admin, Method::GET, "/v1/docs/doc-a", None).await;
    assert!(doc.get("bob").is_none(), "{doc}");

    // The listing shows a user only its documents (paged or not); the admin all.
    let alice_at = c.client(0, Some(alice.clone()));
    let (status, list) = call(&alice_at, Method::GET, "/v1/docs", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["doc-a"]);
    let (_, page) = call(&alice_at, Method::GET, "/v1/docs?limit=5", None).await;
    assert_eq!(page["docs"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["next"], Value::Null);
    let (_, all) = call(&admin, Method::GET, "/v1/docs", None).await;
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");

    // A token with `create` makes documents.
    let maker = c.mint(&UserToken {
        create: true,
        ..user("carol", &[], Rights::Write)
    });
    let (status, made) = call(&c.client(1, Some(maker)), Method::POST, "/v1/docs", None).await;
    assert_eq!(status, 201, "{made}");
    // It is carol's: her `owner` token opens it on the other node, nobody else's does.
    let made = made["id"].as_str().expect("an id").to_string();
    let owner = |sub: &str| {
        c.mint(&UserToken {
            owner: true,
            ..user(sub, &[], Rights::Write)
        })
    };
    let carol_at_n1 = c.client(0, Some(owner("carol")));
    let start = Instant::now();
    loop {
        let (status, answer) =
            call(&carol_at_n1, Method::GET, &format!("/v1/docs/{made}"), None).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 403, "{answer}");
        assert!(start.elapsed() < LIMIT, "carol's document never reached n1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, answer) = call(
        &carol_at_n1,
        Method::POST,
        &format!("/v1/docs/{made}/ops"),
        Some(set("title", 1)),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = call(&carol_at_n1, Method::GET, "/v1/docs/doc-a", None).await;
    assert_eq!(status, 403, "owner reaches only what carol created");
    let (status, _) = call(
        &c.client(0, Some(owner("dave"))),
        Method::GET,
        &format!("/v1/docs/{made}"),
        None,
    )
    .await;
    assert_eq!(status, 403, "not dave's");
    // Users cannot write owner records themselves.
    let forged = concordant::owners::record("alice", 1);
    let answer = c
        .client(0, Some(alice.clone()))
        .request(Method::POST, "/v1/docs/doc-a/automerge", Some(forged))
        .await
        .expect("an answer");
    assert_eq!(answer.status, 403, "{:?}", answer.json());
    let (_, owners_of_a) = (0, c.nodes[0].owners("doc-a").await.expect("read"));
    assert_eq!(owners_of_a, Some(Default::default()), "doc-a has no owner");

    // A revocation made at one node reaches the other: alice's token is refused there.
    let (status, answer) = call(
        &alice_at,
        Method::POST,
        "/v1/revocations",
        Some(json!({"jti": "alice-1"})),
    )
    .await;
    assert_eq!(status, 403, "a user cannot revoke: {answer}");
    for bad in [
        json!({}),
        json!({"jti": "a", "sub": "b"}),
        json!({"jti": ""}),
        json!({"who": "x"}),
    ] {
        let (status, answer) =
            call(&admin, Method::POST, "/v1/revocations", Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    let (status, answer) = call(
        &admin,
        Method::POST,
        "/v1/revocations",
        Some(json!({"jti": "alice-1"})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["revocations"], 1);
    let alice_at_n2 = c.client(1, Some(alice.clone()));
    let start = Instant::now();
    loop {
        let (status, answer) = call(&alice_at_n2, Method::GET, "/v1/docs/doc-a", None).await;
        if status == 401 {
            assert!(
                answer["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("revoked"),
                "{answer}"
            );
            break;
        }
        assert_eq!(status, 200, "{answer}");
        assert!(start.elapsed() < LIMIT, "the revocation did not reach n2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("the revocation reached n2 in {:?}", start.elapsed());
    // By user: bob's tokens issued until now are refused, a later one is accepted.
    let (status, _) = call(
        &admin,
        Method::POST,
        "/v1/revocations",
        Some(json!({"sub": "bob"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &c.client(0, Some(bob.clone())),
        Method::GET,
        "/v1/docs/doc-a",
        None,
    )
    .await;
    assert_eq!(status, 401);
    let later = tokens::mint(
        c.private_pem.as_bytes(),
        &user("bob", &["doc-a"], Rights::Read),
        tokens::unix_now() + 1,
    )
    .expect("minted");
    let (status, _) = call(
        &c.client(0, Some(later)),
        Method::GET,
        "/v1/docs/doc-a",
        None,
    )
    .await;
    assert_eq!(status, 200, "a token issued after the revocation");

    // The refusals are counted by reason.
    let metrics = admin
        .request(Method::GET, "/metrics", None)
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    for reason in [
        "missing",
        "signature",
        "expired",
        "wrong-token",
        "malformed",
        "forbidden",
        "revoked",
    ] {
        assert!(
            text.contains(&format!(
                "concordant_auth_refused_total{{reason=\"{reason}\"}}"
            )),
            "no {reason} refusals in the metrics"
        );
    }
    let start = Instant::now();
    for node in &c.nodes {
        assert!(start.elapsed() < LIMIT);
        node.shutdown().await.expect("shut down");
    }
}
