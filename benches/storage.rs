//! Criterion benches of storage commits: one small change per durable commit versus a
//! group commit of 100 changes, on the redb store (fsync on every commit, in a temporary
//! directory on the disk `TMPDIR` points to) and, for comparison, the in-memory store.
//!
//! Run: `cargo bench --bench storage`.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use concordant::storage::{DocAppend, MemoryStore, RedbStore, Store};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// Documents the changes of a group commit are spread over.
const GROUP_DOCS: usize = 10;
/// Changes in a group commit.
const GROUP_CHANGES: usize = 100;

/// A one-op Automerge change, encoded (about 100 bytes, what one small write stores).
fn small_change() -> Vec<u8> {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "key", 42u64).expect("put on a fresh doc");
    tx.commit();
    let change = doc.get_last_local_change().expect("just committed");
    change.raw_bytes().to_vec()
}

/// One change for one document, with its heads (the index row is written too).
fn single_batch(change: &[u8]) -> Vec<DocAppend> {
    vec![DocAppend {
        doc: "doc-0".to_string(),
        changes: vec![change.to_vec()],
        heads: vec![[7; 32]],
    }]
}

/// [`GROUP_CHANGES`] changes spread over [`GROUP_DOCS`] documents, as one commit.
fn group_batch(change: &[u8]) -> Vec<DocAppend> {
    (0..GROUP_DOCS)
        .map(|d| DocAppend {
            doc: format!("doc-{d}"),
            changes: vec![change.to_vec(); GROUP_CHANGES / GROUP_DOCS],
            heads: vec![[7; 32]],
        })
        .collect()
}

fn redb(c: &mut Criterion) {
    let change = small_change();
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut store = RedbStore::open(dir.path()).expect("opens a new store");
    let mut g = c.benchmark_group("storage/redb (fsync)");
    g.sample_size(30);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(1));
    g.bench_function("commit 1 change", |b| {
        b.iter_batched(
            || single_batch(&change),
            |batch| store.append(&batch).expect("commits"),
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(GROUP_CHANGES as u64));
    g.bench_function("group commit of 100 changes over 10 docs", |b| {
        b.iter_batched(
            || group_batch(&change),
            |batch| store.append(&batch).expect("commits"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn memory(c: &mut Criterion) {
    let change = small_change();
    let mut g = c.benchmark_group("storage/memory");
    g.sample_size(30);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(2));
    // A fresh store per batch of iterations keeps memory bounded however many run.
    g.throughput(Throughput::Elements(1));
    g.bench_function("commit 1 change", |b| {
        b.iter_batched(
            || (MemoryStore::new(), single_batch(&change)),
            |(mut store, batch)| {
                store.append(&batch).expect("commits");
                store
            },
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(GROUP_CHANGES as u64));
    g.bench_function("group commit of 100 changes over 10 docs", |b| {
        b.iter_batched(
            || (MemoryStore::new(), group_batch(&change)),
            |(mut store, batch)| {
                store.append(&batch).expect("commits");
                store
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, redb, memory);
criterion_main!(benches);
