//! Unit tests of both stores: the shared semantics run against [`MemoryStore`] and
//! [`RedbStore`]; the file-handling tests (damage, versions, migration, locks) against redb
//! only, in [`file`]; the paged listing in [`paging`].

use std::path::Path;

use super::*;

/// Builds a store over the same underlying data each time it is called ("reopen").
type Reopen<'a> = &'a dyn Fn() -> Box<dyn Store>;

fn bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn changes(doc: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|i| bytes(&format!("{doc}/{i}"))).collect()
}

/// Stand-in heads of `doc` once it holds `n` changes.
fn head(doc: &str, n: usize) -> [u8; 32] {
    let mut h = [n as u8; 32];
    h[0] = doc.as_bytes().first().copied().unwrap_or(0);
    h
}

/// Appends changes `range` of `doc`, with the heads they lead to.
fn ap(doc: &str, range: std::ops::Range<usize>) -> DocAppend {
    DocAppend {
        doc: doc.into(),
        heads: vec![head(doc, range.end)],
        changes: changes(doc, range),
    }
}

/// The index as `scan_index` reports it.
fn index(store: &dyn Store) -> Vec<(String, Option<Vec<[u8; 32]>>)> {
    let mut out = Vec::new();
    store
        .scan_index(&mut |id, heads| out.push((id.to_string(), heads.map(<[_]>::to_vec))))
        .unwrap();
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Every document, sorted by id.
fn load(store: &mut dyn Store) -> Vec<StoredDoc> {
    let mut docs = store.load_all().unwrap();
    docs.sort_by(|a, b| a.id.cmp(&b.id));
    docs
}

fn doc(id: &str, snapshot: Option<&str>, changes: Vec<Vec<u8>>) -> StoredDoc {
    StoredDoc {
        id: id.into(),
        snapshot: snapshot.map(bytes),
        changes,
    }
}

fn one(doc: &str, snapshot: &str, keep: Vec<Vec<u8>>) -> Vec<Compaction> {
    vec![Compaction {
        doc: doc.into(),
        snapshot: bytes(snapshot),
        keep,
    }]
}

fn round_trip(reopen: Reopen) {
    let mut s = reopen();
    assert!(load(s.as_mut()).is_empty());
    s.append(&[ap("a", 0..2), ap("b", 0..1)]).unwrap();
    s.append(&[ap("a", 2..3)]).unwrap();
    assert_eq!(s.log_len("a"), 3);
    assert_eq!(s.log_len("b"), 1);
    assert_eq!(s.log_len("zzz"), 0);
    drop(s);

    let mut s = reopen();
    assert_eq!(s.log_len("a"), 3, "log length is known right after reopen");
    let want = vec![
        doc("a", None, changes("a", 0..3)),
        doc("b", None, changes("b", 0..1)),
    ];
    assert_eq!(load(s.as_mut()), want);
    // Appends after a reopen continue the same log.
    s.append(&[ap("b", 1..2)]).unwrap();
    drop(s);
    let mut s = reopen();
    assert_eq!(load(s.as_mut())[1], doc("b", None, changes("b", 0..2)));
    assert_eq!(
        index(s.as_ref()),
        vec![
            ("a".into(), Some(vec![head("a", 3)])),
            ("b".into(), Some(vec![head("b", 2)])),
        ]
    );
}

fn compaction(reopen: Reopen) {
    let mut s = reopen();
    s.append(&[ap("a", 0..5), ap("b", 0..2)]).unwrap();
    // The snapshot holds a/0..4; a/4 is not in it and is kept.
    s.compact(one("a", "snap0-4", changes("a", 4..5))).unwrap();
    assert_eq!(s.log_len("a"), 1);
    s.append(&[ap("a", 5..7)]).unwrap();
    assert_eq!(s.log_len("a"), 3);
    drop(s);

    let mut s = reopen();
    assert_eq!(s.log_len("a"), 3);
    assert_eq!(s.log_len("b"), 2, "other documents are untouched");
    let docs = load(s.as_mut());
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0], doc("a", Some("snap0-4"), changes("a", 4..7)));
    assert_eq!(docs[1], doc("b", None, changes("b", 0..2)));

    // A second compaction replaces the first snapshot and the whole log.
    s.compact(one("a", "snap0-7", vec![])).unwrap();
    assert_eq!(s.log_len("a"), 0);
    s.append(&[ap("a", 7..8)]).unwrap();
    drop(s);
    let mut s = reopen();
    assert_eq!(
        load(s.as_mut())[0],
        doc("a", Some("snap0-7"), changes("a", 7..8))
    );
    assert_eq!(s.log_len("a"), 1);

    // Compacting an unknown document creates it, with unknown heads.
    s.compact(one("new", "snap", changes("new", 0..1))).unwrap();
    drop(s);
    let mut s = reopen();
    assert_eq!(
        load(s.as_mut())[2],
        doc("new", Some("snap"), changes("new", 0..1))
    );
    assert_eq!(s.log_len("new"), 1);
    // Compactions leave the recorded heads alone.
    assert_eq!(
        index(s.as_ref()),
        vec![
            ("a".into(), Some(vec![head("a", 8)])),
            ("b".into(), Some(vec![head("b", 2)])),
            ("new".into(), None),
        ]
    );

    // Several documents in one compaction; the others keep their logs.
    s.append(&[ap("b", 2..4)]).unwrap();
    let mut both = one("a", "snapA", vec![]);
    both.extend(one("b", "snapB", changes("b", 3..4)));
    s.compact(both).unwrap();
    s.compact(Vec::new()).unwrap();
    assert_eq!((s.log_len("a"), s.log_len("b")), (0, 1));
    // Only documents written since the reopen are listed: "new" (log 1) is not.
    assert_eq!(
        sorted(s.docs_with_log(0)),
        vec!["a".to_string(), "b".into()]
    );
    assert_eq!(s.docs_with_log(1), vec!["b".to_string()]);
    assert!(s.docs_with_log(2).is_empty());
    drop(s);
    let mut s = reopen();
    assert_eq!(
        load(s.as_mut()),
        vec![
            doc("a", Some("snapA"), vec![]),
            doc("b", Some("snapB"), changes("b", 3..4)),
            doc("new", Some("snap"), changes("new", 0..1)),
        ]
    );
}

