//! Scale measurement of [`RedbStore`] (ignored by default; run by hand, in release mode):
//!
//! ```text
//! CONCORDANT_SCALE_DOCS=1000000 cargo test --release --test storage_scale -- --ignored --nocapture
//! ```
//!
//! Builds a store of N documents (default 1,000,000; ids `doc-0000001`...), each with one
//! ~100-byte change and one head, written with `append` in batches of 10,000 documents, in a
//! temporary directory under `TMPDIR` (or in `CONCORDANT_SCALE_DIR`, kept and reused if it
//! already holds a store). Then reports the time to open the store, `scan_index` over every
//! document, `reader().read(doc)` and `heads(doc)` per document (random ids), `count()`, the
//! file size and the resident memory after opening.
//!
//! `scale_unclean_open` (also ignored) measures the open after a crash: a child process
//! opens the store in `CONCORDANT_SCALE_DIR`, commits one append and aborts without closing
//! it; the parent then times the open, which makes redb repair the file (its allocator
//! state is only saved by a clean close). It modifies the store: run it on a copy.
//!
//! `scale_migration` (also ignored) writes a format-1 file of N one-change documents with
//! raw redb (format 1's tables; the values are not valid seals, which the migration does
//! not read) and times the open that migrates it to format 2.

use std::path::Path;
use std::time::{Duration, Instant};

use concordant::storage::{DocAppend, RedbStore, Store, DB_FILE};

const BATCH: usize = 10_000;

fn id(i: usize) -> String {
    format!("doc-{i:07}")
}

/// A stand-in for an encoded one-op change: 100 bytes naming its document.
fn change(i: usize) -> Vec<u8> {
    let mut bytes = format!("change of {}:", id(i)).into_bytes();
    bytes.resize(100, b'.');
    bytes
}

fn head(i: usize) -> [u8; 32] {
    let mut h = [0u8; 32];
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in h.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    h
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn fill(dir: &Path, n: usize) {
    let mut store = RedbStore::open(dir).expect("open a new store");
    let started = Instant::now();
    for start in (1..=n).step_by(BATCH) {
        let batch = (start..(start + BATCH).min(n + 1))
            .map(|i| DocAppend {
                doc: id(i),
                changes: vec![change(i)],
                heads: vec![head(i)],
            })
            .collect::<Vec<_>>();
        store.append(&batch).expect("append");
    }
    let took = started.elapsed();
    println!(
        "fill: {n} docs in {:.1} s ({:.1} ms per batch of {BATCH})",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 / n.div_ceil(BATCH) as f64
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "measurement: run by hand in release mode"]
fn scale() {
    let n: usize = std::env::var("CONCORDANT_SCALE_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = std::env::var_os("CONCORDANT_SCALE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    if !dir.join(DB_FILE).exists() {
        fill(&dir, n);
    }
    let size = std::fs::metadata(dir.join(DB_FILE)).expect("file").len();
    println!(
        "file: {:.1} MiB ({:.0} bytes per document)",
        size as f64 / (1 << 20) as f64,
        size as f64 / n as f64
    );

    {
        use redb::ReadableTableMetadata;
        let db = redb::Database::open(dir.join(DB_FILE)).expect("raw open");
        let txn = db.begin_read().expect("read");
        for name in ["docs", "snapshots"] {
            let table = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new(name))
                .expect("table");
            println!("table {name}: {:?}", table.stats().expect("stats"));
        }
        let log = txn
            .open_table(redb::TableDefinition::<(&str, u64), &[u8]>::new("log"))
            .expect("table");
        println!("table log: {:?}", log.stats().expect("stats"));
    }
    let rss_before = rss_kib();
    let mut opens = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let store = RedbStore::open(&dir).expect("reopen");
        opens.push(started.elapsed());
        drop(store);
    }
    println!("open: median {:?} (all {opens:?})", median(opens.clone()));
    let store = RedbStore::open(&dir).expect("reopen");
    println!(
        "rss after open: +{} KiB",
        rss_kib().saturating_sub(rss_before)
    );
    let reader = store.reader();

    let started = Instant::now();
    let count = reader.count().expect("count");
    println!("count: {count} in {:?}", started.elapsed());
    assert_eq!(count, n);

    for round in 0..3 {
        let started = Instant::now();
        let (mut docs, mut heads) = (0usize, 0usize);
        store
            .scan_index(&mut |_, h| {
                docs += 1;
                heads += h.map_or(0, <[_]>::len);
            })
            .expect("scan");
        println!(
            "scan_index #{round}: {docs} docs, {heads} heads in {:?}",
            started.elapsed()
        );
        assert_eq!((docs, heads), (n, n));
    }
    let started = Instant::now();
    let all = reader.all_heads().expect("all_heads");
    println!("all_heads: {} in {:?}", all.len(), started.elapsed());
    drop(all);

    let samples = 20_000.min(n);
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let ids: Vec<usize> = (0..samples)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + (x % n as u64) as usize
        })
        .collect();
    let started = Instant::now();
    for &i in &ids {
        let doc = reader.read(&id(i)).expect("read").expect("stored");
        assert_eq!(doc.changes[0], change(i));
    }
    let read = started.elapsed();
    let started = Instant::now();
    for &i in &ids {
        assert_eq!(reader.heads(&id(i)).expect("heads"), Some(vec![head(i)]));
    }
    let heads = started.elapsed();
    println!(
        "read: {:.1} µs per doc; heads: {:.1} µs per doc ({samples} random docs)",
        read.as_secs_f64() * 1e6 / samples as f64,
        heads.as_secs_f64() * 1e6 / samples as f64
    );
    let started = Instant::now();
    assert!(store.log_len(&id(n / 2)) >= 1);
    println!("log_len (index read): {:?}", started.elapsed());

    // Durable commits of one change to one document (what one isolated write costs).
    let mut store = store;
    let started = Instant::now();
    const COMMITS: usize = 100;
    for &i in ids.iter().take(COMMITS) {
        let doc = DocAppend {
            doc: id(i),
            changes: vec![change(i)],
            heads: vec![head(i)],
        };
        store.append(&[doc]).expect("append");
    }
    println!(
        "append: {:.2} ms per one-change commit",
        started.elapsed().as_secs_f64() * 1e3 / COMMITS as f64
    );
}

