//! Unit tests of the topology file parser and validator.

use super::*;

const GOOD: &str = r#"
cluster = "demo"
topology = "ring"

[tls]
ca = "certs/ca.pem"

[api]
token = "s3cret"

[[node]]
id = "n1"
peer = "127.0.0.1:7101"
api = "127.0.0.1:8101"
data = "data/n1"

[[node]]
id = "n2"
peer = "127.0.0.1:7102"
api = "127.0.0.1:8102"
cert = "other/n2.crt"
key = "/abs/n2.key"

[[node]]
id = "n3"
peer = "127.0.0.1:7103"
api = "127.0.0.1:8103"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/demo/cluster.toml"))
}

/// The error message of a file that must be refused.
fn refused(text: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn nodes(n: usize) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "[[node]]\nid = \"n{i}\"\npeer = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n",
                7100 + i,
                8100 + i
            )
        })
        .collect()
}

fn file(head: &str, n: usize, tail: &str) -> String {
    format!("cluster = \"c\"\n{head}\n{}\n{tail}", nodes(n))
}

#[test]
fn parses_a_good_file_with_defaults_and_resolved_paths() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.cluster, "demo");
    assert_eq!(c.topology, TopologyKind::Ring(RingDirection::Both));
    assert_eq!(c.ca, PathBuf::from("/etc/demo/certs/ca.pem"));
    assert_eq!(c.api_token.as_deref(), Some("s3cret"));
    assert_eq!(c.nodes.len(), 3);
    let n1 = c.node("n1").unwrap();
    assert_eq!(n1.peer, "127.0.0.1:7101".parse().unwrap());
    assert_eq!(n1.api, "127.0.0.1:8101".parse().unwrap());
    assert_eq!(n1.data, PathBuf::from("/etc/demo/data/n1"));
    assert_eq!(n1.cert, PathBuf::from("/etc/demo/certs/n1.pem"));
    assert_eq!(n1.key, PathBuf::from("/etc/demo/certs/n1.key"));
    let n2 = c.node("n2").unwrap();
    assert_eq!(n2.data, PathBuf::from("/etc/demo/data/n2"));
    assert_eq!(n2.cert, PathBuf::from("/etc/demo/other/n2.crt"));
    assert_eq!(n2.key, PathBuf::from("/abs/n2.key"));
    assert!(c.node("n4").is_none());
    assert!(c.links.is_empty());
    assert_eq!(c.tuning, Tuning::default());
    assert_eq!(c.path, PathBuf::from("/etc/demo/cluster.toml"));
    let t = c.topology();
    assert_eq!(t.nodes(), &["n1", "n2", "n3"]);
    assert_eq!(t.neighbours("n1"), vec!["n2", "n3"]);
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn relative_file_path_resolves_against_current_directory() {
    let c = Config::parse(
        &file("topology = \"mesh\"", 1, ""),
        Path::new("cluster.toml"),
    )
    .unwrap();
    assert_eq!(c.ca, PathBuf::from("./certs/ca.pem"));
    assert_eq!(c.nodes[0].data, PathBuf::from("./data/n1"));
}

