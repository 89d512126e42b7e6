use super::*;

fn ids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("n{i}")).collect()
}

fn peer(id: &str, connected: bool, healed: bool) -> PeerView {
    PeerView {
        id: id.to_string(),
        connected,
        linked: connected,
        healed,
        lag_changes: 0,
        lag_bytes: 0,
        lag_oldest_ms: 0,
        divergent: Some(0),
    }
}

fn view(id: &str, peers: Vec<PeerView>, events: &[(u64, &str)]) -> NodeView {
    let mut log = Events::new(id);
    for (at, text) in events {
        log.push(*at, "peer-down", text.to_string());
    }
    NodeView {
        id: id.to_string(),
        started_ms: 1,
        docs: 3,
        writes_total: 10,
        writes_per_s: 2.5,
        pending_writes: 0,
        sync_clients: 0,
        partitions: 1024,
        partitions_in: 0,
        partitions_out: 0,
        hints: 0,
        peers,
        events: log.list(),
    }
}

fn link<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["links"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["id"] == id))
        .unwrap_or_else(|| panic!("no link {id} in {v}"))
}

#[test]
fn a_ring_with_a_dead_node_shows_it_down_and_the_healing_link() {
    let t = Topology::new(TopologyKind::Ring(RingDirection::Both), ids(5), Vec::new());
    let mut views = BTreeMap::new();
    views.insert(
        "n1".into(),
        view(
            "n1",
            vec![peer("n2", true, false), peer("n5", true, false)],
            &[],
        ),
    );
    views.insert(
        "n2".into(),
        view(
            "n2",
            vec![peer("n1", true, false), peer("n4", true, true)],
            &[(50, "link to n3 down")],
        ),
    );
    views.insert(
        "n4".into(),
        view(
            "n4",
            vec![peer("n2", true, true), peer("n5", true, false)],
            &[(60, "healing")],
        ),
    );
    views.insert(
        "n5".into(),
        view(
            "n5",
            vec![peer("n4", true, false), peer("n1", true, false)],
            &[],
        ),
    );
    let v = assemble("n1", "c", &t, &views, 100);
    assert_eq!(v["topology"]["kind"], "ring");
    let states: Vec<(&str, &str)> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("n1", "up"),
            ("n2", "up"),
            ("n3", "down"),
            ("n4", "up"),
            ("n5", "up")
        ]
    );
    assert_eq!(v["nodes"][2]["docs"], Value::Null);
    assert_eq!(v["nodes"][1]["writes_per_s"], 2.5);
    // Five configured links (n5-n1 named in topology order) plus the healed one.
    assert_eq!(v["links"].as_array().unwrap().len(), 6);
    for (id, state, healed) in [
        ("n1-n2", "up", false),
        ("n2-n3", "down", false),
        ("n3-n4", "down", false),
        ("n4-n5", "up", false),
        ("n1-n5", "up", false),
        ("n2-n4", "up", true),
    ] {
        let l = link(&v, id);
        assert_eq!(
            (l["state"].as_str(), l["healed"].as_bool()),
            (Some(state), Some(healed)),
            "{id}"
        );
        assert_eq!(l["one_way"], false);
    }
    // Events of every node, newest first.
    let texts: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["healing", "link to n3 down"]);
    assert_eq!(v["events"][0]["node"], "n4");
}

#[test]
fn a_mesh_has_every_pair_and_a_link_is_up_if_either_end_says_so() {
    let t = Topology::new(TopologyKind::Mesh, ids(3), Vec::new());
    let mut views = BTreeMap::new();
    views.insert(
        "n1".into(),
        view(
            "n1",
            vec![peer("n2", true, false), peer("n3", false, false)],
            &[],
        ),
    );
    let v = assemble("n1", "c", &t, &views, 0);
    let all: Vec<&str> = v["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(all, ["n1-n2", "n1-n3", "n2-n3"]);
    assert_eq!(link(&v, "n1-n2")["state"], "up");
    assert_eq!(link(&v, "n1-n3")["state"], "down");
    assert_eq!(link(&v, "n2-n3")["state"], "down");
}

#[test]
fn a_one_way_ring_names_the_sender_of_each_link() {
    let t = Topology::new(
        TopologyKind::Ring(RingDirection::Forward),
        ids(4),
        Vec::new(),
    );
    let v = assemble("n1", "c", &t, &BTreeMap::new(), 0);
    assert_eq!(v["topology"]["kind"], "ring-forward");
    for (id, from) in [
        ("n1-n2", "n1"),
        ("n2-n3", "n2"),
        ("n3-n4", "n3"),
        ("n1-n4", "n4"),
    ] {
        let l = link(&v, id);
        assert_eq!(
            (l["one_way"].as_bool(), l["from"].as_str()),
            (Some(true), Some(from)),
            "{id}"
        );
    }
    // Nobody answered: every node and link is down.
    assert!(v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["state"] == "down"));
    assert!(v["links"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["state"] == "down"));
}

#[test]
fn a_node_keeps_only_its_latest_events() {
    let mut log = Events::new("n1");
    for i in 0..(EVENTS_KEPT as u64 + 5) {
        log.push(i, "peer-up", format!("event {i}"));
    }
    let list = log.list();
    assert_eq!(list.len(), EVENTS_KEPT);
    assert_eq!(list[0].text, "event 5");
    assert_eq!(list[0].node, "n1");
}

#[test]
fn a_link_unknown_at_one_end_takes_the_divergence_the_other_end_found() {
    let t = Topology::new(TopologyKind::Mesh, ids(2), Vec::new());
    let mut unknown = peer("n2", true, false);
    unknown.divergent = None;
    let mut found = peer("n1", true, false);
    found.divergent = Some(3);
    let mut views = BTreeMap::new();
    views.insert("n1".into(), view("n1", vec![unknown], &[]));
    views.insert("n2".into(), view("n2", vec![found], &[]));
    let v = assemble("n1", "c", &t, &views, 0);
    assert_eq!(v["nodes"][0]["peers"][0]["divergent"], 3);
    assert_eq!(v["nodes"][1]["peers"][0]["divergent"], 3);
}
