//! `GET /v1/docs` paged and streamed, its refused parameters, and the document-set
//! fingerprint of `/v1/status` and `/metrics`.

use super::*;

/// Writes `n` documents `doc-0000`.. on `node` (a hundred at a time); answers their ids
/// and heads as the listing shows them.
async fn write_docs(node: &Node, n: usize) -> Vec<Value> {
    let mut listed = Vec::new();
    let ids: Vec<String> = (0..n).map(|i| format!("doc-{i:04}")).collect();
    for chunk in ids.chunks(100) {
        let writes = chunk.iter().map(|id| async move {
            let written = node.change(id, |tx| tx.put(ROOT, "v", 1)).await.unwrap();
            let heads: Vec<String> = written.heads.iter().map(|h| h.to_string()).collect();
            json!({"id": id, "heads": heads})
        });
        listed.extend(futures_util::future::join_all(writes).await);
    }
    listed
}

/// Every page of `limit` documents, following `next`; checks each page's `next`.
async fn pages(c: &Client, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut path = format!("/v1/docs?limit={limit}");
    for _ in 0..10_000 {
        let (status, page) = get_json(c, &path).await;
        assert_eq!(status, 200, "{path}: {page}");
        let docs = page["docs"].as_array().unwrap();
        assert!(docs.len() <= limit, "{path}");
        all.extend(docs.iter().cloned());
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(docs.len(), limit, "{path}: a page before the end is full");
                assert_eq!(docs.last().unwrap()["id"], next, "{path}");
                path = format!("/v1/docs?limit={limit}&after={next}");
            }
            None => {
                assert!(page["next"].is_null(), "{path}: {page}");
                return all;
            }
        }
    }
    panic!("the listing with pages of {limit} does not end");
}

#[tokio::test]
async fn pages_and_the_streamed_listing_show_every_document() {
    let mut nodes = cluster(1, None).await;
    let c = nodes[0].client();
    // More than two of the streamed listing's pages of 1,000.
    let expected = write_docs(&nodes[0].node, 2_100).await;

    let whole = send(&c, Method::GET, "/v1/docs", None).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.content_type.as_deref(), Some("application/json"));
    let whole: Value = serde_json::from_slice(&whole.body).expect("the listing is JSON");
    assert_eq!(whole, Value::Array(expected.clone()));
    let listed = nodes[0].node.docs().await.unwrap();
    assert_eq!(listed.len(), expected.len());

    for limit in [1_000, 2_099, 2_100, 10_000] {
        assert_eq!(pages(&c, limit).await, expected, "pages of {limit}");
    }
    // A small listing in small pages, and a page after any id (stored or not).
    let small = cluster(1, None).await;
    let sc = small[0].client();
    let few = write_docs(&small[0].node, 7).await;
    for limit in [1, 3, 7] {
        assert_eq!(pages(&sc, limit).await, few, "pages of {limit}");
    }
    let (_, page) = get_json(&sc, "/v1/docs?limit=2&after=doc-0002x").await;
    assert_eq!(page, json!({"docs": few[3..5], "next": "doc-0004"}));
    let (_, page) = get_json(&sc, "/v1/docs?limit=2&after=zzz").await;
    assert_eq!(page, json!({"docs": [], "next": null}));
    for mut n in small.into_iter().chain(nodes.drain(..)) {
        n.stop().await;
    }
}

#[tokio::test]
async fn bad_listing_parameters_are_refused() {
    let mut nodes = cluster(1, None).await;
    let c = nodes[0].client();
    for path in [
        "/v1/docs?limit=0",
        "/v1/docs?limit=ten",
        "/v1/docs?limit=",
        "/v1/docs?limit=-5",
        "/v1/docs?limit=10001",
        "/v1/docs?limit=99999999999999999999999",
        "/v1/docs?limit=5&after=a%2Fb",
        "/v1/docs?limit=5&after=",
        "/v1/docs?after=doc-1",
    ] {
        let answer = send(&c, Method::GET, path, None).await;
        let error = assert_error(&answer, 400);
        assert!(
            error.contains("limit") || error.contains("after"),
            "{path}: {error}"
        );
    }
    let (status, page) = get_json(&c, "/v1/docs?limit=10000&after=a~b").await;
    assert_eq!((status, page), (200, json!({"docs": [], "next": null})));
    nodes[0].stop().await;
}

/// A node's fingerprint: `/v1/status` (16 lowercase hex digits) and the metric agree.
async fn fingerprint(c: &Client) -> u64 {
    let (status, s) = get_json(c, "/v1/status").await;
    assert_eq!(status, 200);
    let hex = s["fingerprint"].as_str().expect("a fingerprint");
    assert_eq!(hex.len(), 16, "{hex}");
    assert!(
        hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{hex}"
    );
    let fp = u64::from_str_radix(hex, 16).unwrap();
    let metrics = send(c, Method::GET, "/metrics", None).await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert_eq!(sample(&text, "concordant_fingerprint"), fp >> 11, "{hex}");
    fp
}

/// Sets `a` of `doc` through `c`; answers the node's fingerprint after the write.
async fn write_and_fingerprint(c: &Client, doc: &str, value: i64) -> u64 {
    let answer = post_ops(c, doc, set(json!(["a"]), json!(value))).await;
    assert_eq!(answer.status, 200);
    fingerprint(c).await
}

/// Waits until `c`'s fingerprint is `want`.
async fn wait_fingerprint(c: &Client, want: u64) {
    let start = Instant::now();
    while fingerprint(c).await != want {
        assert!(
            start.elapsed() < LIMIT,
            "fingerprint {want:016x} not reached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn fingerprints_are_equal_exactly_when_the_documents_are() {
    let pair = cluster(2, None).await;
    let mut apart = cluster(1, None).await;
    let (c1, c2, other) = (pair[0].client(), pair[1].client(), apart[0].client());
    wait_connected(&pair[0].node, &["n2"]).await;
    let empty = fingerprint(&other).await;
    assert_eq!(fingerprint(&c1).await, empty);
    assert_eq!(fingerprint(&c2).await, empty);

    // A write on n1: n1 differs from the node apart at once; n2 converges to it.
    let written = write_and_fingerprint(&c1, "d", 1).await;
    assert_ne!(written, empty);
    assert_eq!(fingerprint(&other).await, empty);
    wait_fingerprint(&c2, written).await;

    // The node apart (another cluster) given the same document at the same heads shows the
    // same fingerprint; one more change there, and it differs again.
    let saved = send(&c1, Method::GET, "/v1/docs/d/automerge", None).await;
    let merged = other
        .request(Method::POST, "/v1/docs/d/automerge", Some(saved.body))
        .await
        .unwrap();
    assert_eq!(merged.status, 200);
    assert_eq!(fingerprint(&other).await, written);
    assert_ne!(write_and_fingerprint(&other, "d", 2).await, written);
    // Another document on the pair: both change, together.
    let two = write_and_fingerprint(&c2, "e", 1).await;
    assert_ne!(two, written);
    wait_fingerprint(&c1, two).await;
    for mut n in pair.into_iter().chain(apart.drain(..)) {
        n.stop().await;
    }
}
