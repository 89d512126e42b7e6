//! What must hold once the cluster is quiet: each document on exactly its replicas
//! (every node without a placement) with the same heads and values there (and the same
//! fingerprints everywhere without a placement), no lost acknowledged write, counter
//! bounds, never fewer copies than acknowledged, and stores that hold everything each
//! replica has (and nothing more for a removed node).

use std::collections::{BTreeMap, BTreeSet};

use automerge::{Automerge, ChangeHash};
use concordant::core::{CoreConfig, Fetched, Flood, ReadKind, Replica};
use concordant::storage::{MemoryStore, Store};

use super::members::check_held;
use super::workload::counter_value;
use super::world::{as_stored, stored_index, Sim, Totals};
use super::Summary;

/// The document at replica `r`, read from its store if it is not in memory.
fn load<'a>(r: &'a mut Replica, i: usize, doc: &str) -> Result<Option<&'a Automerge>, String> {
    r.load(doc)
        .map_err(|e| format!("n{i} cannot read {doc}: {e}"))
}

impl Sim {
    /// Checks a quiet cluster: each document on its replicas only, with the same heads
    /// and values there (and one fingerprint everywhere without a placement), every
    /// acknowledged write on every replica of its document, counters within
    /// [acknowledged, all] increments, as many copies as acknowledged, every node's store
    /// reloading to exactly what its replica holds, and a removed node's store empty.
    pub(crate) fn check(&mut self) -> Result<(), String> {
        if let Some(k) = self.retiring {
            return Err(format!(
                "n{k} was removed and has not handed everything off"
            ));
        }
        self.placement_errors()?;
        let members = self.members.clone();
        let mut listed: BTreeMap<usize, Vec<(String, Vec<ChangeHash>)>> = BTreeMap::new();
        for &i in &members {
            listed.insert(i, self.all_heads(i).ok_or(format!("n{i} is down"))?);
        }
        // Every document the checks look at is read into memory first.
        let docs: BTreeSet<String> = listed
            .values()
            .flatten()
            .map(|(doc, _)| doc.clone())
            .chain(self.docs.iter().cloned())
            .collect();
        let replicas_of: BTreeMap<String, Vec<usize>> = docs
            .iter()
            .map(|doc| (doc.clone(), self.replica_nodes(doc)))
            .collect();
        for &i in &members {
            for doc in &docs {
                self.read_now(i, doc);
            }
        }
        let placed = self.topology.is_some();
        let stores: BTreeMap<usize, MemoryStore> = members
            .iter()
            .map(|&i| (i, self.nodes[i].store.clone()))
            .collect();
        let mut replicas: BTreeMap<usize, &mut Replica> = self
            .nodes
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| members.contains(i))
            .map(|(i, n)| (i, n.replica.as_mut().expect("all restarted")))
            .collect();
        if !placed {
            let first = members[0];
            let fingerprint = replicas[&first].fingerprint();
            for (i, r) in &replicas {
                if r.fingerprint() != fingerprint {
                    return Err(format!(
                        "n{i} fingerprint {:x} differs from n{first} {fingerprint:x} (same heads)",
                        r.fingerprint()
                    ));
                }
            }
        }
        // One entry per document (its heads are the same on its replicas).
        let held: BTreeMap<&String, &Vec<ChangeHash>> =
            listed.values().flatten().map(|(d, h)| (d, h)).collect();
        for (doc, doc_heads) in held {
            let reps = &replicas_of[doc];
            let first = reps[0];
            let value = load(replicas.get_mut(&first).expect("a member"), first, doc)?
                .ok_or_else(|| format!("n{first} lists {doc}, has not"))?
                .hydrate(None);
            for &i in reps {
                let r = replicas.get_mut(&i).expect("a member");
                let d = load(r, i, doc)?.ok_or_else(|| format!("n{i} lists {doc}, has not"))?;
                if &d.get_heads() != doc_heads {
                    return Err(format!("n{i} {doc} loads to other heads than it lists"));
                }
                if d.hydrate(None) != value {
                    return Err(format!("n{i} {doc} has another value than n{first}"));
                }
            }
        }
        for w in self.writes.iter().filter(|w| w.acknowledged()) {
            for &i in &replicas_of[&w.doc] {
                let r = replicas.get_mut(&i).expect("a member");
                let has = load(r, i, &w.doc)?
                    .is_some_and(|d| d.get_change_meta_by_hash(&w.hash).is_some());
                if !has {
                    return Err(format!(
                        "acked write {} of {} at n{} is missing at n{i}, a replica of it",
                        w.hash, w.doc, w.node
                    ));
                }
            }
        }
        for doc in &self.docs {
            let acked: i64 = self
                .writes
                .iter()
                .filter(|w| w.doc == *doc && w.acknowledged())
                .map(|w| w.increment)
                .sum();
            let all: i64 = self
                .writes
                .iter()
                .filter(|w| w.doc == *doc)
                .map(|w| w.increment)
                .sum();
            let first = replicas_of[doc][0];
            let r = replicas.get_mut(&first).expect("a member");
            let value = load(r, first, doc)?.and_then(counter_value);
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
        for (&i, replica) in &replicas {
            let expected = &listed[&i];
            let store = &stores[&i];
            let mut r = Replica::new("check", [0xee; 16], Box::new(Flood), CoreConfig::default());
            let index = stored_index(store);
            r.set_store(as_stored(&index));
            let stored: Vec<(String, Vec<ChangeHash>)> = index
                .iter()
                .map(|(doc, heads)| (doc.clone(), heads.iter().copied().map(ChangeHash).collect()))
                .collect();
            if &stored != expected {
                return Err(format!(
                    "n{i} store lists heads {stored:?}, its replica {expected:?}"
                ));
            }
            if r.fingerprint() != replica.fingerprint() {
                return Err(format!(
                    "n{i} store has another fingerprint than its replica"
                ));
            }
            for (doc, doc_heads) in expected {
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
        for node in &self.nodes {
            check_held(node)?;
            if node.gone && !stored_index(&node.store).is_empty() {
                return Err(format!("{} was removed with documents stored", node.name));
            }
        }
        self.check_copies(None)?;
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
            heads: self
                .members
                .iter()
                .filter_map(|&i| self.all_heads(i))
                .flatten()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect(),
            heal_ms: self.now - healed_at,
            totals: self.totals(),
            replicas: self.replicas,
            changed: self.changed,
            hinted: self.hinted,
            drops: self.drops,
            deletions: self.deletions,
        }
    }
}
