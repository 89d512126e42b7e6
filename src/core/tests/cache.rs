//! The document cache over a store: eviction, and documents read as effects (work on a
//! document being read waits; other documents go on).

use super::*;
use crate::core::{Fetched, ReadKind, StoredIndex};
use crate::storage::{MemoryStore, Store};
use automerge::sync::{self, SyncDoc};

/// A replica over a fresh in-memory store holding at most `cache` documents in memory.
pub(super) fn stored_replica(id: &str, cache: usize) -> (Replica, MemoryStore) {
    let store = MemoryStore::new();
    let config = CoreConfig {
        cache_docs: cache,
        ..CoreConfig::default()
    };
    let mut r = replica_with(id, config);
    r.set_store(StoredIndex::new());
    (r, store)
}

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

/// What the driver's reader threads do for an [`Effect::Read`].
pub(super) fn read(store: &MemoryStore, doc: &str, kind: ReadKind) -> Result<Fetched, CoreError> {
    Fetched::read(store.reader().as_ref(), doc, kind)
}

/// Flushes `r`, carries out its persists into `store` and serves its reads from it at
/// once; returns the other effects.
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
                Effect::Read { doc, kind } => r.read_done(0, &doc, read(store, &doc, kind)),
                other => rest.push(other),
            }
        }
    }
    rest
}

/// The document, read from the store first if it is not in memory.
pub(super) fn loaded<'a>(r: &'a mut Replica, store: &mut MemoryStore, doc: &str) -> &'a Automerge {
    for _ in 0..10 {
        if r.prepare(doc) {
            break;
        }
        settle(r, store);
    }
    r.load(doc).unwrap().unwrap()
}

/// Loads `doc`, then fills `b`'s one-document cache with another document, so that `doc`
/// is evicted and its heads are not known without reading it.
fn evict(b: &mut Replica, store: &mut MemoryStore, doc: &str) {
    loaded(b, store, doc);
    put(b, 3, "other", "k", 1, false);
    settle(b, store);
    assert!(b.doc(doc).is_none(), "{doc} evicted");
}

/// `linked_to_stored`, with a document "d" written by a and stored by b, which holds it
/// neither in memory nor knows its heads.
fn d_stored_on_b_not_in_memory() -> (Replica, Replica, MemoryStore) {
    let (mut a, mut b, mut store) = linked_to_stored();
    put(&mut a, 1, "d", "k", 1, false);
    send_all(&mut a, &mut b, 2);
    settle(&mut b, &mut store);
    evict(&mut b, &mut store, "d");
    (a, b, store)
}

/// Flushes `from` and delivers everything it sends to `to`, through the codec.
fn send_all(from: &mut Replica, to: &mut Replica, now: u64) {
    let id = from.id().to_string();
    for (_, m) in sends(&effects(from)) {
        to.handle_message(now, &id, via_wire(&m));
    }
}

fn reads_of(list: &[Effect]) -> Vec<(String, ReadKind)> {
    list.iter()
        .filter_map(|e| match e {
            Effect::Read { doc, kind } => Some((doc.clone(), *kind)),
            _ => None,
        })
        .collect()
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
        if a.doc(doc).is_none() {
            assert!(matches!(a.load(doc), Err(CoreError::NotRead { .. })));
        }
        assert_eq!(&loaded(&mut a, &mut store, doc).get_heads(), h);
    }
    assert!(a.stats().doc_loads >= 8);
    let listed: BTreeMap<String, Vec<ChangeHash>> = store
        .reader()
        .all_heads()
        .unwrap()
        .into_iter()
        .map(|(id, h)| (id, h.into_iter().map(ChangeHash).collect()))
        .collect();
    assert_eq!(listed, heads);
    // A write to an evicted document builds on what the store holds, once it is read.
    loaded(&mut a, &mut store, "d0");
    let h = put(&mut a, 2, "d0", "k2", 1, false);
    settle(&mut a, &mut store);
    let doc = loaded(&mut a, &mut store, "d0");
    assert_eq!(doc.get_heads(), vec![h]);
    assert_eq!(doc.get_changes(&[]).len(), 2);
}

