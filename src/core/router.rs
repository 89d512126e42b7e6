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
}
