//! Range-based set reconciliation of (document id, heads digest) pairs: [`Index`].
//!
//! Two replicas find which documents differ between them (different heads digest, or held
//! by one side only) at a cost that grows with the number of differences, not with the
//! number of documents.
//!
//! # The tree
//! Every document falls in one of 65,536 leaf buckets: the top 16 bits of a stable 64-bit
//! hash of its id (FNV-1a 64 with the splitmix64 finaliser; the same on every build and
//! platform). Above the buckets sits a fixed tree of fanout 16: level 0 is the root (1
//! node), level 1 has 16 nodes, level 2 256, level 3 4,096 and level 4 the 65,536 buckets.
//! The node of bucket `b` at level `L` is `b >> (4 * (4 - L))`.
//!
//! An item's hash mixes its id hash and its digest; a node's fingerprint is the XOR of the
//! hashes of the items below it, so equal sets have equal fingerprints everywhere. Setting
//! or removing a document XORs the old item out of and the new one into its bucket and the
//! bucket's 4 ancestors: five word updates, no rescans.
//!
//! # The exchange
//! A sends [`Index::opening`] (the 16 level-1 fingerprints). Each side answers what it
//! received with [`Index::answer`]: for each node whose fingerprint differs from its own,
//! the fingerprints of the node's 16 children (one level down), or, at level 4, its items
//! of that bucket ([`Answer::Buckets`]). The exchange ends with [`Answer::Equal`] or with
//! buckets, which the receiver compares with its own by [`Index::diff`]:
//!
//! ```text
//! A: opening (level 1) → B: level 2 → A: level 3 → B: level 4 → A: buckets → B: diff
//! ```
//!
//! So B, not A, learns the differences, with both digests (A's are in `theirs`), and must
//! act on them (ask for what A has, send what A lacks). Every answer handles each node on
//! its own: a caller may split a received list of nodes into chunks and answer each chunk
//! separately to bound a message's size (useful at level 4, where two very different sets
//! make the buckets answer as large as the sets). The exchange is not a snapshot: a set
//! that changes between messages may produce a difference that is already repaired (its
//! repair finds nothing to do) or miss one that appeared meanwhile (the next exchange or
//! push finds it).
//!
//! Input from a peer is untrusted: levels and indices out of range are ignored, so are
//! nodes and buckets not listed in strictly ascending index order (honest answers always
//! are; this bounds an answer by the tree's size, whatever is sent), and docs listed under
//! a bucket they do not belong to. Nothing here panics on input.
//!
//! # Costs (measured; see the tests and the commit message)
//! - Equal sets: the opening (16 fingerprints, 193 bytes at 12 bytes a node) and an empty
//!   answer: one round trip, 194 bytes, whatever the number of documents.
//! - d differences among N documents: 5 messages (2.5 round trips); each difference costs
//!   at most 16 fingerprints at each of the 4 levels below the root (log16 of the 65,536
//!   buckets) plus its bucket's items (N / 65,536 on average), so O(d · log N) bytes while
//!   N stays within a few million and d well under the 4,096 level-3 nodes; beyond that the
//!   levels saturate and the cost approaches a full list. Measured with 28-byte ids
//!   (12 bytes a fingerprint, id + 8 an item): at N = 20,000, 1 difference 812 bytes, 10
//!   differences 5.9 KB, 500 differences 156 KB (the full list would be 720 KB); at
//!   N = 1,000,000, 1 difference 1.6 KB.
//! - Memory: a bucket's items are packed into one byte vector (per item the id's length as
//!   LEB128, its bytes and the digest's 8 bytes), grown by an eighth at a time. With 28-byte
//!   ids at 1,000,000 documents: 40.6 MB allocated, i.e. 2.1 MB for the empty tree and 38.5
//!   bytes per document; the process grew by 44 bytes per document (allocator overhead
//!   included). A `Vec<(Box<str>, u64)>` per bucket took 63 bytes allocated and 87 bytes of
//!   process growth per document (a 16-byte box and a separate allocation per id).
//! - Time (release build, 2 busy cores): 1,000,000 `set`s of new documents in 0.6–0.9 s,
//!   as many replacing `set`s, `get`s or `remove`s in about 0.5–0.8 s (mostly cache misses
//!   on the bucket: a random bucket is cold at that size); the same 1,000,000 documents
//!   added to a [`Bulk`] and set at once by [`Index::extend`] (start-up) in 0.25 s, as the
//!   `million_documents` test reports; iterating all in 40 ms; the
//!   whole exchange for 1 difference among 1,000,000 in 25 µs of computation.
//!
//! # Partitions
//! With documents on fewer nodes than all, two nodes compare only the partitions both
//! replicate: every call takes a [`PartitionSet`] mask (`None`: everything). A partition
//! (see [`crate::placement`]) is the top 10 bits of the same id hash, so it is a run of 64
//! consecutive buckets: a node at level 3 or 4 lies in one partition and is either
//! compared whole or seen as empty (fingerprint 0, no items); a node above is the XOR of
//! its masked level-3 descendants (at most 4,096 words to read for the opening).
//!
//! Owns only the index and the exchange's logic: no I/O, no clocks, no Automerge; what a
//! digest is and what to do about a difference are the caller's business.

