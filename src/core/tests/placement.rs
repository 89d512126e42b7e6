//! Documents on some of the nodes (a topology with `replicas` below the number of nodes):
//! pushes go to a document's replicas only, reconciliation covers the partitions two nodes
//! share, and a document stored where it is not replicated (a hinted write, or a partition
//! moved away) is handed to its replicas and dropped once they all hold it.

use super::*;
use crate::config::TopologyKind;
use crate::core::StoredIndex;
use crate::storage::Store;
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

/// Changes of `doc` made one after the other by a writer outside the cluster: their bytes.
fn written_elsewhere(actor: &str, keys: &[&str]) -> Vec<Vec<u8>> {
    let mut w = AutoCommit::new().with_actor(automerge::ActorId::from(actor.as_bytes()));
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            w.put(ROOT, *key, i as i64).unwrap();
            w.get_last_local_change().unwrap().raw_bytes().to_vec()
        })
        .collect()
}

/// Peer "x", played by the test, pushes `changes` of `doc` to node `to`.
fn push_from_x(c: &mut Cluster, to: &str, doc: &str, changes: Vec<Vec<u8>>) {
    let now = c.now;
    c.node(to).peer_up(now, "x");
    let msg = Message::push(vec![DocChanges {
        doc: doc.to_string(),
        origin: "x".to_string(),
        changes: changes.into_iter().map(ByteBuf::from).collect(),
        want_ack: false,
    }]);
    c.node(to).handle_message(now, "x", via_wire(&msg));
    c.pump(to);
}

/// Whether node `id` holds changes of `doc` that wait for dependencies it lacks.
fn waits_for_dependencies(c: &mut Cluster, id: &str, doc: &str) -> bool {
    c.node(id)
        .doc(doc)
        .is_some_and(|d| !d.get_missing_deps(&[]).is_empty())
}

#[test]
fn changes_waiting_for_lost_dependencies_hold_up_no_handoff() {
    let (mut c, t) = cluster();
    let d = doc_not_on(&t, "c");
    let first = t.replicas_of(&d)[0].to_string();
    c.put("c", &d, "hinted", 7, false);
    c.pump("c");
    // A writer made two changes and lost the first before it got anywhere: the second
    // waits at c and at a replica for a dependency that never comes.
    let lost = written_elsewhere("lost", &["first", "second"]);
    for node in ["c", first.as_str()] {
        push_from_x(&mut c, node, &d, vec![lost[1].clone()]);
        assert!(waits_for_dependencies(&mut c, node, &d), "{node}");
    }
    c.link("a", "b");
    c.link("a", "c");
    c.link("b", "c");
    for _ in 0..4 {
        c.tick_all(10_000);
    }
    assert_eq!(holders(&c, &d), replicas(&t, &d));
    assert_eq!(c.node("c").handed_off(), 1);
    assert!(!c.stored["c"].contains_key(&d), "deleted from c's store");
}

#[test]
fn a_drop_that_waited_for_the_holders_own_persist_happens_at_the_next_round() {
    let (mut c, t) = cluster();
    let d = doc_not_on(&t, "c");
    c.put("c", &d, "hinted", 7, false);
    // c's persist of its hint does not complete yet.
    let list = effects(c.node("c"));
    let batches = persists(&list);
    assert_eq!(batches.len(), 1);
    let token = batches[0].0;
    c.link("a", "b");
    c.link("a", "c");
    c.link("b", "c");
    for _ in 0..4 {
        c.tick_all(10_000);
    }
    // Both replicas hold it and have confirmed: c only waits for its own persist, and
    // they have nothing more to confirm.
    assert_eq!(holders(&c, &d).len(), 3);
    assert_eq!(c.node("c").handed_off(), 0);
    c.node("c").persisted(token);
    c.pump("c");
    c.tick_all(10_000);
    assert_eq!(c.node("c").handed_off(), 1);
    assert_eq!(holders(&c, &d), replicas(&t, &d));
}