#[test]
fn topology_kinds_and_ring_direction() {
    let kind = |head: &str| parse(&file(head, 2, "")).map(|c| c.topology);
    assert_eq!(kind("topology = \"mesh\"").unwrap(), TopologyKind::Mesh);
    assert_eq!(
        kind("topology = \"ring\"\nring_direction = \"forward\"").unwrap(),
        TopologyKind::Ring(RingDirection::Forward)
    );
    assert_eq!(
        kind("topology = \"ring\"\nring_direction = \"both\"").unwrap(),
        TopologyKind::Ring(RingDirection::Both)
    );
    let e = refused(&file("topology = \"star\"", 2, ""));
    assert!(
        e.contains("cluster.toml: topology: unknown topology \"star\""),
        "{e}"
    );
    let e = refused(&file(
        "topology = \"mesh\"\nring_direction = \"both\"",
        2,
        "",
    ));
    assert!(
        e.contains("ring_direction: only allowed with topology = \"ring\""),
        "{e}"
    );
    let e = refused(&file(
        "topology = \"ring\"\nring_direction = \"left\"",
        2,
        "",
    ));
    assert!(
        e.contains("ring_direction: unknown ring direction \"left\""),
        "{e}"
    );
    let e = refused(&format!("cluster = \"c\"\n{}", nodes(1)));
    assert!(e.contains("topology: missing"), "{e}");
    assert_eq!(
        TopologyKind::Ring(RingDirection::Forward).to_string(),
        "ring (forward)"
    );
    assert_eq!(TopologyKind::from_name("edges"), Some(TopologyKind::Edges));
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let e = refused("cluster = \"demo\"\ntopology = mesh\n");
    assert!(e.starts_with("/etc/demo/cluster.toml: "), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn unknown_keys_are_refused() {
    let e = refused(&file("topology = \"mesh\"\ncolour = 1", 1, ""));
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = refused(&file("topology = \"mesh\"", 1, "[tuning]\ntick = 5\n"));
    assert!(e.contains("unknown field `tick`"), "{e}");
    let text = file("topology = \"mesh\"", 1, "").replace("id = \"n1\"", "id = \"n1\"\nport = 1");
    let e = refused(&text);
    assert!(e.contains("unknown field `port`"), "{e}");
    let e = refused(&file("topology = \"mesh\"\n[tls]\ncert = \"x\"", 1, ""));
    assert!(e.contains("unknown field `cert`"), "{e}");
}

#[test]
fn node_ids_are_checked() {
    let with_id = |id: &str| file("topology = \"mesh\"", 1, "").replace("\"n1\"", id);
    for bad in [
        "\"\"",
        "\"a b\"",
        "\"n.1\"",
        "\"é\"",
        &format!("\"{}\"", "a".repeat(65)),
    ] {
        let e = refused(&with_id(bad));
        assert!(
            e.contains("cluster.toml: node[1].id: invalid id"),
            "{bad}: {e}"
        );
    }
    for good in ["\"A_b-9\"", "\"1\"", &format!("\"{}\"", "a".repeat(64))] {
        parse(&with_id(good)).unwrap();
    }
    let e = refused(&file("topology = \"mesh\"", 2, "").replace("\"n2\"", "\"n1\""));
    assert!(
        e.contains("cluster.toml: node[2].id: duplicate id \"n1\""),
        "{e}"
    );
    let e = refused(&file("topology = \"mesh\"", 2, "").replace("\"n2\"", "\"N1\""));
    assert!(
        e.contains("node[2].id: id \"N1\" differs from \"n1\" only by case"),
        "{e}"
    );
    let e = refused(&file("topology = \"mesh\"", 1, "").replace("id = \"n1\"\n", ""));
    assert!(e.contains("node[1].id: missing"), "{e}");
}

#[test]
fn at_least_one_node() {
    let e = refused("cluster = \"c\"\ntopology = \"mesh\"\n");
    assert!(e.contains("cluster.toml: node: no [[node]] table"), "{e}");
}

#[test]
fn addresses_are_checked() {
    let base = file("topology = \"mesh\"", 2, "");
    let e = refused(&base.replace("127.0.0.1:7102", "127.0.0.1:7101"));
    assert!(
        e.contains(
            "node[2].peer: address 127.0.0.1:7101 is already the peer address of node \"n1\""
        ),
        "{e}"
    );
    let e = refused(&base.replace("127.0.0.1:8102", "127.0.0.1:8101"));
    assert!(
        e.contains("node[2].api: address 127.0.0.1:8101 is already the api"),
        "{e}"
    );
    let e = refused(&base.replace("127.0.0.1:7102", "127.0.0.1:8101"));
    assert!(
        e.contains("node[2].peer: address 127.0.0.1:8101 is already the api address"),
        "{e}"
    );
    let e = refused(&base.replace("127.0.0.1:7102", "localhost:7102"));
    assert!(
        e.contains("node[2].peer: bad address \"localhost:7102\""),
        "{e}"
    );
    let e = refused(&base.replace("127.0.0.1:8101", "127.0.0.1"));
    assert!(e.contains("node[1].api: bad address"), "{e}");
    let e = refused(&base.replace("api = \"127.0.0.1:8101\"\n", ""));
    assert!(e.contains("node[1].api: missing"), "{e}");
    // One node may use the same port for UDP and TCP; port 0 never clashes; IPv6 works.
    parse(&base.replace("127.0.0.1:8101", "127.0.0.1:7101")).unwrap();
    let zeros = base
        .replace("127.0.0.1:8101", "127.0.0.1:0")
        .replace("127.0.0.1:8102", "127.0.0.1:0");
    parse(&zeros).unwrap();
    parse(&base.replace("127.0.0.1:7101", "[::1]:7101")).unwrap();
}

#[test]
fn data_directories_must_differ() {
    let text = file("topology = \"mesh\"", 2, "")
        .replace("id = \"n2\"", "id = \"n2\"\ndata = \"data/n1\"");
    let e = refused(&text);
    assert!(e.contains("node[2].data: data directory"), "{e}");
    let e = refused(
        &file("topology = \"mesh\"", 1, "").replace("id = \"n1\"", "id = \"n1\"\ndata = \"\""),
    );
    assert!(e.contains("node[1].data: empty path"), "{e}");
}

#[test]
fn cluster_and_token_are_checked() {
    let e =
        refused(&file("topology = \"mesh\"", 1, "").replace("cluster = \"c\"", "cluster = \"\""));
    assert!(e.contains("cluster.toml: cluster: empty cluster id"), "{e}");
    let e = refused(&file("topology = \"mesh\"", 1, "").replace("cluster = \"c\"\n", ""));
    assert!(e.contains("cluster: missing"), "{e}");
    let e = refused(&file("topology = \"mesh\"\n[api]\ntoken = \"\"", 1, ""));
    assert!(e.contains("cluster.toml: api.token: empty token"), "{e}");
    let e = refused(&file("topology = \"mesh\"\n[api]\ntoken = \"a b\"", 1, ""));
    assert!(
        e.contains("api.token: the token must be printable ASCII"),
        "{e}"
    );
    let c = parse(&file("topology = \"mesh\"\n[api]", 1, "")).unwrap();
    assert_eq!(c.api_token, None);
}

#[test]
fn links_only_with_edges_and_between_known_distinct_nodes() {
    let link = |a: &str, b: &str| format!("[[link]]\na = \"{a}\"\nb = \"{b}\"\n");
    let ring3 = format!(
        "{}{}{}",
        link("n1", "n2"),
        link("n2", "n3"),
        link("n3", "n1")
    );
    let c = parse(&file("topology = \"edges\"", 3, &ring3)).unwrap();
    assert_eq!(c.links.len(), 3);
    assert_eq!(c.topology().neighbours("n1"), vec!["n2", "n3"]);

    let e = refused(&file("topology = \"ring\"", 3, &ring3));
    assert!(
        e.contains("link[1]: [[link]] is only allowed with topology = \"edges\""),
        "{e}"
    );
    let e = refused(&file("topology = \"edges\"", 3, ""));
    assert!(
        e.contains("cluster.toml: link: topology = \"edges\" needs [[link]]"),
        "{e}"
    );
    let e = refused(&file(
        "topology = \"edges\"",
        3,
        &format!("{ring3}{}", link("n1", "n9")),
    ));
    assert!(e.contains("link[4].b: unknown node \"n9\""), "{e}");
    let e = refused(&file(
        "topology = \"edges\"",
        3,
        &format!("{ring3}{}", link("n2", "n2")),
    ));
    assert!(e.contains("link[4]: links node \"n2\" to itself"), "{e}");
    let e = refused(&file(
        "topology = \"edges\"",
        3,
        &format!("{ring3}{}", link("n2", "n1")),
    ));
    assert!(
        e.contains("link[4]: duplicate link between \"n2\" and \"n1\""),
        "{e}"
    );
    let e = refused(&file("topology = \"edges\"", 3, &link("n1", "n2")));
    assert!(e.contains("node[3].id: node \"n3\" has no [[link]]"), "{e}");
    let split = format!("{}{}", link("n1", "n2"), link("n3", "n4"));
    let e = refused(&file("topology = \"edges\"", 4, &split));
    assert!(
        e.contains("link: the links do not connect node \"n3\""),
        "{e}"
    );
    let e = refused(&file("topology = \"edges\"", 2, "[[link]]\na = \"n1\"\n"));
    assert!(e.contains("link[1]: needs both ends"), "{e}");
}

#[test]
fn replicas_default_to_every_node() {
    let c = parse(&file("topology = \"mesh\"", 3, "")).unwrap();
    assert_eq!(c.replicas, None);
    let t = c.topology();
    assert_eq!(t.replicas(), 3);
    assert!(t.placement().is_none());
    assert_eq!(t.replicas_of("doc"), vec!["n1", "n2", "n3"]);
}

#[test]
fn replicas_place_each_document_on_r_nodes() {
    for head in ["topology = \"mesh\"", "topology = \"ring\""] {
        let c = parse(&file(&format!("{head}\nreplicas = 2"), 5, "")).unwrap();
        assert_eq!(c.replicas, Some(2), "{head}");
        let t = c.topology();
        assert_eq!(t.replicas(), 2, "{head}");
        assert!(t.placement().is_some(), "{head}");
        let holders = t.replicas_of("some-doc");
        assert_eq!(holders.len(), 2, "{head}");
        for node in ["n1", "n2", "n3", "n4", "n5"] {
            assert_eq!(t.holds(node, "some-doc"), holders.contains(&node), "{head}");
        }
        assert!(format!("{c:?}").contains("replicas: Some(2)"), "{head}");
    }
    // R = N is allowed everywhere, edges and a one-way ring included: every node has all.
    let ring3 = "[[link]]\na = \"n1\"\nb = \"n2\"\n[[link]]\na = \"n2\"\nb = \"n3\"\n";
    for (head, tail) in [
        ("topology = \"edges\"", ring3),
        ("topology = \"ring\"\nring_direction = \"forward\"", ""),
        ("topology = \"mesh\"", ""),
    ] {
        let c = parse(&file(&format!("{head}\nreplicas = 3"), 3, tail)).unwrap();
        assert_eq!(c.replicas, Some(3), "{head}");
        assert_eq!(c.topology().replicas(), 3, "{head}");
        assert!(c.topology().placement().is_none(), "{head}");
    }
    // One node, one replica.
    let c = parse(&file("topology = \"mesh\"\nreplicas = 1", 1, "")).unwrap();
    assert_eq!(c.topology().replicas_of("d"), vec!["n1"]);
}

#[test]
fn replicas_out_of_range_are_refused() {
    for bad in ["0", "-1"] {
        let e = refused(&file(
            &format!("topology = \"mesh\"\nreplicas = {bad}"),
            5,
            "",
        ));
        assert!(
            e.contains(&format!("cluster.toml: replicas: replicas = {bad}: ")),
            "{bad}: {e}"
        );
        assert!(e.contains("at least 1"), "{bad}: {e}");
    }
    let e = refused(&file("topology = \"mesh\"\nreplicas = 7", 5, ""));
    assert!(
        e.contains("cluster.toml: replicas: replicas = 7 but the file has 5 nodes"),
        "{e}"
    );
    for bad in ["\"3\"", "2.5", "true"] {
        let e = refused(&file(
            &format!("topology = \"mesh\"\nreplicas = {bad}"),
            5,
            "",
        ));
        assert!(e.starts_with("/etc/demo/cluster.toml: "), "{bad}: {e}");
        assert!(e.contains("line 3"), "{bad}: {e}");
        assert!(
            e.contains("expected a whole number of nodes for replicas"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn replicas_below_the_nodes_need_a_mesh_or_a_two_way_ring() {
    let link = |a: usize, b: usize| format!("[[link]]\na = \"n{a}\"\nb = \"n{b}\"\n");
    let ring4: String = (1..=4).map(|i| link(i, i % 4 + 1)).collect();
    let e = refused(&file("topology = \"edges\"\nreplicas = 2", 4, &ring4));
    assert!(
        e.contains("cluster.toml: replicas: replicas = 2 of 4 nodes: "),
        "{e}"
    );
    assert!(e.contains("not edges"), "{e}");
    let e = refused(&file(
        "topology = \"ring\"\nring_direction = \"forward\"\nreplicas = 3",
        4,
        "",
    ));
    assert!(
        e.contains("cluster.toml: replicas: replicas = 3 of 4 nodes: "),
        "{e}"
    );
    assert!(e.contains("not ring (forward)"), "{e}");
    let c = parse(&file(
        "topology = \"ring\"\nring_direction = \"both\"\nreplicas = 3",
        4,
        "",
    ))
    .unwrap();
    assert_eq!(c.topology().replicas(), 3);
}

#[test]
fn a_config_built_in_code_with_bad_replicas_falls_back_to_every_node() {
    let mut c = parse(&file("topology = \"mesh\"", 3, "")).unwrap();
    c.replicas = Some(9);
    assert_eq!(c.topology().replicas(), 3);
    assert!(c.topology().placement().is_none());
    c.replicas = Some(0);
    assert!(c.topology().placement().is_none());
}

#[test]
fn tuning_defaults_overrides_and_checks() {
    let c = parse(&file(
        "topology = \"mesh\"",
        1,
        "[tuning]\ntick_ms = 10\nsend_queue = 8\nmax_inflated_bytes = 1000\nmax_inflate_ratio = 8\n\
         max_op_bytes = 10\nmax_change_ops = 20\nmax_change_bytes = 30\nmax_doc_ops = 40\n",
    ))
    .unwrap();
    assert_eq!(c.tuning.tick_ms, 10);
    assert_eq!(c.tuning.send_queue, 8);
    assert_eq!(
        (c.tuning.max_inflated_bytes, c.tuning.max_inflate_ratio),
        (1000, 8)
    );
    assert_eq!(
        (
            c.tuning.max_op_bytes,
            c.tuning.max_change_ops,
            c.tuning.max_change_bytes
        ),
        (10, 20, 30)
    );
    assert_eq!(c.tuning.max_doc_ops, 40);
    assert_eq!(c.tuning.anti_entropy_ms, 5000);
    assert_eq!(c.tuning.api_connections, None);
    let limited = parse(&file(
        "topology = \"mesh\"",
        1,
        "[tuning]\napi_connections = 100\nsync_client_queue_bytes = 4096\n",
    ))
    .unwrap();
    assert_eq!(limited.tuning.api_connections, Some(100));
    assert_eq!(limited.tuning.sync_client_queue_bytes, 4096);
    let t = Tuning::default();
    assert_eq!(
        (
            t.tick_ms,
            t.anti_entropy_ms,
            t.keep_alive_ms,
            t.idle_timeout_ms
        ),
        (100, 5000, 250, 1000)
    );
    assert_eq!((t.reconnect_min_ms, t.reconnect_max_ms), (50, 2000));
    assert_eq!(
        (t.send_queue, t.compact_after, t.max_batch_bytes),
        (1024, 2000, 1 << 20)
    );
    assert_eq!((t.max_inflated_bytes, t.max_inflate_ratio), (64 << 20, 64));
    assert_eq!(
        (t.max_op_bytes, t.max_change_ops, t.max_change_bytes),
        (1 << 20, 100_000, 4 << 20)
    );
    assert_eq!(t.max_doc_ops, 1_000_000);

    for field in [
        "tick_ms",
        "anti_entropy_ms",
        "keep_alive_ms",
        "reconnect_min_ms",
        "send_queue",
        "compact_after",
        "max_batch_bytes",
        "max_inflated_bytes",
        "max_inflate_ratio",
        "max_op_bytes",
        "max_change_ops",
        "max_change_bytes",
        "max_doc_ops",
        "sync_client_queue_bytes",
        "sync_client_write_timeout_ms",
        "api_connections",
        "api_header_timeout_ms",
        "api_idle_timeout_ms",
        "watch_streams",
    ] {
        let e = refused(&file(
            "topology = \"mesh\"",
            1,
            &format!("[tuning]\n{field} = 0\n"),
        ));
        assert!(
            e.contains(&format!("tuning.{field}: must be at least 1")),
            "{e}"
        );
    }
    let e = refused(&file(
        "topology = \"mesh\"",
        1,
        "[tuning]\nidle_timeout_ms = 250\n",
    ));
    assert!(
        e.contains("tuning.idle_timeout_ms: 250 must be greater than keep_alive_ms"),
        "{e}"
    );
    let e = refused(&file(
        "topology = \"mesh\"",
        1,
        "[tuning]\nreconnect_max_ms = 10\n",
    ));
    assert!(
        e.contains("tuning.reconnect_max_ms: 10 is below reconnect_min_ms"),
        "{e}"
    );
    let e = refused(&file(
        "topology = \"mesh\"",
        1,
        "[tuning]\nmax_batch_bytes = 1000000000\n",
    ));
    assert!(e.contains("tuning.max_batch_bytes"), "{e}");
    let e = refused(&file("topology = \"mesh\"", 1, "[tuning]\ntick_ms = -1\n"));
    assert!(e.contains("tick_ms") || e.contains("line"), "{e}");
}

#[test]
fn load_reads_files_and_names_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: cannot read the file", path.display())),
        "{e}"
    );
    std::fs::write(&path, file("topology = \"mesh\"", 2, "")).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.nodes[1].data, dir.path().join("data/n2"));
    assert_eq!(c.ca, dir.path().join("certs/ca.pem"));
}

#[test]
fn the_token_key_resolves_and_a_bad_one_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("cluster.toml");
    let text = file(
        "topology = \"mesh\"\n[api]\ntoken_key = \"keys/tokens.pub\"",
        1,
        "",
    );
    let c = Config::parse(&text, &path).unwrap();
    let key = dir.path().join("keys/tokens.pub");
    assert_eq!(c.api_token_key.as_deref(), Some(key.as_path()));
    let missing = c.token_verifier().unwrap_err().to_string();
    assert!(missing.contains("api.token_key"), "{missing}");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let bad = c.token_verifier().unwrap_err().to_string();
    assert!(
        bad.contains("api.token_key") && bad.contains("Ed25519"),
        "{bad}"
    );
    let (_, public) = crate::tokens::generate_key_pair().unwrap();
    std::fs::write(&key, public).unwrap();
    assert!(c.token_verifier().unwrap().is_some());
    let empty = file("topology = \"mesh\"\n[api]\ntoken_key = \" \"", 1, "");
    assert!(refused(&empty).contains("api.token_key"));
    // No key named: no verifier.
    assert!(parse(&file("topology = \"mesh\"", 1, ""))
        .unwrap()
        .token_verifier()
        .unwrap()
        .is_none());
}