use crate::fnv::fnv1a;
use crate::placement::{Partition, PartitionSet, PARTITIONS};

/// Bits per level of the tree: fanout 16.
const FANOUT_BITS: u32 = 4;
/// Children of a node.
const FANOUT: usize = 1 << FANOUT_BITS;
/// The level of the leaf buckets (levels below the root).
pub(crate) const LEAF_LEVEL: u8 = 4;
/// Number of leaf buckets.
const BUCKETS: usize = 1 << (FANOUT_BITS * LEAF_LEVEL as u32);
/// Mixed into an item's digest so that an item hash is not a function of the id alone.
const ITEM_SEED: u64 = 0x243f_6a88_85a3_08d3;
/// Buckets per partition: a partition is a run of buckets (the top bits of one hash).
const BUCKETS_PER_PARTITION: usize = BUCKETS / PARTITIONS as usize;
const _: () = assert!(
    PARTITIONS.is_power_of_two() && BUCKETS.is_multiple_of(PARTITIONS as usize),
    "a partition must be a run of whole buckets"
);
/// The level whose nodes each lie in one partition (and whose parents do not).
const PARTITION_LEVEL: u8 = 3;
const _: () = assert!(level_span(PARTITION_LEVEL) <= BUCKETS_PER_PARTITION);
const _: () = assert!(level_span(PARTITION_LEVEL - 1) > BUCKETS_PER_PARTITION);

/// The set of (document id, digest) pairs of one replica, with the fingerprint tree.
pub(crate) struct Index {
    /// Fingerprints by level: `fps[l]` holds the 16^l nodes of level `l`; `fps[0][0]` is
    /// the root.
    fps: [Vec<u64>; LEAF_LEVEL as usize + 1],
    /// The items of each bucket, packed (see [`push_entry`]).
    leaves: Vec<Vec<u8>>,
    /// Number of documents.
    len: usize,
    /// Number of documents per partition.
    partition_lens: Vec<u32>,
}

/// Documents gathered to be set at once with [`Index::extend`] (a store's whole index at
/// start-up). Adding touches no bucket: items are packed one after another (as in a
/// bucket) into one of 256 parts by the top 8 bits of their bucket, so that `extend` then
/// works on one part, and the 256 buckets it covers, at a time, in the processor's cache.
pub(crate) struct Bulk {
    parts: Vec<Part>,
    /// Bytes each bucket will gain.
    sizes: Vec<usize>,
    len: usize,
}

/// The items of 256 consecutive buckets.
#[derive(Default)]
struct Part {
    /// The items, packed as in a bucket (see [`pack`]), in the order added.
    packed: Vec<u8>,
    /// Per item: its id hash and where it starts in `packed`.
    items: Vec<(u64, usize)>,
}

/// Buckets per part of a [`Bulk`].
const PART_BUCKETS: usize = 256;

impl Default for Bulk {
    fn default() -> Self {
        Bulk {
            parts: (0..BUCKETS / PART_BUCKETS)
                .map(|_| Part::default())
                .collect(),
            sizes: vec![0; BUCKETS],
            len: 0,
        }
    }
}

impl Bulk {
    /// Adds a document (a later add of the same id replaces an earlier one).
    pub(crate) fn add(&mut self, doc: &str, digest: u64) {
        let h = id_hash(doc);
        let b = bucket_of_hash(h);
        let part = &mut self.parts[b / PART_BUCKETS];
        let start = part.packed.len();
        pack(&mut part.packed, doc.as_bytes(), digest);
        part.items.push((h, start));
        self.sizes[b] += part.packed.len() - start;
        self.len += 1;
    }

