use std::collections::BTreeMap;
use std::path::Path;

use super::*;

const MESH: &str = "topology = \"mesh\"";
const RING: &str = "topology = \"ring\"";
const FORWARD: &str = "topology = \"ring\"\nring_direction = \"forward\"";
const EDGES: &str = "topology = \"edges\"";

fn text(cluster: &str, head: &str, n: usize, links: &[(usize, usize)]) -> String {
    let mut text = format!("cluster = \"{cluster}\"\n{head}\n");
    for i in 1..=n {
        text += &format!(
            "[[node]]\nid = \"n{i}\"\npeer = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n",
            7100 + i,
            8100 + i
        );
    }
    for (a, b) in links {
        text += &format!("[[link]]\na = \"n{a}\"\nb = \"n{b}\"\n");
    }
    text
}

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("/etc/c/cluster.toml")).expect("a valid file")
}

fn config(head: &str, n: usize, links: &[(usize, usize)]) -> Config {
    parse(&text("c", head, n, links))
}

fn chain(n: usize) -> Vec<(usize, usize)> {
    (1..n).map(|i| (i, i + 1)).collect()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn nodes(state: &Membership) -> Vec<String> {
    state.topology().nodes().to_vec()
}

fn v(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Asserts that a proposal is refused with `expected` and leaves the state as it was.
fn refused(
    state: &mut Membership,
    expected: MembershipError,
    propose: impl FnOnce(&mut Membership) -> Result<(), MembershipError>,
) {
    let before = state.clone();
    let err = propose(state).expect_err("the proposal must be refused");
    assert_eq!(err, expected);
    assert!(!err.to_string().is_empty());
    assert_eq!(*state, before);
    assert_eq!(state.digest(), before.digest());
}

fn bincode_round_trip(state: &Membership) -> Membership {
    let config = bincode::config::standard().with_limit::<{ crate::wire::MAX_FRAME }>();
    let bytes = bincode::serde::encode_to_vec(state, config).expect("encodes");
    let (back, used): (Membership, usize) =
        bincode::serde::decode_from_slice(&bytes, config).expect("decodes");
    assert_eq!(used, bytes.len());
    back
}

fn json_round_trip(state: &Membership) -> Membership {
    let text = serde_json::to_string(state).expect("encodes");
    serde_json::from_str(&text).expect("decodes")
}

#[test]
fn the_file_is_version_0_in_file_order() {
    let cfg = config(MESH, 3, &[]);
    let state = Membership::from_config(&cfg);
    assert_eq!(state.topology(), cfg.topology());
    assert_eq!(state.version(), 0);
    assert_eq!(state.cluster(), "c");
    assert_eq!(state.kind(), TopologyKind::Mesh);
    assert!(state.is_live("n2") && !state.is_live("N2") && !state.is_live("n4"));
    assert!(state.removed().is_empty());
    let j = state.to_json();
    assert_eq!(j["cluster"], "c");
    assert_eq!(j["topology"], "mesh");
    assert_eq!(j["version"], 0);
    assert_eq!(j["digest"], format!("{:016x}", state.digest()));
    assert_eq!(
        j["nodes"][1],
        json!({"id": "n2", "peer": "127.0.0.1:7102", "api": "127.0.0.1:8102"})
    );
    assert_eq!(j["removed"], json!([]));
    assert!(j.get("links").is_none() && j.get("ring_direction").is_none());

    let ring = Membership::from_config(&config(FORWARD, 3, &[]));
    assert_eq!(ring.to_json()["topology"], "ring");
    assert_eq!(ring.to_json()["ring_direction"], "forward");
    assert_eq!(
        Membership::from_config(&config(RING, 3, &[])).to_json()["ring_direction"],
        "both"
    );
    let cfg = config(EDGES, 3, &[(2, 1), (2, 3)]);
    let edges = Membership::from_config(&cfg);
    assert_eq!(edges.topology(), cfg.topology());
    assert_eq!(
        edges.to_json()["links"],
        json!([["n1", "n2"], ["n2", "n3"]])
    );
}

#[test]
fn the_digest_is_pinned() {
    // The digest is compared between nodes (and versions): its encoding must not drift.
    let state = Membership::from_config(&config(RING, 3, &[]));
    assert_eq!(format!("{:016x}", state.digest()), "d58220deafa33412");
    let mut changed = state.clone();
    changed
        .propose_add("n1", "n4", addr(7104), addr(8104))
        .expect("added");
    assert_ne!(changed.digest(), state.digest());
}

#[test]
fn refused_adds_leave_the_state_unchanged() {
    let mut s = Membership::from_config(&config(MESH, 3, &[]));
    let (p, a) = (addr(9001), addr(9101));
    refused(&mut s, MembershipError::NotMember("zz".into()), |s| {
        s.propose_add("zz", "n9", p, a)
    });
    for bad in ["", "bad id", "n/1", &"a".repeat(65)] {
        let expected = MembershipError::InvalidId(bad.into());
        refused(&mut s, expected, |s| s.propose_add("n1", bad, p, a));
    }
    for id in ["n2", "N2"] {
        let expected = MembershipError::DuplicateId {
            id: id.into(),
            existing: "n2".into(),
        };
        refused(&mut s, expected, |s| s.propose_add("n1", id, p, a));
    }
    let clash = |kind, addr, other: &str, other_kind| MembershipError::DuplicateAddress {
        id: "n9".into(),
        kind,
        addr,
        other: other.into(),
        other_kind,
    };
    refused(&mut s, clash("peer", addr(7102), "n2", "peer"), |s| {
        s.propose_add("n1", "n9", addr(7102), a)
    });
    refused(&mut s, clash("peer", addr(8101), "n1", "api"), |s| {
        s.propose_add("n1", "n9", addr(8101), a)
    });
    refused(&mut s, clash("api", addr(7103), "n3", "peer"), |s| {
        s.propose_add("n1", "n9", p, addr(7103))
    });
    let kind = TopologyKind::Mesh;
    refused(&mut s, MembershipError::LinksNotAllowed(kind), |s| {
        s.propose_add_with_links("n1", "n9", p, a, &v(&["n2"]))
    });
    refused(&mut s, MembershipError::LinksNotAllowed(kind), |s| {
        s.propose_link("n1", "n2", "n3")
    });
    // One address for both, and port 0, are fine.
    s.propose_add("n1", "n9", p, p).expect("added");
    s.propose_add("n1", "n10", addr(0), addr(0)).expect("added");
    s.propose_add("n1", "n11", addr(0), addr(0)).expect("added");
}

#[test]
fn refused_removals_leave_the_state_unchanged() {
    let mut s = Membership::from_config(&config(RING, 3, &[]));
    refused(&mut s, MembershipError::UnknownNode("n9".into()), |s| {
        s.propose_remove("n1", "n9")
    });
    refused(&mut s, MembershipError::UnknownNode("N2".into()), |s| {
        s.propose_remove("n1", "N2")
    });
    s.propose_remove("n1", "n3").expect("removed");
    refused(&mut s, MembershipError::AlreadyRemoved("n3".into()), |s| {
        s.propose_remove("n1", "n3")
    });
    refused(&mut s, MembershipError::NotMember("n3".into()), |s| {
        s.propose_remove("n3", "n2")
    });
    for id in ["n3", "N3"] {
        let expected = MembershipError::RemovedId {
            id: id.into(),
            existing: "n3".into(),
        };
        refused(&mut s, expected, |s| {
            s.propose_add("n1", id, addr(9001), addr(9101))
        });
    }
    s.propose_remove("n2", "n2")
        .expect("a node may remove itself");
    refused(&mut s, MembershipError::LastNode("n1".into()), |s| {
        s.propose_remove("n1", "n1")
    });
    assert_eq!(nodes(&s), v(&["n1"]));
}

#[test]
fn edges_keep_every_node_connected() {
    let mut s = Membership::from_config(&config(EDGES, 4, &chain(4)));
    let (p, a) = (addr(9001), addr(9101));
    refused(&mut s, MembershipError::NeedsLinks("n9".into()), |s| {
        s.propose_add("n1", "n9", p, a)
    });
    refused(&mut s, MembershipError::UnknownNode("zz".into()), |s| {
        s.propose_add_with_links("n1", "n9", p, a, &v(&["n1", "zz"]))
    });
    refused(&mut s, MembershipError::WouldDisconnect("n2".into()), |s| {
        s.propose_remove("n1", "n2")
    });
    refused(&mut s, MembershipError::SelfLink("n1".into()), |s| {
        s.propose_link("n1", "n1", "n1")
    });
    let exists = MembershipError::LinkExists("n2".into(), "n1".into());
    refused(&mut s, exists, |s| s.propose_link("n1", "n2", "n1"));
    let cut = MembershipError::LinkWouldDisconnect("n2".into(), "n3".into());
    refused(&mut s, cut, |s| s.propose_unlink("n1", "n2", "n3"));
    let none = MembershipError::NoLink("n1".into(), "n3".into());
    refused(&mut s, none, |s| s.propose_unlink("n1", "n1", "n3"));

    s.propose_add_with_links("n1", "n9", p, a, &v(&["n4", "n1", "n4"]))
        .expect("added with links");
    assert_eq!(nodes(&s), v(&["n1", "n2", "n3", "n4", "n9"]));
    assert_eq!(s.topology().neighbours("n9"), v(&["n1", "n4"]));
    // Now a cycle: any one node or link may go.
    s.propose_remove("n1", "n2").expect("removed");
    assert_eq!(
        s.links(),
        vec![
            ("n1".to_string(), "n9".to_string()),
            ("n3".to_string(), "n4".to_string()),
            ("n4".to_string(), "n9".to_string()),
        ]
    );
    refused(&mut s, MembershipError::WouldDisconnect("n4".into()), |s| {
        s.propose_remove("n1", "n4")
    });
    s.propose_link("n1", "n1", "n3").expect("linked");
    s.propose_unlink("n3", "n3", "n4").expect("unlinked");
    s.propose_link("n4", "n4", "n3")
        .expect("a link may come back");
    assert_eq!(s.topology().neighbours("n3"), v(&["n1", "n4"]));
}

#[test]
fn an_added_node_comes_last_in_ring_order() {
    let file = Membership::from_config(&config(RING, 3, &[]));
    let (mut a, mut b) = (file.clone(), file.clone());
    a.propose_add("n2", "n4", addr(7104), addr(8104))
        .expect("added");
    assert_eq!(a.version(), 1);
    assert_eq!(
        a.member("n4").map(|m| m.added.clone()),
        Some(Stamp {
            clock: 1,
            by: "n2".into()
        })
    );
    assert_eq!(nodes(&a), v(&["n1", "n2", "n3", "n4"]));
    assert_eq!(a.topology().neighbours("n4"), v(&["n1", "n3"]));
    assert!(b.merge(&a));
    assert!(!b.merge(&a));
    b.propose_add("n1", "a0", addr(7105), addr(8105))
        .expect("added");
    assert_eq!(b.version(), 2);
    assert_eq!(nodes(&b), v(&["n1", "n2", "n3", "n4", "a0"]));
    assert_eq!(b.to_json()["nodes"][4]["id"], "a0");

    // Concurrent adds: ordered by stamp, (1, "n1") before (1, "n3").
    let (mut c, mut d) = (file.clone(), file.clone());
    d.propose_add("n3", "x", addr(9001), addr(9101))
        .expect("added");
    c.propose_add("n1", "y", addr(9002), addr(9102))
        .expect("added");
    c.merge(&d);
    d.merge(&c);
    assert_eq!(c, d);
    assert_eq!(nodes(&c), v(&["n1", "n2", "n3", "y", "x"]));
}

#[test]
fn a_removed_node_is_gone_and_never_comes_back() {
    let file = Membership::from_config(&config(MESH, 3, &[]));
    let (mut a, mut b) = (file.clone(), file.clone());
    a.propose_remove("n1", "n2").expect("removed");
    assert_eq!(nodes(&a), v(&["n1", "n3"]));
    assert!(!a.is_live("n2") && a.member("n2").is_some());
    assert_eq!(a.removed().len(), 1);
    assert_eq!(a.to_json()["removed"], json!(["n2"]));
    assert!(!a.topology().contains("n2"));
    b.merge(&a);
    let expected = MembershipError::RemovedId {
        id: "n2".into(),
        existing: "n2".into(),
    };
    refused(&mut b, expected, |s| {
        s.propose_add("n3", "n2", addr(9001), addr(9101))
    });
    // A replica that never heard of the removal starts from an old file: merging brings it.
    let mut old = Membership::from_config(&config(MESH, 3, &[]));
    assert!(old.merge(&b));
    assert!(!old.is_live("n2"));
}

#[test]
fn a_removal_beats_a_concurrent_or_later_re_add() {
    let file = Membership::from_config(&config(MESH, 3, &[]));
    let mut a = file.clone();
    a.propose_add("n1", "x", addr(9001), addr(9101))
        .expect("added");
    let mut b = file.clone();
    b.merge(&a);
    b.propose_remove("n2", "x").expect("removed");
    // n3 never heard of x; its clock is ahead, so its add has the greatest stamp.
    let mut c = file.clone();
    for i in 0..5 {
        c.propose_add("n3", &format!("y{i}"), addr(9200 + i), addr(9300 + i))
            .expect("added");
    }
    c.propose_add("n3", "X", addr(9002), addr(9102))
        .expect("added");
    a.merge(&b);
    a.merge(&c);
    b.merge(&a);
    c.merge(&a);
    assert_eq!(a, b);
    assert_eq!(a, c);
    let x = a.removed().into_iter().next().expect("x removed").clone();
    assert_eq!((x.id.as_str(), x.peer), ("X", addr(9002)));
    assert!(!a.is_live("x") && !a.is_live("X"));
    assert!(!nodes(&a).iter().any(|id| id.eq_ignore_ascii_case("x")));
}

#[test]
fn concurrent_adds_of_one_id_converge_to_the_greater_stamp() {
    let file = Membership::from_config(&config(RING, 3, &[]));
    let (mut a, mut b) = (file.clone(), file.clone());
    a.propose_add("n1", "x", addr(9001), addr(9101))
        .expect("added");
    b.propose_add("n3", "x", addr(9002), addr(9102))
        .expect("added");
    let (a0, b0) = (a.clone(), b.clone());
    assert!(a.merge(&b0));
    assert!(!b.merge(&a0));
    assert_eq!(a, b);
    let x = a.member("x").expect("one entry");
    assert_eq!((x.peer, x.api), (addr(9002), addr(9102)));
    assert_eq!(x.added.by, "n3");
    assert_eq!(nodes(&a), v(&["n1", "n2", "n3", "x"]));
}

#[test]
fn merge_ignores_another_cluster_or_kind() {
    let mut a = Membership::from_config(&config(MESH, 3, &[]));
    let before = a.clone();
    let mut other = Membership::from_config(&parse(&text("other", MESH, 3, &[])));
    other
        .propose_add("n1", "n9", addr(9001), addr(9101))
        .expect("added");
    assert!(!a.merge(&other));
    let mut ring = Membership::from_config(&config(RING, 3, &[]));
    ring.propose_remove("n1", "n2").expect("removed");
    assert!(!a.merge(&ring));
    assert_eq!(a, before);
}

/// A mesh of `n` nodes with each document on `r` of them.
fn mesh_with_replicas(n: usize, r: usize) -> Config {
    config(&format!("{MESH}\nreplicas = {r}"), n, &[])
}

#[test]
fn replicas_come_from_the_file() {
    let cfg = mesh_with_replicas(5, 3);
    let state = Membership::from_config(&cfg);
    assert_eq!(state.replicas(), Some(3));
    let t = state.topology();
    assert_eq!(t, cfg.topology());
    assert_eq!(t.replicas(), 3);
    assert_eq!(t.replicas_of("doc").len(), 3);
    assert_eq!(state.to_json()["replicas"], 3);
    let ring = Membership::from_config(&config(&format!("{RING}\nreplicas = 2"), 4, &[]));
    assert_eq!(ring.topology().replicas(), 2);
    assert_eq!(ring.to_json()["replicas"], 2);
    // Without the key: every node has every document, and the JSON has no replicas.
    let all = Membership::from_config(&config(MESH, 5, &[]));
    assert_eq!(all.replicas(), None);
    assert_eq!(all.topology().replicas(), 5);
    assert!(all.topology().placement().is_none());
    assert!(all.to_json().get("replicas").is_none());
    // Edges allow replicas = every node only; an added node then leaves them below the
    // nodes, which edges cannot place: every node keeps every document.
    let cfg = config(&format!("{EDGES}\nreplicas = 3"), 3, &chain(3));
    let mut edges = Membership::from_config(&cfg);
    assert_eq!(edges.replicas(), Some(3));
    edges
        .propose_add_with_links("n1", "n4", addr(7104), addr(8104), &v(&["n3"]))
        .expect("added");
    assert_eq!(edges.topology().replicas(), 4);
    assert!(edges.topology().placement().is_none());
}

#[test]
fn a_removal_never_leaves_fewer_live_nodes_than_the_replicas() {
    let mut s = Membership::from_config(&mesh_with_replicas(4, 3));
    s.propose_remove("n1", "n4").expect("3 live nodes are left");
    let expected = MembershipError::BelowReplicas {
        id: "n3".into(),
        live: 2,
        replicas: 3,
    };
    assert_eq!(
        expected.to_string(),
        "removing node \"n3\" would leave 2 live nodes, fewer than replicas = 3"
    );
    refused(&mut s, expected, |s| s.propose_remove("n1", "n3"));
    refused(
        &mut s,
        MembershipError::BelowReplicas {
            id: "n1".into(),
            live: 2,
            replicas: 3,
        },
        |s| s.propose_remove("n1", "n1"),
    );
    // A new node makes room for a removal.
    s.propose_add("n1", "n5", addr(7105), addr(8105))
        .expect("added");
    s.propose_remove("n1", "n3").expect("3 live nodes are left");
    assert_eq!(nodes(&s), v(&["n1", "n2", "n5"]));
    assert_eq!(s.topology().replicas(), 3);
    // With one replica, only the last node stays.
    let mut one = Membership::from_config(&mesh_with_replicas(2, 1));
    one.propose_remove("n1", "n2").expect("removed");
    refused(&mut one, MembershipError::LastNode("n1".into()), |s| {
        s.propose_remove("n1", "n1")
    });
}

#[test]
fn concurrent_removals_below_the_replicas_put_every_document_on_every_live_node() {
    let file = Membership::from_config(&mesh_with_replicas(4, 3));
    let (mut a, mut b) = (file.clone(), file);
    a.propose_remove("n1", "n4").expect("valid at n1");
    b.propose_remove("n2", "n3").expect("valid at n2");
    assert!(a.merge(&b));
    assert_eq!(nodes(&a), v(&["n1", "n2"]));
    assert_eq!(a.replicas(), Some(3));
    let t = a.topology();
    assert_eq!(t.replicas(), 2);
    assert!(t.placement().is_none());
    assert!(t.holds("n1", "doc") && t.holds("n2", "doc"));
    assert_eq!(a.to_json()["replicas"], 3);
    // Back to 3 live nodes, the documents are placed on 3 again.
    a.propose_add("n1", "n5", addr(7105), addr(8105))
        .expect("added");
    assert_eq!(a.topology().replicas(), 3);
    assert!(a.topology().placement().is_none());
    a.propose_add("n1", "n6", addr(7106), addr(8106))
        .expect("added");
    assert_eq!(a.topology().replicas(), 3);
    assert_eq!(a.topology().replicas_of("doc").len(), 3);
}

#[test]
fn merge_ignores_other_replicas() {
    let mut a = Membership::from_config(&mesh_with_replicas(3, 2));
    let before = a.clone();
    let mut all = Membership::from_config(&config(MESH, 3, &[]));
    all.propose_add("n1", "n9", addr(9001), addr(9101))
        .expect("added");
    assert!(!a.merge(&all));
    let mut three = Membership::from_config(&mesh_with_replicas(3, 3));
    three
        .propose_add("n1", "n9", addr(9001), addr(9101))
        .expect("added");
    assert!(!a.merge(&three));
    assert_eq!(a, before);
    let mut back = all.clone();
    assert!(!back.merge(&a));
    assert_eq!(back, all);
    let mut same = Membership::from_config(&mesh_with_replicas(3, 2));
    same.propose_add("n1", "n9", addr(9001), addr(9101))
        .expect("added");
    assert!(a.merge(&same));
    assert!(a.is_live("n9"));
}

#[test]
fn replicas_are_in_the_digest_only_when_set() {
    let all = Membership::from_config(&config(RING, 3, &[]));
    // The pinned digest of a state without replicas (see the_digest_is_pinned).
    assert_eq!(format!("{:016x}", all.digest()), "d58220deafa33412");
    let three = Membership::from_config(&config(&format!("{RING}\nreplicas = 3"), 3, &[]));
    let two = Membership::from_config(&config(&format!("{RING}\nreplicas = 2"), 3, &[]));
    assert_ne!(three.digest(), all.digest());
    assert_ne!(two.digest(), three.digest());
    assert_eq!(two.digest(), two.clone().digest());
    // Pinned too: nodes compare digests across versions.
    assert_eq!(format!("{:016x}", two.digest()), "a1c46f33ef661fd9");
}

#[test]
fn replicas_survive_storage_and_the_wire_and_older_states_load() {
    let mut state = Membership::from_config(&mesh_with_replicas(4, 2));
    state.propose_remove("n1", "n4").expect("removed");
    for back in [json_round_trip(&state), bincode_round_trip(&state)] {
        assert_eq!(back, state);
        assert_eq!(back.replicas(), Some(2));
        assert_eq!(back.digest(), state.digest());
    }
    let all = Membership::from_config(&config(MESH, 4, &[]));
    assert_eq!(bincode_round_trip(&all), all);
    assert_eq!(json_round_trip(&all).replicas(), None);
    // A topology stored before replicas existed has no such field.
    let mut j = serde_json::to_value(&all).expect("encodes");
    assert_eq!(j["replicas"], Value::Null);
    j.as_object_mut().expect("an object").remove("replicas");
    let old: Membership = serde_json::from_value(j).expect("an older state loads");
    assert_eq!(old, all);
    // Zero replicas is refused.
    let mut j = serde_json::to_value(&state).expect("encodes");
    j["replicas"] = json!(0);
    let e = serde_json::from_value::<Membership>(j).expect_err("refused");
    assert!(e.to_string().contains("replicas = 0"), "{e}");
}

#[test]
fn start_up_takes_the_replicas_of_the_file() {
    let mut stored = Membership::from_config(&config(MESH, 4, &[]));
    stored.propose_remove("n1", "n4").expect("removed");
    let state = Membership::with_config(&mesh_with_replicas(4, 2), Some(stored.clone()));
    assert_eq!(state.replicas(), Some(2));
    assert_eq!(nodes(&state), v(&["n1", "n2", "n3"]));
    assert_eq!(state.topology().replicas(), 2);
    let stored = state;
    let state = Membership::with_config(&config(MESH, 4, &[]), Some(stored));
    assert_eq!(state.replicas(), None);
    assert_eq!(state.topology().replicas(), 3);
}

#[test]
fn start_up_prefers_the_stored_state_to_the_file() {
    let cfg = config(RING, 3, &[]);
    assert_eq!(
        Membership::with_config(&cfg, None),
        Membership::from_config(&cfg)
    );
    let mut stored = Membership::from_config(&cfg);
    stored
        .propose_add("n1", "n4", addr(7104), addr(8104))
        .expect("added");
    stored.propose_remove("n1", "n2").expect("removed");
    assert_eq!(Membership::with_config(&cfg, Some(stored.clone())), stored);
    // An older file with another address for n1 and a node n5 the store does not know.
    let edited = text("c", RING, 3, &[]).replace("127.0.0.1:7101", "127.0.0.1:7201")
        + "[[node]]\nid = \"n5\"\npeer = \"127.0.0.1:7105\"\napi = \"127.0.0.1:8105\"\n";
    let state = Membership::with_config(&parse(&edited), Some(stored.clone()));
    assert_eq!(state.member("n1").map(|m| m.peer), Some(addr(7101)));
    assert_eq!(nodes(&state), v(&["n1", "n3", "n5", "n4"]));
    assert!(!state.is_live("n2"));
    // A stored state of another cluster is ignored.
    let foreign = Membership::from_config(&parse(&text("other", RING, 2, &[])));
    assert_eq!(
        Membership::with_config(&cfg, Some(foreign)),
        Membership::from_config(&cfg)
    );
    // The kind is the file's.
    let mesh = Membership::with_config(&config(MESH, 3, &[]), Some(stored));
    assert_eq!(mesh.kind(), TopologyKind::Mesh);
}

#[test]
fn untrusted_states_are_cleaned_and_never_panic() {
    let mut state = Membership::from_config(&config(EDGES, 3, &chain(3)));
    state
        .propose_add_with_links("n1", "n4", addr(9001), addr(9101), &v(&["n3"]))
        .expect("added");
    let mut j = serde_json::to_value(&state).expect("encodes");
    let mut bad = j["members"][0].clone();
    bad["id"] = json!("bad id");
    j["members"].as_array_mut().expect("a list").push(bad);
    let mut dup = j["members"][1].clone();
    dup["removed"] = json!({"clock": 7, "by": "n3"});
    j["members"].as_array_mut().expect("a list").push(dup);
    let links = j["links"].as_array_mut().expect("a list");
    links.push(json!({"a": "n1", "b": "N1", "added": {"clock": 1, "by": ""}, "removed": null}));
    links.push(json!({"a": "n1", "b": "", "added": {"clock": 1, "by": ""}, "removed": null}));
    let back: Membership = serde_json::from_value(j).expect("decodes");
    assert_eq!(back.members.len(), 4);
    assert_eq!(back.links.len(), state.links.len());
    assert!(!back.is_live("n2"));
    assert_eq!(back.version(), 7);

    let config = bincode::config::standard().with_limit::<{ crate::wire::MAX_FRAME }>();
    let bytes = bincode::serde::encode_to_vec(&state, config).expect("encodes");
    let mut rng = Rng(1);
    for _ in 0..2000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len());
            b[i] = rng.next() as u8;
        }
        b.truncate(b.len() - rng.below(3));
        if let Ok((s, _)) = bincode::serde::decode_from_slice::<Membership, _>(&b, config) {
            let _ = (s.topology(), s.to_json(), s.digest());
            let mut mine = state.clone();
            mine.merge(&s);
            let _ = mine.propose_add("n1", "z", addr(9009), addr(9109));
        }
    }
    for text in ["", "{}", "[]", "{\"cluster\":1}", "null"] {
        assert!(serde_json::from_str::<Membership>(text).is_err());
    }
}

