//! Unit tests of the reconciliation tree: exchanges between two indexes, hostile input,
//! pinned hashes.
use super::*;
use std::collections::BTreeMap;

/// A seeded xorshift64* generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A 28-character base58 id, the length of an automerge-repo document id.
    fn id(&mut self) -> String {
        const B58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
        (0..28).map(|_| B58[self.below(58)] as char).collect()
    }
}

/// What a reconciliation found and cost.
struct Run {
    /// doc → (A's digest, B's digest).
    found: BTreeMap<String, (Option<u64>, Option<u64>)>,
    messages: usize,
    bytes: usize,
}

fn fingerprint_bytes(nodes: &[(u32, u64)]) -> usize {
    1 + 12 * nodes.len()
}

fn answer_bytes(answer: &Answer) -> usize {
    match answer {
        Answer::Equal => 1,
        Answer::Fingerprints(_, nodes) => fingerprint_bytes(nodes),
        Answer::Buckets(buckets) => buckets
            .iter()
            .map(|(_, list)| 4 + list.iter().map(|(d, _)| d.len() + 8).sum::<usize>())
            .sum(),
    }
}

/// Runs the whole exchange, A opening, counting messages and approximate bytes (12 per
/// fingerprint node, 4 per bucket, id length + 8 per item, 1 per message header).
fn reconcile(a: &Index, b: &Index) -> Run {
    reconcile_masked(a, b, None)
}

/// [`reconcile`] of the partitions in `mask` only.
fn reconcile_masked(a: &Index, b: &Index, mask: Option<&PartitionSet>) -> Run {
    let sides = [a, b];
    let (level, nodes) = a.opening(mask);
    let (mut messages, mut bytes) = (1, fingerprint_bytes(&nodes));
    let mut received = Answer::Fingerprints(level, nodes);
    let mut responder = 1;
    loop {
        assert!(messages <= 6, "the exchange ends after the leaves");
        match received {
            Answer::Equal => {
                return Run {
                    found: BTreeMap::new(),
                    messages,
                    bytes,
                }
            }
            Answer::Fingerprints(level, nodes) => {
                received = sides[responder].answer(level, &nodes, mask);
                messages += 1;
                bytes += answer_bytes(&received);
                responder ^= 1;
            }
            Answer::Buckets(buckets) => {
                let found = sides[responder]
                    .diff(&buckets, mask)
                    .into_iter()
                    .map(|d| {
                        let pair = if responder == 0 {
                            (d.ours, d.theirs)
                        } else {
                            (d.theirs, d.ours)
                        };
                        (d.doc, pair)
                    })
                    .collect();
                return Run {
                    found,
                    messages,
                    bytes,
                };
            }
        }
    }
}

fn build(model: &BTreeMap<String, u64>) -> Index {
    let mut index = Index::new();
    for (doc, &digest) in model {
        index.set(doc, digest);
    }
    index
}

/// What differs between two models: doc → (A's digest, B's digest).
fn expected(
    a: &BTreeMap<String, u64>,
    b: &BTreeMap<String, u64>,
) -> BTreeMap<String, (Option<u64>, Option<u64>)> {
    a.keys()
        .chain(b.keys())
        .filter(|doc| a.get(*doc) != b.get(*doc))
        .map(|doc| (doc.clone(), (a.get(doc).copied(), b.get(doc).copied())))
        .collect()
}

fn random_model(rng: &mut Rng, n: usize) -> BTreeMap<String, u64> {
    (0..n).map(|_| (rng.id(), rng.next())).collect()
}

#[test]
fn equal_sets_take_one_opening_and_an_equal_answer() {
    let model = random_model(&mut Rng(7), 10_000);
    let (a, b) = (build(&model), build(&model));
    assert_eq!(a.root(), b.root());
    assert_ne!(a.root(), 0);
    let run = reconcile(&a, &b);
    assert!(run.found.is_empty());
    assert_eq!(run.messages, 2);
    println!("equal sets of 10,000: 2 messages, {} bytes", run.bytes);
    assert!(run.bytes <= 200, "{} bytes", run.bytes);
}

