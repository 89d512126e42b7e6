//! The event trace printed with `CONCORDANT_SIM_TRACE=1`: messages with the documents and
//! changes they carry, and a node's heads.

use automerge::{ChangeHash, ReadDoc};
use concordant::storage::DocAppend;
use concordant::wire;

use super::world::Sim;

pub(crate) fn short(hash: &ChangeHash) -> String {
    hash.to_string()[..8].to_string()
}

pub(crate) fn describe_changes(changes: &[Vec<u8>]) -> String {
    let hashes: Vec<String> = changes
        .iter()
        .map(|c| {
            automerge::Change::from_bytes(c.clone())
                .map(|c| short(&c.hash()))
                .unwrap_or_else(|_| "bad".into())
        })
        .collect();
    hashes.join(",")
}

pub(crate) fn describe_batch(docs: &[DocAppend]) -> String {
    docs.iter()
        .map(|a| format!("{}[{}]", a.doc, describe_changes(&a.changes)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// For the trace: documents handed off (or confirmed) with their heads.
fn describe_handoff(docs: &[wire::HandoffDoc]) -> String {
    docs.iter()
        .map(|d| {
            let heads: Vec<String> = d.heads.iter().map(|h| short(&ChangeHash(*h))).collect();
            let by = if d.by.is_empty() {
                String::new()
            } else {
                format!(" by {}", d.by.join(","))
            };
            format!("{}[{}]{by}", d.doc, heads.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// For the trace: a message with the documents and changes it carries.
pub(crate) fn describe(msg: &wire::Message) -> String {
    match msg {
        wire::Message::Push { groups, .. } => {
            let parts: Vec<String> = groups
                .iter()
                .map(|g| {
                    let changes: Vec<Vec<u8>> = g.changes.iter().map(|c| c.to_vec()).collect();
                    format!(
                        "{}@{}{}[{}]",
                        g.doc,
                        g.origin,
                        if g.want_ack { "!" } else { "" },
                        describe_changes(&changes)
                    )
                })
                .collect();
            format!("push {}", parts.join(" "))
        }
        wire::Message::Sync { doc, data } => match automerge::sync::Message::decode(data) {
            Ok(m) => {
                let chunks: Vec<Vec<u8>> = m.changes.iter().map(|c| c.to_vec()).collect();
                let changes = [describe_changes(&chunks)];
                let heads: Vec<String> = m.heads.iter().map(short).collect();
                let need: Vec<String> = m.need.iter().map(short).collect();
                format!(
                    "sync {doc} heads [{}] need [{}] changes [{}]",
                    heads.join(","),
                    need.join(","),
                    changes.join(",")
                )
            }
            Err(_) => format!("sync {doc} (undecodable)"),
        },
        wire::Message::Ack(acks) => {
            let parts: Vec<String> = acks
                .iter()
                .map(|a| {
                    let hashes: Vec<String> =
                        a.hashes.iter().map(|h| short(&ChangeHash(*h))).collect();
                    format!("{} by {} [{}]", a.doc, a.by, hashes.join(","))
                })
                .collect();
            format!("acks {}", parts.join(" "))
        }
        wire::Message::Fingerprints(f) => {
            format!("fingerprints of {} level-{} nodes", f.nodes.len(), f.level)
        }
        wire::Message::Items(b) => format!("items of {} buckets", b.len()),
        wire::Message::Want(wants) => {
            let parts: Vec<String> = wants
                .iter()
                .map(|w| {
                    let heads: Vec<String> =
                        w.heads.iter().map(|h| short(&ChangeHash(*h))).collect();
                    let reply = if w.reply { " (reply)" } else { "" };
                    format!("{}[{}]{reply}", w.doc, heads.join(","))
                })
                .collect();
            format!("want {}", parts.join(" "))
        }
        wire::Message::Hello(_) => "hello".into(),
        wire::Message::Ephemeral(e) => format!("ephemeral {} from {}", e.doc, e.sender),
        wire::Message::Topology(t) => format!("topology v{}", t.version()),
        wire::Message::Revocations(r) => format!("{} revocations", r.len()),
        wire::Message::Receipt { changes, bytes } => {
            format!("receipt of {changes} changes, {bytes} bytes")
        }
        wire::Message::Handoff { docs, leaving } => {
            format!("handoff (leaving: {leaving}) {}", describe_handoff(docs))
        }
        wire::Message::HandedOff(docs) => format!("handed off {}", describe_handoff(docs)),
        wire::Message::Follow { docs, follow } => format!("follow {follow} {} docs", docs.len()),
        wire::Message::ClusterAsk { .. }
        | wire::Message::ClusterTell { .. }
        | wire::Message::Forward(_)
        | wire::Message::Reply(_) => msg.kind().to_string(),
    }
}

impl Sim {
    /// A node's heads per document, how many dependencies it misses (of the documents in
    /// memory), how many documents it has in memory, and its error counters.
    pub(crate) fn describe_heads(&self, i: usize) -> String {
        let (Some(r), Some(heads)) = (self.nodes[i].replica.as_ref(), self.all_heads(i)) else {
            return "down".into();
        };
        let parts: Vec<String> = heads
            .iter()
            .map(|(d, h)| {
                let queued = r.doc(d).map_or(0, |doc| doc.get_missing_deps(&[]).len());
                let heads: Vec<String> = h.iter().map(short).collect();
                if queued > 0 {
                    format!("{d}[{}](missing {queued})", heads.join(","))
                } else {
                    format!("{d}[{}]", heads.join(","))
                }
            })
            .collect();
        let stats = r.stats();
        let counts = r.doc_counts();
        format!(
            "{} loaded {}/{} bad_sync {} bad_changes {}",
            parts.join(" "),
            counts.loaded,
            counts.stored,
            stats.bad_sync,
            stats.bad_changes
        )
    }
}
