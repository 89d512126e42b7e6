//! [`NodeConfig`]: everything one node needs, from a topology file or from a builder (for
//! tests and embedding).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::certs::TlsIdentity;
use crate::config::{Config, TopologyKind, Tuning};
use crate::membership::Membership;
use crate::storage::MemoryStore;
use crate::topology::Topology;

use super::{Error, Node};

/// Where a node keeps its data.
#[derive(Clone)]
pub enum StorageChoice {
    /// A durable store in this directory.
    Dir(PathBuf),
    /// An in-memory store (tests, simulations); clones share data.
    Memory(MemoryStore),
}

/// Everything one node needs to run.
#[derive(Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: String,
    /// Cluster id.
    pub cluster: String,
    /// The topology (every node of the cluster, this one included).
    pub topology: Topology,
    /// Peer (QUIC) addresses of the other nodes, where known.
    pub peers: BTreeMap<String, SocketAddr>,
    /// Address to bind for peers.
    pub listen: SocketAddr,
    /// TLS identity (cluster CA, certificate, key).
    pub identity: TlsIdentity,
    /// Storage.
    pub storage: StorageChoice,
    /// Tuning knobs.
    pub tuning: Tuning,
    /// The live topology, for a node started from a topology file: it replicates between
    /// the nodes, and `add-node`/`remove-node` change it while the cluster runs. `None`
    /// (nodes built in code): the topology stays as given.
    pub membership: Option<crate::membership::Membership>,
    /// Bytes waiting to be written to storage, at most, before the node refuses writes with
    /// 503 and stops reading from peers until storage catches up (default
    /// [`DEFAULT_STORE_QUEUE_BYTES`]; see the module [`crate::node`]).
    pub store_queue_bytes: usize,
}

/// The default of [`NodeConfig::store_queue_bytes`]: 64 MiB.
pub const DEFAULT_STORE_QUEUE_BYTES: usize = 64 << 20;

/// The file in a node's data directory that holds the newest live topology it knows.
pub const TOPOLOGY_FILE: &str = "topology.json";

impl NodeConfig {
    /// The configuration of node `id` of a loaded topology file (certificates are read).
    pub fn from_file(config: &Config, id: &str) -> Result<NodeConfig, Error> {
        let me = config
            .node(id)
            .ok_or_else(|| Error::UnknownNode(id.to_string()))?;
        let identity = crate::certs::load_identity(&config.ca, &me.cert, &me.key)?;
        let stored = read_stored_topology(&me.data.join(TOPOLOGY_FILE))?;
        let membership = Membership::with_config(config, stored);
        if !membership.is_live(id) {
            return Err(Error::Removed(id.to_string()));
        }
        let peers = membership
            .live()
            .into_iter()
            .filter(|m| m.id != id)
            .map(|m| (m.id.clone(), m.peer))
            .collect();
        Ok(NodeConfig {
            id: id.to_string(),
            cluster: config.cluster.clone(),
            topology: membership.topology(),
            peers,
            listen: me.peer,
            identity,
            storage: StorageChoice::Dir(me.data.clone()),
            tuning: config.tuning.clone(),
            membership: Some(membership),
            store_queue_bytes: DEFAULT_STORE_QUEUE_BYTES,
        })
    }
}

/// Builds a [`NodeConfig`] in code. Defaults: listen on 127.0.0.1:0, in-memory storage,
/// a mesh of this node and its peers, default tuning.
pub struct NodeBuilder {
    config: NodeConfig,
    topology: Option<Topology>,
}

impl NodeBuilder {
    /// A node `id` of cluster `cluster` with its TLS identity.
    pub fn new(id: &str, cluster: &str, identity: TlsIdentity) -> Self {
        NodeBuilder {
            config: NodeConfig {
                id: id.to_string(),
                cluster: cluster.to_string(),
                topology: Topology::new(TopologyKind::Mesh, vec![id.to_string()], Vec::new()),
                peers: BTreeMap::new(),
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                identity,
                storage: StorageChoice::Memory(MemoryStore::new()),
                tuning: Tuning::default(),
                membership: None,
                store_queue_bytes: DEFAULT_STORE_QUEUE_BYTES,
            },
            topology: None,
        }
    }

    /// The cluster's topology (must contain this node).
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = Some(topology);
        self
    }

    /// A peer's QUIC address.
    pub fn peer(mut self, id: &str, addr: SocketAddr) -> Self {
        self.config.peers.insert(id.to_string(), addr);
        self
    }

    /// The address to bind for peers.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Durable storage in `dir`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.storage = StorageChoice::Dir(dir.into());
        self
    }

    /// In-memory storage shared with `store`'s other clones.
    pub fn memory(mut self, store: MemoryStore) -> Self {
        self.config.storage = StorageChoice::Memory(store);
        self
    }

    /// Tuning knobs.
    pub fn tuning(mut self, tuning: Tuning) -> Self {
        self.config.tuning = tuning;
        self
    }

    /// Bytes waiting to be written to storage, at most (see
    /// [`NodeConfig::store_queue_bytes`]).
    pub fn store_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.store_queue_bytes = bytes;
        self
    }

    /// The configuration.
    pub fn build(self) -> NodeConfig {
        let mut config = self.config;
        config.topology = self.topology.unwrap_or_else(|| {
            let mut nodes = vec![config.id.clone()];
            nodes.extend(config.peers.keys().cloned());
            Topology::new(TopologyKind::Mesh, nodes, Vec::new())
        });
        config
    }

    /// Builds and starts the node.
    pub async fn start(self) -> Result<Node, Error> {
        Node::start(self.build()).await
    }
}

/// The live topology a node stored, if any; a file that cannot be read or parsed fails the
/// start (it is never silently replaced by the older topology file).
fn read_stored_topology(path: &std::path::Path) -> Result<Option<Membership>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::StoredTopology {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::StoredTopology {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// Writes the live topology to `path` atomically (a temporary file, fsync'd, renamed).
pub(crate) fn write_stored_topology(path: &std::path::Path, m: &Membership) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(m).map_err(std::io::Error::other)?;
    crate::files::write_atomic(path, &bytes, crate::files::Access::Keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{init_cluster, InitOptions};

    #[test]
    fn a_node_of_a_file_places_documents_on_the_files_replicas() {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let mut opts = InitOptions::new(tmp.path(), 4, TopologyKind::Mesh);
        opts.replicas = Some(2);
        let config = Config::load(&init_cluster(&opts).expect("written")).expect("loads");
        let node = NodeConfig::from_file(&config, "n1").expect("the node's configuration");
        assert_eq!(node.topology.replicas(), 2);
        assert_eq!(node.topology, config.topology());
        let membership = node.membership.expect("a live topology");
        assert_eq!(membership.replicas(), Some(2));

        // A stored live topology without replicas (n4 removed): the file's replicas apply
        // to the stored nodes.
        let mut stored = Membership::from_config(&Config {
            replicas: None,
            ..config.clone()
        });
        stored.propose_remove("n1", "n4").expect("removed");
        let data = &config.nodes[0].data;
        std::fs::create_dir_all(data).expect("the data directory");
        write_stored_topology(&data.join(TOPOLOGY_FILE), &stored).expect("stored");
        let node = NodeConfig::from_file(&config, "n1").expect("the node's configuration");
        assert_eq!(node.topology.nodes(), &["n1", "n2", "n3"]);
        assert_eq!(node.topology.replicas(), 2);
        assert!(node.topology.placement().is_some());
    }
}
