//! Real `@automerge/automerge-repo` 2.5 clients (Node.js, `tests/js/sync_clients.mjs`) against
//! `GET /v1/sync` of a three-node mesh of `concordant node` processes with an API token:
//!
//! - two clients on different nodes share a document found by URL, see each other's edits
//!   live, and the third node's HTTP API shows the merged document; a document written only
//!   through the HTTP API is found by a client; `find()` of an unknown document is rejected as
//!   unavailable within seconds; ephemeral messages cross nodes; upgrades without the token or
//!   with a wrong one are answered 401;
//! - a client connected to two nodes keeps working while one of them is SIGKILLed and catches
//!   up with it when it is restarted: every client and every node end with every edit;
//! - a document made by `POST /v1/docs` is found by a client;
//! - user tokens minted with `jose` reach only their documents, on every node: read-only
//!   tokens cannot change them, documents users create are theirs on any node, expired
//!   tokens are refused and revoked ones' sockets close on every node;
//! - in a cluster whose documents are each on one node (`replicas = 1`), clients on the two
//!   nodes that do not hold a document edit it together.
//!
//! The scenarios live in the script (one `PASS <n> ...` line each); this file starts the
//! cluster, hands the script the nodes' URLs and token, and kills and restarts a node when the
//! script says `READY-TO-KILL` / `READY-TO-RESTART` (answering `KILLED` / `RESTARTED` on its
//! stdin). The script needs `tests/js/node_modules` (`npm ci` in `tests/js`) and `node` 18+.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::procs::access::{linked_peers, links_up};
use common::procs::{ProcCluster, POLL, WAIT};

/// Bound on one run of the script (each of its own waits is bounded far below this).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// `tests/js`.
fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Panics with what to do unless the script's dependencies are installed and `node` runs.
fn require_js() {
    let dir = js_dir();
    for package in [
        "@automerge/automerge-repo",
        "@automerge/automerge-repo-network-websocket",
        "ws",
    ] {
        let manifest = dir.join("node_modules").join(package).join("package.json");
        assert!(
            manifest.exists(),
            "{} is missing: run `npm ci` in {} first (the automerge-repo client tests need \
             their pinned JavaScript dependencies)",
            manifest.display(),
            dir.display()
        );
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`node --version` failed: {out:?}"),
        Err(e) => panic!("cannot run `node` (Node.js 18 or later is needed): {e}"),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The script's environment: every node's WebSocket and HTTP URL in node order, the token.
fn client_env(cluster: &ProcCluster, scenarios: &str) -> Vec<(String, String)> {
    let token = cluster
        .config
        .api_token
        .clone()
        .expect("`concordant init` writes an API token");
    let ws: Vec<String> = cluster
        .config
        .nodes
        .iter()
        .map(|n| format!("ws://{}/v1/sync?token={}", n.api, url_encode(&token)))
        .collect();
    let http: Vec<String> = cluster
        .config
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.api))
        .collect();
    vec![
        ("CONCORDANT_WS".into(), ws.join(",")),
        ("CONCORDANT_HTTP".into(), http.join(",")),
        ("CONCORDANT_TOKEN".into(), token),
        (
            "CONCORDANT_TOKEN_KEY".into(),
            cluster
                .config
                .ca
                .with_file_name("tokens.key")
                .display()
                .to_string(),
        ),
        ("SYNC_SCENARIOS".into(), scenarios.into()),
    ]
}

/// Starts a mesh of three and waits until every node answers and has both its links up.
async fn start_mesh() -> ProcCluster {
    let cluster = ProcCluster::start(3, "mesh").await;
    let start = Instant::now();
    for i in 0..cluster.len() {
        loop {
            let up = match cluster.access(i).status().await {
                Ok(status) => links_up(&status) && linked_peers(&status).len() == 2,
                Err(_) => false,
            };
            if up {
                break;
            }
            assert!(
                start.elapsed() < WAIT,
                "the mesh is not linked within {WAIT:?}:\n{}",
                cluster.report().await
            );
            tokio::time::sleep(POLL).await;
        }
    }
    for i in 0..cluster.len() {
        assert_sync_served(&cluster, i);
    }
    cluster
}

/// Fails clearly if node `i` does not upgrade `GET /v1/sync?token=...` to a WebSocket (the
/// script would only see the client library throw).
fn assert_sync_served(cluster: &ProcCluster, i: usize) {
    let node = &cluster.config.nodes[i];
    let token = cluster.config.api_token.as_deref().unwrap_or("");
    let mut stream = TcpStream::connect_timeout(&node.api, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {}'s API at {}: {e}", node.id, node.api));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let request = format!(
        "GET /v1/sync?token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        url_encode(token),
        node.api
    );
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("send an upgrade to {}: {e}", node.id));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && head.len() < 512 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => break,
            Err(e) => panic!("{} does not answer an upgrade of /v1/sync: {e}", node.id),
        }
    }
    let line = String::from_utf8_lossy(&head);
    assert!(
        line.starts_with("HTTP/1.1 101"),
        "{} does not serve the automerge-repo WebSocket at GET /v1/sync: it answered {:?}",
        node.id,
        line.trim()
    );
}

