//! A local cluster in one process: N nodes over real QUIC on 127.0.0.1 with fresh
//! certificates and durable storage in a temporary directory. Used by `concordant demo`
//! and `concordant bench`; handy for tests and experiments. Each document lives on every
//! node, or on R of them ([`Topology::with_replicas`]); the cluster compares documents
//! across their replicas only. With [`LocalCluster::relay_links`] every link crosses the
//! relays of [`crate::netem`] (slow or lossy links on loopback).

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::certs::{in_memory_identities, TlsIdentity};
use crate::config::{TopologyKind, Tuning};
use crate::netem::{LinkFaults, Relays};
use crate::node::{Error, Node, NodeBuilder};
use crate::placement::{Partition, PlacementError};
use crate::topology::Topology;

/// Errors of a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The temporary directory or the certificates could not be made.
    #[error("local cluster set-up failed: {0}")]
    Setup(String),
    /// The documents cannot be placed on the replicas asked for.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// A node failed.
    #[error(transparent)]
    Node(#[from] Error),
}

/// The ids of a local cluster of `n` nodes, in order: n1..nN.
pub fn node_ids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("n{i}")).collect()
}

/// Digests of a node's listing, one per partition of a topology's placement (a single one
/// covering every document without a placement): the number of documents and a hash of
/// their ids and heads in listing order. Equal digests under the same `RandomState` mean the
/// same documents at the same heads (but for a 64-bit collision).
pub type PartitionDigests = Vec<(usize, u64)>;

/// N nodes n1..nN in this process.
pub struct LocalCluster {
    cluster: String,
    dir: tempfile::TempDir,
    ids: Vec<String>,
    identities: Vec<TlsIdentity>,
    topology: Topology,
    tuning: Tuning,
    nodes: Vec<Option<Node>>,
    addrs: Vec<SocketAddr>,
    /// The relays every link crosses, if any ([`LocalCluster::relay_links`]).
    relays: Option<Relays>,
}

impl LocalCluster {
    /// Starts `n` nodes (ids n1..nN) of cluster `cluster` in the given topology (for
    /// edges, `links` gives the links), each document on `replicas` of them (`None`: on
    /// every node; see [`Topology::with_replicas`]), and tells every node the others'
    /// addresses.
    pub async fn start(
        cluster: &str,
        n: usize,
        kind: TopologyKind,
        links: Vec<(String, String)>,
        replicas: Option<usize>,
        tuning: Tuning,
    ) -> Result<LocalCluster, LocalError> {
        let mut local = LocalCluster::prepare(cluster, n, kind, links, replicas, tuning)?;
        local.start_all().await?;
        Ok(local)
    }

    /// Sets up `n` nodes (ids n1..nN) like [`LocalCluster::start`] — certificates, the
    /// temporary directory, the topology — but starts none of them, so that their data
    /// directories ([`LocalCluster::data_dir`]) can be filled first (the benchmark's
    /// `--preload`). Start them with [`LocalCluster::start_all`]. Refused if the
    /// documents cannot be placed on `replicas` nodes ([`LocalError::Placement`]).
    pub fn prepare(
        cluster: &str,
        n: usize,
        kind: TopologyKind,
        links: Vec<(String, String)>,
        replicas: Option<usize>,
        tuning: Tuning,
    ) -> Result<LocalCluster, LocalError> {
        let ids = node_ids(n);
        let topology = Topology::new(kind, ids.clone(), links).with_replicas(replicas)?;
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let identities = in_memory_identities(cluster, &id_refs)
            .map_err(|e| LocalError::Setup(e.to_string()))?;
        let dir = tempfile::tempdir().map_err(|e| LocalError::Setup(e.to_string()))?;
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Ok(LocalCluster {
            cluster: cluster.to_string(),
            dir,
            ids,
            identities,
            topology,
            tuning,
            nodes: (0..n).map(|_| None).collect(),
            addrs: vec![any; n],
            relays: None,
        })
    }

    /// Routes every link through a relay per direction ([`crate::netem::Relays`]) that
    /// applies `faults` (decisions seeded by `seed`); nodes then never learn each other's
    /// own addresses. Call before any node starts; refused afterwards.
    pub async fn relay_links(&mut self, faults: LinkFaults, seed: u64) -> Result<(), LocalError> {
        if self.live().next().is_some() {
            return Err(LocalError::Setup(
                "links can be relayed only before the nodes start".into(),
            ));
        }
        let relays = Relays::bind(self.ids.len(), seed)
            .await
            .map_err(|e| LocalError::Setup(format!("cannot bind the link relays: {e}")))?;
        relays.set_all(faults);
        self.relays = Some(relays);
        Ok(())
    }

    /// The relays every link crosses, if [`LocalCluster::relay_links`] set them up.
    pub fn relays(&self) -> Option<&Relays> {
        self.relays.as_ref()
    }

