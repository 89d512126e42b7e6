//! The cluster status table of `concordant status --config FILE` (no `--node`): every node
//! of the topology file asked for its status, one line per node.
//!
//! Nodes are compared by their document-set fingerprint (`"fingerprint"` of `/v1/status`):
//! equal exactly when two nodes hold the same documents at the same heads, so the table
//! needs one small request per node whatever the number of documents. In a cluster whose
//! documents are each on fewer nodes than all (`replicas`), nodes hold different documents
//! by design: fingerprints are shown but not compared, and the table shows each node's
//! partitions (moving in and out) and the hinted writes it keeps.
//!
//! Owns: gathering the answers, comparing the nodes, the table's text and the exit status's
//! verdict ([`ClusterStatus::healthy`]). Must not touch: anything but HTTP requests through
//! [`super::Client`].

use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;

use super::{status, url_of, Client, ClientError};
use crate::config::Config;

/// One node's line of the cluster status table.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// Node id.
    pub node: String,
    /// Its API URL.
    pub url: String,
    /// Its status (`GET /v1/status`), or why it could not be had.
    pub answer: Result<Value, String>,
    /// Whether its fingerprint equals that of every other reachable node (`None` if
    /// unreachable).
    pub in_sync: Option<bool>,
}

impl NodeRow {
    /// The node's fingerprint (16 hex digits), if it answered with one.
    pub fn fingerprint(&self) -> Option<&str> {
        self.answer.as_ref().ok()?["fingerprint"].as_str()
    }
}

/// `concordant status --config FILE`: every node of the file.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// One row per node, in file order.
    pub rows: Vec<NodeRow>,
}

/// Asks every node of `config` for its status (concurrently, each bounded by `timeout`)
/// and compares their fingerprints.
pub async fn cluster_status(config: &Config, timeout: Duration) -> ClusterStatus {
    let asks = config.nodes.iter().map(|n| async move {
        let url = url_of(n.api);
        let answer = async {
            let client = Client::for_node(config, &n.id)?.with_timeout(timeout);
            status(&client).await
        }
        .await
        .map_err(|e: ClientError| e.to_string());
        NodeRow {
            node: n.id.clone(),
            url,
            answer,
            in_sync: None,
        }
    });
    let rows = futures_util::future::join_all(asks).await;
    ClusterStatus::compare(rows)
}

impl ClusterStatus {
    /// The rows with `in_sync` set: a reachable node is in sync when it has a fingerprint
    /// and every other reachable node has the same (or, with documents on fewer nodes than
    /// all, when it answered: fingerprints are not compared then).
    pub fn compare(mut rows: Vec<NodeRow>) -> ClusterStatus {
        if placed(&rows) {
            for row in &mut rows {
                row.in_sync = row.answer.is_ok().then_some(true);
            }
            return ClusterStatus { rows };
        }
        let reachable: Vec<Option<String>> = rows
            .iter()
            .filter(|r| r.answer.is_ok())
            .map(|r| r.fingerprint().map(str::to_string))
            .collect();
        for row in &mut rows {
            if row.answer.is_ok() {
                let mine = row.fingerprint();
                row.in_sync =
                    Some(mine.is_some() && reachable.iter().all(|other| other.as_deref() == mine));
            }
        }
        ClusterStatus { rows }
    }

    /// Whether every reachable node shows the same fingerprint (`None`: none reachable).
    pub fn agree(&self) -> Option<bool> {
        let mut reachable = self.rows.iter().filter(|r| r.answer.is_ok()).peekable();
        reachable.peek()?;
        Some(reachable.all(|r| r.in_sync == Some(true)))
    }

    /// Every node answered, has a live connection to every peer its topology links it to,
    /// and all show the same fingerprint (the same documents with the same heads).
    pub fn healthy(&self) -> bool {
        self.rows.iter().all(|r| {
            r.in_sync == Some(true)
                && r.answer.as_ref().is_ok_and(|status| {
                    let (up, linked) = links(status);
                    up == linked
                })
        })
    }

