//! Automerge data from outside, mutated: a deterministic, fuzz-style test that runs in
//! `cargo test` (the cargo-fuzz targets in `fuzz/` need a nightly compiler). Valid data (a
//! saved document, compressed or not, changes raw and compressed, a document saved after
//! some heads, and an encoded sync message with changes) is mutated with a seeded generator
//! (bit flips, byte insertions and deletions, truncation, large LEB128 numbers spliced in
//! where lengths and run-length counts sit, repeated slices and chunks). Automerge refuses a
//! chunk whose checksum does not match, and a sender who means harm computes it: so most
//! inputs mutate the body of one chunk and seal it again with a valid header (length and
//! checksum), and those reach the column parsers. Each input goes the way a client's data
//! goes: the node's admission check (`concordant::limits::DataLimits`), then, if it
//! passes, Automerge within that budget (`load_incremental` for data to merge,
//! `receive_sync_message` and an answer for sync messages). Nothing may panic but at the
//! places listed in [`KNOWN_PANICS`] (found by this test, not fixed: see
//! `vendor/automerge/PATCHED.md`), nothing may take more than [`SLOW`], and the bytes this
//! thread holds at its peak during any one input stay under [`PEAK_LIMIT`] (a counting
//! global allocator: this test binary's own).
//!
//! Before each input, what it is (seed, iteration, mutations) is written to
//! `$CARGO_TARGET_TMPDIR/automerge_data_fuzz.last`, so an abort (an allocation that cannot
//! be served) still names the input.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use automerge::inflate_limit::with_inflate_limit;
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, Automerge, ObjType, ScalarValue, ROOT};
use concordant::limits::DataLimits;

#[path = "common/bomb.rs"]
mod bomb;
use bomb::{sleb_bytes, uleb_bytes};
#[path = "common/counting.rs"]
mod counting;

use counting::{peak_during, Counting};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes one input may make this thread hold at once, above what it held before
/// (the inputs here hold ~1.3 MB at most; before patch 7 of the vendored automerge, one
/// held 268 MB).
const PEAK_LIMIT: usize = 32 << 20;

/// Inputs per seed input (`AUTOMERGE_FUZZ_ITERATIONS` in the environment: more).
const ITERATIONS: usize = 400;

/// Where Automerge panics on data this test makes, found and not fixed yet (file:line of
/// the panic). A panic anywhere else fails the test. See the report in
/// `vendor/automerge/PATCHED.md` ("Panics on data from outside").
const KNOWN_PANICS: &[&str] = &[
    // Change chunks (sealed after mutation) applied in a batch: an actor, object or
    // sequence number the batch does not know.
    "vendor/automerge/src/op_set2/change/batch.rs:146",
    "vendor/automerge/src/op_set2/change/batch.rs:859",
    "vendor/automerge/src/op_set2/change/batch.rs:920",
    "vendor/automerge/src/op_set2/change/batch.rs:1121",
    "vendor/automerge/src/change_graph.rs:564",
    "vendor/automerge/src/change_graph.rs:569",
    // Document chunks: their change metadata or op columns.
    "vendor/automerge/src/change_graph.rs:1002",
    "vendor/automerge/src/change_graph.rs:1668",
    "vendor/automerge/src/op_set2/change/collector.rs:299",
    "vendor/automerge/src/op_set2/change.rs:282",
    // Document columns read by hexane (a dependency of automerge, not vendored).
    "hexane-1.0.0-alpha.5/src/raw.rs:622",
    "hexane-1.0.0-alpha.5/src/lib.rs:354",
];

thread_local! {
    /// Where the last panic on this thread happened.
    static PANICKED_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// This thread runs mutated inputs: its panics are recorded, not printed.
    static FUZZING: Cell<bool> = const { Cell::new(false) };
}

/// Records where the panics of fuzzing threads happen instead of printing them (other
/// threads' panics print as usual).
fn record_panics() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !FUZZING.with(Cell::get) {
            return print(info);
        }
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = PANICKED_AT.try_with(|p| *p.borrow_mut() = at);
    }));
}

/// True if a panic at `at` is a known one.
fn known(at: &str) -> bool {
    KNOWN_PANICS.iter().any(|k| at.ends_with(k))
}

