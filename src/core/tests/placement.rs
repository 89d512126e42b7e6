//! Documents on some of the nodes (a topology with `replicas` below the number of nodes):
//! pushes go to a document's replicas only, reconciliation covers the partitions two nodes
//! share, and a document stored where it is not replicated (a hinted write, or a partition
//! moved away) is handed to its replicas and dropped once they all hold it.

use super::*;
use crate::config::TopologyKind;
use crate::topology::Topology;

const IDS: [&str; 3] = ["a", "b", "c"];

fn topology(nodes: &[&str], replicas: usize) -> Topology {
    let ids = nodes.iter().map(|s| s.to_string()).collect();
    Topology::new(TopologyKind::Mesh, ids, Vec::new())
        .with_replicas(Some(replicas))
        .unwrap()
}

/// Three nodes, each document on two of them, all linked.
fn cluster() -> (Cluster, Topology) {
    let t = topology(&IDS, 2);
    let mut c = Cluster::new(&IDS, CoreConfig::default());
    for id in IDS {
        c.node(id).set_router(Box::new(t.clone()));
    }
    (c, t)
}

/// A document of which `node` is not a replica (and one of which it is).
fn doc_not_on(t: &Topology, node: &str) -> String {
    (0..)
        .map(|i| format!("doc-{i}"))
        .find(|d| !t.holds(node, d))
        .unwrap()
}

fn holders(c: &Cluster, doc: &str) -> Vec<String> {
    IDS.iter()
        .filter(|id| c.heads(id).iter().any(|(d, _)| d == doc))
        .map(|id| id.to_string())
        .collect()
}

fn replicas(t: &Topology, doc: &str) -> Vec<String> {
    let mut r: Vec<String> = t.replicas_of(doc).into_iter().map(String::from).collect();
    r.sort();
    r
}

#[test]
fn a_change_is_pushed_to_the_other_replica_only() {
    let (mut c, t) = cluster();
    c.link("a", "b");
    c.link("a", "c");
    c.link("b", "c");
    let docs: Vec<String> = (0..30).map(|i| format!("d{i}")).collect();
    for d in &docs {
        let writer = t.replicas_of(d)[0].to_string();
        c.put(&writer, d, "k", 1, false);
        c.pump(&writer);
    }
    c.run();
    for d in &docs {
        assert_eq!(holders(&c, d), replicas(&t, d), "{d}");
    }
}

#[test]
fn reconciliation_brings_what_a_replica_missed_and_nothing_else() {
    let (mut c, t) = cluster();
    c.link("a", "b");
    let docs: Vec<String> = (0..30).map(|i| format!("d{i}")).collect();
    // Written while c is away: at a replica other than c where there is one.
    for d in &docs {
        let writer = t
            .replicas_of(d)
            .into_iter()
            .find(|r| *r != "c")
            .unwrap()
            .to_string();
        c.put(&writer, d, "k", 1, false);
        c.pump(&writer);
    }
    c.run();
    c.link("a", "c");
    c.link("b", "c");
    for _ in 0..5 {
        c.tick_all(10_000);
    }
    for d in &docs {
        assert_eq!(holders(&c, d), replicas(&t, d), "{d}");
    }
}

