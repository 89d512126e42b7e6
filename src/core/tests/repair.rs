//! Anti-entropy: reconciliation, bulk repair, the sync protocol for diverged histories,
//! dropped pushes, and changes that arrive before their dependencies.

use super::*;

#[test]
fn reconnect_repairs_missed_pushes_both_ways() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    put(c.node("a"), 10, "d", "base", 0, false);
    c.pump("a");
    c.run();
    assert_eq!(c.heads("a"), c.heads("b"));
    c.unlink("a", "b");
    for i in 0..3 {
        put(c.node("a"), 20, "d", &format!("a{i}"), i, false);
        put(c.node("b"), 20, "d", &format!("b{i}"), i, false);
    }
    // A whole document that b never saw.
    put(c.node("a"), 20, "only-a", "x", 1, false);
    c.pump("a");
    c.pump("b");
    assert!(c.net.is_empty(), "nothing sent while disconnected");
    assert_ne!(c.heads("a"), c.heads("b"));
    c.link("a", "b");
    c.run();
    assert_eq!(c.heads("a"), c.heads("b"));
    assert_eq!(c.heads("a").len(), 2);
    let (sa, sb) = (c.nodes["a"].stats().clone(), c.nodes["b"].stats().clone());
    // "d" diverged: the sync protocol repairs it; "only-a" is sent whole by bulk repair.
    assert!(sa.repairs + sb.repairs > 0);
    assert_eq!(sa.repaired_changes, 3);
    assert_eq!(sb.repaired_changes, 3);
    assert_eq!(sa.repair_changes_sent, 1);
    // Repaired changes were persisted: a restart from storage has them.
    for id in ["a", "b"] {
        assert_eq!(c.reload(id).heads(), c.heads(id), "storage of {id}");
    }
}

#[test]
fn lost_push_is_repaired_by_reconciliation_on_tick() {
    let config = CoreConfig {
        anti_entropy_ms: 500,
        quiet_ms: 100,
        ..CoreConfig::default()
    };
    let mut c = Cluster::new(&["a", "b"], config);
    c.link("a", "b");
    c.run();
    c.put("a", "d", "k", 1, false);
    // The push is lost on the way.
    let list = effects(c.node("a"));
    assert_eq!(pushes_to(&list, "b").len(), 1);
    assert!(c.heads("b").is_empty());
    // The round opens after a period; with no changes to push, each of its five steps
    // (three levels of fingerprints, the items, the ask) waits for a push to ride on and
    // then goes on a push of its own.
    c.run_for(500 + 5 * crate::core::peers::ALONE_AFTER_MS);
    assert_eq!(c.heads("a"), c.heads("b"));
    let (sa, sb) = (c.nodes["a"].stats(), c.nodes["b"].stats());
    assert!(sa.reconcile_rounds >= 1, "a opens: its id is the smaller");
    // b lacks the document: it is sent whole, or asked for; no sync session is needed.
    assert_eq!(sa.repair_changes_sent, 1);
    assert_eq!(sa.repairs + sb.repairs, 0);
}

#[test]
fn send_failed_triggers_reconciliation_on_next_tick() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    c.run();
    c.put("a", "d", "k", 1, false);
    // The push could not be queued.
    let push = sends(&effects(c.node("a")))
        .into_iter()
        .map(|(_, m)| m)
        .find(|m| matches!(m, Message::Push { .. }))
        .expect("a push");
    c.node("a").send_failed("b", Unsent::of(&push));
    assert_eq!(c.nodes["a"].stats().pushes_dropped, 1);
    assert_eq!(c.nodes["a"].stats().sends_dropped.get("push"), Some(&1));
    // Not yet periodic, yet a reconciliation opens.
    c.tick_all(1);
    assert_eq!(c.heads("a"), c.heads("b"));
}

