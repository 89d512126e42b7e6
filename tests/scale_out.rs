//! Documents on R of N nodes (`replicas = R`) with real `concordant node` processes: each
//! node stores only the documents it replicates and serves every document, forwarding to a
//! replica; a write with no replica reachable is kept as a hint and handed over later.
//!
//! - 6 nodes, R = 2 (mesh and ring): 60 documents each written through a different node;
//!   every one readable through every node with the same JSON; each node stores exactly
//!   the documents whose replicas include it;
//! - one node SIGKILLed (mesh and ring): every document still read and written through
//!   every live node; the node restarted ends with every write to its documents;
//! - both replicas of a document SIGKILLed (mesh): a write to it is hinted, a read answers
//!   503 naming the replicas; once they are back they have the write and the hint is gone;
//! - a 7th node added, then an original node removed, while writers write (mesh with 2
//!   copies and with 1, ring with 2): nothing acknowledged is lost and every document ends
//!   on exactly its replicas under the final topology file;
//! - a node killed while it fills partitions it took over (their other replicas down) fills
//!   them again after its restart, and is filled once they are back.
//!
//! Every wait is bounded and polls a condition; a failure reports every node's status and
//! the tail of its log. The scenarios run one at a time (each runs six or seven nodes).

mod common;

#[allow(dead_code)]
#[path = "membership/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use common::checker::{check, shared_history, ReplicaState};
use common::procs::access::{linked_peers, listing_heads, Access};
use common::procs::workload::{create_docs, Workload, WriteSpec};
use common::procs::{free_base_port, peers_line, ProcCluster};
use concordant::config::Config;
use concordant::membership::Membership;
use concordant::topology::Topology;
use harness::{
    cli_ok, mesh_links, ring_links, tail, wait_acked, wait_knows_removed, Nodes, SERIAL,
};
use hyper::Method;
use serde_json::{json, Value};

/// Nodes of every scenario (before membership changes).
const NODES: usize = 6;
/// Replicas of each document.
const R: usize = 2;
/// Documents of the placement and failure scenarios.
const DOCS: usize = 60;
/// Bound on links coming up or reacting to a kill, and on writes becoming visible.
const SETTLE: Duration = Duration::from_secs(30);
/// Bound on documents moving after a membership change or a restart.
const MOVES: Duration = Duration::from_secs(60);
/// Requests in flight at once towards one node when reading many documents.
const PARALLEL: usize = 10;
/// Poll period of the waits that read every document.
const POLL: Duration = Duration::from_millis(200);
/// Log lines of each node shown in a report.
const LOG_LINES: usize = 8;

fn doc(i: usize) -> String {
    format!("so-{i:02}")
}

/// A node the test talks to.
#[derive(Clone)]
struct Member {
    id: String,
    access: Access,
}

impl Member {
    fn client(&self) -> concordant::client::Client {
        match &self.access {
            Access::Client(c) => c.clone(),
            Access::Netns { .. } => unreachable!("no namespaces here"),
        }
    }
}

/// The running nodes of a [`ProcCluster`].
fn members(c: &ProcCluster) -> Vec<Member> {
    c.started()
        .into_iter()
        .map(|i| Member {
            id: c.id(i),
            access: c.access(i),
        })
        .collect()
}

/// The running nodes of a [`Nodes`].
fn node_members(nodes: &Nodes) -> Vec<Member> {
    nodes
        .running()
        .into_iter()
        .map(|id| Member {
            access: nodes.access(&id),
            id,
        })
        .collect()
}

/// The tail of the newest log of `id` in `logs` (`<id>-<k>.log`, highest k).
fn log_tail(logs: &Path, id: &str) -> String {
    let newest = std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let k: usize = name
                .strip_prefix(&format!("{id}-"))?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((k, e.path()))
        })
        .max();
    match newest {
        Some((_, path)) => tail(
            &std::fs::read_to_string(path).unwrap_or_default(),
            LOG_LINES,
        ),
        None => "(no log)".into(),
    }
}

