//! Local changes, pushes applied in one batch, forwarding, durable acks and restarts.

use super::*;

#[test]
fn local_change_persists_pushes_and_notifies() {
    let mut c = Cluster::new(&["a", "b", "c"], CoreConfig::default());
    c.link("a", "b");
    c.link("a", "c");
    c.run();
    let a = c.node("a");
    let write = a
        .local_change(5, "d", false, |tx: &mut Transaction<'_>| -> TxResult<u32> {
            tx.put(ROOT, "k", "v")?;
            Ok(7)
        })
        .unwrap();
    assert_eq!(write.value, 7);
    let hash = write.hash.unwrap();
    assert_eq!(write.heads, vec![hash]);
    let list = effects(a);
    let bytes = change_bytes(a.doc("d").unwrap(), hash);
    let p = persists(&list);
    assert_eq!(
        p,
        vec![(
            write.persist_token.unwrap(),
            vec![("d".to_string(), vec![bytes.clone()])]
        )]
    );
    for peer in ["b", "c"] {
        let groups = pushes_to(&list, peer);
        assert_eq!(groups.len(), 1, "one push to {peer}");
        assert_eq!(groups[0].doc, "d");
        assert_eq!(groups[0].origin, "a");
        assert!(!groups[0].want_ack);
        assert_eq!(groups[0].changes, vec![ByteBuf::from(bytes.clone())]);
    }
    assert!(list.contains(&Effect::Notify {
        doc: "d".into(),
        heads: vec![hash]
    }));
    assert_eq!(a.stats().local_changes, 1);
    // A closure that makes no operation makes no change and no effect.
    let none = a
        .local_change(6, "d", false, |_tx: &mut Transaction<'_>| -> TxResult<()> {
            Ok(())
        })
        .unwrap();
    assert!(none.hash.is_none() && none.persist_token.is_none());
    assert!(effects(a).is_empty());
}

#[test]
fn received_pushes_apply_in_one_batch_and_forward_never_back() {
    let mut a = replica("a");
    let mut b = replica("b");
    b.peer_up(0, "a");
    b.peer_up(0, "c");
    a.peer_up(0, "b");
    effects(&mut a);
    effects(&mut b);
    let mut messages = Vec::new();
    for i in 0..5 {
        put(&mut a, 1, "d", &format!("k{i}"), i, false);
        messages.extend(
            sends(&effects(&mut a))
                .into_iter()
                .map(|(_, m)| via_wire(&m)),
        );
    }
    put(&mut a, 1, "e", "x", 1, false);
    messages.extend(
        sends(&effects(&mut a))
            .into_iter()
            .map(|(_, m)| via_wire(&m)),
    );
    assert_eq!(messages.len(), 6);
    let batches = b.stats().apply_batches;
    for m in &messages {
        b.handle_message(2, "a", m.clone());
    }
    let list = effects(&mut b);
    // One apply per document, not one per message.
    assert_eq!(b.stats().apply_batches, batches + 2);
    assert_eq!(b.stats().remote_changes, 6);
    assert_eq!(b.heads(), a.heads());
    let p = persists(&list);
    assert_eq!(p.len(), 1, "one persist batch");
    let persisted: usize = p[0].1.iter().map(|(_, c)| c.len()).sum();
    assert_eq!(persisted, 6);
    assert!(pushes_to(&list, "a").is_empty(), "never back to the sender");
    let fwd = pushes_to(&list, "c");
    assert_eq!(fwd.iter().map(|g| g.changes.len()).sum::<usize>(), 6);
    assert!(fwd.iter().all(|g| g.origin == "a"));
    assert_eq!(
        sends(&list).iter().filter(|(t, _)| t == "c").count(),
        1,
        "one message per link"
    );
    // Duplicates are counted, not persisted, not forwarded.
    for m in &messages {
        b.handle_message(3, "a", m.clone());
    }
    let list = effects(&mut b);
    assert_eq!(b.stats().duplicates, 6);
    assert!(list.is_empty(), "{list:?}");
    assert_eq!(b.stats().apply_batches, batches + 2);
}