#[test]
fn a_hint_written_after_its_document_was_handed_off_reaches_the_replicas() {
    let (mut c, t) = cluster();
    let d = doc_not_on(&t, "c");
    c.link("a", "b");
    c.link("a", "c");
    c.link("b", "c");
    c.put("c", &d, "first", 1, false);
    c.pump("c");
    for _ in 0..4 {
        c.tick_all(10_000);
    }
    assert_eq!(c.node("c").handed_off(), 1);
    // The next hint starts the document afresh at c: under c's actor again, its change
    // would take sequence number 1 a second time, and every replica would refuse it.
    let second = c.put("c", &d, "second", 2, false);
    c.pump("c");
    for _ in 0..4 {
        c.tick_all(10_000);
    }
    assert_eq!(c.node("c").handed_off(), 2);
    assert_eq!(holders(&c, &d), replicas(&t, &d));
    for r in replicas(&t, &d) {
        let node = c.node(&r);
        assert_eq!(node.stats().bad_changes, 0, "{r}");
        let doc = node.load(&d).unwrap().unwrap();
        assert!(doc.get_change_meta_by_hash(&second).is_some(), "{r}");
        assert!(doc.get(ROOT, "first").unwrap().is_some(), "{r}");
    }
}

#[test]
fn a_writer_never_counts_its_own_ack_come_back_as_another_copy() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    let h = c.put("a", "d", "k", 1, true);
    c.pump("a");
    // The change came back to a, which acknowledged it to the node it came from (e.g. a
    // document handed back to a after a topology change); that ack is relayed back to a.
    let own = Message::Ack(vec![wire::Ack {
        doc: "d".into(),
        by: "a".into(),
        hashes: vec![h.0],
    }]);
    let now = c.now;
    c.node("a").handle_message(now, "b", via_wire(&own));
    let list = effects(c.node("a"));
    assert!(
        !list.iter().any(|e| matches!(e, Effect::Acked { .. })),
        "{list:?}"
    );
    // b's own ack still counts.
    c.run();
    assert_eq!(c.acked, [("a".into(), "d".into(), h, "b".into())]);
}

#[test]
fn a_document_read_with_held_back_changes_now_applied_records_its_heads() {
    use super::cache::{loaded, settle, stored_replica};
    let changes = written_elsewhere("w", &["k0", "k1", "k2"]);
    let hash = |i: usize| {
        automerge::Change::from_bytes(changes[i].clone())
            .unwrap()
            .hash()
    };
    let push = |r: &mut Replica, i: usize| {
        let msg = Message::push(vec![DocChanges {
            doc: "d".into(),
            origin: "x".into(),
            changes: vec![ByteBuf::from(changes[i].clone())],
            want_ack: false,
        }]);
        r.handle_message(1, "x", via_wire(&msg));
    };
    let (mut b, mut store) = stored_replica("b", 4);
    b.peer_up(0, "x");
    push(&mut b, 0);
    settle(&mut b, &mut store);
    // The third change waits for the second; it is stored all the same.
    push(&mut b, 2);
    settle(&mut b, &mut store);
    // b restarts: the document is on disk only, its heads [k0] in the store's index.
    let mut index = StoredIndex::new();
    store
        .scan_index(&mut |doc, heads| index.add(doc, heads.unwrap()))
        .unwrap();
    let mut b = Replica::new("b", seed("b", 2), Box::new(Flood), CoreConfig::default());
    b.set_store(index);
    b.peer_up(2, "x");
    // The second change extends the stored heads: taken without loading the document,
    // and the store records heads [k1] ...
    push(&mut b, 1);
    settle(&mut b, &mut store);
    // ... but the document loads to [k2], the change held back now applied: the store
    // must record that.
    let heads = loaded(&mut b, &mut store, "d").get_heads();
    assert_eq!(heads, [hash(2)]);
    settle(&mut b, &mut store);
    let mut recorded = Vec::new();
    store
        .scan_index(&mut |doc, heads| recorded.push((doc.to_string(), heads.unwrap().to_vec())))
        .unwrap();
    assert_eq!(recorded, [("d".to_string(), vec![hash(2).0])]);
}

