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
    let ((), hash) = lent.change(put_tx("x", 3)).unwrap();
    assert!(hash.is_some());
    let write = c.node("b").return_change(now, lent, hash, false);
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
    let (count, token) = c.node("b").return_merge(now, lent, merged).unwrap();
    assert_eq!(count, 1);
    assert!(token.is_some());
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
    let answer = r.return_merge(2, lent, merged);
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
