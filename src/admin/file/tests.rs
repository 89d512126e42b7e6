//! The topology file's edits: comments and formatting kept, whole tables removed, the
//! file replaced atomically with a backup.

use super::*;

/// A file as `init` writes it for an edges topology, with an operator's additions: a
/// comment inside a `[[node]]` table, odd spacing, an end-of-line comment.
const FILE: &str = r#"# concordant cluster, written by `concordant init`.
cluster = "c"
topology = "edges"

[tls]  # paths are relative to this file
ca = "certs/ca.pem"

[[node]]
id = "n1"
peer = "127.0.0.1:7101"
api = "127.0.0.1:8101"

[[node]]
id   =   "n2"    # the old host
# moved to the second rack
peer = "127.0.0.1:7102"
api = "127.0.0.1:8102"

[[node]]
id = "n3"
peer = "127.0.0.1:7103"
api = "127.0.0.1:8103"

# Undirected links; these form a ring to start from.

[[link]]
a = "n1"
b = "n2"

[[link]]
a = "n2"
b = "n3"

[[link]]
a = "n3"
b = "n1"

# Optional tuning; the values shown are the defaults.
# [tuning]
# tick_ms = 100
"#;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn add_n4(text: &str) -> String {
    with_node(text, "n4", addr(7104), addr(8104), &["n1".into()]).expect("edits")
}

fn load(text: &str) -> Config {
    Config::parse(text, Path::new("/c/cluster.toml")).expect("the file loads")
}

#[test]
fn an_added_node_goes_after_the_last_node_and_its_link_after_the_last_link() {
    let out = add_n4(FILE);
    let node = "\n[[node]]  # added by `concordant add-node`\nid = \"n4\"\npeer = \
                \"127.0.0.1:7104\"\napi = \"127.0.0.1:8104\"\ndata = \"data/n4\"\n";
    let link = "\n[[link]]\na = \"n4\"\nb = \"n1\"\n";
    let after_n3 = FILE.find("\n# Undirected").expect("in FILE");
    let after_links = FILE.find("\n# Optional tuning").expect("in FILE");
    let expected = format!(
        "{}{node}{}{link}{}",
        &FILE[..after_n3],
        &FILE[after_n3..after_links],
        &FILE[after_links..]
    );
    assert_eq!(out, expected);
    let config = load(&out);
    assert!(config.nodes.iter().any(|n| n.id == "n4"));
    assert!(config.links.contains(&("n4".to_string(), "n1".to_string())));
}

#[test]
fn a_removed_node_takes_its_whole_table_and_its_links_and_nothing_else() {
    let out = without_node(FILE, "n2").expect("edits");
    // The comment inside n2's table once stopped the line-based edit: keys stayed behind.
    assert!(!out.contains("n2") && !out.contains("7102"), "{out}");
    assert!(!out.contains("second rack"), "{out}");
    let expected = FILE
        .replace(
            "\n[[node]]\nid   =   \"n2\"    # the old host\n# moved to the second rack\npeer = \
             \"127.0.0.1:7102\"\napi = \"127.0.0.1:8102\"\n",
            "",
        )
        .replace("\n[[link]]\na = \"n2\"\nb = \"n3\"\n", "")
        // The first link's introduction moves to the next link.
        .replace("\n[[link]]\na = \"n1\"\nb = \"n2\"\n", "");
    assert_eq!(out, expected);
    let config = load(&out);
    assert_eq!(config.nodes.len(), 2);
    assert_eq!(config.links, [("n3".to_string(), "n1".to_string())]);
}

#[test]
fn adding_then_removing_gives_back_the_file() {
    let added = add_n4(FILE);
    assert_eq!(without_node(&added, "n4").expect("edits"), FILE);
}

#[test]
fn removing_a_node_the_file_lacks_changes_nothing() {
    assert_eq!(without_node(FILE, "n9").expect("edits"), FILE);
    // "n1" is not removed by a removal of "n".
    assert_eq!(without_node(FILE, "n").expect("edits"), FILE);
}

#[test]
fn a_file_that_is_not_toml_or_lists_nodes_inline_is_refused() {
    assert!(without_node("cluster = ", "n1").is_err());
    let inline = "node = [{ id = \"n1\" }]\n";
    let err = without_node(inline, "n1").expect_err("refused");
    assert!(err.contains("[[node]]"), "{err}");
}

/// A cluster file on disk, in its own directory.
fn on_disk(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, text).expect("written");
    (dir, path)
}

fn add(links: &[String]) -> Change<'_> {
    Change::AddNode {
        id: "n4",
        peer: addr(7104),
        api: addr(8104),
        links,
    }
}

#[test]
fn applying_keeps_the_old_file_as_bak() {
    let (_dir, path) = on_disk(FILE);
    let links = ["n1".to_string()];
    apply(&path, add(&links)).expect("applied");
    let bak = path.with_file_name("cluster.toml.bak");
    assert_eq!(std::fs::read_to_string(&bak).expect("a backup"), FILE);
    assert_eq!(
        std::fs::read_to_string(&path).expect("the file"),
        add_n4(FILE)
    );
    apply(&path, Change::RemoveNode { id: "n4" }).expect("applied");
    assert_eq!(
        std::fs::read_to_string(&bak).expect("a backup"),
        add_n4(FILE)
    );
    assert_eq!(std::fs::read_to_string(&path).expect("the file"), FILE);
}

#[test]
fn a_change_the_file_cannot_take_writes_nothing() {
    let (_dir, path) = on_disk(FILE);
    // n4 at n3's peer address: the file would not load.
    let clash = Change::AddNode {
        id: "n4",
        peer: addr(7103),
        api: addr(8104),
        links: &[],
    };
    let err = apply(&path, clash).expect_err("refused");
    assert!(matches!(err, AdminError::Edit { .. }), "{err}");
    assert!(err.to_string().contains("would not load"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).expect("the file"), FILE);
    assert!(!path.with_file_name("cluster.toml.bak").exists());
    // Nothing to remove: nothing written, not even a backup.
    apply(&path, Change::RemoveNode { id: "n9" }).expect("nothing to do");
    assert!(!path.with_file_name("cluster.toml.bak").exists());
}

#[test]
fn a_crash_mid_write_leaves_the_old_file_and_does_not_affect_the_next_edit() {
    let (_dir, path) = on_disk(FILE);
    // A crash after the new file was written beside the old one and before the rename:
    // half a file is left as `cluster.toml.tmp`.
    let half = &add_n4(FILE)[..FILE.len() / 2];
    let staged = files::stage(&path, half.as_bytes(), Access::Keep).expect("staged");
    std::mem::forget(staged);
    let tmp = path.with_file_name("cluster.toml.tmp");
    assert!(tmp.exists());
    assert_eq!(std::fs::read_to_string(&path).expect("the file"), FILE);
    load(&std::fs::read_to_string(&path).expect("the file"));
    // The next run's edit is whole.
    apply(&path, Change::RemoveNode { id: "n3" }).expect("applied");
    let now = std::fs::read_to_string(&path).expect("the file");
    assert_eq!(now, without_node(FILE, "n3").expect("edits"));
    assert!(!tmp.exists());
}
