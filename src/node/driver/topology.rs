//! The live topology in the driver: this node's copy of the cluster's
//! [`Membership`](crate::membership::Membership), merged with every copy a peer sends (on
//! link-up and after each change), changed by `add-node`/`remove-node` through the API,
//! stored in the data directory, and followed at once: links, the transport's members, the
//! core's router and the placement the node's handles and write concerns follow.

use serde_json::Value;

use super::Driver;
use crate::membership::Membership;
use crate::node::{Error, TopologyChange};
use crate::topology::Topology;
use crate::wire::Message;

impl Driver {
    /// A link came up: the peer gets our topology (it merges it).
    pub(super) fn send_topology(&mut self, peer: &str) {
        if let Some(m) = &self.membership {
            let _ = self
                .transport
                .send(peer, Message::Topology(Box::new(m.clone())));
        }
    }

    /// A peer's topology: merged; followed if it changed ours.
    pub(super) fn receive_topology(&mut self, from: &str, theirs: &Membership) {
        let Some(mine) = self.membership.as_mut() else {
            return;
        };
        if mine.merge(theirs) {
            tracing::info!(node = %self.id, from, version = mine.version(), "live topology changed");
            self.topology_changed();
        }
        if self.joining {
            self.joined();
        }
    }

    /// The first peer's topology came to a node on its first start (a peer sends it
    /// before anything else on a link, so nothing a peer sent was taken before): a node
    /// the cluster added while it ran (`add-node`) fills its partitions from their other
    /// replicas before it serves them; one of the topology file's first nodes has nothing
    /// to fill. (Until then the node serves its own copies, as any node with no link.)
    fn joined(&mut self) {
        self.joining = false;
        let Some(m) = &self.membership else {
            return;
        };
        let added_live = m
            .member(&self.id)
            .is_some_and(|me| me.added != crate::membership::Stamp::file());
        if added_live {
            self.replica
                .resume_filling(&crate::placement::PartitionSet::full());
            tracing::info!(node = %self.id, partitions = self.replica.filling().len(), "this node joined a running cluster: its partitions fill from their other replicas before they serve");
        }
        self.store_topology(m);
    }

    /// Keeps the live topology in the data directory.
    fn store_topology(&self, m: &Membership) {
        if let Some(path) = &self.topology_file {
            if let Err(e) = crate::node::builder::write_stored_topology(path, m) {
                tracing::error!(node = %self.id, path = %path.display(), "cannot store the live topology: {e}");
            }
        }
    }

    /// The live topology as `GET /v1/topology` shows it; `None` without one.
    pub(super) fn topology_json(&self) -> Option<Value> {
        self.membership.as_ref().map(Membership::to_json)
    }

    /// Proposes a change; on success it spreads to every node and is followed here at once.
    pub(super) fn change_topology(&mut self, change: TopologyChange) -> Result<Value, Error> {
        let me = self.id.clone();
        let Some(m) = self.membership.as_mut() else {
            return Err(Error::Topology(
                "this node was not started from a topology file: its topology is fixed".into(),
            ));
        };
        let result = match change {
            TopologyChange::Add {
                id,
                peer,
                api,
                links,
            } => {
                if links.is_empty() {
                    m.propose_add(&me, &id, peer, api)
                } else {
                    m.propose_add_with_links(&me, &id, peer, api, &links)
                }
            }
            TopologyChange::Remove { id } => m.propose_remove(&me, &id),
            TopologyChange::Link(a, b) => m.propose_link(&me, &a, &b),
            TopologyChange::Unlink(a, b) => m.propose_unlink(&me, &a, &b),
        };
        result.map_err(|e| Error::Topology(e.to_string()))?;
        tracing::info!(node = %me, version = m.version(), "live topology changed here");
        self.topology_changed();
        self.topology_json()
            .ok_or_else(|| Error::Topology("no live topology".into()))
    }

    /// True if `change` is a valid removal of this node while it is live: it drains
    /// first. (An invalid one, such as the removal of the last node, is refused at once.)
    pub(super) fn removes_me(&self, change: &TopologyChange) -> bool {
        let TopologyChange::Remove { id } = change else {
            return false;
        };
        *id == self.id
            && self.draining.is_none()
            && self.membership.as_ref().is_some_and(|m| {
                m.is_live(&self.id) && m.clone().propose_remove(&self.id, &self.id).is_ok()
            })
    }

    /// Follows the current topology: stores it, passes it on, and relinks. Links to nodes
    /// being removed close a moment later ([`REMOVAL_GRACE_MS`]), so that the news reaches
    /// them first and they stop taking writes.
    fn topology_changed(&mut self) {
        let Some(m) = self.membership.clone() else {
            return;
        };
        self.store_topology(&m);
        for member in m.live() {
            if member.id != self.id {
                self.addrs.insert(member.id.clone(), member.peer);
            }
        }
        let connected = self.transport.connected();
        for peer in &connected {
            self.send_topology(peer);
        }
        if !m.is_live(&self.id) {
            tracing::warn!(node = %self.id, "this node was removed from the cluster: it takes no more writes and stops replicating");
            self.removed = true;
            self.relink_at = Some(self.now() + REMOVAL_GRACE_MS);
            self.end_drain(Ok(m.to_json()));
            return;
        }
        self.replica.set_router(Box::new(m.topology()));
        self.topology.send_replace(m.topology());
        if connected.iter().any(|p| !m.is_live(p)) {
            self.relink_at = Some(self.now() + REMOVAL_GRACE_MS);
        } else {
            self.relink();
        }
    }

    /// The other replicas of `doc` (every other node without a placement): what write
    /// concern `all` waits for.
    pub(super) fn other_replicas(&self, doc: &str) -> usize {
        let topology = self.topology.borrow();
        topology.replicas() - usize::from(topology.holds(&self.id, doc))
    }

    /// At each tick: a relink put off by [`Driver::topology_changed`] is due.
    pub(super) fn topology_tick(&mut self, now: u64) {
        if self.relink_at.is_some_and(|at| now >= at) {
            self.relink_at = None;
            self.relink();
        }
    }

    /// Links, the transport's members and the addresses follow the live topology (none at
    /// all once this node is removed).
    fn relink(&mut self) {
        let Some(m) = &self.membership else {
            return;
        };
        let (members, topology) = if self.removed {
            let alone = Topology::new(m.kind(), vec![self.id.clone()], Vec::new());
            (Vec::new(), alone)
        } else {
            let others = m
                .live()
                .iter()
                .map(|n| n.id.clone())
                .filter(|n| *n != self.id)
                .collect();
            (others, m.topology())
        };
        self.addrs.retain(|id, _| members.contains(id));
        self.transport.set_members(members);
        let changes = self.links.set_topology(topology);
        self.apply_links(changes);
    }
}

/// How long links to a node being removed stay after the removal is known here, in ms.
const REMOVAL_GRACE_MS: u64 = 1_000;