#[test]
fn a_peer_whose_sends_keep_failing_is_not_sent_a_digest_every_tick() {
    let mut a = replica("a");
    a.peer_up(0, "b");
    let mut digests = 0;
    // 10 s of 100 ms ticks with writes; every message to b finds its queue full.
    for t in 0..100u64 {
        let now = t * 100;
        if t % 3 == 0 {
            put(&mut a, now, "d", "k", t as i64, false);
        }
        a.handle_timeout(now);
        for (to, msg) in sends(&effects(&mut a)) {
            if matches!(msg, Message::Fingerprints(_)) {
                digests += 1;
            }
            a.send_failed(&to, Unsent::of(&msg));
        }
    }
    // Waits doubling from 0.1 s up to the 5 s anti-entropy period, plus the periodic
    // rounds: 9 (one per tick, 100, before the back-off).
    assert!((5..=12).contains(&digests), "{digests} digests in 10 s");
    assert!(a.stats().pushes_dropped >= 30);
    // Once sends have gone through for a whole wait, a failure is answered at once again.
    a.handle_timeout(20_000);
    effects(&mut a);
    a.handle_timeout(30_000);
    effects(&mut a);
    let push = Message::push(Vec::new());
    a.send_failed("b", Unsent::of(&push));
    a.handle_timeout(30_100);
    assert!(sends(&effects(&mut a))
        .iter()
        .any(|(_, m)| matches!(m, Message::Fingerprints(_))));
}

#[test]
fn outbox_limit_drops_pushes_then_anti_entropy_repairs() {
    let config = CoreConfig {
        outbox_limit: 300,
        ..CoreConfig::default()
    };
    let mut c = Cluster::new(&["a", "b"], config);
    c.link("a", "b");
    c.run();
    for i in 0..20 {
        c.put("a", "d", &format!("key-{i}"), i, false);
    }
    assert!(c.nodes["a"].queued_bytes("b").unwrap() <= 300);
    let dropped = c.nodes["a"].stats().pushes_dropped;
    assert!(dropped > 0, "some pushes dropped");
    c.pump("a");
    c.run();
    assert_eq!(c.nodes["a"].queued_bytes("b"), Some(0));
    assert_ne!(c.heads("a"), c.heads("b"), "b got only part of it");
    c.tick_all(1);
    assert_eq!(c.heads("a"), c.heads("b"));
}

/// A change that arrives through the sync protocol before its dependency is queued by
/// Automerge; when the dependency then arrives by push, Automerge applies both. The queued
/// one must be persisted and forwarded too, or a local write on top of it is stuck after a
/// restart (its dependency is nowhere in storage).
#[test]
fn change_queued_by_sync_then_unblocked_by_push_is_persisted_and_forwarded() {
    let mut a = replica("a");
    let c1 = put(&mut a, 1, "d", "x", 1, false);
    let c2 = put(&mut a, 2, "d", "y", 2, false);
    let doc_a = a.doc("d").unwrap();
    let (c1_bytes, c2_bytes) = (change_bytes(doc_a, c1), change_bytes(doc_a, c2));
    let mut c = Cluster::new(&["b", "c"], CoreConfig::default());
    let now = c.now;
    c.node("b").peer_up(now, "a");
    c.link("b", "c");
    c.run();
    let sync_msg = automerge::sync::Message {
        heads: vec![c2],
        need: Vec::new(),
        have: Vec::new(),
        changes: automerge::sync::ChunkList::from(vec![c2_bytes.clone()]),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    };
    c.node("b").handle_message(
        now,
        "a",
        Message::Sync {
            doc: "d".into(),
            data: ByteBuf::from(sync_msg.encode()),
        },
    );
    let list = effects(c.node("b"));
    assert!(
        c.nodes["b"].heads().iter().all(|(_, h)| h.is_empty()),
        "c2 waits for c1"
    );
    let replies = sends(&list);
    assert!(replies.iter().all(|(to, _)| to == "a"), "{replies:?}");
    c.node("b").handle_message(
        now,
        "a",
        Message::push(vec![DocChanges {
            doc: "d".into(),
            origin: "a".into(),
            changes: vec![ByteBuf::from(c1_bytes)],
            want_ack: false,
        }]),
    );
    c.pump("b");
    c.run();
    assert_eq!(c.heads("b"), a.heads());
    assert_eq!(c.heads("c"), a.heads(), "c2 is forwarded to c as well");
    let stored = c.stored["b"]["d"].clone();
    assert!(
        stored.contains(&c2_bytes),
        "b has applied c2 but not persisted it"
    );
    // A write on top of c2 that b acknowledges must survive b's restart.
    let local = c.put("b", "d", "z", 3, true);
    c.pump("b");
    c.run();
    let reloaded = c.reload("b");
    assert!(
        reloaded
            .doc("d")
            .unwrap()
            .get_change_meta_by_hash(&local)
            .is_some(),
        "b's persisted write is stuck behind a change b never persisted"
    );
}

