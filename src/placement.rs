//! Placement of documents on R of N nodes: which partition a document belongs to, and
//! which nodes replicate each partition.
//!
//! Documents fall into a fixed number of partitions ([`PARTITIONS`]) by a hash of their id:
//! its top bits, the same hash whose top 16 bits pick a document's bucket in the
//! reconciliation tree (`core::reconcile`), so a partition is a run of consecutive buckets
//! and anti-entropy can compare the partitions two nodes share and nothing else
//! ([`PartitionSet`]). A [`Placement`] gives each partition its `replicas`
//! nodes, computed from the nodes alone, the same on every node:
//! - [`Placement::rendezvous`] (for a mesh): the `replicas` nodes with the highest weight
//!   `hash(node, partition)` (rendezvous, or highest random weight, hashing). A node that
//!   joins takes over exactly the partitions where it ranks among the top `replicas`, one
//!   copy each; a node that leaves hands each of its partitions to the next in rank.
//! - [`Placement::ring`] (for a ring): each node has a [`Token`], a position on a circle of
//!   2^64 points, in ring order; partitions sit at evenly spaced points; a partition's
//!   replicas are the node whose arc (from its token up to the next node's) holds the
//!   partition's point and its `replicas - 1` successors in ring order, so changes still
//!   travel the ring. [`even_tokens`] spaces the first nodes evenly (every node holds the
//!   same number of partitions, to one); a node that joins after node A takes the token
//!   [`token_between`] A's and its successor's: every partition it joins gains it and
//!   loses one other node, and nothing else moves.
//!
//! Pure and deterministic: no IO, no clock, no state beyond what it is given. Its hashes
//! decide where data lives on every node, so they never change for a given input.

use std::collections::BTreeSet;

use crate::fnv::Fnv1a;

/// The number of partitions of a cluster unless it is made with another.
pub const PARTITIONS: u16 = 1024;

/// One of a cluster's partitions: `0..partitions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(pub u16);

/// A node's position on the ring's circle of 2^64 points ([`Placement::ring`]).
pub type Token = u64;

/// The partition of a document, among `partitions` (at least 1): the document's place in
/// the hash space, scaled (for a power of two, the top bits of its id hash).
pub fn partition_of(doc_id: &str, partitions: u16) -> Partition {
    Partition(((u128::from(id_hash(doc_id)) * u128::from(partitions.max(1))) >> 64) as u16)
}

/// A set of partitions (of at most [`PARTITIONS`]): one bit each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSet {
    bits: [u64; PARTITIONS as usize / 64],
}

impl Default for PartitionSet {
    fn default() -> Self {
        PartitionSet::empty()
    }
}

impl PartitionSet {
    /// No partition.
    pub fn empty() -> PartitionSet {
        PartitionSet {
            bits: [0; PARTITIONS as usize / 64],
        }
    }

    /// Every partition.
    pub fn full() -> PartitionSet {
        PartitionSet {
            bits: [u64::MAX; PARTITIONS as usize / 64],
        }
    }

    /// Adds `p` (ignored past [`PARTITIONS`]).
    pub fn insert(&mut self, p: Partition) {
        if let Some(word) = self.bits.get_mut(usize::from(p.0) / 64) {
            *word |= 1 << (p.0 % 64);
        }
    }

    /// Takes `p` out.
    pub fn remove(&mut self, p: Partition) {
        if let Some(word) = self.bits.get_mut(usize::from(p.0) / 64) {
            *word &= !(1 << (p.0 % 64));
        }
    }

    /// The partitions in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = Partition> + '_ {
        (0..PARTITIONS).map(Partition).filter(|&p| self.contains(p))
    }

    /// Whether `p` is in the set.
    pub fn contains(&self, p: Partition) -> bool {
        self.bits
            .get(usize::from(p.0) / 64)
            .is_some_and(|w| w & (1 << (p.0 % 64)) != 0)
    }

    /// Whether every partition of this set is in `other`.
    pub fn is_subset(&self, other: &PartitionSet) -> bool {
        self.bits.iter().zip(&other.bits).all(|(a, b)| a & !b == 0)
    }

    /// How many partitions the set holds.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tokens for `n` nodes in ring order, evenly spaced from 0.
