//! The driver task: owns the [`Replica`], feeds it commands, transport events, storage
//! confirmations, documents read by the reader threads and timeouts, batches whatever is
//! ready before each flush, and carries out the effects (sends, persists, reads, acks,
//! notifications). It sleeps until the next input or the earliest time the replica or
//! its own bookkeeping asked for (`next_wake`): an idle node wakes about once per
//! anti-entropy period, not on a fixed tick. Commands that need a stored document not in
//! memory wait here, per document and in order, until its read is done; nothing on this
//! task waits for the disk.

mod cluster_view;
mod drain;
mod forward;
mod lending;
mod revocations;
mod rtt;
mod storage;
mod topology;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::client_queue::{self, ClientSender, Unqueued};
use super::links::{LinkChanges, Links};
use super::read_pool::{self, ReadDone, ReadPool};
use super::store_thread::{self, StoreDone, StoreJob};
use super::writes::Writes;
use super::{
    Ack, Command, DocEvent, Error, Health, MemberState, Node, NodeConfig, NodeStatus, PeerStatus,
};
use crate::core::{ChangeError, CoreConfig, CoreError, Effect, Replica, Unsent};
use crate::panics::panic_text;
use crate::transport::{SendError, Transport, TransportConfig, TransportEvent};

/// At shutdown, documents with at least this many logged changes are compacted.
const COMPACT_AT_STOP: usize = 8;

/// Inputs handled before each flush, at most (bounds latency under load).
const BATCH_INPUTS: usize = 512;