/// One line per node of `all` (stopped or not): peers (L linked, C connected, D down),
/// what `/v1/status` says of replicas, documents, hints and moves; then its log's tail.
async fn report(running: &[Member], all: &[String], logs: &Path) -> String {
    let mut out = String::new();
    for id in all {
        let Some(m) = running.iter().find(|m| &m.id == id) else {
            let _ = writeln!(
                out,
                "  {id}: stopped\n--- {id} log tail:\n{}",
                log_tail(logs, id)
            );
            continue;
        };
        let peers = peers_line(&m.access).await;
        let status = match m.access.status().await {
            Ok(s) => format!(
                "replicas {} partitions {} moving {} docs {} hints {} handed_off {} forwarding {}",
                s["replicas"],
                s["partitions"],
                s["partitions_moving"],
                s["docs"],
                s["hints"],
                s["handed_off"],
                s["forwarding"]
            ),
            Err(e) => format!("no status: {e}"),
        };
        let listed = match m.access.docs().await {
            Ok(list) => listing_heads::<BTreeMap<_, _>>(&list)
                .into_keys()
                .collect::<Vec<_>>()
                .join(","),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(
            out,
            "  {id}: peers [{peers}]\n    {status}\n    stores [{listed}]\n--- {id} log tail:\n{}",
            log_tail(logs, id)
        );
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

/// What is wrong with where `docs` are stored: each running node must store exactly the
/// documents of `docs` it replicates under `topo` (nothing else), the replicas of each
/// document that run must have the same heads, and every node must have no hint and no
/// partition moving.
async fn placement_problems(running: &[Member], topo: &Topology, docs: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    // doc -> (node, heads) over the running replicas.
    let mut heads: BTreeMap<&str, Vec<(String, Vec<String>)>> = BTreeMap::new();
    for m in running {
        let list = match m.access.docs().await {
            Ok(list) => listing_heads::<BTreeMap<_, _>>(&list),
            Err(e) => {
                problems.push(format!("{}: no listing: {e}", m.id));
                continue;
            }
        };
        let want: BTreeSet<&str> = docs
            .iter()
            .map(String::as_str)
            .filter(|d| topo.holds(&m.id, d))
            .collect();
        let have: BTreeSet<&str> = list.keys().map(String::as_str).collect();
        let lacks: Vec<&&str> = want.difference(&have).collect();
        let extra: Vec<&&str> = have.difference(&want).collect();
        if !lacks.is_empty() || !extra.is_empty() {
            problems.push(format!(
                "{} stores {} documents, lacks {lacks:?}, stores {extra:?} it does not replicate",
                m.id,
                have.len()
            ));
        }
        for d in docs {
            if let Some(h) = list.get(d) {
                heads
                    .entry(d.as_str())
                    .or_default()
                    .push((m.id.clone(), h.clone()));
            }
        }
        match m.access.status().await {
            Ok(s) => {
                let moving = &s["partitions_moving"];
                if s["hints"] != 0 || moving["in"] != 0 || moving["out"] != 0 {
                    problems.push(format!(
                        "{}: hints {}, partitions moving {moving}",
                        m.id, s["hints"]
                    ));
                }
            }
            Err(e) => problems.push(format!("{}: no status: {e}", m.id)),
        }
    }
    for (d, at) in heads {
        if at.windows(2).any(|w| w[0].1 != w[1].1) {
            let short: Vec<String> = at
                .iter()
                .map(|(n, h)| {
                    let h: Vec<&str> = h.iter().map(|h| &h[..h.len().min(8)]).collect();
                    format!("{n} [{}]", h.join(","))
                })
                .collect();
            problems.push(format!("{d}: replicas differ: {}", short.join(" vs ")));
        }
    }
    problems
}

/// Every document of `docs` read through `m` (in batches of [`PARALLEL`]).
async fn read_all(m: &Member, docs: &[String]) -> Vec<(String, Result<Value, String>)> {
    let client = m.client();
    let mut out = Vec::new();
    for chunk in docs.chunks(PARALLEL) {
        let reads = chunk.iter().map(|d| concordant::client::get(&client, d));
        let got = futures_util::future::join_all(reads).await;
        out.extend(
            chunk
                .iter()
                .cloned()
                .zip(got.into_iter().map(|r| r.map_err(|e| e.to_string()))),
        );
    }
    out
}

/// Documents whose JSON read through a node of `running` is not the one in `want`.
async fn read_problems(running: &[Member], want: &BTreeMap<String, Value>) -> Vec<String> {
    let docs: Vec<String> = want.keys().cloned().collect();
    let mut problems = Vec::new();
    for m in running {
        for (d, got) in read_all(m, &docs).await {
            match got {
                Ok(json) if json == want[&d] => {}
                Ok(json) => {
                    problems.push(format!("{d} through {}: {json}, want {}", m.id, want[&d]))
                }
                Err(e) => problems.push(format!("{d} through {}: {e}", m.id)),
            }
        }
    }
    problems
}

/// A cluster of [`NODES`] processes with each document on [`R`] of them.
struct Scale {
    c: ProcCluster,
    /// The placement of the file.
    topo: Topology,
    /// Every document written, with the JSON it must have.
    want: BTreeMap<String, Value>,
}

impl Scale {
    /// Starts the cluster (`mesh` or `ring`) and waits until every link is up.
    async fn start(kind: &str) -> Scale {
        let t = Instant::now();
        let c = ProcCluster::start_with(NODES, kind, Some(R)).await;
        let topo = c.config.topology();
        assert_eq!(topo.replicas(), R, "the file's placement");
        let s = Scale {
            c,
            topo,
            want: BTreeMap::new(),
        };
        s.wait_links(&[]).await;
        eprintln!("{kind}: {NODES} nodes up and linked in {:?}", t.elapsed());
        s
    }

    fn ids(&self) -> Vec<String> {
        self.c.ids()
    }

    fn logs(&self) -> std::path::PathBuf {
        self.c.dir.path().join("logs")
    }

    async fn report(&self) -> String {
        report(&members(&self.c), &self.ids(), &self.logs()).await
    }

    fn member(&self, i: usize) -> Member {
        Member {
            id: self.c.id(i),
            access: self.c.access(i),
        }
    }

    fn index(&self, id: &str) -> usize {
        self.ids()
            .iter()
            .position(|x| x == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The sorted replicas of `d` under the file's placement.
    fn replicas(&self, d: &str) -> Vec<String> {
        let mut r: Vec<String> = self
            .topo
            .replicas_of(d)
            .into_iter()
            .map(str::to_string)
            .collect();
        r.sort();
        r
    }

    /// Waits until, at every running node, every peer the topology links is connected and
    /// no node of `dead` is connected or still believed up by a node linking it (a killed
    /// node's failure noticed, a ring healed around it).
    async fn wait_links(&self, dead: &[String]) {
        let start = Instant::now();
        loop {
            let mut wrong = Vec::new();
            for m in members(&self.c) {
                let status = match m.access.status().await {
                    Ok(s) => s,
                    Err(e) => {
                        wrong.push(format!("{}: {e}", m.id));
                        continue;
                    }
                };
                let peers = status["peers"].as_array().cloned().unwrap_or_default();
                let linked = linked_peers(&status);
                if linked.is_empty() {
                    wrong.push(format!("{}: links nothing", m.id));
                }
                for p in &peers {
                    let id = p["id"].as_str().unwrap_or_default().to_string();
                    let is_dead = dead.contains(&id);
                    let ok = if is_dead {
                        p["connected"] != true && (p["linked"] != true || p["down"] == true)
                    } else {
                        p["linked"] != true || p["connected"] == true
                    };
                    if !ok {
                        wrong.push(format!("{} sees {id}: {p}", m.id));
                    }
                }
            }
            if wrong.is_empty() {
                return;
            }
            if start.elapsed() > SETTLE {
                panic!(
                    "links not up (dead: {dead:?}) within {SETTLE:?}:\n  {}\n{}",
                    first(&wrong, 10),
                    self.report().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes each of [`DOCS`] documents through node `i % NODES` (a replica of it or not,
    /// several nodes at once); every write must be answered.
    async fn write_docs(&mut self) {
        let t = Instant::now();
        let n = self.c.len();
        let writers = (0..n).map(|at| {
            let m = self.member(at);
            async move {
                let mut done = Vec::new();
                for i in (at..DOCS).step_by(n) {
                    let d = doc(i);
                    let value = json!({"title": d, "n": i, "via": m.id});
                    let request = json!({"ops": [
                        {"op": "set", "path": ["title"], "value": d},
                        {"op": "set", "path": ["n"], "value": i},
                        {"op": "set", "path": ["via"], "value": m.id},
                    ]});
                    let answer = m.access.op(&d, &request).await;
                    done.push((d, value, m.id.clone(), answer));
                }
                done
            }
        });
        let written = futures_util::future::join_all(writers).await;
        let mut failed = Vec::new();
        for (d, value, via, answer) in written.into_iter().flatten() {
            match answer {
                Ok(_) => {
                    self.want.insert(d, value);
                }
                Err(e) => failed.push(format!("{d} through {via}: {e}")),
            }
        }
        if !failed.is_empty() {
            panic!(
                "writes of new documents failed:\n  {}\n{}",
                first(&failed, 10),
                self.report().await
            );
        }
        eprintln!("{DOCS} documents written in {:?}", t.elapsed());
    }

    /// Waits until every running node stores exactly the written documents it replicates
    /// (replicas with the same heads, no hint, nothing moving) and reads every document
    /// as wanted; how long it took. Panics with `what`, the problems and a report past
    /// `within`.
    async fn wait_settled(&self, what: &str, within: Duration) -> Duration {
        let start = Instant::now();
        let docs: Vec<String> = self.want.keys().cloned().collect();
        loop {
            let running = members(&self.c);
            let mut problems = placement_problems(&running, &self.topo, &docs).await;
            if problems.is_empty() {
                problems = read_problems(&running, &self.want).await;
            }
            if problems.is_empty() {
                return start.elapsed();
            }
            if start.elapsed() > within {
                panic!(
                    "{what}: not settled within {within:?}:\n  {}\n{}",
                    first(&problems, 12),
                    self.report().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `/v1/status` of node `i`.
    async fn status(&self, i: usize) -> Value {
        match self.c.access(i).status().await {
            Ok(s) => s,
            Err(e) => panic!("{} status: {e}\n{}", self.c.id(i), self.report().await),
        }
    }

    /// What node `i` stores.
    async fn listing(&self, i: usize) -> BTreeMap<String, Vec<String>> {
        match self.c.access(i).docs().await {
            Ok(list) => listing_heads::<BTreeMap<_, _>>(&list),
            Err(e) => panic!("{} listing: {e}\n{}", self.c.id(i), self.report().await),
        }
    }
}

/// Bullet 1: placement with every node up.
async fn stores_only_its_replicas(kind: &str) {
    let _serial = SERIAL.lock().await;
    let t = Instant::now();
    let mut s = Scale::start(kind).await;
    s.write_docs().await;
    let took = s.wait_settled("placement", SETTLE).await;
    eprintln!("{kind}: every document placed and readable everywhere after {took:?}");

    let docs: Vec<String> = s.want.keys().cloned().collect();
    for i in 0..NODES {
        let id = s.c.id(i);
        let stored: BTreeSet<String> = s.listing(i).await.into_keys().collect();
        let want: BTreeSet<String> = docs
            .iter()
            .filter(|d| s.topo.holds(&id, d))
            .cloned()
            .collect();
        assert_eq!(stored, want, "{id} stores other documents than its own");
        assert!(
            (10..=30).contains(&stored.len()),
            "{id} stores {} of {DOCS} documents, not about a third ({R} of {NODES})",
            stored.len()
        );
        let status = s.status(i).await;
        assert_eq!(status["replicas"], R, "{id}: status {status}");
        assert_eq!(
            status["hints"], 0,
            "{id}: hints with every node up: {status}"
        );
        assert_eq!(status["docs"], stored.len(), "{id}: status docs vs listing");
        eprintln!(
            "{kind}: {id} stores {} documents, replicates {} partitions",
            stored.len(),
            status["partitions"]
        );
    }
    for d in &docs {
        let holders: Vec<String> = (0..NODES)
            .map(|i| s.c.id(i))
            .filter(|id| s.topo.holds(id, d))
            .collect();
        assert_eq!(holders.len(), R, "{d}: replicas {holders:?}");
    }
    eprintln!("{kind}: placement scenario took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_node_stores_only_documents_it_replicates() {
    stores_only_its_replicas("mesh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_node_stores_only_documents_it_replicates() {
    stores_only_its_replicas("ring").await;
}

/// Bullet 2: one node SIGKILLed, then restarted.
async fn survives_a_killed_node(kind: &str) {
    let _serial = SERIAL.lock().await;
    let t = Instant::now();
    let mut s = Scale::start(kind).await;
    s.write_docs().await;
    s.wait_settled("before the kill", SETTLE).await;

    let victim = 2;
    let vid = s.c.id(victim);
    let status = s.c.kill(victim).await;
    assert!(!status.success(), "{vid} was killed: {status}");
    let t_kill = Instant::now();
    s.wait_links(std::slice::from_ref(&vid)).await;
    eprintln!(
        "{kind}: {vid} killed; its failure noticed everywhere after {:?}",
        t_kill.elapsed()
    );

    // A new key through every live node to every document, several nodes at once.
    let live = members(&s.c);
    let docs: Vec<String> = s.want.keys().cloned().collect();
    let writers = live.iter().map(|m| {
        let docs = &docs;
        async move {
            let mut failed = Vec::new();
            for d in docs {
                let key = format!("after-kill-{}", m.id);
                let request = json!({"ops": [{"op": "set", "path": [key], "value": m.id}]});
                if let Err(e) = m.access.op(d, &request).await {
                    failed.push(format!("{d} through {}: {e}", m.id));
                }
            }
            failed
        }
    });
    let failed: Vec<String> = futures_util::future::join_all(writers)
        .await
        .into_iter()
        .flatten()
        .collect();
    if !failed.is_empty() {
        panic!(
            "{kind}: writes with {vid} down failed:\n  {}\n{}",
            first(&failed, 12),
            s.report().await
        );
    }
    for m in &live {
        for d in &docs {
            let json = s.want.get_mut(d).expect("wanted");
            json[format!("after-kill-{}", m.id)] = json!(m.id);
        }
    }
    eprintln!(
        "{kind}: {} writes through {} live nodes answered",
        docs.len() * live.len(),
        live.len()
    );

    // Each write read back through another live node, then every document through every
    // live node (a replica receives the other replica's writes by replication).
    let start = Instant::now();
    for (j, m) in live.iter().enumerate() {
        let other = &live[(j + 1) % live.len()];
        let key = format!("after-kill-{}", m.id);
        loop {
            let missing: Vec<String> = read_all(other, &docs)
                .await
                .into_iter()
                .filter(|(_, got)| got.as_ref().map_or(true, |v| v[&key] != json!(m.id)))
                .map(|(d, got)| format!("{d}: {got:?}"))
                .collect();
            if missing.is_empty() {
                break;
            }
            if start.elapsed() > SETTLE {
                panic!(
                    "{kind}: writes through {} not readable through {} within {SETTLE:?} \
                     ({vid} down):\n  {}\n{}",
                    m.id,
                    other.id,
                    first(&missing, 10),
                    s.report().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let took = s.wait_settled(&format!("{vid} down"), SETTLE).await;
    eprintln!("{kind}: with {vid} down, every write readable everywhere after {took:?}");

    // Back: it ends with every write to the documents it replicates.
    let t_back = Instant::now();
    s.c.restart(victim).await;
    s.wait_links(&[]).await;
    let own: Vec<String> = docs
        .iter()
        .filter(|d| s.topo.holds(&vid, d))
        .cloned()
        .collect();
    let want: BTreeMap<String, Value> =
        own.iter().map(|d| (d.clone(), s.want[d].clone())).collect();
    let back = [s.member(victim)];
    loop {
        // Its own copies (a replica serves what it stores).
        let mut problems = placement_problems(&back, &s.topo, &docs).await;
        if problems.is_empty() {
            problems = read_problems(&back, &want).await;
        }
        if problems.is_empty() {
            break;
        }
        if t_back.elapsed() > MOVES {
            panic!(
                "{kind}: {vid} restarted lacks writes to its {} documents after {MOVES:?}:\n  \
                 {}\n{}",
                own.len(),
                first(&problems, 12),
                s.report().await
            );
        }
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "{kind}: {vid} restarted has every write to its {} documents {:?} after its restart",
        own.len(),
        t_back.elapsed()
    );
    s.wait_settled("after the restart", SETTLE).await;
    eprintln!("{kind}: kill scenario took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_serves_every_document_with_a_node_killed() {
    survives_a_killed_node("mesh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_serves_every_document_with_a_node_killed() {
    survives_a_killed_node("ring").await;
}

/// Bullet 3: both replicas of a document down: a hinted write, a 503 read, the hint handed
/// over once they are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_hints_a_write_while_both_replicas_are_down() {
    let _serial = SERIAL.lock().await;
    let t = Instant::now();
    let mut s = Scale::start("mesh").await;
    s.write_docs().await;
    s.wait_settled("before the kills", SETTLE).await;

    let d = doc(0);
    let replicas = s.replicas(&d);
    let dead: Vec<usize> = replicas.iter().map(|id| s.index(id)).collect();
    let x = (0..NODES)
        .find(|i| !dead.contains(i))
        .expect("a node that is not a replica");
    let xid = s.c.id(x);
    for &i in &dead {
        s.c.kill(i).await;
    }
    s.wait_links(&replicas).await;
    eprintln!("both replicas {replicas:?} of {d} killed and noticed; writing through {xid}");

    let client = s.member(x).client();
    let path = format!("/v1/docs/{d}/ops");
    let body = json!({"ops": [{"op": "set", "path": ["hinted"], "value": xid}]});
    let answer = client
        .request(Method::POST, &path, Some(body.to_string().into_bytes()))
        .await
        .unwrap_or_else(|e| panic!("write to {d} through {xid}: {e}"));
    if answer.status != 200 {
        panic!(
            "a write to {d} with both replicas down answered {} through {xid}: {}\n{}",
            answer.status,
            String::from_utf8_lossy(&answer.body),
            s.report().await
        );
    }
    s.want.get_mut(&d).expect("wanted")["hinted"] = json!(xid);
    let status = s.status(x).await;
    assert!(
        status["hints"].as_u64().is_some_and(|h| h >= 1),
        "{xid} took a hinted write of {d} but counts no hint: {status}"
    );
    assert!(
        s.listing(x).await.contains_key(&d),
        "{xid} does not list {d}, which it stores as a hint"
    );

    // A read has no replica to answer: 503 naming both.
    let read = client
        .request(Method::GET, &format!("/v1/docs/{d}"), None)
        .await
        .unwrap_or_else(|e| panic!("read {d} through {xid}: {e}"));
    let text = String::from_utf8_lossy(&read.body).into_owned();
    assert_eq!(
        read.status, 503,
        "a read of {d} with both replicas down through {xid}: {text}"
    );
    let named: BTreeSet<String> = read
        .json()
        .and_then(|j| j["replicas"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    assert_eq!(
        named,
        replicas.iter().cloned().collect::<BTreeSet<_>>(),
        "the 503 should name the replicas of {d}: {text}"
    );
    assert!(
        read.json().is_some_and(|j| j["error"].is_string()),
        "the 503 has no error message: {text}"
    );
    eprintln!(
        "{xid}: write hinted (hints {}), read answered 503: {text}",
        status["hints"]
    );

    // Back: the hinted write ends on both replicas (each read through its own API, which
    // serves its own copy), and the hint is dropped.
    let t_back = Instant::now();
    for &i in &dead {
        s.c.restart(i).await;
    }
    s.wait_links(&[]).await;
    let want = &s.want[&d];
    loop {
        let mut problems = Vec::new();
        for &i in &dead {
            match s.c.access(i).get(&d).await {
                Ok(json) if &json == want => {}
                Ok(json) => problems.push(format!("{} has {json}, want {want}", s.c.id(i))),
                Err(e) => problems.push(format!("{}: {e}", s.c.id(i))),
            }
        }
        let status = s.status(x).await;
        if status["hints"] != 0 {
            problems.push(format!("{xid}: hints {}", status["hints"]));
        }
        if s.listing(x).await.contains_key(&d) {
            problems.push(format!("{xid} still stores {d}"));
        }
        if problems.is_empty() {
            break;
        }
        if t_back.elapsed() > MOVES {
            panic!(
                "the hinted write to {d} not handed over within {MOVES:?} of the replicas' \
                 restart:\n  {}\n{}",
                first(&problems, 10),
                s.report().await
            );
        }
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "the hinted write is on {replicas:?} and dropped at {xid} {:?} after their restart",
        t_back.elapsed()
    );
    s.wait_settled("after the hand-over", SETTLE).await;
    eprintln!("hint scenario took {:?}", t.elapsed());
}

/// Bullet 4: a node added, then an original node removed, under writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_grows_and_shrinks_under_writes_keeping_every_write_placed() {
    grows_and_shrinks("mesh", R).await;
}

/// On a ring, documents move hop by hop: a node hands what it no longer replicates to
/// replicas it may not be linked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_grows_and_shrinks_under_writes_keeping_every_write_placed() {
    grows_and_shrinks("ring", R).await;
}

/// With one copy of each document, the leaving node holds the only copy of its documents:
/// it hands them to their new replicas before it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_of_single_copies_grows_and_shrinks_under_writes_keeping_every_write_placed() {
    grows_and_shrinks("mesh", 1).await;
}

async fn grows_and_shrinks(kind: &str, r: usize) {
    let links = |ids: &[&str]| {
        if kind == "ring" {
            ring_links(ids)
        } else {
            mesh_links(ids)
        }
    };
    let _serial = SERIAL.lock().await;
    let t = Instant::now();
    let mut nodes = Nodes::of(ProcCluster::init_with(NODES, kind, Some(r)));
    let file = nodes.file();
    let file_s = file.display().to_string();
    let ids: Vec<String> = nodes.init.ids();
    for id in &ids {
        nodes.start(id, &file).await;
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    nodes.wait_links(&links(&refs)).await;
    let docs: Vec<String> = (0..24).map(|i| format!("grow-{i:02}")).collect();
    create_docs(&nodes.access("n1"), &docs).await;
    let mut workload = Workload::new(shared_history());
    let write_at = |workload: &mut Workload, nodes: &Nodes, id: &str| {
        let spec = WriteSpec::endless(&docs, json!("local"));
        workload.spawn(id, nodes.access(id), 1, &spec);
        let spec = WriteSpec::endless(&docs, json!(1));
        workload.spawn(id, nodes.access(id), 1, &spec);
    };
    for id in &ids {
        write_at(&mut workload, &nodes, id);
    }
    wait_acked(&workload, &refs, 60).await;
    eprintln!("{NODES} nodes up, writers writing after {:?}", t.elapsed());

    // n7 joins.
    let base = free_base_port(1);
    let (peer, api) = (
        format!("127.0.0.1:{}", base + 1),
        format!("127.0.0.1:{}", base + 1001),
    );
    let t_add = Instant::now();
    let ran = cli_ok(&[
        "add-node", "--config", &file_s, "--id", "n7", "--peer", &peer, "--api", &api, "--node",
        "n1",
    ])
    .await;
    eprintln!("add-node n7:\n{}", ran.text.trim_end());
    nodes.start("n7", &file).await;
    let seven: Vec<&str> = refs.iter().copied().chain(["n7"]).collect();
    nodes.wait_topology(&seven, &seven, &[]).await;
    nodes.wait_links(&links(&seven)).await;
    write_at(&mut workload, &nodes, "n7");
    wait_acked(&workload, &seven, 60).await;
    eprintln!(
        "n7 joined and written to {:?} after add-node",
        t_add.elapsed()
    );

    // n2 leaves for good.
    let t_remove = Instant::now();
    let ran = cli_ok(&["remove-node", "--config", &file_s, "--id", "n2"]).await;
    eprintln!("remove-node n2:\n{}", ran.text.trim_end());
    wait_knows_removed(&nodes, "n2").await;
    let status = nodes.stop("n2").await;
    let live: Vec<&str> = seven.iter().copied().filter(|id| *id != "n2").collect();
    nodes.wait_topology(&live, &live, &["n2"]).await;
    nodes.wait_links(&links(&live)).await;
    eprintln!(
        "n2 removed and stopped ({status}) {:?} after remove-node",
        t_remove.elapsed()
    );
    wait_acked(&workload, &live, 60).await;
    workload.stop().await;
    eprintln!(
        "writers stopped: {} writes acknowledged ({} attempted)",
        workload.acked(),
        workload.history.lock().expect("history").attempted()
    );

    // The final placement: every document on exactly its replicas under the live topology
    // the same changes make (a ring's placement depends on where nodes were added and
    // removed, not on the final file alone: a removal moves only the leaving node's share).
    let config = Config::load(&file).expect("the file add-node and remove-node wrote");
    let final_ids: Vec<String> = config.topology().nodes().to_vec();
    assert_eq!(final_ids, live, "the nodes of the final file");
    let mut membership = Membership::from_config(&nodes.init.config);
    let addr = |a: &str| a.parse().expect("an address");
    membership
        .propose_add("n1", "n7", addr(&peer), addr(&api))
        .expect("n7 added");
    membership.propose_remove("n1", "n2").expect("n2 removed");
    let topo = membership.topology();
    let placed: Vec<&str> = topo.nodes().iter().map(String::as_str).collect();
    assert_eq!(placed, live, "the nodes of the live topology");
    assert_eq!(topo.replicas(), r, "the final file's replicas");
    let logs = nodes.path("logs");
    let all: Vec<String> = seven.iter().map(|s| s.to_string()).collect();
    let t_settle = Instant::now();
    loop {
        let running = node_members(&nodes);
        let problems = placement_problems(&running, &topo, &docs).await;
        if problems.is_empty() {
            break;
        }
        if t_settle.elapsed() > MOVES {
            panic!(
                "documents not on exactly their replicas under the final topology within \
                 {MOVES:?} of the writes' end:\n  {}\n{}",
                first(&problems, 12),
                report(&running, &all, &logs).await
            );
        }
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "every document on exactly its replicas {:?} after the writes stopped ({:?} after \
         add-node)",
        t_settle.elapsed(),
        t_add.elapsed()
    );
    // Documents did move: n7 got some, and each live node that replicated a document it no
    // longer replicates handed documents off.
    let before = nodes.init.config.topology();
    let moved: Vec<&String> = docs
        .iter()
        .filter(|d| before.replicas_of(d) != topo.replicas_of(d))
        .collect();
    let to_n7 = docs.iter().filter(|d| topo.holds("n7", d)).count();
    eprintln!(
        "{} of {} documents changed replicas; n7 replicates {to_n7}",
        moved.len(),
        docs.len()
    );
    assert!(
        to_n7 > 0 && !moved.is_empty(),
        "the scenario moves nothing: pick other documents"
    );
    for m in &node_members(&nodes) {
        let dropped = docs
            .iter()
            .filter(|d| before.holds(&m.id, d) && !topo.holds(&m.id, d))
            .count();
        let status = m.access.status().await.expect("status");
        eprintln!(
            "{}: {dropped} documents to drop, handed_off {}",
            m.id, status["handed_off"]
        );
        if dropped > 0 {
            assert!(
                status["handed_off"].as_u64().is_some_and(|h| h >= 1),
                "{} no longer replicates {dropped} documents, no longer stores them, but counts \
                 none handed off: {status}",
                m.id
            );
        }
    }

    // Nothing acknowledged lost: every document read through every live node.
    let running = node_members(&nodes);
    let mut views = Vec::new();
    for m in &running {
        let mut read = Vec::new();
        for (d, got) in read_all(m, &docs).await {
            match got {
                Ok(json) => read.push((d, Vec::new(), json)),
                Err(e) => panic!(
                    "{d} through {}: {e}\n{}",
                    m.id,
                    report(&running, &all, &logs).await
                ),
            }
        }
        views.push(ReplicaState::new(&m.id, read));
    }
    let verdict = check(&workload.history.lock().expect("history"), &views);
    eprintln!("checker over the reads through {live:?}: {verdict}");
    assert!(
        verdict.is_ok(),
        "acknowledged writes lost or reads differing:\n{verdict}\n{}",
        report(&running, &all, &logs).await
    );
    eprintln!("membership scenario took {:?}", t.elapsed());
}

/// `partitions_moving.in` of `id` (partitions taken over and still filling).
async fn filling_at(nodes: &Nodes, id: &str) -> u64 {
    let status = nodes.access(id).status().await.expect("status");
    status["partitions_moving"]["in"]
        .as_u64()
        .unwrap_or_else(|| panic!("{id}: no partitions_moving.in in {status}"))
}

/// A node killed while it fills partitions it took over fills them again after its
/// restart (it keeps them in its data directory) instead of serving partial copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_filling_fills_again_after_restart() {
    let _serial = SERIAL.lock().await;
    let mut nodes = Nodes::of(ProcCluster::init_with(4, "mesh", Some(2)));
    let file = nodes.file();
    let file_s = file.display().to_string();
    // Only n1 runs: n4 is removed through it, so n1 takes over partitions that only n2 or
    // n3, which are down, can fill.
    nodes.start("n1", &file).await;
    let ran = cli_ok(&["remove-node", "--config", &file_s, "--id", "n4"]).await;
    eprintln!("remove-node n4:\n{}", ran.text.trim_end());
    let t = Instant::now();
    let taken = loop {
        let n = filling_at(&nodes, "n1").await;
        if n > 0 {
            break n;
        }
        assert!(
            t.elapsed() < SETTLE,
            "n1 took over no partition after n4's removal"
        );
        tokio::time::sleep(POLL).await;
    };
    eprintln!("n1 fills {taken} partitions; killed");
    nodes.kill("n1").await;
    nodes.start("n1", &file).await;
    assert_eq!(
        filling_at(&nodes, "n1").await,
        taken,
        "after its restart n1 should still fill the partitions it took over"
    );
    // n2 and n3 back: n1 fills from them, and once filled it stays so across a restart.
    nodes.start("n2", &file).await;
    nodes.start("n3", &file).await;
    let t = Instant::now();
    while filling_at(&nodes, "n1").await > 0 {
        assert!(t.elapsed() < SETTLE, "n1 did not fill within {SETTLE:?}");
        tokio::time::sleep(POLL).await;
    }
    eprintln!("n1 filled {:?} after n2 and n3 started", t.elapsed());
    nodes.stop("n1").await;
    nodes.start("n1", &file).await;
    assert_eq!(
        filling_at(&nodes, "n1").await,
        0,
        "filled before the restart"
    );
}

/// A node added to a running cluster fills its partitions from their other replicas
/// before it serves them (on its first start it learns from its first peer that it was
/// added, not one of the file's first nodes): with a replica down, the partitions it shares
/// with that replica wait to fill; once it is back they fill, and every document reads the
/// same through the new node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_a_running_cluster_fills_before_it_serves() {
    fills_before_serving(Some(R)).await;
}

/// The same where every node stores every document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_a_fully_replicated_cluster_fills_before_it_serves() {
    fills_before_serving(None).await;
}

async fn fills_before_serving(r: Option<usize>) {
    let _serial = SERIAL.lock().await;
    let mut nodes = Nodes::of(ProcCluster::init_with(3, "mesh", r));
    let file = nodes.file();
    let file_s = file.display().to_string();
    for id in ["n1", "n2", "n3"] {
        nodes.start(id, &file).await;
    }
    nodes.wait_links(&mesh_links(&["n1", "n2", "n3"])).await;
    let docs: Vec<String> = (0..DOCS).map(doc).collect();
    for (i, d) in docs.iter().enumerate() {
        let request = json!({"ops": [{"op": "set", "path": ["v"], "value": i}], "ack": "all"});
        nodes.access("n1").op(d, &request).await.expect("written");
    }
    // The three first nodes have nothing to fill.
    for id in ["n1", "n2", "n3"] {
        assert_eq!(filling_at(&nodes, id).await, 0, "{id} fills partitions");
    }
    let base = free_base_port(1);
    let (peer, api) = (
        format!("127.0.0.1:{}", base + 1),
        format!("127.0.0.1:{}", base + 1001),
    );
    let ran = cli_ok(&[
        "add-node", "--config", &file_s, "--id", "n4", "--peer", &peer, "--api", &api,
    ])
    .await;
    eprintln!("add-node n4:\n{}", ran.text.trim_end());
    if r.is_some() {
        nodes.stop("n2").await;
        nodes.start("n4", &file).await;
        nodes.wait_links(&mesh_links(&["n1", "n3", "n4"])).await;
        // n4 shares some partitions with n2 alone: those cannot fill while n2 is down.
        let four = Topology::new(
            concordant::config::TopologyKind::Mesh,
            ["n1", "n2", "n3", "n4"].map(String::from).to_vec(),
            Vec::new(),
        )
        .with_replicas(r)
        .expect("a placement");
        let shared = docs
            .iter()
            .filter(|d| four.holds("n4", d) && four.holds("n2", d))
            .count();
        assert!(shared > 0, "no document on n2 and n4 to test with");
        let t = Instant::now();
        loop {
            let n = filling_at(&nodes, "n4").await;
            assert!(
                n > 0,
                "n4 serves partitions it never filled (n2, their other replica, is down)"
            );
            if t.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        nodes.start("n2", &file).await;
    } else {
        nodes.start("n4", &file).await;
        nodes
            .wait_links(&mesh_links(&["n1", "n2", "n3", "n4"]))
            .await;
        // Every read through n4 finds the document, filled or not.
        for (i, d) in docs.iter().enumerate() {
            let got = nodes.access("n4").get(d).await.expect("read through n4");
            assert_eq!(got, json!({"v": i}), "{d} through n4 right after it linked");
        }
    }
    let t = Instant::now();
    while filling_at(&nodes, "n4").await > 0 {
        assert!(t.elapsed() < MOVES, "n4 did not fill within {MOVES:?}");
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "n4 filled {:?} after its partitions' replicas were up",
        t.elapsed()
    );
    let log = std::fs::read_to_string(nodes.path("logs").join("n4-1.log")).expect("n4's log");
    assert!(
        log.contains("this node joined a running cluster"),
        "n4 does not know it joined: {}",
        tail(&log, LOG_LINES)
    );
    for (i, d) in docs.iter().enumerate() {
        let got = nodes.access("n4").get(d).await.expect("read through n4");
        assert_eq!(got, json!({"v": i}), "{d} through n4");
    }
}