/// A sync message that carried changes is lost (the driver could not send it). Automerge
/// never resends a change within a session, so when the peer later asks for it in `need`,
/// the session must resend it instead of answering empty-handed forever.
#[test]
fn lost_sync_message_does_not_wedge_the_session() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    c.put("a", "d", "k0", 0, false);
    c.pump("a");
    c.run();
    c.unlink("a", "b");
    c.put("a", "d", "k1", 1, false);
    c.put("a", "d", "k2", 2, false);
    // b writes too: the histories diverge, which the sync protocol repairs.
    c.put("b", "d", "b1", 1, false);
    c.pump("a");
    c.pump("b");
    c.link("a", "b");
    // Deliver until a's first sync message with changes, which is lost.
    for _ in 0..100 {
        let (from, to, msg) = c.net.pop_front().expect("the sync reaches a");
        if let Message::Sync { data, .. } = &msg {
            let sync = automerge::sync::Message::decode(data).unwrap();
            if from == "a" && !sync.changes.is_empty() {
                c.node("a").send_failed("b", Unsent::of(&msg));
                break;
            }
        }
        let now = c.now;
        c.node(&to).handle_message(now, &from, msg);
        c.pump(&to);
    }
    c.run();
    // b's side of the session expires, a's does not; a's heads (as a reply to a want of
    // b's) that b cannot place start a new one.
    c.now += CoreConfig::default().session_timeout_ms + 1;
    let now = c.now;
    c.node("b").handle_timeout(now);
    c.pump("b");
    let heads: Vec<[u8; 32]> = c.heads("a")[0].1.iter().map(|h| h.0).collect();
    let want = Message::Want(vec![wire::Want {
        doc: "d".into(),
        heads,
        reply: true,
    }]);
    c.node("b").handle_message(now, "a", want);
    c.pump("b");
    c.run(); // without the resend, a and b ping-pong here forever
    assert_eq!(c.heads("a"), c.heads("b"));
}

#[test]
fn write_missed_by_a_partition_is_acked_by_every_node_once_repaired() {
    // A chain a - b - c: c hears of a's changes only through b.
    let mut c = Cluster::new(&["a", "b", "c"], CoreConfig::default());
    c.link("a", "b");
    c.link("b", "c");
    c.run();
    c.unlink("a", "b");
    let hash = c.put("a", "d", "k", 1, true);
    c.pump("a");
    c.run();
    assert!(c.acked.is_empty(), "nobody could have it yet");
    // Healed: b repairs the change from a and pushes it on to c; both acks reach a.
    c.link("a", "b");
    c.run();
    let mut by: Vec<&str> = c
        .acked
        .iter()
        .filter(|(writer, _, h, _)| writer == "a" && *h == hash)
        .map(|(_, _, _, by)| by.as_str())
        .collect();
    by.sort_unstable();
    by.dedup();
    assert_eq!(by, vec!["b", "c"]);
    for id in ["b", "c"] {
        assert_eq!(c.reload(id).heads(), c.heads("a"), "storage of {id}");
    }
}

