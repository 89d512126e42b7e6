//! The automerge-repo client script of the process tests (`tests/js/sync_clients.mjs`, real
//! `@automerge/automerge-repo` clients in Node.js): [`require_js`] fails with what to install
//! when its dependencies are missing, [`Script`] runs it as a child (killed when dropped) and
//! hands over its stdout line by line, [`client_env`] and [`start_mesh`] give it a linked
//! three-node mesh of `concordant node` processes, [`diagnostics`] reports a cluster on failure.
//!
//! Owns only test scaffolding: it drives the script, the binary and its HTTP API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::procs::access::{linked_peers, links_up};
use super::procs::{ProcCluster, POLL, WAIT};

/// Bound on one run of the script (each of its own waits is bounded far below this).
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// `tests/js`.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Panics with what to do unless the script's dependencies are installed and `node` runs.
pub fn require_js() {
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
pub fn url_encode(s: &str) -> String {
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
pub fn client_env(cluster: &ProcCluster, scenarios: &str) -> Vec<(String, String)> {
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
pub async fn start_mesh() -> ProcCluster {
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
pub fn assert_sync_served(cluster: &ProcCluster, i: usize) {
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
pub struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Script {
    pub fn start(env: Vec<(String, String)>) -> Script {
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
    pub async fn next_line(&mut self, deadline: Instant) -> Option<String> {
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
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("write {line:?} to the script: {e}\n{}", self.output()));
    }

    /// Waits for the exit (the script's output ended already, or ends soon). Panics past
    /// `deadline`.
    pub async fn wait(&mut self, deadline: Instant) -> ExitStatus {
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
    pub fn output(&self) -> String {
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
pub async fn diagnostics(cluster: &mut ProcCluster) -> String {
    let mut out = format!("--- cluster:\n{}", cluster.report().await);
    for i in cluster.started() {
        let log = cluster.child(i).log_text();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        out.push_str(&format!("--- {} log tail:\n{tail}\n", cluster.id(i)));
    }
    out
}