pub(crate) async fn start(config: NodeConfig) -> Result<Node, Error> {
    if !config.topology.nodes().iter().any(|n| n == &config.id) {
        return Err(Error::UnknownNode(config.id.clone()));
    }
    let tuning = &config.tuning;
    let core_config = CoreConfig {
        retry_ms: tuning.tick_ms.max(1),
        anti_entropy_ms: tuning.anti_entropy_ms,
        quiet_ms: (tuning.anti_entropy_ms / 2).clamp(1, 1_000),
        cache_docs: tuning.cache_docs,
        cache_bytes: tuning.cache_bytes,
        batch_bytes: tuning.max_batch_bytes,
        ..CoreConfig::default()
    };
    let replica = Replica::new(
        config.id.clone(),
        rand::random(),
        Box::new(config.topology.clone()),
        core_config,
    );
    let storage = config.storage.clone();
    let (store, mut replica) =
        tokio::task::spawn_blocking(move || super::load::open_store(storage, replica))
            .await
            .map_err(|_| Error::Stopped)??;
    tracing::info!(node = %config.id, docs = replica.doc_count(), store = %store.location(), "store open");
    let reader = store.reader();
    let (read_tx, read_dones) = mpsc::unbounded_channel();
    let reads =
        ReadPool::spawn(reader.clone(), read_pool::READ_THREADS, read_tx).map_err(Error::Thread)?;
    let (returned_tx, returned) = mpsc::unbounded_channel();

    let (events_tx, events) = mpsc::channel(4096);
    let members = config
        .topology
        .nodes()
        .iter()
        .filter(|n| **n != config.id)
        .cloned()
        .collect();
    let transport = Transport::bind(
        TransportConfig {
            cluster: config.cluster.clone(),
            node: config.id.clone(),
            listen: config.listen,
            identity: config.identity.clone(),
            members,
            keep_alive: Duration::from_millis(tuning.keep_alive_ms),
            idle_timeout: Duration::from_millis(tuning.idle_timeout_ms),
            reconnect_min: Duration::from_millis(tuning.reconnect_min_ms),
            reconnect_max: Duration::from_millis(tuning.reconnect_max_ms),
            send_queue: tuning.send_queue,
            compress: tuning.compress_links,
        },
        events_tx,
    )
    .await?;
    let peer_addr = transport.local_addr();
    tracing::info!(node = %config.id, addr = %peer_addr, "listening for peers");

    let topology_file = match (&config.storage, &config.membership) {
        (super::StorageChoice::Dir(dir), Some(_)) => Some(dir.join(super::TOPOLOGY_FILE)),
        _ => None,
    };
    let filling_file = topology_file
        .as_ref()
        .map(|t| t.with_file_name(super::filling::FILLING_FILE));
    let mut filling_stored = crate::placement::PartitionSet::empty();
    // A first start (no live topology stored yet): whether this node is one of the
    // cluster's first nodes or was added to a running cluster is known once a peer's
    // topology comes (see `topology`).
    let joining = topology_file.as_ref().is_some_and(|t| !t.exists());
    if let Some(path) = &filling_file {
        filling_stored = super::filling::read(path).map_err(|detail| Error::StoredFilling {
            path: path.clone(),
            detail,
        })?;
        replica.resume_filling(&filling_stored);
        if !replica.filling().is_empty() {
            tracing::info!(node = %config.id, partitions = replica.filling().len(), "partitions taken over before the restart fill before they serve");
        }
    }
    let revocations_file = match &config.storage {
        super::StorageChoice::Dir(dir) => Some(dir.join(super::revocations::REVOCATIONS_FILE)),
        _ => None,
    };
    let revocations = match &revocations_file {
        Some(path) => {
            super::revocations::read(path).map_err(|detail| Error::StoredRevocations {
                path: path.clone(),
                detail,
            })?
        }
        None => crate::revocations::Revocations::default(),
    };
    let (revoked_tx, revoked_rx) = watch::channel(std::sync::Arc::new(revocations.clone()));
    let (done_tx, dones) = mpsc::unbounded_channel();
    let (health_tx, health) = watch::channel(Health::Ok);
    let health_tx = std::sync::Arc::new(health_tx);
    let jobs = store_thread::spawn(store, tuning.compact_after, done_tx, health_tx.clone());
    let (commands_tx, commands) = mpsc::channel(1024);
    let (topology_tx, topology_rx) = watch::channel(config.topology.clone());
    let (filling_tx, filling_rx) = watch::channel(replica.filling().clone());
    let node = Node {
        id: config.id.clone(),
        max_change_ops: config.tuning.max_change_ops,
        peer_addr,
        commands: commands_tx,
        health,
        reader,
        topology: topology_rx,
        filling: filling_rx,
        revoked: revoked_rx,
    };
    let (served_tx, served) = mpsc::unbounded_channel();
    let driver = Driver {
        id: config.id.clone(),
        cluster: config.cluster.clone(),
        topology_name: config.topology.kind().to_string(),
        links: Links::new(&config.id, config.topology.clone()),
        replica,
        transport,
        addrs: config.peers.clone(),
        jobs,
        reads,
        returned_tx,
        parked: HashMap::new(),
        store: storage::StoreState::new(config.store_queue_bytes, health_tx.clone()),
        writes: Writes::default(),
        subscribers: HashMap::new(),
        compacting: HashSet::new(),
        started: Instant::now(),
        topology: topology_tx,
        filling: filling_tx,
        weak_node: Some(node.downgrade()),
        forwards: forward::Forwards::default(),
        served_tx,
        wakeups: 0,
        timer_wakeups: 0,
        clients: HashMap::new(),
        next_client: 1,
        client_queue_bytes: tuning.sync_client_queue_bytes,
        clients_dropped: 0,
        membership: config.membership.clone(),
        topology_file,
        filling_file,
        filling_stored,
        joining,
        revocations,
        revocations_file,
        revoked: revoked_tx,
        removed: false,
        relink_at: None,
        draining: None,
        gather: cluster_view::Gather::new(&config.id),
        rtts: rtt::Rtts::default(),
    };
    let driver = tokio::spawn(driver.run(commands, events, dones, read_dones, returned, served));
    let id = config.id.clone();
    tokio::spawn(async move {
        // A panic ends the driver: the node is then failed, never silently half-alive.
        if let Err(e) = driver.await {
            if e.is_panic() {
                let why = format!(
                    "node {id}: the driver panicked: {}",
                    panic_text(e.into_panic())
                );
                tracing::error!("{why}");
                health_tx.send_replace(Health::Failed(why));
            }
        }
    });
    Ok(node)
}