/// splitmix64: a seeded generator, the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len()))
        }
    }
}

/// The invariants of any state: the clock is the greatest stamp, live ids are unique
/// ignoring case, the topology lists exactly the live members.
fn check_invariants(s: &Membership) {
    let stamps = s
        .members
        .values()
        .flat_map(|m| std::iter::once(&m.added).chain(&m.removed))
        .chain(
            s.links
                .values()
                .flat_map(|l| std::iter::once(&l.added).chain(&l.removed)),
        );
    assert_eq!(s.version(), stamps.map(|t| t.clock).max().unwrap_or(0));
    let live = nodes(s);
    let mut lower: Vec<String> = live.iter().map(|id| id.to_ascii_lowercase()).collect();
    lower.sort();
    lower.dedup();
    assert_eq!(lower.len(), live.len());
    assert_eq!(live.len(), s.live().len());
    assert!(live.iter().all(|id| s.is_live(id)));
    // Documents on the replicas, or on every live node when removals left fewer.
    let expected = s.replicas().map_or(live.len(), |r| r.min(live.len()));
    assert_eq!(s.topology().replicas(), expected);
    assert_eq!(
        s.to_json().get("replicas").and_then(Value::as_u64),
        s.replicas().map(|r| r as u64)
    );
}

/// The join laws on a few states.
fn check_laws(a: &Membership, b: &Membership, c: &Membership) {
    let join = |x: &Membership, y: &Membership| {
        let mut z = x.clone();
        z.merge(y);
        z
    };
    let ab = join(a, b);
    assert_eq!(ab, join(b, a), "commutative");
    assert_eq!(ab.digest(), join(b, a).digest());
    assert_eq!(join(&ab, b), ab, "idempotent");
    assert_eq!(join(a, a), *a);
    assert_eq!(join(&ab, c), join(a, &join(b, c)), "associative");
    let mut same = ab.clone();
    assert!(!same.merge(&ab));
}

