//! Unit tests of both stores: the shared semantics run against [`MemoryStore`] and
//! [`RedbStore`]; the file-handling tests (damage, versions, locks) against redb only.

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
    s.append(vec![
        ("a".into(), changes("a", 0..2)),
        ("b".into(), changes("b", 0..1)),
    ])
    .unwrap();
    s.append(vec![("a".into(), changes("a", 2..3))]).unwrap();
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
    s.append(vec![("b".into(), changes("b", 1..2))]).unwrap();
    drop(s);
    let mut s = reopen();
    assert_eq!(load(s.as_mut())[1], doc("b", None, changes("b", 0..2)));
}

fn compaction(reopen: Reopen) {
    let mut s = reopen();
    s.append(vec![
        ("a".into(), changes("a", 0..5)),
        ("b".into(), changes("b", 0..2)),
    ])
    .unwrap();
    // The snapshot holds a/0..4; a/4 is not in it and is kept.
    s.compact(one("a", "snap0-4", changes("a", 4..5))).unwrap();
    assert_eq!(s.log_len("a"), 1);
    s.append(vec![("a".into(), changes("a", 5..7))]).unwrap();
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
    s.append(vec![("a".into(), changes("a", 7..8))]).unwrap();
    drop(s);
    let mut s = reopen();
    assert_eq!(
        load(s.as_mut())[0],
        doc("a", Some("snap0-7"), changes("a", 7..8))
    );
    assert_eq!(s.log_len("a"), 1);

    // Compacting an unknown document creates it.
    s.compact(one("new", "snap", changes("new", 0..1))).unwrap();
    drop(s);
    let mut s = reopen();
    assert_eq!(
        load(s.as_mut())[2],
        doc("new", Some("snap"), changes("new", 0..1))
    );

    // Several documents in one compaction; the others keep their logs.
    s.append(vec![("b".into(), changes("b", 2..4))]).unwrap();
    let mut both = one("a", "snapA", vec![]);
    both.extend(one("b", "snapB", changes("b", 3..4)));
    s.compact(both).unwrap();
    s.compact(Vec::new()).unwrap();
    assert_eq!((s.log_len("a"), s.log_len("b")), (0, 1));
    let mut long = s.docs_with_log(1);
    long.sort();
    assert_eq!(long, vec!["b".to_string(), "new".to_string()]);
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
            .map(|id| (id.clone(), changes(id, round * 2..round * 2 + 2)))
            .collect();
        s.append(batch).unwrap();
    }
    // The same document twice in one batch keeps the batch order; empty lists are no-ops.
    s.append(vec![
        ("doc-000".into(), changes("doc-000", 6..7)),
        ("doc-001".into(), vec![]),
        ("doc-000".into(), changes("doc-000", 7..8)),
    ])
    .unwrap();
    s.append(vec![]).unwrap();
    drop(s);

    let mut s = reopen();
    let docs = load(s.as_mut());
    assert_eq!(docs.len(), 300);
    for (d, id) in docs.iter().zip(&ids) {
        let n = if id == "doc-000" { 8 } else { 6 };
        assert_eq!(*d, doc(id, None, changes(id, 0..n)));
        assert_eq!(s.log_len(id), n);
    }
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

/// Opens `dir`, expecting an error whose message names the database file.
fn open_err(dir: &Path) -> StorageError {
    let err = RedbStore::open(dir).expect_err("opening must fail");
    let path = dir.join(DB_FILE).display().to_string();
    assert!(
        err.to_string().contains(&path),
        "{err} does not name {path}"
    );
    err
}

#[test]
fn redb_refuses_garbage_and_empty_files() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(DB_FILE);
    std::fs::write(&file, b"this is not a database, just some text".repeat(200)).unwrap();
    let err = open_err(tmp.path());
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    // An empty file is refused too, never initialised as an empty store.
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(open_err(tmp.path()), StorageError::Corrupt { .. }));
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        0,
        "the file is left as found"
    );
}