struct Driver {
    id: String,
    cluster: String,
    topology_name: String,
    links: Links,
    replica: Replica,
    transport: Transport,
    addrs: BTreeMap<String, std::net::SocketAddr>,
    jobs: std_mpsc::Sender<StoreJob>,
    reads: ReadPool,
    /// Where heavy work on lent documents reports (see `lending`).
    returned_tx: mpsc::UnboundedSender<lending::Returned>,
    /// Commands waiting for their document's read (or its return), per document in
    /// arrival order.
    parked: HashMap<String, VecDeque<Command>>,
    /// Bytes queued for storage and whether it fails (see `storage`).
    store: storage::StoreState,
    writes: Writes,
    subscribers: HashMap<String, broadcast::Sender<DocEvent>>,
    compacting: HashSet<String>,
    started: Instant,
    /// The live topology, as the node's handles see it (which node replicates what).
    topology: watch::Sender<crate::topology::Topology>,
    /// Partitions taken over and still filling, as the node's handles see them.
    filling: watch::Sender<crate::placement::PartitionSet>,
    /// The node's own handle, for requests forwarded to it (see `forward`).
    weak_node: Option<super::WeakNode>,
    forwards: forward::Forwards,
    /// Where forwarded requests served here report.
    served_tx: mpsc::UnboundedSender<forward::Served>,
    /// Times the driver woke (any input), and woke for a timeout.
    wakeups: u64,
    timer_wakeups: u64,
    /// automerge-repo clients: number → the queue to its connection.
    clients: HashMap<u64, ClientSender>,
    next_client: u64,
    /// Bytes queued for one client, at most (`sync_client_queue_bytes`).
    client_queue_bytes: usize,
    clients_dropped: u64,
    /// The live topology (nodes started from a topology file), where it is stored, and
    /// whether it removed this node.
    membership: Option<crate::membership::Membership>,
    topology_file: Option<std::path::PathBuf>,
    /// Where the partitions still filling are kept (see `node::filling`), and what it holds.
    filling_file: Option<std::path::PathBuf>,
    filling_stored: crate::placement::PartitionSet,
    /// First start, and no peer's topology heard yet (see `topology`).
    joining: bool,
    /// The revoked user tokens, where they are kept, and as the node's handles see them.
    revocations: crate::revocations::Revocations,
    revocations_file: Option<std::path::PathBuf>,
    revoked: watch::Sender<std::sync::Arc<crate::revocations::Revocations>>,
    removed: bool,
    /// When links follow a topology change that removed a connected node (see `topology`).
    relink_at: Option<u64>,
    /// This node is leaving: it hands everything over first (see `drain`).
    draining: Option<drain::Drain>,
    gather: cluster_view::Gather,
    /// The links' round-trip times (see `rtt`).
    rtts: rtt::Rtts,
}

enum Input {
    Command(Command),
    Event(TransportEvent),
    Done(StoreDone),
    Read(ReadDone),
    Returned(Box<lending::Returned>),
    Served(forward::Served),
    Timeout,
}