/// The most time one input may take (debug build, shared machine: generous).
const SLOW: Duration = Duration::from_secs(5);

/// A small seeded generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A large number as Automerge would read a length or a count.
fn large_leb(rng: &mut Rng) -> Vec<u8> {
    const UNSIGNED: [u64; 6] = [1 << 20, 1 << 28, 1 << 31, 1 << 32, 1 << 40, u64::MAX];
    const SIGNED: [i64; 5] = [1 << 20, 1 << 30, 1 << 40, i64::MAX, i64::MIN];
    if rng.below(2) == 0 {
        uleb_bytes(UNSIGNED[rng.below(UNSIGNED.len())])
    } else {
        sleb_bytes(SIGNED[rng.below(SIGNED.len())])
    }
}

/// Applies one random mutation to `data`; returns its name for the report.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) -> String {
    let len = data.len();
    let at = if len == 0 { 0 } else { rng.below(len) };
    match rng.below(8) {
        0 if len > 0 => {
            let bit = rng.below(8);
            data[at] ^= 1 << bit;
            format!("flip bit {bit} of byte {at}")
        }
        1 => {
            let byte = rng.next() as u8;
            data.insert(at, byte);
            format!("insert {byte:#04x} at {at}")
        }
        2 if len > 0 => {
            let n = 1 + rng.below(8.min(len - at));
            data.drain(at..at + n);
            format!("delete {n} bytes at {at}")
        }
        3 => {
            data.truncate(at);
            format!("truncate to {at}")
        }
        4 => {
            let leb = large_leb(rng);
            let n = leb.len();
            if rng.below(2) == 0 {
                data.splice(at..at, leb);
                format!("insert LEB128 {n} bytes at {at}")
            } else {
                let end = (at + n).min(len);
                data.splice(at..end, leb);
                format!("overwrite with LEB128 {n} bytes at {at}")
            }
        }
        5 if len > 0 => {
            let end = at + 1 + rng.below(64.min(len - at));
            let slice = data[at..end].to_vec();
            let times = 1 + rng.below(4);
            for _ in 0..times {
                data.splice(end..end, slice.iter().copied());
            }
            format!("repeat {at}..{end} {times} times")
        }
        6 => {
            let copy = data.clone();
            data.extend_from_slice(&copy);
            "append the whole input again".to_string()
        }
        _ if len > 0 => {
            const SPECIAL: [u8; 5] = [0x00, 0x7f, 0x80, 0xff, 0x01];
            let byte = SPECIAL[rng.below(SPECIAL.len())];
            data[at] = byte;
            format!("set byte {at} to {byte:#04x}")
        }
        _ => "nothing (empty input)".to_string(),
    }
}

/// The magic bytes that start every Automerge chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// One chunk of Automerge data: its type and its body.
struct Chunk {
    kind: u8,
    body: Vec<u8>,
}

/// Reads an unsigned LEB128 at the start of `data`: the number and its length.
fn read_uleb(data: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    for (i, byte) in data.iter().enumerate().take(10) {
        n |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

/// Splits valid Automerge data into its chunks.
fn chunks(mut data: &[u8]) -> Vec<Chunk> {
    let mut list = Vec::new();
    while data.len() > 9 && data[..4] == MAGIC {
        let kind = data[8];
        let Some((len, leb)) = read_uleb(&data[9..]) else {
            break;
        };
        let start = 9 + leb;
        let Some(end) = usize::try_from(len).ok().and_then(|l| start.checked_add(l)) else {
            break;
        };
        let Some(body) = data.get(start..end) else {
            break;
        };
        list.push(Chunk {
            kind,
            body: body.to_vec(),
        });
        data = &data[end..];
    }
    list
}

/// A chunk with a valid header: magic bytes, checksum (the first 4 bytes of the SHA-256 of
/// type, length and body), type, length.
fn seal(chunk: &Chunk) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut typed = vec![chunk.kind];
    typed.extend(uleb_bytes(chunk.body.len() as u64));
    let hash = Sha256::new()
        .chain_update(&typed)
        .chain_update(&chunk.body)
        .finalize();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&hash[..4]);
    out.extend(typed);
    out.extend_from_slice(&chunk.body);
    out
}

