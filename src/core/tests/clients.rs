//! automerge-repo clients of a replica: a client's document replicates, changes reach the
//! clients following a document, a request for a missing document waits for the peers,
//! ephemeral messages spread once, bad input is refused.

use automerge::sync::{self, SyncDoc};
use serde_bytes::ByteBuf;

use super::*;
use crate::core::ClientError;
use crate::wire::Ephemeral;

/// A client: its own copy of the document and its sync session with the node.
struct Client {
    node: &'static str,
    id: u64,
    doc: Automerge,
    state: sync::State,
}

impl Client {
    fn new(c: &mut Cluster, node: &'static str, id: u64) -> Client {
        c.node(node).client_open(id);
        Client {
            node,
            id,
            doc: Automerge::new(),
            state: sync::State::new(),
        }
    }

    fn put(&mut self, key: &str, value: i64) {
        let mut tx = self.doc.transaction();
        tx.put(ROOT, key, value).unwrap();
        tx.commit();
    }

    fn get(&self, key: &str) -> Option<i64> {
        match self.doc.get(ROOT, key).unwrap() {
            Some((automerge::Value::Scalar(s), _)) => s.as_i64(),
            _ => None,
        }
    }

    /// Syncs `doc` with the node (as `request` first if `request`) until both are quiet.
    fn sync(&mut self, c: &mut Cluster, doc: &str, mut request: bool) {
        for _ in 0..50 {
            let mut quiet = true;
            if let Some(m) = self.doc.generate_sync_message(&mut self.state) {
                let now = c.now;
                c.node(self.node)
                    .client_sync(now, self.id, doc, &m.encode(), request)
                    .unwrap();
                request = false;
                quiet = false;
            }
            c.pump(self.node);
            c.run();
            for msg in self.take(c) {
                if let ClientMsg::Sync { doc: d, data } = msg {
                    assert_eq!(d, doc);
                    let m = sync::Message::decode(&data).unwrap();
                    self.doc.receive_sync_message(&mut self.state, m).unwrap();
                    quiet = false;
                }
            }
            if quiet {
                return;
            }
        }
        panic!("client sync did not settle");
    }

    /// Takes the messages the client's node has for it.
    fn take(&self, c: &mut Cluster) -> Vec<ClientMsg> {
        let (mine, rest) = std::mem::take(&mut c.to_clients)
            .into_iter()
            .partition(|(n, id, _)| n == self.node && *id == self.id);
        c.to_clients = rest;
        mine.into_iter().map(|(_, _, m)| m).collect()
    }
}

#[test]
fn a_client_document_replicates_and_follows_remote_changes() {
    client_document_replicates(CoreConfig::default());
}

/// The same when every client message and push is heavy work, applied as a lent job.
#[test]
fn a_client_document_replicates_when_its_messages_are_applied_as_jobs() {
    let c = client_document_replicates(CoreConfig {
        heavy_ops: 1,
        ..CoreConfig::default()
    });
    assert!(c.nodes["a"].stats().lent >= 2, "client messages lent");
    assert!(c.nodes["b"].stats().lent >= 1, "pushes lent");
}

fn client_document_replicates(config: CoreConfig) -> Cluster {
    let mut c = Cluster::new(&["a", "b"], config);
    c.link("a", "b");
    c.run();
    let mut client = Client::new(&mut c, "a", 1);
    client.put("k", 1);
    client.sync(&mut c, "doc", false);
    assert_eq!(c.heads("a"), c.heads("b"), "replicated to b");
    assert_eq!(c.heads("a")[0].1, client.doc.get_heads());
    assert_eq!(c.stored["a"]["doc"].len(), 1, "persisted on a");
    assert_eq!(c.node("a").stats().client_changes, 1);
    // A write at b reaches the client through a without any message from the client.
    c.put("b", "doc", "from_b", 2, false);
    c.pump("b");
    c.run();
    client.sync(&mut c, "doc", false);
    assert_eq!(client.get("from_b"), Some(2));
    assert_eq!(client.get("k"), Some(1));
    // Gone: nothing more is sent to it.
    c.node("a").client_close(1);
    c.put("b", "doc", "later", 3, false);
    c.pump("b");
    c.run();
    assert!(client.take(&mut c).is_empty());
    assert_eq!(c.node("a").client_count(), 0);
    c
}

