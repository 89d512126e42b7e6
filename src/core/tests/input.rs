//! Bad input and stored data: refused closures, garbage changes and sync messages,
//! unconnected peers, corrupt storage, merge, snapshots, conflicting sequence numbers.

use super::*;

#[test]
fn closure_error_rolls_back_and_leaves_no_document() {
    let mut a = replica("a");
    a.peer_up(0, "b");
    effects(&mut a);
    let r = a.local_change(
        1,
        "new",
        true,
        |tx: &mut Transaction<'_>| -> Result<(), String> {
            tx.put(ROOT, "k", 1).map_err(|e| e.to_string())?;
            Err("refused".into())
        },
    );
    assert!(matches!(r, Err(crate::core::ChangeError::Refused(e)) if e == "refused"));
    assert!(a.doc("new").is_none());
    assert_eq!(a.doc_count(), 0);
    assert!(effects(&mut a).is_empty());
    // On an existing document nothing changes either.
    let h = put(&mut a, 2, "d", "k", 1, false);
    effects(&mut a);
    let r = a.local_change(
        3,
        "d",
        false,
        |tx: &mut Transaction<'_>| -> Result<(), String> {
            tx.put(ROOT, "k", 2).map_err(|e| e.to_string())?;
            Err("no".into())
        },
    );
    assert!(r.is_err());
    assert_eq!(a.heads(), vec![("d".to_string(), vec![h])]);
    assert!(effects(&mut a).is_empty());
    assert_eq!(a.stats().local_changes, 1);
}

#[test]
fn garbage_changes_and_sync_are_counted_and_change_nothing() {
    let mut b = replica("b");
    b.peer_up(0, "a");
    b.peer_up(0, "c");
    effects(&mut b);
    b.handle_message(
        1,
        "a",
        Message::push(vec![DocChanges {
            doc: "d".into(),
            origin: "a".into(),
            changes: vec![ByteBuf::from(b"not a change".to_vec()), ByteBuf::new()],
            want_ack: true,
        }]),
    );
    assert_eq!(b.stats().bad_changes, 2);
    b.handle_message(
        1,
        "a",
        Message::Sync {
            doc: "d".into(),
            data: ByteBuf::from(vec![0x42, 0xff, 0xff, 0xff]),
        },
    );
    b.handle_message(
        1,
        "a",
        Message::Sync {
            doc: "e".into(),
            data: ByteBuf::from(b"junk".to_vec()),
        },
    );
    assert_eq!(b.stats().bad_sync, 2);
    assert_eq!(b.doc_count(), 0);
    assert!(effects(&mut b).is_empty());
}

#[test]
fn messages_from_unconnected_peers_are_ignored() {
    let mut a = replica("a");
    let mut b = replica("b");
    put(&mut a, 1, "d", "k", 1, false);
    let doc = a.doc("d").unwrap();
    let bytes = doc.get_changes(&[])[0].raw_bytes().to_vec();
    let push = Message::push(vec![DocChanges {
        doc: "d".into(),
        origin: "a".into(),
        changes: vec![ByteBuf::from(bytes)],
        want_ack: true,
    }]);
    b.handle_message(1, "a", push.clone());
    b.peer_up(1, "z");
    effects(&mut b);
    b.handle_message(1, "a", push.clone());
    assert_eq!(b.stats().unexpected_messages, 2);
    assert_eq!(b.doc_count(), 0);
    assert!(effects(&mut b).is_empty());
    // After the link goes down, its messages are ignored again.
    b.peer_up(2, "a");
    b.peer_down(2, "a");
    effects(&mut b);
    b.handle_message(3, "a", push);
    assert_eq!(b.stats().unexpected_messages, 3);
    assert_eq!(b.doc_count(), 0);
    // A Hello after the handshake is unexpected too.
    b.handle_message(
        3,
        "z",
        Message::Hello(wire::Hello {
            cluster: "c".into(),
            node: "z".into(),
            version: wire::PROTOCOL_VERSION,
            compression: Vec::new(),
        }),
    );
    assert_eq!(b.stats().unexpected_messages, 4);
}