    /// Number of documents added.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// What a node answers to the fingerprints it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Nothing differs.
    Equal,
    /// Fingerprints of the children of the differing nodes, at this level (ascending).
    Fingerprints(u8, Vec<(u32, u64)>),
    /// Our items of the differing leaf buckets (ascending buckets; an empty list for a
    /// bucket we have nothing in).
    Buckets(Vec<(u32, Vec<(String, u64)>)>),
}

/// A document whose digest differs between two replicas or that only one of them holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Difference {
    /// The document id.
    pub(crate) doc: String,
    /// Our digest, if we hold the document.
    pub(crate) ours: Option<u64>,
    /// The peer's digest, if it holds the document.
    pub(crate) theirs: Option<u64>,
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

impl Index {
    /// An empty index (about 2 MB: the tree's fingerprints and the bucket table).
    pub(crate) fn new() -> Index {
        Index {
            fps: std::array::from_fn(|level| vec![0; level_size(level as u8)]),
            leaves: vec![Vec::new(); BUCKETS],
            len: 0,
            partition_lens: vec![0; usize::from(PARTITIONS)],
        }
    }

    /// Inserts or replaces the document's digest.
    pub(crate) fn set(&mut self, doc: &str, digest: u64) {
        self.put(id_hash(doc), doc.as_bytes(), digest);
    }

    /// Sets every document of `bulk`, as many [`Index::set`]s in the order they were
    /// added would, but several times faster: bucket by bucket, each grown once to its final
    /// size, and without searching the buckets if the index was empty (then the two halves
    /// of the buckets are filled by two threads: a restart files millions of documents
    /// before the node serves).
    pub(crate) fn extend(&mut self, bulk: Bulk) {
        for (leaf, size) in self.leaves.iter_mut().zip(bulk.sizes) {
            leaf.reserve_exact(size);
        }
        if self.len > 0 {
            for mut part in bulk.parts {
                part.items.sort_unstable();
                for &(h, start) in &part.items {
                    if let Some(e) = part.packed.get(start..).and_then(|r| entries(r).next()) {
                        self.put(h, e.id, e.digest);
                    }
                }
            }
            return;
        }
        let mut low_parts = bulk.parts;
        let high_parts = low_parts.split_off(low_parts.len() / 2);
        let (low_leaves, high_leaves) = self.leaves.split_at_mut(BUCKETS / 2);
        let (low, high) = std::thread::scope(|scope| {
            let low = scope.spawn(|| fill(low_parts, low_leaves, 0));
            let high = fill(high_parts, high_leaves, BUCKETS / 2);
            (low.join(), high)
        });
        let low = match low {
            Ok(low) => low,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        for (first, (count, xors)) in [(0, low), (BUCKETS / 2, high)] {
            self.len += count;
            for (i, x) in xors.into_iter().enumerate() {
                if x != 0 {
                    self.update(first + i, x);
                }
            }
        }
        for (b, leaf) in self.leaves.iter().enumerate() {
            self.partition_lens[b / BUCKETS_PER_PARTITION] += entries(leaf).count() as u32;
        }
    }

    /// Inserts or replaces the digest of the document with this id and id hash.
    fn put(&mut self, h: u64, id: &[u8], digest: u64) {
        let b = bucket_of_hash(h);
        let leaf = &mut self.leaves[b];
        let delta = match find(leaf, id) {
            Some(e) if e.digest == digest => return,
            Some(e) => {
                leaf[e.end - 8..e.end].copy_from_slice(&digest.to_le_bytes());
                item_hash(h, e.digest) ^ item_hash(h, digest)
            }
            None => {
                push_entry(leaf, id, digest);
                self.len += 1;
                self.partition_lens[b / BUCKETS_PER_PARTITION] += 1;
                item_hash(h, digest)
            }
        };
        self.update(b, delta);
    }

    /// Removes the document (no-op if absent).
    pub(crate) fn remove(&mut self, doc: &str) {
        let h = id_hash(doc);
        let b = bucket_of_hash(h);
        let leaf = &mut self.leaves[b];
        let Some(e) = find(leaf, doc.as_bytes()) else {
            return;
        };
        leaf.drain(e.start..e.end);
        if leaf.capacity() >= 2 * leaf.len() + 64 {
            leaf.shrink_to_fit();
        }
        self.len -= 1;
        self.partition_lens[b / BUCKETS_PER_PARTITION] -= 1;
        self.update(b, item_hash(h, e.digest));
    }

    /// Number of documents in partition `p`.
    pub(crate) fn partition_len(&self, p: Partition) -> usize {
        self.partition_lens
            .get(usize::from(p.0))
            .map_or(0, |&n| n as usize)
    }

    /// The documents of partition `p`, with their digests, in no particular order.
    pub(crate) fn partition_docs(&self, p: Partition) -> Vec<(String, u64)> {
        let first = usize::from(p.0) * BUCKETS_PER_PARTITION;
        self.leaves
            .get(first..first + BUCKETS_PER_PARTITION)
            .into_iter()
            .flatten()
            .flat_map(|leaf| items(leaf).map(|(d, g)| (d.to_string(), g)))
            .collect()
    }

    /// The document's digest, if the index holds the document.
    pub(crate) fn get(&self, doc: &str) -> Option<u64> {
        find(&self.leaves[bucket_of(doc) as usize], doc.as_bytes()).map(|e| e.digest)
    }

    /// Number of documents.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every (document, digest), in no particular order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.leaves.iter().flat_map(|leaf| items(leaf))
    }