/// Mutates `data` 1 to 4 times: most often inside the body of one of its chunks, sealed
/// again; else its bytes as they are. Returns what was done.
fn mutate_data(rng: &mut Rng, data: &[u8]) -> (Vec<u8>, Vec<String>) {
    let mut list = chunks(data);
    let times = 1 + rng.below(4);
    if list.is_empty() || rng.below(4) == 0 {
        let mut out = data.to_vec();
        let done = (0..times).map(|_| mutate(rng, &mut out)).collect();
        return (out, done);
    }
    let which = rng.below(list.len());
    let mut done: Vec<String> = (0..times)
        .map(|_| mutate(rng, &mut list[which].body))
        .collect();
    done.push(format!("sealed chunk {which} (type {})", list[which].kind));
    if rng.below(8) == 0 {
        let copies = 1 + rng.below(100);
        for _ in 0..copies {
            list.push(Chunk {
                kind: list[which].kind,
                body: list[which].body.clone(),
            });
        }
        done.push(format!("chunk {which} repeated {copies} times"));
    }
    (list.iter().flat_map(seal).collect(), done)
}

/// Mutates an encoded sync message: most often the change chunks it carries (see
/// [`mutate_data`]), re-encoded; else its bytes as they are.
fn mutate_sync(rng: &mut Rng, encoded: &[u8]) -> (Vec<u8>, Vec<String>) {
    let message = sync::Message::decode(encoded).ok();
    match message {
        Some(mut message) if rng.below(4) != 0 && message.changes.iter().len() > 0 => {
            let mut chunks: Vec<Vec<u8>> = message.changes.iter().map(<[u8]>::to_vec).collect();
            let which = rng.below(chunks.len());
            let (mutated, mut done) = mutate_data(rng, &chunks[which]);
            chunks[which] = mutated;
            done.push(format!("in change chunk {which} of the message"));
            message.changes = chunks.into();
            (message.encode(), done)
        }
        _ => {
            let mut out = encoded.to_vec();
            let done = (0..1 + rng.below(4))
                .map(|_| mutate(rng, &mut out))
                .collect();
            (out, done)
        }
    }
}

/// A document with some of everything: text long enough for compressed columns, map
/// values of every scalar type, a list, nested objects, two actors.
fn sample_doc() -> AutoCommit {
    let mut doc = AutoCommit::new();
    let text = doc.put_object(ROOT, "text", ObjType::Text).unwrap();
    let words: String = (0..400).map(|i| format!("w{} ", i % 37)).collect();
    doc.splice_text(&text, 0, 0, &words).unwrap();
    doc.commit();
    let map = doc.put_object(ROOT, "map", ObjType::Map).unwrap();
    for i in 0..40 {
        let value = match i % 7 {
            0 => ScalarValue::Int(-(i as i64) * 1000),
            1 => ScalarValue::Uint(i as u64 * 7),
            2 => ScalarValue::F64(i as f64 / 3.0),
            3 => ScalarValue::Boolean(i % 2 == 0),
            4 => ScalarValue::Bytes(vec![i as u8; 20]),
            5 => ScalarValue::Counter((i as i64).into()),
            _ => ScalarValue::Str(format!("value {i}").into()),
        };
        doc.put(&map, format!("k{i}"), value).unwrap();
    }
    doc.commit();
    let list = doc.put_object(&map, "list", ObjType::List).unwrap();
    for i in 0..60 {
        doc.insert(&list, i, i as i64).unwrap();
    }
    let inner = doc.insert_object(&list, 0, ObjType::Map).unwrap();
    doc.put(&inner, "deep", "yes").unwrap();
    doc.commit();
    let mut other = doc.fork();
    other.put(ROOT, "other", "actor").unwrap();
    other.splice_text(&text, 5, 3, "XYZ").unwrap();
    other.commit();
    doc.merge(&mut other).unwrap();
    doc.delete(&list, 3).unwrap();
    doc.commit();
    doc
}

