//! Crash scenarios with real `concordant node` processes (SIGKILL, data directories kept)
//! while writers keep writing through the HTTP API, each ended by the Jepsen-style checker:
//! every acknowledged write on every node, counters equal to the acknowledged increments
//! (give or take uncertain attempts), identical heads and JSON everywhere.
//!
//! - rolling SIGKILL restarts of every node of a four-node ring;
//! - every node of a mesh killed within a second, each restarted alone (it must hold every
//!   write it acknowledged, as the node written to or as a peer), then all restarted;
//! - a node down while thousands of writes happen elsewhere, killed again while it catches
//!   up, then caught up;
//! - the topology file changed (a link moved) and every node restarted with it: the new
//!   links are used; an invalid file makes the node exit with a message naming the file and
//!   the field, leaving its data untouched.
//!
//! Longer variants: `CONCORDANT_CRASH_ROUNDS` (rounds of restarts and of total kills,
//! default 1) and `CONCORDANT_CATCHUP_WRITES` (writes while a node is down, default 2000).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::checker::shared_history;
use common::procs::access::{linked_peers, links_up};
use common::procs::workload::{create_docs, missing_acked, write, Workload, WriteSpec};
use common::procs::{ProcCluster, WAIT};
use serde_json::{json, Value};

/// Bound on convergence at the end of a scenario.
const CONVERGE: Duration = Duration::from_secs(30);

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn doc_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("doc{i}")).collect()
}