impl Driver {
    /// Keeps the partitions still filling in the data directory when some start filling
    /// or all have filled (see `node::filling`).
    fn store_filling(&mut self) {
        let Some(path) = &self.filling_file else {
            return;
        };
        let now = self.replica.filling();
        if *now == self.filling_stored || !super::filling::must_write(&self.filling_stored, now) {
            return;
        }
        match super::filling::write(path, now) {
            Ok(()) => self.filling_stored = now.clone(),
            Err(e) => {
                tracing::error!(node = %self.id, path = %path.display(), "cannot store the partitions still filling: {e}")
            }
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<TransportEvent>,
        mut dones: mpsc::UnboundedReceiver<StoreDone>,
        mut read_dones: mpsc::UnboundedReceiver<ReadDone>,
        mut returned: mpsc::UnboundedReceiver<lending::Returned>,
        mut served: mpsc::UnboundedReceiver<forward::Served>,
    ) {
        let initial = self.links.start();
        self.apply_links(initial);
        let timer = tokio::time::sleep_until(self.started.into());
        tokio::pin!(timer);
        loop {
            let wake = self.next_wake();
            if let Some(at) = wake {
                let at = (self.started + Duration::from_millis(at)).into();
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            let first = tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => Input::Command(cmd),
                    None => {
                        self.stop(None).await;
                        return;
                    }
                },
                // Past the storage bound peers' messages wait (see `storage`).
                Some(ev) = events.recv(), if !self.storage_full() => Input::Event(ev),
                Some(done) = dones.recv() => Input::Done(done),
                Some(read) = read_dones.recv() => Input::Read(read),
                Some(back) = returned.recv() => Input::Returned(Box::new(back)),
                Some(s) = served.recv() => Input::Served(s),
                () = &mut timer, if wake.is_some() => Input::Timeout,
            };
            self.wakeups += 1;
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(input) = next.take() {
                if let Input::Command(Command::Shutdown(reply)) = input {
                    self.stop(Some(reply)).await;
                    return;
                }
                self.handle(input);
                handled += 1;
                if handled >= BATCH_INPUTS {
                    break;
                }
                next = if let Ok(done) = dones.try_recv() {
                    Some(Input::Done(done))
                } else if let Ok(read) = read_dones.try_recv() {
                    Some(Input::Read(read))
                } else if let Ok(back) = returned.try_recv() {
                    Some(Input::Returned(Box::new(back)))
                } else if let Some(ev) = (!self.storage_full())
                    .then(|| events.try_recv().ok())
                    .flatten()
                {
                    Some(Input::Event(ev))
                } else if let Ok(cmd) = commands.try_recv() {
                    Some(Input::Command(cmd))
                } else {
                    None
                };
            }
            self.refresh_rtts(self.now());
            self.replica.flush();
            self.run_effects();
            if *self.filling.borrow() != *self.replica.filling() {
                self.filling.send_replace(self.replica.filling().clone());
            }
            self.store_filling();
        }
    }

    /// The earliest time (ms since start) anything timed is due: the replica's timers,
    /// write concerns, the cluster view, a drain, a relink.
    fn next_wake(&self) -> Option<u64> {
        [
            self.replica.poll_timeout(),
            self.writes.next_deadline(),
            self.cluster_due(),
            self.drain_due(),
            self.relink_at,
            self.forwards.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Command(cmd) => self.command(now, cmd),
            Input::Event(TransportEvent::Up(peer)) => {
                tracing::info!(node = %self.id, peer = %peer, "peer up");
                self.gather.event("peer-up", format!("link to {peer} up"));
                self.send_topology(&peer);
                self.send_revocations(&peer);
                self.replica.peer_up(now, &peer);
                self.rtts_stale();
                let changes = self.links.mark_up(&peer);
                self.apply_links(changes);
            }
            Input::Event(TransportEvent::Down(peer)) => {
                self.forwards_peer_down(&peer);
                self.gather
                    .event("peer-down", format!("link to {peer} down"));
                self.replica.peer_down(now, &peer);
                let changes = self.links.mark_down(&peer);
                self.apply_links(changes);
            }
            Input::Event(TransportEvent::DialFailed(peer)) => {
                let changes = self.links.mark_down(&peer);
                self.apply_links(changes);
            }
            Input::Event(TransportEvent::Message {
                from,
                msg: crate::wire::Message::Topology(theirs),
            }) => self.receive_topology(&from, &theirs),
            Input::Event(TransportEvent::Message {
                from,
                msg: crate::wire::Message::Revocations(theirs),
            }) => self.receive_revocations(&from, &theirs),
            Input::Event(TransportEvent::Message {
                from,
                msg:
                    msg @ (crate::wire::Message::ClusterAsk { .. }
                    | crate::wire::Message::ClusterTell { .. }),
            }) => self.cluster_message(now, &from, msg),
            Input::Event(TransportEvent::Message {
                from,
                msg: crate::wire::Message::Forward(f),
            }) => self.receive_forward(&from, *f),
            Input::Event(TransportEvent::Message {
                msg: crate::wire::Message::Reply(r),
                ..
            }) => self.receive_reply(*r),
            Input::Event(TransportEvent::Message { from, msg }) => {
                self.drain_heard(&msg);
                self.replica.handle_message(now, &from, msg)
            }
            Input::Done(done) => self.store_done(done),
            Input::Read((doc, result)) => self.read_done(now, doc, result),
            Input::Returned(back) => self.returned(now, *back),
            Input::Served(served) => self.answer(served),
            Input::Timeout => {
                self.timer_wakeups += 1;
                self.topology_tick(now);
                self.drain_tick(now);
                self.cluster_tick(now);
                self.forwards_tick(now);
                self.replica.handle_timeout(now);
                self.writes.expire(now);
                let replica = &mut self.replica;
                self.subscribers.retain(|doc, s| {
                    let watched = s.receiver_count() > 0;
                    if !watched {
                        replica.set_watched(doc, false);
                    }
                    watched
                });
            }
        }
    }