fn many_docs_and_batches(reopen: Reopen) {
    let mut s = reopen();
    let ids: Vec<String> = (0..300).map(|i| format!("doc-{i:03}")).collect();
    // One commit for all 300 documents, then two more rounds.
    for round in 0..3 {
        let batch = ids
            .iter()
            .map(|id| ap(id, round * 2..round * 2 + 2))
            .collect::<Vec<_>>();
        s.append(&batch).unwrap();
    }
    // The same document twice in one batch keeps the batch order and the later heads; an
    // empty list of changes records heads only.
    s.append(&[
        ap("doc-000", 6..7),
        DocAppend {
            doc: "doc-001".into(),
            changes: vec![],
            heads: vec![[0xEE; 32], [0xEF; 32]],
        },
        ap("doc-000", 7..8),
    ])
    .unwrap();
    s.append(&[]).unwrap();
    drop(s);

    let mut s = reopen();
    let docs = load(s.as_mut());
    assert_eq!(docs.len(), 300);
    let reader = s.reader();
    assert_eq!(reader.count().unwrap(), 300);
    for (d, id) in docs.iter().zip(&ids) {
        let n = if id == "doc-000" { 8 } else { 6 };
        assert_eq!(*d, doc(id, None, changes(id, 0..n)));
        assert_eq!(s.log_len(id), n);
        assert_eq!(reader.read(id).unwrap().as_ref(), Some(d));
        let heads = match id.as_str() {
            "doc-001" => vec![[0xEE; 32], [0xEF; 32]],
            _ => vec![head(id, n)],
        };
        assert_eq!(reader.heads(id).unwrap(), Some(heads));
    }
    let all = reader.all_heads().unwrap();
    assert_eq!(all.len(), 300);
    assert!(all.iter().map(|(id, _)| id).eq(ids.iter()), "in id order");
}

#[test]
fn memory_round_trip() {
    let m = MemoryStore::new();
    round_trip(&|| Box::new(m.clone()));
    assert_eq!(m.location(), "memory");
}

