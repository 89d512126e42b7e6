//! The embeddable node: the driver that joins the replication core, the QUIC transport and
//! durable storage, and the [`Node`] handle applications use.
//!
//! This is the only module that imports core, transport and storage together. One task
//! (see `driver`) owns the [`Replica`](crate::core::Replica); everything else talks to it
//! through a bounded command channel, so no lock is held across an await.
//!
//! # When storage fails or falls behind
//! A local write is applied in memory and pushed to peers at once, and answered once it is
//! durable here. If the commit that holds it fails, the write answers
//! [`Error::StorageFailed`]: its outcome is *uncertain* (it is applied in memory here and
//! may have replicated, but it is not durable here). The node then:
//! - reports [`Health::StorageFailing`] (`GET /v1/health` answers 503 with the reason) and
//!   refuses writes with [`Error::StorageFailing`] (503);
//! - keeps serving reads and replicating; what it could not store stays in memory and is
//!   written again every `persist_retry_ms` (half a second), which is also the probe:
//!   the first commit that succeeds, a retry or any other, makes the node
//!   [`Health::Ok`] again and writes are accepted. No acknowledgement is ever sent for a
//!   change whose commit failed (a peer's write concern times out instead).
//!
//! A panicked driver or storage thread is different: [`Health::Failed`] is final
//! ([`Node::failure`], [`Node::failed`]), the process should exit and be restarted.
//!
//! Bytes waiting to be written (queued for the storage thread, or held after a failed
//! commit) are bounded by [`NodeConfig::store_queue_bytes`]: past it, local writes are
//! refused with [`Error::StorageBusy`] (503) and the node stops reading peers' messages
//! (they wait in the transport, and QUIC's flow control holds the peers back; nothing is
//! lost) until the queue drains below the bound. The bound is checked before each input,
//! so it is exceeded by one write or one peer message at most; what was accepted is always
//! queued, never dropped.

mod builder;
pub(crate) mod client_queue;
mod driver;
mod filling;
mod forward;
mod history;
mod links;
mod listing;
mod load;
mod owners;
mod read_pool;
mod revocations;
mod store_thread;
mod writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transaction;
use automerge::{Automerge, ChangeHash};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use crate::ops::Ack;
pub use builder::{
    NodeBuilder, NodeConfig, StorageChoice, DEFAULT_STORE_QUEUE_BYTES, TOPOLOGY_FILE,
};
pub use listing::{DocsPage, LIST_PAGE};

use crate::core::{ClientMsg, CoreError, CoreStats};
use crate::transport::TransportStats;