#[test]
#[ignore = "measurement: run by hand in release mode, on a copy of a store"]
fn scale_unclean_open() {
    const CHILD: &str = "CONCORDANT_SCALE_UNCLEAN_CHILD";
    let Some(dir) = std::env::var_os("CONCORDANT_SCALE_DIR").map(std::path::PathBuf::from) else {
        panic!("set CONCORDANT_SCALE_DIR to (a copy of) a store built by `scale`");
    };
    if std::env::var_os(CHILD).is_some() {
        let mut store = RedbStore::open(&dir).expect("child opens");
        let doc = DocAppend {
            doc: "unclean".into(),
            changes: vec![change(0)],
            heads: vec![head(0)],
        };
        store.append(&[doc]).expect("append");
        std::process::abort();
    }
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "scale_unclean_open", "--ignored", "--nocapture"])
        .env(CHILD, "1")
        .status()
        .expect("child runs");
    assert!(!status.success(), "the child aborts");
    let started = Instant::now();
    let store = RedbStore::open(&dir).expect("open after a crash");
    println!("open after a crash (redb repair): {:?}", started.elapsed());
    assert_eq!(
        store.reader().heads("unclean").expect("heads"),
        Some(vec![head(0)])
    );
    drop(store);
    let started = Instant::now();
    drop(RedbStore::open(&dir).expect("open again"));
    println!("next open: {:?}", started.elapsed());
}

#[test]
#[ignore = "measurement: run by hand in release mode"]
fn scale_migration() {
    let n: usize = std::env::var("CONCORDANT_SCALE_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().expect("temporary directory");
    {
        let db = redb::Database::create(tmp.path().join(DB_FILE)).expect("create");
        let meta = redb::TableDefinition::<&str, u64>::new("meta");
        let snapshots = redb::TableDefinition::<&str, &[u8]>::new("snapshots");
        let log = redb::TableDefinition::<(&str, u64), &[u8]>::new("log");
        for start in (1..=n).step_by(BATCH) {
            let txn = db.begin_write().expect("write");
            {
                txn.open_table(meta)
                    .expect("meta")
                    .insert("format_version", 1)
                    .expect("version");
                txn.open_table(snapshots).expect("snapshots");
                let mut log = txn.open_table(log).expect("log");
                for i in start..(start + BATCH).min(n + 1) {
                    log.insert((id(i).as_str(), 0), change(i).as_slice())
                        .expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
    }
    let started = Instant::now();
    let store = RedbStore::open(tmp.path()).expect("open migrates");
    println!("migration of {n} documents: {:?}", started.elapsed());
    assert_eq!(store.reader().count().expect("count"), n);
    assert_eq!(store.log_len(&id(n)), 1);
}
