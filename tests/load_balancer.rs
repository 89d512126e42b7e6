//! Behind a load balancer: HAProxy (Debian's `haproxy`, run from `docs/haproxy.cfg` itself)
//! in front of three `concordant node` processes.
//!
//! - A node SIGKILLed while HTTP writers (`POST /v1/docs/{id}/ops`, `"ack": 1`) and
//!   automerge-repo clients (`tests/js/sync_clients.mjs`, scenario 10) work through the
//!   balancer: HAProxy takes it out of its pool; the only HTTP requests that fail are ones in
//!   flight when it died (no more than there are writers); every acknowledged write is on the
//!   surviving nodes, which converge; the clients on the killed node reconnect through the
//!   balancer to another node, and every client and surviving node ends with every edit.
//! - A node removed with `concordant remove-node`: its `GET /v1/health` answers 503
//!   `leaving`, then `removed`, and HAProxy takes it out of its pool by itself; the WebSocket
//!   it served is closed (a client reconnects to another node); the only writes that fail are
//!   ones it refused while leaving (503, nothing changed); nothing acknowledged is lost.
//!
//! Needs `haproxy` (fails, saying how to install it, if missing) and, for the first test,
//! `node` and `tests/js/node_modules` (`npm ci` in `tests/js`).

mod common;
#[path = "common/repo_socket.rs"]
mod repo_socket;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::checker::{shared_history, SharedHistory};
use common::haproxy::{require_haproxy, Balancer};
use common::js::SCRIPT_TIMEOUT;
use common::js::{client_env, diagnostics, require_js, start_mesh, url_encode, Script};
use common::procs::access::Access;
use common::procs::workload::{create_docs, write};
use common::procs::{ProcCluster, POLL, WAIT};
use concordant::client::Client;
use concordant::sync::codec::RepoMessage;
use hyper::Method;
use serde_json::json;

/// Concurrent HTTP writers through the balancer.
const WRITERS: usize = 6;
/// Documents they write (spread over the nodes by the balancer's hash of the path).
const DOCS: usize = 12;
/// A writer's pause between two writes.
const WRITE_PAUSE: Duration = Duration::from_millis(20);
/// Bound on HAProxy taking a node out of its pool.
const DOWN_WAIT: Duration = Duration::from_secs(10);

/// One write through the balancer: when it was sent and answered, and how it failed.
#[derive(Debug, Clone)]
struct Attempt {
    sent: Instant,
    answered: Instant,
    failure: Option<String>,
}

/// HTTP writers through the balancer, each write recorded in a history for the checker
/// and as an [`Attempt`] with its times.
struct Writers {
    history: SharedHistory,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Starts `n` writers through `access` over `docs`, each adding unique elements with
    /// write concern 1 (durable on a second node, so an acknowledged write survives the
    /// loss of the node that took it).
    fn start(n: usize, access: &Access, docs: &[String]) -> Writers {
        let history = shared_history();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..n)
            .map(|w| {
                let (history, attempts, stop) = (history.clone(), attempts.clone(), stop.clone());
                let (access, docs) = (access.clone(), docs.to_vec());
                tokio::spawn(async move {
                    for seq in 0usize.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let doc = &docs[(seq + w) % docs.len()];
                        let key = format!("lb-w{w}-{seq}");
                        let sent = Instant::now();
                        let result =
                            write(&history, &access, "lb", doc, &key, &json!(1), 5000).await;
                        attempts.lock().expect("attempts").push(Attempt {
                            sent,
                            answered: Instant::now(),
                            failure: result.err().map(|e| e.to_string()),
                        });
                        tokio::time::sleep(WRITE_PAUSE).await;
                    }
                })
            })
            .collect();
        Writers {
            history,
            attempts,
            stop,
            tasks,
        }
    }

    /// Stops the writers after their current write; every attempt.
    async fn stop(&mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.expect("writer task");
        }
        self.attempts.lock().expect("attempts").clone()
    }
}

/// The documents the writers write, created through the balancer.
async fn writer_docs(access: &Access) -> Vec<String> {
    let docs: Vec<String> = (0..DOCS).map(|i| format!("lb-doc-{i}")).collect();
    create_docs(access, &docs).await;
    docs
}