#[test]
fn load_doc_with_corrupt_bytes_loads_nothing() {
    let mut a = replica("a");
    put(&mut a, 1, "d", "k", 1, false);
    let (snapshot, _) = a.snapshot("d").unwrap();
    let change = a.doc("d").unwrap().get_changes(&[])[0].raw_bytes().to_vec();
    let mut r = replica("r");
    let err = r.load_doc("x", Some(b"junk"), &[]).unwrap_err();
    assert!(
        matches!(err, CoreError::CorruptStored { ref doc, .. } if doc == "x"),
        "{err}"
    );
    let err = r
        .load_doc("x", Some(&snapshot), &[change.clone(), b"junk".to_vec()])
        .unwrap_err();
    assert!(err.to_string().contains("change #1"), "{err}");
    let mut truncated = snapshot.clone();
    truncated.truncate(snapshot.len() / 2);
    assert!(r.load_doc("x", Some(&truncated), &[]).is_err());
    assert_eq!(r.doc_count(), 0);
    assert!(effects(&mut r).is_empty());
    // The same data, intact, loads.
    r.load_doc("x", Some(&snapshot), &[change]).unwrap();
    assert_eq!(r.heads()[0].1, a.heads()[0].1);
}

#[test]
fn merge_saved_doc_changes_and_garbage() {
    let mut a = replica("a");
    a.peer_up(0, "b");
    effects(&mut a);
    let mut other = AutoCommit::new();
    other.put(ROOT, "x", 1).unwrap();
    let list = other.put_object(ROOT, "l", ObjType::List).unwrap();
    other.insert(&list, 0, "y").unwrap();
    other.commit();
    other.put(ROOT, "z", 3).unwrap();
    let saved = other.save();
    let (count, token) = a.merge(5, "m", &saved).unwrap();
    assert_eq!(count, 2);
    let list = effects(&mut a);
    assert_eq!(persists(&list)[0].0, token.unwrap());
    assert_eq!(pushes_to(&list, "b")[0].changes.len(), 2);
    assert!(list
        .iter()
        .any(|e| matches!(e, Effect::Notify { doc, .. } if doc == "m")));
    assert_eq!(a.heads()[0].1, other.get_heads());
    // Merging it again adds nothing.
    assert_eq!(a.merge(6, "m", &saved).unwrap(), (0, None));
    assert!(effects(&mut a).is_empty());
    // Garbage, and changes without their history, are refused whole.
    let err = a.merge(7, "m", b"garbage").unwrap_err();
    assert!(matches!(err, CoreError::BadAutomergeData { .. }), "{err}");
    other.put(ROOT, "w", 4).unwrap();
    let head = other.get_heads();
    let last = other
        .get_change_by_hash(&head[0])
        .unwrap()
        .raw_bytes()
        .to_vec();
    other.put(ROOT, "v", 5).unwrap();
    let head = other.get_heads();
    let newer = other
        .get_change_by_hash(&head[0])
        .unwrap()
        .raw_bytes()
        .to_vec();
    assert!(a.merge(7, "m", &newer).is_err(), "missing dependency");
    assert!(a.merge(7, "fresh", b"garbage").is_err());
    assert!(a.doc("fresh").is_none());
    assert!(effects(&mut a).is_empty());
    // Every change from the start, concatenated, merges.
    let mut all = Vec::new();
    for c in other.get_changes(&[]) {
        all.extend_from_slice(c.raw_bytes());
    }
    assert_eq!(a.merge(8, "m", &all).unwrap().0, 2);
    assert_eq!(a.heads()[0].1, other.get_heads());
    assert!(last.len() < all.len());
}

/// `merge` of changes made on top of history the document already has (what
/// `save_after(heads)` produces) should merge: the history is there.
#[test]
fn merge_incremental_changes_on_top_of_existing_history() {
    let mut a = replica("a");
    let mut other = AutoCommit::new();
    other.put(ROOT, "x", 1).unwrap();
    a.merge(1, "m", &other.save()).unwrap();
    let heads = other.get_heads();
    other.put(ROOT, "y", 2).unwrap();
    let incremental = other.save_after(&heads);
    assert_eq!(a.merge(2, "m", &incremental).unwrap().0, 1);
    assert_eq!(a.heads()[0].1, other.get_heads());
}

