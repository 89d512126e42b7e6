//! The cluster status table of `concordant status --config FILE` (no `--node`): every node
//! of the topology file asked for its status, one line per node.
//!
//! Owns: gathering the answers, comparing the nodes, the table's text and the exit status's
//! verdict ([`ClusterStatus::healthy`]). Must not touch: anything but HTTP requests through
//! [`super::Client`].

use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;

use super::{docs, status, url_of, Client, ClientError};
use crate::config::Config;

/// One node's line of the cluster status table.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// Node id.
    pub node: String,
    /// Its API URL.
    pub url: String,
    /// Its status and documents, or why they could not be had.
    pub answer: Result<(Value, Value), String>,
    /// Whether its documents and heads equal those of every other reachable node (`None`
    /// if unreachable).
    pub in_sync: Option<bool>,
}

/// `concordant status --config FILE`: every node of the file.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// One row per node, in file order.
    pub rows: Vec<NodeRow>,
}

/// Asks every node of `config` for its status and documents (concurrently, each bounded
/// by `timeout`) and compares their heads.
pub async fn cluster_status(config: &Config, timeout: Duration) -> ClusterStatus {
    let asks = config.nodes.iter().map(|n| async move {
        let url = url_of(n.api);
        let answer = async {
            let client = Client::for_node(config, &n.id)?.with_timeout(timeout);
            Ok::<_, ClientError>((status(&client).await?, docs(&client).await?))
        }
        .await
        .map_err(|e| e.to_string());
        NodeRow {
            node: n.id.clone(),
            url,
            answer,
            in_sync: None,
        }
    });
    let mut rows = futures_util::future::join_all(asks).await;
    let all_docs: Vec<Option<Value>> = rows
        .iter()
        .map(|r| r.answer.as_ref().ok().map(|(_, d)| d.clone()))
        .collect();
    for (i, row) in rows.iter_mut().enumerate() {
        if let Some(mine) = &all_docs[i] {
            row.in_sync = Some(all_docs.iter().flatten().all(|other| other == mine));
        }
    }
    ClusterStatus { rows }
}

impl ClusterStatus {
    /// Every node answered, has a live connection to every peer its topology links it to,
    /// and all have the same documents with the same heads.
    pub fn healthy(&self) -> bool {
        self.rows.iter().all(|r| {
            r.in_sync == Some(true)
                && r.answer.as_ref().is_ok_and(|(status, _)| {
                    let (up, linked) = links(status);
                    up == linked
                })
        })
    }

    /// The table: node, API, reachable, links up, documents, pending writes, heads match.
    pub fn table(&self) -> String {
        let header = [
            "NODE",
            "API",
            "REACHABLE",
            "LINKS UP",
            "DOCS",
            "PENDING",
            "HEADS",
        ];
        let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        let mut problems = Vec::new();
        for row in &self.rows {
            let mut cells = vec![row.node.clone(), row.url.clone()];
            match &row.answer {
                Ok((status, docs)) => {
                    let (up, linked) = links(status);
                    let docs = docs.as_array().map_or(0, Vec::len);
                    cells.push("yes".into());
                    cells.push(format!("{up}/{linked}"));
                    cells.push(docs.to_string());
                    cells.push(status["pending_writes"].to_string());
                    cells.push(match row.in_sync {
                        Some(true) => "match".into(),
                        _ => "DIFFER".into(),
                    });
                }
                Err(e) => {
                    cells.extend(["NO".into(), "-".into(), "-".into(), "-".into(), "-".into()]);
                    problems.push(format!("{}: {e}", row.node));
                }
            }
            lines.push(cells);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for line in &lines {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        for p in problems {
            let _ = writeln!(out, "{p}");
        }
        out
    }
}

/// (links up, links wanted) of a `/v1/status` answer.
fn links(status: &Value) -> (usize, usize) {
    let peers = status["peers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let linked = peers.iter().filter(|p| p["linked"] == true).count();
    let up = peers
        .iter()
        .filter(|p| p["linked"] == true && p["connected"] == true)
        .count();
    (up, linked)
}
