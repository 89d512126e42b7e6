//! The document cache's estimate of a document's memory (`concordant::core::footprint`)
//! against what Automerge really allocates for it, measured with a counting global
//! allocator (`common/counting.rs`: what a thread allocates and frees).
//! For every shape the estimate must be at least the memory and at most four times it.
//! Run with `--nocapture` to see the figures.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, Automerge, Change, ObjType, ReadDoc, ROOT};
use concordant::core::footprint::{estimate, uncompressed_len};

#[path = "common/counting.rs"]
mod counting;

use concordant::core::LoadedDoc;
use counting::{held, Counting};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Prints the figures and checks estimate ≥ memory ≥ estimate / 4.
fn check(name: &str, stats: &automerge::Stats, estimated: usize, memory: usize) {
    let ratio = estimated as f64 / memory as f64;
    println!(
        "{name:34} ops {:>7} changes {:>6} objects {:>6}  memory {memory:>9}  estimate {estimated:>9}  x{ratio:.2}",
        stats.num_ops, stats.num_changes, stats.num_objects
    );
    assert!(
        estimated >= memory,
        "{name}: estimate {estimated} < memory {memory}"
    );
    assert!(
        ratio <= 4.0,
        "{name}: estimate {estimated} over 4 x memory {memory}"
    );
}

/// Saves `doc`, decodes it as the cache's reader threads do, and checks the estimate.
fn check_loaded(name: &str, doc: &mut AutoCommit) {
    let saved = doc.save();
    let loaded = LoadedDoc::decode("d", Some(&saved), &[]).expect("decodes");
    let stats = loaded.doc().stats();
    let estimated = loaded.footprint();
    check(name, &stats, estimated, held(loaded));
}

fn text(chars: usize) -> String {
    (0..chars)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// A xorshift generator: letters that deflate poorly.
fn random_letters(seed: &mut u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            char::from(b'a' + (*seed % 26) as u8)
        })
        .collect()
}

#[test]
fn the_estimate_covers_loaded_documents_of_every_shape() {
    check_loaded("empty", &mut AutoCommit::new());
    let mut d = AutoCommit::new();
    d.put(ROOT, "k", 1).unwrap();
    check_loaded("one op", &mut d);
    for n in [100, 10_000, 100_000] {
        let mut d = AutoCommit::new();
        let t = d.put_object(ROOT, "t", ObjType::Text).unwrap();
        d.splice_text(&t, 0, 0, &text(n)).unwrap();
        check_loaded(&format!("text of {n} chars, one change"), &mut d);
    }
    let mut d = AutoCommit::new();
    let t = d.put_object(ROOT, "t", ObjType::Text).unwrap();
    for i in 0..2000 {
        d.splice_text(&t, i, 0, "x").unwrap();
        d.commit();
    }
    check_loaded("text of 2000 chars, typed", &mut d);
    for n in [1000, 10_000] {
        let mut d = AutoCommit::new();
        for i in 0..n {
            d.put(ROOT, format!("key{i}"), i as i64).unwrap();
        }
        check_loaded(&format!("{n} map keys of ints, one change"), &mut d);
    }
    for n in [1000] {
        let mut d = AutoCommit::new();
        for i in 0..n {
            d.put(ROOT, "k", i as i64).unwrap();
            d.commit();
        }
        check_loaded(&format!("{n} one-op changes, one key"), &mut d);
        let mut d = AutoCommit::new();
        for i in 0..n {
            d.put(ROOT, format!("k{i}"), i as i64).unwrap();
            d.commit();
        }
        check_loaded(&format!("{n} one-op changes, {n} keys"), &mut d);
    }
    let mut d = AutoCommit::new();
    let same = "x".repeat(1024);
    for i in 0..1000 {
        d.put(ROOT, format!("k{i}"), same.as_str()).unwrap();
    }
    check_loaded("1000 strings of 1 KB, alike", &mut d);
    let mut d = AutoCommit::new();
    let mut seed = 7;
    for i in 0..1000 {
        d.put(ROOT, format!("k{i}"), random_letters(&mut seed, 1024))
            .unwrap();
    }
    check_loaded("1000 strings of 1 KB, random", &mut d);
    let mut d = AutoCommit::new();
    let l = d.put_object(ROOT, "l", ObjType::List).unwrap();
    for i in 0..2000 {
        d.insert(&l, i, i as i64).unwrap();
    }
    check_loaded("list of 2000 ints", &mut d);
    for (n, fields) in [(1000, 5), (1000, 1), (100, 50), (20, 500), (10_000, 0)] {
        let mut d = AutoCommit::new();
        for i in 0..n {
            let m = d.put_object(ROOT, format!("m{i}"), ObjType::Map).unwrap();
            for j in 0..fields {
                d.put(&m, format!("f{j}"), j as i64).unwrap();
            }
        }
        check_loaded(&format!("{n} maps of {fields} fields"), &mut d);
    }
    let mut d = AutoCommit::new();
    let l = d.put_object(ROOT, "l", ObjType::List).unwrap();
    for i in 0..2000 {
        d.insert_object(&l, i, ObjType::Map).unwrap();
    }
    check_loaded("list of 2000 empty maps", &mut d);
    let mut d = AutoCommit::new();
    let mut obj = ROOT;
    for _ in 0..1000 {
        obj = d.put_object(&obj, "x", ObjType::Map).unwrap();
    }
    check_loaded("1000 maps nested", &mut d);
    let mut d = AutoCommit::new();
    let l = d.put_object(ROOT, "l", ObjType::List).unwrap();
    for i in 0..1000 {
        let t = d.insert_object(&l, i, ObjType::Text).unwrap();
        d.splice_text(&t, 0, 0, "hello there").unwrap();
        d.commit();
    }
    check_loaded("1000 texts in a list, 1000 changes", &mut d);
    let mut base = AutoCommit::new();
    base.put(ROOT, "x", 0).unwrap();
    base.commit();
    for a in 0..100 {
        let mut fork = base.fork();
        for c in 0..10 {
            fork.put(ROOT, format!("a{a}"), c as i64).unwrap();
            fork.commit();
        }
        base.merge(&mut fork).unwrap();
    }
    check_loaded("100 actors of 10 changes", &mut base);
    let mut d = AutoCommit::new();
    let t = d.put_object(ROOT, "t", ObjType::Text).unwrap();
    d.splice_text(&t, 0, 0, &text(10_000)).unwrap();
    d.commit();
    d.splice_text(&t, 0, 10_000, "").unwrap();
    check_loaded("text of 10000 chars, deleted", &mut d);
}

