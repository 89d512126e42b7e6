//! Documents lent out of the replica for heavy work elsewhere: work on them waits for their
//! return and then runs in order; other documents go on; what was done on the lent
//! document is persisted and pushed as if done in place.

use super::*;

fn put_tx(key: &'static str, value: i64) -> impl FnOnce(&mut Transaction<'_>) -> TxResult<()> {
    move |tx| {
        tx.put(ROOT, key, value)?;
        Ok(())
    }
}

fn value(r: &Replica, doc: &str, key: &str) -> Option<i64> {
    let (v, _) = r.doc(doc)?.get(ROOT, key).ok()??;
    v.as_i64()
}

#[test]
fn work_on_a_lent_document_waits_for_its_return_while_other_documents_go_on() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    c.put("a", "d", "k", 1, false);
    c.run();
    let mut lent = c.node("b").lend("d").unwrap();
    assert!(!c.node("b").prepare("d"), "a lent document is not ready");
    assert!(c.node("b").doc("d").is_none());
    let now = c.now;
    let refused = c.node("b").local_change(now, "d", false, put_tx("x", 0));
    assert!(matches!(
        refused,
        Err(ChangeError::Core(CoreError::NotRead { .. }))
    ));

    // A's next change of d waits at b; a change of another document does not.
    c.put("a", "d", "k", 2, false);
    c.put("a", "e", "k", 7, false);
    c.pump("a");
    c.run();
    assert_eq!(value(&c.nodes["b"], "e", "k"), Some(7));

    // The borrower changes d; on return the change goes out, then the waiting push runs.
    let ((), made) = lent.change(put_tx("x", 3)).unwrap();
    let hash = made.as_ref().map(|m| m.hash());
    assert!(hash.is_some());
    let write = c.node("b").return_change(now, lent, made, false);
    assert_eq!(write.hash, hash);
    assert!(write.persist_token.is_some());
    let list = effects(c.node("b"));
    let persisted: Vec<String> = persists(&list)
        .into_iter()
        .flat_map(|(_, docs)| docs.into_iter().map(|(d, _)| d))
        .collect();
    assert!(persisted.contains(&"d".to_string()), "{persisted:?}");
    let pushed = pushes_to(&list, "a");
    assert!(
        pushed.iter().any(|g| g.doc == "d"),
        "b's change pushed to a"
    );
    c.carry_out("b", list);
    c.run();
    assert_eq!(value(&c.nodes["b"], "d", "k"), Some(2));
    assert_eq!(value(&c.nodes["b"], "d", "x"), Some(3));
    assert_eq!(value(&c.nodes["a"], "d", "x"), Some(3));
    assert_eq!(c.heads("a"), c.heads("b"));
}

#[test]
fn a_merge_on_a_lent_new_document_is_persisted_and_pushed_on_return() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    let mut outside = AutoCommit::new();
    outside.put(ROOT, "from", "outside").unwrap();
    outside.put(ROOT, "n", 5).unwrap();
    let data = outside.save();

    let mut lent = c.node("b").lend("new").unwrap();
    let merged = lent.merge(&data);
    let now = c.now;
    let write = c.node("b").return_merge(now, lent, merged, false).unwrap();
    assert_eq!(write.value, 1);
    assert!(write.persist_token.is_some());
    assert!(write.hash.is_none(), "no acknowledgement awaited");
    c.pump("b");
    c.run();
    assert_eq!(value(&c.nodes["a"], "new", "n"), Some(5));
    assert_eq!(c.stored["b"]["new"].len(), 1, "persisted at b");
    assert_eq!(c.heads("a"), c.heads("b"));
}

#[test]
fn a_refused_change_or_bad_merge_on_a_lent_new_document_leaves_nothing() {
    let mut r = replica("b");
    let mut lent = r.lend("z").unwrap();
    let refused: Result<((), _), &str> = lent.change(|_tx| Err("no"));
    assert!(refused.is_err());
    let write = r.return_change(1, lent, None, false);
    assert!(write.hash.is_none() && write.persist_token.is_none());
    assert!(r.heads().is_empty(), "no document z");
    assert!(r.prepare("z"), "z is back (and empty)");

    let mut lent = r.lend("z").unwrap();
    let merged = lent.merge(b"not automerge");
    let answer = r.return_merge(2, lent, merged, false);
    assert!(matches!(answer, Err(CoreError::BadAutomergeData { .. })));
    assert!(r.heads().is_empty());
    assert!(effects(&mut r).is_empty(), "nothing persisted or sent");
}

