//! Real process death against `RedbStore`.
//!
//! Each parent test re-executes this test binary as a child (`--exact child_...`, with
//! `CONCORDANT_CRASH_CHILD=<dir>`) that writes to a store in a loop and prints
//! `ACK <doc> <n>` only after the append holding change `n` of `<doc>` returned Ok. After a
//! random 200-600 ms the parent kills the child with SIGKILL, reopens the store and checks
//! that every acknowledged change is there, in order, and that nothing is garbled. A few
//! rounds run over the same directory, so each child also restarts from a killed store.
//!
//! Change `n` of document `d` is the text `d:n:<padding>;`, so any stored state can be
//! checked against the only content it may have: changes `0..k` of each document, with
//! `k` at least the number acknowledged.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use concordant::storage::{Compaction, DocAppend, RedbStore, Store, StoredDoc};
use rand::Rng;

const CHILD_ENV: &str = "CONCORDANT_CRASH_CHILD";
const DOCS: [&str; 3] = ["alpha", "beta", "gamma"];
const ROUNDS: usize = 4;
/// A child stops by itself after this long, should its parent vanish.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// How long the parent waits for a child's first acknowledgement.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// The bytes of change `n` of `doc`.
fn change(doc: &str, n: u64) -> Vec<u8> {
    format!("{doc}:{n}:{};", "x".repeat((n % 40) as usize)).into_bytes()
}

/// The stand-in heads recorded with a document's first `n` changes.
fn heads_of(n: u64) -> [u8; 32] {
    let mut heads = [0; 32];
    heads[..8].copy_from_slice(&n.to_le_bytes());
    heads
}

/// Checks `doc` holds exactly changes `0..k` (snapshot first, then the log, each log entry
/// one whole change) and returns `k`.
fn verify(doc: &StoredDoc) -> u64 {
    let mut content = doc.snapshot.clone().unwrap_or_default();
    for entry in &doc.changes {
        let pieces = entry.iter().filter(|&&b| b == b';').count();
        assert!(
            pieces == 1 && entry.ends_with(b";"),
            "{}: log entry is not one change: {:?}",
            doc.id,
            String::from_utf8_lossy(entry)
        );
        content.extend_from_slice(entry);
    }
    let k = content.iter().filter(|&&b| b == b';').count() as u64;
    let expected: Vec<u8> = (0..k).flat_map(|n| change(&doc.id, n)).collect();
    assert!(content == expected, "{}: stored content is garbled", doc.id);
    k
}

/// The number of changes stored per document (verifying them), after a reopen.
fn stored_counts(dir: &Path) -> HashMap<String, u64> {
    let mut store = RedbStore::open(dir).expect("the store reopens after SIGKILL");
    let docs = store.load_all().expect("the store loads after SIGKILL");
    let reader = store.reader();
    let mut counts = HashMap::new();
    for doc in &docs {
        assert!(
            DOCS.contains(&doc.id.as_str()),
            "unexpected document {:?}",
            doc.id
        );
        let k = verify(doc);
        assert_eq!(store.log_len(&doc.id), doc.changes.len());
        // The index entry was written in the same commit as the changes.
        assert_eq!(
            reader.heads(&doc.id).expect("heads"),
            Some(vec![heads_of(k)])
        );
        counts.insert(doc.id.clone(), k);
    }
    counts
}