pub fn even_tokens(n: usize) -> Vec<Token> {
    let step = arc_step(n);
    (0..n as u128).map(|i| (i * step) as Token).collect()
}

/// The token halfway along the arc from `from` to `to` (clockwise, wrapping past 2^64):
/// the token of a node that joins the ring between the nodes holding them.
pub fn token_between(from: Token, to: Token) -> Token {
    let arc = to.wrapping_sub(from);
    let arc = if arc == 0 { u64::MAX } else { arc };
    from.wrapping_add(arc / 2)
}

/// Why a placement could not be made; nothing is placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// `replicas` is 0 or more than the nodes.
    #[error("replicas = {replicas}: must be between 1 and the number of nodes ({nodes})")]
    Replicas {
        /// The replicas asked for.
        replicas: usize,
        /// The nodes there are.
        nodes: usize,
    },
    /// There are no partitions.
    #[error("a cluster needs at least one partition")]
    NoPartitions,
    /// This topology cannot place documents on fewer nodes than all.
    #[error(
        "replicas below the number of nodes needs topology = \"mesh\" or a two-way \
         \"ring\", not {0}: changes travel along links whose ends may not hold the document"
    )]
    Unsupported(String),
    /// Two nodes have the same id.
    #[error("node {0:?} is listed twice")]
    DuplicateNode(String),
    /// The ring's tokens are not distinct and increasing in ring order (from the smallest).
    #[error(
        "the ring's tokens must be distinct and increase in ring order: {0:?} is out of place"
    )]
    TokenOrder(String),
}

/// Which nodes replicate each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    nodes: Vec<String>,
    replicas: usize,
    /// For each partition, the indices in `nodes` of its replicas, `replicas` per
    /// partition, in order of preference (rendezvous: rank; ring: ring order).
    table: Vec<u16>,
}

impl Placement {
    /// Rendezvous placement of `partitions` over `nodes` (any order), `replicas` each.
    pub fn rendezvous(
        nodes: &[String],
        replicas: usize,
        partitions: u16,
    ) -> Result<Placement, PlacementError> {
        check(nodes.iter(), replicas, partitions)?;
        let seeds: Vec<u64> = nodes.iter().map(|id| id_hash(id)).collect();
        let mut table = Vec::with_capacity(usize::from(partitions) * replicas);
        let mut ranked: Vec<(u64, u16)> = Vec::with_capacity(nodes.len());
        for p in 0..partitions {
            ranked.clear();
            ranked.extend(seeds.iter().enumerate().map(|(i, &seed)| {
                let weight = mix(seed ^ mix(u64::from(p) + 1));
                (weight, i as u16)
            }));
            // Highest weight first; equal weights (never seen) by node index.
            ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            table.extend(ranked.iter().take(replicas).map(|&(_, i)| i));
        }
        Ok(Placement {
            nodes: nodes.to_vec(),
            replicas,
            table,
        })
    }