/// One seeded schedule of proposals and lossy, duplicated, delayed gossip.
fn run_schedule(seed: u64) {
    let mut rng = Rng(seed);
    let head = [MESH, RING, FORWARD, EDGES][(seed % 4) as usize];
    let n = 3 + rng.below(4);
    let links = if head == EDGES {
        let mut links = chain(n);
        if rng.chance(50) {
            links.push((1, n));
        }
        links
    } else {
        Vec::new()
    };
    // Half the meshes and two-way rings place each document on 2 or 3 nodes (derived from
    // the seed alone, so that the other schedules stay what they were).
    let head = if matches!(head, MESH | RING) && (seed / 4) % 2 == 1 {
        format!("{head}\nreplicas = {}", 2 + (seed / 8) % 2)
    } else {
        head.to_string()
    };
    let file = Membership::from_config(&config(&head, n, &links));
    let mut replicas = vec![file; n];
    let mut delayed: Vec<Membership> = Vec::new();
    let mut ever_removed: Vec<String> = Vec::new();
    // For each id (lower case) added anywhere, the greatest (stamp, peer, api).
    let mut adds: BTreeMap<String, (Stamp, SocketAddr, SocketAddr)> = BTreeMap::new();
    let pool = ["a", "b", "A", "c", "n1", "n2", "bad id"];
    let mut fresh = 0;
    for step in 0..80 {
        let r = rng.below(n);
        let me = format!("n{}", r + 1);
        let before = replicas[r].clone();
        match rng.below(12) {
            0..=2 => {
                let id = if rng.chance(40) {
                    fresh += 1;
                    format!("f{fresh}")
                } else {
                    rng.pick(&pool).map(|s| s.to_string()).unwrap_or_default()
                };
                let peer = addr(9000 + rng.below(6) as u16);
                let api = if rng.chance(10) {
                    addr(7101)
                } else {
                    addr(9100 + rng.below(6) as u16)
                };
                let live: Vec<String> = nodes(&replicas[r]);
                let mut to = Vec::new();
                if head == EDGES {
                    for _ in 0..rng.below(3) {
                        to.extend(rng.pick(&live).cloned());
                    }
                }
                let result = replicas[r].propose_add_with_links(&me, &id, peer, api, &to);
                match result {
                    Ok(()) => {
                        let m = replicas[r].member(&id).expect("added");
                        let entry = (m.added.clone(), m.peer, m.api);
                        let best = adds.entry(id.to_ascii_lowercase()).or_insert(entry.clone());
                        if entry > *best {
                            *best = entry;
                        }
                    }
                    Err(_) => assert_eq!(replicas[r], before),
                }
            }
            3 | 4 => {
                let mut ids: Vec<String> =
                    replicas[r].members.values().map(|m| m.id.clone()).collect();
                ids.push("zz".into());
                let id = rng.pick(&ids).cloned().unwrap_or_default();
                match replicas[r].propose_remove(&me, &id) {
                    Ok(()) => ever_removed.push(id),
                    Err(_) => assert_eq!(replicas[r], before),
                }
            }
            5 => {
                let live = nodes(&replicas[r]);
                let (x, y) = (rng.pick(&live).cloned(), rng.pick(&live).cloned());
                let (x, y) = (x.unwrap_or_default(), y.unwrap_or_default());
                let result = if rng.chance(50) {
                    replicas[r].propose_link(&me, &x, &y)
                } else {
                    replicas[r].propose_unlink(&me, &x, &y)
                };
                if result.is_err() {
                    assert_eq!(replicas[r], before);
                }
            }
            6..=10 => {
                let from = rng.below(n);
                let snapshot = replicas[from].clone();
                if rng.chance(20) {
                    continue; // lost
                }
                if rng.chance(20) {
                    delayed.push(snapshot);
                    continue;
                }
                let changed = replicas[r].merge(&snapshot);
                assert_eq!(changed, replicas[r] != before);
                if rng.chance(20) {
                    assert!(!replicas[r].merge(&snapshot), "a duplicate changes nothing");
                }
            }
            _ => {
                if !delayed.is_empty() {
                    let late = delayed.swap_remove(rng.below(delayed.len()));
                    replicas[r].merge(&late);
                }
            }
        }
        check_invariants(&replicas[r]);
        if step % 10 == 0 {
            let (i, j, k) = (rng.below(n), rng.below(n), rng.below(n));
            check_laws(&replicas[i], &replicas[j], &replicas[k]);
        }
    }
    for late in delayed {
        let r = rng.below(n);
        replicas[r].merge(&late);
    }
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let other = replicas[j].clone();
                replicas[i].merge(&other);
            }
        }
    }
    let first = replicas[0].clone();
    check_invariants(&first);
    for s in &replicas {
        assert_eq!(*s, first, "seed {seed}");
        assert_eq!(s.digest(), first.digest());
        assert_eq!(nodes(s), nodes(&first));
        assert_eq!(s.to_json(), first.to_json());
    }
    for id in &ever_removed {
        for s in &replicas {
            assert!(!s.is_live(id), "seed {seed}: {id} came back");
            assert!(s.removed().iter().any(|m| m.id.eq_ignore_ascii_case(id)));
        }
    }
    for (k, (stamp, peer, api)) in &adds {
        let m = &first.members[k];
        assert_eq!(
            (&m.added, m.peer, m.api),
            (stamp, *peer, *api),
            "seed {seed}"
        );
    }
    // The file's nodes keep their order; added ones follow by stamp.
    let order: Vec<(Option<u32>, Stamp)> = first
        .live()
        .iter()
        .map(|m| (m.pos, m.added.clone()))
        .collect();
    assert!(order
        .windows(2)
        .all(|w| (w[0].0.is_none(), &w[0]) < (w[1].0.is_none(), &w[1])));
    for s in [json_round_trip(&first), bincode_round_trip(&first)] {
        assert_eq!(s, first);
        assert_eq!(s.digest(), first.digest());
    }
}