#[test]
fn memory_compaction() {
    let m = MemoryStore::new();
    compaction(&|| Box::new(m.clone()));
}

#[test]
fn memory_many_docs() {
    let m = MemoryStore::new();
    many_docs_and_batches(&|| Box::new(m.clone()));
}

fn redb_reopen(dir: &Path) -> impl Fn() -> Box<dyn Store> + '_ {
    move || Box::new(RedbStore::open(dir).unwrap())
}

#[test]
fn redb_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/data");
    round_trip(&redb_reopen(&dir));
    let s = RedbStore::open(&dir).unwrap();
    assert_eq!(s.location(), dir.join(DB_FILE).display().to_string());
}

#[test]
fn redb_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    compaction(&redb_reopen(tmp.path()));
}

#[test]
fn redb_many_docs() {
    let tmp = tempfile::tempdir().unwrap();
    many_docs_and_batches(&redb_reopen(tmp.path()));
}

/// Index entries follow appends (heads too when there are no changes), compactions and
/// `set_heads`; a reader sees them.
fn index_entries(reopen: Reopen) {
    let mut s = reopen();
    let r = s.reader();
    assert_eq!(r.count().unwrap(), 0);
    assert_eq!(r.read("a").unwrap(), None);
    assert_eq!(r.heads("a").unwrap(), None);
    // Heads alone create the entry, with an empty log.
    s.append(&[DocAppend {
        doc: "a".into(),
        changes: vec![],
        heads: vec![head("a", 0)],
    }])
    .unwrap();
    assert_eq!(r.read("a").unwrap(), Some(doc("a", None, vec![])));
    assert_eq!(r.heads("a").unwrap(), Some(vec![head("a", 0)]));
    assert_eq!(s.log_len("a"), 0);
    s.append(&[ap("a", 0..2), ap("b", 0..1)]).unwrap();
    s.compact(one("c", "snapC", vec![])).unwrap();
    assert_eq!(
        index(s.as_ref()),
        vec![
            ("a".into(), Some(vec![head("a", 2)])),
            ("b".into(), Some(vec![head("b", 1)])),
            ("c".into(), None),
        ]
    );
    assert_eq!(r.count().unwrap(), 3);
    assert_eq!(
        r.all_heads().unwrap(),
        vec![
            ("a".into(), vec![head("a", 2)]),
            ("b".into(), vec![head("b", 1)]),
        ],
        "unknown heads are left out"
    );
    assert_eq!(r.read("c").unwrap(), Some(doc("c", Some("snapC"), vec![])));

    // set_heads: indexed documents only, logs untouched.
    s.set_heads(vec![
        ("c".into(), vec![[9; 32]]),
        ("zzz".into(), vec![[1; 32]]),
        ("a".into(), vec![]),
    ])
    .unwrap();
    s.set_heads(Vec::new()).unwrap();
    assert_eq!(r.heads("zzz").unwrap(), None);
    assert_eq!(r.count().unwrap(), 3);
    assert_eq!(r.heads("c").unwrap(), Some(vec![[9; 32]]));
    assert_eq!(r.heads("a").unwrap(), Some(vec![]));
    assert_eq!(s.log_len("a"), 2);
    drop(r);
    drop(s);

    let mut s = reopen();
    let r = s.reader();
    assert_eq!(
        index(s.as_ref()),
        vec![
            ("a".into(), Some(vec![])),
            ("b".into(), Some(vec![head("b", 1)])),
            ("c".into(), Some(vec![[9; 32]])),
        ]
    );
    assert_eq!(
        r.read("a").unwrap(),
        Some(doc("a", None, changes("a", 0..2)))
    );
    assert_eq!((s.log_len("a"), s.log_len("b"), s.log_len("c")), (2, 1, 0));
    assert_eq!(load(s.as_mut()).len(), 3);
}