#[test]
fn redb_refuses_unknown_format_version_and_foreign_files() {
    let tmp = tempfile::tempdir().unwrap();
    drop(RedbStore::open(tmp.path()).unwrap());
    let file = tmp.path().join(DB_FILE);
    {
        let db = redb::Database::open(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("format_version", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = open_err(tmp.path());
    assert!(
        matches!(
            err,
            StorageError::UnsupportedVersion {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );

    // A valid redb file of some other program.
    let other = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(other.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("x"))
            .unwrap();
        txn.commit().unwrap();
    }
    let err = open_err(other.path());
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
}

#[test]
fn redb_second_open_is_refused_while_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let first = RedbStore::open(tmp.path()).unwrap();
    let err = open_err(tmp.path());
    assert!(matches!(err, StorageError::Locked { .. }), "{err:?}");
    drop(first);
    RedbStore::open(tmp.path()).unwrap();
}

#[test]
fn redb_leftover_temporary_file_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("concordant.redb.tmp"), b"half-created").unwrap();
    let mut s = RedbStore::open(tmp.path()).unwrap();
    s.append(vec![("a".into(), changes("a", 0..1))]).unwrap();
    assert!(!tmp.path().join("concordant.redb.tmp").exists());
}

/// A store with a few documents, a compaction and a distinctive change; returns its content.
fn filled(dir: &Path) -> Vec<StoredDoc> {
    let mut s = RedbStore::open(dir).unwrap();
    for round in 0..10 {
        let batch = (0..20)
            .map(|d| {
                (
                    format!("doc{d}"),
                    changes(&format!("doc{d}"), round..round + 1),
                )
            })
            .collect();
        s.append(batch).unwrap();
    }
    s.compact(one("doc3", "snapshot of doc3", changes("doc3", 9..10)))
        .unwrap();
    s.append(vec![("marked".into(), vec![bytes("MARKER-0123456789")])])
        .unwrap();
    load(&mut s)
}

#[test]
fn redb_truncated_file_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    filled(tmp.path());
    let file = tmp.path().join(DB_FILE);
    let len = std::fs::metadata(&file).unwrap().len();
    // What redb 2.6 does: its header records the file layout, and a shorter file trips an
    // internal assertion (a panic), which the store reports as corruption.
    for keep in [len / 2, len - 4096, 4096, 100] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(keep)
            .unwrap();
        let err = open_err(tmp.path());
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            keep,
            "left as found"
        );
    }
}

#[test]
fn redb_damaged_value_is_reported_not_returned() {
    let tmp = tempfile::tempdir().unwrap();
    filled(tmp.path());
    let file = tmp.path().join(DB_FILE);
    let mut data = std::fs::read(&file).unwrap();
    let marker = b"MARKER-0123456789";
    let mut hits = 0;
    for i in 0..data.len() - marker.len() {
        if &data[i..i + marker.len()] == marker {
            data[i + 7] ^= 0x01;
            hits += 1;
        }
    }
    assert!(hits > 0, "the marker is stored verbatim");
    std::fs::write(&file, &data).unwrap();
    let mut s = RedbStore::open(tmp.path()).unwrap();
    let err = s.load_all().expect_err("damage must be reported");
    let text = err.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("\"marked\""), "{text}");
}

/// Random single-byte damage anywhere in the file: opening and loading either fail with an
/// error naming the file, or return exactly the stored data; never different data.
#[test]
fn redb_random_damage_never_returns_wrong_data() {
    let tmp = tempfile::tempdir().unwrap();
    let want = filled(tmp.path());
    let file = tmp.path().join(DB_FILE);
    let original = std::fs::read(&file).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..60 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut data = original.clone();
        // Damage mostly the used start of the file, where the pages live.
        let pos = (state % (data.len() as u64).min(1 << 16)) as usize;
        data[pos] ^= 1 << (state >> 61);
        std::fs::write(&file, &data).unwrap();
        match RedbStore::open(tmp.path()).and_then(|mut s| s.load_all()) {
            Ok(mut docs) => {
                docs.sort_by(|a, b| a.id.cmp(&b.id));
                assert_eq!(docs, want, "damage at byte {pos} went unnoticed");
            }
            Err(err) => {
                let path = file.display().to_string();
                assert!(err.to_string().contains(&path), "{err}");
            }
        }
    }
}
