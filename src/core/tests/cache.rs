//! The document cache over a store: eviction, reloads, changes taken without loading the
//! document, and answers from the stored log.

use std::sync::Arc;

use super::*;
use crate::core::StoredIndex;
use crate::storage::{MemoryStore, Store};

/// A replica over a fresh in-memory store holding at most `cache` documents in memory.
pub(super) fn stored_replica(id: &str, cache: usize) -> (Replica, MemoryStore) {
    let store = MemoryStore::new();
    let config = CoreConfig {
        cache_docs: cache,
        ..CoreConfig::default()
    };
    let mut r = replica_with(id, config);
    r.set_store(Arc::clone(&store.reader()), StoredIndex::new());
    (r, store)
}

/// Flushes `r` and carries out its persists into `store`; returns the other effects.
/// Replica "a" (in memory) linked to "b", whose store holds at most one document in memory.
pub(super) fn linked_to_stored() -> (Replica, Replica, MemoryStore) {
    let (mut b, mut store) = stored_replica("b", 1);
    b.peer_up(0, "a");
    settle(&mut b, &mut store);
    let mut a = replica("a");
    a.peer_up(0, "b");
    effects(&mut a);
    (a, b, store)
}

pub(super) fn settle(r: &mut Replica, store: &mut MemoryStore) -> Vec<Effect> {
    let mut rest = Vec::new();
    for _ in 0..10 {
        let list = effects(r);
        if list.is_empty() {
            break;
        }
        for e in list {
            match e {
                Effect::Persist { token, docs } => {
                    store.append(&docs).unwrap();
                    r.persisted(token);
                }
                other => rest.push(other),
            }
        }
    }
    rest
}

#[test]
fn evicted_documents_reload_with_their_heads() {
    let (mut a, mut store) = stored_replica("a", 2);
    let mut heads = BTreeMap::new();
    for i in 0..10 {
        let doc = format!("d{i}");
        let h = put(&mut a, 1, &doc, "k", i, false);
        heads.insert(doc, vec![h]);
        settle(&mut a, &mut store);
    }
    let counts = a.doc_counts();
    assert_eq!(counts.stored, 10);
    assert!(counts.loaded <= 2, "{counts:?}");
    assert!(a.stats().doc_evictions >= 8);
    for (doc, h) in &heads {
        assert_eq!(&a.load(doc).unwrap().unwrap().get_heads(), h);
    }
    assert!(a.stats().doc_loads >= 8);
    let listed: BTreeMap<String, Vec<ChangeHash>> = a.heads().unwrap().into_iter().collect();
    assert_eq!(listed, heads);
    // A write to an evicted document builds on what the store holds.
    let h = put(&mut a, 2, "d0", "k2", 1, false);
    settle(&mut a, &mut store);
    let doc = a.load("d0").unwrap().unwrap();
    assert_eq!(doc.get_heads(), vec![h]);
    assert_eq!(doc.get_changes(&[]).len(), 2);
}

#[test]
fn changes_extending_an_unloaded_document_are_stored_without_loading_it() {
    let (mut a, mut b, mut store) = linked_to_stored();
    let first = put(&mut a, 1, "d", "k", 1, false);
    let push = |a: &mut Replica| -> Vec<Message> {
        sends(&effects(a))
            .into_iter()
            .filter(|(to, m)| to == "b" && matches!(m, Message::Push(_)))
            .map(|(_, m)| via_wire(&m))
            .collect()
    };
    for m in push(&mut a) {
        b.handle_message(2, "a", m);
    }
    settle(&mut b, &mut store);
    // Another document pushes "d" out of b's one-document cache.
    put(&mut b, 3, "other", "k", 1, false);
    settle(&mut b, &mut store);
    assert!(b.doc("d").is_none(), "evicted");
    let loads = b.stats().doc_loads;
    let second = put(&mut a, 4, "d", "k", 2, true);
    for m in push(&mut a) {
        b.handle_message(5, "a", m);
    }
    let rest = settle(&mut b, &mut store);
    assert_eq!(b.stats().doc_loads, loads, "taken without loading");
    assert!(b.doc("d").is_none());
    assert_eq!(store.reader().heads("d").unwrap(), Some(vec![second.0]));
    // Acknowledged once durable, as any pushed change.
    assert!(rest.iter().any(|e| matches!(e,
        Effect::Send { msg: Message::Ack(acks), .. } if acks.iter().any(|k| k.hashes.contains(&second.0)))));
    // The same push again is a duplicate; a change on top of the head still goes in.
    let doc = b.load("d").unwrap().unwrap();
    assert_eq!(doc.get_heads(), vec![second]);
    assert!(doc.get_change_meta_by_hash(&first).is_some());
}

#[test]
fn a_want_is_answered_from_the_stored_log() {
    let (mut b, mut store) = stored_replica("b", 1);
    b.peer_up(0, "a");
    settle(&mut b, &mut store);
    let first = put(&mut b, 1, "d", "k", 1, false);
    let second = put(&mut b, 2, "d", "k", 2, false);
    settle(&mut b, &mut store);
    put(&mut b, 3, "other", "k", 1, false);
    settle(&mut b, &mut store);
    assert!(b.doc("d").is_none(), "evicted");
    let loads = b.stats().doc_loads;
    let want = Message::Want(vec![wire::Want {
        doc: "d".into(),
        heads: vec![first.0],
        reply: false,
    }]);
    b.handle_message(4, "a", want);
    let rest = settle(&mut b, &mut store);
    assert_eq!(b.stats().doc_loads, loads, "answered without loading");
    let sent = pushes_to(&rest, "a");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].changes.len(), 1);
    let change = automerge::Change::from_bytes(sent[0].changes[0].to_vec()).unwrap();
    assert_eq!(change.hash(), second);
}

#[test]
fn a_stored_change_automerge_refuses_is_left_out_when_the_document_loads() {
    // Two changes by one actor with the same sequence number: Automerge takes one only.
    let actor = automerge::ActorId::from([7u8; 16]);
    let mut one = AutoCommit::new().with_actor(actor.clone());
    one.put(ROOT, "k", 1).unwrap();
    let mut two = AutoCommit::new().with_actor(actor);
    two.put(ROOT, "k", 2).unwrap();
    let first = one.get_last_local_change().unwrap().raw_bytes().to_vec();
    let clash = two.get_last_local_change().unwrap().raw_bytes().to_vec();
    let loaded = crate::core::LoadedDoc::decode("d", None, &[first, clash]).unwrap();
    assert_eq!(loaded.heads().len(), 1);
    assert!(crate::core::LoadedDoc::decode("d", None, &[b"junk".to_vec()]).is_err());
}
