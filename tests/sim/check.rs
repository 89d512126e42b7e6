//! What must hold once the cluster is quiet: convergence, no lost acknowledged write,
//! counter bounds, and storage that holds everything each replica has.

use concordant::core::{CoreConfig, Flood, Replica};

use super::workload::counter_value;
use super::world::Sim;
use super::{Summary, DOCS};

impl Sim {
    /// Checks a quiet cluster: same heads and values everywhere, every acknowledged write
    /// present everywhere, counters within [acknowledged, all] increments, and every
    /// node's storage loading to exactly what its replica holds.
    pub(crate) fn check(&self) -> Result<(), String> {
        let replicas: Vec<&Replica> = self
            .nodes
            .iter()
            .map(|n| n.replica.as_ref().expect("all restarted"))
            .collect();
        let heads = replicas[0].heads();
        for (i, r) in replicas.iter().enumerate() {
            if r.heads() != heads {
                return Err(format!(
                    "n{i} heads {:?} differ from n0 {:?}",
                    r.heads(),
                    heads
                ));
            }
        }
        for (doc, _) in &heads {
            let value = replicas[0].doc(doc).expect("has it").hydrate(None);
            for (i, r) in replicas.iter().enumerate() {
                if r.doc(doc).expect("same heads").hydrate(None) != value {
                    return Err(format!("n{i} {doc} has another value than n0"));
                }
            }
        }
        for w in self.writes.iter().filter(|w| w.acked) {
            for (i, r) in replicas.iter().enumerate() {
                let has = r
                    .doc(&w.doc)
                    .is_some_and(|d| d.get_change_meta_by_hash(&w.hash).is_some());
                if !has {
                    return Err(format!(
                        "acked write {} of {} at n{} is missing at n{i}",
                        w.hash, w.doc, w.node
                    ));
                }
            }
        }
        for doc in DOCS {
            let acked: i64 = self
                .writes
                .iter()
                .filter(|w| w.doc == doc && w.acked)
                .map(|w| w.increment)
                .sum();
            let all: i64 = self
                .writes
                .iter()
                .filter(|w| w.doc == doc)
                .map(|w| w.increment)
                .sum();
            let value = replicas[0].doc(doc).and_then(counter_value);
            match value {
                Some(v) if v < acked || v > all => {
                    return Err(format!("{doc} counter {v} outside [{acked}, {all}]"));
                }
                None if acked > 0 => return Err(format!("{doc} has lost its counter")),
                _ => {}
            }
        }
        // Everything a node holds is in its storage: a restart loses nothing.
        for (i, node) in self.nodes.iter().enumerate() {
            let mut r = Replica::new("check", [0xee; 16], Box::new(Flood), CoreConfig::default());
            for (doc, stored) in &node.storage {
                r.load_doc(doc, stored.snapshot.as_deref(), &stored.changes)
                    .map_err(|e| format!("n{i} storage does not load: {e}"))?;
            }
            if r.heads() != heads {
                return Err(format!(
                    "n{i} storage has heads {:?}, its replica {:?}",
                    r.heads(),
                    heads
                ));
            }
        }
        Ok(())
    }

    /// What this run did, for the totals and the determinism test.
    pub(crate) fn summary(&self, crashes: u64, healed_at: u64) -> Summary {
        Summary {
            nodes: self.nodes.len(),
            ring: self.ring,
            writes: self.writes.len(),
            acked: self.writes.iter().filter(|w| w.acked).count(),
            delivered: self.delivered,
            crashes,
            acks: self.acked_effects,
            heads: self.nodes[0]
                .replica
                .as_ref()
                .map(|r| r.heads())
                .unwrap_or_default(),
            heal_ms: self.now - healed_at,
        }
    }
}
