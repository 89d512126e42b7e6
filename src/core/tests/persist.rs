//! Persist batches that storage failed: no acknowledgement, no bookkeeping left behind, and
//! the changes written again (their documents kept in memory meanwhile); changes taken
//! without loading their document kept until the batch with the last of them is durable.

use super::cache::{linked_to_stored, loaded, settle, stored_replica};
use super::*;
use crate::core::{Fetched, ReadKind};
use crate::storage::{DocAppend, MemoryStore, Store};

/// The one persist batch among `list`, taken.
fn take_persist(list: Vec<Effect>) -> (u64, Vec<DocAppend>) {
    let mut found: Vec<(u64, Vec<DocAppend>)> = list
        .into_iter()
        .filter_map(|e| match e {
            Effect::Persist { token, docs } => Some((token, docs)),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "one persist batch");
    found.remove(0)
}

fn acks_in(list: &[Effect]) -> usize {
    sends(list)
        .iter()
        .filter(|(_, m)| matches!(m, Message::Ack(_)))
        .count()
}

/// Delivers `from`'s pushes to `to`.
fn deliver(from: &mut Replica, to: &mut Replica, now: u64) {
    for (peer, m) in sends(&effects(from)) {
        if peer == to.id() && matches!(m, Message::Push { .. }) {
            to.handle_message(now, from.id(), via_wire(&m));
        }
    }
}

#[test]
fn a_failed_persist_sends_no_ack_keeps_no_bookkeeping_and_is_written_again() {
    let retry_ms = CoreConfig::default().persist_retry_ms;
    let mut a = replica("a");
    let mut b = replica("b");
    a.peer_up(0, "b");
    b.peer_up(0, "a");
    effects(&mut a);
    effects(&mut b);
    let hash = put(&mut a, 1, "d", "k", 1, true);
    deliver(&mut a, &mut b, 2);
    let (token, docs) = take_persist(effects(&mut b));
    assert_eq!(
        b.persist_bookkeeping(),
        (1, 1, 0),
        "awaited, with an ack owed"
    );
    b.persist_failed(&[token], docs);
    assert_eq!(
        b.persist_bookkeeping(),
        (0, 0, 1),
        "the failed batch is forgotten; its change waits to be written again"
    );
    assert_eq!(b.stats().persist_failures, 1);
    assert!(b.unwritten_bytes() > 0, "held to be written again");
    // Nothing is acknowledged for it, even if its token is reported again.
    b.persisted(token);
    assert_eq!(acks_in(&effects(&mut b)), 0);
    // Not written again before the retry time.
    b.handle_timeout(2 + retry_ms / 2);
    assert!(persists(&effects(&mut b)).is_empty());
    b.handle_timeout(2 + retry_ms);
    let (again, docs) = take_persist(effects(&mut b));
    assert_ne!(again, token);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].doc, "d");
    assert_eq!(
        docs[0].changes,
        vec![change_bytes(a.doc("d").unwrap(), hash)]
    );
    assert_eq!(docs[0].heads, vec![hash.0]);
    assert_eq!(b.unwritten_bytes(), 0, "handed to storage");
    b.persisted(again);
    assert_eq!(
        acks_in(&effects(&mut b)),
        0,
        "its ack was dropped with the failure"
    );
    assert_eq!(b.persist_bookkeeping(), (0, 0, 0));
}

#[test]
fn a_document_whose_persist_failed_stays_in_memory_until_it_is_written() {
    let (mut a, mut store) = stored_replica("a", 1);
    let hash = put(&mut a, 1, "d0", "k", 1, false);
    let (token, docs) = take_persist(effects(&mut a));
    a.persist_failed(&[token], docs);
    // Other documents fill the one-document cache; storage works for them.
    for i in 1..4 {
        put(&mut a, 2, &format!("d{i}"), "k", i, false);
        settle(&mut a, &mut store);
    }
    assert!(
        a.doc("d0").is_some(),
        "kept in memory: the store does not have its change"
    );
    assert_eq!(store.reader().heads("d0").unwrap(), None);
    // A batch was durable, so the failed one is written at the next tick.
    a.handle_timeout(3);
    settle(&mut a, &mut store);
    assert_eq!(store.reader().heads("d0").unwrap(), Some(vec![hash.0]));
    put(&mut a, 4, "d9", "k", 9, false);
    settle(&mut a, &mut store);
    assert!(a.doc("d0").is_none(), "evicted once durable");
    assert_eq!(loaded(&mut a, &mut store, "d0").get_heads(), vec![hash]);
}

/// `linked_to_stored`, with a document "d" written by a, stored by b and evicted there.
fn d_stored_and_evicted() -> (Replica, Replica, MemoryStore) {
    let (mut a, mut b, mut store) = linked_to_stored();
    put(&mut a, 1, "d", "k", 1, false);
    deliver(&mut a, &mut b, 1);
    settle(&mut b, &mut store);
    loaded(&mut b, &mut store, "d");
    put(&mut b, 2, "other", "k", 1, false);
    settle(&mut b, &mut store);
    assert!(b.doc("d").is_none(), "evicted");
    (a, b, store)
}

