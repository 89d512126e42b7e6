//! A Jepsen-style set + counter checker, pure: it knows nothing of nodes, only of what
//! tests tell it, so in-process tests and process tests (states fetched over HTTP) share it.
//!
//! Owns: [`History`] (every write attempted, with its effects and whether and when it was
//! acknowledged; when each write became visible on each node), [`ReplicaState`] (what a
//! replica holds at the end: per document its heads and JSON), [`check`] and its
//! [`Verdict`], and [`Visibility`] (time until visible everywhere, per acknowledged write).
//!
//! # Model
//! A write is one atomic change made of [`Effect`]s:
//! - [`Effect::Add`]: a unique element key set in a map of a document (a grow-only set).
//!   Every acknowledged add must be on every replica with its value, or it is **lost**.
//! - [`Effect::Incr`]: an increment of an Automerge counter. Counters start at 0 (create
//!   each counter once, on one node, and let it replicate before incrementing it: counters
//!   created concurrently on two nodes conflict and one of them wins). Every replica's
//!   counter must lie between the sum of acknowledged increments and that sum plus the
//!   increments of writes that were attempted but not acknowledged (they may or may not
//!   have landed); otherwise it is a **counter mismatch**.
//!
//! A write is recorded with [`History::begin`] before it is sent, then [`History::ack`]
//! once acknowledged, or [`History::refuse`] if it was definitely refused (it changed
//! nothing: it must not show up anywhere). A write left neither acknowledged nor refused
//! is *uncertain* (a timeout, a crash mid-request).
//!
//! Replicas **diverge** when their document sets, heads or JSON differ.
//!
//! Visibility: tests poll replicas and call [`History::observe`] with a node's document
//! JSON; a write becomes visible on that node once all its adds are there (writes without
//! adds are not measured). [`History::visibility`] gives p50/p99/max of the time from
//! acknowledgement until visible on every given node.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A [`History`] shared by concurrent writer tasks.
pub type SharedHistory = Arc<Mutex<History>>;

/// A new, empty [`SharedHistory`].
pub fn shared_history() -> SharedHistory {
    Arc::new(Mutex::new(History::default()))
}

/// One effect of a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Sets the unique `key` to `value` in the map at `map` (a path of map keys from the
    /// document root) of `doc`.
    Add {
        /// Document id.
        doc: String,
        /// Path of the map (map keys from the root).
        map: Vec<String>,
        /// The element: unique over the whole history.
        key: String,
        /// Its value.
        value: Value,
    },
    /// Increments the counter at `counter` (a path of map keys) of `doc` by `by`.
    Incr {
        /// Document id.
        doc: String,
        /// Path of the counter (map keys from the root).
        counter: Vec<String>,
        /// The increment (may be negative).
        by: i64,
    },
}

impl Effect {
    /// An add of `key` = `value` to the map at `map` of `doc`.
    pub fn add(doc: &str, map: &[&str], key: &str, value: Value) -> Effect {
        Effect::Add {
            doc: doc.to_string(),
            map: map.iter().map(|s| s.to_string()).collect(),
            key: key.to_string(),
            value,
        }
    }

    /// An increment by `by` of the counter at `counter` of `doc`.
    pub fn incr(doc: &str, counter: &[&str], by: i64) -> Effect {
        Effect::Incr {
            doc: doc.to_string(),
            counter: counter.iter().map(|s| s.to_string()).collect(),
            by,
        }
    }

    /// The document this effect writes to.
    pub fn doc(&self) -> &str {
        match self {
            Effect::Add { doc, .. } | Effect::Incr { doc, .. } => doc,
        }
    }

    /// The effect as one JSON op of the HTTP API (`set` or `inc`).
    pub fn to_op(&self) -> Value {
        match self {
            Effect::Add {
                map, key, value, ..
            } => {
                let mut path = map.clone();
                path.push(key.clone());
                json!({"op": "set", "path": path, "value": value})
            }
            Effect::Incr { counter, by, .. } => json!({"op": "inc", "path": counter, "by": by}),
        }
    }
}

/// The JSON ops of a write made of `effects` (all to the same document).
pub fn ops_of(effects: &[Effect]) -> Value {
    Value::Array(effects.iter().map(Effect::to_op).collect())
}

/// Identifies a write in its [`History`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteId(pub usize);

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent, no answer (yet): it may or may not have landed.
    Uncertain,
    /// Acknowledged at this time.
    Acked(Instant),
    /// Definitely refused: it changed nothing.
    Refused,
}