    /// The root's fingerprint (equal sets have equal roots; the empty set's is 0).
    pub(crate) fn root(&self) -> u64 {
        self.fps[0][0]
    }

    /// What a node sends to open a reconciliation: the 16 level-1 fingerprints (of the
    /// partitions in `mask`).
    pub(crate) fn opening(&self, mask: Option<&PartitionSet>) -> (u8, Vec<(u32, u64)>) {
        (1, self.children(0, 0, mask).collect())
    }

    /// The fingerprint of node `i` at `level` over the partitions in `mask` (0 for a node
    /// out of range).
    fn fp(&self, level: u8, i: usize, mask: Option<&PartitionSet>) -> u64 {
        let Some(&whole) = self.fps.get(usize::from(level)).and_then(|l| l.get(i)) else {
            return 0;
        };
        let Some(mask) = mask else {
            return whole;
        };
        if level >= PARTITION_LEVEL {
            let partition = (i * level_span(level)) / BUCKETS_PER_PARTITION;
            return if mask.contains(Partition(partition as u16)) {
                whole
            } else {
                0
            };
        }
        (i * FANOUT..(i + 1) * FANOUT).fold(0, |x, c| x ^ self.fp(level + 1, c, Some(mask)))
    }

    /// `(index, fingerprint)` of the 16 children of node `i` at `level`, over `mask`.
    fn children<'a>(
        &'a self,
        level: u8,
        i: usize,
        mask: Option<&'a PartitionSet>,
    ) -> impl Iterator<Item = (u32, u64)> + 'a {
        (i * FANOUT..(i + 1) * FANOUT).map(move |c| (c as u32, self.fp(level + 1, c, mask)))
    }

    /// Whether bucket `b` is in `mask`.
    fn in_mask(b: usize, mask: Option<&PartitionSet>) -> bool {
        mask.is_none_or(|m| m.contains(Partition((b / BUCKETS_PER_PARTITION) as u16)))
    }

    /// Answers fingerprints received at `level` for the given node indices: for every node
    /// whose fingerprint differs from ours: if level < 4, our fingerprints of its 16
    /// children (at level+1); if level == 4, our items of that bucket. Level 0 (the root,
    /// index 0) is accepted too. Ignores out-of-range levels and indices and nodes not in
    /// strictly ascending order, so the answer never exceeds one level of the tree. Only
    /// the partitions in `mask` are compared (the sender must use the same mask).
    pub(crate) fn answer(
        &self,
        level: u8,
        nodes: &[(u32, u64)],
        mask: Option<&PartitionSet>,
    ) -> Answer {
        let Some(ours) = self.fps.get(usize::from(level)) else {
            return Answer::Equal;
        };
        let differing = ascending(nodes)
            .filter(|&(i, fp)| i < ours.len() && self.fp(level, i, mask) != fp)
            .map(|(i, _)| i);
        if level < LEAF_LEVEL {
            let out: Vec<(u32, u64)> = differing
                .flat_map(|i| self.children(level, i, mask))
                .collect();
            if out.is_empty() {
                Answer::Equal
            } else {
                Answer::Fingerprints(level + 1, out)
            }
        } else {
            let out: Vec<(u32, Vec<(String, u64)>)> = differing
                .filter(|&b| Self::in_mask(b, mask))
                .map(|b| {
                    let list = items(&self.leaves[b])
                        .map(|(doc, digest)| (doc.to_string(), digest))
                        .collect();
                    (b as u32, list)
                })
                .collect();
            if out.is_empty() {
                Answer::Equal
            } else {
                Answer::Buckets(out)
            }
        }
    }

    /// Compares the peer's full item lists of some buckets with ours: every document whose
    /// digest differs or that only one side has, with (ours, theirs), by bucket then id.
    /// Buckets out of range or not in strictly ascending order are ignored, so is a doc
    /// listed under the wrong bucket; of a doc listed twice in a bucket, the first counts.
    /// Buckets outside `mask` are ignored.
    pub(crate) fn diff(
        &self,
        buckets: &[(u32, Vec<(String, u64)>)],
        mask: Option<&PartitionSet>,
    ) -> Vec<Difference> {
        let mut out = Vec::new();
        let mut next = 0;
        for (b, list) in buckets {
            let b = *b as usize;
            if b < next || b >= BUCKETS || !Self::in_mask(b, mask) {
                continue;
            }
            next = b + 1;
            let mut theirs: Vec<(&str, u64)> = list
                .iter()
                .filter(|(doc, _)| bucket_of(doc) as usize == b)
                .map(|(doc, digest)| (doc.as_str(), *digest))
                .collect();
            // Stable: of duplicates, the first listed stays first and is kept.
            theirs.sort_by(|x, y| x.0.cmp(y.0));
            theirs.dedup_by(|later, earlier| later.0 == earlier.0);
            let mut ours: Vec<(&str, u64)> = items(&self.leaves[b]).collect();
            ours.sort_unstable_by(|x, y| x.0.cmp(y.0));
            merge(&ours, &theirs, &mut out);
        }
        out
    }

    /// Bytes this index holds on the heap (capacities; the allocator's own overhead, about
    /// 16 bytes per non-empty bucket, is not counted).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        let fps: usize = self.fps.iter().map(|l| l.capacity() * 8).sum();
        let table = self.leaves.capacity() * std::mem::size_of::<Vec<u8>>();
        fps + table + self.leaves.iter().map(Vec::capacity).sum::<usize>()
    }

    /// XORs `delta` into bucket `b` and its ancestors.
    fn update(&mut self, b: usize, delta: u64) {
        for (level, fps) in self.fps.iter_mut().enumerate() {
            fps[b >> (FANOUT_BITS as usize * (LEAF_LEVEL as usize - level))] ^= delta;
        }
    }
}