#[test]
fn snapshot_round_trip_keeps_heads_and_orphans() {
    let mut a = replica("a");
    for i in 0..5 {
        put(&mut a, 1, "d", &format!("k{i}"), i, false);
    }
    let (snapshot, orphans) = a.snapshot("d").unwrap();
    assert!(orphans.is_empty());
    let mut r = replica("r");
    r.load_doc("d", Some(&snapshot), &orphans).unwrap();
    assert_eq!(r.heads(), a.heads());
    assert_eq!(
        r.doc("d").unwrap().hydrate(None),
        a.doc("d").unwrap().hydrate(None)
    );
    // A replica that received only the last change keeps it as an orphan in its snapshot.
    let all = a.doc("d").unwrap().get_changes(&[]);
    let mut b = replica("b");
    b.peer_up(0, "a");
    effects(&mut b);
    let last = ByteBuf::from(all.last().unwrap().raw_bytes().to_vec());
    b.handle_message(
        2,
        "a",
        Message::push(vec![DocChanges {
            doc: "d".into(),
            origin: "a".into(),
            changes: vec![last],
            want_ack: false,
        }]),
    );
    effects(&mut b);
    let (snap_b, orphans_b) = b.snapshot("d").unwrap();
    assert_eq!(orphans_b.len(), 1);
    let mut r = replica("r2");
    r.load_doc("d", Some(&snap_b), &orphans_b).unwrap();
    r.peer_up(3, "a");
    effects(&mut r);
    let rest: Vec<ByteBuf> = all[..all.len() - 1]
        .iter()
        .map(|c| ByteBuf::from(c.raw_bytes().to_vec()))
        .collect();
    r.handle_message(
        4,
        "a",
        Message::push(vec![DocChanges {
            doc: "d".into(),
            origin: "a".into(),
            changes: rest,
            want_ack: false,
        }]),
    );
    effects(&mut r);
    assert_eq!(
        r.heads(),
        a.heads(),
        "the orphan kept in the snapshot completes the doc"
    );
}

/// Two changes with the same actor and sequence number but different content (what a
/// restarted node that reused its actor id, or a hostile peer, would send). The valid
/// change that arrives with them must still be applied, and what is stored must load.
#[test]
fn conflicting_seq_from_peer_does_not_poison_the_batch() {
    conflicting_seq(CoreConfig::default());
}

/// The same when the pushes are applied as lent jobs (heavy pushes).
#[test]
fn conflicting_seq_from_peer_does_not_poison_a_heavy_batch_either() {
    conflicting_seq(CoreConfig {
        heavy_ops: 1,
        ..CoreConfig::default()
    });
}

fn conflicting_seq(config: CoreConfig) {
    let actor = automerge::ActorId::from([9u8; 16]);
    let mut x1 = Automerge::new().with_actor(actor.clone());
    let mut tx = x1.transaction();
    tx.put(ROOT, "k", "first").unwrap();
    tx.commit();
    let mut x2 = Automerge::new().with_actor(actor);
    let mut tx = x2.transaction();
    tx.put(ROOT, "k", "second").unwrap();
    tx.commit();
    let c1 = x1.get_changes(&[])[0].raw_bytes().to_vec();
    let c2 = x2.get_changes(&[])[0].raw_bytes().to_vec();
    let mut a = replica("a");
    let good = put(&mut a, 1, "d", "good", 1, false);
    let good_bytes = change_bytes(a.doc("d").unwrap(), good);
    let mut b = replica_with("b", config);
    b.peer_up(0, "a");
    b.peer_up(0, "c");
    effects(&mut b);
    let push = |changes: Vec<Vec<u8>>| {
        Message::push(vec![DocChanges {
            doc: "d".into(),
            origin: "a".into(),
            changes: changes.into_iter().map(ByteBuf::from).collect(),
            want_ack: false,
        }])
    };
    b.handle_message(1, "a", push(vec![c1.clone()]));
    effects_with_jobs(&mut b, 1);
    b.handle_message(2, "a", push(vec![c2.clone(), good_bytes.clone()]));
    let list = effects_with_jobs(&mut b, 2);
    let forwarded: Vec<ByteBuf> = pushes_to(&list, "c")
        .into_iter()
        .flat_map(|g| g.changes)
        .collect();
    assert_eq!(
        forwarded,
        vec![ByteBuf::from(good_bytes)],
        "only the valid change goes on"
    );
    assert!(persists(&list)
        .iter()
        .all(|(_, docs)| docs.iter().all(|(_, c)| !c.contains(&c2))));
    let doc = b.doc("d").unwrap();
    assert!(
        doc.get_change_meta_by_hash(&good).is_some(),
        "a valid change was lost with the conflicting one"
    );
    assert!(b.stats().bad_changes >= 1);
    // Whatever was persisted must load again.
    let mut stored = vec![c1];
    for (_, docs) in persists(&list) {
        for (_, changes) in docs {
            stored.extend(changes);
        }
    }
    let mut r = replica("r");
    r.load_doc("d", None, &stored)
        .expect("stored changes load after a restart");
}