#[test]
fn random_differences_are_found_exactly() {
    let n = 20_000;
    for d in [1, 10, 500] {
        for seed in 1..=3 {
            let mut rng = Rng(0x5eed + seed);
            let a_model = random_model(&mut rng, n);
            let mut b_model = a_model.clone();
            // d differences: changed digests and documents of A's only (distinct
            // documents of A) and new documents of B's only.
            let mut docs: Vec<&String> = a_model.keys().collect();
            for i in 0..d {
                docs.swap(i, i + rng.below(n - i));
            }
            for (k, doc) in docs[..d].iter().enumerate() {
                match k % 3 {
                    0 => {
                        b_model.insert(doc.to_string(), rng.next());
                    }
                    1 => {
                        b_model.remove(*doc);
                    }
                    _ => {
                        b_model.insert(rng.id(), rng.next());
                    }
                }
            }
            let want = expected(&a_model, &b_model);
            assert_eq!(want.len(), d);
            let run = reconcile(&build(&a_model), &build(&b_model));
            assert_eq!(run.found, want, "d = {d}, seed {seed}");
            assert_eq!(run.messages, 5);
            if seed == 1 {
                println!(
                    "N = {n}, {} differences: {} messages, {} bytes",
                    want.len(),
                    run.messages,
                    run.bytes
                );
            }
        }
    }
}

#[test]
fn a_bucket_empty_on_one_side_is_found() {
    let (mut a, b) = (Index::new(), Index::new());
    a.set("only-a", 5);
    let run = reconcile(&a, &b);
    assert_eq!(run.found.len(), 1);
    assert_eq!(run.found["only-a"], (Some(5), None));
    // And the other way round (B answers the leaves with an empty bucket).
    let run = reconcile(&b, &a);
    assert_eq!(run.found["only-a"], (None, Some(5)));
    // Two documents of the same bucket, one per side.
    let (mut a, mut b) = (Index::new(), Index::new());
    let first = "doc-0".to_string();
    let second = (1..)
        .map(|i| format!("doc-{i}"))
        .find(|d| bucket_of(d) == bucket_of(&first))
        .unwrap();
    a.set(&first, 1);
    b.set(&second, 2);
    a.set("common", 3);
    b.set("common", 3);
    let found = reconcile(&a, &b).found;
    assert_eq!(found.len(), 2);
    assert_eq!(found[&first], (Some(1), None));
    assert_eq!(found[&second], (None, Some(2)));
}

#[test]
fn incremental_maintenance_equals_building_from_scratch() {
    for seed in 1..=8u64 {
        let mut rng = Rng(seed * 0x9e37_79b9);
        let pool: Vec<String> = (0..400).map(|i| format!("d{i}-{}", rng.next())).collect();
        let mut index = Index::new();
        let mut model = BTreeMap::new();
        for _ in 0..6_000 {
            let doc = &pool[rng.below(pool.len())];
            if rng.below(10) < 7 {
                let digest = rng.next() % 4;
                index.set(doc, digest);
                model.insert(doc.clone(), digest);
            } else {
                index.remove(doc);
                model.remove(doc);
            }
        }
        // The same set reached another way: shuffled order, detours through other
        // digests and documents that are removed again.
        let mut order: Vec<(&String, &u64)> = model.iter().collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut other = Index::new();
        for (doc, &digest) in &order {
            other.set(doc, digest ^ 1);
            other.set(&format!("gone-{doc}"), digest);
            other.set(doc, digest);
        }
        for (doc, _) in &order {
            other.remove(&format!("gone-{doc}"));
        }
        let scratch = build(&model);
        for candidate in [&index, &other] {
            assert_eq!(candidate.fps, scratch.fps, "seed {seed}");
            assert_eq!(candidate.len(), model.len());
            let mut items: Vec<(String, u64)> =
                candidate.iter().map(|(d, g)| (d.to_string(), g)).collect();
            items.sort();
            let want: Vec<(String, u64)> = model.iter().map(|(d, &g)| (d.clone(), g)).collect();
            assert_eq!(items, want);
            for (doc, &digest) in &model {
                assert_eq!(candidate.get(doc), Some(digest));
            }
        }
        assert_eq!(index.get("absent"), None);
        // Emptied again: the root is 0 and the buckets hold nothing.
        for doc in &pool {
            index.remove(doc);
        }
        assert_eq!((index.root(), index.len()), (0, 0));
        assert!(index.fps.iter().all(|l| l.iter().all(|&f| f == 0)));
        assert!(index.leaves.iter().all(|l| l.capacity() < 64));
    }
}

