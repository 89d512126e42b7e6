//! [`DocReader::heads_page`] against both stores: paging through the index gives the whole
//! listing, and documents added or removed between pages never make the listing skip or
//! repeat a document stored throughout.

use std::collections::BTreeMap;

use super::*;

/// Removes documents from a closed store (no store removes documents; the listing must
/// cope with it all the same).
type Remove<'a> = &'a dyn Fn(&[&str]);

/// Every page of `reader`'s listing with pages of `limit`, concatenated.
fn all_pages(reader: &dyn DocReader, limit: usize) -> Vec<(String, Heads)> {
    let mut all: Vec<(String, Heads)> = Vec::new();
    loop {
        let after = all.last().map(|(id, _)| id.clone());
        let page = reader.heads_page(after.as_deref(), limit).unwrap();
        assert!(page.len() <= limit, "{} > limit {limit}", page.len());
        if let (Some(after), Some((first, _))) = (&after, page.first()) {
            assert!(first > after, "{first} is not after {after}");
        }
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Pages of every size give the same listing as the whole index, without documents whose
/// heads are unknown or empty.
fn pages_concatenate_to_the_whole_listing(reopen: Reopen) {
    let mut s = reopen();
    let ids: Vec<String> = (0..50).map(|i| format!("doc-{i:03}")).collect();
    let appends: Vec<DocAppend> = ids.iter().map(|id| ap(id, 0..1)).collect();
    s.append(&appends).unwrap();
    // Unknown heads (compacted before any append) and empty heads are left out.
    s.compact(one("doc-0205", "snap", vec![])).unwrap();
    s.set_heads(vec![("doc-010".into(), vec![])]).unwrap();
    let r = s.reader();
    let expected: Vec<(String, Heads)> = ids
        .iter()
        .filter(|id| *id != "doc-010")
        .map(|id| (id.clone(), vec![head(id, 1)]))
        .collect();
    for limit in [1, 2, 7, 49, 50, 1000] {
        assert_eq!(all_pages(r.as_ref(), limit), expected, "pages of {limit}");
    }
    assert_eq!(r.heads_page(None, 0).unwrap(), vec![]);
    assert_eq!(r.heads_page(Some("doc-049"), 10).unwrap(), vec![]);
    // `after` need not be stored: the page starts at the next id.
    let page = r.heads_page(Some("doc-0105"), 2).unwrap();
    let page_ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(page_ids, ["doc-011", "doc-012"]);
    assert_eq!(
        r.heads_page(Some("doc-009"), 1).unwrap()[0].0,
        "doc-011",
        "documents with empty heads are skipped, and the page still fills"
    );
}

/// Documents added and removed between pages: every document stored throughout is listed
/// once, nothing is listed twice, and the listing stays in id order.
fn changes_between_pages(reopen: Reopen, remove: Remove) {
    let mut s = reopen();
    // Stable documents (never removed) and removable ones, interleaved.
    let stable: Vec<String> = (0..60).map(|i| format!("d-{:04}-s", i * 10)).collect();
    let removable: Vec<String> = (0..60).map(|i| format!("d-{:04}-r", i * 10 + 5)).collect();
    let appends: Vec<DocAppend> = stable
        .iter()
        .chain(&removable)
        .map(|id| ap(id, 0..1))
        .collect();
    s.append(&appends).unwrap();
    drop(s);

    let mut listed: BTreeMap<String, usize> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    for round in 0.. {
        assert!(round < 100, "the listing ends");
        let s = reopen();
        let page = s.reader().heads_page(after.as_deref(), 7).unwrap();
        if page.is_empty() {
            break;
        }
        if let Some(after) = &after {
            assert!(page[0].0 > *after, "{} is not after {after}", page[0].0);
        }
        for (id, _) in &page {
            *listed.entry(id.clone()).or_default() += 1;
            order.push(id.clone());
        }
        after = page.last().map(|(id, _)| id.clone());
        // Between pages: new documents before the cursor, at it and after it, and removed
        // documents on both sides of it.
        let mut s = s;
        let new: Vec<DocAppend> = [0, 3, 7]
            .iter()
            .map(|k| {
                ap(
                    &format!("d-{:04}-n{round}", (round * 70 + k * 40) % 600),
                    0..1,
                )
            })
            .collect();
        s.append(&new).unwrap();
        drop(s);
        let gone: Vec<&str> = removable
            .iter()
            .skip(round * 5 % 60)
            .step_by(13)
            .take(3)
            .map(String::as_str)
            .collect();
        remove(&gone);
    }
    for id in &stable {
        assert_eq!(listed.get(id), Some(&1), "{id} is listed exactly once");
    }
    assert!(
        listed.values().all(|&n| n == 1),
        "nothing twice: {listed:?}"
    );
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in id order");
}

#[test]
fn memory_pages_concatenate() {
    let m = MemoryStore::new();
    pages_concatenate_to_the_whole_listing(&|| Box::new(m.clone()));
}

#[test]
fn redb_pages_concatenate() {
    let tmp = tempfile::tempdir().unwrap();
    pages_concatenate_to_the_whole_listing(&redb_reopen(tmp.path()));
}

#[test]
fn memory_changes_between_pages() {
    let m = MemoryStore::new();
    changes_between_pages(&|| Box::new(m.clone()), &|ids| m.remove_for_test(ids));
}

#[test]
fn redb_changes_between_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    changes_between_pages(&redb_reopen(dir), &|ids| remove_redb_docs(dir, ids));
}

/// Removes documents (index entries and logs) from the closed redb store at `dir`.
fn remove_redb_docs(dir: &Path, ids: &[&str]) {
    const DOCS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("docs");
    const LOG: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("log");
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut docs = txn.open_table(DOCS).unwrap();
        let mut log = txn.open_table(LOG).unwrap();
        for id in ids {
            docs.remove(*id).unwrap();
            log.retain_in((*id, 0u64)..=(*id, u64::MAX), |_, _| false)
                .unwrap();
        }
    }
    txn.commit().unwrap();
}
