//! automerge-repo clients that do not keep up (issue 26, items 5 and 6), with a raw
//! WebSocket client against an in-process node:
//! - a client that stops reading while large changes are written to a document it follows
//!   is disconnected, by its queue's byte bound or by the write timeout: its place
//!   (`concordant_sync_clients`) and its queue are released, and the queue never held more
//!   than its bound;
//! - a client that sends 3,000 `request`s at once gets every answer and stays connected.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use concordant::api::{self, ApiOptions};
use concordant::certs::in_memory_identities;
use concordant::client::Client;
use concordant::config::Tuning;
use concordant::sync::codec::{self, RepoMessage};
use concordant::sync::SyncOptions;
use concordant::{Node, NodeBuilder};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[path = "common/metrics_text.rs"]
mod metrics_text;
#[path = "common/repo_socket.rs"]
mod repo_socket;
use metrics_text::{metrics, refused, sample};
use repo_socket::{join, next, open, send, Socket};

/// Bound on every wait.
const LIMIT: Duration = Duration::from_secs(30);

/// One node with its API on 127.0.0.1:0 and these limits; the node and its API client.
async fn node(tuning: Tuning) -> (Node, Client, String) {
    let identity = in_memory_identities("slow", &["n1"])
        .expect("identity")
        .remove(0);
    let node = NodeBuilder::new("n1", "slow", identity)
        .tuning(tuning.clone())
        .start()
        .await
        .expect("node");
    let listener = api::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut options = ApiOptions::new(None);
    options.sync = SyncOptions::from(&tuning);
    tokio::spawn(api::serve_with(
        node.clone(),
        listener,
        options,
        std::future::pending(),
    ));
    let client = Client::new(&format!("http://{addr}"), None).expect("client");
    (node, client, addr)
}

/// Opens a socket and joins as `peer`; returns the socket and the server's peer id.
async fn joined(addr: &str, peer: &str) -> (Socket, String) {
    let mut socket = open(addr, "").await.expect("connect");
    send(&mut socket, &join(peer, &["1"])).await;
    match next(&mut socket).await {
        Some(RepoMessage::Peer { sender_id, .. }) => (socket, sender_id),
        other => panic!("expected peer, got {other:?}"),
    }
}