/// Files the items of `parts` into `leaves`, the buckets from `first` on, of an empty
/// index: an id added several times keeps its last digest. Returns how many documents it
/// filed and the XOR of their item hashes per bucket (for the tree).
fn fill(parts: Vec<Part>, leaves: &mut [Vec<u8>], first: usize) -> (usize, Vec<u64>) {
    let mut xors = vec![0u64; leaves.len()];
    let mut count = 0;
    for mut part in parts {
        // By bucket (the hash's top bits), then in the order added: adds of one id are next
        // to each other, the last one last.
        part.items.sort_unstable();
        let (items, packed) = (&part.items, &part.packed);
        let entry = |start: usize| packed.get(start..).and_then(|r| entries(r).next());
        for (i, &(h, start)) in items.iter().enumerate() {
            let Some(e) = entry(start) else { continue };
            let replaced_later = items[i + 1..]
                .iter()
                .take_while(|&&(later, _)| later == h)
                .any(|&(_, s)| entry(s).is_some_and(|l| l.id == e.id));
            if !replaced_later {
                let b = bucket_of_hash(h) - first;
                pack(&mut leaves[b], e.id, e.digest);
                xors[b] ^= item_hash(h, e.digest);
                count += 1;
            }
        }
    }
    (count, xors)
}

/// Number of nodes at `level`.
fn level_size(level: u8) -> usize {
    1 << (FANOUT_BITS * u32::from(level))
}

/// Buckets under one node at `level`.
const fn level_span(level: u8) -> usize {
    1 << (FANOUT_BITS * (LEAF_LEVEL - level) as u32)
}

/// The nodes whose index is greater than every index before it.
fn ascending(nodes: &[(u32, u64)]) -> impl Iterator<Item = (usize, u64)> + '_ {
    let mut next = 0;
    nodes.iter().filter_map(move |&(i, fp)| {
        let i = i as usize;
        if i < next {
            return None;
        }
        next = i.saturating_add(1);
        Some((i, fp))
    })
}

