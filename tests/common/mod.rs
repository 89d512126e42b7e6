//! Shared helpers for the cluster integration tests: [`TestCluster`], a cluster of real
//! in-process nodes talking QUIC with mutual TLS on 127.0.0.1, each with durable storage
//! in a temporary directory; bounded waits (links, convergence) that fail with a report of
//! every node's heads and links; and write helpers driving the JSON ops.
//!
//! Owns only test scaffolding: it uses the public API of the crate and never reaches into
//! its internals.
#![allow(dead_code)]

pub mod checker;
pub mod faults;
pub mod haproxy;
pub mod js;
pub mod metrics_text;
pub mod procs;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use automerge::ChangeHash;
use concordant::certs::{
    generate_ca, generate_node_cert, identity_from_pem, CaBundle, TlsIdentity,
};
use concordant::config::{TopologyKind, Tuning};
use concordant::node::{Ack, Node, NodeBuilder, Written};
use concordant::topology::Topology;
use serde_json::{json, Value};

/// Cluster id of every [`TestCluster`].
pub const CLUSTER: &str = "test-cluster";
/// The document the content helpers write to.
pub const DOC: &str = "shared";
/// Bound for links to come up after a start.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for convergence.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`TestCluster::start_node`] retries a start whose port or store is still
/// held by the instance that just shut down.
pub const RESTART_GRACE: Duration = Duration::from_secs(5);
/// Poll period of the bounded waits.
const POLL: Duration = Duration::from_millis(20);

/// Small timings so failures are detected and repaired quickly.
pub fn test_tuning() -> Tuning {
    Tuning {
        tick_ms: 50,
        anti_entropy_ms: 300,
        keep_alive_ms: 200,
        idle_timeout_ms: 1000,
        reconnect_min_ms: 50,
        reconnect_max_ms: 400,
        ..Tuning::default()
    }
}

/// 127.0.0.1 with port 0.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A TLS identity for node `id` signed by `ca`.
pub fn identity_for(ca: &CaBundle, id: &str) -> TlsIdentity {
    let (cert, key) = generate_node_cert(ca, id).expect("node certificate");
    identity_from_pem(&ca.cert_pem, &cert, &key).expect("node identity")
}

/// Whether a start failed because the previous instance still holds the UDP port or the
/// store.
pub fn still_held(e: &concordant::Error) -> bool {
    use concordant::storage::StorageError;
    use concordant::transport::TransportError;
    match e {
        concordant::Error::Transport(TransportError::Bind { source, .. }) => {
            source.kind() == std::io::ErrorKind::AddrInUse
        }
        concordant::Error::Storage(StorageError::Locked { .. }) => true,
        _ => false,
    }
}

/// Short hex of heads, for messages.
pub fn short_heads(heads: &[ChangeHash]) -> String {
    let parts: Vec<String> = heads.iter().map(|h| hex::encode(&h.0[..4])).collect();
    format!("[{}]", parts.join(","))
}

/// Every document of a node with its heads, in id order.
pub type DocHeads = Vec<(String, Vec<ChangeHash>)>;

/// A cluster of in-process nodes over real QUIC on 127.0.0.1.
pub struct TestCluster {
    /// Holds every data directory (`<dir>/<id>`).
    pub dir: tempfile::TempDir,
    /// Node ids, `n1`..`nN`, in ring order.
    pub ids: Vec<String>,
    /// The cluster's CA (fresh for every cluster).
    pub ca: CaBundle,
    /// TLS identities, one per node, signed by `ca`.
    pub identities: Vec<TlsIdentity>,
    /// The topology every node runs.
    pub topology: Topology,
    /// Tuning of every node.
    pub tuning: Tuning,
    /// Where node `i` reaches node `j` (`routes[i][j]`) instead of `j`'s own address, when
    /// set: the fault-injection relays of [`faults::Net`]. Nodes then never learn each
    /// other's own addresses, so every packet between two nodes crosses a relay.
    pub routes: Option<Vec<Vec<SocketAddr>>>,
    nodes: Vec<Option<Node>>,
    /// Last bound address of each node (kept when stopped, reused on restart).
    addrs: Vec<Option<SocketAddr>>,
}

