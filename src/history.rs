//! A document's history: the document as it was at given heads, and its changes newest
//! first with the node each came from (`GET /v1/docs/{id}?at=...`,
//! `GET /v1/docs/{id}/history`).
//!
//! A node's own changes carry its actor ids, whose first bytes are a hash of the node's id
//! ([`actor_prefix`], set by the core for every start of the node), so a change's origin
//! node is known from its actor wherever the change went; changes made by automerge-repo
//! clients or merged from outside carry their own actors and have no origin node.
//!
//! Owns reading history from a document and the heads of `at`. No IO.

use automerge::{Automerge, ChangeHash, ReadDoc};
use serde::Serialize;

use crate::fnv::Fnv1a;

/// The first bytes of every actor id of node `node`'s own changes.
pub fn actor_prefix(node: &str) -> [u8; 8] {
    let mut h = Fnv1a::new();
    h.write(b"concordant-actor:");
    h.write(node.as_bytes());
    h.finish().to_be_bytes()
}

/// One change of a document's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeInfo {
    /// Its hash (hex).
    pub hash: String,
    /// Its actor (hex).
    pub actor: String,
    /// Its sequence number for that actor.
    pub seq: u64,
    /// Its time (seconds since the Unix epoch, as its writer's clock said; 0 if unset).
    pub time: i64,
    /// Its message, if any.
    pub message: Option<String>,
    /// The node it was made at, if a node made it (of `nodes`).
    pub origin: Option<String>,
}

/// At most `limit` changes of `doc`, newest first (the reverse of an order in which each
/// change comes after those it depends on), with their origin among `nodes`.
pub fn changes(doc: &Automerge, nodes: &[String], limit: usize) -> Vec<ChangeInfo> {
    let prefixes: Vec<([u8; 8], &String)> = nodes.iter().map(|n| (actor_prefix(n), n)).collect();
    // The changes' metadata, without encoding their operations.
    doc.get_changes_meta(&[])
        .iter()
        .rev()
        .take(limit)
        .map(|c| {
            let actor = c.actor.to_bytes();
            let origin = prefixes
                .iter()
                .find(|(p, _)| actor.starts_with(p))
                .map(|(_, n)| (*n).clone());
            ChangeInfo {
                hash: c.hash.to_string(),
                actor: hex::encode(actor),
                seq: c.seq,
                time: c.timestamp,
                message: c.message.as_deref().map(str::to_string),
                origin,
            }
        })
        .collect()
}

/// The heads of `?at=`: hex change hashes, comma-separated.
pub fn parse_heads(text: &str) -> Result<Vec<ChangeHash>, String> {
    let heads: Result<Vec<ChangeHash>, String> = text
        .split(',')
        .map(|h| {
            h.trim()
                .parse::<ChangeHash>()
                .map_err(|_| format!("{h:?} is not a change hash (64 hex digits)"))
        })
        .collect();
    match heads {
        Ok(h) if h.is_empty() => Err("no heads given".into()),
        other => other,
    }
}

/// `doc` as it was at `heads`; an error naming the first head it lacks.
pub fn at(doc: &Automerge, heads: &[ChangeHash]) -> Result<Automerge, String> {
    if let Some(missing) = heads.iter().find(|h| doc.get_change_by_hash(h).is_none()) {
        return Err(format!("the document has no change {missing}"));
    }
    doc.fork_at(heads).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::ActorId;

    #[test]
    fn changes_newest_first_with_their_origin_and_the_document_at_heads() {
        let mut doc = Automerge::new();
        let mut actor = actor_prefix("n2").to_vec();
        actor.extend([1; 8]);
        doc.set_actor(ActorId::from(actor));
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "v", 1).expect("put");
        tx.commit();
        let first = doc.get_heads();
        doc.set_actor(ActorId::from([9u8; 16]));
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "v", 2).expect("put");
        tx.commit();
        let nodes = vec!["n1".to_string(), "n2".to_string()];
        let all = changes(&doc, &nodes, 10);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].origin, None, "a client's change");
        assert_eq!(all[1].origin.as_deref(), Some("n2"));
        assert_eq!(all[1].seq, 1);
        assert_eq!(changes(&doc, &nodes, 1).len(), 1);
        let then = at(&doc, &first).expect("has it");
        assert_eq!(crate::json::doc_to_json(&then), serde_json::json!({"v": 1}));
        let text = first
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_heads(&text).expect("parses"), first);
        assert!(parse_heads("").is_err() && parse_heads("zz").is_err());
        let unknown = ChangeHash([7; 32]);
        assert!(at(&doc, &[unknown]).unwrap_err().contains("no change"));
    }
}