#[test]
fn bulk_extend_equals_setting_one_by_one() {
    for seed in 1..=6u64 {
        let mut rng = Rng(seed * 0x51_7cc1);
        // Odd seeds: some documents already indexed (even seeds: an empty index, which
        // extend fills without searching). The bulk adds new ones, replaces known ones,
        // repeats some (the last add wins), and includes ids long enough for a 2-byte
        // length.
        let mut one_by_one = Index::new();
        let mut bulk_into = Index::new();
        let mut known = vec![rng.id()];
        for _ in 0..300 * (seed % 2) {
            let (doc, digest) = (rng.id(), rng.next());
            one_by_one.set(&doc, digest);
            bulk_into.set(&doc, digest);
            known.push(doc);
        }
        let mut bulk = Bulk::default();
        for i in 0..3_000 {
            let doc = match rng.below(4) {
                0 => known[rng.below(known.len())].clone(),
                1 if i > 0 => format!("again-{}", rng.below(i)),
                2 => format!("{}-{}", "long".repeat(40), rng.next()),
                _ => rng.id(),
            };
            let digest = rng.next() % 3;
            one_by_one.set(&doc, digest);
            bulk.add(&doc, digest);
        }
        assert_eq!(bulk.len(), 3_000);
        bulk_into.extend(bulk);
        assert_eq!(bulk_into.fps, one_by_one.fps, "seed {seed}");
        assert_eq!(bulk_into.len(), one_by_one.len());
        let sorted = |index: &Index| {
            let mut items: Vec<(String, u64)> =
                index.iter().map(|(d, g)| (d.to_string(), g)).collect();
            items.sort();
            items
        };
        assert_eq!(sorted(&bulk_into), sorted(&one_by_one));
    }
}

#[test]
fn set_replaces_and_remove_of_an_absent_doc_does_nothing() {
    let mut index = Index::new();
    index.set("a", 1);
    let root = index.root();
    index.set("a", 2);
    assert_ne!(index.root(), root);
    assert_eq!((index.get("a"), index.len()), (Some(2), 1));
    index.set("a", 1);
    assert_eq!(index.root(), root);
    index.remove("b");
    assert_eq!((index.root(), index.len()), (root, 1));
    // Ids of any length and content, including the empty one and multi-byte lengths.
    let long = "é".repeat(5_000);
    for doc in ["", "\0", long.as_str()] {
        index.set(doc, 9);
        assert_eq!(index.get(doc), Some(9));
    }
    assert_eq!(index.len(), 4);
    assert!(index.iter().any(|(d, g)| d == long && g == 9));
    index.remove(&long);
    assert_eq!((index.get(&long), index.len()), (None, 3));
}

