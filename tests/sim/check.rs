//! What must hold once the cluster is quiet: convergence (heads, values and fingerprints),
//! no lost acknowledged write, counter bounds, and stores that hold everything each replica
//! has.

use std::collections::BTreeSet;

use automerge::{Automerge, ChangeHash};
use concordant::core::{CoreConfig, Fetched, Flood, ReadKind, Replica};
use concordant::storage::Store;

use super::workload::counter_value;
use super::world::{as_stored, stored_index, Sim, Totals};
use super::Summary;

/// The document at replica `r`, read from its store if it is not in memory.
fn load<'a>(r: &'a mut Replica, i: usize, doc: &str) -> Result<Option<&'a Automerge>, String> {
    r.load(doc)
        .map_err(|e| format!("n{i} cannot read {doc}: {e}"))
}

impl Sim {
    /// Checks a quiet cluster: same heads, values and fingerprints everywhere, every
    /// acknowledged write present everywhere, counters within [acknowledged, all]
    /// increments, and every node's store reloading to exactly what its replica holds.
    pub(crate) fn check(&mut self) -> Result<(), String> {
        let expected = self.all_heads(0).ok_or("n0 is down")?;
        for i in 0..self.nodes.len() {
            let h = self.all_heads(i).ok_or(format!("n{i} is down"))?;
            if h != expected {
                return Err(format!("n{i} heads {h:?} differ from n0 {expected:?}"));
            }
        }
        // Every document the checks look at is read into memory first.
        let docs: BTreeSet<String> = expected
            .iter()
            .map(|(doc, _)| doc.clone())
            .chain(self.docs.iter().cloned())
            .collect();
        for i in 0..self.nodes.len() {
            for doc in &docs {
                self.read_now(i, doc);
            }
        }
        let mut replicas: Vec<&mut Replica> = self
            .nodes
            .iter_mut()
            .map(|n| n.replica.as_mut().expect("all restarted"))
            .collect();
        let fingerprint = replicas[0].fingerprint();
        for (i, r) in replicas.iter().enumerate() {
            if r.fingerprint() != fingerprint {
                return Err(format!(
                    "n{i} fingerprint {:x} differs from n0 {fingerprint:x} (same heads)",
                    r.fingerprint()
                ));
            }
        }
        for (doc, doc_heads) in &expected {
            let value = load(replicas[0], 0, doc)?.expect("has it").hydrate(None);
            for (i, r) in replicas.iter_mut().enumerate() {
                let d = load(r, i, doc)?.ok_or_else(|| format!("n{i} lists {doc}, has not"))?;
                if &d.get_heads() != doc_heads {
                    return Err(format!("n{i} {doc} loads to other heads than it lists"));
                }
                if d.hydrate(None) != value {
                    return Err(format!("n{i} {doc} has another value than n0"));
                }
            }
        }
        for w in self.writes.iter().filter(|w| w.acked) {
            for (i, r) in replicas.iter_mut().enumerate() {
                let has = load(r, i, &w.doc)?
                    .is_some_and(|d| d.get_change_meta_by_hash(&w.hash).is_some());
                if !has {
                    return Err(format!(
                        "acked write {} of {} at n{} is missing at n{i}",
                        w.hash, w.doc, w.node
                    ));
                }
            }
        }
        for doc in &self.docs {
            let acked: i64 = self
                .writes
                .iter()
                .filter(|w| w.doc == *doc && w.acked)
                .map(|w| w.increment)
                .sum();
            let all: i64 = self
                .writes
                .iter()
                .filter(|w| w.doc == *doc)
                .map(|w| w.increment)
                .sum();
            let value = load(replicas[0], 0, doc)?.and_then(counter_value);
            match value {
                Some(v) if v < acked || v > all => {
                    return Err(format!("{doc} counter {v} outside [{acked}, {all}]"));
                }
                None if acked > 0 => return Err(format!("{doc} has lost its counter")),
                _ => {}
            }
        }
        // Everything a node holds is in its store, with the heads in its index: a restart
        // loses nothing.
        for (i, node) in self.nodes.iter().enumerate() {
            let store = node.store.clone();
            let mut r = Replica::new("check", [0xee; 16], Box::new(Flood), CoreConfig::default());
            let index = stored_index(&store);
            r.set_store(as_stored(&index));
            let listed: Vec<(String, Vec<ChangeHash>)> = index
                .iter()
                .map(|(doc, heads)| (doc.clone(), heads.iter().copied().map(ChangeHash).collect()))
                .collect();
            if listed != expected {
                return Err(format!(
                    "n{i} store lists heads {listed:?}, its replica {expected:?}"
                ));
            }
            if r.fingerprint() != fingerprint {
                return Err(format!("n{i} store has another fingerprint"));
            }
            for (doc, doc_heads) in &expected {
                if !r.prepare(doc) {
                    let fetched = Fetched::read(store.reader().as_ref(), doc, ReadKind::Doc);
                    r.read_done(0, doc, fetched);
                }
                let d = r
                    .load(doc)
                    .map_err(|e| format!("n{i} store does not load {doc}: {e}"))?
                    .ok_or_else(|| format!("n{i} store lists {doc}, has not"))?;
                if &d.get_heads() != doc_heads {
                    return Err(format!(
                        "n{i} store loads {doc} to heads {:?}, its index says {doc_heads:?}",
                        d.get_heads()
                    ));
                }
            }
        }
        let totals = self.totals();
        if totals.doc_load_errors > 0 {
            return Err(format!(
                "{} documents failed to load from a memory store",
                totals.doc_load_errors
            ));
        }
        Ok(())
    }

    /// Counters of every replica of the run, crashed ones included.
    pub(crate) fn totals(&self) -> Totals {
        let mut totals = self.retired;
        for r in self.nodes.iter().filter_map(|n| n.replica.as_ref()) {
            totals.add_stats(&r.stats());
        }
        totals
    }

    /// What this run did, for the totals and the determinism test.
    pub(crate) fn summary(&self, crashes: u64, healed_at: u64) -> Summary {
        Summary {
            nodes: self.nodes.len(),
            docs: self.docs.len(),
            ring: self.ring,
            writes: self.writes.len(),
            acked: self.writes.iter().filter(|w| w.acked).count(),
            delivered: self.delivered,
            crashes,
            acks: self.acked_effects,
            heads: self.all_heads(0).unwrap_or_default(),
            heal_ms: self.now - healed_at,
            totals: self.totals(),
        }
    }
}