/// One write of the history.
#[derive(Debug, Clone)]
pub struct Write {
    /// The node it was sent to.
    pub node: String,
    /// Its effects, applied as one change.
    pub effects: Vec<Effect>,
    /// When it was sent.
    pub started: Instant,
    /// What became of it.
    pub outcome: Outcome,
    /// When it was first seen on each node (only writes with adds).
    pub seen: BTreeMap<String, Instant>,
}

impl Write {
    /// Whether it was acknowledged.
    pub fn is_acked(&self) -> bool {
        matches!(self.outcome, Outcome::Acked(_))
    }

    fn adds(&self) -> impl Iterator<Item = (&[String], &str, &Value)> {
        self.effects.iter().filter_map(|e| match e {
            Effect::Add {
                map, key, value, ..
            } => Some((map.as_slice(), key.as_str(), value)),
            Effect::Incr { .. } => None,
        })
    }
}

/// Every write of a test run.
#[derive(Debug, Default, Clone)]
pub struct History {
    writes: Vec<Write>,
    /// Writes with adds, by document (for [`History::observe`]).
    by_doc: HashMap<String, Vec<usize>>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Records a write about to be sent to `node`.
    pub fn begin(&mut self, node: &str, effects: Vec<Effect>) -> WriteId {
        let id = self.writes.len();
        let mut docs: BTreeSet<&str> = BTreeSet::new();
        for e in &effects {
            if matches!(e, Effect::Add { .. }) {
                docs.insert(e.doc());
            }
        }
        for doc in docs {
            self.by_doc.entry(doc.to_string()).or_default().push(id);
        }
        self.writes.push(Write {
            node: node.to_string(),
            effects,
            started: Instant::now(),
            outcome: Outcome::Uncertain,
            seen: BTreeMap::new(),
        });
        WriteId(id)
    }

    /// Records that write `id` was acknowledged (now).
    pub fn ack(&mut self, id: WriteId) {
        self.writes[id.0].outcome = Outcome::Acked(Instant::now());
    }

    /// Records that write `id` was definitely refused (it changed nothing).
    pub fn refuse(&mut self, id: WriteId) {
        self.writes[id.0].outcome = Outcome::Refused;
    }

    /// Every write, in the order they were begun.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Number of writes begun.
    pub fn attempted(&self) -> usize {
        self.writes.len()
    }

    /// Number of writes acknowledged.
    pub fn acked(&self) -> usize {
        self.writes.iter().filter(|w| w.is_acked()).count()
    }

    /// Number of writes neither acknowledged nor refused.
    pub fn uncertain(&self) -> usize {
        self.writes
            .iter()
            .filter(|w| w.outcome == Outcome::Uncertain)
            .count()
    }

    /// Records, as of now, which writes to `doc` are visible on `node` given the
    /// document's JSON there.
    pub fn observe(&mut self, node: &str, doc: &str, json: &Value) {
        self.observe_at(node, doc, json, Instant::now());
    }

    /// Like [`History::observe`], with the time the JSON was read.
    pub fn observe_at(&mut self, node: &str, doc: &str, json: &Value, at: Instant) {
        let Some(ids) = self.by_doc.get(doc) else {
            return;
        };
        for &id in ids {
            let w = &mut self.writes[id];
            if w.seen.contains_key(node) {
                continue;
            }
            let visible = w.effects.iter().all(|e| match e {
                Effect::Add {
                    doc: d,
                    map,
                    key,
                    value,
                } => d != doc || lookup(json, map).and_then(|m| m.get(key)) == Some(value),
                Effect::Incr { .. } => true,
            });
            if visible {
                w.seen.insert(node.to_string(), at);
            }
        }
    }

    /// Time from acknowledgement until visible on every node of `nodes`, over the
    /// acknowledged writes with adds.
    pub fn visibility(&self, nodes: &[String]) -> Visibility {
        let mut times = Vec::new();
        let mut unseen = 0;
        for w in &self.writes {
            let Outcome::Acked(acked) = w.outcome else {
                continue;
            };
            if w.adds().next().is_none() {
                continue;
            }
            let last = nodes
                .iter()
                .map(|n| w.seen.get(n))
                .collect::<Option<Vec<_>>>();
            match last.and_then(|v| v.into_iter().max().copied()) {
                Some(at) => times.push(at.saturating_duration_since(acked)),
                None => unseen += 1,
            }
        }
        times.sort();
        Visibility {
            measured: times.len(),
            unseen,
            p50: percentile(&times, 0.50),
            p99: percentile(&times, 0.99),
            max: times.last().copied().unwrap_or_default(),
        }
    }
}

