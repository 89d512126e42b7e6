//! File-level tests of [`RedbStore`]: damaged, foreign, truncated and locked files, format
//! versions and the migration from format 1, damaged index entries, readers outliving the
//! store.

use std::path::Path;

use super::super::checksum::{log_key, seal, seal_index, snapshot_key};
use super::super::index::IndexRow;
use super::*;

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
                supported: 2,
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
    s.append(&[ap("a", 0..1)]).unwrap();
    assert!(!tmp.path().join("concordant.redb.tmp").exists());
}

/// A store with a few documents, a compaction and a distinctive change; returns its content.
fn filled(dir: &Path) -> Vec<StoredDoc> {
    let mut s = RedbStore::open(dir).unwrap();
    for round in 0..10 {
        let batch = (0..20)
            .map(|d| ap(&format!("doc{d}"), round..round + 1))
            .collect::<Vec<_>>();
        s.append(&batch).unwrap();
    }
    s.compact(one("doc3", "snapshot of doc3", changes("doc3", 9..10)))
        .unwrap();
    s.append(&[DocAppend {
        doc: "marked".into(),
        changes: vec![bytes("MARKER-0123456789")],
        heads: vec![[0x4D; 32]],
    }])
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

/// The tables of format 1, as that format wrote them (no index).
const V1_META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
const V1_SNAPSHOTS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("snapshots");
const V1_LOG: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("log");
const DOCS_TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("docs");

/// Writes a format-1 store with raw redb: `snapshots` (doc, bytes) and `log` entries
/// (doc, seq, bytes), sealed as format 1 sealed them. `with_log: false` leaves out the log
/// table (a damaged format-1 file).
fn write_v1(dir: &Path, snapshots: &[(&str, &str)], log: &[(&str, u64, Vec<u8>)], with_log: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let db = redb::Database::create(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(V1_META).unwrap();
        meta.insert("format_version", 1).unwrap();
        let mut table = txn.open_table(V1_SNAPSHOTS).unwrap();
        for (doc, snapshot) in snapshots {
            let sealed = seal(&snapshot_key(doc), snapshot.as_bytes());
            table.insert(*doc, sealed.as_slice()).unwrap();
        }
        if with_log {
            let mut table = txn.open_table(V1_LOG).unwrap();
            for (doc, seq, change) in log {
                let sealed = seal(&log_key(doc, *seq), change);
                table.insert((*doc, *seq), sealed.as_slice()).unwrap();
            }
        }
    }
    txn.commit().unwrap();
}

/// The format version recorded in the (closed) store at `dir`, and whether it has an index.
fn raw_version(dir: &Path) -> (u64, bool) {
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn
        .open_table(V1_META)
        .unwrap()
        .get("format_version")
        .unwrap()
        .unwrap()
        .value();
    (version, txn.open_table(DOCS_TABLE).is_ok())
}

#[test]
fn redb_migrates_a_format_1_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // "a": a log only; "b": compacted once (its log numbering went on at 5); "c": a snapshot
    // and nothing kept.
    let mut log: Vec<(&str, u64, Vec<u8>)> = Vec::new();
    for (seq, change) in changes("a", 0..3).into_iter().enumerate() {
        log.push(("a", seq as u64, change));
    }
    for (i, change) in changes("b", 5..7).into_iter().enumerate() {
        log.push(("b", 5 + i as u64, change));
    }
    write_v1(dir, &[("b", "snapB"), ("c", "snapC")], &log, true);
    assert_eq!(raw_version(dir), (1, false));

    let mut s = RedbStore::open(dir).unwrap();
    let want = vec![
        doc("a", None, changes("a", 0..3)),
        doc("b", Some("snapB"), changes("b", 5..7)),
        doc("c", Some("snapC"), vec![]),
    ];
    assert_eq!(load(&mut s), want);
    assert_eq!(
        index(&s),
        vec![("a".into(), None), ("b".into(), None), ("c".into(), None)],
        "heads are unknown after a migration"
    );
    assert_eq!((s.log_len("a"), s.log_len("b"), s.log_len("c")), (3, 2, 0));
    assert!(s.docs_with_log(0).is_empty());
    let r = s.reader();
    assert_eq!(r.count().unwrap(), 3);
    assert_eq!(r.heads("a").unwrap(), None);
    assert!(r.all_heads().unwrap().is_empty());
    assert_eq!(r.read("b").unwrap().as_ref(), Some(&want[1]));
    // The migrated counters continue each log after its last change.
    s.append(&[ap("b", 7..8)]).unwrap();
    assert_eq!(
        r.read("b").unwrap(),
        Some(doc("b", Some("snapB"), changes("b", 5..8)))
    );
    s.set_heads(vec![
        ("a".into(), vec![[1; 32]]),
        ("c".into(), vec![[3; 32], [4; 32]]),
        ("unknown".into(), vec![[5; 32]]),
    ])
    .unwrap();
    drop(r);
    drop(s);
    assert_eq!(raw_version(dir), (2, true));

    let mut s = RedbStore::open(dir).unwrap();
    assert_eq!(
        index(&s),
        vec![
            ("a".into(), Some(vec![[1; 32]])),
            ("b".into(), Some(vec![head("b", 8)])),
            ("c".into(), Some(vec![[3; 32], [4; 32]])),
        ]
    );
    assert_eq!(load(&mut s)[1], doc("b", Some("snapB"), changes("b", 5..8)));
}

#[test]
fn redb_failed_migration_leaves_the_file_at_version_1() {
    let tmp = tempfile::tempdir().unwrap();
    write_v1(tmp.path(), &[("b", "snapB")], &[], false);
    let err = open_err(tmp.path());
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert_eq!(raw_version(tmp.path()), (1, false), "left as found");
}

