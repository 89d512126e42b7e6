//! Who created a document, for user tokens with the `owner` claim (see [`crate::tokens`]).
//!
//! When a user token with `create` makes a document (`POST /v1/docs`, or an automerge-repo
//! client syncing a document nobody has), the node adds to it an owner record: an
//! Automerge change with no operations whose message is [`PREFIX`] and the token's `sub`.
//! It is part of the document's history, so it replicates, moves and is stored with the
//! document wherever it goes, and changes nothing of its content. Only nodes write owner
//! records: changes from user tokens that carry one are refused.
//!
//! Owns the record's form, finding records in a document, and spotting them in data from
//! clients. No IO.

use std::collections::BTreeSet;

use automerge::transaction::CommitOptions;
use automerge::Automerge;

/// The message of an owner record, before the owner's `sub`.
pub const PREFIX: &str = "concordant:owner:";

/// An owner record for `sub` made at `now` (seconds since the Unix epoch): a change with
/// no operations, depending on nothing, from a fresh actor (Automerge's encoded change;
/// merged into the document, it joins its history).
pub fn record(sub: &str, now: u64) -> Vec<u8> {
    let mut doc = Automerge::new();
    let options = CommitOptions::default()
        .with_message(format!("{PREFIX}{sub}"))
        .with_time(i64::try_from(now).unwrap_or(i64::MAX));
    doc.empty_commit(options);
    doc.save()
}

/// The owners a document's history records (read from the changes' metadata only).
pub fn owners_of(doc: &Automerge) -> BTreeSet<String> {
    doc.get_changes_meta(&[])
        .iter()
        .filter_map(|c| {
            c.message
                .as_deref()?
                .strip_prefix(PREFIX)
                .map(str::to_string)
        })
        .collect()
}

/// The owners named by the records in Automerge data from a client (saved documents or
/// changes, one chunk after the other); `None` if the data does not parse. Each change
/// chunk is read on its own (it may depend on changes the data does not hold), each
/// document chunk loaded whole. A client may send back records its document already has
/// (a sync message can carry them); a record naming anyone else is the client's own.
pub fn named_in_data(data: &[u8]) -> Option<BTreeSet<String>> {
    let mut named = BTreeSet::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (chunk, after) = split_chunk(rest)?;
        if chunk.get(8) == Some(CHUNK_DOCUMENT) {
            named.extend(owners_of(&Automerge::load(chunk).ok()?));
        } else {
            let change = automerge::Change::try_from(chunk).ok()?;
            if let Some(owner) = change.message().and_then(|m| m.strip_prefix(PREFIX)) {
                named.insert(owner.to_string());
            }
        }
        rest = after;
    }
    Some(named)
}

/// [`named_in_data`] for the changes of a (decoded) Automerge sync message.
pub fn named_in_sync_message(message: &automerge::sync::Message) -> Option<BTreeSet<String>> {
    let mut named = BTreeSet::new();
    for chunk in message.changes.iter() {
        named.extend(named_in_data(chunk)?);
    }
    Some(named)
}

/// The chunk type of a saved document.
const CHUNK_DOCUMENT: &u8 = &0;
/// Every chunk starts with these bytes.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// The first chunk of `data` (magic, checksum, type, LEB128 length, body) and what follows.
fn split_chunk(data: &[u8]) -> Option<(&[u8], &[u8])> {
    if data.get(..4)? != MAGIC {
        return None;
    }
    let (mut len, mut shift, mut at) = (0u64, 0u32, 9usize);
    loop {
        let byte = *data.get(at)?;
        at += 1;
        len |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    (end <= data.len()).then(|| data.split_at(end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;

    fn set(names: &[&str]) -> Option<BTreeSet<String>> {
        Some(names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn a_record_names_its_owner_and_changes_no_content() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "k", 1).expect("put");
        tx.commit();
        let before = crate::json::doc_to_json(&doc);
        doc.load_incremental(&record("alice", 5)).expect("merged");
        assert_eq!(owners_of(&doc), set(&["alice"]).expect("a set"));
        assert_eq!(crate::json::doc_to_json(&doc), before);
        assert_eq!(named_in_data(&record("mallory", 6)), set(&["mallory"]));
    }

    #[test]
    fn records_in_client_data_are_found() {
        let mut plain = Automerge::new();
        let mut tx = plain.transaction();
        tx.put(automerge::ROOT, "k", 1).expect("put");
        tx.commit();
        assert_eq!(named_in_data(&plain.save()), set(&[]));
        assert_eq!(named_in_data(b"junk"), None);
        // A change depending on history the data does not hold is read on its own.
        let heads = plain.get_heads();
        let mut later = plain.clone();
        let mut tx = later.transaction();
        tx.put(automerge::ROOT, "k", 2).expect("put");
        tx.commit();
        let incremental = later.save_after(&heads);
        assert_eq!(named_in_data(&incremental), set(&[]));
        let mut both = incremental.clone();
        both.extend(record("eve", 2));
        assert_eq!(
            named_in_data(&both),
            set(&["eve"]),
            "a record after a change"
        );
        assert_eq!(
            named_in_data(&incremental[..incremental.len() - 1]),
            None,
            "cut"
        );
        // In sync messages: a client that has the record sends it back.
        let mut server = Automerge::new();
        server
            .load_incremental(&record("alice", 3))
            .expect("merged");
        let (mut at_client, mut at_server) =
            (automerge::sync::State::new(), automerge::sync::State::new());
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            if let Some(m) = plain.generate_sync_message(&mut at_client) {
                seen.extend(named_in_sync_message(&m).expect("parses"));
                server
                    .receive_sync_message(&mut at_server, m)
                    .expect("received");
            }
            if let Some(m) = server.generate_sync_message(&mut at_server) {
                plain
                    .receive_sync_message(&mut at_client, m)
                    .expect("received");
            }
        }
        assert!(seen.is_subset(&owners_of(&server)), "{seen:?}");
    }
}