/// Waits until `more` writes sent to any of `nodes` were acknowledged since `since` (a
/// count from [`acked_at`]); bounded by [`WAIT`].
async fn wait_acked(workload: &Workload, nodes: &[String], since: usize, more: usize) {
    let start = Instant::now();
    while acked_at(workload, nodes) < since + more {
        assert!(
            start.elapsed() < WAIT,
            "fewer than {more} writes to {nodes:?} acknowledged within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes sent to any of `nodes` and acknowledged so far.
fn acked_at(workload: &Workload, nodes: &[String]) -> usize {
    nodes.iter().map(|n| workload.acked_by(n)).sum()
}

/// On every node: one writer acknowledged locally, one acknowledged by a peer too.
fn write_everywhere(cluster: &ProcCluster, docs: &[String]) -> Workload {
    let mut workload = Workload::new(shared_history());
    let local = WriteSpec::endless(docs, json!("local"));
    let one_peer = WriteSpec::endless(docs, json!(1));
    for i in 0..cluster.ids().len() {
        workload.spawn(&cluster.id(i), cluster.access(i), 1, &local);
        workload.spawn(&cluster.id(i), cluster.access(i), 1, &one_peer);
    }
    workload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_sigkill_restarts_of_every_node_lose_no_acknowledged_write() {
    let rounds = env_usize("CONCORDANT_CRASH_ROUNDS", 1);
    let n = 4;
    let mut cluster = ProcCluster::start(n, "ring").await;
    let docs = doc_names(2);
    create_docs(&cluster.access(0), &docs).await;

    let mut workload = write_everywhere(&cluster, &docs);
    let started = Instant::now();
    for round in 1..=rounds {
        for i in 0..n {
            let all = cluster.ids();
            wait_acked(&workload, &all, acked_at(&workload, &all), 20).await;
            let status = cluster.kill(i).await;
            assert!(!status.success(), "{} was killed: {status}", cluster.id(i));
            // Writes go on at the others while it is down.
            let others: Vec<String> = all.into_iter().filter(|x| *x != cluster.id(i)).collect();
            wait_acked(&workload, &others, acked_at(&workload, &others), 30).await;
            cluster.restart(i).await;
            eprintln!(
                "round {round}: {} killed and restarted, {} writes acknowledged",
                cluster.id(i),
                workload.acked()
            );
        }
    }
    let all = cluster.ids();
    wait_acked(&workload, &all, acked_at(&workload, &all), 20).await;
    workload.stop().await;
    let (verdict, took) = cluster.check(&workload.history, CONVERGE).await;
    eprintln!(
        "{rounds} rounds of {n} SIGKILL restarts in {:?}; converged {took:?} after the \
         writes stopped; {} acknowledged",
        started.elapsed(),
        verdict.acked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_killed_within_a_second_and_restarted_lose_no_acknowledged_write() {
    let rounds = env_usize("CONCORDANT_CRASH_ROUNDS", 1);
    let n = 3;
    let mut cluster = ProcCluster::start(n, "mesh").await;
    let docs = doc_names(2);
    create_docs(&cluster.access(0), &docs).await;
    let mut workload = write_everywhere(&cluster, &docs);
    let all = cluster.ids();
    for round in 1..=rounds {
        wait_acked(&workload, &all, acked_at(&workload, &all), 40).await;
        // Every node SIGKILLed at a random moment within a second, writes still going.
        let kills = Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|_| rand::random::<u32>());
        for i in order {
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..300))).await;
            cluster.kill(i).await;
        }
        eprintln!(
            "round {round}: all {n} nodes killed within {:?}",
            kills.elapsed()
        );
        // Each node restarted alone (no peer to catch up from) holds every write it
        // acknowledged before the kills (writers go on: it acknowledges new ones after its
        // restart); then it is SIGKILLed again.
        let acked_before = workload.history.lock().expect("history").clone();
        let peer_acks = workload.peer_acks.lock().expect("peer acks").clone();
        for i in 0..n {
            cluster.restart(i).await;
            let state = cluster
                .access(i)
                .replica_state(&cluster.id(i))
                .await
                .unwrap_or_else(|e| panic!("state of {}: {e}", cluster.id(i)));
            let lost = missing_acked(&acked_before, &peer_acks, &cluster.id(i), &state);
            assert!(
                lost.is_empty(),
                "{} restarted alone lacks writes it acknowledged: {lost:?}",
                cluster.id(i)
            );
            let as_peer = peer_acks
                .values()
                .filter(|p| p.contains(&cluster.id(i)))
                .count();
            eprintln!(
                "round {round}: {} restarted alone holds every write it acknowledged \
                 ({as_peer} of them as a peer)",
                cluster.id(i)
            );
            cluster.kill(i).await;
        }
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_up(i).await;
        }
    }
    wait_acked(&workload, &all, acked_at(&workload, &all), 40).await;
    workload.stop().await;
    let (verdict, took) = cluster.check(&workload.history, CONVERGE).await;
    eprintln!(
        "{rounds} total kills; converged {took:?} after the writes stopped; {} writes \
         acknowledged, {} uncertain",
        verdict.acked, verdict.uncertain
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_during_thousands_of_writes_catches_up_after_restart() {
    kill_during_writes_then_catch_up(4, None).await;
}

/// The same with documents on demand: hundreds of documents and a cache of 8 per node, so
/// most writes, pushes and repairs go to documents that are on disk only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_cache_node_killed_during_writes_to_hundreds_of_documents_catches_up() {
    kill_during_writes_then_catch_up(300, Some(8)).await;
}

/// A node is SIGKILLed, thousands of writes go to `docs` documents on the others, and it is
/// restarted, SIGKILLed again during its catch-up and restarted again: it must end with
/// every acknowledged write. `cache_docs` sets every node's document cache (a rolling
/// restart applies it before the writes).
async fn kill_during_writes_then_catch_up(docs: usize, cache_docs: Option<usize>) {
    let writes = env_usize("CONCORDANT_CATCHUP_WRITES", 2000);
    let n = 3;
    let mut cluster = ProcCluster::start(n, "mesh").await;
    if let Some(cache) = cache_docs {
        let text = cluster.config_text();
        let tuned = text.replace(
            "compact_after = 250\n",
            &format!("compact_after = 250\ncache_docs = {cache}\n"),
        );
        assert_ne!(tuned, text, "the test tuning names compact_after");
        cluster.write_config(&tuned);
        for i in 0..n {
            cluster.kill(i).await;
            cluster.restart(i).await;
        }
    }
    let docs = doc_names(docs);
    create_docs(&cluster.access(0), &docs).await;

    let down = n - 1;
    cluster.kill(down).await;
    let mut workload = Workload::new(shared_history());
    let spec = WriteSpec {
        docs,
        ack: json!("local"),
        timeout_ms: 2000,
        budget: Some(writes / down),
    };
    let written = Instant::now();
    for i in 0..down {
        workload.spawn(&cluster.id(i), cluster.access(i), 4, &spec);
    }
    // Generous: about 200 writes/s on a loaded machine, plus a minute.
    let bound = Duration::from_millis(60_000 + 5 * writes as u64);
    workload.wait_done(bound).await;
    let took_writes = written.elapsed();
    let writes = writes / down * down;
    assert_eq!(
        workload.acked(),
        writes,
        "every write to a running node is acknowledged"
    );

    // Restarted, SIGKILLed again at some point of its catch-up, restarted again.
    cluster.restart(down).await;
    tokio::time::sleep(Duration::from_millis(rand::random_range(0..150))).await;
    cluster.kill(down).await;
    cluster.restart(down).await;
    let (verdict, catch_up) = cluster.check(&workload.history, CONVERGE).await;
    eprintln!(
        "{writes} writes in {took_writes:?} while {} was down; after a restart and a kill \
         during its catch-up, it caught up {catch_up:?} after its second restart \
         ({} acknowledged)",
        cluster.id(down),
        verdict.acked
    );
}

/// Every file under `dir` with its content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

/// Waits until every started node links exactly the peers `want` gives it, all connected.
async fn wait_links(cluster: &mut ProcCluster, want: &BTreeMap<&str, Vec<&str>>) {
    let start = Instant::now();
    loop {
        let mut seen = BTreeMap::new();
        for i in cluster.started() {
            let status = cluster.access(i).status().await.unwrap_or(Value::Null);
            let linked = linked_peers(&status);
            let ok = links_up(&status)
                && want[cluster.id(i).as_str()]
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<BTreeSet<_>>()
                    == linked;
            seen.insert(cluster.id(i), (linked, ok));
        }
        if seen.values().all(|(_, ok)| *ok) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "links not as wanted {want:?} within {WAIT:?}: {seen:?}\n{}",
            cluster.report().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_topology_file_is_used_after_restart_and_an_invalid_one_is_refused() {
    let n = 4;
    let mut cluster = ProcCluster::start(n, "edges").await;
    // `init` links the edges in a ring: n1-n2, n2-n3, n3-n4, n4-n1.
    let old = BTreeMap::from([
        ("n1", vec!["n2", "n4"]),
        ("n2", vec!["n1", "n3"]),
        ("n3", vec!["n2", "n4"]),
        ("n4", vec!["n1", "n3"]),
    ]);
    wait_links(&mut cluster, &old).await;
    let docs = doc_names(2);
    create_docs(&cluster.access(0), &docs).await;
    let mut workload = Workload::new(shared_history());
    let spec = WriteSpec {
        docs: docs.clone(),
        ack: json!("local"),
        timeout_ms: 2000,
        budget: None,
    };
    for i in 0..n {
        workload.spawn(&cluster.id(i), cluster.access(i), 1, &spec);
    }

    // The new file moves the link n4-n1 to n1-n3. The cluster holds its live topology
    // itself: a SIGHUP to n1 proposes the file's differences (the link added, the other
    // removed), which reach every node; then every node is SIGKILLed and restarted with
    // the file in turn, writes going on, and keeps the topology it stored.
    let text = cluster.config_text();
    let moved = text.replace(
        "[[link]]\na = \"n4\"\nb = \"n1\"",
        "[[link]]\na = \"n1\"\nb = \"n3\"",
    );
    assert_ne!(moved, text, "the link n4-n1 is in the file:\n{text}");
    cluster.write_config(&moved);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &cluster.child(0).pid().to_string()])
        .status()
        .expect("run kill");
    assert!(hup.success(), "kill -HUP n1");
    let all = cluster.ids();
    for i in 0..n {
        wait_acked(&workload, &all, acked_at(&workload, &all), 10).await;
        cluster.kill(i).await;
        cluster.restart(i).await;
    }
    let new = BTreeMap::from([
        ("n1", vec!["n2", "n3"]),
        ("n2", vec!["n1", "n3"]),
        ("n3", vec!["n1", "n2", "n4"]),
        ("n4", vec!["n3"]),
    ]);
    wait_links(&mut cluster, &new).await;

    // With n2 and n4 down, n1 and n3 can only replicate over the new link: a write on
    // either side is acknowledged by the other.
    workload.stop().await;
    cluster.kill(1).await;
    cluster.kill(3).await;
    for (from, to, key) in [(0, "n3", "via-new-link-1"), (2, "n1", "via-new-link-3")] {
        let answer = write(
            &workload.history,
            &cluster.access(from),
            &cluster.id(from),
            &docs[0],
            key,
            &json!(1),
            5000,
        )
        .await
        .unwrap_or_else(|e| panic!("write at {} with ack 1: {e}", cluster.id(from)));
        assert_eq!(
            answer["acked_by"],
            json!([to]),
            "{key} acknowledged over the new link"
        );
    }

    // An invalid file (a link to an unknown node): n1, stopped, does not start with it; it
    // exits with a message naming the file and the field, and its data is untouched.
    cluster.terminate(0).await;
    let valid = cluster.config_text();
    let invalid = format!("{valid}\n[[link]]\na = \"n1\"\nb = \"n9\"\n");
    std::fs::write(&cluster.config_path, &invalid).expect("write the invalid file");
    let data = cluster.data_dir(0);
    let before = snapshot(&data);
    cluster.spawn(0);
    let (status, log) = cluster.wait_exit(0).await;
    assert!(!status.success(), "n1 started with an invalid file:\n{log}");
    let file = cluster.config_path.display().to_string();
    assert!(
        log.contains(&file) && log.contains("link[5].b") && log.contains("n9"),
        "the message should name {file}, link[5].b and n9:\n{log}"
    );
    assert!(
        snapshot(&data) == before,
        "n1's data directory changed after the refused start"
    );

    // Back to the valid file: everything restarts, writes resume, nothing acknowledged is
    // lost and every node converges.
    cluster.write_config(&valid);
    for i in [0, 1, 3] {
        cluster.restart(i).await;
    }
    wait_links(&mut cluster, &new).await;
    for i in 0..n {
        workload.spawn(&cluster.id(i), cluster.access(i), 1, &spec);
    }
    wait_acked(&workload, &all, acked_at(&workload, &all), 20).await;
    workload.stop().await;
    let (verdict, took) = cluster.check(&workload.history, CONVERGE).await;
    eprintln!(
        "topology change: converged {took:?} after the writes stopped; {} acknowledged",
        verdict.acked
    );
}
