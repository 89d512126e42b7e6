//! Documents larger than one frame ([`concordant::wire::MAX_FRAME`], 32 MiB) replicate: a
//! 100 MiB document is pushed live to a running peer and caught up by a node that lacked
//! it when it was written, over real QUIC links (compressed), and every replica ends with
//! the same heads and bytes.

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ScalarValue, Value, ROOT};
use concordant::config::{TopologyKind, Tuning};
use concordant::local::LocalCluster;
use concordant::node::Node;

const DOC: &str = "big";
const SIZE: usize = 100 * 1024 * 1024;
/// Moving 100 MiB through Automerge, storage and two links several times over.
const LIMIT: Duration = Duration::from_secs(240);

/// 100 MiB that deflate cannot shrink much (xorshift), so the links really carry them.
fn blob() -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(SIZE);
    while out.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(SIZE);
    out
}

async fn heads(node: &Node) -> Option<Vec<automerge::ChangeHash>> {
    let docs = node.docs().await.expect("docs");
    docs.into_iter().find(|(id, _)| id == DOC).map(|(_, h)| h)
}

/// Waits until `node` has the document with `want` heads.
async fn wait_for(node: &Node, want: &[automerge::ChangeHash], what: &str) {
    let start = Instant::now();
    loop {
        if heads(node).await.as_deref() == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{what}: the 100 MiB document did not arrive within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The blob as `node` holds it.
async fn stored_blob(node: &Node) -> Vec<u8> {
    node.with_doc(DOC, |doc| match doc.get(ROOT, "blob") {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Bytes(b) => Some(b.clone()),
            _ => None,
        },
        _ => None,
    })
    .await
    .expect("with_doc")
    .flatten()
    .expect("the blob is there")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_document_replicates_live_and_to_a_node_that_lacked_it() {
    let mut cluster = LocalCluster::start(
        "large",
        3,
        TopologyKind::Mesh,
        Vec::new(),
        None,
        Tuning::default(),
    )
    .await
    .expect("cluster");
    assert!(
        cluster
            .wait_linked(Duration::from_secs(10))
            .await
            .expect("links"),
        "the mesh did not link up"
    );
    cluster.stop_node(2).await.expect("stop n3");

    let data = blob();
    let n1 = cluster.node(0).expect("n1").clone();
    let written = {
        let data = data.clone();
        n1.change(DOC, move |tx| {
            tx.put(ROOT, "blob", ScalarValue::Bytes(data))
        })
        .await
        .expect("the 100 MiB write")
    };
    let want = written.heads.clone();
    assert!(!want.is_empty());

    // Live: pushed to the running peer in one message of several frames.
    let n2 = cluster.node(1).expect("n2").clone();
    wait_for(&n2, &want, "live push to n2").await;
    assert_eq!(stored_blob(&n2).await, data);

    // Catch-up: n3 was down during the write and gets it from its peers.
    let n3 = cluster.start_node(2).await.expect("restart n3").clone();
    wait_for(&n3, &want, "catch-up of n3").await;
    assert_eq!(stored_blob(&n3).await, data);

    // The bytes did cross the links (the blob does not compress), and nothing was refused.
    let status = n1.status().await.expect("status");
    assert!(
        status.transport.totals.bytes_sent > SIZE as u64,
        "n1 sent only {} bytes",
        status.transport.totals.bytes_sent
    );
    for node in [&n1, &n2, &n3] {
        let s = node.status().await.expect("status");
        assert!(
            s.core.sends_refused.is_empty(),
            "{:?}",
            s.core.sends_refused
        );
    }
    cluster.shutdown().await.expect("shutdown");
}
