//! The bounded inflation patched into the vendored Automerge (`vendor/automerge/PATCHED.md`,
//! `automerge::inflate_limit`): compressed change chunks and compressed document columns
//! inflate only within the budget of a `with_inflate_limit` scope, and the bytes this thread
//! allocates while refusing a bomb stay near the budget (measured with a counting global
//! allocator: this test binary's own). Also the change caps against ops and predecessors
//! that run-length encoded columns declare (`automerge::change_sizes`, `src/limits.rs`):
//! refused after at most `max_change_ops + 1` decoded ops, allocating nothing per op; and
//! the rows a saved document declares, refused over `max_doc_ops` before it is loaded.

#[path = "common/bomb.rs"]
mod bomb;
#[path = "common/counting.rs"]
mod counting;

use automerge::change_sizes::{visit_chunks, ChunkSizes, DocumentSizes};
use automerge::inflate_limit::{check_inflated_size, with_inflate_limit, InflateLimitExceeded};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, Automerge, Change, ObjType, ReadDoc, ROOT};
use bomb::{change_chunk_bomb, rle_ops_change, rle_ops_document, DocRows, MIB};
use concordant::limits::DataLimits;
use counting::{peak_during, Counting};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A saved document with a text of `n` times the letter a: its value column is compressed.
fn repetitive_doc(n: usize) -> Vec<u8> {
    let mut doc = AutoCommit::new();
    let text = doc.put_object(ROOT, "text", ObjType::Text).unwrap();
    doc.splice_text(&text, 0, 0, &"a".repeat(n)).unwrap();
    doc.save()
}

#[test]
fn a_change_chunk_bomb_stops_at_the_budget() {
    let bomb = change_chunk_bomb(64 * MIB);
    assert!(bomb.len() < 128 * 1024, "the bomb is small: {}", bomb.len());
    let (result, peak) =
        peak_during(|| with_inflate_limit(MIB, || Change::from_bytes(bomb.clone())));
    assert_eq!(result.unwrap_err(), InflateLimitExceeded { limit: MIB });
    // The output buffer grows by doubling up to the budget, plus the copy of the bomb.
    assert!(peak < 4 * MIB, "allocated {peak} bytes for a 1 MiB budget");
    assert_eq!(
        check_inflated_size(&bomb, MIB),
        Err(InflateLimitExceeded { limit: MIB })
    );
}

#[test]
fn without_a_scope_inflation_is_unbounded_and_measured() {
    // What the bound prevents, and proof that the measurement above can fail.
    let bomb = change_chunk_bomb(16 * MIB);
    let (result, peak) = peak_during(|| Change::from_bytes(bomb.clone()));
    assert!(result.is_err(), "zeros are not a change");
    assert!(
        peak >= 16 * MIB,
        "inflating 16 MiB allocated only {peak} bytes"
    );
}

#[test]
fn compressed_document_columns_are_bounded() {
    let saved = repetitive_doc(200_000);
    assert!(
        saved.len() < 20_000,
        "columns compressed: {} bytes",
        saved.len()
    );
    let refused = with_inflate_limit(50_000, || Automerge::load(&saved));
    assert_eq!(refused.unwrap_err(), InflateLimitExceeded { limit: 50_000 });
    assert!(check_inflated_size(&saved, 50_000).is_err());
    let inflated = check_inflated_size(&saved, 10 * MIB).unwrap();
    assert!(inflated >= 200_000, "inflated {inflated} bytes");
    // Within a budget that fits, loading works and gives the document.
    let doc = with_inflate_limit(inflated, || Automerge::load(&saved))
        .unwrap()
        .unwrap();
    let (_, text) = doc.get(ROOT, "text").unwrap().unwrap();
    assert_eq!(doc.text(&text).unwrap().len(), 200_000);
}

#[test]
fn a_partial_load_does_not_hide_the_limit() {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "k", 1).unwrap();
    let mut data = doc.save();
    data.extend(change_chunk_bomb(8 * MIB));
    let mut target = Automerge::new();
    target
        .load_incremental(&repetitive_doc(10))
        .expect("a small document loads");
    // Automerge ignores a bad chunk after the first one (a partial load) ...
    let scoped = with_inflate_limit(MIB, || target.load_incremental(&data));
    // ... but the scope reports that the budget was exceeded.
    assert_eq!(scoped.unwrap_err(), InflateLimitExceeded { limit: MIB });
}