/// `docs_with_log` lists the documents written since the store was opened.
fn long_logs(reopen: Reopen) {
    let mut s = reopen();
    s.append(&[ap("a", 0..3), ap("b", 0..1)]).unwrap();
    assert_eq!(
        sorted(s.docs_with_log(1)),
        vec!["a".to_string(), "b".into()]
    );
    assert_eq!(s.docs_with_log(2), vec!["a".to_string()]);
    assert!(s.docs_with_log(4).is_empty());
    drop(s);

    let mut s = reopen();
    assert!(
        s.docs_with_log(0).is_empty(),
        "nothing written since the reopen"
    );
    assert_eq!(s.log_len("a"), 3, "the log length is in the index");
    s.append(&[ap("b", 1..3)]).unwrap();
    assert_eq!(s.docs_with_log(1), vec!["b".to_string()]);
    s.compact(one("b", "snapB", vec![])).unwrap();
    assert!(s.docs_with_log(1).is_empty());
    assert_eq!(s.docs_with_log(0), vec!["b".to_string()]);
    // Recording heads alone lists the document with its unchanged log.
    s.append(&[DocAppend {
        doc: "a".into(),
        changes: vec![],
        heads: vec![head("a", 3)],
    }])
    .unwrap();
    assert_eq!(s.docs_with_log(3), vec!["a".to_string()]);
}

/// A reader on another thread sees every commit that returned before its read began, while
/// the store keeps writing.
fn reader_sees_commits_from_another_thread(reopen: Reopen) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    const ROUNDS: usize = 100;
    let mut s = reopen();
    let reader = s.reader();
    let committed = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&committed);
    let check = std::thread::spawn(move || {
        let mut reads = 0;
        loop {
            let before = seen.load(SeqCst);
            let got = reader.read("x").unwrap().map_or(vec![], |d| d.changes);
            assert!(
                got.len() >= before,
                "read {} after {before} commits",
                got.len()
            );
            assert_eq!(got, changes("x", 0..got.len()));
            // Heads are read later than the log: they cover at least as many changes.
            if let Some(heads) = reader.heads("x").unwrap() {
                assert!(usize::from(heads[0][1]) >= got.len());
            }
            reads += 1;
            if before == ROUNDS {
                return reads;
            }
        }
    });
    for i in 0..ROUNDS {
        s.append(&[ap("x", i..i + 1), ap(&format!("other-{i:03}"), 0..1)])
            .unwrap();
        committed.store(i + 1, SeqCst);
    }
    let reads = check.join().unwrap();
    assert!(reads >= 1);
    assert_eq!(s.reader().count().unwrap(), ROUNDS + 1);
}

/// A panic in the caller's `scan_index` callback is the caller's: it unwinds as it is
/// (not reported as a damaged store), and the store stays usable.
fn scan_callback_panic_unwinds(reopen: Reopen) {
    let mut s = reopen();
    s.append(&[ap("a", 0..1), ap("b", 0..1)]).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.scan_index(&mut |_, _| panic!("caller bug")).map(|_| ())
    }));
    let payload = caught.expect_err("the panic unwinds out of scan_index");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"caller bug"));
    assert_eq!(index(s.as_ref()).len(), 2);
    s.append(&[ap("a", 1..2)]).unwrap();
}

#[test]
fn memory_scan_callback_panic_unwinds() {
    let m = MemoryStore::new();
    scan_callback_panic_unwinds(&|| Box::new(m.clone()));
}

#[test]
fn redb_scan_callback_panic_unwinds() {
    let tmp = tempfile::tempdir().unwrap();
    scan_callback_panic_unwinds(&redb_reopen(tmp.path()));
}

#[test]
fn memory_index_entries() {
    let m = MemoryStore::new();
    index_entries(&|| Box::new(m.clone()));
}

#[test]
fn memory_long_logs() {
    let m = MemoryStore::new();
    long_logs(&|| Box::new(m.clone()));
}

#[test]
fn memory_reader_on_another_thread() {
    let m = MemoryStore::new();
    reader_sees_commits_from_another_thread(&|| Box::new(m.clone()));
}

#[test]
fn redb_index_entries() {
    let tmp = tempfile::tempdir().unwrap();
    index_entries(&redb_reopen(tmp.path()));
}

#[test]
fn redb_long_logs() {
    let tmp = tempfile::tempdir().unwrap();
    long_logs(&redb_reopen(tmp.path()));
}

#[test]
fn redb_reader_on_another_thread() {
    let tmp = tempfile::tempdir().unwrap();
    reader_sees_commits_from_another_thread(&redb_reopen(tmp.path()));
}

mod file;
mod paging;