/// Errors of the node layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The topology file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Certificates could not be loaded.
    #[error(transparent)]
    Cert(#[from] crate::certs::CertError),
    /// The store could not be opened or read.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A stored document is corrupt; the node does not start.
    #[error("{location}: {source}")]
    Load {
        /// The store's location (file path).
        location: String,
        /// What failed.
        source: Box<CoreError>,
    },
    /// The transport could not start.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// The node id is not in the topology.
    #[error("node {0:?} is not in the topology")]
    UnknownNode(String),
    /// The node has shut down.
    #[error("the node has shut down")]
    Stopped,
    /// A thread of the node could not be started.
    #[error("cannot start a thread of the node: {0}")]
    Thread(std::io::Error),
    /// The change function failed; nothing was written.
    #[error("change refused: {0}")]
    Change(Box<dyn std::error::Error + Send + Sync>),
    /// Automerge data given to merge was refused; nothing was written.
    #[error(transparent)]
    Merge(Box<CoreError>),
    /// The write was accepted and is durable here, but fewer peers than asked acknowledged
    /// it before the timeout. It keeps replicating.
    #[error("write concern not met before the timeout: acknowledged by {acked_by:?}")]
    AckTimeout {
        /// Heads after the write.
        heads: Vec<ChangeHash>,
        /// Peers that did acknowledge.
        acked_by: Vec<String>,
    },
    /// The write's outcome is uncertain: storage failed to make it durable on this node,
    /// but it was already applied in memory here (reads show it) and may have replicated to
    /// peers. It is not acknowledged. The node keeps it in memory and writes it again once
    /// storage works (see [`Health::StorageFailing`]); if the node stops first, it survives
    /// only on peers that have it.
    #[error(
        "outcome uncertain: the write is applied in memory on this node and may have \
         replicated to peers, but storage failed, so it is not durable here: {0}"
    )]
    StorageFailed(String),
    /// Storage is failing (the last commit failed): the node refuses writes until a
    /// commit succeeds again (see [`Health::StorageFailing`]). Nothing was written.
    #[error("storage is failing, so this node refuses writes until it works again: {0}")]
    StorageFailing(String),
    /// Storage is behind: more bytes wait to be written than the node's bound
    /// ([`NodeConfig::store_queue_bytes`]); the node refuses writes until the queue drains.
    /// Nothing was written; try again shortly.
    #[error(
        "storage is busy: {queued} bytes wait to be written (bound {limit}); nothing was \
         written, try again shortly"
    )]
    StorageBusy {
        /// Bytes waiting to be written.
        queued: usize,
        /// The bound.
        limit: usize,
    },
    /// This node is being removed: it hands what it holds to its neighbours and takes no
    /// more writes.
    #[error("node {0:?} is leaving the cluster: it takes no more writes")]
    Leaving(String),
    /// This node has been removed from the cluster's live topology; it no longer serves.
    #[error("node {0:?} has been removed from the cluster")]
    Removed(String),
    /// The live topology stored in the data directory cannot be read.
    #[error("{path}: the stored live topology cannot be read: {detail}")]
    StoredTopology {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The partitions this node was filling, stored in its data directory, cannot be read.
    #[error(
        "{path}: the partitions this node was filling cannot be read: {detail} (remove the \
         file to serve them as they are)"
    )]
    StoredFilling {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The revoked tokens stored in the data directory cannot be read.
    #[error("{path}: the revoked tokens cannot be read: {detail}")]
    StoredRevocations {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A revocation was refused; nothing changed.
    #[error("revocation refused: {0}")]
    Revoke(crate::revocations::RevokeError),
    /// A change of the live topology was refused; nothing changed.
    #[error("topology change refused: {0}")]
    Topology(String),
    /// No replica of the document can be reached from this node (which does not replicate
    /// it); nothing was done.
    #[error("document {doc:?}: no replica is reachable (its replicas: {})", replicas.join(", "))]
    Unreachable {
        /// The document.
        doc: String,
        /// Its replicas.
        replicas: Vec<String>,
    },
    /// No replica of the document can be reached, and the write cannot be kept here as a
    /// hint: it does not fit this node's copy, which holds only the document's earlier
    /// hints (a path through objects only the replicas have); nothing was done.
    #[error(
        "document {doc:?}: no replica is reachable (its replicas: {}), and the write cannot \
         be kept as a hint on this node, which lacks the document's content: {detail}",
        replicas.join(", ")
    )]
    NotHinted {
        /// The document.
        doc: String,
        /// Its replicas.
        replicas: Vec<String>,
        /// Why the write does not fit this node's copy.
        detail: String,
    },
    /// The replica a request was forwarded to refused it or failed (see
    /// [`Node::replicates`]), with the HTTP status it gave.
    #[error("replica {by:?}: {message}")]
    Remote {
        /// The replica that answered (empty if none did).
        by: String,
        /// The HTTP status of its answer.
        status: u16,
        /// What it said.
        message: String,
    },
}

impl Error {
    /// The HTTP status that answers this error (as `GET`/`POST /v1/docs/...` do).
    pub fn status(&self) -> u16 {
        match self {
            Error::Change(inner) => inner
                .downcast_ref::<crate::ops::OpError>()
                .map_or(500, |op| op.status()),
            Error::Merge(_) | Error::Revoke(_) => 400,
            Error::AckTimeout { .. } => 504,
            Error::Stopped
            | Error::StorageFailing(_)
            | Error::StorageBusy { .. }
            | Error::Removed(_)
            | Error::Leaving(_)
            | Error::Unreachable { .. }
            | Error::NotHinted { .. } => 503,
            Error::Topology(_) => 409,
            Error::Remote { status, .. } => *status,
            _ => 500,
        }
    }

    /// A document of the running node's store could not be read.
    pub(crate) fn store(e: CoreError) -> Error {
        Error::Load {
            location: "the node's store".into(),
            source: Box::new(e),
        }
    }
}