/// Bulk repair keeps a round trip's worth of documents asked of a peer: `want_window` on
/// a fast link, `want_rate` per ms of round trip on a slow one.
#[test]
fn a_slow_link_keeps_a_round_trip_of_wants_in_flight() {
    let config = CoreConfig::default();
    let (floor, rate) = (config.want_window, config.want_rate);
    assert!(
        rate * 100 > floor,
        "at 100 ms the round trip's worth is the larger"
    );
    for (rtt_ms, window) in [(0, floor), (10, floor), (100, rate * 100)] {
        let mut c = Cluster::new(&["a", "b"], config.clone());
        for i in 0..3_000 {
            c.put("a", &format!("d{i}"), "k", i, false);
        }
        let now = c.now;
        c.node("a").peer_up(now, "b");
        c.node("b").peer_up(now, "a");
        c.node("b").set_peer_rtt("a", rtt_ms);
        assert_eq!(c.node("b").peer_rtt("a"), rtt_ms);
        c.pump("a");
        c.pump("b");
        // b lacks every document and asks; no answer comes back.
        let mut asked = 0;
        while let Some((from, to, msg)) = c.net.pop_front() {
            if let Message::Want(wants) = &msg {
                assert_eq!(from, "b");
                asked += wants.len();
                continue;
            }
            let now = c.now;
            c.node(&to).handle_message(now, &from, msg);
            c.pump(&to);
        }
        assert_eq!(asked, window, "round trip {rtt_ms} ms");
    }
}

#[test]
fn each_period_every_node_opens_one_round_and_every_pair_has_its_turn() {
    let ids = ["a", "b", "c", "d", "e"];
    let config = CoreConfig::default();
    let period = config.anti_entropy_ms;
    let mut c = Cluster::new(&ids, config);
    for (i, x) in ids.iter().enumerate() {
        for y in &ids[i + 1..] {
            c.link(x, y);
        }
    }
    c.run();
    let mut pairs = BTreeMap::new();
    // Five nodes: every pair once in two (5 / 2) periods, by one side (the openings go
    // alone once they waited for a push to ride on).
    for _ in 0..2 {
        for wait in [period, crate::core::peers::ALONE_AFTER_MS] {
            c.now += wait;
            for id in ids {
                let now = c.now;
                c.node(id).handle_timeout(now);
                c.pump(id);
            }
        }
        let openings: Vec<(String, String)> = c
            .net
            .iter()
            .filter(|(_, _, m)| {
                // An opening (level 1), not the answer of a round before (level 0).
                matches!(m, Message::Push { groups, fingerprints, .. }
                    if groups.is_empty() && fingerprints.iter().any(|f| f.level == 1))
            })
            .map(|(from, to, _)| (from.clone(), to.clone()))
            .collect();
        assert_eq!(
            openings.len(),
            ids.len(),
            "one round per node: {openings:?}"
        );
        for (from, to) in openings {
            let pair = if from < to { (from, to) } else { (to, from) };
            *pairs.entry(pair).or_insert(0) += 1;
        }
        c.run();
    }
    assert_eq!(pairs.len(), 10, "{pairs:?}");
    assert!(pairs.values().all(|&n| n == 1), "{pairs:?}");
    // Two nodes: only the smaller id opens, every period.
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    c.run();
    for _ in 0..3 {
        let rounds = (
            c.nodes["a"].stats().reconcile_rounds,
            c.nodes["b"].stats().reconcile_rounds,
        );
        c.tick_all(period);
        assert_eq!(c.nodes["a"].stats().reconcile_rounds, rounds.0 + 1);
        assert_eq!(c.nodes["b"].stats().reconcile_rounds, rounds.1);
    }
}

