//! What the simulated clients do: the initial documents, random operations on maps, lists,
//! text and counters through `local_change`, and merges of one node's document into another.

use automerge::transaction::{Transactable, Transaction};
use automerge::{
    ActorId, Automerge, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT,
};
use concordant::core::{ChangeError, Replica};
use rand::rngs::StdRng;
use rand::Rng;

use super::trace::short;
use super::world::{Sim, WriteRecord};

pub(crate) fn initial_doc(id: &str) -> Vec<u8> {
    let mut doc = Automerge::new().with_actor(ActorId::from(id.as_bytes()));
    let mut tx = doc.transaction();
    tx.put_object(ROOT, "map", ObjType::Map).unwrap();
    tx.put_object(ROOT, "list", ObjType::List).unwrap();
    let text = tx.put_object(ROOT, "text", ObjType::Text).unwrap();
    tx.splice_text(&text, 0, 0, "hello").unwrap();
    tx.put(ROOT, "count", ScalarValue::counter(0)).unwrap();
    tx.commit();
    doc.save()
}

pub(crate) fn object(tx: &Transaction<'_>, key: &str) -> Option<ObjId> {
    match tx.get(ROOT, key) {
        Ok(Some((Value::Object(_), id))) => Some(id),
        _ => None,
    }
}

/// One random operation; returns the counter increment it made.
pub(crate) fn random_op(
    tx: &mut Transaction<'_>,
    rng: &mut StdRng,
) -> Result<i64, automerge::AutomergeError> {
    let kind = rng.random_range(0..6);
    let map = object(tx, "map");
    let (obj, prefix) = match &map {
        Some(m) => (m.clone(), "k"),
        None => (ROOT, "r"),
    };
    let key = format!("{prefix}{}", rng.random_range(0..8));
    match kind {
        1 if tx.get(&obj, key.as_str())?.is_some() => tx.delete(&obj, key.as_str())?,
        2 | 3 if object(tx, "list").is_some() => {
            let list = object(tx, "list").unwrap();
            let len = tx.length(&list);
            if kind == 3 && len > 0 {
                tx.delete(&list, rng.random_range(0..len))?;
            } else {
                tx.insert(
                    &list,
                    rng.random_range(0..=len),
                    rng.random_range(0..1000i64),
                )?;
            }
        }
        4 if object(tx, "text").is_some() => {
            let text = object(tx, "text").unwrap();
            let len = tx.length(&text);
            let pos = rng.random_range(0..=len);
            let del = rng.random_range(0..=(len - pos).min(3));
            let word = ["a", "bc", "def", " ", "xyz!"][rng.random_range(0..5)];
            tx.splice_text(&text, pos, del as isize, word)?;
        }
        5 if tx.get(ROOT, "count")?.is_some() => {
            let n = rng.random_range(1..=5);
            tx.increment(ROOT, "count", n)?;
            return Ok(n);
        }
        _ => {
            if rng.random_bool(0.5) {
                tx.put(&obj, key.as_str(), rng.random_range(0..1_000_000i64))?;
            } else {
                tx.put(&obj, key.as_str(), format!("v{}", rng.random_range(0..100)))?;
            }
        }
    }
    Ok(0)
}

pub(crate) fn counter_value(doc: &Automerge) -> Option<i64> {
    match doc.get(ROOT, "count") {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Counter(c) => Some(i64::from(c)),
            _ => None,
        },
        _ => None,
    }
}

/// A document's heads at a replica that has it in memory (empty if it has none).
fn heads_of(r: &mut Replica, doc: &str) -> Vec<ChangeHash> {
    let id = r.id().to_string();
    r.load(doc)
        .unwrap_or_else(|e| panic!("{id} cannot read {doc}: {e}"))
        .map(|d| d.get_heads())
        .unwrap_or_default()
}

impl Sim {
    /// One of the run's documents, at random: half of the picks go to the two hot ones (d0
    /// and d1), so the others are cold: dropped from the tiny caches, and read back now and
    /// then.
    pub(crate) fn random_doc(&mut self) -> String {
        let among = if self.rng.random_bool(0.5) {
            2
        } else {
            self.docs.len()
        };
        self.docs[self.rng.random_range(0..among)].clone()
    }