/// How the tests reach the API through the balancer (the cluster's admin token passes
/// through it).
fn through(cluster: &ProcCluster, lb: &Balancer) -> Access {
    let client = Client::new(&lb.url(), cluster.config.api_token.clone())
        .expect("balancer URL")
        .with_timeout(Duration::from_secs(10));
    Access::Client(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_behind_haproxy_loses_nothing_acknowledged() {
    require_haproxy();
    require_js();
    let mut cluster = start_mesh().await;
    let lb = Balancer::start(&cluster).await;
    let access = through(&cluster, &lb);
    let docs = writer_docs(&access).await;
    let mut writers = Writers::start(WRITERS, &access, &docs);

    // The clients connect through the balancer; the nodes' own URLs are for the checks.
    let token = cluster.config.api_token.clone().expect("a token");
    let mut env = client_env(&cluster, "10");
    for (key, value) in env.iter_mut() {
        if key == "CONCORDANT_WS" {
            *value = format!("ws://{}/v1/sync?token={}", lb.addr, url_encode(&token));
        }
    }
    env.push(("CONCORDANT_NODES".into(), cluster.ids().join(",")));
    let mut script = Script::start(env);
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let mut killed = None;
    while let Some(line) = script.next_line(deadline).await {
        let Some(victim) = line.trim().strip_prefix("READY-TO-KILL ") else {
            continue;
        };
        assert!(killed.is_none(), "asked to kill twice: {line}");
        let i = cluster
            .ids()
            .iter()
            .position(|id| id == victim)
            .unwrap_or_else(|| panic!("the script names an unknown node: {line}"));
        let before = lb.http_server(victim).await;
        let sent = Instant::now();
        cluster.kill(i).await;
        let dead = Instant::now();
        script.send("KILLED");
        let down = lb.wait_down(victim, DOWN_WAIT).await + dead.duration_since(sent);
        killed = Some((victim.to_string(), before, sent, dead, down));
    }
    let status = script.wait(deadline).await;
    let attempts = writers.stop().await;
    let Some((victim, before, kill_sent, dead, down)) = killed else {
        panic!("the script never asked for a kill:\n{}", script.output());
    };
    if !status.success() {
        panic!(
            "sync_clients.mjs (scenario 10) failed with {status}:\n{}\n{}\n--- haproxy:\n{}",
            script.output(),
            diagnostics(&mut cluster).await,
            lb.log_text()
        );
    }

    // The killed node took writes through the balancer before it died.
    assert!(
        before.answered_2xx > 0,
        "no request went through {victim} before it was killed: {before:?}"
    );
    // Only requests in flight when the node died failed, at most one per writer.
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.failure.is_some()).collect();
    let late: Vec<&&Attempt> = failed.iter().filter(|a| a.sent > dead).collect();
    assert!(
        late.is_empty() && failed.len() <= WRITERS,
        "{} writes failed, {} of them sent after {victim} had died: only writes in flight at \
         the kill may fail (at most {WRITERS}): {failed:#?}",
        failed.len(),
        late.len()
    );
    let after = attempts
        .iter()
        .filter(|a| a.sent > dead && a.failure.is_none())
        .count();
    assert!(after > 0, "no write succeeded after the kill");
    let slowest = attempts
        .iter()
        .filter(|a| a.answered > kill_sent)
        .map(|a| a.answered.duration_since(a.sent))
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} writes through the balancer, {} failed (in flight when {victim} died, answered \
         {:?} after the kill), {after} acknowledged after it, the slowest answered after the \
         kill in {slowest:?}; haproxy took {victim} out {down:?} after the kill",
        attempts.len(),
        failed.len(),
        failed
            .iter()
            .map(|a| a.answered.saturating_duration_since(kill_sent))
            .collect::<Vec<_>>()
    );
    // Every acknowledged write is on the surviving nodes, which converge.
    let (verdict, took) = cluster.check(&writers.history, WAIT).await;
    eprintln!("the surviving nodes converged in {took:?}: {verdict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_being_removed_leaves_the_haproxy_pool_by_itself() {
    require_haproxy();
    let mut cluster = start_mesh().await;
    let lb = Balancer::start(&cluster).await;
    let access = through(&cluster, &lb);
    let docs = writer_docs(&access).await;

    // Three WebSocket clients through the balancer, one on each node (least connections).
    let token = cluster.config.api_token.clone().expect("a token");
    let query = format!("?token={}", url_encode(&token));
    let mut sockets = Vec::new();
    for i in 0..3 {
        let (socket, node) = join(&lb.addr, &query, &format!("ws-client-{i}")).await;
        sockets.push((socket, node));
    }
    let on = |id: &str| sockets.iter().position(|(_, n)| n == id);
    let leaving = on("n2").unwrap_or_else(|| {
        panic!(
            "no WebSocket client on n2: {:?}",
            sockets.iter().map(|(_, n)| n).collect::<Vec<_>>()
        )
    });

    // n2's health, seen directly while it is removed.
    let n2 = match cluster.access(1) {
        Access::Client(c) => c,
        other => panic!("n2 is reached directly, not {other:?}"),
    };
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let watching = Arc::new(AtomicBool::new(true));
    let watch = {
        let (seen, watching) = (seen.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                let state = match n2.request(Method::GET, "/v1/health", None).await {
                    Ok(a) => format!("{} {}", a.status, a.json().unwrap_or_default()["status"]),
                    Err(e) => format!("error: {e}"),
                };
                {
                    let mut seen = seen.lock().expect("seen");
                    if seen.last() != Some(&state) {
                        seen.push(state);
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };

    let mut writers = Writers::start(2, &access, &docs);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let config = cluster.config_path.display().to_string();
    let removed = tokio::task::spawn_blocking(move || {
        common::procs::run(&["remove-node", "--config", &config, "--id", "n2"], None)
    })
    .await
    .expect("remove-node task");
    assert!(
        removed.status.success(),
        "remove-node n2 failed: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let down = lb.wait_down("n2", DOWN_WAIT).await;
    let out_of_pool = Instant::now();

    // HAProxy closed the WebSocket it had on n2; a client reconnecting lands elsewhere.
    let (mut socket, _) = sockets.swap_remove(leaving);
    let start = Instant::now();
    while let Some(msg) = repo_socket::next(&mut socket).await {
        assert!(
            start.elapsed() < WAIT,
            "the WebSocket on n2 is still open {WAIT:?} after: {msg:?}"
        );
    }
    let (_again, node) = join(&lb.addr, &query, "ws-client-again").await;
    assert_ne!(
        node, "n2",
        "a client reconnecting through the balancer got n2"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let attempts = writers.stop().await;
    watching.store(false, Ordering::Relaxed);
    watch.await.expect("health watcher");
    let seen = seen.lock().expect("seen").clone();
    eprintln!("n2's health while it was removed: {seen:?}; out of the pool {down:?} after");

    // Its health said why it should get no traffic, in order.
    let position = |want: &str| seen.iter().position(|s| s == want);
    let (l, r) = (position("503 \"leaving\""), position("503 \"removed\""));
    assert!(
        matches!((l, r), (Some(l), Some(r)) if l < r),
        "n2's health should answer 503 leaving, then 503 removed: {seen:?}"
    );
    // Writes failed only where n2 refused them (503: nothing changed) while leaving or just
    // removed, before it was out of the pool.
    for a in attempts.iter().filter(|a| a.failure.is_some()) {
        let failure = a.failure.as_deref().unwrap_or_default();
        let refused = failure.contains("answered 503")
            && (failure.contains("is leaving") || failure.contains("has been removed"));
        assert!(
            a.sent < out_of_pool && refused,
            "a write through the balancer failed other than by n2 refusing it while it left: \
             {a:?}"
        );
    }
    assert!(
        attempts
            .iter()
            .any(|a| a.sent > out_of_pool && a.failure.is_none()),
        "no write succeeded once n2 was out of the pool"
    );
    eprintln!(
        "{} writes through the balancer, {} refused by n2 while it left",
        attempts.len(),
        attempts.iter().filter(|a| a.failure.is_some()).count()
    );
    // Everything acknowledged, n2's writes included, is on n1 and n3.
    cluster.terminate(1).await;
    cluster.check(&writers.history, WAIT).await;
}

/// Opens `/v1/sync` through the balancer as `peer` and joins; the socket and the node
/// that answered (from its peer id, `concordant-<cluster>-<node>`).
async fn join(addr: &str, query: &str, peer: &str) -> (repo_socket::Socket, String) {
    let mut socket = repo_socket::open(addr, query)
        .await
        .unwrap_or_else(|e| panic!("open /v1/sync through the balancer: {e}"));
    repo_socket::send(&mut socket, &repo_socket::join(peer, &["1"])).await;
    match repo_socket::next(&mut socket).await {
        Some(RepoMessage::Peer { sender_id, .. }) => {
            let node = sender_id.rsplit('-').next().unwrap_or_default().to_string();
            (socket, node)
        }
        other => panic!("{peer}: expected a peer message, got {other:?}"),
    }
}