#[test]
fn hostile_input_does_not_panic_and_is_bounded() {
    let mut rng = Rng(99);
    let index = build(&random_model(&mut rng, 2_000));
    assert_eq!(index.answer(9, &[(0, 1)], None), Answer::Equal);
    assert_eq!(index.answer(255, &[(u32::MAX, 1)], None), Answer::Equal);
    for level in 0..=LEAF_LEVEL {
        assert_eq!(index.answer(level, &[], None), Answer::Equal);
        assert_eq!(index.answer(level, &[(1 << 31, 1)], None), Answer::Equal);
        assert_eq!(index.answer(level, &[(u32::MAX, 1)], None), Answer::Equal);
    }
    // Level 0 is the root: a wrong root gets the 16 level-1 fingerprints.
    let Answer::Fingerprints(1, nodes) = index.answer(0, &[(0, 1)], None) else {
        panic!("root differs")
    };
    assert_eq!(nodes, index.opening(None).1);
    // Repeated or descending nodes are answered once.
    let Answer::Fingerprints(4, nodes) = index.answer(3, &vec![(7, 1); 100_000], None) else {
        panic!("node differs")
    };
    assert_eq!(nodes.len(), 16);
    let Answer::Buckets(buckets) = index.answer(4, &[(9, 1), (9, 1), (3, 1), (10, 1)], None) else {
        panic!("buckets differ")
    };
    assert_eq!(buckets.iter().map(|b| b.0).collect::<Vec<_>>(), [9, 10]);
    // diff: empty, out of range, repeated, misplaced and duplicated docs.
    assert!(index.diff(&[], None).is_empty());
    assert!(index
        .diff(&[(1 << 31, vec![("x".into(), 1)])], None)
        .is_empty());
    assert!(index.diff(&[(u32::MAX, vec![])], None).is_empty());
    let (doc, digest) = index.iter().next().unwrap();
    let b = bucket_of(doc);
    let mine: Vec<(String, u64)> = items(&index.leaves[b as usize])
        .map(|(d, g)| (d.to_string(), g))
        .collect();
    assert!(index.diff(&[(b, mine.clone())], None).is_empty());
    let wrong_bucket = (b + 1) % BUCKETS as u32;
    let mut misplaced = items(&index.leaves[wrong_bucket as usize])
        .map(|(d, g)| (d.to_string(), g))
        .collect::<Vec<_>>();
    misplaced.extend(mine.iter().cloned());
    let found = index.diff(&[(wrong_bucket, misplaced)], None);
    assert!(found.is_empty(), "docs of bucket {b} listed under another");
    let mut twice = mine.clone();
    twice.push((doc.to_string(), digest ^ 1));
    twice.push((doc.to_string(), digest ^ 1));
    assert!(
        index.diff(&[(b, twice)], None).is_empty(),
        "the first listing counts"
    );
    // Only the first listing of a bucket counts (an empty one here).
    let found = index.diff(&[(b, vec![]), (b, mine.clone()), (0, mine.clone())], None);
    assert_eq!(found.len(), mine.len());
    assert!(found.iter().all(|d| d.ours.is_some() && d.theirs.is_none()));
}

#[test]
fn corrupt_packed_bytes_end_iteration_without_panic() {
    let mut leaf = Vec::new();
    push_entry(&mut leaf, b"abc", 7);
    for cut in 0..leaf.len() {
        assert_eq!(entries(&leaf[..cut]).count(), 0);
    }
    assert_eq!(entries(&[0xff; 20]).count(), 0);
    assert_eq!(items(&leaf).collect::<Vec<_>>(), [("abc", 7)]);
}