    /// Starts every node that is not running, in order.
    pub async fn start_all(&mut self) -> Result<(), LocalError> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_none() {
                self.start_node(i).await?;
            }
        }
        Ok(())
    }

    /// The temporary directory holding every node's data.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The data directory of node `i` (created when the node first starts).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.ids[i])
    }

    /// Node ids, in order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The topology every node runs with, its placement of documents included.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Node `i`, if running.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i).and_then(Option::as_ref)
    }

    /// The running nodes.
    pub fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    /// Stops node `i` cleanly (storage flushed, connections closed).
    pub async fn stop_node(&mut self, i: usize) -> Result<(), LocalError> {
        if let Some(node) = self.nodes.get_mut(i).and_then(Option::take) {
            node.shutdown().await?;
        }
        Ok(())
    }

    /// Starts node `i` (again): same port, same data directory.
    pub async fn start_node(&mut self, i: usize) -> Result<&Node, LocalError> {
        let node = NodeBuilder::new(&self.ids[i], &self.cluster, self.identities[i].clone())
            .topology(self.topology.clone())
            .data_dir(self.data_dir(i))
            .tuning(self.tuning.clone())
            .listen(self.addrs[i])
            .start()
            .await?;
        self.addrs[i] = node.peer_addr();
        if let Some(relays) = &self.relays {
            relays.set_target(i, node.peer_addr());
            for (j, id) in self.ids.iter().enumerate().filter(|(j, _)| *j != i) {
                node.set_peer_addr(id, relays.route(i, j)).await?;
            }
            self.nodes[i] = Some(node);
            return Ok(self.nodes[i].as_ref().expect("stored just above"));
        }
        for (j, other) in self.nodes.iter().enumerate() {
            if let Some(other) = other {
                other.set_peer_addr(&self.ids[i], node.peer_addr()).await?;
                node.set_peer_addr(&self.ids[j], other.peer_addr()).await?;
            }
        }
        self.nodes[i] = Some(node);
        Ok(self.nodes[i].as_ref().expect("stored just above"))
    }

    /// Waits until every running node has every link the topology wants up; false on
    /// timeout.
    pub async fn wait_linked(&self, limit: Duration) -> Result<bool, LocalError> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let mut all = true;
            for node in self.live() {
                let status = node.status().await?;
                all &= status.peers.iter().all(|p| !p.linked || p.connected)
                    && status.peers.iter().any(|p| p.connected);
            }
            if all {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(false)
    }

    /// True if the replicas of every document among the running nodes have it with
    /// identical heads: with every node replicating everything, if every running node has
    /// the same documents with identical heads. Documents a node stores without
    /// replicating them are not compared. See [`LocalCluster::replica_digests`].
    pub async fn converged(&self) -> Result<bool, LocalError> {
        Ok(self.replica_digests(&RandomState::new()).await?.is_some())
    }

    /// The digests ([`partition_digests`]) the running replicas of each partition agree
    /// on, `None` for a partition no running node replicates; `None` altogether if two
    /// running replicas of a partition differ. Lists one node at a time (a listing of
    /// 1,000,000 documents is about 130 MB).
    pub async fn replica_digests(
        &self,
        state: &RandomState,
    ) -> Result<Option<Vec<Option<(usize, u64)>>>, LocalError> {
        let mut agreed: Vec<Option<(usize, u64)>> = vec![None; digest_slots(&self.topology)];
        for node in self.live() {
            let digests = partition_digests(node, &self.topology, state).await?;
            for (p, digest) in digests.into_iter().enumerate() {
                if !holds_slot(&self.topology, node.id(), p) {
                    continue;
                }
                if let Some(slot) = agreed.get_mut(p) {
                    if *slot.get_or_insert(digest) != digest {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(agreed))
    }

    /// Waits until [`LocalCluster::converged`]; returns how long that took, or `None` if
    /// it did not happen within `limit`.
    pub async fn wait_converged(&self, limit: Duration) -> Result<Option<Duration>, LocalError> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.converged().await? {
                return Ok(Some(start.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(None)
    }

    /// Stops every node.
    pub async fn shutdown(mut self) -> Result<(), LocalError> {
        for i in 0..self.nodes.len() {
            self.stop_node(i).await?;
        }
        Ok(())
    }
}

/// The digests of `node`'s listing ([`Node::docs`]), one per partition of `topology`'s
/// placement, or one for all documents without a placement (then the same as
/// [`listing_digest`]). See [`PartitionDigests`].
pub async fn partition_digests(
    node: &Node,
    topology: &Topology,
    state: &RandomState,
) -> Result<PartitionDigests, Error> {
    let Some(placement) = topology.placement() else {
        return Ok(vec![listing_digest(node, state).await?]);
    };
    let partitions = placement.partitions();
    let mut digests: PartitionDigests = vec![(0, 0); usize::from(partitions)];
    for (doc, heads) in node.docs().await? {
        let p = crate::placement::partition_of(&doc, partitions);
        if let Some((count, hash)) = digests.get_mut(usize::from(p.0)) {
            *count += 1;
            *hash = state.hash_one((*hash, doc, heads));
        }
    }
    Ok(digests)
}

/// Whether `node`'s digests ([`partition_digests`]) equal the `agreed` ones
/// ([`LocalCluster::replica_digests`]) in every partition `node` replicates and some
/// other node had a digest for.
pub fn digests_match(
    topology: &Topology,
    node: &str,
    digests: &[(usize, u64)],
    agreed: &[Option<(usize, u64)>],
) -> bool {
    digests.len() == agreed.len()
        && digests
            .iter()
            .zip(agreed)
            .enumerate()
            .all(|(p, (mine, theirs))| {
                !holds_slot(topology, node, p) || theirs.is_none_or(|t| t == *mine)
            })
}

/// How many digests [`partition_digests`] makes under `topology`.
fn digest_slots(topology: &Topology) -> usize {
    topology
        .placement()
        .map_or(1, |p| usize::from(p.partitions()))
}

/// Whether `node` replicates the documents of digest `slot` ([`partition_digests`]).
fn holds_slot(topology: &Topology, node: &str, slot: usize) -> bool {
    match topology.placement() {
        Some(placement) => u16::try_from(slot).is_ok_and(|p| placement.holds(node, Partition(p))),
        None => topology.contains(node),
    }
}

/// The number of documents in `node`'s listing ([`Node::docs`]: every document and its
/// heads) and a hash of it; equal digests under the same `state` mean equal listings (but
/// for a 64-bit collision).
pub async fn listing_digest(node: &Node, state: &RandomState) -> Result<(usize, u64), Error> {
    let docs = node.docs().await?;
    Ok((docs.len(), state.hash_one(&docs)))
}