impl TestCluster {
    /// A cluster of `n` nodes (none started) with the test tuning.
    pub fn new(n: usize, kind: TopologyKind) -> TestCluster {
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let ca = generate_ca(CLUSTER).expect("cluster CA");
        let identities = ids.iter().map(|id| identity_for(&ca, id)).collect();
        let topology = Topology::new(kind, ids.clone(), Vec::new());
        TestCluster {
            dir: tempfile::tempdir().expect("temporary directory"),
            ids,
            ca,
            identities,
            topology,
            tuning: test_tuning(),
            routes: None,
            nodes: (0..n).map(|_| None).collect(),
            addrs: vec![None; n],
        }
    }

    /// A started cluster of `n` nodes whose links are all up.
    pub async fn start(n: usize, kind: TopologyKind) -> TestCluster {
        let mut cluster = TestCluster::new(n, kind);
        for i in 0..n {
            cluster.start_node(i).await;
        }
        cluster.wait_linked(LINK_TIMEOUT).await;
        cluster
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Data directory of node `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.ids[i])
    }

    /// A builder for node `i` with the cluster's topology, identity, data dir and tuning.
    pub fn builder(&self, i: usize) -> NodeBuilder {
        NodeBuilder::new(&self.ids[i], CLUSTER, self.identities[i].clone())
            .topology(self.topology.clone())
            .data_dir(self.data_dir(i))
            .tuning(self.tuning.clone())
    }

    /// Starts node `i` (on its previous address if it ran before, so that peers which
    /// only know that address find it again) and exchanges addresses with every node.
    ///
    /// Right after a shutdown the old instance may still hold its UDP port or its store
    /// for a moment; this retries such starts for at most [`RESTART_GRACE`] (see
    /// [`TestCluster::try_start_node`] for the strict version).
    pub async fn start_node(&mut self, i: usize) -> Node {
        let start = Instant::now();
        loop {
            match self.try_start_node(i).await {
                Ok(node) => {
                    if start.elapsed() > Duration::from_millis(100) {
                        eprintln!(
                            "note: {} could restart only after {:?}",
                            self.ids[i],
                            start.elapsed()
                        );
                    }
                    return node;
                }
                Err(e) if still_held(&e) && start.elapsed() < RESTART_GRACE => {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => panic!("starting {}: {e}", self.ids[i]),
            }
        }
    }

    /// Starts node `i` once, like [`TestCluster::start_node`] without retrying.
    pub async fn try_start_node(&mut self, i: usize) -> Result<Node, concordant::Error> {
        assert!(
            self.nodes[i].is_none(),
            "{} is already running",
            self.ids[i]
        );
        let listen = self.addrs[i].unwrap_or_else(any_port);
        let node = self.builder(i).listen(listen).start().await?;
        if let Some(old) = self.addrs[i] {
            assert_eq!(node.peer_addr(), old, "restarted on another address");
        }
        self.addrs[i] = Some(node.peer_addr());
        for j in 0..self.len() {
            if j == i {
                continue;
            }
            if let Some(routes) = &self.routes {
                node.set_peer_addr(&self.ids[j], routes[i][j]).await?;
                continue;
            }
            if let Some(addr) = self.addrs[j] {
                node.set_peer_addr(&self.ids[j], addr).await?;
            }
            if let Some(other) = &self.nodes[j] {
                other.set_peer_addr(&self.ids[i], node.peer_addr()).await?;
            }
        }
        self.nodes[i] = Some(node.clone());
        Ok(node)
    }

    /// Shuts node `i` down gracefully (storage flushed, connections closed).
    pub async fn stop_node(&mut self, i: usize) {
        let node = self.nodes[i]
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.ids[i]));
        node.shutdown().await.expect("shutdown");
    }

    /// Stops every running node.
    pub async fn stop_all(&mut self) {
        for i in 0..self.len() {
            if self.nodes[i].is_some() {
                self.stop_node(i).await;
            }
        }
    }

    /// The running node `i` (panics if it is stopped).
    pub fn node(&self, i: usize) -> Node {
        self.nodes[i]
            .clone()
            .unwrap_or_else(|| panic!("{} is not running", self.ids[i]))
    }

    /// Whether node `i` is running.
    pub fn is_live(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// The running nodes with their index.
    pub fn live(&self) -> Vec<(usize, Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.clone().map(|n| (i, n)))
            .collect()
    }

    /// A multi-line description of every node: links, pending writes and heads per doc.
    pub async fn report(&self) -> String {
        let mut out = String::new();
        for (i, slot) in self.nodes.iter().enumerate() {
            let Some(node) = slot else {
                let _ = writeln!(out, "  {}: stopped", self.ids[i]);
                continue;
            };
            let Ok(status) = node.status().await else {
                let _ = writeln!(out, "  {}: not answering", self.ids[i]);
                continue;
            };
            let peers: Vec<String> = status
                .peers
                .iter()
                .map(|p| {
                    let mut flags = String::new();
                    if p.linked {
                        flags.push('L');
                    }
                    if p.connected {
                        flags.push('C');
                    }
                    if p.down {
                        flags.push('D');
                    }
                    format!("{}:{flags}", p.id)
                })
                .collect();
            let _ = writeln!(
                out,
                "  {}: peers [{}] pending_writes {} docs {}",
                status.node,
                peers.join(" "),
                status.pending_writes,
                status.docs
            );
            if let Ok(docs) = node.docs().await {
                for (doc, heads) in docs {
                    let _ = writeln!(out, "      {doc}: {}", short_heads(&heads));
                }
            }
        }
        out
    }

    /// Waits until every running node holds exactly the links the topology wants given
    /// which nodes are stopped, all connected. Panics with a report past `timeout`.
    pub async fn wait_linked(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        let stopped: BTreeSet<String> = (0..self.len())
            .filter(|&i| !self.is_live(i))
            .map(|i| self.ids[i].clone())
            .collect();
        loop {
            let mut ok = true;
            for (i, node) in self.live() {
                let want = self
                    .topology
                    .desired_links(&self.ids[i], &|n: &str| stopped.contains(n));
                let status = node.status().await.expect("status");
                let connected = status.connected_peers();
                if !want.iter().all(|w| connected.contains(&w.as_str())) {
                    ok = false;
                    break;
                }
            }
            if ok {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "links not up within {timeout:?} (stopped: {stopped:?}):\n{}",
                    self.report().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Docs and heads of every running node, by node index.
    pub async fn all_heads(&self) -> Vec<(usize, DocHeads)> {
        let mut all = Vec::new();
        for (i, node) in self.live() {
            all.push((i, node.docs().await.expect("docs")));
        }
        all
    }

    /// Whether every running node has the same docs with the same heads (at least one
    /// doc) and the same JSON for each.
    async fn converged(&self) -> bool {
        let all = self.all_heads().await;
        let Some((_, first)) = all.first() else {
            return true;
        };
        if first.is_empty() || all.iter().any(|(_, h)| h != first) {
            return false;
        }
        for (doc, _) in first {
            let mut jsons = Vec::new();
            for (_, node) in self.live() {
                jsons.push(node.json(doc).await.expect("json"));
            }
            if jsons.windows(2).any(|w| w[0] != w[1]) {
                return false;
            }
        }
        true
    }

    /// Waits until every running node has identical heads and identical JSON for every
    /// document. Panics with a report past `timeout`.
    pub async fn wait_converged(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.converged().await {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "running nodes did not converge within {timeout:?}:\n{}",
                    self.report().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Shuts every running node down at the end of a test.
    pub async fn shutdown(mut self) {
        self.stop_all().await;
    }
}

/// Applies JSON `ops` to `doc` at `node` as one change, durable locally.
pub async fn ops(node: &Node, doc: &str, ops: Value) -> Written<()> {
    ops_with(node, doc, ops, Ack::Local, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("write at {} to {doc}: {e}", node.id()))
}

/// Applies JSON `ops` to `doc` at `node` as one change with a write concern.
pub async fn ops_with(
    node: &Node,
    doc: &str,
    ops: Value,
    ack: Ack,
    timeout: Duration,
) -> Result<Written<()>, concordant::Error> {
    let ops = concordant::ops::parse_ops(&ops).expect("valid test ops");
    node.change_with(doc, ack, timeout, move |tx| {
        concordant::ops::apply_ops(tx, &ops)
    })
    .await
}

/// What the content helpers wrote so far, to check every replica against.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    /// Every item pushed to the shared list (also the counter's value: one inc each).
    pub items: Vec<String>,
    /// The last value each node set under `by_node` in the shared doc.
    pub by_node: BTreeMap<String, String>,
    /// The per-node documents `doc-<id>`: key → value.
    pub own_docs: BTreeMap<String, BTreeMap<String, String>>,
}

/// Creates the shared document at `node`: a list, a counter, a map and a text.
pub async fn create_shared(node: &Node) {
    ops(
        node,
        DOC,
        json!([
            {"op": "set", "path": ["items"], "value": []},
            {"op": "counter", "path": ["count"], "value": 0},
            {"op": "set", "path": ["by_node"], "value": {}},
            {"op": "text", "path": ["notes"], "value": ""},
        ]),
    )
    .await;
}

/// One content write of node `id`: pushes `item` to the list, bumps the counter, sets
/// `by_node.<id>`, inserts `item;` at the start of the text; and sets `item` in the node's
/// own document `doc-<id>`.
async fn write_one(node: &Node, id: &str, item: &str) {
    ops(
        node,
        DOC,
        json!([
            {"op": "push", "path": ["items"], "value": item},
            {"op": "inc", "path": ["count"], "by": 1},
            {"op": "set", "path": ["by_node", id], "value": item},
            {"op": "splice", "path": ["notes"], "index": 0, "delete": 0,
             "insert": format!("{item};")},
        ]),
    )
    .await;
    ops(
        node,
        &format!("doc-{id}"),
        json!([{"op": "set", "path": [item], "value": item}]),
    )
    .await;
}

/// Every running node writes `per_node` content writes at the same time (one task per
/// node); `tag` makes the items of this phase unique. Returns once all are durable
/// locally, with `expected` updated.
pub async fn write_everywhere(
    cluster: &TestCluster,
    tag: &str,
    per_node: usize,
    expected: &mut Expected,
) {
    let mut tasks = Vec::new();
    for (i, node) in cluster.live() {
        let id = cluster.ids[i].clone();
        let items: Vec<String> = (0..per_node).map(|k| format!("{tag}-{id}-{k}")).collect();
        for item in &items {
            expected.items.push(item.clone());
            expected
                .own_docs
                .entry(format!("doc-{id}"))
                .or_default()
                .insert(item.clone(), item.clone());
        }
        if let Some(last) = items.last() {
            expected.by_node.insert(id.clone(), last.clone());
        }
        tasks.push(tokio::spawn(async move {
            for item in items {
                write_one(&node, &id, &item).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
}

/// Checks the exact content of every running node against `expected`.
pub async fn check_content(cluster: &TestCluster, expected: &Expected) {
    let mut want_items = expected.items.clone();
    want_items.sort();
    let want_notes_len: usize = expected.items.iter().map(|i| i.chars().count() + 1).sum();
    for (i, node) in cluster.live() {
        let id = &cluster.ids[i];
        let doc = node
            .json(DOC)
            .await
            .expect("json")
            .unwrap_or_else(|| panic!("{id} has no {DOC}"));
        let mut items: Vec<String> = doc["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: items is not a list: {doc}"))
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        items.sort();
        assert_eq!(items, want_items, "{id}: list items");
        assert_eq!(
            doc["count"],
            json!(expected.items.len()),
            "{id}: counter value"
        );
        let by_node: BTreeMap<String, String> = doc["by_node"]
            .as_object()
            .unwrap_or_else(|| panic!("{id}: by_node is not a map: {doc}"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        assert_eq!(by_node, expected.by_node, "{id}: by_node map");
        let notes = doc["notes"].as_str().unwrap_or_default();
        assert_eq!(notes.chars().count(), want_notes_len, "{id}: text length");
        for item in &expected.items {
            assert_eq!(
                notes.matches(&format!("{item};")).count(),
                1,
                "{id}: text should hold {item:?} once: {notes:?}"
            );
        }
        for (own, content) in &expected.own_docs {
            let got = node
                .json(own)
                .await
                .expect("json")
                .unwrap_or_else(|| panic!("{id} has no {own}"));
            let want: Value = content
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into();
            assert_eq!(got, want, "{id}: document {own}");
        }
        let docs: Vec<String> = node
            .docs()
            .await
            .expect("docs")
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        let mut want_docs: Vec<String> = expected.own_docs.keys().cloned().collect();
        want_docs.push(DOC.to_string());
        want_docs.sort();
        assert_eq!(docs, want_docs, "{id}: document list");
    }
}
