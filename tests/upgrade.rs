//! Rolling upgrades: a cluster of release 0.1.0 (commit 8962ab3, peer protocol 5) replaced
//! one node at a time by this release under writes, then one node rolled back to 0.1.0,
//! with real `concordant node` processes of both; and the versions a node links with (the one before its own is served, an
//! unknown one is refused with a clear log line).
//!
//! Release 0.1.0 is built from this repository's history once (`git archive` of the commit,
//! `cargo build --locked`) into `~/.cache/concordant-tests/concordant-0.1.0/`, and reused
//! while that build is there.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::checker::shared_history;
use common::procs::access::{linked_peers, links_up, Access};
use common::procs::workload::{create_docs, Workload, WriteSpec, SET};
use common::procs::{run_bin, ProcCluster, BIN, POLL, WAIT};
use concordant::certs::load_identity;
use concordant::transport::tls::{client_config_offering, Timing};
use concordant::wire::{self, Hello, Message, HEADER_LEN};
use serde_json::{json, Value};

/// The commit of release 0.1.0.
const RELEASE_0_1_0: &str = "8962ab3616e7bae79b484d32933064a63421b070";

/// The `concordant` binary of release 0.1.0, built once from this repository's history.
fn release_0_1_0() -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = cache_dir().join("concordant-0.1.0");
    let bin = root.join("target/debug/concordant");
    let stamp = root.join("built-from");
    if bin.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == RELEASE_0_1_0) {
        return bin;
    }
    let src = root.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).expect("source dir");
    eprintln!(
        "building release 0.1.0 ({RELEASE_0_1_0}) once into {}",
        root.display()
    );
    let tar = root.join("0.1.0.tar");
    let archive = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "archive",
            "--format=tar",
            "-o",
        ])
        .arg(&tar)
        .arg(RELEASE_0_1_0)
        .status()
        .expect("run git");
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .status()
        .expect("run tar");
    assert!(
        archive.success() && untar.success() && src.join("Cargo.toml").exists(),
        "cannot extract commit {RELEASE_0_1_0} (release 0.1.0) with git archive: this test \
         needs a clone of the repository with its history"
    );
    let built = Command::new("cargo")
        .args(["build", "--locked", "--bin", "concordant"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .stdout(Stdio::null())
        .status()
        .expect("run cargo");
    assert!(built.success(), "building release 0.1.0 failed");
    std::fs::write(&stamp, RELEASE_0_1_0).expect("stamp");
    bin
}

/// Where the build of an older release is kept across runs and clones: the user's cache
/// (`$XDG_CACHE_HOME` or `~/.cache`), else the target directory.
fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"));
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or(home)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join("concordant-tests")
}