/// The value at `path` (map keys from the root) of a JSON document.
fn lookup<'a>(json: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(json, |v, k| v.get(k))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Time until visible everywhere, over the acknowledged writes that have adds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Visibility {
    /// Writes seen on every node.
    pub measured: usize,
    /// Writes never observed on every node (polling missed them, or they are lost).
    pub unseen: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
}

impl fmt::Display for Visibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "time until visible everywhere over {} writes: p50 {:?}, p99 {:?}, max {:?}",
            self.measured, self.p50, self.p99, self.max
        )?;
        if self.unseen > 0 {
            write!(f, " ({} writes never observed everywhere)", self.unseen)?;
        }
        Ok(())
    }
}

/// One document of a replica at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct DocState {
    /// Heads, hex-encoded, sorted.
    pub heads: Vec<String>,
    /// The document as plain JSON.
    pub json: Value,
}

/// What one replica holds at the end of a run.
#[derive(Debug, Clone)]
pub struct ReplicaState {
    /// Node id.
    pub node: String,
    /// Every document, by id.
    pub docs: BTreeMap<String, DocState>,
}

impl ReplicaState {
    /// A replica state; heads are sorted here.
    pub fn new(node: &str, docs: impl IntoIterator<Item = (String, Vec<String>, Value)>) -> Self {
        let docs = docs
            .into_iter()
            .map(|(doc, mut heads, json)| {
                heads.sort();
                (doc, DocState { heads, json })
            })
            .collect();
        ReplicaState {
            node: node.to_string(),
            docs,
        }
    }

    /// The value under `key` of the map at `map` in `doc`, if this replica has it.
    pub fn added(&self, doc: &str, map: &[String], key: &str) -> Option<&Value> {
        self.docs
            .get(doc)
            .and_then(|d| lookup(&d.json, map))
            .and_then(|m| m.get(key))
    }
}

/// An acknowledged (or refused) add that a replica does not hold as it should.
#[derive(Debug, Clone)]
pub struct LostWrite {
    /// The write.
    pub write: WriteId,
    /// The node the write was sent to.
    pub origin: String,
    /// The replica.
    pub replica: String,
    /// What is wrong.
    pub what: String,
}

/// A counter outside the range its increments allow.
#[derive(Debug, Clone)]
pub struct CounterMismatch {
    /// The replica.
    pub replica: String,
    /// Document id.
    pub doc: String,
    /// Counter path.
    pub counter: Vec<String>,
    /// What the replica holds (`None`: missing or not an integer).
    pub value: Option<i64>,
    /// The smallest allowed value (acknowledged sum plus negative uncertain increments).
    pub min: i64,
    /// The largest allowed value (acknowledged sum plus positive uncertain increments).
    pub max: i64,
}

/// A replica whose document differs from the first replica's.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// The replica.
    pub replica: String,
    /// The replica it was compared with (the first one).
    pub reference: String,
    /// Document id.
    pub doc: String,
    /// What differs.
    pub what: String,
}

/// The result of [`check`].
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Number of replicas checked.
    pub replicas: usize,
    /// Writes attempted.
    pub attempted: usize,
    /// Writes acknowledged.
    pub acked: usize,
    /// Writes neither acknowledged nor refused.
    pub uncertain: usize,
    /// Acknowledged adds missing (or wrong) on some replica, and refused adds present.
    pub lost: Vec<LostWrite>,
    /// Counters out of their allowed range.
    pub counters: Vec<CounterMismatch>,
    /// Replicas that differ from the first one.
    pub diverged: Vec<Divergence>,
}

impl Verdict {
    /// Whether nothing is lost, every counter is in range and no replica diverged.
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty() && self.counters.is_empty() && self.diverged.is_empty()
    }
}

/// At most this many anomalies of each kind are printed.
const SHOWN: usize = 10;

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} replicas, writes attempted {}, acknowledged {}, uncertain {}; \
             lost = {}, counter mismatches = {}, diverged = {}",
            if self.is_ok() { "OK" } else { "FAILED" },
            self.replicas,
            self.attempted,
            self.acked,
            self.uncertain,
            self.lost.len(),
            self.counters.len(),
            self.diverged.len()
        )?;
        for l in self.lost.iter().take(SHOWN) {
            writeln!(
                f,
                "  lost: write #{} sent to {}: on {}: {}",
                l.write.0, l.origin, l.replica, l.what
            )?;
        }
        for c in self.counters.iter().take(SHOWN) {
            let value = c.value.map_or("missing".to_string(), |v| v.to_string());
            writeln!(
                f,
                "  counter: {} {}/{:?} = {value}, allowed {}..={}",
                c.replica, c.doc, c.counter, c.min, c.max
            )?;
        }
        for d in self.diverged.iter().take(SHOWN) {
            writeln!(
                f,
                "  diverged: {} vs {} on {}: {}",
                d.replica, d.reference, d.doc, d.what
            )?;
        }
        let hidden = [self.lost.len(), self.counters.len(), self.diverged.len()]
            .iter()
            .map(|n| n.saturating_sub(SHOWN))
            .sum::<usize>();
        if hidden > 0 {
            writeln!(f, "  ... and {hidden} more")?;
        }
        Ok(())
    }
}