/// Replaces (or with `None` removes) index entries of the closed store at `dir`.
fn put_raw_rows(dir: &Path, rows: &[(&str, Option<Vec<u8>>)]) {
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut docs = txn.open_table(DOCS_TABLE).unwrap();
        for (doc, value) in rows {
            match value {
                Some(value) => docs.insert(*doc, value.as_slice()).unwrap(),
                None => docs.remove(*doc).unwrap(),
            };
        }
    }
    txn.commit().unwrap();
}

/// Number of log entries of `doc` in the closed store at `dir`.
fn raw_log_len(dir: &Path, doc: &str) -> usize {
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let log = txn.open_table(V1_LOG).unwrap();
    log.range((doc, 0u64)..=(doc, u64::MAX)).unwrap().count()
}

fn assert_corrupt<T: std::fmt::Debug>(what: &str, result: Result<T, StorageError>, doc: &str) {
    let err = result.expect_err(what);
    assert!(
        matches!(err, StorageError::Corrupt { .. }),
        "{what}: {err:?}"
    );
    assert!(
        err.to_string().contains(&format!("{doc:?}")),
        "{what}: {err}"
    );
}

#[test]
fn redb_damaged_index_entry_is_reported_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = RedbStore::open(dir).unwrap();
    s.append(&[ap("a", 0..2), ap("b", 0..1), ap("c", 0..1)])
        .unwrap();
    drop(s);
    let row = IndexRow {
        next_seq: 2,
        log_len: 2,
        heads: Some(vec![head("a", 2)]),
    };
    let mut bad_sum = seal_index("a", &row.encode());
    bad_sum[5] ^= 0x20;
    // "b": a valid checksum over bytes that are no index row.
    put_raw_rows(
        dir,
        &[
            ("a", Some(bad_sum)),
            ("b", Some(seal_index("b", &[0, 0, 9]))),
        ],
    );

    // Opening reads no index entry, so it succeeds; every use of a damaged one fails.
    let mut s = RedbStore::open(dir).unwrap();
    let r = s.reader();
    assert_corrupt("append", s.append(&[ap("c", 1..2), ap("a", 2..3)]), "a");
    assert_corrupt("compact", s.compact(one("a", "snap", vec![])), "a");
    assert_corrupt("set_heads", s.set_heads(vec![("b".into(), vec![])]), "b");
    assert_corrupt("read", r.read("a"), "a");
    assert_corrupt("heads", r.heads("b"), "b");
    assert_corrupt("all_heads", r.all_heads(), "a");
    assert_corrupt("scan_index", s.scan_index(&mut |_, _| {}), "a");
    assert_corrupt("load_all", s.load_all(), "a");
    assert_eq!(s.log_len("a"), 0, "unreadable: reported as unknown");
    // Nothing of the failed writes is visible or remembered.
    assert_eq!(
        r.read("c").unwrap(),
        Some(doc("c", None, changes("c", 0..1)))
    );
    assert_eq!(r.heads("c").unwrap(), Some(vec![head("c", 1)]));
    assert!(s.docs_with_log(0).is_empty());
    assert_eq!(r.count().unwrap(), 3);
    drop(r);
    drop(s);
    assert_eq!(raw_log_len(dir, "a"), 2);
    assert_eq!(raw_log_len(dir, "c"), 1);
}

#[test]
fn redb_index_disagreeing_with_the_log_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = RedbStore::open(dir).unwrap();
    s.append(&[ap("a", 0..2), ap("b", 0..2), ap("c", 0..1)])
        .unwrap();
    drop(s);
    let row = |next_seq, log_len| IndexRow {
        next_seq,
        log_len,
        heads: None,
    };
    put_raw_rows(
        dir,
        &[
            // Claims 3 changes where the log has 2.
            ("a", Some(seal_index("a", &row(3, 3).encode()))),
            // Would reuse the key of change 1: an append would overwrite it.
            ("b", Some(seal_index("b", &row(1, 1).encode()))),
            // Data without an index entry.
            ("c", None),
        ],
    );
    let mut s = RedbStore::open(dir).unwrap();
    let r = s.reader();
    assert_corrupt("read a", r.read("a"), "a");
    assert_corrupt("read b", r.read("b"), "b");
    // The log is read in key order: "a" passes its entries, "b" fails on change 1.
    assert_corrupt("load_all", s.load_all(), "b");
    drop(r);
    drop(s);

    // With "a" and "b" repaired, the unindexed "c" is reported.
    let repaired = |doc: &str| Some(seal_index(doc, &row(2, 2).encode()));
    put_raw_rows(dir, &[("a", repaired("a")), ("b", repaired("b"))]);
    let mut s = RedbStore::open(dir).unwrap();
    assert_corrupt("load_all", s.load_all(), "c");
    assert_eq!(
        s.reader().read("c").unwrap(),
        None,
        "not in the index: not stored"
    );
}

#[test]
fn redb_reader_outliving_the_store_is_closed_and_releases_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = RedbStore::open(tmp.path()).unwrap();
    s.append(&[ap("a", 0..1)]).unwrap();
    let old = s.reader();
    assert_eq!(old.location(), s.location());
    drop(s);
    let err = old.read("a").expect_err("the store is closed");
    assert!(matches!(err, StorageError::Closed { .. }), "{err:?}");
    assert!(matches!(old.count(), Err(StorageError::Closed { .. })));
    // The file is free to open again while the old reader is still around.
    let s = RedbStore::open(tmp.path()).unwrap();
    assert_eq!(s.reader().heads("a").unwrap(), Some(vec![head("a", 1)]));
    assert!(matches!(old.heads("a"), Err(StorageError::Closed { .. })));
}
