//! Where a change goes next: the core asks a [`Router`] for the peers to push it to, and
//! which nodes replicate a document when each is on fewer nodes than all.

use crate::placement::Placement;

/// Decides forwarding. `origin` is the node where the changes were written (possibly this
/// node), `from` the peer they came from (`None` for local changes), `connected` the peers
/// with a live link. Must never return `from`.
pub trait Router: Send {
    /// Peers to push to.
    fn targets(
        &self,
        me: &str,
        origin: &str,
        from: Option<&str>,
        connected: &[String],
    ) -> Vec<String>;

    /// Where documents live, if each is on fewer nodes than all (`None`: every node
    /// replicates every document). Changes of a document are pushed only to its replicas,
    /// and two nodes reconcile only the partitions both replicate.
    fn placement(&self) -> Option<&Placement> {
        None
    }

    /// The connected peer through which `me` reaches `to`: `to` itself when connected
    /// (the only way without a topology).
    fn next_hop(&self, _me: &str, to: &str, connected: &[String]) -> Option<String> {
        connected.iter().find(|c| *c == to).cloned()
    }

    /// Whether the topology links `a` and `b` directly (every pair, without one).
    fn linked(&self, _a: &str, _b: &str) -> bool {
        true
    }
}

/// Push to every connected peer except the sender and the origin. Correct on any graph;
/// duplicates are dropped on arrival, so flooding ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flood;

impl Router for Flood {
    fn targets(
        &self,
        _me: &str,
        origin: &str,
        from: Option<&str>,
        connected: &[String],
    ) -> Vec<String> {
        connected
            .iter()
            .filter(|p| Some(p.as_str()) != from && p.as_str() != origin)
            .cloned()
            .collect()
    }
}

impl Router for crate::topology::Topology {
    fn targets(
        &self,
        me: &str,
        origin: &str,
        from: Option<&str>,
        connected: &[String],
    ) -> Vec<String> {
        self.forward_targets(me, origin, from, connected)
    }

    fn placement(&self) -> Option<&Placement> {
        crate::topology::Topology::placement(self)
    }

    fn next_hop(&self, me: &str, to: &str, connected: &[String]) -> Option<String> {
        crate::topology::Topology::next_hop(self, me, to, connected)
    }

    fn linked(&self, a: &str, b: &str) -> bool {
        crate::topology::Topology::linked(self, a, b)
    }
}