#[test]
fn a_local_change_to_a_stored_document_not_in_memory_waits_for_its_read() {
    let (mut b, mut store) = stored_replica("b", 1);
    put(&mut b, 1, "d", "k", 1, false);
    settle(&mut b, &mut store);
    evict(&mut b, &mut store, "d");
    // Without prepare, the change is refused (it would fork the document's history).
    let refused = b.local_change(4, "d", false, |tx: &mut Transaction<'_>| -> TxResult<()> {
        tx.put(ROOT, "k", 2)
    });
    assert!(matches!(
        refused,
        Err(crate::core::ChangeError::Core(CoreError::NotRead { .. }))
    ));
    assert!(!b.prepare("d"));
    assert!(!b.prepare("d"), "asked once");
    assert_eq!(
        reads_of(&b.drain_effects()),
        vec![("d".into(), ReadKind::Doc)]
    );
    assert_eq!(b.reads_in_flight(), 1);
    b.read_done(5, "d", read(&store, "d", ReadKind::Doc));
    assert!(b.prepare("d"));
    let h = put(&mut b, 6, "d", "k", 2, false);
    settle(&mut b, &mut store);
    assert_eq!(store.reader().heads("d").unwrap(), Some(vec![h.0]));
    let doc = b.load("d").unwrap().unwrap();
    assert_eq!(doc.get_changes(&[]).len(), 2);
}