#[test]
fn a_document_lent_for_reading_comes_back_unchanged_and_the_waiting_push_runs() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    c.put("a", "d", "k", 1, false);
    c.run();
    let lent = c.node("b").lend("d").unwrap();
    let heads = lent.doc().get_heads();
    c.put("a", "d", "k", 2, false);
    c.pump("a");
    c.run();
    let now = c.now;
    c.node("b").return_read(now, lent);
    c.pump("b");
    c.run();
    assert_eq!(value(&c.nodes["b"], "d", "k"), Some(2));
    assert_ne!(c.nodes["b"].doc("d").unwrap().get_heads(), heads);
    assert_eq!(c.heads("a"), c.heads("b"));
}

fn heavy() -> CoreConfig {
    CoreConfig {
        heavy_ops: 1,
        ..CoreConfig::default()
    }
}

fn push_of(a: &Replica, doc: &str, hash: ChangeHash, want_ack: bool) -> Message {
    Message::push(vec![DocChanges {
        doc: doc.into(),
        origin: "a".into(),
        changes: vec![ByteBuf::from(change_bytes(a.doc(doc).unwrap(), hash))],
        want_ack,
    }])
}

#[test]
fn a_heavy_push_is_applied_as_a_job_and_accepted_only_when_it_comes_back() {
    let mut a = replica("a");
    let mut b = replica_with("b", heavy());
    for (r, peers) in [(&mut a, ["b", "c"]), (&mut b, ["a", "c"])] {
        for p in peers {
            r.peer_up(0, p);
        }
        effects(r);
    }
    let first = put(&mut a, 1, "d", "k", 1, true);
    let second = put(&mut a, 2, "d", "k", 2, false);
    b.handle_message(3, "a", push_of(&a, "d", first, true));
    let list = effects(&mut b);
    assert_eq!(
        list,
        vec![Effect::Apply { doc: "d".into() }],
        "nothing else yet"
    );
    let mut job = b.take_job("d").unwrap();
    assert_eq!(b.jobs_in_flight(), 1);

    // While the job is out, the next push waits; nothing of d leaves b.
    b.handle_message(4, "a", push_of(&a, "d", second, false));
    assert!(effects(&mut b).is_empty());
    job.run();
    assert!(b.job_done(5, job).is_none());
    assert_eq!(b.jobs_in_flight(), 1, "the waiting push is the next job");

    // Back: the first change is persisted and forwarded; the waiting push became a job.
    let list = effects(&mut b);
    assert!(list.contains(&Effect::Apply { doc: "d".into() }));
    let forwarded = pushes_to(&list, "c");
    assert_eq!(forwarded.len(), 1, "the first change goes on to c");
    let (token, docs) = persists(&list).pop().expect("a persist");
    assert_eq!(docs[0].0, "d");
    let mut job = b.take_job("d").expect("the second push's job");
    job.run();
    assert!(b.job_done(7, job).is_none());
    b.persisted(token);
    // The first change's ack was deferred while d was out: it goes with the next batch.
    let mut list = effects(&mut b);
    for (token, _) in persists(&list) {
        b.persisted(token);
    }
    list.extend(effects(&mut b));
    let acks: Vec<_> = sends(&list)
        .into_iter()
        .filter(|(to, m)| to == "a" && matches!(m, Message::Ack(_)))
        .collect();
    assert_eq!(
        acks.len(),
        1,
        "the want-ack change is acknowledged once durable"
    );
    let doc = b.doc("d").unwrap();
    assert!(doc.get_change_meta_by_hash(&second).is_some());
    assert_eq!(b.stats().lent, 2);
    assert_eq!(b.jobs_in_flight(), 0);
}

#[test]
fn a_cluster_whose_pushes_are_all_heavy_converges() {
    let mut c = Cluster::new(&["a", "b", "c"], heavy());
    c.link("a", "b");
    c.link("b", "c");
    for i in 0..20 {
        let writer = ["a", "b", "c"][i % 3];
        c.put(writer, &format!("d{}", i % 4), "k", i as i64, i % 2 == 0);
        c.pump(writer);
        c.run();
    }
    c.tick_all(10_000);
    assert_eq!(c.heads("a"), c.heads("b"));
    assert_eq!(c.heads("b"), c.heads("c"));
    assert!(c.nodes["b"].stats().lent > 0);
    assert_eq!(
        c.acked.len(),
        10 * 2,
        "every want-ack write acked by both other nodes"
    );
}

#[test]
fn a_change_in_the_open_batch_of_a_document_lent_before_the_flush_is_stored_with_its_heads() {
    let mut r = replica("a");
    let hash = put(&mut r, 1, "d", "k", 1, false);
    let lent = r.lend("d").unwrap();
    let list = effects(&mut r);
    let heads: Vec<Vec<[u8; 32]>> = list
        .iter()
        .filter_map(|e| match e {
            Effect::Persist { docs, .. } => Some(docs.iter().map(|d| d.heads.clone())),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        heads,
        vec![vec![hash.0]],
        "the heads it had when lent, not none"
    );
    r.return_read(2, lent);
    assert_eq!(r.doc("d").unwrap().get_heads(), vec![hash]);
}