/// Checks the final `replicas` against the `history`: lost writes, counters, divergence.
pub fn check(history: &History, replicas: &[ReplicaState]) -> Verdict {
    let mut verdict = Verdict {
        replicas: replicas.len(),
        attempted: history.attempted(),
        acked: history.acked(),
        uncertain: history.uncertain(),
        ..Verdict::default()
    };
    check_adds(history, replicas, &mut verdict);
    check_counters(history, replicas, &mut verdict);
    check_divergence(replicas, &mut verdict);
    verdict
}

fn check_adds(history: &History, replicas: &[ReplicaState], verdict: &mut Verdict) {
    for (id, w) in history.writes.iter().enumerate() {
        if w.outcome == Outcome::Uncertain {
            continue;
        }
        for e in &w.effects {
            let Effect::Add {
                doc,
                map,
                key,
                value,
            } = e
            else {
                continue;
            };
            for r in replicas {
                let got = r.added(doc, map, key);
                let what = match (w.outcome, got) {
                    (Outcome::Acked(_), None) => format!("{doc}/{map:?} has no key {key:?}"),
                    (Outcome::Acked(_), Some(v)) if v != value => {
                        format!("{doc}/{map:?}/{key:?} is {v}, acknowledged as {value}")
                    }
                    (Outcome::Refused, Some(v)) => {
                        format!("{doc}/{map:?}/{key:?} = {v} was written by a refused write")
                    }
                    _ => continue,
                };
                verdict.lost.push(LostWrite {
                    write: WriteId(id),
                    origin: w.node.clone(),
                    replica: r.node.clone(),
                    what,
                });
            }
        }
    }
}

fn check_counters(history: &History, replicas: &[ReplicaState], verdict: &mut Verdict) {
    // (doc, path) -> (acked sum, negative uncertain sum, positive uncertain sum)
    let mut ranges: BTreeMap<(String, Vec<String>), (i64, i64, i64)> = BTreeMap::new();
    for w in &history.writes {
        for e in &w.effects {
            let Effect::Incr { doc, counter, by } = e else {
                continue;
            };
            let r = ranges.entry((doc.clone(), counter.clone())).or_default();
            match w.outcome {
                Outcome::Acked(_) => r.0 += by,
                Outcome::Uncertain if *by < 0 => r.1 += by,
                Outcome::Uncertain => r.2 += by,
                Outcome::Refused => {}
            }
        }
    }
    for ((doc, counter), (acked, neg, pos)) in ranges {
        let (min, max) = (acked + neg, acked + pos);
        for r in replicas {
            let value = r
                .docs
                .get(&doc)
                .and_then(|d| lookup(&d.json, &counter))
                .and_then(Value::as_i64);
            if value.is_some_and(|v| (min..=max).contains(&v)) {
                continue;
            }
            verdict.counters.push(CounterMismatch {
                replica: r.node.clone(),
                doc: doc.clone(),
                counter: counter.clone(),
                value,
                min,
                max,
            });
        }
    }
}

fn check_divergence(replicas: &[ReplicaState], verdict: &mut Verdict) {
    let Some(first) = replicas.first() else {
        return;
    };
    for r in &replicas[1..] {
        let docs: BTreeSet<&String> = first.docs.keys().chain(r.docs.keys()).collect();
        for doc in docs {
            let what = match (first.docs.get(doc), r.docs.get(doc)) {
                (Some(_), None) => "missing here".to_string(),
                (None, Some(_)) => "missing on the reference".to_string(),
                (Some(a), Some(b)) if a.heads != b.heads => {
                    format!("heads {} vs {}", short(&b.heads), short(&a.heads))
                }
                (Some(a), Some(b)) if a.json != b.json => "same heads, different JSON".into(),
                _ => continue,
            };
            verdict.diverged.push(Divergence {
                replica: r.node.clone(),
                reference: first.node.clone(),
                doc: doc.clone(),
                what,
            });
        }
    }
}

fn short(heads: &[String]) -> String {
    let parts: Vec<&str> = heads.iter().map(|h| &h[..h.len().min(8)]).collect();
    format!("[{}]", parts.join(","))
}