/// A `request` for `doc` from a client that has nothing.
fn request(me: &str, server: &str, doc: &str) -> RepoMessage {
    let empty = Automerge::new();
    let data = empty
        .generate_sync_message(&mut sync::State::new())
        .expect("a first message")
        .encode();
    RepoMessage::Request {
        sender_id: me.into(),
        target_id: server.into(),
        document_id: doc.into(),
        data,
    }
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Size of each change written to the followed document.
const CHANGE: usize = 256 * 1024;

/// A client follows a document, then stops reading while large changes are written to
/// it. Returns the last metrics, the largest queued bytes seen and how many changes were
/// written before the client was gone.
async fn paused_client(tuning: Tuning, most_changes: usize) -> (String, u64, usize) {
    let (node, client, addr) = node(tuning).await;
    node.change("big", |tx| tx.put(ROOT, "v", 0))
        .await
        .expect("write");
    let (mut socket, server) = joined(&addr, "paused").await;
    send(&mut socket, &request("paused", &server, "big")).await;
    assert!(matches!(
        next(&mut socket).await,
        Some(RepoMessage::Sync { .. })
    ));
    assert_eq!(
        sample(&metrics(&client).await, "concordant_sync_clients"),
        1
    );
    // From now on the client reads nothing.
    let rss_before = rss_kib();
    let mut most_queued = 0;
    let mut written = 0;
    let start = Instant::now();
    loop {
        let m = metrics(&client).await;
        most_queued = most_queued.max(sample(&m, "concordant_sync_client_queued_bytes"));
        if sample(&m, "concordant_sync_clients") == 0 {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "the paused client is still connected:\n{m}"
        );
        if written < most_changes {
            let value: String = (0..CHANGE)
                .map(|i| char::from(b'a' + ((i * 7 + written * 13) % 26) as u8))
                .collect();
            node.change("big", move |tx| tx.put(ROOT, "v", value))
                .await
                .expect("write");
            written += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "paused client gone after {written} changes of {} KiB ({:?}); most queued {} KiB; \
         this process grew by {} MiB",
        CHANGE / 1024,
        start.elapsed(),
        most_queued / 1024,
        rss_kib().saturating_sub(rss_before) / 1024
    );
    // The node closed the socket: what was in flight, then the end.
    let drained =
        tokio::time::timeout(LIMIT, async { while next(&mut socket).await.is_some() {} }).await;
    assert!(drained.is_ok(), "the socket was not closed");
    let m = metrics(&client).await;
    assert_eq!(sample(&m, "concordant_sync_client_queued_bytes"), 0, "{m}");
    node.shutdown().await.expect("shutdown");
    (m, most_queued, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_queue_bytes_is_disconnected_and_released() {
    let bound = 1 << 20;
    let tuning = Tuning {
        sync_client_queue_bytes: bound,
        sync_client_write_timeout_ms: 600_000,
        ..Tuning::default()
    };
    let (m, most_queued, _) = paused_client(tuning, 200).await;
    assert_eq!(refused(&m, "sync_client_queue_bytes"), 1, "{m}");
    assert_eq!(
        sample(&m, "concordant_sync_clients_dropped_total"),
        1,
        "{m}"
    );
    assert_eq!(refused(&m, "sync_client_write_timeout"), 0, "{m}");
    // The bound, and one message that may come into an empty queue.
    assert!(
        most_queued <= (bound + 2 * CHANGE) as u64,
        "{most_queued} bytes queued for one client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_socket_takes_no_write_is_disconnected_after_the_timeout() {
    let tuning = Tuning {
        sync_client_queue_bytes: 1 << 30,
        sync_client_write_timeout_ms: 1_000,
        ..Tuning::default()
    };
    let (m, _, written) = paused_client(tuning, 200).await;
    assert_eq!(refused(&m, "sync_client_write_timeout"), 1, "{m}");
    assert_eq!(refused(&m, "sync_client_queue_bytes"), 0, "{m}");
    assert!(
        written < 200,
        "the client was only gone once writes stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_is_answered_at_the_clients_pace() {
    const DOCS: usize = 3000;
    let (node, client, addr) = node(Tuning::default()).await;
    for i in 0..DOCS {
        node.change(&format!("doc-{i}"), move |tx| tx.put(ROOT, "i", i as i64))
            .await
            .expect("write");
    }
    let (socket, server) = joined(&addr, "bursty").await;
    let (mut sink, mut stream) = socket.split();
    // Every request at once, written while the answers are read.
    let requests: Vec<Message> = (0..DOCS)
        .map(|i| {
            let msg = request("bursty", &server, &format!("doc-{i}"));
            Message::Binary(codec::encode(&msg).into())
        })
        .collect();
    let writer = tokio::spawn(async move {
        let mut all = futures_util::stream::iter(requests.into_iter().map(Ok));
        sink.send_all(&mut all).await.expect("requests sent");
        sink
    });
    let mut answered = HashSet::new();
    let start = Instant::now();
    while answered.len() < DOCS {
        assert!(
            start.elapsed() < LIMIT,
            "{} of {DOCS} answered",
            answered.len()
        );
        let frame = tokio::time::timeout(LIMIT, stream.next())
            .await
            .expect("an answer in time");
        let Some(Ok(Message::Binary(bytes))) = frame else {
            panic!(
                "the socket ended after {} answers: {frame:?}",
                answered.len()
            );
        };
        match codec::decode(&bytes).expect("cbor") {
            RepoMessage::Sync { document_id, .. } => {
                answered.insert(document_id);
            }
            other => panic!("expected sync, got {other:?}"),
        }
    }
    eprintln!("{DOCS} requests answered in {:?}", start.elapsed());
    let mut socket = writer
        .await
        .expect("writer")
        .reunite(stream)
        .expect("one socket");
    // Still connected: one more request is answered.
    send(&mut socket, &request("bursty", &server, "doc-0")).await;
    assert!(matches!(
        next(&mut socket).await,
        Some(RepoMessage::Sync { .. })
    ));
    let m = metrics(&client).await;
    assert_eq!(sample(&m, "concordant_sync_clients"), 1, "{m}");
    assert_eq!(
        sample(&m, "concordant_sync_clients_dropped_total"),
        0,
        "{m}"
    );
    node.shutdown().await.expect("shutdown");
}