/// The outcome of a write.
#[derive(Debug, Clone)]
pub struct Written<R> {
    /// What the change function returned.
    pub value: R,
    /// The document's heads after the write.
    pub heads: Vec<ChangeHash>,
    /// Peers that acknowledged the write as durable (empty for `Ack::Local`).
    pub acked_by: Vec<String>,
}

/// A change notification for a subscribed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocEvent {
    /// Document id.
    pub doc: String,
    /// Heads after the change.
    pub heads: Vec<ChangeHash>,
}

/// One peer as seen by this node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// Node id.
    pub id: String,
    /// A live connection exists.
    pub connected: bool,
    /// The topology (after healing) wants a link to it.
    pub linked: bool,
    /// Believed down (dial failed or connection lost).
    pub down: bool,
    /// Bytes of changes queued for it.
    pub queued_bytes: usize,
    /// Linked although not its neighbour in the configured topology (ring healing).
    pub healed: bool,
    /// Changes pushed to it on this connection that it has not yet confirmed.
    pub unacked_changes: u64,
    /// Their bytes.
    pub unacked_bytes: u64,
    /// Age of the oldest of them, ms (0 if none).
    pub unacked_oldest_ms: u64,
    /// Documents the last anti-entropy round with it found different (`None`: no round
    /// has said yet on this connection).
    pub divergent: Option<u64>,
}

/// A node's view of itself.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// Node id.
    pub node: String,
    /// Cluster id.
    pub cluster: String,
    /// Topology name ("mesh", "ring", "ring-forward", "edges").
    pub topology: String,
    /// Every other node of the topology.
    pub peers: Vec<PeerStatus>,
    /// Number of documents stored.
    pub docs: usize,
    /// The replicas of each document (the number of nodes when every node has everything).
    pub replicas: usize,
    /// Partitions this node replicates (all of [`crate::placement::PARTITIONS`] when every
    /// node has everything).
    pub partitions: usize,
    /// Requests for documents this node does not replicate, forwarded to a replica and
    /// waiting for its answer.
    pub forwarding: usize,
    /// Documents this node stores but does not replicate, waiting to be handed to their
    /// replicas: hinted writes, and partitions it no longer holds.
    pub hints: usize,
    /// Documents dropped here after every replica confirmed holding them, since start.
    pub handed_off: u64,
    /// Partitions moving in: replicated here, with documents still to be fetched from
    /// other replicas.
    pub partitions_in: usize,
    /// Partitions moving out: stored here but replicated elsewhere.
    pub partitions_out: usize,
    /// Documents in memory.
    pub docs_loaded: usize,
    /// The memory the documents in memory hold, estimated (see [`crate::core::footprint`]).
    pub cache_bytes: usize,
    /// Writes waiting for durability or acknowledgements.
    pub pending_writes: usize,
    /// Bytes waiting to be written to storage: queued for the storage thread, and held in
    /// memory after a failed commit.
    pub storage_queued_bytes: usize,
    /// Why storage is failing, if it is (see [`Health::StorageFailing`]).
    pub storage_failing: Option<String>,
    /// Whether the node is a member of the live topology, leaving it, or removed.
    pub member: MemberState,
    /// The fingerprint of every (document, heads) pair this node holds (the root of its
    /// reconciliation tree, in memory: changes count from the moment they are applied):
    /// equal on two nodes exactly when they hold the same documents at the same heads (up
    /// to a 2^-64 chance).
    pub fingerprint: u64,
    /// automerge-repo clients connected (see [`crate::sync`]).
    pub sync_clients: usize,
    /// Clients disconnected because they fell too far behind.
    pub sync_clients_dropped: u64,
    /// Bytes queued for the clients, all together (each at most `sync_client_queue_bytes`).
    pub sync_client_queued_bytes: usize,
    /// Times the node's driver woke since start (any input: commands, peers' messages,
    /// storage, reads, timeouts), and of those, for a timeout it asked for. An idle node
    /// wakes about once per anti-entropy period.
    pub wakeups: u64,
    /// Of [`NodeStatus::wakeups`], those for a timeout.
    pub timer_wakeups: u64,
    /// Stored documents being read (work on them waits).
    pub reads_in_flight: usize,
    /// Replication counters.
    pub core: CoreStats,
    /// Transport counters.
    pub transport: TransportStats,
}