#[test]
fn replicas_converge_under_loss_duplication_delay_and_concurrency() {
    for seed in 0..300 {
        run_schedule(seed);
    }
}

/// Copies of partitions that move from `before` to `after` (replica sets compared).
fn moved_copies(before: &Topology, after: &Topology) -> usize {
    let (Some(b), Some(a)) = (before.placement(), after.placement()) else {
        panic!("both placed")
    };
    (0..crate::placement::PARTITIONS)
        .map(crate::placement::Partition)
        .map(|p| {
            let old: Vec<&str> = b.replicas(p).collect();
            a.replicas(p).filter(|r| !old.contains(r)).count()
        })
        .sum()
}

#[test]
fn a_node_joining_or_leaving_a_ring_moves_only_a_neighbours_share() {
    let mut s = Membership::from_config(&config("topology = \"ring\"\nreplicas = 3", 9, &[]));
    let before = s.topology();
    assert_eq!(before.replicas(), 3);
    s.propose_add("n1", "n10", addr(7110), addr(8110))
        .expect("added");
    let after = s.topology();
    assert_eq!(after.nodes().len(), 10);
    let ideal = 3 * usize::from(crate::placement::PARTITIONS) / 10;
    let moved = moved_copies(&before, &after);
    assert!(
        moved > 0 && moved * 10 <= ideal * 13,
        "moved {moved}, ideal {ideal}"
    );
    // A file node leaves: again only its neighbours' windows change.
    s.propose_remove("n1", "n4").expect("removed");
    let smaller = s.topology();
    let moved = moved_copies(&after, &smaller);
    let ideal = 3 * usize::from(crate::placement::PARTITIONS) / 10;
    assert!(
        moved > 0 && moved * 10 <= ideal * 13,
        "moved {moved}, ideal {ideal}"
    );
}

#[test]
fn a_node_joining_a_mesh_moves_about_its_share() {
    let mut s = Membership::from_config(&config("topology = \"mesh\"\nreplicas = 3", 9, &[]));
    let before = s.topology();
    s.propose_add("n1", "n10", addr(7110), addr(8110))
        .expect("added");
    let after = s.topology();
    let ideal = 3 * usize::from(crate::placement::PARTITIONS) / 10;
    let moved = moved_copies(&before, &after);
    assert!(
        moved * 10 <= ideal * 13 && moved * 10 >= ideal * 7,
        "moved {moved}, ideal {ideal}"
    );
}