#[test]
fn a_request_waits_for_the_peers_then_is_answered() {
    let config = CoreConfig {
        unavailable_after_ms: 1_000,
        ..CoreConfig::default()
    };
    let mut c = Cluster::new(&["a", "b"], config);
    c.put("b", "only_b", "k", 7, false);
    c.link("a", "b");
    // Requested at a before a has it: answered with the document, not "unavailable".
    let mut client = Client::new(&mut c, "a", 1);
    client.sync(&mut c, "only_b", true);
    assert_eq!(client.get("k"), Some(7));
    assert!(!client
        .take(&mut c)
        .iter()
        .any(|m| matches!(m, ClientMsg::Unavailable { .. })));
    // A document no node has: unavailable, only once the wait is over.
    let mut other = Client::new(&mut c, "a", 2);
    let m = other.doc.generate_sync_message(&mut other.state).unwrap();
    let now = c.now;
    c.node("a")
        .client_sync(now, 2, "nowhere", &m.encode(), true)
        .unwrap();
    c.pump("a");
    c.run();
    c.tick_all(500);
    assert!(other.take(&mut c).is_empty(), "still waiting");
    c.tick_all(600);
    assert_eq!(
        other.take(&mut c),
        vec![ClientMsg::Unavailable {
            doc: "nowhere".into()
        }]
    );
    assert!(c.heads("a").iter().all(|(d, _)| d != "nowhere"));
}

#[test]
fn ephemeral_messages_reach_every_follower_once() {
    let mut c = Cluster::new(&["a", "b"], CoreConfig::default());
    c.link("a", "b");
    c.put("a", "doc", "k", 1, false);
    c.pump("a");
    c.run();
    let mut one = Client::new(&mut c, "a", 1);
    let mut two = Client::new(&mut c, "a", 2);
    let mut three = Client::new(&mut c, "b", 3);
    for cl in [&mut one, &mut two] {
        cl.sync(&mut c, "doc", true);
    }
    three.sync(&mut c, "doc", true);
    let e = Ephemeral {
        doc: "doc".into(),
        origin: String::new(),
        sender: "peer-one".into(),
        session: "s".into(),
        count: 1,
        data: ByteBuf::from(vec![1, 2, 3]),
    };
    for _ in 0..2 {
        c.node("a").client_ephemeral(1, e.clone());
        c.pump("a");
        c.run();
    }
    let got = |cl: &Client, c: &mut Cluster| -> Vec<Ephemeral> {
        cl.take(c)
            .into_iter()
            .filter_map(|m| match m {
                ClientMsg::Ephemeral(e) => Some(e),
                _ => None,
            })
            .collect()
    };
    assert!(got(&one, &mut c).is_empty(), "not back to its sender");
    let two_got = got(&two, &mut c);
    let three_got = got(&three, &mut c);
    assert_eq!(two_got.len(), 1, "once, though sent twice");
    assert_eq!(three_got.len(), 1, "across nodes");
    assert_eq!(three_got[0].origin, "a");
    assert_eq!(
        (three_got[0].data.as_ref(), three_got[0].count),
        (&[1u8, 2, 3][..], 1)
    );
}

#[test]
fn bad_client_input_is_refused_and_changes_nothing() {
    let mut c = Cluster::new(&["a"], CoreConfig::default());
    let now = c.now;
    let a = c.node("a");
    assert!(matches!(
        a.client_sync(now, 9, "doc", &[0x42], false),
        Err(ClientError::Unknown(9))
    ));
    a.client_open(9);
    assert!(matches!(
        a.client_sync(now, 9, "doc", &[0x42, 0xff, 0x00], false),
        Err(ClientError::BadSync { .. })
    ));
    assert!(c.heads("a").is_empty());
    assert!(c.stored.is_empty());
}

#[test]
fn a_client_hears_back_about_its_changes_only_once_they_are_durable() {
    let mut c = Cluster::new(&["a"], CoreConfig::default());
    c.auto_persist = false;
    let mut client = Client::new(&mut c, "a", 1);
    client.put("k", 1);
    // Hand the node messages until it has the change (the first carries only heads).
    for _ in 0..5 {
        if let Some(m) = client.doc.generate_sync_message(&mut client.state) {
            let now = c.now;
            c.node("a")
                .client_sync(now, 1, "doc", &m.encode(), false)
                .unwrap();
        }
        c.pump("a");
        if !c.pending_persists.is_empty() {
            break;
        }
        for msg in client.take(&mut c) {
            if let ClientMsg::Sync { data, .. } = msg {
                let m = sync::Message::decode(&data).unwrap();
                client
                    .doc
                    .receive_sync_message(&mut client.state, m)
                    .unwrap();
            }
        }
    }
    assert!(
        !c.pending_persists.is_empty(),
        "the change is being persisted"
    );
    c.pump("a");
    assert!(
        client.take(&mut c).is_empty(),
        "no answer before it is durable"
    );
    c.complete_persists();
    c.pump("a");
    let answers = client.take(&mut c);
    assert!(
        matches!(answers.as_slice(), [ClientMsg::Sync { .. }]),
        "{answers:?}"
    );
}