impl NodeStatus {
    /// Ids of the peers with a live connection, in topology order.
    pub fn connected_peers(&self) -> Vec<&str> {
        self.peers
            .iter()
            .filter(|p| p.connected)
            .map(|p| p.id.as_str())
            .collect()
    }
}

/// A node's place in its cluster's live topology (`membership` in `/v1/status`; a node
/// leaving or removed answers `GET /v1/health` with 503, so load balancers take it out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// In the live topology (or started without one): it serves.
    Member,
    /// Being removed (`remove-node`): it hands what it holds to its neighbours and takes
    /// no writes ([`Error::Leaving`]).
    Leaving,
    /// Removed from the live topology: it takes no writes and no longer replicates
    /// ([`Error::Removed`]).
    Removed,
}

impl MemberState {
    /// `"member"`, `"leaving"` or `"removed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Member => "member",
            MemberState::Leaving => "leaving",
            MemberState::Removed => "removed",
        }
    }
}

/// How well a node works (see [`Node::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// It serves reads and writes.
    Ok,
    /// Its storage is failing (the last commit failed; the reason is given). A degraded
    /// state it recovers from by itself: it serves reads and keeps replicating, refuses
    /// writes ([`Error::StorageFailing`]), keeps in memory what it could not store and
    /// writes it again every half second (or as soon as any other commit succeeds); the
    /// first commit that succeeds makes it [`Health::Ok`] again.
    StorageFailing(String),
    /// It has stopped working for good (see [`Node::failure`]). Final.
    Failed(String),
}

/// How a write finished, as the driver reports it.
#[derive(Debug)]
pub(crate) enum WriteOutcome {
    Done {
        heads: Vec<ChangeHash>,
        acked_by: Vec<String>,
    },
    TimedOut {
        heads: Vec<ChangeHash>,
        acked_by: Vec<String>,
    },
    StorageFailed(String),
}

type ChangeFn = Box<
    dyn FnOnce(&mut Transaction<'_>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send,
>;
/// Runs on the document once it is in memory (`None`: this node does not have it).
type ReadFn = Box<dyn FnOnce(Result<Option<&Automerge>, CoreError>) + Send>;

/// A merge accepted by the driver: new changes, and when they will be durable.
pub(crate) type MergeStarted = (usize, Option<oneshot::Receiver<WriteOutcome>>);

/// Requests from handles to the driver task.
pub(crate) enum Command {
    Change {
        doc: String,
        ack: Ack,
        timeout: Duration,
        /// About how heavy `f` is: the ops it makes (see [`crate::ops::change_size`]; 0:
        /// light).
        weight: usize,
        f: ChangeFn,
        /// Answered at once: `Err` if the change failed, `Ok(false)` if it made no
        /// operation, `Ok(true)` if it made a change whose outcome comes on `outcome`.
        started: oneshot::Sender<Result<bool, Error>>,
        outcome: oneshot::Sender<WriteOutcome>,
    },
    Merge {
        doc: String,
        data: Vec<u8>,
        ack: Ack,
        timeout: Duration,
        reply: oneshot::Sender<Result<MergeStarted, Error>>,
    },
    Read {
        doc: String,
        f: ReadFn,
    },
    /// A request for a document this node does not replicate, for a replica.
    Forward {
        doc: String,
        request: crate::wire::ForwardRequest,
        /// How long to wait for the answer, in ms.
        wait_ms: u64,
        reply: oneshot::Sender<Result<crate::wire::Reply, Error>>,
    },
    Subscribe {
        doc: String,
        reply: oneshot::Sender<broadcast::Receiver<DocEvent>>,
    },
    Status(oneshot::Sender<NodeStatus>),
    Revoke {
        what: crate::revocations::Revoke,
        reply: oneshot::Sender<Result<usize, Error>>,
    },
    SetPeerAddr(String, SocketAddr),
    ClientOpen(oneshot::Sender<(u64, client_queue::ClientReceiver)>),
    ClientSync {
        client: u64,
        doc: String,
        data: Vec<u8>,
        request: bool,
    },
    ClientEphemeral(u64, crate::wire::Ephemeral),
    ClientClose(u64),
    Topology(oneshot::Sender<Option<serde_json::Value>>),
    /// Gather every node's view (`GET /v1/cluster`).
    Cluster(oneshot::Sender<serde_json::Value>),
    ChangeTopology {
        change: TopologyChange,
        reply: oneshot::Sender<Result<serde_json::Value, Error>>,
    },
    Shutdown(oneshot::Sender<()>),
}

impl Command {
    /// The document the command works on, if it needs one in memory.
    fn doc(&self) -> Option<&str> {
        match self {
            Command::Change { doc, .. }
            | Command::Merge { doc, .. }
            | Command::Read { doc, .. } => Some(doc),
            _ => None,
        }
    }

    /// Answers a command whose document could not be read with the error.
    fn fail(self, e: CoreError) {
        match self {
            Command::Change { started, .. } => {
                let _ = started.send(Err(Error::store(e)));
            }
            Command::Merge { reply, .. } => {
                let _ = reply.send(Err(Error::store(e)));
            }
            Command::Read { f, .. } => f(Err(e)),
            _ => {}
        }
    }
}

/// A change of the live topology (see [`Node::change_topology`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyChange {
    /// A new node joins.
    Add {
        /// Its id.
        id: String,
        /// Its peer (QUIC) address.
        peer: SocketAddr,
        /// Its HTTP API address.
        api: SocketAddr,
        /// Its links (`edges` topologies only; empty otherwise).
        links: Vec<String>,
    },
    /// A node leaves; every node refuses it from then on.
    Remove {
        /// Its id.
        id: String,
    },
    /// A link between two nodes (`edges` topologies).
    Link(String, String),
    /// A link between two nodes goes (`edges` topologies).
    Unlink(String, String),
}