/// A valid change chunk, compressed by Automerge, that inflates to more than `n` bytes: a
/// text of `n` times the letter a.
fn compressed_change(n: usize) -> Vec<u8> {
    let mut doc = AutoCommit::new();
    let text = doc.put_object(ROOT, "text", ObjType::Text).unwrap();
    doc.splice_text(&text, 0, 0, &"a".repeat(n)).unwrap();
    let mut change = doc.get_changes(&[]).pop().unwrap();
    let bytes = change.bytes().into_owned();
    assert_eq!(bytes[8], 2, "a compressed change chunk");
    bytes
}

#[test]
fn the_budget_covers_every_chunk_and_nested_scopes() {
    let one = compressed_change(600 * 1024);
    assert!(one.len() < 10_000, "compressed: {} bytes", one.len());
    let two = [compressed_change(600 * 1024), compressed_change(600 * 1024)].concat();
    assert!(check_inflated_size(&one, MIB).is_ok());
    assert!(check_inflated_size(&two, MIB).is_err(), "the sum is over");
    assert!(check_inflated_size(&two, 2 * MIB).is_ok());
    // An inner scope gets at most what the outer one has left, and uses it up.
    let outer = with_inflate_limit(MIB, || {
        let inner = check_inflated_size(&change_chunk_bomb(600 * 1024), 10 * MIB);
        assert!(inner.is_ok());
        check_inflated_size(&change_chunk_bomb(600 * 1024), 10 * MIB)
    });
    assert!(outer.is_err());
    // Nothing is left over from the scopes: a new one has its whole budget.
    assert!(check_inflated_size(&change_chunk_bomb(2 * MIB), 3 * MIB).is_ok());
}