/// Valid data to merge (`POST /v1/docs/{id}/automerge`), by name.
fn data_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut doc = sample_doc();
    let mut small = AutoCommit::new();
    small.put(ROOT, "a", 1).unwrap();
    small.put(ROOT, "b", "two").unwrap();
    let heads = doc.get_heads();
    doc.put(ROOT, "after", 3).unwrap();
    doc.commit();
    let changes: Vec<automerge::Change> = doc.get_changes(&[]).into_iter().collect();
    let raw: Vec<u8> = changes
        .iter()
        .flat_map(|c| c.raw_bytes().to_vec())
        .collect();
    let compressed: Vec<u8> = changes
        .into_iter()
        .flat_map(|mut c| c.bytes().to_vec())
        .collect();
    vec![
        ("saved document", doc.save()),
        ("saved document, not compressed", doc.save_nocompress()),
        ("small saved document", small.save()),
        ("changes", raw),
        ("changes, compressed where large", compressed),
        ("saved after heads", doc.save_after(&heads)),
    ]
}

/// The document a sync message is received by, and an encoded message carrying changes to
/// it (the second message of a sync from the full document).
fn sync_input() -> (Automerge, Vec<u8>) {
    let full = Automerge::load(&sample_doc().save()).unwrap();
    let mut base = Automerge::new();
    base.apply_changes(full.get_changes(&[]).into_iter().take(2))
        .unwrap();
    let mut theirs = sync::State::new();
    let mut ours = sync::State::new();
    let receiver = base.clone();
    let hello = receiver
        .generate_sync_message(&mut ours)
        .expect("a first message");
    let mut sender = full.clone();
    sender.receive_sync_message(&mut theirs, hello).unwrap();
    let answer = sender
        .generate_sync_message(&mut theirs)
        .expect("an answer with changes");
    assert!(!answer.changes.is_empty(), "the message carries changes");
    (base, answer.encode())
}

/// What happened to one input.
enum Outcome {
    /// The node's check refused it.
    Refused,
    /// Automerge refused it (or it decoded to nothing).
    Failed,
    /// Automerge took it: changes loaded, or a sync message received.
    Applied,
}

/// Data to merge: the node's check, then `load_incremental` within the same budget.
fn run_data(limit: &DataLimits, input: &[u8]) -> Outcome {
    if limit.check_data(input).is_err() {
        return Outcome::Refused;
    }
    let budget = limit.budget(input.len());
    let loaded = with_inflate_limit(budget, || {
        let mut doc = Automerge::new();
        let loaded = doc.load_incremental(input);
        // Read what loaded, as the node does after a merge.
        let _ = doc.get_heads();
        let _ = doc.save();
        loaded
    });
    match loaded {
        Ok(Ok(n)) if n > 0 => Outcome::Applied,
        _ => Outcome::Failed,
    }
}

/// A sync message: the node's check, then receiving it and answering, within the budget.
fn run_sync(limit: &DataLimits, base: &Automerge, input: &[u8]) -> Outcome {
    if limit.check_sync(input).is_err() {
        return Outcome::Refused;
    }
    let Ok(msg) = sync::Message::decode(input) else {
        return Outcome::Failed;
    };
    let budget = limit.budget(input.len());
    let received = with_inflate_limit(budget, || {
        let mut doc = base.clone();
        let mut state = sync::State::new();
        let received = doc.receive_sync_message(&mut state, msg);
        if received.is_ok() {
            let _ = doc.generate_sync_message(&mut state);
        }
        received
    });
    match received {
        Ok(Ok(())) => Outcome::Applied,
        _ => Outcome::Failed,
    }
}

/// Notes the input about to run, so that an abort names it.
fn note(what: &str) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("automerge_data_fuzz.last");
    let _ = std::fs::write(path, what);
}

/// Keeps a failing input in `$CARGO_TARGET_TMPDIR/automerge_data_fuzz/`, to look into.
fn keep(seed: usize, iteration: usize, input: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("automerge_data_fuzz");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{seed}-{iteration}.bin")), input);
}

/// The tally of a run.
#[derive(Default)]
struct Tally {
    refused: usize,
    failed: usize,
    applied: usize,
    max_peak: usize,
    /// Known panics, by place.
    known: BTreeMap<String, usize>,
    /// What must not happen, described.
    failures: Vec<String>,
}