/// `node tests/js/sync_clients.mjs`, killed when dropped; its stdout arrives line by line,
/// and everything it wrote is kept for failure messages.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Script {
    fn start(env: Vec<(String, String)>) -> Script {
        let mut child = Command::new("node")
            .arg("sync_clients.mjs")
            .current_dir(js_dir())
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node sync_clients.mjs");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let kept = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                eprintln!("script: {line}");
                kept.lock().expect("stdout").push_str(&format!("{line}\n"));
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                kept.lock().expect("stderr").push_str(&format!("{line}\n"));
            }
        });
        Script {
            stdin: child.stdin.take(),
            child,
            lines,
            stdout,
            stderr,
        }
    }

    /// The next stdout line; `None` once stdout is closed. Panics past `deadline`.
    async fn next_line(&mut self, deadline: Instant) -> Option<String> {
        loop {
            match self.lines.try_recv() {
                Ok(line) => return Some(line),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            assert!(
                Instant::now() < deadline,
                "the script did not finish within {SCRIPT_TIMEOUT:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Writes `line` to the script's stdin.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("write {line:?} to the script: {e}\n{}", self.output()));
    }

    /// Waits for the exit (the script's output ended already, or ends soon). Panics past
    /// `deadline`.
    async fn wait(&mut self, deadline: Instant) -> ExitStatus {
        self.stdin = None;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads take in the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the script did not exit within {SCRIPT_TIMEOUT:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Everything the script printed so far.
    fn output(&self) -> String {
        format!(
            "--- script stdout:\n{}--- script stderr:\n{}",
            self.stdout.lock().expect("stdout"),
            self.stderr.lock().expect("stderr")
        )
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster's state and each running node's log tail, for failure messages.
async fn diagnostics(cluster: &mut ProcCluster) -> String {
    let mut out = format!("--- cluster:\n{}", cluster.report().await);
    for i in cluster.started() {
        let log = cluster.child(i).log_text();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        out.push_str(&format!("--- {} log tail:\n{tail}\n", cluster.id(i)));
    }
    out
}

/// Runs the script with `scenarios` to its end (no harness signals expected) and asserts it
/// passed every one.
async fn run_scenarios(scenarios: &str) {
    require_js();
    let mut cluster = start_mesh().await;
    let mut script = Script::start(client_env(&cluster, scenarios));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    while let Some(line) = script.next_line(deadline).await {
        assert!(
            !line.starts_with("READY-TO-"),
            "unexpected harness request {line:?}"
        );
    }
    let status = script.wait(deadline).await;
    if !status.success() {
        panic!(
            "sync_clients.mjs (scenarios {scenarios}) failed with {status}:\n{}\n{}",
            script.output(),
            diagnostics(&mut cluster).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automerge_repo_clients_share_documents_through_any_node() {
    run_scenarios("1,2,3,5,6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_made_by_post_v1_docs_is_found_by_a_client() {
    run_scenarios("7").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_tokens_reach_only_their_documents_on_every_node() {
    run_scenarios("9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rides_through_a_node_killed_and_restarted() {
    require_js();
    let mut cluster = start_mesh().await;
    let mut script = Script::start(client_env(&cluster, "4"));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let (mut killed, mut restarted) = (false, false);
    while let Some(line) = script.next_line(deadline).await {
        match line.trim() {
            "READY-TO-KILL" => {
                cluster.kill(0).await;
                killed = true;
                script.send("KILLED");
            }
            "READY-TO-RESTART" => {
                assert!(killed, "READY-TO-RESTART before READY-TO-KILL");
                cluster.restart(0).await;
                restarted = true;
                script.send("RESTARTED");
            }
            _ => {}
        }
    }
    let status = script.wait(deadline).await;
    if !status.success() || !killed || !restarted {
        panic!(
            "sync_clients.mjs (scenario 4) failed with {status} (node killed: {killed}, \
             restarted: {restarted}):\n{}\n{}",
            script.output(),
            diagnostics(&mut cluster).await
        );
    }
    // The script saw every node's JSON agree; the heads must agree too.
    if let Err(states) = cluster.wait_converged(WAIT).await {
        panic!(
            "the nodes do not converge after the script passed: {states:?}\n{}",
            diagnostics(&mut cluster).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_nodes_that_do_not_replicate_a_document_edit_it_together() {
    require_js();
    let mut cluster = ProcCluster::start_with(3, "mesh", Some(1)).await;
    let start = Instant::now();
    for i in 0..cluster.len() {
        while !cluster
            .access(i)
            .status()
            .await
            .is_ok_and(|s| links_up(&s) && linked_peers(&s).len() == 2)
        {
            assert!(
                start.elapsed() < WAIT,
                "the mesh is not linked within {WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    // A document made through node 1; its one replica is whichever node placement says.
    let common::procs::access::Access::Client(client) = cluster.access(0) else {
        panic!("node 1 is reached directly")
    };
    let made = client
        .json(hyper::Method::POST, "/v1/docs", None)
        .await
        .expect("POST /v1/docs");
    let (id, url) = (
        made["id"].as_str().expect("an id").to_string(),
        made["url"].as_str().expect("a url").to_string(),
    );
    let topology = cluster.config.topology();
    let replica = topology.replicas_of(&id)[0].to_string();
    let order: Vec<usize> = (0..3)
        .filter(|&i| cluster.id(i) != replica)
        .chain((0..3).filter(|&i| cluster.id(i) == replica))
        .collect();
    let mut env = client_env(&cluster, "8");
    for (key, value) in env.iter_mut() {
        if key == "CONCORDANT_WS" || key == "CONCORDANT_HTTP" {
            let urls: Vec<&str> = value.split(',').collect();
            *value = order.iter().map(|&i| urls[i]).collect::<Vec<_>>().join(",");
        }
    }
    env.push(("SYNC_DOC_URL".into(), url));
    let mut script = Script::start(env);
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    while let Some(line) = script.next_line(deadline).await {
        assert!(
            !line.starts_with("READY-TO-"),
            "unexpected request {line:?}"
        );
    }
    let status = script.wait(deadline).await;
    if !status.success() {
        panic!(
            "sync_clients.mjs (scenario 8, replica {replica}) failed with {status}:\n{}\n{}",
            script.output(),
            diagnostics(&mut cluster).await
        );
    }
}