#[test]
fn a_push_waits_for_its_documents_read_while_other_documents_go_on() {
    let (mut a, mut b, mut store) = d_stored_on_b_not_in_memory();
    let second = put(&mut a, 4, "d", "k", 2, true);
    let other = put(&mut a, 4, "e", "k", 1, true);
    send_all(&mut a, &mut b, 5);
    let loads = b.stats().doc_loads;
    b.flush();
    let list = b.drain_effects();
    // Only its heads and log are read: the push extends them.
    assert_eq!(reads_of(&list), vec![("d".into(), ReadKind::Log)]);
    // "e" is new here: persisted at once, while "d" waits for its read.
    let persisted: Vec<String> = list
        .iter()
        .filter_map(|e| match e {
            Effect::Persist { docs, .. } => Some(docs.iter().map(|d| d.doc.clone())),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(persisted, vec!["e".to_string()]);
    for e in list {
        if let Effect::Persist { token, docs } = e {
            store.append(&docs).unwrap();
            b.persisted(token);
        }
    }
    let acks = b.drain_effects();
    let acked = |list: &[Effect], h: ChangeHash| {
        list.iter().any(|e| matches!(e,
            Effect::Send { msg: Message::Ack(acks), .. } if acks.iter().any(|k| k.hashes.contains(&h.0))))
    };
    assert!(acked(&acks, other));
    assert!(!acked(&acks, second));
    // The read arrives: the push is taken (without loading "d"), persisted, acknowledged.
    b.read_done(6, "d", read(&store, "d", ReadKind::Log));
    let rest = settle(&mut b, &mut store);
    assert!(acked(&rest, second));
    assert_eq!(store.reader().heads("d").unwrap(), Some(vec![second.0]));
    assert_eq!(
        b.stats().doc_loads,
        loads,
        "taken without loading the document"
    );
    assert_eq!(loaded(&mut b, &mut store, "d").get_changes(&[]).len(), 2);
}

#[test]
fn a_failed_read_drops_the_waiting_work_and_the_next_use_reads_again() {
    let (mut a, mut b, mut store) = d_stored_on_b_not_in_memory();
    let second = put(&mut a, 4, "d", "k", 2, true);
    let push: Vec<Message> = sends(&effects(&mut a))
        .into_iter()
        .map(|(_, m)| via_wire(&m))
        .collect();
    for m in push.clone() {
        b.handle_message(5, "a", m);
    }
    b.flush();
    assert_eq!(
        reads_of(&b.drain_effects()),
        vec![("d".into(), ReadKind::Log)]
    );
    let failed = Err(CoreError::Storage {
        doc: "d".into(),
        detail: "disk on fire".into(),
    });
    b.read_done(6, "d", failed);
    assert_eq!(b.stats().doc_load_errors, 1);
    let rest = settle(&mut b, &mut store);
    assert!(rest.is_empty(), "nothing acknowledged: {rest:?}");
    assert_eq!(b.reads_in_flight(), 0);
    // The push again (as anti-entropy would bring it): read again, and taken.
    for m in push {
        b.handle_message(7, "a", m);
    }
    settle(&mut b, &mut store);
    assert_eq!(store.reader().heads("d").unwrap(), Some(vec![second.0]));
}

#[test]
fn a_want_for_a_stored_document_not_in_memory_is_answered_after_its_read() {
    let (mut b, mut store) = stored_replica("b", 1);
    b.peer_up(0, "a");
    settle(&mut b, &mut store);
    let first = put(&mut b, 1, "d", "k", 1, false);
    let second = put(&mut b, 2, "d", "k", 2, false);
    settle(&mut b, &mut store);
    evict(&mut b, &mut store, "d");
    let want = Message::Want(vec![wire::Want {
        doc: "d".into(),
        heads: vec![first.0],
        reply: false,
    }]);
    let loads = b.stats().doc_loads;
    b.handle_message(4, "a", want);
    b.flush();
    let list = b.drain_effects();
    assert_eq!(reads_of(&list), vec![("d".into(), ReadKind::Log)]);
    assert!(pushes_to(&list, "a").is_empty());
    b.read_done(5, "d", read(&store, "d", ReadKind::Log));
    let rest = settle(&mut b, &mut store);
    assert_eq!(b.stats().doc_loads, loads, "answered from the stored log");
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

#[test]
fn a_push_that_does_not_extend_the_stored_heads_reads_the_whole_document_next() {
    let (mut a, mut b, mut store) = d_stored_on_b_not_in_memory();
    // c2 is lost on the way; c3 (on top of it) arrives first.
    let c2: Vec<Message> = {
        put(&mut a, 4, "d", "k", 2, false);
        sends(&effects(&mut a))
            .into_iter()
            .map(|(_, m)| via_wire(&m))
            .collect()
    };
    let c3 = put(&mut a, 5, "d", "k", 3, false);
    send_all(&mut a, &mut b, 6);
    b.flush();
    assert_eq!(
        reads_of(&b.drain_effects()),
        vec![("d".into(), ReadKind::Log)]
    );
    b.read_done(7, "d", read(&store, "d", ReadKind::Log));
    b.flush();
    // Its dependency is not in the stored heads: the document itself is read, then the
    // change waits in it for c2.
    assert_eq!(
        reads_of(&b.drain_effects()),
        vec![("d".into(), ReadKind::Doc)]
    );
    b.read_done(8, "d", read(&store, "d", ReadKind::Doc));
    settle(&mut b, &mut store);
    assert!(
        b.doc("d").unwrap().get_change_meta_by_hash(&c3).is_none(),
        "held back"
    );
    for m in c2 {
        b.handle_message(9, "a", m);
    }
    settle(&mut b, &mut store);
    assert_eq!(b.doc("d").unwrap().get_heads(), vec![c3]);
    assert_eq!(store.reader().heads("d").unwrap(), Some(vec![c3.0]));
}

#[test]
fn a_want_the_stored_log_cannot_answer_because_this_node_lacks_something_asks_back() {
    let (mut a, mut b, mut store) = linked_to_stored();
    put(&mut a, 1, "d", "k", 1, false);
    send_all(&mut a, &mut b, 2);
    settle(&mut b, &mut store);
    // b writes Z; a writes X then Y (on X) before it hears of Z.
    loaded(&mut b, &mut store, "d");
    let z = put(&mut b, 3, "d", "b", 1, false);
    let to_a: Vec<Message> = sends(&settle(&mut b, &mut store))
        .into_iter()
        .map(|(_, m)| via_wire(&m))
        .collect();
    put(&mut a, 4, "d", "k", 2, false);
    effects(&mut a); // X is lost on the way
    let y = put(&mut a, 5, "d", "k", 3, false);
    send_all(&mut a, &mut b, 6);
    settle(&mut b, &mut store);
    for m in to_a {
        a.handle_message(7, "b", m);
    }
    effects(&mut a);
    let mut theirs = a.doc("d").unwrap().get_heads();
    theirs.sort();
    let mut expected = vec![y, z];
    expected.sort();
    assert_eq!(theirs, expected);
    // b holds Y back (X is missing); its log has Y and Z, its heads are [Z]. A document
    // with changes held back stays in memory: b restarts to have it on disk only.
    drop(b);
    let mut index = StoredIndex::new();
    store
        .scan_index(&mut |doc, heads| {
            if let Some(heads) = heads {
                index.add(doc, heads);
            }
        })
        .unwrap();
    let config = CoreConfig {
        cache_docs: 1,
        ..CoreConfig::default()
    };
    let mut b = Replica::new("b", seed("b", 2), Box::new(Flood), config);
    b.set_store(index);
    b.peer_up(8, "a");
    settle(&mut b, &mut store);
    let want = Message::Want(vec![wire::Want {
        doc: "d".into(),
        heads: theirs.iter().map(|h| h.0).collect(),
        reply: false,
    }]);
    b.handle_message(8, "a", want);
    let rest = settle(&mut b, &mut store);
    // Nothing in b's log is new to a, but b lacks X: it asks a back with its own heads.
    let asked_back = sends(&rest).iter().any(|(to, m)| {
        to == "a"
            && matches!(m, Message::Want(w) if w.iter().any(|w| w.doc == "d" && w.reply && w.heads == vec![z.0]))
    });
    assert!(asked_back, "{:?}", sends(&rest));
}

#[test]
fn heads_learnt_from_a_read_or_a_durable_batch_spare_the_next_read() {
    let (mut a, mut b, mut store) = linked_to_stored();
    put(&mut a, 1, "d", "k", 1, false);
    send_all(&mut a, &mut b, 2);
    settle(&mut b, &mut store);
    // Taken unloaded and durable: its heads are known, the next push needs no read.
    let second = put(&mut a, 3, "d", "k", 2, false);
    send_all(&mut a, &mut b, 4);
    b.flush();
    let list = b.drain_effects();
    assert!(reads_of(&list).is_empty(), "{:?}", reads_of(&list));
    for e in list {
        if let Effect::Persist { token, docs } = e {
            store.append(&docs).unwrap();
            b.persisted(token);
        }
    }
    assert_eq!(store.reader().heads("d").unwrap(), Some(vec![second.0]));
    // Loaded and dropped again, it is read once for a push; the one after needs none.
    evict(&mut b, &mut store, "d");
    for v in [3, 4] {
        let h = put(&mut a, 5, "d", "k", v, false);
        send_all(&mut a, &mut b, 6);
        b.flush();
        let list = b.drain_effects();
        let expected = if v == 3 {
            vec![("d".into(), ReadKind::Log)]
        } else {
            vec![]
        };
        assert_eq!(reads_of(&list), expected);
        for e in list {
            match e {
                Effect::Read { doc, kind } => b.read_done(7, &doc, read(&store, &doc, kind)),
                Effect::Persist { token, docs } => {
                    store.append(&docs).unwrap();
                    b.persisted(token);
                }
                _ => {}
            }
        }
        settle(&mut b, &mut store);
        assert_eq!(store.reader().heads("d").unwrap(), Some(vec![h.0]));
    }
    assert_eq!(b.stats().doc_loads, 1, "only the load that `evict` made");
}

#[test]
fn the_byte_budget_counts_the_memory_documents_hold() {
    use crate::core::footprint::{PER_CHANGE, PER_DOC, PER_OP};
    let store = MemoryStore::new();
    let config = CoreConfig {
        cache_docs: 100,
        // Three documents of one small change fit, four do not.
        cache_bytes: 3 * PER_DOC + 3 * 1024,
        ..CoreConfig::default()
    };
    let mut a = replica_with("a", config);
    a.set_store(StoredIndex::new());
    let mut store = store;
    for i in 0..10 {
        put(&mut a, 1, &format!("d{i}"), "k", i, false);
        settle(&mut a, &mut store);
    }
    let counts = a.doc_counts();
    assert_eq!(counts.loaded, 3, "{counts:?}");
    assert!(
        counts.loaded_bytes >= 3 * (PER_DOC + PER_CHANGE),
        "{counts:?}"
    );
    assert!(counts.loaded_bytes <= 3 * PER_DOC + 3 * 1024, "{counts:?}");

    // Remote changes to a document in memory count once applied: each adds a change, an
    // op and its bytes.
    let (mut a, mut b, mut store) = linked_to_stored();
    put(&mut a, 1, "d", "k", 0, false);
    send_all(&mut a, &mut b, 2);
    settle(&mut b, &mut store);
    loaded(&mut b, &mut store, "d");
    let before = b.doc_counts().loaded_bytes;
    assert!(before >= PER_DOC + PER_CHANGE + PER_OP, "{before}");
    for v in 1..6 {
        put(&mut a, 3, "d", "k", v, false);
    }
    send_all(&mut a, &mut b, 4);
    settle(&mut b, &mut store);
    let counts = b.doc_counts();
    assert_eq!(counts.loaded, 1, "{counts:?}");
    assert!(
        counts.loaded_bytes >= before + 5 * (PER_CHANGE + PER_OP),
        "{before} then {counts:?}"
    );
    // Read back after eviction, it counts what its decoded form is estimated at.
    evict(&mut b, &mut store, "d");
    let expected = crate::core::LoadedDoc::read(store.reader().as_ref(), "d")
        .unwrap()
        .unwrap()
        .footprint();
    loaded(&mut b, &mut store, "d");
    let counts = b.doc_counts();
    assert_eq!(counts.loaded, 1, "\"other\" was dropped: {counts:?}");
    assert_eq!(counts.loaded_bytes, expected);
}

/// A client's request for a document the node lacks is answered when the document
/// arrives, also when it arrives as changes taken without loading it (the node has a
/// store): the node reads it first. (The answer used to be lost: the request waited for
/// ever, and an automerge-repo client's `find()` timed out.)
#[test]
fn a_request_is_answered_when_its_document_arrives_unloaded() {
    let (mut a, mut b, mut store) = linked_to_stored();
    put(&mut a, 1, "late", "k", 5, false);
    // a's push is held back: b's client asks first.
    let pushed = effects(&mut a);
    b.client_open(1);
    let mut client = Automerge::new();
    let mut session = sync::State::new();
    let m = client.generate_sync_message(&mut session).unwrap();
    b.client_sync(2, 1, "late", &m.encode(), true).unwrap();
    let waiting = settle(&mut b, &mut store);
    assert!(
        !waiting.iter().any(|e| matches!(e, Effect::Client { .. })),
        "nothing to answer yet"
    );
    for (to, msg) in sends(&pushed) {
        assert_eq!(to, "b");
        b.handle_message(3, "a", via_wire(&msg));
    }
    let answered = settle(&mut b, &mut store);
    let data = answered
        .iter()
        .find_map(|e| match e {
            Effect::Client {
                client: 1,
                msg: ClientMsg::Sync { data, .. },
            } => Some(data.clone()),
            _ => None,
        })
        .expect("the request is answered");
    let m = sync::Message::decode(&data).unwrap();
    client.receive_sync_message(&mut session, m).unwrap();
    assert_eq!(client.get_heads(), a.doc("late").unwrap().get_heads());
}
