//! Chaos scenarios on real in-process nodes over QUIC with mutual TLS, every packet
//! crossing a fault-injecting UDP relay ([`common::faults`]), durable storage, continuous
//! writes (write concern local) on every side, each run ended by the set + counter checker
//! ([`common::checker`]) with the time until visible everywhere printed:
//! minority/majority partition of a 5-node mesh; a 6-node ring cut into two islands; 10%
//! loss with 50 ms jitter, duplication and reordering on every link of a mesh and of a
//! ring; one-way partitions (mesh and ring); a node down for thousands of writes, then
//! restarted. Also the checker's own unit tests.
//!
//! Environment: `CONCORDANT_CHAOS_SCALE=k` multiplies writes and durations by k;
//! `CONCORDANT_CHAOS_SEED=s` replays the relays' random decisions of a printed seed.

mod common;

use std::time::Duration;

use common::checker::{check, Effect, History, ReplicaState, WriteId};
use common::faults::{LinkFaults, LinkStats, Net};
use common::workload::{finish, prepare, Workload, DOCS};
use common::{ops, ops_with, TestCluster, CONVERGE_TIMEOUT, LINK_TIMEOUT};
use concordant::config::{RingDirection, TopologyKind};
use concordant::node::Ack;
use concordant::topology::Topology;
use serde_json::{json, Value};

const RING: TopologyKind = TopologyKind::Ring(RingDirection::Both);
/// Bound for convergence after healing (or under loss).
const FINISH_TIMEOUT: Duration = Duration::from_secs(40);
/// Writers per node.
const WRITERS: usize = 2;
/// Pause between two writes of one writer.
const PACE: Duration = Duration::from_millis(10);
/// Bound on the writes of one writer (runs are ended by time first).
const MAX_WRITES: usize = 100_000;