#[test]
fn a_node_takes_no_push_of_a_document_it_neither_replicates_nor_holds_nor_watches() {
    let (mut c, t) = cluster();
    let d = doc_not_on(&t, "c");
    let changes = written_elsewhere("w", &["k"]);
    // From a peer with another topology, or the answer to a repair c asked for before it
    // handed the document off: kept, it would be a copy nothing hands off.
    push_from_x(&mut c, "c", &d, changes.clone());
    assert!(holders(&c, &d).is_empty());
    assert!(!c.stored.get("c").is_some_and(|s| s.contains_key(&d)));
    // A replica takes it, and so does c once it holds the document (a hint).
    let r = t.replicas_of(&d)[0].to_string();
    push_from_x(&mut c, &r, &d, changes.clone());
    assert_eq!(holders(&c, &d), [r]);
    c.put("c", &d, "hinted", 1, false);
    c.pump("c");
    push_from_x(&mut c, "c", &d, changes);
    let doc = c.node("c").doc(&d).unwrap();
    assert!(doc.get(ROOT, "k").unwrap().is_some());
}

#[test]
fn a_node_takes_the_push_of_a_document_it_watches_without_replicating_it() {
    let (mut c, t) = cluster();
    let d = doc_not_on(&t, "c");
    // What the replicas answer when c asks for the document it watches.
    c.node("c").set_watched(&d, true);
    push_from_x(&mut c, "c", &d, written_elsewhere("w", &["k"]));
    let doc = c.node("c").doc(&d).unwrap();
    assert!(doc.get(ROOT, "k").unwrap().is_some());
}

#[test]
fn on_a_ring_a_stray_far_from_its_replicas_is_carried_to_them_hop_by_hop() {
    let (mut c, _, d) = Cluster::ring();
    // a takes a write of it (a hint: a is linked to neither replica).
    c.put("a", &d, "hinted", 7, false);
    c.pump("a");
    c.run();
    assert_eq!(c.node("a").stray_count(), 1);
    for _ in 0..10 {
        c.tick_all(10_000);
    }
    let holders: Vec<String> = RING
        .iter()
        .filter(|id| c.heads(id).iter().any(|(doc, _)| *doc == d))
        .map(|id| id.to_string())
        .collect();
    assert_eq!(
        holders,
        ["c", "d"],
        "carried to both replicas, dropped elsewhere"
    );
    assert!(!c.stored["a"].contains_key(&d), "deleted from a's store");
    for id in RING {
        assert_eq!(c.node(id).stray_count(), 0, "{id} holds no stray");
    }
    assert_eq!(c.node("a").handed_off(), 1);
    for r in ["c", "d"] {
        let doc = c.node(r).load(&d).unwrap().unwrap();
        assert_eq!(
            doc.get(ROOT, "hinted").unwrap().unwrap().0.as_i64(),
            Some(7)
        );
    }
}

#[test]
fn a_leaving_node_takes_no_more_pushed_changes() {
    let (mut c, t) = cluster();
    let d = (0..)
        .map(|i| format!("doc-{i}"))
        .find(|d| t.holds("c", d))
        .unwrap();
    c.put("c", &d, "before", 1, false);
    c.pump("c");
    let heads = c.node("c").heads();
    // Draining: its copy is handed off as it is; writers count the other replicas.
    c.node("c").set_leaving(true);
    push_from_x(&mut c, "c", &d, written_elsewhere("w", &["k"]));
    assert_eq!(c.node("c").heads(), heads);
    c.node("c").set_leaving(false);
    push_from_x(&mut c, "c", &d, written_elsewhere("w", &["k"]));
    assert_ne!(c.node("c").heads(), heads, "taken again once it stays");
}