    /// Ring placement of `partitions` over `nodes` in ring order, each with its token,
    /// `replicas` each. The tokens must be distinct and increase in ring order from the
    /// node with the smallest one (wrapping once).
    pub fn ring(
        nodes: &[(String, Token)],
        replicas: usize,
        partitions: u16,
    ) -> Result<Placement, PlacementError> {
        check(nodes.iter().map(|(id, _)| id), replicas, partitions)?;
        let n = nodes.len();
        let first = (0..n).min_by_key(|&i| nodes[i].1).unwrap_or(0);
        // Ring positions from the smallest token: their tokens must increase.
        let order: Vec<usize> = (0..n).map(|k| (first + k) % n).collect();
        for pair in order.windows(2) {
            if nodes[pair[1]].1 <= nodes[pair[0]].1 {
                return Err(PlacementError::TokenOrder(nodes[pair[1]].0.clone()));
            }
        }
        let step = arc_step(usize::from(partitions));
        let mut table = Vec::with_capacity(usize::from(partitions) * replicas);
        for p in 0..u128::from(partitions) {
            // The partition's point: the middle of its even share of the circle.
            let point = (p * step + step / 2) as Token;
            // The arc holding it: the last node (in token order) whose token is at or
            // before the point; before the smallest token, the arc of the largest.
            let k = order.partition_point(|&i| nodes[i].1 <= point);
            let owner = order[(k + n - 1) % n];
            table.extend((0..replicas).map(|r| ((owner + r) % n) as u16));
        }
        Ok(Placement {
            nodes: nodes.iter().map(|(id, _)| id.clone()).collect(),
            replicas,
            table,
        })
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u16 {
        (self.table.len() / self.replicas) as u16
    }

    /// The replicas of each partition.
    pub fn replicas_per_partition(&self) -> usize {
        self.replicas
    }

    /// The replicas of partition `p` (in order of preference), none if it does not exist.
    pub fn replicas(&self, p: Partition) -> impl Iterator<Item = &str> + '_ {
        let start = usize::from(p.0) * self.replicas;
        self.table
            .get(start..start + self.replicas)
            .unwrap_or(&[])
            .iter()
            .map(|&i| self.nodes[usize::from(i)].as_str())
    }

    /// Whether `node` replicates partition `p`.
    pub fn holds(&self, node: &str, p: Partition) -> bool {
        self.replicas(p).any(|id| id == node)
    }

    /// The partitions `node` replicates.
    pub fn held_by(&self, node: &str) -> BTreeSet<Partition> {
        (0..self.partitions())
            .map(Partition)
            .filter(|&p| self.holds(node, p))
            .collect()
    }

    /// The partitions both `a` and `b` replicate (what the two reconcile).
    pub fn shared(&self, a: &str, b: &str) -> PartitionSet {
        let (Some(a), Some(b)) = (self.index(a), self.index(b)) else {
            return PartitionSet::empty();
        };
        let mut set = PartitionSet::empty();
        for (p, window) in self.table.chunks(self.replicas).enumerate() {
            if window.contains(&a) && window.contains(&b) {
                set.insert(Partition(p as u16));
            }
        }
        set
    }

    /// The replicas of the partition of `doc` (in order of preference).
    pub fn replicas_of(&self, doc: &str) -> impl Iterator<Item = &str> + '_ {
        self.replicas(partition_of(doc, self.partitions()))
    }

    /// Whether `node` replicates the partition of `doc`.
    pub fn holds_doc(&self, node: &str, doc: &str) -> bool {
        self.holds(node, partition_of(doc, self.partitions()))
    }

    /// The nodes, as given.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    fn index(&self, node: &str) -> Option<u16> {
        self.nodes.iter().position(|n| n == node).map(|i| i as u16)
    }
}

/// Refuses what no placement can be made of.
fn check<'a>(
    ids: impl Iterator<Item = &'a String>,
    replicas: usize,
    partitions: u16,
) -> Result<(), PlacementError> {
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(id.as_str()) {
            return Err(PlacementError::DuplicateNode(id.clone()));
        }
    }
    if replicas == 0 || replicas > seen.len() {
        return Err(PlacementError::Replicas {
            replicas,
            nodes: seen.len(),
        });
    }
    if partitions == 0 {
        return Err(PlacementError::NoPartitions);
    }
    Ok(())
}

/// The length of one of `n` equal arcs of the circle of 2^64 points.
fn arc_step(n: usize) -> u128 {
    (1u128 << 64) / n.max(1) as u128
}

/// The hash of a document's id (its partition) or a node's (the seed of its rendezvous
/// weights).
fn id_hash(id: &str) -> u64 {
    let mut hash = Fnv1a::new();
    hash.write(id.as_bytes());
    mix(hash.finish())
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
