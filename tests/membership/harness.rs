//! Helpers of the membership process tests: the CLI, the growing set of node processes,
//! topology and link checks, joins timed until the new node holds everything.

use super::common::checker::{check, Effect, History, ReplicaState, SharedHistory};
use super::common::procs::access::{linked_peers, links_up, listing_heads, Access};
use super::common::procs::workload::{Workload, WriteSpec};
use super::common::procs::{free_base_port, peers_line, ChildGuard, ProcCluster, BIN, POLL};
use concordant::client::Client;
use concordant::config::Config;
use hyper::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Bound on a topology change reaching every node, links re-forming, a node starting.
pub(crate) const SHORT: Duration = Duration::from_secs(30);
/// Bound on a new node catching up and on convergence once the writes stop.
pub(crate) const LONG: Duration = Duration::from_secs(90);
/// Bound on one run of a command of the binary.
pub(crate) const COMMAND: Duration = Duration::from_secs(60);

/// The scenarios run one at a time: each runs up to five node processes and their writers
/// on a machine that may have two cores. (A tokio mutex: it is held across awaits, and a
/// failed scenario releases it like any other.)
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) fn doc_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("doc{i}")).collect()
}

pub(crate) fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The log without terminal colour codes.
pub(crate) fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let text = plain(text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a run of the binary printed.
pub(crate) struct Ran {
    pub(crate) status: ExitStatus,
    /// stdout then stderr.
    pub(crate) text: String,
}

/// Runs the binary with `args` to completion, at most [`COMMAND`] (killed past it), off
/// the runtime's threads.
pub(crate) async fn cli(args: &[&str]) -> Ran {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run concordant");
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(COMMAND, waiting).await {
        Ok(out) => {
            let out = out.expect("command task").expect("command output");
            Ran {
                status: out.status,
                text: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!(
                "`concordant {}` did not end within {COMMAND:?}",
                args.join(" ")
            );
        }
    }
}

/// Runs the binary with `args` and panics with its output unless it succeeds.
pub(crate) async fn cli_ok(args: &[&str]) -> Ran {
    let ran = cli(args).await;
    assert!(
        ran.status.success(),
        "`concordant {}` failed ({}):\n{}",
        args.join(" "),
        ran.status,
        ran.text
    );
    ran
}

/// How a node process that was started turned out.
pub(crate) enum Start {
    /// It exited by itself, with this status and log.
    Exited(ExitStatus, String),
    /// It runs and serves.
    Running,
}

/// A cluster written by `concordant init` whose nodes (those of the file and those added
/// later) run as children; each node's API is reached with the address and token it had in
/// the file when it was first seen there.
pub(crate) struct Nodes {
    /// The directory, the topology file (no child is started through it).
    pub(crate) init: ProcCluster,
    pub(crate) children: BTreeMap<String, ChildGuard>,
    pub(crate) clients: BTreeMap<String, Client>,
    pub(crate) starts: BTreeMap<String, usize>,
}

impl Nodes {
    /// `concordant init --nodes n --topology <topology>` on free ports; nothing started.
    pub(crate) fn init(n: usize, topology: &str) -> Nodes {
        Nodes::of(ProcCluster::init(n, topology))
    }

    /// The nodes of a cluster `init` wrote, its file's API addresses learnt; nothing
    /// started.
    pub(crate) fn of(init: ProcCluster) -> Nodes {
        let mut nodes = Nodes {
            init,
            children: BTreeMap::new(),
            clients: BTreeMap::new(),
            starts: BTreeMap::new(),
        };
        let file = nodes.file();
        nodes.learn(&file);
        nodes
    }

    /// The topology file.
    pub(crate) fn file(&self) -> PathBuf {
        self.init.config_path.clone()
    }

    /// A path in the cluster's directory (beside the topology file, so that the relative
    /// paths of a copy of it still hold).
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.init.dir.path().join(name)
    }

    /// Learns the API address of every node of `file` not seen yet.
    pub(crate) fn learn(&mut self, file: &Path) {
        let config = Config::load(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for n in &config.nodes {
            if !self.clients.contains_key(&n.id) {
                let client = Client::for_node(&config, &n.id)
                    .expect("client")
                    .with_timeout(Duration::from_secs(10));
                self.clients.insert(n.id.clone(), client);
            }
        }
    }

    pub(crate) fn client(&self, id: &str) -> Client {
        self.clients
            .get(id)
            .unwrap_or_else(|| panic!("no API address known for {id}"))
            .clone()
    }

    pub(crate) fn access(&self, id: &str) -> Access {
        Access::Client(self.client(id))
    }

    /// The data directory of a node named in the file at `file`.
    pub(crate) fn data_dir(&self, file: &Path, id: &str) -> PathBuf {
        let config = Config::load(file).expect("topology file");
        config.node(id).expect("node in the file").data.clone()
    }

    /// Starts `id` with `concordant node --config <file> --id <id>` (its log in
    /// `logs/<id>-<k>.log`).
    pub(crate) fn spawn(&mut self, id: &str, file: &Path) {
        assert!(!self.children.contains_key(id), "{id} already runs");
        self.learn(file);
        let k = {
            let k = self.starts.entry(id.to_string()).or_default();
            *k += 1;
            *k
        };
        let logs = self.path("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let log = logs.join(format!("{id}-{k}.log"));
        let child = ChildGuard::node(file, id, log, None);
        self.children.insert(id.to_string(), child);
    }

    /// Waits until `id` serves or exits by itself (then it is forgotten), at most `within`.
    pub(crate) async fn outcome(&mut self, id: &str, within: Duration) -> Start {
        let client = self.client(id);
        let start = Instant::now();
        loop {
            let child = self.children.get_mut(id).expect("started");
            if let Some(status) = child.exited() {
                let log = plain(&child.log_text());
                self.children.remove(id);
                return Start::Exited(status, log);
            }
            if child.log_text().contains("running; stop with")
                && concordant::client::status(&client).await.is_ok()
            {
                return Start::Running;
            }
            assert!(
                start.elapsed() < within,
                "{id} neither serves nor exits within {within:?}:\n{}",
                tail(&child.log_text(), 30)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts `id` from `file` and waits until it serves; panics with its log if it exits.
    pub(crate) async fn start(&mut self, id: &str, file: &Path) {
        self.spawn(id, file);
        if let Start::Exited(status, log) = self.outcome(id, SHORT).await {
            panic!("{id} exited with {status}:\n{log}");
        }
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) async fn stop(&mut self, id: &str) -> ExitStatus {
        let mut child = self
            .children
            .remove(id)
            .unwrap_or_else(|| panic!("{id} does not run"));
        child.terminate().await
    }

    /// SIGKILL, then waits for the exit.
    #[allow(dead_code)] // by tests/scale_out.rs only
    pub(crate) async fn kill(&mut self, id: &str) -> ExitStatus {
        let mut child = self
            .children
            .remove(id)
            .unwrap_or_else(|| panic!("{id} does not run"));
        child.kill().await
    }

    /// The ids of the running children.
    pub(crate) fn running(&self) -> Vec<String> {
        self.children.keys().cloned().collect()
    }

    /// `GET /v1/topology` at `id`.
    pub(crate) async fn topology(&self, id: &str) -> Result<Value, String> {
        self.client(id)
            .json(Method::GET, "/v1/topology", None)
            .await
            .map_err(|e| e.to_string())
    }

    /// Every running node: peers (L linked, C connected), documents, topology version and
    /// the tail of its log.
    pub(crate) async fn report(&self) -> String {
        let mut out = String::new();
        for id in self.running() {
            let access = self.access(&id);
            let peers = peers_line(&access).await;
            let docs = match access.docs().await {
                Ok(d) => d.as_array().map_or(0, Vec::len).to_string(),
                Err(e) => e.to_string(),
            };
            let topology = match self.topology(&id).await {
                Ok(t) => format!(
                    "version {} nodes {} removed {} digest {}",
                    t["version"],
                    ids_of(&t).join(","),
                    t["removed"],
                    t["digest"]
                ),
                Err(e) => e,
            };
            let log = self.children[&id].log_text();
            let _ = writeln!(
                out,
                "  {id}: peers [{peers}] docs {docs}; topology {topology}\n--- {id} log tail:\n{}",
                tail(&log, 12)
            );
        }
        out
    }

    /// Waits until every node of `on` shows the live topology `nodes` (in this order) with
    /// `removed` removed, all with the same version and digest; that topology.
    pub(crate) async fn wait_topology(
        &self,
        on: &[&str],
        nodes: &[&str],
        removed: &[&str],
    ) -> Value {
        let start = Instant::now();
        let want_removed: BTreeSet<String> = removed.iter().map(|s| s.to_string()).collect();
        loop {
            let mut seen = Vec::new();
            for id in on {
                seen.push(self.topology(id).await);
            }
            let ok = seen.iter().all(|t| {
                t.as_ref()
                    .is_ok_and(|t| ids_of(t) == strs(nodes) && removed_of(t) == want_removed)
            });
            let same = seen.windows(2).all(|w| match (&w[0], &w[1]) {
                (Ok(a), Ok(b)) => a["digest"] == b["digest"] && a["version"] == b["version"],
                _ => false,
            });
            if ok && same {
                return seen.remove(0).expect("answered");
            }
            if start.elapsed() > SHORT {
                let seen: Vec<String> = seen
                    .iter()
                    .zip(on)
                    .map(|(t, id)| match t {
                        Ok(t) => format!(
                            "  {id}: nodes {} removed {} version {} digest {}",
                            ids_of(t).join(","),
                            t["removed"],
                            t["version"],
                            t["digest"]
                        ),
                        Err(e) => format!("  {id}: {e}"),
                    })
                    .collect();
                panic!(
                    "the live topology is not {nodes:?} with {removed:?} removed, the same on \
                     {on:?}, within {SHORT:?}:\n{}\n{}",
                    seen.join("\n"),
                    self.report().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every node of `want` links exactly the peers given for it, all
    /// connected; how long it took.
    pub(crate) async fn wait_links(&self, want: &BTreeMap<String, BTreeSet<String>>) -> Duration {
        let start = Instant::now();
        loop {
            let mut seen = BTreeMap::new();
            for (id, peers) in want {
                let status = self.access(id).status().await.unwrap_or(Value::Null);
                let linked = linked_peers(&status);
                let ok = links_up(&status) && linked == *peers;
                seen.insert(id.clone(), (linked, ok));
            }
            if seen.values().all(|(_, ok)| *ok) {
                return start.elapsed();
            }
            if start.elapsed() > SHORT {
                panic!(
                    "links not as wanted {want:?} within {SHORT:?}: {seen:?}\n{}",
                    self.report().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every node of `live` holds the same documents with the same heads and
    /// JSON, then checks `history` against them: panics unless every acknowledged write is
    /// on every one of them, counters are in range and none diverged. How long
    /// convergence took.
    pub(crate) async fn converge_and_check(
        &self,
        live: &[&str],
        history: &SharedHistory,
    ) -> Duration {
        let start = Instant::now();
        let mut states: Vec<ReplicaState> = Vec::new();
        let mut converged = None;
        while start.elapsed() < LONG {
            let mut now = Vec::new();
            for id in live {
                match self.access(id).replica_state(id).await {
                    Ok(s) => now.push(s),
                    Err(_) => break,
                }
            }
            let complete = now.len() == live.len();
            let same = now.windows(2).all(|w| w[0].docs == w[1].docs);
            states = now;
            if complete && same && states.first().is_some_and(|s| !s.docs.is_empty()) {
                converged = Some(start.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let verdict = check(&history.lock().expect("history"), &states);
        eprintln!("checker over {live:?}: {verdict}");
        match converged {
            Some(took) if verdict.is_ok() && states.len() == live.len() => took,
            _ => panic!(
                "{live:?} not converged within {LONG:?} ({converged:?}) or the checker \
                 failed ({} replicas answered):\n{verdict}\n{}",
                states.len(),
                self.report().await
            ),
        }
    }
}

/// The document ids of a `GET /v1/docs` listing.
pub(crate) fn doc_ids(list: &Value) -> impl Iterator<Item = &str> {
    list.as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|d| d["id"].as_str())
}

/// The live node ids of a `/v1/topology` answer, in ring order.
pub(crate) fn ids_of(t: &Value) -> Vec<String> {
    t["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect()
}

/// The removed node ids of a `/v1/topology` answer.
pub(crate) fn removed_of(t: &Value) -> BTreeSet<String> {
    t["removed"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

/// The links of a ring (both directions) of `order`: each node with its two neighbours.
pub(crate) fn ring_links(order: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let n = order.len();
    (0..n)
        .map(|i| {
            let peers = [order[(i + 1) % n], order[(i + n - 1) % n]]
                .iter()
                .map(|s| s.to_string())
                .collect();
            (order[i].to_string(), peers)
        })
        .collect()
}

/// The links of a mesh of `nodes`: each node with every other.
pub(crate) fn mesh_links(nodes: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    nodes
        .iter()
        .map(|a| {
            let peers = nodes
                .iter()
                .filter(|b| *b != a)
                .map(|s| s.to_string())
                .collect();
            (a.to_string(), peers)
        })
        .collect()
}

/// One writer acknowledged locally and one acknowledged by a peer too, on node `id`.
pub(crate) fn write_at(workload: &mut Workload, nodes: &Nodes, id: &str, docs: &[String]) {
    let local = WriteSpec::endless(docs, json!("local"));
    let one_peer = WriteSpec::endless(docs, json!(1));
    workload.spawn(id, nodes.access(id), 1, &local);
    workload.spawn(id, nodes.access(id), 1, &one_peer);
}

/// Waits until `more` writes to any of `ids` were acknowledged beyond what they had.
pub(crate) async fn wait_acked(workload: &Workload, ids: &[&str], more: usize) {
    let count = || ids.iter().map(|n| workload.acked_by(n)).sum::<usize>();
    let since = count();
    let start = Instant::now();
    while count() < since + more {
        assert!(
            start.elapsed() < SHORT,
            "fewer than {more} writes to {ids:?} acknowledged within {SHORT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The adds of acknowledged writes of `history` that `state` lacks.
pub(crate) fn lacking(history: &History, state: &ReplicaState) -> usize {
    history
        .writes()
        .iter()
        .filter(|w| w.is_acked())
        .flat_map(|w| &w.effects)
        .filter(|e| match e {
            Effect::Add {
                doc,
                map,
                key,
                value,
            } => state.added(doc, map, key) != Some(value),
            Effect::Incr { .. } => false,
        })
        .count()
}

/// What node `id` holds now (every document with its heads and JSON), its documents read
/// concurrently so that a poll takes about one request's time.
pub(crate) async fn state_now(nodes: &Nodes, id: &str) -> Result<ReplicaState, String> {
    let client = nodes.client(id);
    let list = concordant::client::docs(&client)
        .await
        .map_err(|e| e.to_string())?;
    let entries: Vec<(String, Vec<String>)> = listing_heads(&list);
    let reads = entries
        .iter()
        .map(|(doc, _)| concordant::client::get(&client, doc));
    let jsons = futures_util::future::join_all(reads).await;
    let mut docs = Vec::new();
    for ((doc, heads), json) in entries.into_iter().zip(jsons) {
        docs.push((doc, heads, json.map_err(|e| e.to_string())?));
    }
    Ok(ReplicaState::new(id, docs))
}

/// Times of a node joining, from the start of its `add-node` command.
pub(crate) struct Join {
    pub(crate) command: Duration,
    pub(crate) serving: Duration,
    pub(crate) all_docs: Duration,
    pub(crate) all_writes: Duration,
    pub(crate) writes: usize,
}

/// `add-node <id>` through `through` with fresh ports, then the node started from the
/// file the command wrote; waits until it holds every document and every write
/// acknowledged before the command. Returns the times from the command's start.
pub(crate) async fn add_and_join(
    nodes: &mut Nodes,
    workload: &Workload,
    id: &str,
    through: &str,
    file: &Path,
    docs: &[String],
) -> Join {
    let base = free_base_port(1);
    let (peer, api) = (
        format!("127.0.0.1:{}", base + 1),
        format!("127.0.0.1:{}", base + 1001),
    );
    let before = workload.history.lock().expect("history").clone();
    let writes = before.writes().iter().filter(|w| w.is_acked()).count();
    let file_s = file.display().to_string();
    let t0 = Instant::now();
    let ran = cli_ok(&[
        "add-node", "--config", &file_s, "--id", id, "--peer", &peer, "--api", &api, "--node",
        through,
    ])
    .await;
    let command = t0.elapsed();
    eprintln!("add-node {id}:\n{}", ran.text.trim_end());
    nodes.start(id, file).await;
    let serving = t0.elapsed();
    let access = nodes.access(id);
    let (mut all_docs, mut all_writes) = (None, None);
    let want: BTreeSet<&str> = docs.iter().map(String::as_str).collect();
    loop {
        // The listing is one request: it times the documents finely; the whole state (every
        // document's JSON) is read only once they are all there.
        if all_docs.is_none() {
            if let Ok(list) = access.docs().await {
                let held: BTreeSet<&str> = doc_ids(&list).collect();
                if want.is_subset(&held) {
                    all_docs = Some(t0.elapsed());
                }
            }
        }
        if all_docs.is_some() {
            if let Ok(state) = state_now(nodes, id).await {
                if lacking(&before, &state) == 0 {
                    all_writes = Some(t0.elapsed());
                }
            }
        }
        if let (Some(all_docs), Some(all_writes)) = (all_docs, all_writes) {
            return Join {
                command,
                serving,
                all_docs,
                all_writes,
                writes,
            };
        }
        if t0.elapsed() > LONG {
            panic!(
                "{id} does not hold every document and every write acknowledged before its \
                 add-node within {LONG:?} (all documents after {all_docs:?}):\n{}",
                nodes.report().await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn print_join(id: &str, docs: usize, j: &Join) {
    eprintln!(
        "JOIN {id}: add-node command {:.3} s; serving {:.3} s; all {docs} documents {:.3} s; \
         every one of the {} writes acknowledged before add-node {:.3} s (from the start of \
         add-node)",
        j.command.as_secs_f64(),
        j.serving.as_secs_f64(),
        j.all_docs.as_secs_f64(),
        j.writes,
        j.all_writes.as_secs_f64()
    );
}

/// Waits until `id` knows it was removed (its topology lists it as removed) and then
/// checks that it answers a write with 503.
pub(crate) async fn wait_knows_removed(nodes: &Nodes, id: &str) {
    let start = Instant::now();
    loop {
        if let Ok(t) = nodes.topology(id).await {
            if removed_of(&t).contains(id) {
                break;
            }
        }
        if start.elapsed() > SHORT {
            panic!(
                "{id} did not learn its removal within {SHORT:?}:\n{}",
                nodes.report().await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = json!({"ops": [{"op": "set", "path": ["after-removal"], "value": 1}]});
    let answer = nodes
        .client(id)
        .request(
            Method::POST,
            "/v1/docs/removed-probe/ops",
            Some(body.to_string().into_bytes()),
        )
        .await
        .unwrap_or_else(|e| panic!("write to the removed {id}: {e}"));
    assert_eq!(
        answer.status,
        503,
        "the removed {id} answered a write with {}: {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    // Its health check fails, so a load balancer takes it out of its pool.
    let health = nodes
        .client(id)
        .request(Method::GET, "/v1/health", None)
        .await
        .unwrap_or_else(|e| panic!("health of the removed {id}: {e}"));
    let body = health.json().unwrap_or_default();
    assert!(
        health.status == 503 && body["status"] == "removed",
        "the removed {id} answered GET /v1/health with {}: {body}",
        health.status
    );
}

/// Checks that the running `removed` node is cut off from `live`: no live node and not
/// itself show a connection between them, a document written at a live node after the
/// removal never reaches it, and a write it takes (if it takes any) never reaches them.
pub(crate) async fn assert_isolated(nodes: &Nodes, removed: &str, live: &[&str], tag: &str) {
    // Several dial attempts (reconnect backoff at most 400 ms) and anti-entropy rounds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in live {
        let status = nodes.access(id).status().await.expect("status");
        let peers = status["peers"].as_array().cloned().unwrap_or_default();
        assert!(
            !peers
                .iter()
                .any(|p| p["id"] == removed && p["connected"] == true),
            "{id} is connected to the removed {removed}: {status}"
        );
    }
    let own = nodes.access(removed).status().await.expect("status");
    let connected: Vec<&Value> = own["peers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|p| p["connected"] == true)
        .collect();
    assert!(
        connected.is_empty(),
        "the removed {removed} is connected to {connected:?}"
    );

    // A new document at a live node reaches every live node, never the removed one.
    let fresh = format!("after-removal-{tag}");
    let request = json!({"ops": [{"op": "set", "path": ["x"], "value": 1}], "ack": 1});
    nodes
        .access(live[0])
        .op(&fresh, &request)
        .await
        .unwrap_or_else(|e| panic!("write {fresh} at {}: {e}", live[0]));
    let start = Instant::now();
    for id in live {
        while nodes.access(id).get(&fresh).await.is_err() {
            assert!(
                start.elapsed() < SHORT,
                "{fresh} did not reach {id} within {SHORT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    // A write the removed node takes (if it takes any) never reaches a live node.
    let stray = format!("from-removed-{tag}");
    let took = nodes
        .access(removed)
        .op(
            &stray,
            &json!({"ops": [{"op": "set", "path": ["x"], "value": 1}]}),
        )
        .await;
    eprintln!("a write at the removed {removed} ({tag}): {took:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let docs = nodes.access(removed).docs().await.expect("docs");
    let held: Vec<&str> = doc_ids(&docs).collect();
    assert!(
        !held.contains(&fresh.as_str()),
        "the removed {removed} received {fresh}, written after its removal"
    );
    for id in live {
        assert!(
            nodes.access(id).get(&stray).await.is_err(),
            "{id} received {stray}, written at the removed {removed}"
        );
    }
}

/// `concordant status --config <file>`: succeeds, lists exactly `ids`, each with all its
/// `links` links up and its fingerprint matching the others'.
pub(crate) async fn assert_status_table(file: &Path, ids: &[&str], links: usize) {
    let file_s = file.display().to_string();
    let ran = cli(&["status", "--config", &file_s]).await;
    eprintln!("status --config {file_s}:\n{}", ran.text.trim_end());
    assert!(ran.status.success(), "status is not healthy:\n{}", ran.text);
    let rows: Vec<Vec<&str>> = ran
        .text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.len() == 10)
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(names, ids, "status rows:\n{}", ran.text);
    let up = format!("{links}/{links}");
    for r in &rows {
        assert!(
            r[2] == "yes" && r[3] == up && r[9] == "match",
            "{} should be reachable with {up} links up and matching heads:\n{}",
            r[0],
            ran.text
        );
    }
}
