//! Live membership with real `concordant node` processes: nodes added and removed with
//! `concordant add-node` / `remove-node` while writers keep writing through the HTTP API,
//! each scenario ended by the checker (every acknowledged write on every live node,
//! counters in range, identical heads and JSON everywhere).
//!
//! - a ring of 3 grows to 5 (each new node started from the file `add-node` wrote; the time
//!   from `add-node` until the new node holds every document is printed), then n2 is
//!   removed and stopped: the live topology, its digest and the ring's links follow on every
//!   node, and n2, restarted with the file from before its removal, is refused;
//! - a mesh takes a removal at one node concurrent with an addition at another;
//! - invalid changes (a duplicate id or address, an unknown node, the last node) are refused
//!   by the command line with a clear error and change nothing.
//!
//! Every wait is bounded; children are killed when dropped; ports are free loopback ports.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::checker::shared_history;
use common::procs::workload::{create_docs, Workload};
use common::procs::{free_base_port, POLL};
use concordant::config::Config;
use hyper::Method;
use serde_json::{json, Value};

#[path = "membership/harness.rs"]
mod harness;

use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_grows_to_five_and_shrinks_under_writes() {
    let _serial = SERIAL.lock().await;
    let mut nodes = Nodes::init(3, "ring");
    let file = nodes.file();
    for id in ["n1", "n2", "n3"] {
        nodes.start(id, &file).await;
    }
    nodes.wait_links(&ring_links(&["n1", "n2", "n3"])).await;
    let docs = doc_names(64);
    create_docs(&nodes.access("n1"), &docs).await;
    let mut workload = Workload::new(shared_history());
    for id in ["n1", "n2", "n3"] {
        write_at(&mut workload, &nodes, id, &docs);
    }
    wait_acked(&workload, &["n1", "n2", "n3"], 400).await;

    // Grows to 4, then 5, each new node started from the file add-node wrote.
    let j4 = add_and_join(&mut nodes, &workload, "n4", "n1", &file, &docs).await;
    print_join("n4", docs.len(), &j4);
    let four = ["n1", "n2", "n3", "n4"];
    let t = nodes.wait_topology(&four, &four, &[]).await;
    eprintln!(
        "topology with n4: version {} digest {}",
        t["version"], t["digest"]
    );
    nodes.wait_links(&ring_links(&four)).await;
    write_at(&mut workload, &nodes, "n4", &docs);
    wait_acked(&workload, &four, 200).await;

    let j5 = add_and_join(&mut nodes, &workload, "n5", "n3", &file, &docs).await;
    print_join("n5", docs.len(), &j5);
    let five = ["n1", "n2", "n3", "n4", "n5"];
    let t = nodes.wait_topology(&five, &five, &[]).await;
    eprintln!(
        "topology with n5: version {} digest {}",
        t["version"], t["digest"]
    );
    nodes.wait_links(&ring_links(&five)).await;
    write_at(&mut workload, &nodes, "n5", &docs);
    wait_acked(&workload, &five, 50).await;

    // n2 leaves: removed through another node, then stopped once it knows.
    let old = nodes.path("cluster-before-removal.toml");
    std::fs::copy(&file, &old).expect("copy the file");
    let acked_by_n2_before = workload.acked_by("n2");
    let file_s = file.display().to_string();
    let t_remove = Instant::now();
    let ran = cli_ok(&["remove-node", "--config", &file_s, "--id", "n2"]).await;
    eprintln!("remove-node n2:\n{}", ran.text.trim_end());
    wait_knows_removed(&nodes, "n2").await;
    let status = nodes.stop("n2").await;
    eprintln!(
        "n2 knew its removal and was stopped {:?} after remove-node ({status}); {} writes to \
         it acknowledged before, {} in all",
        t_remove.elapsed(),
        acked_by_n2_before,
        workload.acked_by("n2")
    );
    let live = ["n1", "n3", "n4", "n5"];
    let t = nodes.wait_topology(&live, &live, &["n2"]).await;
    nodes.wait_links(&ring_links(&live)).await;
    eprintln!(
        "ring re-formed n1-n3-n4-n5 {:?} after remove-node; live topology version {} digest {}",
        t_remove.elapsed(),
        t["version"],
        t["digest"]
    );
    let text = std::fs::read_to_string(&file).expect("file");
    assert!(
        !text.contains("id = \"n2\""),
        "remove-node left n2 in the file:\n{text}"
    );
    wait_acked(&workload, &live, 50).await;
    workload.stop().await;
    let took = nodes.converge_and_check(&live, &workload.history).await;
    eprintln!(
        "converged {took:?} after the writes stopped; {} writes acknowledged ({} by n2)",
        workload.acked(),
        workload.acked_by("n2")
    );
    assert_status_table(&file, &live, 2).await;
    let topo = cli_ok(&["topology", "--config", &file_s]).await;
    eprintln!("topology:\n{}", topo.text.trim_end());
    assert!(
        topo.text.contains("removed: n2"),
        "topology should list n2 as removed:\n{}",
        topo.text
    );

    // n2 restarted with the file from before its removal and its data directory: it knows
    // it was removed and refuses to start; if it started, it would have to be cut off.
    nodes.spawn("n2", &old);
    match nodes.outcome("n2", SHORT).await {
        Start::Exited(status, log) => {
            assert!(
                !status.success() && log.contains("removed"),
                "n2 should refuse to start saying it was removed ({status}):\n{log}"
            );
            eprintln!(
                "n2 restarted with its old file refused to start ({status}): {}",
                tail(&log, 1)
            );
        }
        Start::Running => {
            eprintln!("n2 restarted with its old file runs: checking it is cut off");
            assert_isolated(&nodes, "n2", &live, "stored").await;
            nodes.stop("n2").await;
        }
    }

    // n2 as a node that was down during its removal would start: its stored topology
    // does not know the removal (here: none; the old file gives the nodes). It starts,
    // every node refuses it, and nothing reaches it or comes from it.
    let data = nodes.data_dir(&old, "n2");
    let stored = data.join("topology.json");
    assert!(
        stored.exists(),
        "n2 stored no topology in {}",
        data.display()
    );
    std::fs::remove_file(&stored).expect("remove n2's stored topology");
    nodes.spawn("n2", &old);
    match nodes.outcome("n2", SHORT).await {
        Start::Exited(status, log) => {
            panic!("n2 without its stored topology should start ({status}):\n{log}")
        }
        Start::Running => assert_isolated(&nodes, "n2", &live, "never-learned").await,
    }
    let refused: Vec<String> = live
        .iter()
        .filter(|id| {
            nodes.children[**id]
                .log_text()
                .contains("hello claims node \\\"n2\\\"")
        })
        .map(|s| s.to_string())
        .collect();
    eprintln!("n2, which never learned its removal, is cut off (refusals logged by {refused:?})");
    nodes.stop("n2").await;
    // The live nodes still agree.
    nodes.wait_topology(&live, &live, &["n2"]).await;
    print_join("n4", docs.len(), &j4);
    print_join("n5", docs.len(), &j5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_takes_a_removal_concurrent_with_an_addition() {
    let _serial = SERIAL.lock().await;
    let mut nodes = Nodes::init(3, "mesh");
    let file = nodes.file();
    for id in ["n1", "n2", "n3"] {
        nodes.start(id, &file).await;
    }
    nodes.wait_links(&mesh_links(&["n1", "n2", "n3"])).await;
    let docs = doc_names(16);
    create_docs(&nodes.access("n1"), &docs).await;
    let mut workload = Workload::new(shared_history());
    for id in ["n1", "n2", "n3"] {
        write_at(&mut workload, &nodes, id, &docs);
    }
    wait_acked(&workload, &["n1", "n2", "n3"], 60).await;

    // Two operators, each with a copy of the file: one adds n4 through n1 while the other
    // removes n3 through n2.
    let (fa, fb) = (nodes.path("cluster-a.toml"), nodes.path("cluster-b.toml"));
    std::fs::copy(&file, &fa).expect("copy the file");
    std::fs::copy(&file, &fb).expect("copy the file");
    let (fa_s, fb_s) = (fa.display().to_string(), fb.display().to_string());
    let base = free_base_port(1);
    let (peer, api) = (
        format!("127.0.0.1:{}", base + 1),
        format!("127.0.0.1:{}", base + 1001),
    );
    let before = workload.history.lock().expect("history").clone();
    let add = [
        "add-node", "--config", &fa_s, "--id", "n4", "--peer", &peer, "--api", &api, "--node", "n1",
    ];
    let remove = [
        "remove-node",
        "--config",
        &fb_s,
        "--id",
        "n3",
        "--node",
        "n2",
    ];
    // For the two changes to be truly concurrent (neither node has heard of the other's
    // when it records its own): n2 is frozen (SIGSTOP) until the others see its links
    // down; both commands start together; n1 records the addition (n3 hears of it); then
    // n1 and n3 are frozen and n2 thawed, and n2 records the removal, which was waiting
    // for it, before any node that knows n4 can reach it; then everyone is thawed.
    let pid = |id: &str| nodes.children[id].pid();
    let (p1, p2, p3) = (pid("n1"), pid("n2"), pid("n3"));
    signal("STOP", &[p2]);
    let cut = Instant::now();
    for id in ["n1", "n3"] {
        loop {
            let status = nodes.access(id).status().await.unwrap_or(Value::Null);
            let peers = status["peers"].as_array().cloned().unwrap_or_default();
            if peers
                .iter()
                .any(|p| p["id"] == "n2" && p["connected"] == false)
            {
                break;
            }
            if cut.elapsed() > SHORT {
                signal("CONT", &[p2]);
                panic!("{id} still connected to the frozen n2 after {SHORT:?}: {status}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let t0 = Instant::now();
    let (removal_answered, answered) = tokio::sync::oneshot::channel::<()>();
    let add_then_swap = async {
        let added = cli(&add).await;
        signal("STOP", &[p1, p3]);
        signal("CONT", &[p2]);
        let _ = tokio::time::timeout(SHORT, answered).await;
        signal("CONT", &[p1, p3]);
        added
    };
    let remove_and_tell = async {
        let removed = cli(&remove).await;
        let _ = removal_answered.send(());
        removed
    };
    let (added, removed) = tokio::join!(add_then_swap, remove_and_tell);
    eprintln!(
        "concurrently, add-node n4 through n1:\n{}\nremove-node n3 through n2:\n{}",
        added.text.trim_end(),
        removed.text.trim_end()
    );
    assert!(
        added.status.success(),
        "add-node n4 failed:\n{}",
        added.text
    );
    assert!(
        removed.status.success(),
        "remove-node n3 failed:\n{}",
        removed.text
    );
    let add_saw_removal = added.text.contains("removed: n3");
    let remove_saw_add = removed.text.lines().any(|l| l.starts_with("n4 "));
    assert!(
        !add_saw_removal && !remove_saw_add,
        "the changes should be concurrent: the answer to add-node shows the removal: \
         {add_saw_removal}; the answer to remove-node shows n4: {remove_saw_add}"
    );

    nodes.start("n4", &fa).await;
    let serving = t0.elapsed();
    wait_knows_removed(&nodes, "n3").await;
    let status = nodes.stop("n3").await;
    eprintln!("n3 knew its removal and was stopped ({status})");
    let live = ["n1", "n2", "n4"];
    let t = nodes.wait_topology(&live, &live, &["n3"]).await;
    eprintln!(
        "every live node has topology version {} digest {} {:?} after the two commands",
        t["version"],
        t["digest"],
        t0.elapsed()
    );
    nodes.wait_links(&mesh_links(&live)).await;

    // n4 holds everything written before the commands.
    let start = Instant::now();
    loop {
        if let Ok(state) = state_now(&nodes, "n4").await {
            if docs.iter().all(|d| state.docs.contains_key(d)) && lacking(&before, &state) == 0 {
                break;
            }
        }
        if start.elapsed() > LONG {
            panic!(
                "n4 does not hold what was written before it joined within {LONG:?}:\n{}",
                nodes.report().await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "JOIN n4 (mesh, concurrent with a removal): serving {:.3} s, every document and \
         write acknowledged before add-node {:.3} s after the commands started",
        serving.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    write_at(&mut workload, &nodes, "n4", &docs);
    wait_acked(&workload, &live, 50).await;
    workload.stop().await;
    let took = nodes.converge_and_check(&live, &workload.history).await;
    eprintln!(
        "converged {took:?} after the writes stopped; {} writes acknowledged ({} by n3)",
        workload.acked(),
        workload.acked_by("n3")
    );
    // The topology did not move meanwhile.
    let again = nodes.wait_topology(&live, &live, &["n3"]).await;
    assert_eq!(again["digest"], t["digest"], "the topology changed again");
}

/// Sends the signal `sig` (STOP, CONT, HUP) to the processes `pids`.
fn signal(sig: &str, pids: &[u32]) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pids:?} failed");
}

/// The live topology's (version, digest) at every node of `on`, which must all agree.
async fn versions(nodes: &Nodes, on: &[&str]) -> (Value, Value) {
    let mut seen = Vec::new();
    for id in on {
        let t = nodes
            .topology(id)
            .await
            .unwrap_or_else(|e| panic!("topology at {id}: {e}"));
        seen.push((t["version"].clone(), t["digest"].clone()));
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "the nodes {on:?} disagree: {seen:?}"
    );
    seen.remove(0)
}

/// Every file under `dir` with its content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            out.insert(path.clone(), std::fs::read(&path).expect("read file"));
        }
    }
    out
}

/// Runs a change that must be refused: non-zero exit, an error naming why (`words`), and
/// nothing changed: the live topology's version and digest at every node of `on`, the
/// topology file and the certificates.
async fn refused(nodes: &Nodes, on: &[&str], file: &Path, args: &[&str], words: &[&str]) {
    let before = versions(nodes, on).await;
    let text = std::fs::read_to_string(file).expect("file");
    let certs = snapshot(&nodes.path("certs"));
    let ran = cli(args).await;
    eprintln!(
        "`concordant {}` -> {}: {}",
        args.join(" "),
        ran.status,
        ran.text.trim_end()
    );
    assert!(
        !ran.status.success(),
        "`concordant {}` should be refused:\n{}",
        args.join(" "),
        ran.text
    );
    let lower = ran.text.to_lowercase();
    for w in words {
        assert!(
            lower.contains(&w.to_lowercase()),
            "the error of `concordant {}` should say {w:?}:\n{}",
            args.join(" "),
            ran.text
        );
    }
    // Nothing spreads later either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        versions(nodes, on).await,
        before,
        "the topology changed after a refused `concordant {}`",
        args.join(" ")
    );
    assert_eq!(
        std::fs::read_to_string(file).expect("file"),
        text,
        "the file changed after a refused `concordant {}`",
        args.join(" ")
    );
    assert!(
        snapshot(&nodes.path("certs")) == certs,
        "the certificates changed after a refused `concordant {}`",
        args.join(" ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_changes_are_refused_and_change_nothing() {
    let _serial = SERIAL.lock().await;
    let mut nodes = Nodes::init(3, "ring");
    let file = nodes.file();
    let all = ["n1", "n2", "n3"];
    for id in all {
        nodes.start(id, &file).await;
    }
    nodes.wait_links(&ring_links(&all)).await;
    let config = Config::load(&file).expect("file");
    let n1 = config.node("n1").expect("n1").clone();
    let n3 = config.node("n3").expect("n3").clone();
    let base = free_base_port(1);
    let (peer, api) = (
        format!("127.0.0.1:{}", base + 1),
        format!("127.0.0.1:{}", base + 1001),
    );
    let (n1_peer, n3_api) = (n1.peer.to_string(), n3.api.to_string());
    let f = file.display().to_string();
    let add = |id: &'static str, peer: String, api: String| {
        vec![
            "add-node".to_string(),
            "--config".into(),
            f.clone(),
            "--id".into(),
            id.into(),
            "--peer".into(),
            peer,
            "--api".into(),
            api,
        ]
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        // A duplicate id, also ignoring case (ids are TLS names).
        (
            add("n2", peer.clone(), api.clone()),
            vec!["refused", "\"n2\"", "already"],
        ),
        (
            add("N2", peer.clone(), api.clone()),
            vec!["refused", "\"N2\"", "already"],
        ),
        // A duplicate address: n1's peer address, n3's API address.
        (
            add("n9", n1_peer.clone(), api.clone()),
            vec!["refused", n1_peer.as_str(), "already", "\"n1\""],
        ),
        (
            add("n9", peer.clone(), n3_api.clone()),
            vec!["refused", n3_api.as_str(), "already", "\"n3\""],
        ),
        // Links in a ring.
        (
            [
                add("n9", peer.clone(), api.clone()),
                strs(&["--link", "n1"]),
            ]
            .concat(),
            vec!["refused", "edges"],
        ),
        // An unknown node.
        (
            strs(&["remove-node", "--config", &f, "--id", "n9"]),
            vec!["refused", "no node \"n9\""],
        ),
    ];
    for (args, words) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&nodes, &all, &file, &args, words).await;
    }
    assert!(
        !nodes.path("certs").join("n9.pem").exists()
            && !nodes.path("certs").join("N2.pem").exists(),
        "a refused add-node wrote a certificate"
    );
    // The HTTP endpoint behind add-node answers 409 to a duplicate id.
    let body = json!({"id": "n3", "peer": peer, "api": api});
    let answer = nodes
        .client("n2")
        .request(
            Method::POST,
            "/v1/topology/nodes",
            Some(body.to_string().into_bytes()),
        )
        .await
        .expect("POST /v1/topology/nodes");
    assert_eq!(
        answer.status,
        409,
        "a duplicate id over HTTP: {}",
        String::from_utf8_lossy(&answer.body)
    );
    let (version, _) = versions(&nodes, &all).await;
    assert_eq!(
        version,
        json!(0),
        "no change was made to the file's topology"
    );

    // Down to one node of three: n3 and n2 removed (valid), then the last node.
    for gone in ["n3", "n2"] {
        cli_ok(&["remove-node", "--config", &f, "--id", gone]).await;
        wait_knows_removed(&nodes, gone).await;
        nodes.stop(gone).await;
    }
    nodes.wait_topology(&["n1"], &["n1"], &["n2", "n3"]).await;
    // A removed node, again; a removed id, back.
    refused(
        &nodes,
        &["n1"],
        &file,
        &["remove-node", "--config", &f, "--id", "n2", "--node", "n1"],
        &["refused", "already removed"],
    )
    .await;
    let back = add("n2", peer.clone(), api.clone());
    let back: Vec<&str> = back.iter().map(String::as_str).collect();
    refused(&nodes, &["n1"], &file, &back, &["refused", "removed"]).await;
    // The last node, asked through itself and through whatever node answers.
    refused(
        &nodes,
        &["n1"],
        &file,
        &["remove-node", "--config", &f, "--id", "n1", "--node", "n1"],
        &["refused", "last"],
    )
    .await;
    refused(
        &nodes,
        &["n1"],
        &file,
        &["remove-node", "--config", &f, "--id", "n1"],
        &["last"],
    )
    .await;
    // It still serves.
    let request = json!({"ops": [{"op": "set", "path": ["x"], "value": 1}]});
    nodes
        .access("n1")
        .op("still-serving", &request)
        .await
        .expect("the last node takes writes");
}

/// SIGHUP: a node re-reads its file and proposes the differences as changes: a node added
/// to the file joins, a node taken out of it leaves, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_proposes_the_differences_of_the_file() {
    let _serial = SERIAL.lock().await;
    let mut nodes = Nodes::init(3, "mesh");
    let file = nodes.file();
    let all = ["n1", "n2", "n3"];
    for id in all {
        nodes.start(id, &file).await;
    }
    nodes.wait_links(&mesh_links(&all)).await;
    // The operator's own edit: n4 appended, n3 taken out.
    let base = free_base_port(1);
    let text = std::fs::read_to_string(&file).expect("read the file");
    let start = text.find("[[node]]\nid = \"n3\"").expect("n3's table");
    let end = text[start..]
        .find("\n\n")
        .map_or(text.len(), |i| start + i + 2);
    let mut edited = format!("{}{}", &text[..start], &text[end..]);
    edited.push_str(&format!(
        "\n[[node]]\nid = \"n4\"\npeer = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n",
        base + 1,
        base + 1001
    ));
    std::fs::write(&file, edited).expect("write the file");
    signal("HUP", &[nodes.children["n1"].pid()]);
    let t = nodes
        .wait_topology(&["n1", "n2"], &["n1", "n2", "n4"], &["n3"])
        .await;
    assert_eq!(t["version"], json!(2), "two changes: {t}");
}
