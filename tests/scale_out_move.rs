//! Benchmark (run by hand): a 10th node added to a 9-node mesh with each document on
//! R = 3 nodes, holding D documents under writes. The issue's target: documents moved at
//! most 1.3 times the ideal R·D/(N+1), every partition at R replicas again within 15 s,
//! nothing lost.
//!
//! ```text
//! cargo test --release --test scale_out_move -- --ignored --nocapture
//! CONCORDANT_MOVE_DOCS=2000 cargo test --release --test scale_out_move -- --ignored --nocapture
//! ```
//!
//! Real `concordant node` processes (the release binary under `--release`):
//! 1. `init` 9 nodes, mesh, `replicas = 3`, with the [`tuning`] below; all started and linked.
//! 2. D documents loaded through the HTTP API (`POST /v1/docs/{id}/ops`, ack local), each
//!    sent to one of its replicas, many requests in flight over kept-alive connections
//!    spread over every node; then every document on exactly its 3 replicas with the same
//!    heads (the listings before the change).
//! 3. A light workload: one writer per node (ack local and ack 1 alternately) over
//!    [`WORKLOAD_DOCS`] documents, half of which move to the new node; every attempt
//!    recorded for the checker.
//! 4. `add-node n10`, then n10 started from the file add-node rewrote; a writer on it too
//!    (it keeps its first failures for the report). From the start of n10's process,
//!    polled until:
//!    - **at R**: n10 stores every document it replicates under the new placement (the
//!      file's, `config.topology()`), each not written by the workload at the heads its
//!      co-replicas had before the change (those written meanwhile are compared once the
//!      writes stop); the time is the end of the `GET /v1/docs` of n10 that shows it;
//!    - **clean**: every node stores exactly the documents it replicates: the time of the
//!      `/v1/status` round where every node has `hints` 0, no partition moving and exactly
//!      its count of documents, confirmed by every node's full listing taken right after.
//!
//!    The start of the last poll that still saw a condition unmet is printed beside each.
//! 5. Writers stopped; every document on exactly its replicas at the same heads, and the
//!    checker over reads through every node of the workload's documents and a sample of
//!    the others: no acknowledged write lost, the sample at its loaded JSON.
//!
//! Prints one line per figure (load rate, copies moved against the ideal, at R, clean,
//! the writes' latencies before and during the move, traffic) and a last line of JSON.
//! Asserts correctness only (placement, nothing lost, every wait bounded); the timings
//! are printed against the target.
//!
//! Environment: `CONCORDANT_MOVE_DOCS` (default 100000), `CONCORDANT_MOVE_AE_MS` (the
//! anti-entropy period, default 1000), `CONCORDANT_MOVE_TICK_MS` (`tick_ms`, default 50),
//! `CONCORDANT_MOVE_CACHE_DOCS` (documents in memory per node, default 20000; the cache's
//! bytes scale with it), `CONCORDANT_MOVE_PARALLEL` (load requests in flight, default 64),
//! `CONCORDANT_MOVE_SAMPLE` (documents read back besides the workload's, default 500),
//! `CONCORDANT_MOVE_BOUND_S` (bound on each wait, default 300).

mod common;

#[allow(dead_code)]
#[path = "membership/harness.rs"]
mod harness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::checker::{check, shared_history, History, Outcome, ReplicaState};
use common::metrics_text::{metrics, sample};
use common::procs::access::listing_heads;
use common::procs::workload::{write, Workload, WriteSpec};
use common::procs::{free_base_port, ProcCluster, TUNING};
use concordant::config::{Config, TopologyKind};
use concordant::topology::Topology;
use harness::{cli_ok, mesh_links, tail, wait_acked, Nodes};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Nodes before the change.
const NODES: usize = 9;
/// Replicas of each document.
const R: usize = 3;
/// The node added.
const NEW: &str = "n10";
/// Documents the writers write to (half of them move to the new node).
const WORKLOAD_DOCS: usize = 60;
/// Poll period of the waits.
const POLL: Duration = Duration::from_millis(200);
/// Progress line period while documents move.
const PROGRESS: Duration = Duration::from_secs(1);
/// Reads in flight towards one node when reading documents back.
const READS: usize = 16;
/// One load request (with its retries' pauses), at most.
const REQUEST: Duration = Duration::from_secs(30);
/// The issue's targets.
const TARGET_MOVED_RATIO: f64 = 1.3;
const TARGET_AT_R_S: f64 = 15.0;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The `[tuning]` of the benchmark: the process tests' fast link timings (keep-alive and
/// idle timeout relaxed: ten processes share the machine's cores during the load), a tick
/// of `tick_ms` (also the pause between two handoff rounds while a round offers a full
/// batch), an anti-entropy period of `ae_ms` (the handoff period otherwise), a cache of
/// `cache_docs` documents (13 KiB each by the footprint estimate), compaction after 250
/// changes.
fn tuning(tick_ms: usize, ae_ms: usize, cache_docs: usize) -> String {
    format!(
        "\n[tuning]\ntick_ms = {tick_ms}\nanti_entropy_ms = {ae_ms}\nkeep_alive_ms = 500\n\
         idle_timeout_ms = 3000\nreconnect_min_ms = 50\nreconnect_max_ms = 400\n\
         compact_after = 250\ncache_docs = {cache_docs}\ncache_bytes = {}\n",
        cache_docs * 13 * 1024
    )
}