    fn command(&mut self, now: u64, cmd: Command) {
        // A command on a stored document not in memory waits for its read (and so does
        // every later one on that document, to keep their order).
        if let Some(doc) = cmd.doc() {
            if !self.replica.prepare(doc) {
                let doc = doc.to_string();
                self.parked.entry(doc).or_default().push_back(cmd);
                return;
            }
        }
        match cmd {
            Command::Change {
                doc,
                ack,
                timeout,
                weight,
                f,
                started,
                outcome,
            } => {
                if let Some(refused) = self.refusing_writes() {
                    let _ = started.send(Err(refused));
                    return;
                }
                let reply = lending::ChangeReply {
                    ack,
                    timeout,
                    started,
                    outcome,
                };
                if weight >= lending::HEAVY_OPS {
                    return self.lend_change(&doc, f, reply);
                }
                let want_ack = !matches!(ack, Ack::Local);
                match self.replica.local_change(now, &doc, want_ack, f) {
                    Err(ChangeError::Refused(e)) => {
                        let _ = reply.started.send(Err(Error::Change(e)));
                    }
                    Err(ChangeError::Core(e)) => {
                        let _ = reply.started.send(Err(Error::store(e)));
                    }
                    Ok(write) => self.change_made(now, &doc, write, reply),
                }
            }
            Command::Merge { reply, .. } if self.refusing_writes().is_some() => {
                if let Some(refused) = self.refusing_writes() {
                    let _ = reply.send(Err(refused));
                }
            }
            Command::Merge {
                doc,
                data,
                ack,
                timeout,
                reply,
            } => self.lend_merge(&doc, data, (ack, timeout), reply),
            Command::Read { doc, f } => {
                if let Err(f) = self.lend_read(&doc, f) {
                    f(self.replica.load(&doc));
                }
            }
            Command::Forward {
                doc,
                request,
                wait_ms,
                reply,
            } => self.forward(now, doc, request, wait_ms, reply),
            Command::Subscribe { doc, reply } => {
                self.replica.set_watched(&doc, true);
                let sender = self
                    .subscribers
                    .entry(doc)
                    .or_insert_with(|| broadcast::channel(1024).0);
                let _ = reply.send(sender.subscribe());
            }
            Command::Revoke { what, reply } => self.revoke(what, reply),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::SetPeerAddr(id, addr) => {
                self.addrs.insert(id.clone(), addr);
                if self.links.wants(&id) {
                    self.transport.connect(&id, addr);
                }
            }
            Command::ClientOpen(reply) => {
                let client = self.next_client;
                self.next_client += 1;
                let (tx, rx) = client_queue::channel(self.client_queue_bytes);
                if reply.send((client, rx)).is_ok() {
                    self.clients.insert(client, tx);
                    self.replica.client_open(client);
                }
            }
            Command::ClientSync {
                client,
                doc,
                data,
                request,
            } => {
                let result = if let Some(refused) = self.refusing_writes() {
                    Err(refused.to_string())
                } else {
                    self.replica
                        .client_sync(now, client, &doc, &data, request)
                        .map_err(|e| e.to_string())
                };
                if let Err(e) = result {
                    self.refuse_client(client, e);
                }
            }
            Command::ClientEphemeral(client, msg) => self.replica.client_ephemeral(client, msg),
            Command::ClientClose(client) => {
                self.clients.remove(&client);
                self.replica.client_close(client);
            }
            Command::Cluster(reply) => self.ask_cluster(now, reply),
            Command::Topology(reply) => {
                let _ = reply.send(self.topology_json());
            }
            Command::ChangeTopology { change, reply } if self.removes_me(&change) => {
                self.start_drain(reply);
            }
            Command::ChangeTopology { change, reply } => {
                let _ = reply.send(self.change_topology(change));
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Why writes are refused now, if they are: this node was removed or is leaving, or
    /// its storage is failing or behind (see `storage`).
    fn refusing_writes(&self) -> Option<Error> {
        if self.removed {
            Some(Error::Removed(self.id.clone()))
        } else if self.draining.is_some() {
            Some(Error::Leaving(self.id.clone()))
        } else {
            self.storage_refusal()
        }
    }

    /// A client's message was refused: the client is closed with the reason.
    fn refuse_client(&mut self, client: u64, why: String) {
        tracing::debug!(node = %self.id, client, "client message refused: {why}");
        if let Some(tx) = self.clients.remove(&client) {
            tx.close(why);
        }
        self.replica.client_close(client);
    }

    /// Queues a message for a client; one whose queue is past its bytes is disconnected
    /// (its connection ends at once, its queue is dropped).
    fn send_client(&mut self, client: u64, msg: crate::core::ClientMsg) {
        let Some(tx) = self.clients.get(&client) else {
            return;
        };
        let Err(unqueued) = tx.send(msg) else {
            return;
        };
        if let Unqueued::Full { queued } = unqueued {
            tracing::warn!(
                node = %self.id,
                client,
                queued_bytes = queued,
                "client too far behind (tuning.sync_client_queue_bytes): disconnected"
            );
            self.clients_dropped += 1;
        }
        if let Some(tx) = self.clients.remove(&client) {
            tx.give_up();
        }
        self.replica.client_close(client);
    }

    fn run_effects(&mut self) {
        loop {
            let effects = self.replica.drain_effects();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::Send { to, msg } => {
                        let unsent = Unsent::of(&msg);
                        match self.transport.send(&to, msg) {
                            Ok(()) => {}
                            Err(SendError::Full) => self.replica.send_failed(&to, unsent),
                            Err(SendError::TooLarge { len, docs }) => {
                                self.replica.send_refused(&to, unsent, len, docs)
                            }
                            Err(SendError::NotConnected) => {}
                        }
                    }
                    Effect::Persist { token, docs } => self.persist(token, docs),
                    Effect::Read { doc, kind } => {
                        if !self.reads.read(doc.clone(), kind) {
                            let gone = CoreError::Storage {
                                doc: doc.clone(),
                                detail: "the reader threads have stopped".into(),
                            };
                            self.read_done(self.now(), doc, Err(gone));
                        }
                    }
                    Effect::Apply { doc } => self.run_job(&doc),
                    Effect::Acked { doc, hash, by } => self.writes.acked(&doc, &hash, &by),
                    Effect::Drop { doc } => {
                        let _ = self.jobs.send(StoreJob::Remove(vec![doc]));
                    }
                    Effect::Client { client, msg } => self.send_client(client, msg),
                    Effect::Notify { doc, heads } => {
                        if let Some(s) = self.subscribers.get(&doc) {
                            let _ = s.send(DocEvent { doc, heads });
                        }
                    }
                }
            }
        }
    }

    /// A document's read is done: it joins the replica, and the commands that waited for
    /// it run in order (or fail with the read's error).
    fn read_done(
        &mut self,
        now: u64,
        doc: String,
        result: Result<crate::core::Fetched, CoreError>,
    ) {
        let failure = result.as_ref().err().map(|e| e.to_string());
        self.replica.read_done(now, &doc, result);
        self.resume_commands(now, &doc, failure);
    }

    /// The commands that waited for `doc` run in order (or fail with `failure`, the
    /// read's error).
    fn resume_commands(&mut self, now: u64, doc: &str, failure: Option<String>) {
        let Some(waiting) = self.parked.remove(doc) else {
            return;
        };
        for cmd in waiting {
            match &failure {
                None => self.command(now, cmd),
                Some(detail) => cmd.fail(CoreError::Storage {
                    doc: doc.to_string(),
                    detail: detail.clone(),
                }),
            }
        }
    }

    fn apply_links(&mut self, changes: LinkChanges) {
        for peer in changes.connect {
            if self.links.is_healing(&peer) && self.links.desired().contains(&peer) {
                self.gather
                    .event("healing", format!("linking to {peer} around nodes down"));
            }
            match self.addrs.get(&peer) {
                Some(addr) => self.transport.connect(&peer, *addr),
                None => tracing::debug!(node = %self.id, peer = %peer, "no address yet"),
            }
        }
        for peer in changes.disconnect {
            if self.links.is_healing(&peer) {
                self.gather.event(
                    "healed",
                    format!("link to {peer} dropped: the original links are back"),
                );
            }
            self.transport.disconnect(&peer);
        }
    }

    fn status(&self) -> NodeStatus {
        let connected = self.transport.connected();
        let desired = self.links.desired();
        let peers = self
            .links
            .topology_nodes()
            .into_iter()
            .filter(|n| *n != self.id)
            .map(|id| {
                let lag = self.replica.peer_lag(&id).unwrap_or_default();
                let linked = desired.contains(&id);
                PeerStatus {
                    connected: connected.contains(&id),
                    linked,
                    down: self.links.down().contains(&id),
                    queued_bytes: self.replica.queued_bytes(&id).unwrap_or(0),
                    healed: linked && self.links.is_healing(&id),
                    unacked_changes: lag.changes,
                    unacked_bytes: lag.bytes,
                    unacked_oldest_ms: lag.oldest_ms,
                    divergent: lag.divergent,
                    id,
                }
            })
            .collect();
        let counts = self.replica.doc_counts();
        let moving = self.replica.partitions_moving();
        let topology = self.topology.borrow();
        let partitions = topology
            .placement()
            .map_or(usize::from(crate::placement::PARTITIONS), |p| {
                p.held_by(&self.id).len()
            });
        NodeStatus {
            node: self.id.clone(),
            cluster: self.cluster.clone(),
            topology: self.topology_name.clone(),
            peers,
            docs: counts.stored,
            replicas: topology.replicas(),
            partitions,
            forwarding: self.forwards.len(),
            hints: self.replica.stray_count(),
            partitions_in: moving.0,
            partitions_out: moving.1,
            handed_off: self.replica.handed_off(),
            docs_loaded: counts.loaded,
            cache_bytes: counts.loaded_bytes,
            pending_writes: self.writes.len(),
            storage_queued_bytes: self.storage_queued(),
            storage_failing: self.storage_failing().cloned(),
            member: if self.removed {
                MemberState::Removed
            } else if self.draining.is_some() {
                MemberState::Leaving
            } else {
                MemberState::Member
            },
            fingerprint: self.replica.fingerprint(),
            sync_clients: self.clients.len(),
            sync_clients_dropped: self.clients_dropped,
            sync_client_queued_bytes: self.clients.values().map(ClientSender::queued_bytes).sum(),
            wakeups: self.wakeups,
            timer_wakeups: self.timer_wakeups,
            reads_in_flight: self.replica.reads_in_flight(),
            core: self.replica.stats(),
            transport: self.transport.stats(),
        }
    }

    /// Flushes everything to storage, compacts long logs (a restart then loads snapshots,
    /// several times faster than replaying changes), closes the transport and the store.
    async fn stop(&mut self, reply: Option<oneshot::Sender<()>>) {
        // What a failed commit left in memory gets one last try.
        self.replica.retry_persists();
        self.replica.flush();
        self.run_effects();
        self.transport.shutdown().await;
        let (tx, rx) = oneshot::channel();
        if self
            .jobs
            .send(StoreJob::LongLogs(COMPACT_AT_STOP, tx))
            .is_ok()
        {
            if let Ok(Ok(docs)) = tokio::time::timeout(Duration::from_secs(30), rx).await {
                self.compact(docs);
            }
        }
        // Everything queued is committed, then the store is closed (its file released, so
        // the same data directory can be opened again at once).
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(StoreJob::Close(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
        }
        tracing::info!(node = %self.id, "stopped");
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }
}