    /// The table: node, API, reachable, links up, documents, pending writes, fingerprint,
    /// whether it matches the others'; then a line saying whether all reachable nodes
    /// agree, and why any node could not be reached.
    pub fn table(&self) -> String {
        let header = [
            "NODE",
            "API",
            "REACHABLE",
            "LINKS UP",
            "DOCS",
            "PARTITIONS",
            "HINTS",
            "PENDING",
            "FINGERPRINT",
            "HEADS",
        ];
        let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        let mut problems = Vec::new();
        for row in &self.rows {
            let mut cells = vec![row.node.clone(), row.url.clone()];
            match &row.answer {
                Ok(status) => {
                    let (up, linked) = links(status);
                    cells.push("yes".into());
                    cells.push(format!("{up}/{linked}"));
                    cells.push(status["docs"].to_string());
                    cells.push(partitions(status));
                    cells.push(number(&status["hints"]));
                    cells.push(status["pending_writes"].to_string());
                    cells.push(row.fingerprint().unwrap_or("-").to_string());
                    cells.push(match row.in_sync {
                        _ if placed(&self.rows) => "-".into(),
                        Some(true) => "match".into(),
                        _ => "DIFFER".into(),
                    });
                }
                Err(e) => {
                    cells.push("NO".into());
                    cells.extend((3..header.len()).map(|_| "-".to_string()));
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
        let reachable = self.rows.iter().filter(|r| r.answer.is_ok()).count();
        let _ = match self.agree() {
            None => writeln!(out, "fingerprints: no node reachable"),
            Some(_) if placed(&self.rows) => writeln!(
                out,
                "fingerprints: not compared (each document is on some of the nodes, so \
                 nodes hold different documents)"
            ),
            Some(true) => writeln!(out, "fingerprints: all {reachable} reachable nodes agree"),
            Some(false) => writeln!(
                out,
                "fingerprints: DIFFER between the {reachable} reachable nodes"
            ),
        };
        for p in problems {
            let _ = writeln!(out, "{p}");
        }
        out
    }
}

/// Whether the nodes answered that each document is on fewer of them than all.
fn placed(rows: &[NodeRow]) -> bool {
    rows.iter().any(|r| {
        r.answer.as_ref().is_ok_and(|s| {
            s["replicas"]
                .as_u64()
                .is_some_and(|n| (n as usize) < rows.len())
        })
    })
}

/// A number of a `/v1/status` answer, or `-` if it has none.
fn number(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |n| n.to_string())
}

/// Partitions held, and those moving in and out: `341`, `341 (+2 in, 5 out)`.
fn partitions(status: &Value) -> String {
    let held = number(&status["partitions"]);
    let moving = &status["partitions_moving"];
    let (inn, out) = (
        moving["in"].as_u64().unwrap_or(0),
        moving["out"].as_u64().unwrap_or(0),
    );
    if inn == 0 && out == 0 {
        held
    } else {
        format!("{held} (+{inn} in, {out} out)")
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(node: &str, fingerprint: Option<&str>) -> NodeRow {
        let answer = match fingerprint {
            Some(fp) => Ok(json!({
                "docs": 2,
                "pending_writes": 0,
                "fingerprint": fp,
                "peers": [{"linked": true, "connected": true}],
            })),
            None => Err("cannot connect".to_string()),
        };
        NodeRow {
            node: node.into(),
            url: format!("http://{node}:1"),
            answer,
            in_sync: None,
        }
    }

    #[test]
    fn equal_fingerprints_agree() {
        let all = ClusterStatus::compare(vec![
            row("n1", Some("00000000000000aa")),
            row("n2", Some("00000000000000aa")),
        ]);
        assert_eq!(all.agree(), Some(true));
        assert!(all.healthy());
        let table = all.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells[2..],
            [
                "yes",
                "1/1",
                "2",
                "-",
                "-",
                "0",
                "00000000000000aa",
                "match"
            ],
            "{table}"
        );
        assert_eq!(lines[3], "fingerprints: all 2 reachable nodes agree");
    }

    #[test]
    fn a_different_fingerprint_differs_and_unreachable_nodes_are_not_compared() {
        let split = ClusterStatus::compare(vec![
            row("n1", Some("00000000000000aa")),
            row("n2", Some("00000000000000bb")),
            row("n3", None),
        ]);
        assert_eq!(split.agree(), Some(false));
        assert!(!split.healthy());
        let in_sync: Vec<Option<bool>> = split.rows.iter().map(|r| r.in_sync).collect();
        assert_eq!(in_sync, [Some(false), Some(false), None]);
        let table = split.table();
        assert!(
            table.contains("DIFFER between the 2 reachable nodes"),
            "{table}"
        );
        assert!(table.contains("n3: cannot connect"), "{table}");

        let one_down =
            ClusterStatus::compare(vec![row("n1", Some("00000000000000aa")), row("n2", None)]);
        assert_eq!(one_down.agree(), Some(true));
        assert!(!one_down.healthy(), "an unreachable node is not healthy");
        let none = ClusterStatus::compare(vec![row("n1", None)]);
        assert_eq!(none.agree(), None);
    }

    #[test]
    fn with_documents_on_some_nodes_fingerprints_are_not_compared() {
        let mut rows = vec![
            row("n1", Some("00000000000000aa")),
            row("n2", Some("00000000000000bb")),
            row("n3", Some("00000000000000cc")),
        ];
        for (i, r) in rows.iter_mut().enumerate() {
            if let Ok(status) = &mut r.answer {
                status["replicas"] = json!(2);
                status["partitions"] = json!(680 + i);
                status["hints"] = json!(i);
                status["partitions_moving"] = json!({"in": i, "out": 0});
            }
        }
        let all = ClusterStatus::compare(rows);
        assert_eq!(all.agree(), Some(true));
        assert!(all.healthy());
        let table = all.table();
        assert!(table.contains("not compared"), "{table}");
        let cells: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(cells[4..7], ["2", "681", "(+1"], "{table}");
        assert!(!table.contains("DIFFER"), "{table}");
    }

    #[test]
    fn a_node_without_a_fingerprint_never_matches() {
        let mut old = row("n2", Some("x"));
        if let Ok(status) = &mut old.answer {
            status.as_object_mut().map(|o| o.remove("fingerprint"));
        }
        let mixed = ClusterStatus::compare(vec![row("n1", Some("00000000000000aa")), old]);
        assert_eq!(mixed.agree(), Some(false));
        assert!(mixed
            .table()
            .lines()
            .nth(2)
            .is_some_and(|l| l.contains(" - ")));
    }
}
