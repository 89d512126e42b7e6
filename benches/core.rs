//! Criterion benches of the replication core's hot paths: the wire codec, and applying
//! remote changes in one batch versus one Automerge call per change.
//!
//! Run: `cargo bench --bench core`.

use automerge::transaction::Transactable;
use automerge::{Automerge, Change, ROOT};
use concordant::wire::{self, DocChanges, Message};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_bytes::ByteBuf;

/// `n` one-op changes made on one document, each encoded.
fn changes(n: usize) -> Vec<Vec<u8>> {
    let mut doc = Automerge::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut tx = doc.transaction();
        tx.put(ROOT, format!("key-{}", i % 500), i as u64)
            .expect("put on a fresh doc");
        tx.commit();
        let change = doc.get_last_local_change().expect("just committed");
        out.push(change.raw_bytes().to_vec());
    }
    out
}

fn push_message(changes: &[Vec<u8>]) -> Message {
    Message::push(vec![DocChanges {
        doc: "doc-1".into(),
        origin: "n1".into(),
        changes: changes.iter().cloned().map(ByteBuf::from).collect(),
        want_ack: false,
    }])
}

fn codec(c: &mut Criterion) {
    let batch = changes(100);
    let msg = push_message(&batch);
    let frame = wire::encode(&msg).expect("encodes");
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(100));
    g.bench_function("encode push of 100 changes", |b| {
        b.iter(|| wire::encode(&msg).expect("encodes"))
    });
    g.bench_function("decode push of 100 changes", |b| {
        b.iter(|| wire::decode_frame(&frame).expect("decodes"))
    });
    g.finish();
}

fn apply(c: &mut Criterion) {
    const N: usize = 2_000;
    let raw = changes(N);
    let decoded: Vec<Change> = raw
        .iter()
        .map(|b| Change::from_bytes(b.clone()).expect("valid change"))
        .collect();
    let mut g = c.benchmark_group("apply");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("2000 changes, one apply call", |b| {
        b.iter_batched(
            || decoded.clone(),
            |cs| {
                let mut doc = Automerge::new();
                doc.apply_changes(cs).expect("applies");
                doc
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("2000 changes, batches of 100", |b| {
        b.iter_batched(
            || decoded.clone(),
            |cs| {
                let mut doc = Automerge::new();
                for chunk in cs.chunks(100) {
                    doc.apply_changes(chunk.to_vec()).expect("applies");
                }
                doc
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("2000 changes, one call each", |b| {
        b.iter_batched(
            || decoded.clone(),
            |cs| {
                let mut doc = Automerge::new();
                for change in cs {
                    doc.apply_changes([change]).expect("applies");
                }
                doc
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("decode 2000 changes", |b| {
        b.iter(|| {
            raw.iter()
                .map(|b| Change::from_bytes(b.clone()).expect("valid change"))
                .collect::<Vec<_>>()
        })
    });
    g.finish();
}

criterion_group!(benches, codec, apply);
criterion_main!(benches);