impl Tally {
    /// Counts one input's outcome (`Err`: it panicked).
    fn count(&mut self, outcome: Result<Outcome, String>, what: &str) -> bool {
        match outcome {
            Ok(Outcome::Refused) => self.refused += 1,
            Ok(Outcome::Failed) => self.failed += 1,
            Ok(Outcome::Applied) => self.applied += 1,
            Err(message) => {
                let at = PANICKED_AT.with(|p| p.borrow().clone());
                if !known(&at) {
                    self.failures
                        .push(format!("panic at {at} {message:?}: {what}"));
                    return false;
                }
                *self.known.entry(at).or_default() += 1;
            }
        }
        true
    }

    /// Checks one input's peak of memory and time.
    fn bounds(&mut self, peak: usize, took: Duration, what: &str) -> bool {
        self.max_peak = self.max_peak.max(peak);
        if took > SLOW {
            self.failures.push(format!("took {took:?}: {what}"));
        }
        if peak > PEAK_LIMIT {
            self.failures.push(format!("peak {peak} bytes: {what}"));
            return false;
        }
        true
    }
}

/// Runs one input (a sync message if `sync` is `Some`): its outcome (`Err`: the panic's
/// message), the most bytes held at once, and the time it took.
fn run_one(
    limit: &DataLimits,
    sync: Option<&Automerge>,
    input: &[u8],
) -> (Result<Outcome, String>, usize, Duration) {
    let began = Instant::now();
    let (outcome, peak) = peak_during(|| {
        catch_unwind(AssertUnwindSafe(|| match sync {
            Some(base) => run_sync(limit, base, input),
            None => run_data(limit, input),
        }))
    });
    let outcome = outcome.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    });
    (outcome, peak, began.elapsed())
}

#[test]
fn mutated_automerge_data_panics_only_where_known_and_stays_bounded() {
    let limit = DataLimits::default();
    let iterations = std::env::var("AUTOMERGE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ITERATIONS);
    let (sync_base, sync_message) = sync_input();
    let mut seeds: Vec<(&str, Vec<u8>)> = data_inputs();
    seeds.push(("sync message", sync_message));
    record_panics();
    FUZZING.with(|f| f.set(true));
    let mut tally = Tally::default();
    let start = Instant::now();
    for (seed_index, (name, seed)) in seeds.iter().enumerate() {
        let sync = (*name == "sync message").then_some(&sync_base);
        let mut rng = Rng(0x5eed_0000 + seed_index as u64 * 7919);
        for iteration in 0..iterations {
            let (input, mutations) = match sync {
                Some(_) => mutate_sync(&mut rng, seed),
                None => mutate_data(&mut rng, seed),
            };
            let what = format!(
                "{name} ({} bytes), iteration {iteration}: {}",
                input.len(),
                mutations.join("; ")
            );
            note(&what);
            let (outcome, peak, took) = run_one(&limit, sync, &input);
            let counted = tally.count(outcome, &what);
            if !(tally.bounds(peak, took, &what) && counted) {
                keep(seed_index, iteration, &input);
            }
        }
    }
    FUZZING.with(|f| f.set(false));
    println!(
        "{} inputs in {:?}: {} refused by the node's check, {} refused by Automerge, {} \
         applied; at most {} bytes held at once",
        seeds.len() * iterations,
        start.elapsed(),
        tally.refused,
        tally.failed,
        tally.applied,
        tally.max_peak
    );
    for (at, count) in &tally.known {
        println!("known panic at {at}: {count} inputs");
    }
    assert!(tally.failures.is_empty(), "{}", tally.failures.join("\n"));
}

/// A change whose key string declares 2^28 bytes and holds 4 (the column's length is
/// unchanged; the chunk is sealed with a valid checksum): Automerge refuses it without
/// allocating the declared length (vendor/automerge/PATCHED.md, item 6: before, it
/// allocated 268 MB first).
#[test]
fn a_string_longer_than_its_data_allocates_nothing_for_it() {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "qqqqqqqq", 1).unwrap();
    doc.commit();
    let raw = doc.get_changes(&[])[0].raw_bytes().to_vec();
    let mut list = chunks(&raw);
    assert_eq!(list.len(), 1);
    let key = [&[8u8][..], b"qqqqqqqq"].concat();
    let body = &mut list[0].body;
    let at = body
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .expect("the key's length and bytes");
    body[at..at + 5].copy_from_slice(&uleb_bytes(1 << 28));
    let input = seal(&list[0]);
    assert!(DataLimits::default().check_data(&input).is_ok());
    let (loaded, peak) = peak_during(|| Automerge::new().load_incremental(&input));
    assert!(loaded.is_err(), "{loaded:?}");
    assert!(peak < 1 << 20, "{peak} bytes held at once");
}

