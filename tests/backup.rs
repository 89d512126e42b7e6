//! `concordant backup` and `concordant restore` against a `concordant node` process:
//! a backup of every document, the node's data wiped, a cut and a corrupt backup refused
//! with a clear error and nothing changed, the backup restored with identical heads.

mod common;

#[allow(dead_code)]
#[path = "membership/harness.rs"]
mod harness;

use std::collections::BTreeMap;

use common::procs::access::listing_heads;
use common::procs::ProcCluster;
use harness::{cli, cli_ok, Nodes};
use serde_json::json;

/// Every document of `id` with its heads.
async fn heads(nodes: &Nodes, id: &str) -> BTreeMap<String, Vec<String>> {
    let list = nodes.access(id).docs().await.expect("listing");
    listing_heads(&list)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_a_wiped_node_and_a_damaged_one_changes_nothing() {
    let mut nodes = Nodes::of(ProcCluster::init_with(1, "mesh", None));
    let file = nodes.file();
    let file_s = file.display().to_string();
    nodes.start("n1", &file).await;
    for i in 0..40 {
        let doc = format!("doc-{i:02}");
        for k in 0..(1 + i % 3) {
            let request = json!({"ops": [
                {"op": "set", "path": [format!("k{k}")], "value": i},
                {"op": "text", "path": ["t"], "value": "x".repeat(i)},
            ]});
            nodes
                .access("n1")
                .op(&doc, &request)
                .await
                .expect("written");
        }
    }
    let before = heads(&nodes, "n1").await;
    assert_eq!(before.len(), 40);

    let dir = nodes.path("backups");
    std::fs::create_dir_all(&dir).expect("a directory");
    let good = dir.join("n1.backup");
    let good_s = good.display().to_string();
    let ran = cli_ok(&[
        "backup", "--config", &file_s, "--node", "n1", "--out", &good_s,
    ])
    .await;
    assert!(ran.text.contains("40 documents"), "{}", ran.text);
    let bytes = std::fs::read(&good).expect("the backup");
    let cut = dir.join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("written");
    let corrupt = dir.join("corrupt.backup");
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&corrupt, &flipped).expect("written");

    // The node loses everything.
    nodes.stop("n1").await;
    std::fs::remove_dir_all(nodes.data_dir(&file, "n1")).expect("wiped");
    nodes.start("n1", &file).await;
    assert!(heads(&nodes, "n1").await.is_empty(), "wiped");

    // Damaged backups are refused whole.
    for (damaged, says) in [(&cut, "cut short"), (&corrupt, "")] {
        let path = damaged.display().to_string();
        let ran = cli(&[
            "restore", "--config", &file_s, "--node", "n1", "--in", &path,
        ])
        .await;
        assert!(!ran.status.success(), "{path} restored: {}", ran.text);
        assert!(
            ran.text.contains("nothing was restored") && ran.text.contains(says),
            "{}",
            ran.text
        );
        assert!(
            heads(&nodes, "n1").await.is_empty(),
            "{path} changed the node"
        );
    }

    // The good one brings every document back at the same heads.
    let ran = cli_ok(&[
        "restore", "--config", &file_s, "--node", "n1", "--in", &good_s,
    ])
    .await;
    assert!(ran.text.contains("40 documents merged"), "{}", ran.text);
    assert_eq!(heads(&nodes, "n1").await, before);
    // Restoring again changes nothing.
    cli_ok(&[
        "restore", "--config", &file_s, "--node", "n1", "--in", &good_s,
    ])
    .await;
    assert_eq!(heads(&nodes, "n1").await, before);
}