/// What the node sends one automerge-repo client's connection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClientEvent {
    /// A message for the client.
    Msg(ClientMsg),
    /// The node refused the client's last message: tell it why and close.
    Close(String),
}

/// A running node. Cheap to clone; every clone talks to the same node.
#[derive(Clone)]
pub struct Node {
    id: String,
    /// `[tuning] max_change_ops`: [`Node::apply_ops`] refuses a change with more ops.
    max_change_ops: usize,
    peer_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    /// Its health: failing storage (recoverable), or failed for good (its driver or
    /// storage thread panicked).
    health: watch::Receiver<Health>,
    /// Reads the store's index for listings, off the driver (see [`Node::docs_page`]).
    reader: Arc<dyn crate::storage::DocReader>,
    /// The live topology: which nodes replicate each document (see [`Node::replicates`]).
    topology: watch::Receiver<crate::topology::Topology>,
    /// Partitions this node took over and is still filling (served by other replicas).
    filling: watch::Receiver<crate::placement::PartitionSet>,
    /// The revoked user tokens this node knows (see [`Node::revokes`]).
    revoked: watch::Receiver<Arc<crate::revocations::Revocations>>,
}

/// A [`Node`] that does not keep the node running: the driver's own handle, for the
/// requests other nodes forward to it. It holds the node's other handles with a sender of
/// a closed channel in place of the command sender, which [`WeakNode::upgrade`] restores.
pub(crate) struct WeakNode {
    node: Node,
    commands: mpsc::WeakSender<Command>,
}

impl WeakNode {
    /// The node, unless every handle is gone.
    pub(crate) fn upgrade(&self) -> Option<Node> {
        Some(Node {
            commands: self.commands.upgrade()?,
            ..self.node.clone()
        })
    }
}

impl Node {
    /// A handle that does not keep the node running.
    pub(crate) fn downgrade(&self) -> WeakNode {
        let (closed, _) = mpsc::channel(1);
        WeakNode {
            node: Node {
                commands: closed,
                ..self.clone()
            },
            commands: self.commands.downgrade(),
        }
    }
}

impl Node {
    /// Starts a node: opens its store and reads its index of documents (documents are read
    /// on first use), binds the QUIC endpoint and starts linking to its peers.
    pub async fn start(config: NodeConfig) -> Result<Node, Error> {
        driver::start(config).await
    }