#[test]
fn flood_never_returns_sender_or_origin() {
    use crate::core::Router;
    let connected: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let t = Flood.targets("x", "a", Some("b"), &connected);
    assert_eq!(t, vec!["c".to_string(), "d".to_string()]);
    let t = Flood.targets("x", "x", None, &connected);
    assert_eq!(t, connected);
}

#[test]
fn acks_are_relayed_back_along_the_line() {
    let mut c = Cluster::new(&["a", "b", "c"], CoreConfig::default());
    c.auto_persist = false;
    c.link("a", "b");
    c.link("b", "c");
    c.run();
    let hash = put(c.node("a"), 10, "d", "k", 1, true);
    c.pump("a");
    c.run();
    assert!(c.acked.is_empty(), "no ack before anything is durable");
    // Durable at a itself acks nothing; durable at b and c acks back to a.
    c.complete_persists();
    c.run();
    let mut got: Vec<(String, String, ChangeHash, String)> = c.acked.clone();
    got.sort_by(|x, y| x.3.cmp(&y.3));
    assert_eq!(
        got,
        vec![
            ("a".into(), "d".into(), hash, "b".into()),
            ("a".into(), "d".into(), hash, "c".into())
        ]
    );
    assert_eq!(c.nodes["b"].stats().acks_sent, 1);
    assert_eq!(c.nodes["c"].stats().acks_sent, 1);
    // Without want_ack nobody acknowledges.
    c.acked.clear();
    put(c.node("a"), 11, "d", "k", 2, false);
    c.pump("a");
    c.run();
    c.complete_persists();
    c.run();
    assert!(c.acked.is_empty());
}

#[test]
fn an_ack_that_could_not_be_sent_goes_again_retry_ms_later() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.auto_persist = false;
    c.link("a", "b");
    c.run();
    let hash = put(c.node("a"), 10, "d", "k", 1, true);
    c.pump("a");
    c.run();
    c.complete_persists();
    // b's ack finds its link's queue full.
    let at = c
        .net
        .iter()
        .position(|(from, _, m)| from == "b" && matches!(m, Message::Ack(_)))
        .expect("b acknowledges");
    let (_, _, ack) = c.net.remove(at).expect("the ack");
    c.node("b").send_failed("a", Unsent::of(&ack));
    c.run();
    assert!(c.acked.is_empty());
    let stats = c.nodes["b"].stats();
    assert_eq!(stats.sends_dropped.get("ack"), Some(&1));
    assert_eq!(stats.pushes_dropped, 0, "an ack is not a push");
    let retry = CoreConfig::default().retry_ms;
    assert_eq!(
        c.nodes["b"].poll_timeout(),
        Some(c.now + retry),
        "b asks to be woken"
    );
    c.tick_all(retry - 1);
    assert!(c.acked.is_empty(), "not before retry_ms");
    c.tick_all(1);
    assert_eq!(c.acked, vec![("a".into(), "d".into(), hash, "b".into())]);
}

#[test]
fn ack_for_a_lost_persist_token_is_never_sent() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.auto_persist = false;
    c.link("a", "b");
    c.run();
    put(c.node("a"), 10, "d", "k", 1, true);
    c.pump("a");
    c.run();
    // b's persist never completes (it crashed); an unknown token is ignored.
    c.node("b").persisted(9_999);
    c.pump("b");
    c.run();
    assert!(c.acked.is_empty());
}

#[test]
fn restart_from_persisted_batches_has_every_acked_change() {
    let mut c = Cluster::new(&["a", "b", "c"], CoreConfig::default());
    c.link("a", "b");
    c.link("b", "c");
    for i in 0..4 {
        c.put("a", "d", &format!("a{i}"), i, true);
        c.put("c", "d", &format!("c{i}"), i, true);
        c.pump("a");
        c.pump("c");
    }
    c.run();
    assert_eq!(c.acked.len(), 16, "4 writes × 2 writers × 2 other nodes");
    for id in ["a", "b", "c"] {
        assert_eq!(c.reload(id).heads(), c.heads(id));
    }
}