/// Flushes `b` and serves its reads, which must be of logs only, from `store`.
fn read_logs(b: &mut Replica, store: &MemoryStore) {
    b.flush();
    for e in b.drain_effects() {
        if let Effect::Read { doc, kind } = e {
            assert_eq!(kind, ReadKind::Log, "only its log is read");
            let fetched = Fetched::read(store.reader().as_ref(), &doc, kind);
            b.read_done(3, &doc, fetched);
        }
    }
}

#[test]
fn changes_taken_unloaded_whose_persist_failed_are_kept_until_written() {
    let (mut a, mut b, mut store) = d_stored_and_evicted();
    // a's second change is taken without loading "d" (its stored log is read), and its
    // batch fails.
    let second = put(&mut a, 3, "d", "k", 2, false);
    deliver(&mut a, &mut b, 3);
    read_logs(&mut b, &store);
    let (token, docs) = take_persist(effects(&mut b));
    b.persist_failed(&[token], docs);
    assert!(b.doc("d").is_none(), "taken without loading it");
    // A third, on top of it, is stored; the second must not be forgotten meanwhile.
    let third = put(&mut a, 4, "d", "k", 3, false);
    deliver(&mut a, &mut b, 4);
    settle(&mut b, &mut store);
    assert!(b.doc("d").is_none());
    b.handle_timeout(5);
    settle(&mut b, &mut store);
    let stored = store.load_all().unwrap();
    let d = stored.iter().find(|s| s.id == "d").unwrap();
    assert_eq!(d.changes.len(), 3, "the second is written after the third");
    assert_eq!(b.stats().doc_loads, 1, "not loaded again");
    let doc = loaded(&mut b, &mut store, "d");
    assert_eq!(doc.get_heads(), vec![third]);
    assert!(doc.get_change_meta_by_hash(&second).is_some());
}

#[test]
fn changes_taken_unloaded_stay_until_the_batch_with_the_last_of_them_is_durable() {
    let (mut a, mut b, mut store) = d_stored_and_evicted();
    // A second change is taken without loading "d" (its log read first) into one batch,
    // a third on top of it into the next.
    put(&mut a, 3, "d", "k", 2, false);
    deliver(&mut a, &mut b, 3);
    read_logs(&mut b, &store);
    let (first, docs) = take_persist(effects(&mut b));
    let third = put(&mut a, 4, "d", "k", 3, false);
    deliver(&mut a, &mut b, 4);
    let (second, later) = take_persist(effects(&mut b));
    assert!(b.doc("d").is_none(), "taken without loading it");
    // The first batch is durable, the second not yet: the third change is only in memory,
    // and must stay there.
    store.append(&docs).unwrap();
    b.persisted(first);
    assert_eq!(loaded(&mut b, &mut store, "d").get_heads(), vec![third]);
    store.append(&later).unwrap();
    b.persisted(second);
    let stored = store.load_all().unwrap();
    assert_eq!(
        stored.iter().find(|s| s.id == "d").unwrap().changes.len(),
        3
    );
}

#[test]
fn a_new_document_taken_unloaded_is_made_of_its_changes_without_a_read() {
    let (mut a, mut b, mut store) = linked_to_stored();
    // a creates "n" in two changes; b takes both without loading "n" (new to it) into a
    // batch that is not durable yet.
    put(&mut a, 1, "n", "k", 1, false);
    let second = put(&mut a, 1, "n", "k", 2, false);
    deliver(&mut a, &mut b, 2);
    let (token, docs) = take_persist(effects(&mut b));
    assert!(b.doc("n").is_none(), "taken without loading it");
    // A local write needs "n": the changes taken are the whole document, so it is made of
    // them at once, without a read (the store has nothing of it yet).
    assert!(b.prepare("n"), "made of the changes taken");
    assert!(
        !effects(&mut b)
            .iter()
            .any(|e| matches!(e, Effect::Read { .. })),
        "no read"
    );
    assert_eq!(b.load("n").unwrap().unwrap().get_heads(), vec![second]);
    let mine = put(&mut b, 4, "n", "k", 3, false);
    // The batch becomes durable; "n" is kept in memory until its own write is too, and
    // the store ends with all three changes.
    store.append(&docs).unwrap();
    b.persisted(token);
    settle(&mut b, &mut store);
    let stored = store.load_all().unwrap();
    let n = stored.iter().find(|s| s.id == "n").unwrap();
    assert_eq!(n.changes.len(), 3);
    assert_eq!(loaded(&mut b, &mut store, "n").get_heads(), vec![mine]);
}