/// Up to `want` mutated inputs (data to merge, or sync messages if `sync`) that make
/// Automerge panic, from the same seeds as the test above.
fn panicking_inputs(sync: Option<&Automerge>, want: usize) -> Vec<Vec<u8>> {
    let limit = DataLimits::default();
    let seeds: Vec<Vec<u8>> = match sync {
        Some(_) => vec![sync_input().1],
        None => data_inputs().into_iter().map(|(_, d)| d).collect(),
    };
    let mut found = Vec::new();
    FUZZING.with(|f| f.set(true));
    for (i, seed) in seeds.iter().enumerate() {
        let mut rng = Rng(0x5eed_0000 + i as u64 * 7919);
        for _ in 0..ITERATIONS * 4 {
            if found.len() >= want {
                break;
            }
            let (input, _) = match sync {
                Some(_) => mutate_sync(&mut rng, seed),
                None => mutate_data(&mut rng, seed),
            };
            if run_one(&limit, sync, &input).0.is_err() {
                found.push(input);
            }
        }
    }
    FUZZING.with(|f| f.set(false));
    found
}

/// The node applies a client's data on a copy of the document with panics caught
/// (`core::untrusted`): every input above that makes Automerge panic is refused as bad
/// data by `Replica::merge` and by a client's sync message, the document is unchanged, and
/// the replica goes on working.
#[test]
fn the_node_refuses_data_that_makes_automerge_panic_and_keeps_working() {
    use concordant::core::{CoreConfig, Flood, Replica};
    record_panics();
    let data = panicking_inputs(None, 12);
    let (base, _) = sync_input();
    let messages = panicking_inputs(Some(&base), 4);
    assert!(
        !data.is_empty() && !messages.is_empty(),
        "panicking inputs exist"
    );
    let mut r = Replica::new("n1", [7; 16], Box::new(Flood), CoreConfig::default());
    r.merge(1, "d", &sample_doc().save()).unwrap();
    r.merge(1, "s", &base.save()).unwrap();
    let heads = |r: &Replica, doc: &str| r.doc(doc).unwrap().get_heads();
    let (before_d, before_s) = (heads(&r, "d"), heads(&r, "s"));
    // Panics caught on this thread are recorded, not printed, until the checks below.
    FUZZING.with(|f| f.set(true));
    let merged: Vec<String> = data
        .iter()
        .map(|input| format!("{:?}", r.merge(2, "d", input)))
        .collect();
    r.client_open(1);
    let synced: Vec<String> = messages
        .iter()
        .map(|input| {
            let answer = format!("{:?}", r.client_sync(3, 1, "s", input, false));
            r.client_close(1);
            r.client_open(1);
            answer
        })
        .collect();
    FUZZING.with(|f| f.set(false));
    // Whether an input panics can vary from run to run (Automerge's hash maps are seeded
    // at random): each is refused as bad data when it does, or taken as data when it
    // does not; it never escapes as a panic.
    let panicked = |a: &&String| a.contains("it panicked");
    for answer in &merged {
        assert!(
            answer.starts_with("Err(BadAutomergeData") || answer.starts_with("Ok("),
            "{answer}"
        );
    }
    for answer in &synced {
        assert!(
            answer.starts_with("Err(BadSync") || answer == "Ok(())",
            "{answer}"
        );
    }
    let refused = merged.iter().chain(&synced).filter(panicked).count();
    assert!(
        refused > 0,
        "no input made Automerge panic: {merged:?} {synced:?}"
    );
    if !merged
        .iter()
        .any(|a| a.starts_with("Ok((") && !a.starts_with("Ok((0"))
    {
        assert_eq!(heads(&r, "d"), before_d, "d unchanged");
    }
    if !synced.iter().any(|a| a == "Ok(())") {
        assert_eq!(heads(&r, "s"), before_s, "s unchanged");
    }
    let mut other = AutoCommit::new();
    other.put(ROOT, "after", 1).unwrap();
    assert_eq!(
        r.merge(4, "e", &other.save()).unwrap().0,
        1,
        "the replica works"
    );
    println!(
        "{refused} of {} inputs made Automerge panic here and were refused",
        data.len() + messages.len()
    );
}

