//! Documents on R of the N nodes, and nodes added or removed while the writes go on: the
//! topology every replica follows, the links that change with it, a removed node that
//! hands its documents off before it stops, and the copies of acknowledged writes, which
//! must never be fewer than acknowledged.
//!
//! A seed with a placement gives every replica a [`Topology`] (mesh or two-way ring, as
//! the links) with `replicas` R. A node may write any document: where it is not a replica
//! the write is a hint, which the core hands to the replicas and then drops
//! ([`Effect::Drop`](concordant::core::Effect::Drop), carried out as a store job). A
//! membership change happens at one virtual instant for every node: an added node starts
//! empty, linked to every node (mesh) or between the last and the first node of the ring;
//! a removed node takes no more writes and follows the new topology, in which it holds
//! nothing, so it hands off everything it stores, over its old links, and stops (no links,
//! never restarted) once its store is empty. Stopping it at once would lose what only it
//! holds: a writer's own durable copy counts as acknowledged.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{Automerge, ChangeHash};
use concordant::storage::{MemoryStore, Store};
use concordant::topology::{RingDirection, Topology, TopologyKind};

use super::world::{stored_index, Link, Node, Sim};

/// The seed's membership change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Change {
    /// A new node, at the end of the ring order.
    Add,
    /// Node `k` leaves.
    Remove(usize),
}

/// The hashes of every change `store` holds, per document, decoded from its contents (a
/// snapshot's changes, and the changes appended after it, applied or not).
pub(crate) fn stored_hashes(store: &MemoryStore) -> BTreeMap<String, BTreeSet<ChangeHash>> {
    let reader = store.reader();
    let mut all = BTreeMap::new();
    for (doc, _) in stored_index(store) {
        let stored = reader
            .read(&doc)
            .expect("a memory store reads")
            .expect("an indexed document is stored");
        let mut hashes = BTreeSet::new();
        if let Some(snapshot) = &stored.snapshot {
            let d = Automerge::load(snapshot).expect("a stored snapshot loads");
            hashes.extend(d.get_changes(&[]).iter().map(|c| c.hash()));
        }
        for bytes in &stored.changes {
            let change =
                automerge::Change::from_bytes(bytes.clone()).expect("a stored change decodes");
            hashes.insert(change.hash());
        }
        all.insert(doc, hashes);
    }
    all
}

/// What the simulation counts as node `node`'s stored changes is in its store: the same
/// documents, and every change counted (a compaction's snapshot may hold more).
pub(crate) fn check_held(node: &Node) -> Result<(), String> {
    let stored = stored_hashes(&node.store);
    let (counted, actual): (Vec<&String>, Vec<&String>) =
        (node.held.keys().collect(), stored.keys().collect());
    if counted != actual {
        return Err(format!(
            "{} stores {actual:?}, the simulation counted {counted:?}",
            node.name
        ));
    }
    for (doc, hashes) in &node.held {
        if let Some(lost) = hashes.difference(&stored[doc]).next() {
            return Err(format!(
                "{}'s store has lost change {lost} of {doc}",
                node.name
            ));
        }
    }
    Ok(())
}

impl Node {
    pub(crate) fn new(i: usize, store: MemoryStore) -> Node {
        Node {
            name: format!("n{i}"),
            replica: None,
            life: 0,
            held: stored_hashes(&store),
            store,
            persist_free_at: 0,
            durable: BTreeSet::new(),
            compacting: BTreeSet::new(),
            timer_at: None,
            gone: false,
        }
    }
}

impl Sim {
    /// The topology of the current members, with the seed's placement (`None` without).
    pub(crate) fn build_topology(&self) -> Option<Topology> {
        let r = self.replicas?;
        let kind = if self.ring {
            TopologyKind::Ring(RingDirection::Both)
        } else {
            TopologyKind::Mesh
        };
        let ids = self
            .members
            .iter()
            .map(|&i| self.nodes[i].name.clone())
            .collect();
        let topology = Topology::new(kind, ids, Vec::new())
            .with_replicas(Some(r))
            .expect("R is below the number of nodes");
        assert!(topology.placement().is_some(), "R below N places documents");
        Some(topology)
    }

    /// Nodes that take writes: running members (not a removed node handing off).
    pub(crate) fn writable(&self) -> Vec<usize> {
        self.members
            .iter()
            .copied()
            .filter(|&i| self.alive(i))
            .collect()
    }

    /// Whether node `i` replicates `doc` (every member does without a placement).
    pub(crate) fn replicates(&self, i: usize, doc: &str) -> bool {
        match &self.topology {
            Some(t) => t.holds(&self.nodes[i].name, doc),
            None => self.members.contains(&i),
        }
    }