#[test]
fn hashes_are_stable() {
    // Published FNV-1a 64 and splitmix64 test vectors.
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    assert_eq!(mix(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
    // Pinned (computed independently): changing these changes every replica's tree,
    // so replicas of different versions would never agree.
    assert_eq!(bucket_of(""), 62762);
    assert_eq!(bucket_of("doc-1"), 61459);
    assert_eq!(bucket_of("2DrjgbFdhNiSFCWQ4cyvxAzsYkTW"), 49566);
    assert_eq!(item_hash(id_hash("doc-1"), 42), 0xa066_afcf_d064_f0e8);
    assert_eq!(item_hash(id_hash("doc-1"), 0), 0x01d1_9c26_4c33_8d28);
}

/// Memory, time and one difference at 1,000,000 documents (ignored: slow in a debug
/// build; `cargo test --lib reconcile -- --ignored --nocapture`). The commit message
/// has release-build numbers measured with a counting allocator.
#[test]
#[ignore]
fn million_documents() {
    let mut rng = Rng(1);
    let n = 1_000_000;
    let docs: Vec<(String, u64)> = (0..n).map(|_| (rng.id(), rng.next())).collect();
    let mut a = Index::new();
    let empty = a.heap_bytes();
    let start = std::time::Instant::now();
    for (doc, digest) in &docs {
        a.set(doc, *digest);
    }
    let took = start.elapsed();
    let per_doc = (a.heap_bytes() - empty) as f64 / n as f64;
    println!("{n} sets in {took:?}; {empty} bytes empty, then {per_doc:.1} bytes per document");
    assert!(per_doc < 48.0, "28-byte ids packed with their digests");
    let start = std::time::Instant::now();
    let mut bulk = Bulk::default();
    for (doc, digest) in &docs {
        bulk.add(doc, *digest);
    }
    let added = start.elapsed();
    let mut b = Index::new();
    b.extend(bulk);
    let took = start.elapsed();
    println!("the same in bulk: {took:?} ({added:?} adding, then extend)");
    assert_eq!(b.root(), a.root());
    b.set(&docs[n / 2].0, 0);
    let run = reconcile(&a, &b);
    assert_eq!(run.found.len(), 1);
    println!(
        "1 difference: {} messages, {} bytes",
        run.messages, run.bytes
    );
    assert!(run.bytes < 2_000);
}

/// The root (a node's fingerprint) is a function of the set alone: the same whatever the
/// order of insertion, replacements and removals that led to it, set one by one or in
/// bulk; and any one difference (a document more, a document less, another digest)
/// changes it.
#[test]
fn the_root_is_the_set_and_any_difference_changes_it() {
    let mut rng = Rng(11);
    let model = random_model(&mut rng, 2_000);
    let forward = build(&model);
    let mut backward = Index::new();
    for (doc, &digest) in model.iter().rev() {
        backward.set(doc, digest);
    }
    // Other digests first, documents that end up removed, then the final set.
    let mut churned = Index::new();
    let extra = random_model(&mut rng, 300);
    for (doc, &digest) in model.iter().chain(&extra) {
        churned.set(doc, !digest);
    }
    for (doc, &digest) in &model {
        churned.set(doc, digest);
    }
    for doc in extra.keys() {
        churned.remove(doc);
    }
    let mut bulk = Bulk::default();
    for (doc, &digest) in model.iter().rev() {
        bulk.add(doc, digest);
    }
    let mut bulked = Index::new();
    bulked.extend(bulk);
    let root = forward.root();
    assert_ne!(root, Index::new().root());
    assert_eq!(backward.root(), root);
    assert_eq!(churned.root(), root);
    assert_eq!(bulked.root(), root);

    let mut index = forward;
    for (doc, &digest) in model.iter().step_by(40) {
        index.remove(doc);
        assert_ne!(index.root(), root, "{doc} removed");
        index.set(doc, digest ^ 1);
        assert_ne!(index.root(), root, "{doc} with another digest");
        index.set(doc, digest);
        assert_eq!(index.root(), root, "{doc} restored");
    }
    for doc in extra.keys().take(50) {
        index.set(doc, 0);
        assert_ne!(index.root(), root, "{doc} added");
        index.remove(doc);
        assert_eq!(index.root(), root);
    }
}

#[test]
fn a_partition_is_a_run_of_buckets() {
    for i in 0..20_000 {
        let doc = format!("doc-{i}");
        let p = crate::placement::partition_of(&doc, PARTITIONS);
        assert_eq!(
            usize::from(p.0),
            bucket_of(&doc) as usize / BUCKETS_PER_PARTITION,
            "{doc}"
        );
    }
}

#[test]
fn masked_reconciliation_finds_the_differences_of_the_shared_partitions_only() {
    let mut rng = Rng(23);
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    for i in 0..5_000 {
        let doc = format!("d{i}");
        let digest = rng.next();
        a.insert(doc.clone(), digest);
        match rng.below(10) {
            0 => {}
            1 => {
                b.insert(doc, digest ^ 1);
            }
            _ => {
                b.insert(doc, digest);
            }
        }
    }
    let mut mask = PartitionSet::empty();
    for p in (0..PARTITIONS).filter(|p| p % 3 == 0) {
        mask.insert(Partition(p));
    }
    let in_mask = |doc: &str| mask.contains(crate::placement::partition_of(doc, PARTITIONS));
    let want: BTreeMap<_, _> = expected(&a, &b)
        .into_iter()
        .filter(|(doc, _)| in_mask(doc))
        .collect();
    assert!(want.len() > 100, "{}", want.len());
    let (ia, ib) = (build(&a), build(&b));
    assert_eq!(reconcile_masked(&ia, &ib, Some(&mask)).found, want);
    // Sets that differ only outside the mask are equal within it: one round trip.
    let b_masked: BTreeMap<String, u64> = a
        .iter()
        .filter(|(doc, _)| in_mask(doc))
        .map(|(d, g)| (d.clone(), *g))
        .chain(
            b.iter()
                .filter(|(d, _)| !in_mask(d))
                .map(|(d, g)| (d.clone(), *g)),
        )
        .collect();
    let run = reconcile_masked(&ia, &build(&b_masked), Some(&mask));
    assert!(run.found.is_empty());
    assert_eq!(run.messages, 2);
    // An empty mask compares nothing.
    assert!(reconcile_masked(&ia, &ib, Some(&PartitionSet::empty()))
        .found
        .is_empty());
}
