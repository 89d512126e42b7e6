//! Three hosts on one machine: three `concordant node` processes, each in its own network
//! namespace with its own address (10.213.0.1-3 on veths joined by a bridge in a fourth
//! namespace, all made by the test and removed by a guard, also on panic). The nodes link
//! over those addresses; one host's link is taken down with `ip link set ... down`, writes
//! go on on both sides through the `concordant op` command run inside each namespace, the
//! link comes back up, and the checker proves nothing acknowledged was lost and every
//! replica converged.
//!
//! Needs root and `ip` (iproute2) with network namespace support; otherwise it prints why
//! and passes without running.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::checker::shared_history;
use common::procs::access::Access;
use common::procs::workload::{create_docs, Workload, WriteSpec};
use common::procs::{ProcCluster, WAIT};
use serde_json::{json, Value};

/// Bound on convergence after healing.
const CONVERGE: Duration = Duration::from_secs(30);
/// Writes on each side of the partition.
const WRITES_PER_SIDE: usize = 15;

/// Network namespaces made by this test, deleted on drop.
struct Netns {
    names: Vec<String>,
}

impl Netns {
    /// Creates namespace `name`; the guard deletes it.
    fn add(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.names.push(name.to_string());
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in self.names.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// Runs `ip <args>`; `Err` with its stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why this test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Some("not running as root".into());
    }
    if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

/// Address of host `i` (from 0) inside the test's namespaces.
fn host_ip(i: usize) -> String {
    format!("10.213.0.{}", i + 1)
}

/// In the (existing) bridge namespace a bridge `br0`, and one namespace per host wired to
/// it: host `i` has `eth0` with [`host_ip`]`(i)/24`, its veth peer `v<i>` is on `br0`.
fn make_network(guard: &mut Netns, bridge: &str, hosts: &[String]) -> Result<(), String> {
    ip(&["-n", bridge, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", bridge, "link", "set", "br0", "up"])?;
    for (i, ns) in hosts.iter().enumerate() {
        guard.add(ns)?;
        let veth = format!("v{i}");
        ip(&[
            "-n", bridge, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", bridge, "link", "set", &veth, "master", "br0"])?;
        ip(&["-n", bridge, "link", "set", &veth, "up"])?;
        let addr = format!("{}/24", host_ip(i));
        ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// The ids of the peers a node's status shows connected.
fn connected(status: &Value) -> BTreeSet<String> {
    status["peers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|p| p["connected"] == true)
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect()
}

/// Waits until node `access` shows exactly `want` connected.
async fn wait_connected(access: &Access, node: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    loop {
        let status = access.status().await;
        if status.as_ref().is_ok_and(|s| connected(s) == want) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{node}: connected peers not {want:?} within {WAIT:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The keys of `doc`'s set on a node.
async fn set_keys(access: &Access, doc: &str) -> BTreeSet<String> {
    let json = access.get(doc).await.expect("get doc");
    json["set"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_in_namespaces_converge_after_a_link_goes_down_and_up() {
    if let Some(why) = cannot_run() {
        eprintln!("SKIPPED three_hosts_in_namespaces: {why}; needs root and iproute2");
        return;
    }
    let n = 3;
    let tag = format!("cc{}", std::process::id());
    let bridge = format!("{tag}br");
    let hosts: Vec<String> = (1..=n).map(|i| format!("{tag}h{i}")).collect();
    // Declared before the cluster: dropped after it, once its processes are killed.
    let mut netns = Netns { names: Vec::new() };
    if let Err(e) = netns.add(&bridge) {
        eprintln!("SKIPPED three_hosts_in_namespaces: cannot create a network namespace: {e}");
        return;
    }
    make_network(&mut netns, &bridge, &hosts)
        .unwrap_or_else(|e| panic!("setting up the namespaces: {e}"));

    // Each node listens on its own host's address (the ports are private to the host).
    let mut cluster = ProcCluster::init(n, "mesh");
    let mut text = cluster.config_text();
    for (i, ns) in hosts.iter().enumerate() {
        let node = cluster.config.node(&cluster.id(i)).expect("node").clone();
        for (old, port) in [(node.peer, 7000), (node.api, 8000)] {
            let new = format!("\"{}:{port}\"", host_ip(i));
            text = text.replace(&format!("\"{old}\""), &new);
        }
        cluster.set_netns(i, ns);
    }
    cluster.write_config(&text);
    assert_eq!(
        cluster.config.node("n2").expect("n2").api.to_string(),
        "10.213.0.2:8000"
    );
    if let Err(log) = cluster.start_all().await {
        panic!("a node did not start in its namespace:\n{log}");
    }
    let ids = cluster.ids();
    for i in 0..n {
        let others: Vec<&str> = ids
            .iter()
            .filter(|x| **x != ids[i])
            .map(String::as_str)
            .collect();
        wait_connected(&cluster.access(i), &ids[i], &others).await;
    }
    let doc = "shared".to_string();
    create_docs(&cluster.access(0), std::slice::from_ref(&doc)).await;

    // Host 1's link down: n1 alone on one side, n2 and n3 on the other.
    ip(&["-n", &bridge, "link", "set", "v0", "down"]).expect("link down");
    wait_connected(&cluster.access(0), "n1", &[]).await;
    wait_connected(&cluster.access(1), "n2", &["n3"]).await;

    // Writes on both sides, acknowledged by the node written to (n2's also by n3).
    let mut workload = Workload::new(shared_history());
    let spec = |ack: Value| WriteSpec {
        docs: vec![doc.clone()],
        ack,
        timeout_ms: 5000,
        budget: Some(WRITES_PER_SIDE),
    };
    workload.spawn("n1", cluster.access(0), 1, &spec(json!("local")));
    workload.spawn("n2", cluster.access(1), 1, &spec(json!(1)));
    workload.wait_done(Duration::from_secs(60)).await;
    for node in ["n1", "n2"] {
        assert_eq!(
            workload.acked_by(node),
            WRITES_PER_SIDE,
            "{node}: every write acknowledged while partitioned"
        );
    }
    // The partition holds: neither side sees the other's writes.
    let n1_keys = set_keys(&cluster.access(0), &doc).await;
    let n3_keys = set_keys(&cluster.access(2), &doc).await;
    assert!(
        n1_keys.iter().all(|k| k.starts_with("n1-")) && n1_keys.len() == WRITES_PER_SIDE,
        "n1 during the partition: {n1_keys:?}"
    );
    assert!(
        n3_keys.iter().all(|k| k.starts_with("n2-")) && n3_keys.len() == WRITES_PER_SIDE,
        "n3 during the partition: {n3_keys:?}"
    );

    // Link up: the sides reconnect and converge with every acknowledged write.
    ip(&["-n", &bridge, "link", "set", "v0", "up"]).expect("link up");
    let (verdict, took) = cluster.check(&workload.history, CONVERGE).await;
    eprintln!(
        "namespaces: converged {took:?} after the link came back; {} writes acknowledged",
        verdict.acked
    );
}