/// Appends the differences of two lists sorted by id, each id once.
fn merge(ours: &[(&str, u64)], theirs: &[(&str, u64)], out: &mut Vec<Difference>) {
    let difference = |doc: &str, ours, theirs| Difference {
        doc: doc.to_string(),
        ours,
        theirs,
    };
    let (mut i, mut j) = (0, 0);
    loop {
        match (ours.get(i), theirs.get(j)) {
            (Some(&(o, og)), Some(&(t, tg))) => match o.cmp(t) {
                std::cmp::Ordering::Less => {
                    out.push(difference(o, Some(og), None));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(difference(t, None, Some(tg)));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if og != tg {
                        out.push(difference(o, Some(og), Some(tg)));
                    }
                    i += 1;
                    j += 1;
                }
            },
            (Some(&(o, og)), None) => {
                out.push(difference(o, Some(og), None));
                i += 1;
            }
            (None, Some(&(t, tg))) => {
                out.push(difference(t, None, Some(tg)));
                j += 1;
            }
            (None, None) => return,
        }
    }
}

// ---- Hashes: fixed algorithms, identical on every build and platform. ----

/// The splitmix64 finaliser: a bijection that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stable 64-bit hash of a document id.
fn id_hash(doc: &str) -> u64 {
    mix(fnv1a(doc.as_bytes()))
}

/// The leaf bucket of an id hash: its top 16 bits.
fn bucket_of_hash(h: u64) -> usize {
    (h >> (64 - FANOUT_BITS * LEAF_LEVEL as u32)) as usize
}

/// The leaf bucket of a document (the same on every replica).
pub(crate) fn bucket_of(doc: &str) -> u32 {
    bucket_of_hash(id_hash(doc)) as u32
}

/// The hash of an item: its id hash mixed with its digest.
fn item_hash(id_hash: u64, digest: u64) -> u64 {
    mix(id_hash ^ mix(digest ^ ITEM_SEED))
}

// ---- Packed buckets: per item, the id's length (LEB128), its bytes, the digest (LE). ----

/// One item of a packed bucket, by position.
struct Entry<'a> {
    /// Where the item starts.
    start: usize,
    /// Where it ends (the digest is the 8 bytes before).
    end: usize,
    id: &'a [u8],
    digest: u64,
}

/// Appends an item to a packed bucket, growing it by at most an eighth beyond the need.
fn push_entry(leaf: &mut Vec<u8>, id: &[u8], digest: u64) {
    let header = (usize::BITS - id.len().leading_zeros()).div_ceil(7).max(1) as usize;
    let need = header + id.len() + 8;
    if leaf.capacity() - leaf.len() < need {
        leaf.reserve_exact(need.max(leaf.len() / 8));
    }
    pack(leaf, id, digest);
}

/// Appends an item's bytes (the vector grows as vectors do).
fn pack(out: &mut Vec<u8>, id: &[u8], digest: u64) {
    let mut n = id.len();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(&digest.to_le_bytes());
}

/// The items of a packed bucket.
fn entries(leaf: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let start = pos;
        let (mut len, mut shift) = (0usize, 0u32);
        loop {
            let byte = *leaf.get(pos)?;
            pos += 1;
            len |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte < 0x80 {
                break;
            }
            shift += 7;
        }
        let id = leaf.get(pos..pos.checked_add(len)?)?;
        pos += len;
        let digest = u64::from_le_bytes(leaf.get(pos..pos + 8)?.try_into().ok()?);
        pos += 8;
        Some(Entry {
            start,
            end: pos,
            id,
            digest,
        })
    })
}

/// Where an item is in a packed bucket, and its digest.
struct Slot {
    start: usize,
    end: usize,
    digest: u64,
}

/// The item of `id` in a packed bucket.
fn find(leaf: &[u8], id: &[u8]) -> Option<Slot> {
    // The last byte first: cheaper than a call to memcmp for every item of the bucket.
    entries(leaf)
        .find(|e| e.id.len() == id.len() && e.id.last() == id.last() && e.id == id)
        .map(|e| Slot {
            start: e.start,
            end: e.end,
            digest: e.digest,
        })
}

/// The (id, digest) pairs of a packed bucket. Ids were written from `&str`, so the UTF-8
/// check never fails.
fn items(leaf: &[u8]) -> impl Iterator<Item = (&str, u64)> {
    entries(leaf).filter_map(|e| Some((std::str::from_utf8(e.id).ok()?, e.digest)))
}

#[cfg(test)]
mod tests;