/// Counts the events at WARN or ERROR.
struct CountLoud(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for CountLoud {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn refused_input_logs_nothing_above_debug() {
    let loud = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut valid = AutoCommit::new();
    valid.put(ROOT, "k", 1).unwrap();
    let mut partial = valid.save();
    partial.extend(change_chunk_bomb(1000));
    tracing::subscriber::with_default(CountLoud(loud.clone()), || {
        assert!(Automerge::load(b"not automerge").is_err());
        assert!(Automerge::load(&change_chunk_bomb(1000)).is_err());
        let mut doc = Automerge::load(&repetitive_doc(10)).unwrap();
        doc.load_incremental(&partial)
            .expect("a partial load is not an error");
        assert_eq!(loud.load(std::sync::atomic::Ordering::Relaxed), 0);
        tracing::warn!("the subscriber sees warnings");
    });
    assert_eq!(loud.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// A change whose run-length encoded columns declare a billion ops (about a hundred bytes)
/// is refused by the op cap after `max_change_ops + 1` ops were decoded, allocating
/// nothing per op; `Change::from_bytes` would iterate every declared op (it counts a
/// million of them here, to show that the chunk is valid and declares what it says).
#[test]
fn ops_declared_by_run_length_encoding_are_refused_at_the_cap() {
    assert_eq!(
        Change::from_bytes(rle_ops_change(1_000_000, 0))
            .unwrap()
            .len(),
        1_000_000
    );
    let limits = DataLimits::default();
    let cap = limits.change.max_ops as u64;
    assert_eq!(limits.check_data(&rle_ops_change(cap, 1)), Ok(()));
    let over = limits.check_data(&rle_ops_change(cap + 1, 0));
    assert_eq!(over.unwrap_err().label(), "change_ops");
    let billion = rle_ops_change(1_000_000_000, 0);
    assert!(billion.len() < 128, "{} bytes", billion.len());
    let (refused, peak) = peak_during(|| limits.check_data(&billion));
    let error = refused.unwrap_err().to_string();
    assert!(error.contains("at least 100001 ops"), "{error}");
    assert!(peak < MIB, "allocated {peak} bytes");
}

/// One op whose predecessor list is declared by run-length encoding: `Change::from_bytes`
/// allocates every declared predecessor (10 million: over 64 MiB, from 87 bytes); the
/// check counts them from their count column and refuses a billion of them allocating
/// nothing per predecessor.
#[test]
fn predecessors_declared_by_run_length_encoding_are_refused_before_decoding() {
    let (parsed, peak) = peak_during(|| Change::from_bytes(rle_ops_change(1, 10_000_000)));
    assert_eq!(parsed.unwrap().len(), 1);
    assert!(peak > 64 * MIB, "allocated {peak} bytes only");
    let limits = DataLimits::default();
    let cap = limits.change.max_ops as u64;
    assert_eq!(limits.check_data(&rle_ops_change(1, cap)), Ok(()));
    let (refused, peak) = peak_during(|| limits.check_data(&rle_ops_change(1, 1_000_000_000)));
    let error = refused.unwrap_err().to_string();
    assert!(
        error.contains("overwrite or delete at least 1000000000 earlier ops"),
        "{error}"
    );
    assert!(peak < MIB, "allocated {peak} bytes");
}

/// The rows of a saved document Automerge made (a list of 1,000 nulls, 10 of them then
/// overwritten in changes of their own), summed from run lengths, match what it holds.
#[test]
fn the_rows_of_a_saved_document_are_counted_from_run_lengths() {
    let mut doc = AutoCommit::new();
    let list = doc.put_object(ROOT, "list", ObjType::List).unwrap();
    for i in 0..1000 {
        doc.insert(&list, i, ()).unwrap();
    }
    doc.commit();
    for i in 0..10 {
        doc.put(&list, i, 1).unwrap();
        doc.commit();
    }
    let mut seen = Vec::new();
    visit_chunks(&doc.save(), 100, |chunk| {
        seen.push(chunk);
        std::ops::ControlFlow::Continue(())
    });
    assert_eq!(
        seen,
        [ChunkSizes::Document(DocumentSizes {
            ops: 1 + 1000 + 10,
            succs: 10,
            changes: 11,
            deps: 10,
        })]
    );
}

/// A saved document whose run-length encoded columns declare a trillion rows of one kind
/// (under 200 bytes) is refused by `max_doc_ops` before it is loaded, allocating
/// nothing per row; at the cap it passes the count (and then fails to load: its heads are
/// made up, and data that does not load is left to the merge to report).
#[test]
fn rows_declared_by_a_saved_document_are_refused_before_loading() {
    let limits = DataLimits::default();
    let cap = limits.max_doc_rows;
    let one = DocRows {
        ops: 1,
        succs_each: 0,
        changes: 1,
        deps_each: 0,
    };
    let at_cap = [
        DocRows { ops: cap, ..one },
        DocRows {
            ops: cap,
            succs_each: 1,
            ..one
        },
        DocRows {
            changes: cap,
            ..one
        },
        DocRows {
            changes: cap,
            deps_each: 1,
            ..one
        },
    ];
    for rows in at_cap {
        assert_eq!(
            limits.check_data(&rle_ops_document(rows)),
            Ok(()),
            "{rows:?}"
        );
    }
    let trillion = 1_000_000_000_000;
    for (rows, what) in [
        (
            DocRows {
                ops: trillion,
                ..one
            },
            "1000000000000 ops",
        ),
        (
            DocRows {
                succs_each: trillion,
                ..one
            },
            "1000000000000 successors of ops",
        ),
        (
            DocRows {
                changes: trillion,
                ..one
            },
            "1000000000000 changes",
        ),
        (
            DocRows {
                deps_each: trillion,
                ..one
            },
            "1000000000000 dependencies of changes",
        ),
    ] {
        let bomb = rle_ops_document(rows);
        assert!(bomb.len() < 256, "{} bytes", bomb.len());
        let (refused, peak) = peak_during(|| limits.check_data(&bomb));
        let refused = refused.unwrap_err();
        assert_eq!(refused.label(), "doc_ops");
        let error = refused.to_string();
        assert!(
            error.contains(&format!("declares {what}, over this node's limit of {cap}")),
            "{error}"
        );
        assert!(peak < MIB, "allocated {peak} bytes");
    }
    let over = DocRows {
        ops: cap + 1,
        ..one
    };
    assert_eq!(
        limits
            .check_data(&rle_ops_document(over))
            .unwrap_err()
            .label(),
        "doc_ops"
    );
}

/// Bundles are refused before they are parsed (parsing one allocates per declared op), as
/// a format, not a size.
#[test]
fn a_bundle_is_refused_unparsed() {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "k", 1).unwrap();
    doc.commit();
    let heads = doc.get_heads();
    let bundle = doc.bundle(heads).unwrap().bytes().to_vec();
    let refused = DataLimits::default().check_data(&bundle).unwrap_err();
    assert!(!refused.is_size());
    assert!(
        refused.to_string().contains("Automerge bundle"),
        "{refused}"
    );
    // After changes too.
    let mut data = doc.save();
    data.extend(&bundle);
    assert!(!DataLimits::default()
        .check_data(&data)
        .unwrap_err()
        .is_size());
}