/// Child loop shared by both scenarios: appends batches and, if `compact_every` is set,
/// compacts a document whose log reached that length.
fn child_loop(dir: &Path, compact_every: Option<usize>) {
    let mut store = RedbStore::open(dir).expect("child opens the store");
    // Current content per document: snapshot bytes and the log entries since.
    let mut state: HashMap<String, (Vec<u8>, Vec<Vec<u8>>)> = HashMap::new();
    let mut next: HashMap<String, u64> = HashMap::new();
    for doc in store.load_all().expect("child loads the store") {
        next.insert(doc.id.clone(), verify(&doc));
        state.insert(doc.id, (doc.snapshot.unwrap_or_default(), doc.changes));
    }
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < CHILD_LIFETIME {
        i += 1;
        // Batches of 1..=3 changes for one to three documents.
        let mut batch = Vec::new();
        for (d, doc) in DOCS.iter().enumerate() {
            if d != 0 && (i + d).is_multiple_of(3) {
                continue;
            }
            let n = next.entry(doc.to_string()).or_insert(0);
            let changes: Vec<Vec<u8>> = (0..1 + (i + d) % 3)
                .map(|_| {
                    *n += 1;
                    change(doc, *n - 1)
                })
                .collect();
            // The "heads" of a document here: its change count, so the index can be checked.
            let heads = vec![heads_of(*n)];
            batch.push(DocAppend {
                doc: doc.to_string(),
                changes,
                heads,
            });
        }
        store.append(&batch).expect("append");
        for DocAppend { doc, changes, .. } in batch {
            let n = next[&doc];
            let log = &mut state.entry(doc.clone()).or_default().1;
            log.extend(changes.iter().cloned());
            for k in n - changes.len() as u64..n {
                if writeln!(out, "ACK {doc} {k}").is_err() {
                    return; // the parent is gone
                }
            }
        }
        if out.flush().is_err() {
            return;
        }
        let Some(every) = compact_every else { continue };
        let doc = DOCS[i % DOCS.len()];
        if store.log_len(doc) >= every {
            let (snapshot, log) = state.entry(doc.to_string()).or_default();
            // Keep the last 0..=2 changes out of the snapshot.
            let keep_n = (i % 3).min(log.len());
            let keep = log.split_off(log.len() - keep_n);
            for entry in log.drain(..) {
                snapshot.extend_from_slice(&entry);
            }
            store
                .compact(vec![Compaction {
                    doc: doc.to_string(),
                    snapshot: snapshot.clone(),
                    keep: keep.clone(),
                }])
                .expect("compact");
            *log = keep;
        }
    }
}

/// Child of [`appends_survive_sigkill`]; does nothing unless started by it.
#[test]
fn child_writer() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child_loop(Path::new(&dir), None);
    }
}

/// Child of [`compactions_survive_sigkill`]; does nothing unless started by it.
#[test]
fn child_compactor() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child_loop(Path::new(&dir), Some(6));
    }
}

/// Runs `child` over `dir` for a few rounds, killing it each time, and checks the store.
fn crash_rounds(child: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let exe = std::env::current_exe().unwrap();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut rng = rand::rng();
    for round in 0..ROUNDS {
        let stderr_path = tmp.path().join(format!("child-{round}.stderr"));
        let mut proc = Command::new(&exe)
            .args(["--exact", child, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let stdout = proc.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut round_last: HashMap<String, u64> = HashMap::new();
        let child_err = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let mut record = |line: &str| {
            let mut parts = line.split(' ');
            if parts.next() != Some("ACK") {
                return false; // test harness chatter
            }
            let (Some(doc), Some(Ok(n))) = (parts.next(), parts.next().map(str::parse::<u64>))
            else {
                panic!("bad child line {line:?}");
            };
            if let Some(last) = round_last.insert(doc.to_string(), n) {
                assert_eq!(n, last + 1, "ACK {doc} {n} out of order");
            }
            let count = acked.entry(doc.to_string()).or_insert(0);
            *count = (*count).max(n + 1);
            true
        };

        // Wait for the first acknowledgement, then let the child run a random while.
        let first_deadline = Instant::now() + FIRST_ACK_TIMEOUT;
        loop {
            let left = first_deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if record(&line) => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = proc.kill();
                    let _ = proc.wait();
                    panic!(
                        "round {round}: no ACK from the child ({e:?}); stderr:\n{}",
                        child_err()
                    );
                }
            }
        }
        let kill_at = Instant::now() + Duration::from_millis(rng.random_range(200..600));
        loop {
            let left = kill_at.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    record(&line);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "round {round}: the child stopped early; stderr:\n{}",
                        child_err()
                    )
                }
            }
        }
        proc.kill().unwrap(); // SIGKILL
        proc.wait().unwrap();
        // Everything the child printed before dying is an acknowledgement too.
        reader.join().unwrap();
        for line in rx.try_iter() {
            record(&line);
        }

        let stored = stored_counts(&dir);
        for (doc, &n) in &acked {
            let have = stored.get(doc).copied().unwrap_or(0);
            assert!(
                have >= n,
                "round {round}: {doc} acknowledged {n} changes, stored {have}"
            );
        }
    }
    assert!(acked.values().sum::<u64>() > 0);
}

/// Appends acknowledged before SIGKILL are all on disk, in order, ungarbled.
#[test]
fn appends_survive_sigkill() {
    crash_rounds("child_writer");
}

/// With compactions interleaved, SIGKILL at any instant loses nothing acknowledged.
#[test]
fn compactions_survive_sigkill() {
    crash_rounds("child_compactor");
}