/// A loaded document of 100 changes, and the uncompressed length of its saved form.
fn loaded_base() -> (Automerge, usize) {
    let mut d = AutoCommit::new();
    for i in 0..100 {
        d.put(ROOT, "k", i as i64).unwrap();
        d.commit();
    }
    let saved = d.save();
    let doc = Automerge::load(&saved).unwrap();
    (doc, uncompressed_len(&saved))
}

/// `count` one-op changes on top of `doc`, made elsewhere.
fn remote_changes(doc: &Automerge, count: usize) -> Vec<Change> {
    let mut other = doc.fork();
    for i in 0..count {
        let mut tx = other.transaction();
        tx.put(ROOT, format!("n{i}"), i as i64).unwrap();
        tx.commit();
    }
    other.get_changes(&doc.get_heads())
}

fn raw_len(changes: &[Change]) -> usize {
    changes.iter().map(|c| c.raw_bytes().len()).sum()
}

/// Checks the estimate of a document grown in memory from `data` bytes of data.
fn check_grown(name: &str, doc: Automerge, data: usize) {
    let stats = doc.stats();
    check(name, &stats, estimate(data, &stats), held(doc));
}

/// Makes one local change with `f`; returns its raw length.
fn local_change(
    doc: &mut Automerge,
    f: impl FnOnce(&mut automerge::transaction::Transaction),
) -> usize {
    let mut tx = doc.transaction();
    f(&mut tx);
    let (hash, _) = tx.commit();
    let hash = hash.expect("a change");
    doc.get_change_by_hash(&hash)
        .map_or(0, |c| c.raw_bytes().len())
}

/// As the cache keeps it up to date: a loaded document's data grows by the raw bytes of
/// each change applied, and its stats are read again.
#[test]
fn the_estimate_covers_documents_grown_in_memory() {
    let (mut doc, mut data) = loaded_base();
    let changes = remote_changes(&doc, 1000);
    data += raw_len(&changes);
    doc.apply_changes(changes).unwrap();
    check_grown("1000 changes applied in one batch", doc, data);

    let (mut doc, mut data) = loaded_base();
    for change in remote_changes(&doc, 300) {
        data += change.raw_bytes().len();
        doc.apply_changes([change]).unwrap();
    }
    check_grown("300 changes applied one by one", doc, data);

    let (mut doc, mut data) = loaded_base();
    for i in 0..1000 {
        data += local_change(&mut doc, |tx| {
            tx.put(ROOT, format!("n{i}"), i as i64).unwrap();
        });
    }
    check_grown("1000 local changes", doc, data);

    let (mut doc, mut data) = loaded_base();
    data += local_change(&mut doc, |tx| {
        let t = tx.put_object(ROOT, "t", ObjType::Text).unwrap();
        tx.splice_text(&t, 0, 0, &text(20_000)).unwrap();
    });
    check_grown("a local paste of 20000 chars", doc, data);
}

/// The vendored automerge's `Stats::num_objects` (vendor/automerge/PATCHED.md, item 5)
/// counts the objects a document indexes, the root excepted, also once loaded.
#[test]
fn stats_count_objects() {
    let mut d = AutoCommit::new();
    assert_eq!(d.stats().num_objects, 0);
    let m = d.put_object(ROOT, "m", ObjType::Map).unwrap();
    d.put_object(&m, "l", ObjType::List).unwrap();
    d.put_object(ROOT, "t", ObjType::Text).unwrap();
    d.put(ROOT, "n", 1).unwrap();
    assert_eq!(d.stats().num_objects, 3);
    let loaded = Automerge::load(&d.save()).unwrap();
    assert_eq!(loaded.stats().num_objects, 3);
}