    /// Why the node stopped working, if it did: its driver or its storage thread panicked
    /// (a bug). It then answers every call with [`Error::Stopped`] and cannot write; the
    /// process should exit and be restarted (a restart is safe: everything acknowledged is
    /// on disk).
    /// Failing storage is not a failure (see [`Node::health`]).
    pub fn failure(&self) -> Option<String> {
        match &*self.health.borrow() {
            Health::Failed(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// How well the node works now: [`Health::Ok`], [`Health::StorageFailing`] (it
    /// refuses writes until storage works again, by itself) or [`Health::Failed`] (final;
    /// the same as [`Node::failure`]).
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// Waits until the node fails (see [`Node::failure`]) and says why; never returns for
    /// a node that keeps working (failing storage is not a failure).
    pub async fn failed(&self) -> String {
        let mut health = self.health.clone();
        let why = match health.wait_for(|h| matches!(h, Health::Failed(_))).await {
            Ok(h) => match &*h {
                Health::Failed(why) => Some(why.clone()),
                _ => None,
            },
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            // The node is gone without a failure (it was shut down): wait forever.
            None => std::future::pending().await,
        }
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bound QUIC address (useful with port 0).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Runs `f` as one Automerge transaction on `doc` (created if new) and waits until
    /// the change is durable on this node. If `f` fails nothing is written.
    pub async fn change<R, E, F>(&self, doc: &str, f: F) -> Result<Written<R>, Error>
    where
        R: Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    {
        self.change_with(doc, Ack::Local, Duration::from_secs(5), f)
            .await
    }

    /// Like [`Node::change`], with a write concern: also durable on `ack` peers, waiting at
    /// most `timeout` for them ([`Error::AckTimeout`] past it; the write stays accepted).
    /// On a node that does not replicate `doc` ([`Node::replicates`]), `f` runs on a copy
    /// read from a replica and its change is merged there, with the write concern counted
    /// among the document's replicas.
    pub async fn change_with<R, E, F>(
        &self,
        doc: &str,
        ack: Ack,
        timeout: Duration,
        f: F,
    ) -> Result<Written<R>, Error>
    where
        R: Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    {
        if !self.replicates(doc) {
            return self.forward_change(doc, ack, timeout, f).await;
        }
        self.change_weighted(doc, ack, timeout, 0, f).await
    }

    /// [`Node::change_with`] of a change of about `weight` ops (see
    /// [`crate::ops::change_size`]): a heavy one runs off the driver's task. Here, whether
    /// or not this node replicates the document.
    async fn change_weighted<R, E, F>(
        &self,
        doc: &str,
        ack: Ack,
        timeout: Duration,
        weight: usize,
        f: F,
    ) -> Result<Written<R>, Error>
    where
        R: Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    {
        let (value_tx, value_rx) = oneshot::channel();
        let f: ChangeFn = Box::new(move |tx| {
            let value = f(tx).map_err(Into::into)?;
            let _ = value_tx.send(value);
            Ok(())
        });
        let (started_tx, started_rx) = oneshot::channel();
        let (outcome_tx, outcome_rx) = oneshot::channel();
        self.send(Command::Change {
            doc: doc.to_string(),
            ack,
            timeout,
            weight,
            f,
            started: started_tx,
            outcome: outcome_tx,
        })
        .await?;
        let changed = started_rx.await.map_err(|_| Error::Stopped)??;
        let value = value_rx.await.map_err(|_| Error::Stopped)?;
        if changed {
            return finish(outcome_rx.await.map_err(|_| Error::Stopped)?, value);
        }
        let heads = self.with_doc(doc, |d| d.get_heads()).await?;
        Ok(Written {
            value,
            heads: heads.unwrap_or_default(),
            acked_by: Vec::new(),
        })
    }

    /// Applies the SPEC's JSON operations as one atomic change with the request's write
    /// concern. A change of more than `[tuning] max_change_ops` ops is refused
    /// ([`crate::ops::OpError::TooLarge`]) and rolled back: the HTTP API refuses such ops
    /// before they get here; this guards the other callers. A node that does not replicate
    /// `doc` has a replica apply them (with the write concern counted among the document's
    /// replicas).
    pub async fn apply_ops(
        &self,
        doc: &str,
        request: crate::ops::WriteRequest,
    ) -> Result<Written<()>, Error> {
        if !self.replicates(doc) {
            match self.forward_ops(doc, &request).await {
                // No replica reachable: the write is kept here as a hint (see `forward`).
                Err(Error::Unreachable { doc, replicas }) if !self.holds(&doc) => {
                    return match self.apply_ops_here(&doc, request).await {
                        Err(e) if e.status() == 409 => Err(Error::NotHinted {
                            doc,
                            replicas,
                            detail: e.to_string(),
                        }),
                        other => other,
                    };
                }
                Err(Error::Unreachable { .. }) => {}
                other => return other,
            }
        }
        self.apply_ops_here(doc, request).await
    }

    /// [`Node::apply_ops`] on this node's copy.
    async fn apply_ops_here(
        &self,
        doc: &str,
        request: crate::ops::WriteRequest,
    ) -> Result<Written<()>, Error> {
        let timeout = Duration::from_millis(request.timeout_ms);
        let (ack, weight) = (request.ack, crate::ops::change_size(&request.ops).ops);
        let ops = request.ops;
        let max_ops = self.max_change_ops;
        self.change_weighted(doc, ack, timeout, weight, move |tx| {
            crate::ops::apply_ops(tx, &ops)?;
            let pending = automerge::transaction::Transactable::pending_ops(tx);
            crate::ops::check_pending_ops(pending, max_ops)
        })
        .await
    }

    /// Merges Automerge data (a saved document or changes) into `doc`; returns the number
    /// of new changes once they are durable (on a replica of `doc`). Bad data is refused and
    /// changes nothing.
    pub async fn merge(&self, doc: &str, data: Vec<u8>) -> Result<usize, Error> {
        let timeout = Duration::from_millis(crate::ops::DEFAULT_TIMEOUT_MS);
        if !self.replicates(doc) {
            match self
                .forward_merge(doc, data.clone(), Ack::Local, timeout)
                .await
            {
                Err(Error::Unreachable { .. }) => {}
                other => return other.map(|(count, _)| count),
            }
        }
        self.merge_here(doc, data, Ack::Local, timeout)
            .await
            .map(|(count, _)| count)
    }

    /// [`Node::merge`] into this node's copy, with a write concern (met by the
    /// acknowledgements of the data's last new change: meant for one change). Returns the
    /// number of new changes and the replicas that acknowledged.
    async fn merge_here(
        &self,
        doc: &str,
        data: Vec<u8>,
        ack: Ack,
        timeout: Duration,
    ) -> Result<(usize, Vec<String>), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Merge {
            doc: doc.to_string(),
            data,
            ack,
            timeout,
            reply: tx,
        })
        .await?;
        let (count, outcome) = rx.await.map_err(|_| Error::Stopped)??;
        let mut acked_by = Vec::new();
        if let Some(outcome) = outcome {
            acked_by = finish(outcome.await.map_err(|_| Error::Stopped)?, ())?.acked_by;
        }
        Ok((count, acked_by))
    }

    /// Runs `f` on the document, if this node has it (read from storage if it is not in
    /// memory); on a node that does not replicate it, on a copy read from a replica.
    pub async fn with_doc<R: Send + 'static>(
        &self,
        doc: &str,
        f: impl FnOnce(&Automerge) -> R + Send + 'static,
    ) -> Result<Option<R>, Error> {
        if !self.replicates(doc) {
            if !self.holds(doc) {
                return self.forward_read(doc, f).await;
            }
            // A replica still filling the document's partition: another replica's copy, or
            // its own if none is reachable.
            match self.forward_save(doc).await {
                Err(Error::Unreachable { .. }) => {}
                Err(e) => return Err(e),
                Ok(None) => return Ok(None),
                Ok(Some(saved)) => return forward::read_copy(doc, &saved, f).map(Some),
            }
        }
        self.with_doc_here(doc, f).await
    }

    /// [`Node::with_doc`] on this node's copy.
    async fn with_doc_here<R: Send + 'static>(
        &self,
        doc: &str,
        f: impl FnOnce(&Automerge) -> R + Send + 'static,
    ) -> Result<Option<R>, Error> {
        let (tx, rx) = oneshot::channel();
        let f: ReadFn = Box::new(move |d| {
            let _ = tx.send(d.map(|d| d.map(f)));
        });
        self.send(Command::Read {
            doc: doc.to_string(),
            f,
        })
        .await?;
        rx.await.map_err(|_| Error::Stopped)?.map_err(Error::store)
    }