fn doc(i: usize) -> String {
    format!("mv{i:06}")
}

/// The JSON a loaded document has until the workload writes to it.
fn loaded_json(i: usize) -> Value {
    json!({"set": {}, "count": 0, "n": i})
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Document id → sorted heads, of one node's listing.
type Listing = HashMap<String, Vec<String>>;

async fn listing(nodes: &Nodes, id: &str) -> Result<Listing, String> {
    concordant::client::docs(&nodes.client(id))
        .await
        .map(|l| listing_heads(&l))
        .map_err(|e| format!("{id}: listing: {e}"))
}

/// Every node's listing, fetched one node after the other.
async fn listings(nodes: &Nodes, ids: &[String]) -> Result<BTreeMap<String, Listing>, String> {
    let mut out = BTreeMap::new();
    for id in ids {
        out.insert(id.clone(), listing(nodes, id).await?);
    }
    Ok(out)
}

/// Every node's `/v1/status`, concurrently.
async fn statuses(nodes: &Nodes, ids: &[String]) -> BTreeMap<String, Result<Value, String>> {
    let asks = ids.iter().map(|id| async move {
        let s = concordant::client::status(&nodes.client(id))
            .await
            .map_err(|e| e.to_string());
        (id.clone(), s)
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .collect()
}

/// Node → the documents of `docs` it replicates under `topo`.
fn wanted(topo: &Topology, docs: &[String]) -> BTreeMap<String, HashSet<String>> {
    let mut out: BTreeMap<String, HashSet<String>> = topo
        .nodes()
        .iter()
        .map(|n| (n.clone(), HashSet::new()))
        .collect();
    for d in docs {
        for r in topo.replicas_of(d) {
            out.get_mut(r).expect("a node").insert(d.clone());
        }
    }
    out
}

fn first(problems: &[String], n: usize) -> String {
    let mut out: Vec<String> = problems.iter().take(n).cloned().collect();
    if problems.len() > n {
        out.push(format!("... and {} more", problems.len() - n));
    }
    out.join("\n  ")
}

/// What is wrong with where documents are: each node of `want` must store exactly its
/// documents, and the copies of a document (other than those of `skip`) the same heads.
fn placement_problems(
    lists: &BTreeMap<String, Listing>,
    want: &BTreeMap<String, HashSet<String>>,
    skip: &HashSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, docs) in want {
        let Some(list) = lists.get(id) else {
            problems.push(format!("{id}: no listing"));
            continue;
        };
        let mut lacks: Vec<&String> = docs.iter().filter(|d| !list.contains_key(*d)).collect();
        let mut extra: Vec<&String> = list.keys().filter(|d| !docs.contains(*d)).collect();
        if !lacks.is_empty() || !extra.is_empty() {
            lacks.sort();
            extra.sort();
            problems.push(format!(
                "{id} stores {} documents of its {}: lacks {} {:?}, stores {} it does not \
                 replicate {:?}",
                list.len(),
                docs.len(),
                lacks.len(),
                &lacks[..lacks.len().min(5)],
                extra.len(),
                &extra[..extra.len().min(5)]
            ));
        }
    }
    let mut heads: HashMap<&str, Vec<(&str, &Vec<String>)>> = HashMap::new();
    for (id, list) in lists {
        for (d, h) in list {
            if !skip.contains(d) {
                heads.entry(d.as_str()).or_default().push((id.as_str(), h));
            }
        }
    }
    let mut differ: Vec<String> = heads
        .into_iter()
        .filter(|(_, at)| at.windows(2).any(|w| w[0].1 != w[1].1))
        .map(|(d, at)| {
            let at: Vec<String> = at
                .iter()
                .map(|(n, h)| {
                    let h: Vec<&str> = h.iter().map(|h| &h[..h.len().min(8)]).collect();
                    format!("{n} [{}]", h.join(","))
                })
                .collect();
            format!("{d}: copies differ: {}", at.join(" vs "))
        })
        .collect();
    differ.sort();
    problems.extend(differ);
    problems
}

/// Problems of a status: hints, partitions moving.
fn status_unsettled(id: &str, s: &Value) -> Option<String> {
    let moving = &s["partitions_moving"];
    (s["hints"] != 0 || moving["in"] != 0 || moving["out"] != 0).then(|| {
        format!(
            "{id}: docs {} hints {} partitions moving {moving}",
            s["docs"], s["hints"]
        )
    })
}

/// One line per node: status figures and the tail of its log.
async fn report(nodes: &Nodes, ids: &[String]) -> String {
    let mut out = String::new();
    for (id, s) in statuses(nodes, ids).await {
        let line = match s {
            Ok(s) => format!(
                "docs {} partitions {} moving {} hints {} handed_off {} peers connected {}",
                s["docs"],
                s["partitions"],
                s["partitions_moving"],
                s["hints"],
                s["handed_off"],
                s["peers"]
                    .as_array()
                    .map_or(0, |p| p.iter().filter(|p| p["connected"] == true).count())
            ),
            Err(e) => format!("no status: {e}"),
        };
        let log = nodes
            .children
            .get(&id)
            .map(|c| tail(&c.log_text(), 6))
            .unwrap_or_default();
        out.push_str(&format!("  {id}: {line}\n--- {id} log tail:\n{log}\n"));
    }
    out
}

/// Waits (at most `bound`) until every node stores exactly the documents it replicates
/// under `topo`, the copies of each document (but those of `skip`) at the same heads, and
/// no node has hints or partitions moving; the listings then.
async fn wait_placed(
    nodes: &Nodes,
    topo: &Topology,
    docs: &[String],
    skip: &HashSet<String>,
    what: &str,
    bound: Duration,
) -> BTreeMap<String, Listing> {
    let ids: Vec<String> = topo.nodes().to_vec();
    let want = wanted(topo, docs);
    let start = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let mut problems: Vec<String> = Vec::new();
        for (id, s) in statuses(nodes, &ids).await {
            match s {
                Ok(s) => {
                    problems.extend(status_unsettled(&id, &s));
                    if s["docs"].as_u64() != Some(want[&id].len() as u64) {
                        problems.push(format!("{id}: docs {} of {}", s["docs"], want[&id].len()));
                    }
                }
                Err(e) => problems.push(format!("{id}: {e}")),
            }
        }
        if problems.is_empty() {
            match listings(nodes, &ids).await {
                Ok(lists) => {
                    problems = placement_problems(&lists, &want, skip);
                    if problems.is_empty() {
                        return lists;
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        if start.elapsed() > bound {
            panic!(
                "{what}: documents not on exactly their replicas within {bound:?}:\n  {}\n{}",
                first(&problems, 12),
                report(nodes, &ids).await
            );
        }
        if last_progress.elapsed() > Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!(
                "  {what}: waiting {:.0} s: {}",
                start.elapsed().as_secs_f64(),
                first(&problems, 3)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// An HTTP/1.1 connection to one node's API kept alive across requests.
struct KeepAlive {
    authority: String,
    token: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl KeepAlive {
    fn new(config: &Config, id: &str) -> KeepAlive {
        KeepAlive {
            authority: config.node(id).expect("node").api.to_string(),
            token: config.api_token.clone(),
            sender: None,
        }
    }

    /// POSTs `body` to `path`; `Err` unless answered 200.
    async fn post(&mut self, path: &str, body: Vec<u8>) -> Result<(), String> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| format!("connect {}: {e}", self.authority))?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake {}: {e}", self.authority))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected");
        let mut request = hyper::Request::post(path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let sent = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        match tokio::time::timeout(REQUEST, sent).await {
            Ok(Ok((200, _))) => Ok(()),
            Ok(Ok((status, body))) => Err(format!(
                "{} answered {status}: {}",
                self.authority,
                String::from_utf8_lossy(&body)
            )),
            Ok(Err(e)) => {
                self.sender = None;
                Err(format!("{}: {e}", self.authority))
            }
            Err(_) => {
                self.sender = None;
                Err(format!("{}: no answer within {REQUEST:?}", self.authority))
            }
        }
    }
}

/// Loads documents `0..d` (each to one of its replicas, rotating), `parallel` requests in
/// flight spread over the nodes; every one answered 200 (retried a few times).
async fn load(config: &Config, topo: &Topology, d: usize, parallel: usize) {
    let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in 0..d {
        let replicas = topo.replicas_of(&doc(i));
        by_node
            .entry(replicas[i % replicas.len()].to_string())
            .or_default()
            .push(i);
    }
    let per_node = parallel.div_ceil(by_node.len()).max(1);
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (id, list) in by_node {
        let list = Arc::new(list);
        for w in 0..per_node {
            let (list, done) = (list.clone(), done.clone());
            let mut conn = KeepAlive::new(config, &id);
            tasks.push(tokio::spawn(async move {
                for &i in list.iter().skip(w).step_by(per_node) {
                    let d = doc(i);
                    let body = json!({"ops": [
                        {"op": "set", "path": ["set"], "value": {}},
                        {"op": "counter", "path": ["count"], "value": 0},
                        {"op": "set", "path": ["n"], "value": i},
                    ]})
                    .to_string()
                    .into_bytes();
                    let path = format!("/v1/docs/{d}/ops");
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        match conn.post(&path, body.clone()).await {
                            Ok(()) => break,
                            Err(e) if attempt < 5 => {
                                eprintln!("load {d}: {e}; retrying");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(e) => panic!("load {d}: {e}"),
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let start = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "  loaded {n} of {d} ({:.0}/s; load average {})",
                    n as f64 / start.elapsed().as_secs_f64(),
                    load_average()
                );
            }
        })
    };
    for t in tasks {
        t.await.expect("load task");
    }
    progress.abort();
}

/// Writes begun in `[from, to)`: acknowledged, refused and uncertain, and the time to the
/// acknowledgement of those acknowledged.
struct WriteStats {
    acked: usize,
    refused: usize,
    /// Refused writes by the node they were sent to.
    refused_at: BTreeMap<String, usize>,
    uncertain: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    acked_per_s: f64,
}

impl WriteStats {
    fn of(history: &History, from: Instant, to: Instant) -> WriteStats {
        let mut lat = Vec::new();
        let (mut refused, mut uncertain) = (0, 0);
        let mut refused_at: BTreeMap<String, usize> = BTreeMap::new();
        for w in history.writes() {
            if w.started < from || w.started >= to {
                continue;
            }
            match w.outcome {
                Outcome::Acked(at) => lat.push(at.duration_since(w.started).as_secs_f64() * 1e3),
                Outcome::Refused => {
                    refused += 1;
                    *refused_at.entry(w.node.clone()).or_default() += 1;
                }
                Outcome::Uncertain => uncertain += 1,
            }
        }
        lat.sort_by(f64::total_cmp);
        let q = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        WriteStats {
            acked: lat.len(),
            refused,
            refused_at,
            uncertain,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: lat.last().copied().unwrap_or(0.0),
            acked_per_s: lat.len() as f64 / to.duration_since(from).as_secs_f64().max(1e-3),
        }
    }

    fn line(&self) -> String {
        format!(
            "{} acknowledged ({:.0}/s), {} refused {:?}, {} uncertain; latency p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms",
            self.acked,
            self.acked_per_s,
            self.refused,
            self.refused_at,
            self.uncertain,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }

    fn json(&self) -> Value {
        json!({
            "acked": self.acked, "refused": self.refused, "refused_at": self.refused_at,
            "uncertain": self.uncertain,
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms,
            "acked_per_s": self.acked_per_s,
        })
    }
}

/// The counters summed by [`counters`].
const COUNTERS: [&str; 5] = [
    "concordant_handed_off_total",
    "concordant_repair_wants_total",
    "concordant_repair_changes_sent_total",
    "concordant_reconcile_bytes_total",
    "concordant_anti_entropy_repairs_total",
];

/// Each of [`COUNTERS`] summed over `ids`: documents handed off, documents asked by bulk
/// repair, changes sent by bulk repair, bytes of reconciliation messages, sync sessions
/// for diverged documents.
async fn counters(nodes: &Nodes, ids: &[String]) -> [u64; 5] {
    let mut out = [0; 5];
    for id in ids {
        let m = metrics(&nodes.client(id)).await;
        for (k, name) in COUNTERS.iter().enumerate() {
            out[k] += sample(&m, name);
        }
    }
    out
}

/// Reads every document of `docs` through node `id`, [`READS`] at a time.
async fn read_through(nodes: &Nodes, id: &str, docs: &[String]) -> Vec<(String, Value)> {
    let client = nodes.client(id);
    let mut out = Vec::new();
    for chunk in docs.chunks(READS) {
        let reads = chunk.iter().map(|d| concordant::client::get(&client, d));
        for (d, got) in chunk
            .iter()
            .zip(futures_util::future::join_all(reads).await)
        {
            match got {
                Ok(json) => out.push((d.clone(), json)),
                Err(e) => panic!("read {d} through {id}: {e}"),
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release --test scale_out_move -- --ignored --nocapture"]
async fn tenth_node_joins_a_mesh_of_nine_under_writes() {
    let d = env_usize("CONCORDANT_MOVE_DOCS", 100_000);
    let ae_ms = env_usize("CONCORDANT_MOVE_AE_MS", 1000);
    let tick_ms = env_usize("CONCORDANT_MOVE_TICK_MS", 50);
    let cache_docs = env_usize("CONCORDANT_MOVE_CACHE_DOCS", 20_000);
    let parallel = env_usize("CONCORDANT_MOVE_PARALLEL", 64);
    let sample_n = env_usize("CONCORDANT_MOVE_SAMPLE", 500);
    let bound = Duration::from_secs(env_usize("CONCORDANT_MOVE_BOUND_S", 300) as u64);
    assert!(
        d >= 10 * WORKLOAD_DOCS,
        "CONCORDANT_MOVE_DOCS={d}: at least {}",
        10 * WORKLOAD_DOCS
    );
    let t_all = Instant::now();
    let load_start_avg = load_average();
    let tuning = tuning(tick_ms, ae_ms, cache_docs);
    eprintln!(
        "MOVE: {NODES} nodes mesh, replicas {R}, {d} documents, then {NEW} added; tuning:{}",
        tuning.replace('\n', " ")
    );

    // 1. Nine nodes, linked.
    let mut init = ProcCluster::init_with(NODES, "mesh", Some(R));
    let text = init.config_text();
    assert!(
        text.ends_with(TUNING),
        "the process tests' tuning is appended"
    );
    init.write_config(&format!("{}{tuning}", &text[..text.len() - TUNING.len()]));
    let mut nodes = Nodes::of(init);
    let file = nodes.file();
    let file_s = file.display().to_string();
    let before_config = Config::load(&file).expect("the file init wrote");
    let before = before_config.topology();
    let ids: Vec<String> = nodes.init.ids();
    for id in &ids {
        nodes.start(id, &file).await;
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    nodes.wait_links(&mesh_links(&refs)).await;
    eprintln!(
        "MOVE: {NODES} nodes up and linked after {:.1} s",
        t_all.elapsed().as_secs_f64()
    );

    // 2. The documents.
    let docs: Vec<String> = (0..d).map(doc).collect();
    let t_load = Instant::now();
    load(&before_config, &before, d, parallel).await;
    let load_s = t_load.elapsed().as_secs_f64();
    let load_rate = d as f64 / load_s;
    eprintln!(
        "LOAD: {d} documents answered in {load_s:.1} s = {load_rate:.0} documents/s \
         ({parallel} requests in flight, kept-alive connections, ack local; load average {})",
        load_average()
    );
    let none = HashSet::new();
    let t_placed = Instant::now();
    let lists_before = wait_placed(&nodes, &before, &docs, &none, "after the load", bound).await;
    let placed_s = t_placed.elapsed().as_secs_f64();
    eprintln!(
        "LOAD: every document on exactly its {R} replicas at the same heads {placed_s:.1} s \
         after the last answer ({:.0} documents/s in all)",
        d as f64 / (load_s + placed_s)
    );

    // The placement after the change, known in advance (rendezvous weights depend on node
    // ids only); checked against the file add-node writes.
    let mut with_new = ids.clone();
    with_new.push(NEW.to_string());
    let predicted = Topology::new(TopologyKind::Mesh, with_new.clone(), Vec::new())
        .with_replicas(Some(R))
        .expect("placement of 10 nodes");
    let (moving, staying): (Vec<usize>, Vec<usize>) =
        (0..d).partition(|&i| predicted.holds(NEW, &doc(i)));
    let step = |v: &[usize], n: usize| -> Vec<String> {
        (0..n).map(|k| doc(v[k * v.len() / n])).collect()
    };
    let mut workload_docs = step(&moving, WORKLOAD_DOCS / 2);
    workload_docs.extend(step(&staying, WORKLOAD_DOCS - WORKLOAD_DOCS / 2));
    let written: HashSet<String> = workload_docs.iter().cloned().collect();

    // 3. Writers on every node.
    let t_writers = Instant::now();
    let mut workload = Workload::new(shared_history());
    for (k, id) in ids.iter().enumerate() {
        let ack = if k % 2 == 0 { json!("local") } else { json!(1) };
        let spec = WriteSpec::endless(&workload_docs, ack);
        workload.spawn(id, nodes.access(id), 1, &spec);
    }
    wait_acked(&workload, &refs, 50).await;
    let acked_before = workload.acked();
    eprintln!(
        "MOVE: {NODES} writers writing to {WORKLOAD_DOCS} documents ({} acknowledged)",
        acked_before
    );

    // 4. n10 joins.
    let counters_before = counters(&nodes, &ids).await;
    let base = free_base_port(1);
    let (peer, api) = (
        format!("127.0.0.1:{}", base + 1),
        format!("127.0.0.1:{}", base + 1001),
    );
    let t_add = Instant::now();
    let ran = cli_ok(&[
        "add-node", "--config", &file_s, "--id", NEW, "--peer", &peer, "--api", &api, "--node",
        "n1",
    ])
    .await;
    let add_s = t_add.elapsed().as_secs_f64();
    eprintln!(
        "MOVE: add-node {NEW} ({add_s:.2} s):\n{}",
        ran.text.trim_end()
    );
    let after = Config::load(&file)
        .expect("the file add-node wrote")
        .topology();
    assert_eq!(
        after.nodes(),
        with_new.as_slice(),
        "the nodes after add-node"
    );
    assert_eq!(after.replicas(), R, "replicas after add-node");
    let want_after = wanted(&after, &docs);
    let want_predicted = wanted(&predicted, &docs);
    assert!(
        want_after == want_predicted,
        "the file's placement is the rendezvous placement of the 10 ids"
    );
    let new_want = &want_after[NEW];
    let placement_moves = new_want.len();

    let t0 = Instant::now();
    nodes.start(NEW, &file).await;
    let serving_s = t0.elapsed().as_secs_f64();
    // The new node's writer keeps the first failures it meets (the others' are counted).
    let stop_new = Arc::new(AtomicBool::new(false));
    let new_writer = {
        let (history, access, stop) = (
            workload.history.clone(),
            nodes.access(NEW),
            stop_new.clone(),
        );
        let docs = workload_docs.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for seq in 0usize.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (doc, key) = (&docs[seq % docs.len()], format!("{NEW}-w-{seq}"));
                if let Err(e) = write(&history, &access, NEW, doc, &key, &json!(1), 2000).await {
                    if failures.len() < 3 {
                        failures.push(format!("{doc}: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            failures
        })
    };
    eprintln!("MOVE: {NEW} serves {serving_s:.2} s after its start; a writer on it too");

    // The heads every copy had before the change (copies of a document were equal).
    let reference: HashMap<&str, &Vec<String>> = lists_before
        .values()
        .flat_map(|l| l.iter().map(|(d, h)| (d.as_str(), h)))
        .collect();
    // Each condition's time is the end of the request whose answer showed it met (an
    // upper bound); the start of the last request whose answer showed it unmet is printed
    // too (a lower bound).
    let (mut at_r, mut clean) = (None::<f64>, None::<f64>);
    let (mut short_r, mut short_clean) = (0.0f64, 0.0f64);
    let mut last_progress = Instant::now();
    let mut peak = (0u64, 0u64);
    let mut slowest_poll = 0.0f64;
    let mut clean_verified = 0.0f64;
    let secs = || t0.elapsed().as_secs_f64();
    while at_r.is_none() || clean.is_none() {
        let asked = secs();
        let st = statuses(&nodes, &with_new).await;
        let answered = secs();
        slowest_poll = slowest_poll.max(answered - asked);
        let mut problems = Vec::new();
        let (mut strays, mut moving_in, mut moving_out, mut handed) = (0, 0, 0, 0);
        for (id, s) in &st {
            match s {
                Ok(s) => {
                    strays += s["hints"].as_u64().unwrap_or(0);
                    moving_in += s["partitions_moving"]["in"].as_u64().unwrap_or(0);
                    moving_out += s["partitions_moving"]["out"].as_u64().unwrap_or(0);
                    handed += s["handed_off"].as_u64().unwrap_or(0);
                    problems.extend(status_unsettled(id, s));
                    if s["docs"].as_u64() != Some(want_after[id].len() as u64) {
                        problems.push(format!(
                            "{id}: docs {} of {}",
                            s["docs"],
                            want_after[id].len()
                        ));
                    }
                }
                Err(e) => problems.push(format!("{id}: {e}")),
            }
        }
        peak = (peak.0.max(strays), peak.1.max(moving_in + moving_out));
        let new_docs = st[NEW]
            .as_ref()
            .ok()
            .and_then(|s| s["docs"].as_u64())
            .unwrap_or(0);
        if at_r.is_none() && new_docs < new_want.len() as u64 {
            short_r = asked;
        } else if at_r.is_none() {
            let asked = secs();
            let list = listing(&nodes, NEW).await.unwrap_or_default();
            let mut lacking: Vec<&String> = new_want
                .iter()
                .filter(|d| match list.get(*d) {
                    None => true,
                    Some(h) => !written.contains(*d) && Some(&h) != reference.get(d.as_str()),
                })
                .collect();
            lacking.sort();
            if lacking.is_empty() {
                let t = secs();
                at_r = Some(t);
                eprintln!("  {t:6.2} s: {NEW} holds its {} documents", new_want.len());
            } else {
                short_r = asked;
                problems.push(format!(
                    "{NEW}: {} documents lacking or behind {:?}",
                    lacking.len(),
                    &lacking[..lacking.len().min(3)]
                ));
            }
        }
        if clean.is_none() && (at_r.is_none() || !problems.is_empty()) {
            short_clean = asked;
        } else if clean.is_none() {
            let asked = secs();
            match listings(&nodes, &with_new).await {
                Ok(lists) => {
                    problems = placement_problems(&lists, &want_after, &written);
                    if problems.is_empty() {
                        // The statuses showed it (no hints, every count exact), the
                        // listings taken since confirm it.
                        clean = Some(answered);
                        clean_verified = secs();
                        eprintln!(
                            "  {answered:6.2} s: every node stores exactly its documents \
                             (listings confirm at {clean_verified:.2} s)"
                        );
                    } else {
                        short_clean = asked;
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        if last_progress.elapsed() >= PROGRESS {
            last_progress = Instant::now();
            eprintln!(
                "  {answered:6.2} s: {NEW} docs {new_docs}/{}; strays {strays}; partitions \
                 moving in {moving_in} out {moving_out}; handed off {handed}; acked writes {}; \
                 status poll {:.2} s; load average {}{}",
                new_want.len(),
                workload.acked(),
                answered - asked,
                load_average(),
                if problems.len() <= 3 {
                    format!("; {}", problems.join("; "))
                } else {
                    String::new()
                }
            );
        }
        if t0.elapsed() > bound {
            panic!(
                "documents still moving {bound:?} after {NEW} started (at R: {at_r:?}, clean: \
                 {clean:?}):\n  {}\n{}",
                first(&problems, 12),
                report(&nodes, &with_new).await
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let at_r_s = at_r.expect("measured");
    let clean_s = clean.expect("measured");
    let t_clean = t0 + Duration::from_secs_f64(clean_s);
    let move_load_avg = load_average();

    // 5. Writers stopped; nothing lost.
    let acked_at_clean = workload.acked();
    workload.stop().await;
    stop_new.store(true, Ordering::Relaxed);
    let new_failures = new_writer.await.expect("the new node's writer");
    let (acked, attempted, writes_before, writes_during) = {
        let h = workload.history.lock().expect("history");
        (
            h.acked(),
            h.attempted(),
            WriteStats::of(&h, t_writers, t_add),
            WriteStats::of(&h, t0, t_clean),
        )
    };
    eprintln!(
        "MOVE: writers stopped: {acked} writes acknowledged of {attempted} attempted \
         ({} while documents moved)",
        acked_at_clean - acked_before
    );
    let lists_after = wait_placed(&nodes, &after, &docs, &none, "after the writes", bound).await;

    // Copies moved: those n10 took and any other copy that appeared.
    let new_copies = lists_after[NEW].len();
    let others_gained: usize = ids
        .iter()
        .map(|id| {
            lists_after[id]
                .keys()
                .filter(|d| !lists_before[id].contains_key(*d))
                .count()
        })
        .sum();
    let dropped: usize = ids
        .iter()
        .map(|id| {
            lists_before[id]
                .keys()
                .filter(|d| !lists_after[id].contains_key(*d))
                .count()
        })
        .sum();
    let moved = new_copies + others_gained;
    let ideal = (R * d) as f64 / (NODES + 1) as f64;
    let ratio = moved as f64 / ideal;

    // Metrics of the move.
    let new_metrics = metrics(&nodes.client(NEW)).await;
    let bytes_in: u64 = new_metrics
        .lines()
        .filter(|l| l.starts_with("concordant_peer_bytes_received_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let new_applied = sample(&new_metrics, "concordant_remote_changes_applied_total");
    let new_duplicates = sample(&new_metrics, "concordant_duplicate_changes_total");
    let [handed_off, wants, repair_sent, reconcile_bytes, syncs] = {
        let (now, then) = (counters(&nodes, &with_new).await, counters_before);
        [0, 1, 2, 3, 4].map(|k| now[k] - then[k])
    };

    // Nothing lost: the workload's documents and a sample of the others read through
    // every node.
    let sample_docs: Vec<usize> = (0..sample_n.min(d))
        .map(|k| k * d / sample_n.min(d))
        .filter(|i| !written.contains(&doc(*i)))
        .collect();
    let mut read: Vec<String> = workload_docs.clone();
    read.extend(sample_docs.iter().map(|&i| doc(i)));
    let t_read = Instant::now();
    let mut views = Vec::new();
    let mut wrong = Vec::new();
    for id in &with_new {
        let got = read_through(&nodes, id, &read).await;
        for (d, json) in &got {
            if written.contains(d) {
                continue;
            }
            let i: usize = d[2..].parse().expect("a loaded id");
            if *json != loaded_json(i) {
                wrong.push(format!("{d} through {id}: {json}"));
            }
        }
        views.push(ReplicaState::new(
            id,
            got.into_iter().map(|(d, j)| (d, Vec::new(), j)),
        ));
    }
    let verdict = check(&workload.history.lock().expect("history"), &views);
    eprintln!(
        "CHECK: {} documents read through each of {} nodes in {:.1} s; checker: {verdict}",
        read.len(),
        with_new.len(),
        t_read.elapsed().as_secs_f64()
    );
    assert!(
        wrong.is_empty(),
        "loaded documents changed:\n  {}",
        first(&wrong, 10)
    );
    assert!(
        verdict.is_ok(),
        "acknowledged writes lost or reads differing:\n{verdict}\n{}",
        report(&nodes, &with_new).await
    );

    // The figures.
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    eprintln!("RESULT load: {d} documents in {load_s:.1} s = {load_rate:.0}/s through the API");
    eprintln!(
        "RESULT moved: {moved} copies ({NEW} took {new_copies}, other nodes gained \
         {others_gained}; {dropped} dropped, {handed_off} counted handed off) vs ideal \
         R*D/(N+1) = {ideal:.0}: {ratio:.3}x (the placement moves {placement_moves} = \
         {:.3}x); target <= {TARGET_MOVED_RATIO}x {}",
        placement_moves as f64 / ideal,
        met(ratio <= TARGET_MOVED_RATIO)
    );
    eprintln!(
        "RESULT at R: every partition at {R} replicas {at_r_s:.2} s after {NEW} started \
         (still short at {short_r:.2} s; serving after {serving_s:.2} s); target <= \
         {TARGET_AT_R_S} s {}",
        met(at_r_s <= TARGET_AT_R_S)
    );
    eprintln!(
        "RESULT clean: every document on exactly its replicas, no hints, {clean_s:.2} s after \
         {NEW} started (still not at {short_clean:.2} s; confirmed by every listing at \
         {clean_verified:.2} s; peak strays {}, peak partitions moving {}; slowest status \
         poll of the 10 nodes {slowest_poll:.2} s)",
        peak.0, peak.1
    );
    eprintln!("RESULT writes before add-node: {}", writes_before.line());
    eprintln!(
        "RESULT writes while documents moved ({NEW} start to clean): {}; first failures at \
         {NEW}: {new_failures:?}",
        writes_during.line()
    );
    eprintln!(
        "RESULT lost: none: {acked} acknowledged writes ({} while documents moved) all on \
         every read; {} loaded documents sampled unchanged",
        acked_at_clean - acked_before,
        sample_docs.len()
    );
    eprintln!(
        "RESULT traffic: {NEW} received {bytes_in} bytes from peers ({:.0} per document it \
         took), applied {new_applied} remote changes ({new_duplicates} duplicates); in the \
         cluster since add-node: {wants} documents asked by bulk repair, {repair_sent} changes \
         sent by it, {reconcile_bytes} bytes of reconciliation, {syncs} sync sessions",
        bytes_in as f64 / new_copies.max(1) as f64
    );
    eprintln!(
        "RESULT load average: {load_start_avg} at the start, {move_load_avg} when the move \
         ended; {:.0} s in all",
        t_all.elapsed().as_secs_f64()
    );
    let figures = json!({
        "bench": "scale_out_move",
        "nodes_before": NODES,
        "replicas": R,
        "docs": d,
        "anti_entropy_ms": ae_ms,
        "tick_ms": tick_ms,
        "cache_docs": cache_docs,
        "load_s": load_s,
        "load_docs_per_s": load_rate,
        "load_placed_s": placed_s,
        "add_node_s": add_s,
        "serving_s": serving_s,
        "at_r_s": at_r_s,
        "at_r_short_s": short_r,
        "clean_s": clean_s,
        "clean_short_s": short_clean,
        "slowest_status_poll_s": slowest_poll,
        "writes_before": writes_before.json(),
        "writes_during_move": writes_during.json(),
        "moved": moved,
        "moved_new_node": new_copies,
        "moved_others": others_gained,
        "dropped": dropped,
        "handed_off": handed_off,
        "moved_ideal": ideal,
        "moved_ratio": ratio,
        "placement_moves": placement_moves,
        "new_node_bytes_received": bytes_in,
        "new_node_changes_applied": new_applied,
        "new_node_duplicate_changes": new_duplicates,
        "repair_wants": wants,
        "repair_changes_sent": repair_sent,
        "reconcile_bytes": reconcile_bytes,
        "sync_sessions": syncs,
        "writes_acked": acked,
        "writes_acked_during_move": acked_at_clean - acked_before,
        "writes_attempted": attempted,
        "lost": 0,
        "peak_strays": peak.0,
        "load_average_start": load_start_avg,
        "load_average_move_end": move_load_avg,
    });
    println!("{figures}");
}