    /// The replicas of `doc` under the current topology, ascending.
    pub(crate) fn replica_nodes(&self, doc: &str) -> Vec<usize> {
        let mut nodes: Vec<usize> = self
            .members
            .iter()
            .copied()
            .filter(|&i| self.replicates(i, doc))
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// Adds or removes the seed's node; every node follows the new topology at once.
    pub(crate) fn change_membership(&mut self, change: Change) {
        match change {
            Change::Add => self.add_node(),
            Change::Remove(k) => self.remove_node(k),
        }
        self.changed = Some((change, self.now));
    }

    fn add_node(&mut self) {
        let i = self.nodes.len();
        self.nodes.push(Node::new(i, MemoryStore::new()));
        let first = self.members[0];
        let last = *self.members.last().expect("members");
        let (new, closed) = if self.ring {
            // The ring now closes through the new node.
            let closed = self.link_of.get(&(last, first)).copied();
            (vec![(last, i), (i, first)], closed)
        } else {
            (self.members.iter().map(|&m| (m, i)).collect(), None)
        };
        self.members.push(i);
        self.log(|| format!("add n{i}: members {:?}", self.members));
        self.follow_topology();
        if let Some(l) = closed {
            self.links[l].active = false;
            self.update_link(l);
        }
        for (a, b) in new {
            self.link(a, b);
        }
        self.start(i);
    }

    fn remove_node(&mut self, k: usize) {
        let p = self
            .members
            .iter()
            .position(|&m| m == k)
            .expect("a member leaves");
        self.members.remove(p);
        self.retiring = Some(k);
        self.log(|| format!("remove n{k}: members {:?}", self.members));
        // The removed node follows it too: it holds nothing there, everything it stores
        // is handed off.
        self.follow_topology();
        if self.ring {
            let m = self.members.len();
            let (prev, next) = (self.members[(p + m - 1) % m], self.members[p % m]);
            self.link(prev, next);
        }
    }

    /// Every running replica takes the current topology.
    fn follow_topology(&mut self) {
        self.topology = self.build_topology();
        let topology = self.topology.clone().expect("only with a placement");
        for i in 0..self.nodes.len() {
            if let Some(r) = self.nodes[i].replica.as_mut() {
                r.set_router(Box::new(topology.clone()));
                self.pump(i);
            }
        }
    }

    /// An active link between `a` and `b` (a new one if they had none), up if it can be.
    fn link(&mut self, a: usize, b: usize) {
        let l = match self.link_of.get(&(a, b)) {
            Some(&l) => l,
            None => {
                let l = self.links.len();
                self.links.push(Link {
                    a: a.min(b),
                    b: a.max(b),
                    cuts: 0,
                    up: false,
                    epoch: 0,
                    active: true,
                });
                self.link_of.insert((a, b), l);
                self.link_of.insert((b, a), l);
                l
            }
        };
        self.links[l].active = true;
        self.update_link(l);
    }

    /// A removed node that stores nothing any more (and has nothing on its way to its
    /// store) stops for good: its links go.
    pub(crate) fn retire_if_drained(&mut self) {
        let Some(k) = self.retiring else {
            return;
        };
        let node = &self.nodes[k];
        // Down: it goes on handing off once restarted.
        let Some(r) = node.replica.as_ref() else {
            return;
        };
        if r.doc_count() > 0
            || node.persist_free_at >= self.now
            || !stored_index(&node.store).is_empty()
        {
            return;
        }
        self.log(|| format!("n{k} has handed everything off: it stops"));
        self.retiring = None;
        self.nodes[k].gone = true;
        for l in 0..self.links.len() {
            if self.links[l].a == k || self.links[l].b == k {
                self.links[l].active = false;
            }
        }
        self.crash(k);
    }

    /// Never fewer copies than acknowledged: each acknowledged write (of `doc`, or of
    /// every document) is in at least as many stores (of nodes crashed or not) as copies
    /// were acknowledged, up to R (a hint's writer may drop its copy once all R replicas
    /// hold it: a node's API never promises more than R copies).
    pub(crate) fn check_copies(&self, doc: Option<&str>) -> Result<(), String> {
        let cap = self.replicas.unwrap_or(usize::MAX);
        for w in &self.writes {
            if doc.is_some_and(|d| d != w.doc) || !w.acknowledged() {
                continue;
            }
            let holders: Vec<&str> = self
                .nodes
                .iter()
                .filter(|n| n.held.get(&w.doc).is_some_and(|h| h.contains(&w.hash)))
                .map(|n| n.name.as_str())
                .collect();
            let needed = w.copies().min(cap);
            if holders.len() < needed {
                return Err(format!(
                    "acknowledged write {} of {} by n{} ({} copies: durable at its writer {}, \
                     acked by {:?}) is stored at {holders:?} only",
                    w.hash,
                    w.doc,
                    w.node,
                    w.copies(),
                    w.acked,
                    w.acks
                ));
            }
        }
        Ok(())
    }

    /// Each document held by some member is held by its replicas, and by them only, with
    /// the same heads on each (its store's heads where not in memory).
    pub(crate) fn placement_errors(&self) -> Result<(), String> {
        let mut by_doc: BTreeMap<String, Vec<(usize, Vec<ChangeHash>)>> = BTreeMap::new();
        for &i in &self.members {
            let heads = self.all_heads(i).ok_or_else(|| format!("n{i} is down"))?;
            for (doc, h) in heads {
                by_doc.entry(doc).or_default().push((i, h));
            }
        }
        for (doc, held) in &mut by_doc {
            held.sort();
            let at: Vec<usize> = held.iter().map(|(i, _)| *i).collect();
            let replicas = self.replica_nodes(doc);
            if at != replicas {
                return Err(format!("{doc} is at {at:?}, its replicas are {replicas:?}"));
            }
            let (first, first_heads) = &held[0];
            if let Some((i, h)) = held.iter().find(|(_, h)| h != first_heads) {
                return Err(format!(
                    "{doc} has heads {h:?} at n{i}, {first_heads:?} at n{first}"
                ));
            }
        }
        Ok(())
    }
}