#[test]
fn a_hinted_document_is_handed_to_its_replicas_then_dropped() {
    let (mut c, t) = cluster();
    let d = doc_not_on(&t, "c");
    // c takes a write of a document it does not replicate, its replicas unreachable.
    c.put("c", &d, "hinted", 7, false);
    c.pump("c");
    assert_eq!(c.node("c").stray_count(), 1);
    assert_eq!(holders(&c, &d), ["c"]);
    assert!(c.stored["c"].contains_key(&d), "durable as a hint");
    // One replica returns: it gets the document, but c keeps it (the other lacks it).
    let first = t.replicas_of(&d)[0].to_string();
    let second = t.replicas_of(&d)[1].to_string();
    c.link("c", &first);
    for _ in 0..4 {
        c.tick_all(10_000);
    }
    assert!(holders(&c, &d).contains(&first), "handed to {first}");
    assert!(
        holders(&c, &d).contains(&"c".to_string()),
        "kept until every replica has it"
    );
    // Both replicas hold it durably: c drops its copy.
    c.link("c", &second);
    for _ in 0..4 {
        c.tick_all(10_000);
    }
    assert_eq!(holders(&c, &d), replicas(&t, &d));
    assert_eq!(c.node("c").stray_count(), 0);
    assert_eq!(c.node("c").handed_off(), 1);
    assert!(!c.stored["c"].contains_key(&d), "deleted from c's store");
    for r in replicas(&t, &d) {
        let doc = c.node(&r).load(&d).unwrap().unwrap();
        assert_eq!(
            doc.get(ROOT, "hinted").unwrap().unwrap().0.as_i64(),
            Some(7),
            "{r} has the hinted write"
        );
    }
}

#[test]
fn a_partition_moved_away_goes_to_its_new_replicas_before_the_old_copy_goes() {
    // Two nodes hold everything; a third joins and takes its share.
    let two = topology(&["a", "b"], 2);
    let mut c = Cluster::new(&IDS, CoreConfig::default());
    for id in ["a", "b"] {
        c.node(id).set_router(Box::new(two.clone()));
    }
    c.link("a", "b");
    let docs: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
    for d in &docs {
        c.put("a", d, "k", 1, false);
        c.pump("a");
    }
    c.run();
    let three = topology(&IDS, 2);
    for id in IDS {
        c.node(id).set_router(Box::new(three.clone()));
    }
    // c starts holding nothing: its partitions are all new to it, but it had no placement
    // before, so it has nothing to fill; a and b took nothing over.
    assert!(c.node("a").filling().is_empty() && c.node("b").filling().is_empty());
    c.link("a", "c");
    c.link("b", "c");
    for _ in 0..8 {
        c.tick_all(10_000);
    }
    for d in &docs {
        assert_eq!(holders(&c, d), replicas(&three, d), "{d}");
    }
    assert!(c.node("c").doc_count() > 0, "c took its share");
    let dropped = c.node("a").handed_off() + c.node("b").handed_off();
    let moved_away = docs
        .iter()
        .map(|d| ["a", "b"].iter().filter(|n| !three.holds(n, d)).count())
        .sum::<usize>();
    assert!(moved_away > 0);
    assert_eq!(
        dropped as usize, moved_away,
        "each old copy outside the new placement"
    );
}

#[test]
fn partitions_taken_over_fill_before_they_serve() {
    // One copy of each document on three nodes, then two: each node takes over partitions
    // and fills them before they count as served.
    let one = topology(&IDS, 1);
    let mut c = Cluster::new(&IDS, CoreConfig::default());
    for id in IDS {
        c.node(id).set_router(Box::new(one.clone()));
    }
    c.link("a", "b");
    c.link("a", "c");
    c.link("b", "c");
    let docs: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
    for d in &docs {
        let writer = one.replicas_of(d)[0].to_string();
        c.put(&writer, d, "k", 1, false);
        c.pump(&writer);
    }
    c.run();
    assert!(IDS.iter().all(|id| c.node(id).filling().is_empty()));
    let two = topology(&IDS, 2);
    for id in IDS {
        c.node(id).set_router(Box::new(two.clone()));
    }
    for id in IDS {
        let taken = c.node(id).filling().len();
        assert!(taken > 0, "{id} took partitions over");
        assert_eq!(c.node(id).partitions_moving().0, taken);
    }
    for _ in 0..4 {
        c.tick_all(10_000);
    }
    for id in IDS {
        assert!(c.node(id).filling().is_empty(), "{id} filled them");
    }
    for d in &docs {
        assert_eq!(holders(&c, d), replicas(&two, d), "{d}");
    }
}