/// A change chunk whose key counter does not fit Automerge's 32-bit op counter (found by
/// `fuzz/automerge_data`, minimized): Automerge 0.12 panicked while decoding its ops
/// (`OpId::new` unwraps), inside the node's own check; the vendored copy answers a decode
/// error (`vendor/automerge/PATCHED.md`, section 8), so the check passes it on and the
/// load refuses it.
#[test]
fn an_op_counter_out_of_range_is_a_decode_error_not_a_panic() {
    const DATA: [u8; 144] = [
        0x85, 0x6f, 0x4a, 0x83, 0x65, 0xc5, 0xdb, 0x53, 0x01, 0x85, 0x01, 0x00, 0x10, 0x0a, 0xbe,
        0x54, 0x8f, 0x91, 0x2c, 0x1d, 0x6f, 0x30, 0xb0, 0xd9, 0x99, 0x55, 0x48, 0x72, 0x6b, 0x01,
        0x01, 0xd3, 0xd8, 0x06, 0x00, 0x00, 0x0a, 0x01, 0x04, 0x02, 0x08, 0x11, 0x0a, 0x13, 0x0e,
        0x15, 0x10, 0x34, 0x02, 0x42, 0x0a, 0x56, 0x0a, 0x57, 0x09, 0x70, 0x02, 0x00, 0x03, 0x0a,
        0x00, 0x00, 0x03, 0x04, 0x01, 0x05, 0x03, 0x7f, 0x07, 0x00, 0x04, 0x03, 0x00, 0x00, 0x01,
        0x04, 0x00, 0x00, 0x01, 0x00, 0x03, 0x7e, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x0f, 0x7f, 0x75, 0x7d, 0x04, 0x6c, 0x69, 0x73, 0x74, 0x01, 0x6e, 0x05, 0x74, 0x69, 0x74,
        0x6c, 0x65, 0x00, 0x0a, 0x03, 0x0a, 0x32, 0x02, 0x01, 0x04, 0x03, 0x01, 0x7f, 0x04, 0x06,
        0x01, 0x01, 0x42, 0x01, 0xe1, 0x98, 0x2f, 0xab, 0xa4, 0x14, 0x51, 0xc5, 0x00, 0x02, 0x02,
        0x84, 0x6c, 0x6c, 0x6f, 0x78, 0x0d, 0x00, 0x85, 0x7f,
    ];
    assert_eq!(
        concordant::limits::DataLimits::default().check_data(&DATA),
        Ok(())
    );
    let decoded = automerge::Change::from_bytes(DATA.to_vec()).unwrap_err();
    assert!(
        decoded
            .to_string()
            .contains("counter or actor out of range"),
        "{decoded}"
    );
    assert!(automerge::Automerge::new().load_incremental(&DATA).is_err());
}

/// The fuzz target's seed inputs (`fuzz/seeds/automerge_data`, made with the JavaScript
/// Automerge) stay valid: each passes the node's check and loads (first byte even: merge
/// data; a lone change waits for its dependencies) or is received (odd: a sync message)
/// without error.
#[test]
fn fuzz_seeds_pass_the_check_and_load() {
    use automerge::sync::SyncDoc;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/automerge_data");
    let limits = concordant::limits::DataLimits::default();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let name = path.display();
        let (mode, data) = input.split_first().unwrap();
        if mode % 2 == 0 {
            assert_eq!(limits.check_data(data), Ok(()), "{name}");
            let mut doc = automerge::Automerge::new();
            // A change whose dependencies are missing loads as pending.
            doc.load_incremental(data)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            assert_eq!(limits.check_sync(data), Ok(()), "{name}");
            let msg = automerge::sync::Message::decode(data).unwrap();
            let mut doc = automerge::Automerge::new();
            let mut state = automerge::sync::State::new();
            doc.receive_sync_message(&mut state, msg)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} seeds in {}", dir.display());
}