/// The version `bin --version` prints.
fn version_of(bin: &Path) -> String {
    let out = run_bin(bin, &["--version"], None);
    assert!(out.status.success(), "{} --version: {out:?}", bin.display());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until node `i` has a connection to every other node.
async fn wait_linked(cluster: &ProcCluster, i: usize) {
    let access = cluster.access(i);
    let start = Instant::now();
    loop {
        if let Ok(status) = access.status().await {
            if links_up(&status) && linked_peers(&status).len() + 1 == cluster.len() {
                return;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "{} not linked within {WAIT:?}",
            cluster.id(i)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Adds `key` to `doc`'s set at `from` (durable there) and waits until `to` has it.
async fn replicates(from: &Access, to: &Access, doc: &str, key: &str) {
    let op = json!({"ops": [{"op": "set", "path": [SET, key], "value": key}]});
    from.op(doc, &op).await.expect("write");
    let start = Instant::now();
    loop {
        if to.get(doc).await.is_ok_and(|d| d[SET][key] == json!(key)) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{key} did not replicate within {WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`replicates`] from `a` to `b`, then from `b` to `a`.
async fn replicates_both_ways(a: &Access, b: &Access, doc: &str, tag: &str) {
    replicates(a, b, doc, &format!("{tag}-there")).await;
    replicates(b, a, doc, &format!("{tag}-back")).await;
}

/// The protocol version of `status`'s link to `peer` (null without one).
fn protocol_with(status: &Value, peer: &str) -> Value {
    status["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"] == peer))
        .map_or(Value::Null, |p| p["protocol"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_from_release_0_1_0_and_a_roll_back_under_writes_lose_nothing() {
    let old = release_0_1_0();
    let new = PathBuf::from(BIN);
    assert_eq!(version_of(&old), "concordant 0.1.0");
    assert_eq!(
        version_of(&new),
        format!("concordant {}", env!("CARGO_PKG_VERSION"))
    );

    // A cluster written and run by release 0.1.0.
    let mut cluster = ProcCluster::init_by(&old, 3, "mesh", None);
    cluster
        .start_all()
        .await
        .expect("release 0.1.0 nodes start");
    let docs: Vec<String> = (0..4).map(|i| format!("doc{i}")).collect();
    let mixed = "mixed".to_string();
    create_docs(
        &cluster.access(0),
        &[docs.clone(), vec![mixed.clone()]].concat(),
    )
    .await;
    let mut load = Workload::new(shared_history());
    for i in 0..3 {
        let spec = WriteSpec::endless(&docs, json!("local"));
        load.spawn(&cluster.id(i), cluster.access(i), 2, &spec);
    }
    // Acknowledgements across versions: every node's durable ack, within 2 s.
    load.spawn(
        &cluster.id(2),
        cluster.access(2),
        1,
        &WriteSpec::endless(&docs, json!("all")),
    );

    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        cluster.terminate(i).await;
        cluster.set_binary(i, &new);
        cluster.restart(i).await;
        wait_linked(&cluster, i).await;
        let status = cluster.access(i).status().await.expect("status");
        assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
        if i < 2 {
            // Mixed: the new node speaks protocol 5 with the last old node, both ways.
            assert_eq!(protocol_with(&status, "n3"), 5, "n{} to n3", i + 1);
            let tag = format!("new-{i}");
            replicates_both_ways(&cluster.access(i), &cluster.access(2), &mixed, &tag).await;
        }
    }
    // Every node new: they speak this release's protocol with each other.
    for i in 0..3 {
        let start = Instant::now();
        loop {
            let status = cluster.access(i).status().await.expect("status");
            let peers = status["peers"].as_array().cloned().unwrap_or_default();
            if peers
                .iter()
                .all(|p| p["protocol"] == wire::PROTOCOL_VERSION)
            {
                break;
            }
            assert!(start.elapsed() < WAIT, "{}: {status}", cluster.id(i));
            tokio::time::sleep(POLL).await;
        }
    }
    // Rolling back: n3 runs release 0.1.0 again on the store this release wrote (the same
    // format), links in protocol 5, and replicates both ways while the writes go on.
    cluster.terminate(2).await;
    cluster.set_binary(2, &old);
    cluster.restart(2).await;
    wait_linked(&cluster, 2).await;
    let status = cluster.access(0).status().await.expect("status");
    assert_eq!(protocol_with(&status, "n3"), 5, "n1 to n3 rolled back");
    replicates_both_ways(&cluster.access(0), &cluster.access(2), &mixed, "back").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop().await;
    let (verdict, _) = cluster.check(&load.history, Duration::from_secs(30)).await;
    assert!(verdict.is_ok());
    let acked = load.history.lock().expect("history").acked();
    assert!(acked > 50, "only {acked} writes acknowledged");

    // Neither release ever read a message it could not decode.
    for log in std::fs::read_dir(cluster.dir.path().join("logs")).expect("logs") {
        let path = log.expect("log").path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for bad in ["malformed", "bad hello", "unexpected hello"] {
            assert!(!text.contains(bad), "{}: {bad}:\n{text}", path.display());
        }
    }
    let first_new = std::fs::read_to_string(cluster.dir.path().join("logs/n1-2.log"))
        .expect("n1's log after the upgrade");
    assert!(
        first_new.contains("link up with a peer of an older release"),
        "{first_new}"
    );
}

/// A raw QUIC client with node n2's certificate offering `alpns` to node n1 at `addr`.
async fn dial_as_n2(
    cluster: &ProcCluster,
    alpns: Vec<Vec<u8>>,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let spec = cluster.config.node("n2").expect("n2");
    let identity = load_identity(&cluster.config.ca, &spec.cert, &spec.key).expect("identity");
    let timing = Timing {
        keep_alive: Duration::from_millis(250),
        idle_timeout: Duration::from_secs(2),
    };
    let cfg = client_config_offering("n2", &identity, timing, alpns).expect("client config");
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let addr = cluster.config.node("n1").expect("n1").peer;
    let connecting = ep
        .connect_with(cfg, addr, &concordant::certs::node_dns_name("n1"))
        .expect("connect");
    tokio::time::timeout(WAIT, connecting)
        .await
        .expect("handshake in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_protocol_version_is_served_and_an_unknown_one_refused_with_a_clear_log() {
    let mut cluster = ProcCluster::init(2, "mesh");
    cluster.restart(0).await;

    // A future release that no longer speaks this one's versions.
    let refused = dial_as_n2(
        &cluster,
        vec![b"concordant/8".to_vec(), b"concordant/7".to_vec()],
    );
    assert!(
        refused.await.is_err(),
        "a handshake without a common version succeeded"
    );
    let start = Instant::now();
    let line = "refused a connection: the peer speaks no protocol version this node speaks";
    while !cluster.child(0).log_text().contains(line) {
        assert!(
            start.elapsed() < WAIT,
            "no log line:\n{}",
            cluster.child(0).log_text()
        );
        tokio::time::sleep(POLL).await;
    }

    // Release 0.1.0's version: the node answers in it.
    let conn = dial_as_n2(&cluster, vec![wire::alpn(wire::PREVIOUS_VERSION)])
        .await
        .expect("handshake at the previous version");
    let hello = Hello {
        cluster: cluster.config.cluster.clone(),
        node: "n2".into(),
        version: wire::PREVIOUS_VERSION,
        compression: Vec::new(),
    };
    let mut send = conn.open_uni().await.expect("stream");
    let frame = wire::encode_as(&Message::Hello(hello), wire::PREVIOUS_VERSION).expect("hello");
    send.write_all(&frame).await.expect("send hello");
    let mut recv = tokio::time::timeout(WAIT, conn.accept_uni())
        .await
        .expect("answer in time")
        .expect("answer stream");
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await.expect("header");
    let head = wire::frame_head(header).expect("frame");
    let mut payload = vec![0u8; head.len];
    recv.read_exact(&mut payload).await.expect("payload");
    match wire::decode_payload_as(&payload, wire::PREVIOUS_VERSION).expect("a version 5 hello") {
        Message::Hello(h) => {
            assert_eq!(h.node, "n1");
            assert_eq!(h.version, wire::PREVIOUS_VERSION);
        }
        other => panic!("expected a hello, got {}", other.kind()),
    }
    conn.close(0u32.into(), b"done");
}
