//! Which links this node holds: the topology's links, healed around nodes believed down
//! (ring failover), plus down nodes that are probed so original links come back. Pure
//! bookkeeping; the driver turns its answers into transport connects and disconnects.

use std::collections::BTreeSet;

use crate::topology::Topology;

/// Link state of one node.
pub(crate) struct Links {
    me: String,
    topology: Topology,
    down: BTreeSet<String>,
    wanted: BTreeSet<String>,
}

/// What changed after an event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LinkChanges {
    pub(crate) connect: Vec<String>,
    pub(crate) disconnect: Vec<String>,
}

impl Links {
    pub(crate) fn new(me: &str, topology: Topology) -> Self {
        Links {
            me: me.to_string(),
            topology,
            down: BTreeSet::new(),
            wanted: BTreeSet::new(),
        }
    }

    /// Initial links (everyone presumed alive).
    pub(crate) fn start(&mut self) -> LinkChanges {
        self.recompute()
    }

    /// A dial failed or a connection was lost. Not for a link this node no longer wants
    /// (closed by itself once ring healing was no longer needed): that says nothing about
    /// the peer, and believed down it would be routed around for good.
    pub(crate) fn mark_down(&mut self, peer: &str) -> LinkChanges {
        if !self.wanted.contains(peer) {
            return LinkChanges::default();
        }
        if self.down.insert(peer.to_string()) {
            tracing::info!(node = %self.me, peer, "peer down");
            self.recompute()
        } else {
            LinkChanges::default()
        }
    }

    /// A connection to `peer` is up.
    pub(crate) fn mark_up(&mut self, peer: &str) -> LinkChanges {
        if self.down.remove(peer) {
            self.recompute()
        } else {
            LinkChanges::default()
        }
    }

    /// The live topology changed: links follow it (new nodes are linked, removed ones
    /// dropped), with what is known down kept.
    pub(crate) fn set_topology(&mut self, topology: Topology) -> LinkChanges {
        self.down.retain(|n| topology.contains(n));
        self.topology = topology;
        self.recompute()
    }

    /// True if this node currently wants a link (or a probe) to `peer`.
    pub(crate) fn wants(&self, peer: &str) -> bool {
        self.wanted.contains(peer)
    }

    /// Every node of the topology.
    pub(crate) fn topology_nodes(&self) -> Vec<String> {
        self.topology.nodes().to_vec()
    }

    /// Nodes believed down.
    pub(crate) fn down(&self) -> &BTreeSet<String> {
        &self.down
    }

    /// The live topology.
    pub(crate) fn topology(&self) -> &Topology {
        &self.topology
    }

    /// True if `peer` is not this node's neighbour in the topology: a link to it is made
    /// by ring healing.
    pub(crate) fn is_healing(&self, peer: &str) -> bool {
        !self.topology.neighbours(&self.me).iter().any(|n| n == peer)
    }

    /// Links that the topology wants right now (without probes).
    pub(crate) fn desired(&self) -> Vec<String> {
        let down = &self.down;
        self.topology
            .desired_links(&self.me, &|n: &str| down.contains(n))
    }

    fn recompute(&mut self) -> LinkChanges {
        let down = &self.down;
        let is_down = |n: &str| down.contains(n);
        let desired = self.topology.desired_links(&self.me, &is_down);
        let probes = self.topology.probe_targets(&self.me, &is_down);
        let next: BTreeSet<String> = desired.iter().chain(probes.iter()).cloned().collect();
        let changes = LinkChanges {
            connect: next.difference(&self.wanted).cloned().collect(),
            disconnect: self.wanted.difference(&next).cloned().collect(),
        };
        let statics: BTreeSet<String> = self.topology.neighbours(&self.me).into_iter().collect();
        for peer in &desired {
            if !statics.contains(peer) && !self.wanted.contains(peer) {
                tracing::info!(node = %self.me, peer = %peer, down = ?self.down, "healing: linking around down nodes");
            }
        }
        for peer in &changes.disconnect {
            tracing::info!(node = %self.me, peer = %peer, "link no longer needed: closing");
        }
        self.wanted = next;
        changes
    }
}