    /// A client copies a document from one live node into another with `merge`.
    pub(crate) fn random_merge(&mut self) {
        let live = self.writable();
        if live.len() < 2 {
            return;
        }
        let from = live[self.rng.random_range(0..live.len())];
        let to = live[self.rng.random_range(0..live.len())];
        let doc = self.random_doc();
        let doc = doc.as_str();
        // Either side may have to read the document from its store first: this merge is
        // then left out (the read goes on).
        for i in [from, to] {
            if !self.nodes[i].replica.as_mut().expect("alive").prepare(doc) {
                self.log(|| format!("merge n{from}->n{to} {doc}: n{i} reads it first"));
                self.pump(i);
                return;
            }
        }
        let source = self.nodes[from].replica.as_mut().expect("alive").load(doc);
        let source = source.unwrap_or_else(|e| panic!("n{from} cannot read {doc}: {e}"));
        let Some((bytes, has_orphans)) =
            source.map(|d| (d.save(), !d.get_missing_deps(&[]).is_empty()))
        else {
            return;
        };
        self.pump(from);
        let now = self.now;
        let r = self.nodes[to].replica.as_mut().expect("alive");
        match r.merge(now, doc, &bytes) {
            Ok((count, token)) => {
                assert_eq!(count > 0, token.is_some());
                self.log(|| format!("merge n{from}->n{to} {doc}: {count} new"));
            }
            // `save()` keeps queued changes: data with missing history is refused whole.
            Err(e) => assert!(has_orphans, "merge n{from}->n{to} {doc}: {e}"),
        }
        self.pump(to);
    }

    /// A client writes 1..=3 random operations to a document at a random live node (a
    /// hint where it is not a replica of the document); some writes are refused by their
    /// closure and must change nothing.
    pub(crate) fn random_write(&mut self) {
        let live = self.writable();
        if live.is_empty() {
            return;
        }
        let i = live[self.rng.random_range(0..live.len())];
        let doc = self.random_doc();
        let doc = doc.as_str();
        let ops = self.rng.random_range(1..=3);
        let fail = self.rng.random_bool(0.03);
        let want_ack = self.rng.random_bool(0.5);
        let now = self.now;
        let r = self.nodes[i].replica.as_mut().expect("alive");
        // A stored document not in memory is read first: this write is left out (as a
        // node's driver would hold it until the read is done).
        if !r.prepare(doc) {
            self.log(|| format!("write n{i} {doc}: read first"));
            self.pump(i);
            return;
        }
        let rng = &mut self.rng;
        let r = self.nodes[i].replica.as_mut().expect("alive");
        // A document being fetched by sync exists empty; a refused write may drop it.
        let before = heads_of(r, doc);
        let result = r.local_change(now, doc, want_ack, |tx: &mut Transaction<'_>| {
            let mut increment = 0;
            for _ in 0..ops {
                increment += random_op(tx, rng).map_err(|e| e.to_string())?;
            }
            if fail {
                return Err("closure refused".to_string());
            }
            Ok(increment)
        });
        match result {
            Ok(w) => {
                // Putting a value a key already has is no operation in Automerge.
                let (Some(hash), Some(token)) = (w.hash, w.persist_token) else {
                    assert_eq!(w.value, 0, "an increment made no change");
                    self.pump(i);
                    return;
                };
                self.log(|| {
                    format!(
                        "write n{i} {doc} +{} {} token {token}",
                        w.value,
                        short(&hash)
                    )
                });
                let life = self.nodes[i].life;
                self.awaiting
                    .entry((i, life, token))
                    .or_default()
                    .push(self.writes.len());
                self.write_index
                    .insert((doc.to_string(), hash), self.writes.len());
                self.writes.push(WriteRecord {
                    node: i,
                    want_ack,
                    doc: doc.to_string(),
                    hash,
                    increment: w.value,
                    acked: false,
                    acks: Default::default(),
                });
                if !self.replicates(i, doc) {
                    self.hinted += 1;
                }
            }
            Err(ChangeError::Refused(e)) => {
                assert_eq!(e, "closure refused");
                let after = heads_of(r, doc);
                assert_eq!(before, after, "a refused write changed {doc} at n{i}");
            }
            Err(ChangeError::Core(e)) => panic!("n{i} cannot write {doc}: {e}"),
        }
        self.pump(i);
    }
}
