//! Fault injection under real QUIC for a [`TestCluster`]: the loopback relays of
//! [`concordant::netem`], one per directed pair of nodes, that drop, delay, duplicate and
//! reorder datagrams, and cut links, per direction, changeable at run time.
//!
//! Owns: [`Net`], which binds the relays for a cluster, routes the cluster's nodes through
//! them ([`TestCluster::routes`]) and tells the relays where each started node lives. Every
//! fault and counter is the library's [`Relays`] (reached through `Deref`). Nodes keep
//! their address across restarts, so the relays stay valid; start nodes with
//! [`Net::start_node`] so the relays learn it.
#![allow(dead_code, unused_imports)]

use concordant::node::Node;

pub use concordant::netem::{LinkFaults, LinkStats, Relays};

use super::TestCluster;

/// The relays between the nodes of one cluster, and the handle to break the network.
pub struct Net {
    relays: Relays,
}

impl std::ops::Deref for Net {
    type Target = Relays;

    fn deref(&self) -> &Relays {
        &self.relays
    }
}

impl Net {
    /// Binds a relay for every directed pair of `cluster`'s nodes and routes the cluster
    /// through them; call before starting any node, then start nodes with
    /// [`Net::start_node`].
    pub async fn attach(cluster: &mut TestCluster, seed: u64) -> Net {
        assert!(
            cluster.live().is_empty(),
            "attach the relays before starting any node"
        );
        let relays = Relays::bind(cluster.len(), seed)
            .await
            .expect("relays bound on 127.0.0.1");
        cluster.routes = Some(relays.routes());
        Net { relays }
    }

    /// Starts (or restarts) node `i` of `cluster` and lets the relays towards it know its
    /// address.
    pub async fn start_node(&self, cluster: &mut TestCluster, i: usize) -> Node {
        let node = cluster.start_node(i).await;
        self.relays.set_target(i, node.peer_addr());
        node
    }

    /// Starts every node of `cluster` and waits for its links (bounded, panics with a
    /// report).
    pub async fn start_all(&self, cluster: &mut TestCluster) {
        for i in 0..cluster.len() {
            self.start_node(cluster, i).await;
        }
        cluster.wait_linked(super::LINK_TIMEOUT).await;
    }
}