/// `CONCORDANT_CHAOS_SCALE` (default 1).
fn scale() -> u32 {
    std::env::var("CONCORDANT_CHAOS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// `base` times the scale.
fn secs(base: f64) -> Duration {
    Duration::from_secs_f64(base * f64::from(scale()))
}

/// A started cluster of `n` nodes routed through fault relays, with the chaos documents
/// created everywhere. Prints the seed.
async fn setup(name: &str, n: usize, kind: TopologyKind) -> (TestCluster, Net) {
    let seed = std::env::var("CONCORDANT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{name}: seed {seed} (replay with CONCORDANT_CHAOS_SEED={seed})");
    let mut cluster = TestCluster::new(n, kind);
    let net = Net::attach(&mut cluster, seed).await;
    net.start_all(&mut cluster).await;
    prepare(&cluster, CONVERGE_TIMEOUT).await;
    (cluster, net)
}

/// Ends a scenario: converged (bounded), checked, figures printed; fails on any anomaly.
async fn conclude(name: &str, cluster: TestCluster, net: Net, mut workload: Workload) {
    let verdict = finish(&cluster, &mut workload, FINISH_TIMEOUT).await;
    eprintln!("{name} (seed {}): {}", net.seed(), net.total());
    assert!(verdict.is_ok(), "{name} (seed {}): {verdict}", net.seed());
    assert!(verdict.acked > 0, "{name}: no write was acknowledged");
    cluster.shutdown().await;
}

/// Writes a tracked probe key at node `at` and checks, after a while, that no node of
/// `others` has it: the partition really isolates.
async fn assert_isolated(cluster: &TestCluster, workload: &Workload, at: usize, others: &[usize]) {
    let doc = DOCS[0];
    let key = format!("probe-{}", cluster.ids[at]);
    let effects = vec![Effect::add(doc, &["set"], &key, json!("probe"))];
    let id = workload
        .history
        .lock()
        .expect("history lock")
        .begin(&cluster.ids[at], effects.clone());
    ops(&cluster.node(at), doc, common::checker::ops_of(&effects)).await;
    workload.history.lock().expect("history lock").ack(id);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for &o in others {
        let json = cluster.node(o).json(doc).await.expect("json");
        let has = json.is_some_and(|j| j["set"].get(&key).is_some());
        assert!(
            !has,
            "{} got {key} across the partition:\n{}",
            cluster.ids[o],
            cluster.report().await
        );
    }
}

/// Checks that since `before` (the counters of `from → to` and `to → from` when the cut
/// was made) direction `from → to` forwarded nothing and dropped datagrams, while the
/// other way kept forwarding.
fn assert_one_way(net: &Net, from: usize, to: usize, before: (LinkStats, LinkStats)) {
    let (cut, open) = (net.stats(from, to), net.stats(to, from));
    assert!(
        cut.forwarded == before.0.forwarded
            && cut.dropped > before.0.dropped
            && open.forwarded > before.1.forwarded,
        "one-way cut {from}→{to} not in effect: cut side {cut}, open side {open}"
    );
}

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_of_five_survives_a_minority_majority_partition() {
    let name = "mesh partition 2|3";
    let (cluster, net) = setup(name, 5, TopologyKind::Mesh).await;
    let workload = Workload::start(&cluster, "p", WRITERS, MAX_WRITES, PACE);
    tokio::time::sleep(secs(0.5)).await;
    let (minority, majority) = ([0, 1], [2, 3, 4]);
    net.partition(&minority, &majority);
    assert_isolated(&cluster, &workload, 2, &minority).await;
    assert_isolated(&cluster, &workload, 0, &majority).await;
    tokio::time::sleep(secs(1.5)).await;
    net.heal();
    tokio::time::sleep(secs(0.5)).await;
    conclude(name, cluster, net, workload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_six_cut_in_two_places_heals() {
    let name = "ring cut in two";
    let (cluster, net) = setup(name, 6, RING).await;
    let workload = Workload::start(&cluster, "r", WRITERS, MAX_WRITES, PACE);
    tokio::time::sleep(secs(0.5)).await;
    // The ring n1..n6 cut between n2|n3 and n5|n6: islands {n3,n4,n5} and {n6,n1,n2}.
    let (a, b) = ([2, 3, 4], [5, 0, 1]);
    net.islands(&[&a, &b]);
    assert_isolated(&cluster, &workload, 3, &b).await;
    assert_isolated(&cluster, &workload, 0, &a).await;
    tokio::time::sleep(secs(1.5)).await;
    net.heal();
    tokio::time::sleep(secs(0.5)).await;
    conclude(name, cluster, net, workload).await;
}

/// 10% loss and 0..50 ms jitter, plus duplication and reordering, on every direction of
/// every link while every node writes; the replicas converge with the faults still on.
async fn lossy_links(name: &str, kind: TopologyKind) {
    let (cluster, net) = setup(name, 5, kind).await;
    net.set_all(LinkFaults::lossy(0.10, Duration::from_millis(50)));
    let workload = Workload::start(&cluster, "l", WRITERS, MAX_WRITES, PACE);
    tokio::time::sleep(secs(3.0)).await;
    let stats = net.total();
    assert!(
        stats.dropped > 0 && stats.duplicated > 0,
        "{name}: the faults did nothing: {stats}"
    );
    conclude(name, cluster, net, workload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_of_five_converges_under_loss_jitter_and_duplication() {
    lossy_links("mesh lossy", TopologyKind::Mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_five_converges_under_loss_jitter_and_duplication() {
    lossy_links("ring lossy", RING).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_of_five_survives_a_one_way_partition() {
    let name = "mesh one-way";
    let (cluster, net) = setup(name, 5, TopologyKind::Mesh).await;
    let workload = Workload::start(&cluster, "o", WRITERS, MAX_WRITES, PACE);
    tokio::time::sleep(secs(0.5)).await;
    // n1 and n2 can hear the others but not reach them.
    net.cut_one_way(&[0, 1], &[2, 3, 4]);
    let before = (net.stats(0, 2), net.stats(2, 0));
    tokio::time::sleep(secs(2.0)).await;
    assert_one_way(&net, 0, 2, before);
    net.heal();
    tokio::time::sleep(secs(0.5)).await;
    conclude(name, cluster, net, workload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_five_survives_a_one_way_link() {
    let name = "ring one-way";
    let (cluster, net) = setup(name, 5, RING).await;
    let workload = Workload::start(&cluster, "w", WRITERS, MAX_WRITES, PACE);
    tokio::time::sleep(secs(0.5)).await;
    // n1 → n2 dead, n2 → n1 fine; and n4 cannot reach anyone.
    net.cut_one_way(&[0], &[1]);
    net.cut_one_way(&[3], &all(5));
    let before = (net.stats(0, 1), net.stats(1, 0));
    tokio::time::sleep(secs(2.0)).await;
    assert_one_way(&net, 0, 1, before);
    net.heal();
    tokio::time::sleep(secs(0.5)).await;
    conclude(name, cluster, net, workload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_for_thousands_of_writes_catches_up() {
    let name = "node down";
    let (mut cluster, net) = setup(name, 5, TopologyKind::Mesh).await;
    let victim = 4;
    let workload = Workload::start(&cluster, "d", 4, MAX_WRITES, Duration::ZERO);
    workload.pause(victim);
    cluster.stop_node(victim).await;
    let want = 2000 * scale() as usize;
    workload.wait_acked(want, secs(60.0)).await;
    assert!(
        workload.acked() >= want,
        "{name}: only {} writes acknowledged",
        workload.acked()
    );
    net.start_node(&mut cluster, victim).await;
    workload.refresh(&cluster);
    tokio::time::sleep(secs(0.5)).await;
    conclude(name, cluster, net, workload).await;
}

// The checker itself.

fn replica(node: &str, heads: &[&str], json: Value) -> ReplicaState {
    ReplicaState::new(
        node,
        [(
            "d".to_string(),
            heads.iter().map(|h| h.to_string()).collect(),
            json,
        )],
    )
}

fn write(h: &mut History, key: &str, by: i64) -> WriteId {
    h.begin(
        "n1",
        vec![
            Effect::add("d", &["set"], key, json!(1)),
            Effect::incr("d", &["c"], by),
        ],
    )
}

#[test]
fn checker_accepts_a_consistent_run_and_measures_visibility() {
    let mut h = History::new();
    let a = write(&mut h, "a", 2);
    h.ack(a);
    let b = write(&mut h, "b", 3);
    let state = json!({"set": {"a": 1, "b": 1}, "c": 5});
    h.observe("n1", "d", &state);
    h.observe("n2", "d", &json!({"set": {"a": 1}, "c": 2}));
    let nodes = ["n1".to_string(), "n2".to_string()];
    assert_eq!(h.visibility(&nodes).measured, 1);
    let v = check(
        &h,
        &[
            replica("n1", &["x"], state.clone()),
            replica("n2", &["x"], state),
        ],
    );
    assert!(v.is_ok(), "{v}");
    assert_eq!((v.acked, v.uncertain), (1, 1));
    // The uncertain write may also be absent.
    h.refuse(b);
    let state = json!({"set": {"a": 1}, "c": 2});
    assert!(check(&h, &[replica("n1", &["y"], state)]).is_ok());
}

#[test]
fn checker_finds_lost_writes_bad_counters_and_divergence() {
    let mut h = History::new();
    let a = write(&mut h, "a", 2);
    h.ack(a);
    let b = write(&mut h, "b", 3);
    h.refuse(b);
    let v = check(
        &h,
        &[
            replica("n1", &["x"], json!({"set": {"a": 1}, "c": 2})),
            replica("n2", &["y"], json!({"set": {"b": 1}, "c": 7})),
        ],
    );
    assert!(!v.is_ok());
    assert_eq!(v.lost.len(), 2, "{v}");
    assert_eq!(v.counters.len(), 1, "{v}");
    assert_eq!(v.diverged.len(), 1, "{v}");
    assert!(v.to_string().contains("lost = 2"), "{v}");
}

/// A write with write concern "all" made while its node is cut off is answered once the
/// link heals, with every other node's acknowledgement, on a chain n1 - n2 - n3 - n4 (an
/// edge-list topology, so nothing links around): n2 gets the change by repair, n3 and n4
/// by pushes of repaired changes, and their acks come back along that path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_concern_all_is_met_once_a_cut_chain_heals() {
    let name = "chain ack all";
    let mut cluster = TestCluster::new(4, TopologyKind::Edges);
    let link = |a: &str, b: &str| (a.to_string(), b.to_string());
    let chain = vec![link("n1", "n2"), link("n2", "n3"), link("n3", "n4")];
    cluster.topology = Topology::new(TopologyKind::Edges, cluster.ids.clone(), chain);
    let net = Net::attach(&mut cluster, rand::random()).await;
    net.start_all(&mut cluster).await;
    cluster.wait_linked(LINK_TIMEOUT).await;
    net.partition(&[0], &[1, 2, 3]);
    let writer = cluster.node(0);
    let write = tokio::spawn(async move {
        let ops = json!([{"op": "set", "path": ["all-acked"], "value": 1}]);
        ops_with(&writer, "chain", ops, Ack::All, Duration::from_secs(30)).await
    });
    tokio::time::sleep(secs(1.0)).await;
    assert!(!write.is_finished(), "{name}: answered while n1 is cut off");
    net.heal();
    let written = write
        .await
        .expect("writer task")
        .expect("ack all met after the heal");
    let mut by = written.acked_by.clone();
    by.sort();
    assert_eq!(by, vec!["n2", "n3", "n4"], "{name}: acknowledged by");
    cluster.shutdown().await;
}