#[test]
fn a_lost_link_makes_the_others_reconcile_at_once() {
    // Periodic rounds far away: only the lost link can open one.
    let config = CoreConfig {
        anti_entropy_ms: 3_600_000,
        ..CoreConfig::default()
    };
    let ids = ["a", "b", "c"];
    let mut c = Cluster::new(&ids, config);
    // A mesh: nobody forwards c's changes, each node has them from c itself.
    let mesh = crate::topology::Topology::new(
        crate::config::TopologyKind::Mesh,
        ids.iter().map(|s| s.to_string()).collect(),
        Vec::new(),
    );
    for id in ids {
        c.node(id).set_router(Box::new(mesh.clone()));
    }
    for (x, y) in [("a", "b"), ("a", "c"), ("b", "c")] {
        c.link(x, y);
    }
    c.run();
    // c's write reaches a, and c is gone before its push to b is sent.
    c.put("c", "d", "k", 1, false);
    let list: Vec<Effect> = effects(c.node("c"))
        .into_iter()
        .filter(|e| !matches!(e, Effect::Send { to, .. } if to == "b"))
        .collect();
    c.carry_out("c", list);
    c.run();
    assert!(c.heads("b").is_empty());
    c.unlink("a", "c");
    c.unlink("b", "c");
    c.tick_all(1);
    assert_eq!(c.heads("b"), c.heads("a"));
    assert_eq!(c.heads("a").len(), 1);
}

#[test]
fn receipts_ride_on_pushes_the_other_way() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    c.run();
    let receipts = |c: &Cluster| {
        c.net
            .iter()
            .filter(|(_, _, m)| matches!(m, Message::Receipt { .. }))
            .count()
    };
    for i in 0..5 {
        c.put("a", "d", "a", i, false);
        c.pump("a");
        c.run();
        c.now += 100;
        c.put("b", "d", "b", i, false);
        c.pump("b");
        // b's push carries its receipt of a's change: nothing goes alone.
        let carried = c.net.iter().any(|(from, _, m)| {
            from == "b"
                && matches!(
                    m,
                    Message::Push {
                        receipt: Some(_),
                        ..
                    }
                )
        });
        assert!(carried);
        assert_eq!(receipts(&c), 0);
        c.run();
        assert_eq!(c.nodes["a"].peer_lag("b").map(|l| l.changes), Some(0));
        c.now += 100;
    }
    // With nothing to push back, the receipt goes alone a while later.
    c.tick_all(crate::core::peers::ALONE_AFTER_MS);
    assert_eq!(c.nodes["b"].peer_lag("a").map(|l| l.changes), Some(0));
    assert_eq!(c.nodes["a"].peer_lag("b").map(|l| l.changes), Some(0));
}

#[test]
fn routine_rounds_ride_on_pushes_and_find_a_lost_push() {
    let config = CoreConfig::default();
    let period = config.anti_entropy_ms;
    let mut c = Cluster::new(&["a", "b"], config);
    c.link("a", "b");
    c.run();
    // a's push of "lost" never arrives.
    c.put("a", "lost", "k", 1, false);
    c.pump("a");
    c.net.clear();
    c.sent.clear();
    let rounds = c.nodes["a"].stats().reconcile_rounds;
    // Both write every 250 ms for three periods, so pushes go both ways all the time.
    let step = 250;
    for i in 0..3 * period / step {
        c.now += step;
        c.put("a", &format!("a{}", i % 4), "k", i as i64, false);
        c.put("b", &format!("b{}", i % 4), "k", i as i64, false);
        for id in ["a", "b"] {
            let now = c.now;
            c.node(id).handle_timeout(now);
            c.pump(id);
        }
        c.run();
    }
    assert_eq!(c.heads("a"), c.heads("b"), "the lost push was repaired");
    assert!(c.nodes["a"].stats().reconcile_rounds >= rounds + 2);
    let rode = |from: &str| {
        c.sent
            .iter()
            .filter(|(f, _, m)| {
                f == from
                    && matches!(m, Message::Push { groups, fingerprints, .. }
                        if !groups.is_empty() && !fingerprints.is_empty())
            })
            .count()
    };
    assert!(
        rode("a") > 0 && rode("b") > 0,
        "fingerprints rode both ways"
    );
    // Nothing but pushes with changes, and the items, ask and acknowledgement of the
    // repair.
    let other: Vec<_> = c
        .sent
        .iter()
        .filter(|(_, _, m)| match m {
            Message::Push { groups, .. } => groups.is_empty(),
            m => !matches!(m, Message::Items(_) | Message::Want(_) | Message::Ack(_)),
        })
        .collect();
    assert!(other.is_empty(), "{other:?}");
}
