//! The command line end to end: `concordant init`, `concordant up` as a child process on
//! free loopback ports, then the client commands against it with the token from the file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::procs::free_base_port;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_concordant");
/// Bound on any wait in these tests.
const LIMIT: Duration = Duration::from_secs(30);

/// Kills the child process when dropped (also when a test fails).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn init(dir: &Path, nodes: u16) -> (PathBuf, u16) {
    let base = free_base_port(nodes);
    let out = run(&[
        "init",
        "--nodes",
        &nodes.to_string(),
        "--topology",
        "mesh",
        "--dir",
        dir.to_str().unwrap(),
        "--base-port",
        &base.to_string(),
    ]);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    (dir.join("cluster.toml"), base)
}

fn up(config: &Path, log: &Path) -> Running {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(BIN)
        .args(["up", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("concordant up starts");
    Running(child)
}

/// Runs a command until it succeeds; returns its output.
fn until_ok(args: &[&str], child: &mut Running, log: &Path) -> Output {
    let start = Instant::now();
    loop {
        let out = run(args);
        if out.status.success() {
            return out;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "concordant up exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < LIMIT,
            "{args:?} did not succeed in time: {}{}",
            stdout(&out),
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn up_and_client_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (config, base) = init(dir.path(), 3);
    let config = config.to_str().unwrap().to_string();
    let c = config.as_str();
    let log = dir.path().join("up.log");
    let mut child = up(Path::new(c), &log);

    for node in ["n1", "n2", "n3"] {
        let out = until_ok(&["health", "--config", c, "--node", node], &mut child, &log);
        let health: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(health["node"], node);
    }

    // Every link up (the table exits 0 once every node answers and all heads match).
    let table_args = ["status", "--config", c];
    until_ok(&table_args, &mut child, &log);

    // A write through n1 acknowledged by every node, then read on n2 and n3.
    let set = r#"{"op":"set","path":["greeting"],"value":"hello"}"#;
    let op = [
        "op", "doc1", "--config", c, "--node", "n1", "--ops", set, "--ack", "all",
    ];
    let out = run(&op);
    assert!(out.status.success(), "{}", stderr(&out));
    let written: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(written["acked_by"], json!(["n2", "n3"]));
    for node in ["n2", "n3"] {
        let out = run(&["get", "doc1", "--config", c, "--node", node]);
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(doc, json!({"greeting": "hello"}));
    }

    // A list of ops, then `docs`.
    let ops = r#"[{"op":"counter","path":["c"],"value":1},{"op":"inc","path":["c"],"by":2}]"#;
    let out = run(&["op", "doc2", "--config", c, "--node", "n2", "--ops", ops]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["docs", "--config", c, "--node", "n2"]);
    let docs: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 2);

    // One node's status.
    let out = run(&["status", "--config", c, "--node", "n3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["node"], "n3");
    assert_eq!(status["peers"].as_array().unwrap().len(), 2);

    // The cluster table: every node reachable, links up, one fingerprint on every node.
    let out = until_ok(&table_args, &mut child, &log);
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NODE"), "{table}");
    assert_eq!(lines.len(), 5, "{table}");
    let mut fingerprints = Vec::new();
    for (line, node) in lines[1..4].iter().zip(["n1", "n2", "n3"]) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], node, "{table}");
        assert_eq!(
            cells[2..8],
            ["yes", "2/2", "2", "1024", "0", "0"],
            "{table}"
        );
        assert_eq!(cells[9..], ["match"], "{table}");
        let fp = cells[8];
        assert!(
            fp.len() == 16 && fp.bytes().all(|b| b.is_ascii_hexdigit()),
            "{table}"
        );
        fingerprints.push(fp);
    }
    assert!(
        fingerprints.iter().all(|fp| *fp == fingerprints[0]),
        "{table}"
    );
    assert_eq!(
        lines[4], "fingerprints: all 3 reachable nodes agree",
        "{table}"
    );

    // --url with and without the token.
    let url = format!("http://127.0.0.1:{}", base + 1001);
    let token = std::fs::read_to_string(c)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("token = \"")?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .expect("the file has a token");
    let out = run(&["get", "doc1", "--url", &url, "--token", &token]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["get", "doc1", "--url", &url]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    let out = run(&["get", "doc1", "--url", &url, "--token", "wrong"]);
    assert!(!out.status.success());
    let out = run(&["health", "--url", &url]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Errors of the server: a non-zero exit and the server's message.
    let out = run(&["get", "nothing", "--url", &url, "--token", &token]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    let inc = r#"{"op":"inc","path":["greeting"],"by":1}"#;
    let out = run(&["op", "doc1", "--url", &url, "--token", &token, "--ops", inc]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("409"), "{}", stderr(&out));
    let out = run(&[
        "op", "doc1", "--url", &url, "--token", &token, "--ops", "[oops",
    ]);
    assert!(!out.status.success());
    let out = run(&["get", "doc1"]);
    assert!(!out.status.success());

    // A second cluster on the same ports cannot bind: a clear error and a non-zero exit.
    let other = tempfile::tempdir().unwrap();
    let other_config = other.path().join("cluster.toml");
    let out = run(&[
        "init",
        "--nodes",
        "3",
        "--topology",
        "mesh",
        "--dir",
        other.path().to_str().unwrap(),
        "--base-port",
        &base.to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["up", "--config", other_config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot bind the HTTP API"),
        "{}",
        stderr(&out)
    );

    // With the cluster stopped, the table says so and exits non-zero.
    drop(child);
    let out = run(&table_args);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("NO"), "{}", stdout(&out));
}

#[test]
fn init_writes_the_replicas_and_refuses_impossible_ones() {
    let dir = tempfile::tempdir().unwrap();
    let init = |sub: &str, topology: &str, replicas: &str| {
        let out = run(&[
            "init",
            "--nodes",
            "3",
            "--topology",
            topology,
            "--dir",
            dir.path().join(sub).to_str().unwrap(),
            "--replicas",
            replicas,
        ]);
        (out, dir.path().join(sub).join("cluster.toml"))
    };
    let (out, path) = init("mesh", "mesh", "2");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("topology = \"mesh\"\nreplicas = 2  #"),
        "{text}"
    );
    for (sub, topology, replicas, message) in [
        (
            "zero",
            "mesh",
            "0",
            "--replicas 0: each document needs at least 1 node",
        ),
        ("many", "ring", "4", "--replicas 4: more than the 3 nodes"),
        (
            "edges",
            "edges",
            "2",
            "--replicas 2: replicas below the number of nodes",
        ),
        (
            "fraction",
            "mesh",
            "2.5",
            "invalid value '2.5' for '--replicas <R>'",
        ),
    ] {
        let (out, path) = init(sub, topology, replicas);
        assert!(!out.status.success(), "{sub}");
        assert!(stderr(&out).contains(message), "{sub}: {}", stderr(&out));
        assert!(!path.exists(), "{sub}");
        assert!(!dir.path().join(sub).exists(), "{sub}");
    }
}