    /// The document as plain JSON, if this node has it (or, if it does not replicate it,
    /// a replica).
    pub async fn json(&self, doc: &str) -> Result<Option<serde_json::Value>, Error> {
        if !self.replicates(doc) {
            match self.forward_json(doc).await {
                // A replica still filling the document's partition: its own copy then.
                Err(Error::Unreachable { .. }) if self.holds(doc) => {}
                other => return other,
            }
        }
        self.with_doc_here(doc, crate::json::doc_to_json).await
    }

    /// The document in Automerge's binary format, if this node has it (or, if it does not
    /// replicate it, a replica).
    pub async fn save(&self, doc: &str) -> Result<Option<Vec<u8>>, Error> {
        if !self.replicates(doc) {
            match self.forward_save(doc).await {
                Err(Error::Unreachable { .. }) if self.holds(doc) => {}
                other => return other,
            }
        }
        self.with_doc_here(doc, |d| d.save()).await
    }

    /// A stream of change notifications for `doc` (local and remote changes). A receiver
    /// that falls behind loses old events (`Lagged`); it never slows the node. A node that
    /// does not replicate `doc` keeps a copy and follows it at its replicas while it is
    /// watched (on a ring, through the nodes between).
    pub async fn subscribe(&self, doc: &str) -> Result<broadcast::Receiver<DocEvent>, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Subscribe {
            doc: doc.to_string(),
            reply: tx,
        })
        .await?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Status of the node and its peers.
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx)).await?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Tells the node where peer `id` listens (for clusters whose nodes bind port 0).
    pub async fn set_peer_addr(&self, id: &str, addr: SocketAddr) -> Result<(), Error> {
        self.send(Command::SetPeerAddr(id.to_string(), addr)).await
    }

    /// Registers an automerge-repo client connection: its number, and the messages the
    /// node has for it (the queue ends if the client falls too far behind, see
    /// [`client_queue`]).
    pub(crate) async fn client_open(&self) -> Result<(u64, client_queue::ClientReceiver), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::ClientOpen(tx)).await?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// A client's `sync` message, or `request` if `request` (Automerge sync data), for
    /// `doc`.
    pub(crate) async fn client_sync(
        &self,
        client: u64,
        doc: String,
        data: Vec<u8>,
        request: bool,
    ) -> Result<(), Error> {
        self.send(Command::ClientSync {
            client,
            doc,
            data,
            request,
        })
        .await
    }

    /// A client's ephemeral message.
    pub(crate) async fn client_ephemeral(
        &self,
        client: u64,
        msg: crate::wire::Ephemeral,
    ) -> Result<(), Error> {
        self.send(Command::ClientEphemeral(client, msg)).await
    }

    /// The client's connection ended.
    pub(crate) async fn client_close(&self, client: u64) -> Result<(), Error> {
        self.send(Command::ClientClose(client)).await
    }

    /// The whole cluster as this node sees it now (`GET /v1/cluster`, see
    /// [`crate::cluster`]): every node's view gathered over the peer links (those that do
    /// not answer within a moment are shown down), every link, recent events.
    pub async fn cluster(&self) -> Result<serde_json::Value, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Cluster(tx)).await?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// The live topology as JSON (`GET /v1/topology`); `None` for a node started without a
    /// topology file.
    pub async fn topology(&self) -> Result<Option<serde_json::Value>, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Topology(tx)).await?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Changes the live topology; the change spreads to every node, which relink at once.
    /// An invalid change is refused ([`Error::Topology`]) and changes nothing. Answers the
    /// new topology.
    pub async fn change_topology(
        &self,
        change: TopologyChange,
    ) -> Result<serde_json::Value, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::ChangeTopology { change, reply: tx })
            .await?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Stops the node: pending changes are flushed to storage, connections closed.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Shutdown(tx)).await?;
        rx.await.map_err(|_| Error::Stopped)
    }

    async fn send(&self, cmd: Command) -> Result<(), Error> {
        self.commands.send(cmd).await.map_err(|_| Error::Stopped)
    }
}

fn finish<R>(outcome: WriteOutcome, value: R) -> Result<Written<R>, Error> {
    match outcome {
        WriteOutcome::Done { heads, acked_by } => Ok(Written {
            value,
            heads,
            acked_by,
        }),
        WriteOutcome::TimedOut { heads, acked_by } => Err(Error::AckTimeout { heads, acked_by }),
        WriteOutcome::StorageFailed(e) => Err(Error::StorageFailed(e)),
    }
}