#[test]
fn change_waiting_for_dependencies_is_acked_only_once_applicable_and_durable() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    c.run();
    // b never gets the push of a's first change; the second depends on it.
    let first = c.put("a", "d", "k", 1, false);
    c.pump("a");
    c.net.clear();
    let second = c.put("a", "d", "k", 2, true);
    c.pump("a");
    c.run();
    assert!(
        c.acked.is_empty(),
        "b acknowledged a change it cannot apply (its dependency is missing)"
    );
    assert!(
        c.reload("b")
            .heads()
            .iter()
            .all(|(_, h)| !h.contains(&second)),
        "b cannot show the change from its storage either"
    );
    // Anti-entropy brings the dependency: then both are durable and b acknowledges.
    c.run_for(10_000);
    assert_eq!(c.acked, vec![("a".into(), "d".into(), second, "b".into())]);
    let reloaded = c.reload("b").heads();
    assert_eq!(reloaded, c.heads("a"));
    assert!(reloaded[0].1.contains(&second) && !reloaded[0].1.contains(&first));
}

#[test]
fn a_message_over_the_size_limit_is_counted_by_kind_and_names_its_document_once() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    c.run();
    put(c.node("a"), 10, "big", "k", 1, false);
    c.pump("a");
    let at = c
        .net
        .iter()
        .position(|(from, _, m)| from == "a" && matches!(m, Message::Push { .. }))
        .expect("a pushes");
    let (_, _, push) = c.net.remove(at).expect("the push");
    for _ in 0..2 {
        c.node("a")
            .send_refused("b", Unsent::of(&push), 600 << 20, push.docs());
    }
    let stats = c.nodes["a"].stats();
    assert_eq!(stats.sends_refused.get("push"), Some(&2));
    assert_eq!(stats.refused_docs, 1, "the document is counted once");
    assert!(stats.sends_dropped.is_empty(), "refused is not dropped");
}

#[test]
fn an_idle_replica_asks_to_be_woken_only_for_anti_entropy() {
    let config = CoreConfig::default();
    let mut c = Cluster::new(&["a", "b"], config.clone());
    assert_eq!(c.nodes["a"].poll_timeout(), None, "no peers, nothing timed");
    c.link("a", "b");
    c.run();
    c.tick_all(config.retry_ms);
    // Quiet: a (the side that opens reconciliations) wakes for the next round only; b,
    // which never opens, not at all.
    let next = c.nodes["a"]
        .poll_timeout()
        .expect("a reconciles periodically");
    assert!(
        next > c.now && next <= c.now + config.anti_entropy_ms,
        "{next}"
    );
    assert_eq!(c.nodes["b"].poll_timeout(), None);
    // Handling that timeout opens a round, whose opening waits for a push to ride on and
    // goes on a push without changes when none went; then the next round is a period on.
    c.now = next;
    let rounds = c.nodes["a"].stats().reconcile_rounds;
    c.node("a").handle_timeout(next);
    c.pump("a");
    assert!(c.net.is_empty());
    let alone = next + crate::core::peers::ALONE_AFTER_MS;
    assert_eq!(c.nodes["a"].poll_timeout(), Some(alone));
    c.now = alone;
    c.node("a").handle_timeout(alone);
    c.pump("a");
    assert!(matches!(
        c.net.front(),
        Some((_, _, Message::Push { groups, fingerprints, .. }))
            if groups.is_empty() && fingerprints.len() == 1
    ));
    c.run();
    assert_eq!(c.nodes["a"].stats().reconcile_rounds, rounds + 1);
    assert_eq!(
        c.nodes["a"].poll_timeout(),
        Some(next + config.anti_entropy_ms)
    );
    // A write adds a receipt (b confirms what it got, alone since b pushes nothing back)
    // and nothing else that stays.
    put(c.node("a"), alone, "d", "k", 1, false);
    c.pump("a");
    c.run();
    assert_eq!(
        c.nodes["b"].poll_timeout(),
        Some(alone + crate::core::peers::ALONE_AFTER_MS)
    );
    c.tick_all(crate::core::peers::ALONE_AFTER_MS);
    assert_eq!(c.nodes["b"].poll_timeout(), None);
    assert_eq!(c.nodes["a"].peer_lag("b").map(|l| l.changes), Some(0));
}