/// `serve_clients` skips Automerge's message generation for a session `in_step` says is
/// settled: over an exchange with edits on both sides, every such session is one Automerge
/// has nothing for, and the acknowledgements that follow each change are such sessions.
#[test]
fn in_step_sessions_are_those_automerge_has_nothing_for() {
    use crate::core::replica::clients::in_step;
    let (mut node, mut client) = (Automerge::new(), Automerge::new());
    let (mut ns, mut cs) = (sync::State::new(), sync::State::new());
    let (mut skipped, mut sent) = (0, 0);
    for round in 0..12_i64 {
        let writer = if round % 3 == 0 {
            &mut node
        } else {
            &mut client
        };
        let mut tx = writer.transaction();
        tx.put(ROOT, "k", round).unwrap();
        tx.commit();
        for _ in 0..10 {
            let heads = node.get_heads();
            let settled = in_step(&ns, &heads);
            let from_node = node.generate_sync_message(&mut ns);
            if settled {
                assert!(from_node.is_none(), "round {round}: skipped a message");
                skipped += 1;
            }
            if let Some(m) = from_node {
                sent += 1;
                client.receive_sync_message(&mut cs, m).unwrap();
            }
            match client.generate_sync_message(&mut cs) {
                Some(m) => node.receive_sync_message(&mut ns, m).unwrap(),
                None if in_step(&ns, &node.get_heads()) => break,
                None => {}
            }
        }
        assert_eq!(node.get_heads(), client.get_heads(), "round {round}");
    }
    assert!(
        skipped >= 12,
        "every change ends in a settled session: {skipped}"
    );
    assert!(sent >= 12, "{sent}");
    // The client got a change from another node and tells this one its heads (as a client
    // connected to two nodes does): not settled, and Automerge asks for the change.
    let mut elsewhere = node.fork();
    let mut tx = elsewhere.transaction();
    tx.put(ROOT, "k", -1_i64).unwrap();
    tx.commit();
    // (What receiving a message that carries only those heads does to the session.)
    ns.their_heads = Some(elsewhere.get_heads());
    ns.in_flight = false;
    assert!(!in_step(&ns, &node.get_heads()));
    let ask = node
        .generate_sync_message(&mut ns)
        .expect("a message asking for it");
    assert_eq!(ask.need, elsewhere.get_heads());
}

/// Clients on the two nodes that do not replicate a document (each document on one of
/// three nodes) edit it together: each node fetches it, follows it at the replica, and the
/// edits travel client → node → replica → other node → other client.
#[test]
fn clients_of_two_non_replicas_edit_a_document_together() {
    use crate::config::TopologyKind;
    use crate::topology::Topology;
    let ids = ["a", "b", "c"];
    let t = Topology::new(
        TopologyKind::Mesh,
        ids.iter().map(|s| s.to_string()).collect(),
        Vec::new(),
    )
    .with_replicas(Some(1))
    .unwrap();
    let mut c = Cluster::new(&ids, CoreConfig::default());
    for id in ids {
        c.node(id).set_router(Box::new(t.clone()));
    }
    c.link("a", "b");
    c.link("a", "c");
    c.link("b", "c");
    let doc = (0..)
        .map(|i| format!("d{i}"))
        .find(|d| t.holds("c", d))
        .unwrap();
    c.put("c", &doc, "base", 1, false);
    c.pump("c");
    c.run();
    edit_together(&mut c, &doc, ["a", "b"], &["c"]);
}

#[test]
fn on_a_ring_clients_two_hops_from_the_replicas_edit_a_document_together() {
    // Replicas c and d: a and f are two hops from them, linked to neither. Edits travel
    // along the follows, without waiting for handoff rounds.
    let (mut c, _, doc) = Cluster::ring();
    c.put("c", &doc, "base", 1, false);
    c.pump("c");
    c.run();
    edit_together(&mut c, &doc, ["a", "f"], &["c", "d"]);
}

/// Clients on nodes `at` find `doc` (which has `base` = 1), and each sees the other's
/// edit; the `replicas` end with both.
fn edit_together(c: &mut Cluster, doc: &str, at: [&'static str; 2], replicas: &[&str]) {
    let mut x = Client::new(c, at[0], 1);
    let mut y = Client::new(c, at[1], 2);
    x.sync(c, doc, true);
    y.sync(c, doc, true);
    assert_eq!(x.get("base"), Some(1), "x found it through {}", at[0]);
    assert_eq!(y.get("base"), Some(1), "y found it through {}", at[1]);
    x.put("x", 2);
    x.sync(c, doc, false);
    y.sync(c, doc, false);
    assert_eq!(y.get("x"), Some(2), "x's edit reached y");
    y.put("y", 3);
    y.sync(c, doc, false);
    x.sync(c, doc, false);
    assert_eq!(x.get("y"), Some(3), "y's edit reached x");
    for r in replicas {
        let at = c.node(r).load(doc).unwrap().unwrap().get_heads();
        assert_eq!(at, x.doc.get_heads(), "replica {r} has both edits");
    }
}
