//! The simulated world: nodes with their replicas and stores, links, the event queue
//! and virtual clock, and how effects and faults are carried out.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{Automerge, ChangeHash};
use concordant::core::{
    CoreConfig, CoreStats, Effect, Fetched, Flood, LoadedDoc, ReadKind, Replica, Router,
    StoredIndex,
};
use concordant::storage::{Compaction, DocAppend, MemoryStore, Store};
use concordant::topology::Topology;
use concordant::wire;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::members::{check_held, Change};
use super::trace::{describe, describe_batch};
use super::workload::initial_doc;
use super::{FAULT_MS, MAX_MESSAGES, TICK_MS};

/// Something that happens at a virtual time.
pub(crate) enum Event {
    Deliver {
        link: usize,
        epoch: u64,
        from: usize,
        to: usize,
        frame: Vec<u8>,
        /// Reconciliation openings (level-1 fingerprints) never stop: they do not count
        /// as work in flight.
        periodic: bool,
    },
    PersistDone {
        node: usize,
        life: u64,
        token: u64,
        docs: Vec<DocAppend>,
    },
    /// A read of a stored document asked for by a replica ([`Effect::Read`]), as the
    /// node's reader threads do: the store is read when it completes.
    ReadDone {
        node: usize,
        life: u64,
        doc: String,
        kind: ReadKind,
    },
    /// Heavy work lent out by a replica ([`Effect::Apply`]), as the node's reader threads
    /// do it: run when it completes.
    JobDone {
        node: usize,
        life: u64,
        job: Box<concordant::core::Job>,
    },
    /// A compaction queued after the persists before it, as the node's store thread does.
    CompactDone {
        node: usize,
        life: u64,
        docs: Vec<Compaction>,
    },
    /// The deletion of a handed-off document ([`Effect::Drop`]), queued after the store's
    /// other jobs, as the node's store thread does.
    RemoveDone {
        node: usize,
        life: u64,
        doc: String,
    },
    /// The seed's node added or removed: every node follows the new topology at once.
    Membership(Change),
    /// The world's own clock: faults are drawn and the run's end is checked (replicas are
    /// not ticked: they ask for their timeouts).
    Tick,
    /// A timeout node `node` asked for (`Replica::poll_timeout`), at `at`: only the one it
    /// asked for last is carried out.
    Timeout {
        node: usize,
        life: u64,
        at: u64,
    },
    Write,
    Heal {
        links: Vec<usize>,
        era: u64,
    },
    Restart {
        node: usize,
    },
}

/// One node: its replica while it runs, and its store, which outlives crashes (the
/// replica reads documents from it on demand and drops idle ones from memory).
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) replica: Option<Replica>,
    /// Incremented at every crash: persists of an earlier life never complete.
    pub(crate) life: u64,
    /// What was committed; clones share it, so a crash keeps exactly that.
    pub(crate) store: MemoryStore,
    /// Persists complete in order: the next one finishes no earlier than this.
    pub(crate) persist_free_at: u64,
    /// Hashes of every change appended to `store` (the store survives crashes, so does
    /// this).
    pub(crate) durable: BTreeSet<ChangeHash>,
    /// Documents with a compaction queued (not compacted again until it is done).
    pub(crate) compacting: BTreeSet<String>,
    /// The timeout scheduled for the replica, if any.
    pub(crate) timer_at: Option<u64>,
    /// Removed from the cluster and drained: it never runs again.
    pub(crate) gone: bool,
    /// Hashes of the changes `store` holds, per document: what appends added, until the
    /// document is deleted (compactions keep them; checked against the store's contents at
    /// restarts and at the end). Counts the copies of acknowledged writes.
    pub(crate) held: BTreeMap<String, BTreeSet<ChangeHash>>,
}

/// Counters of the replicas of a run, crashed ones included.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Totals {
    pub(crate) doc_loads: u64,
    pub(crate) doc_evictions: u64,
    pub(crate) doc_load_errors: u64,
    pub(crate) wants_sent: u64,
    pub(crate) repair_changes_sent: u64,
    pub(crate) repairs: u64,
    pub(crate) reconcile_rounds: u64,
    pub(crate) reconcile_bytes: u64,
}

impl Totals {
    pub(crate) fn add_stats(&mut self, s: &CoreStats) {
        self.doc_loads += s.doc_loads;
        self.doc_evictions += s.doc_evictions;
        self.doc_load_errors += s.doc_load_errors;
        self.wants_sent += s.wants_sent;
        self.repair_changes_sent += s.repair_changes_sent;
        self.repairs += s.repairs;
        self.reconcile_rounds += s.reconcile_rounds;
        self.reconcile_bytes += s.reconcile_bytes;
    }

    pub(crate) fn add(&mut self, t: &Totals) {
        self.doc_loads += t.doc_loads;
        self.doc_evictions += t.doc_evictions;
        self.doc_load_errors += t.doc_load_errors;
        self.wants_sent += t.wants_sent;
        self.repair_changes_sent += t.repair_changes_sent;
        self.repairs += t.repairs;
        self.reconcile_rounds += t.reconcile_rounds;
        self.reconcile_bytes += t.reconcile_bytes;
    }
}

/// Every document in `store` with its heads, from its index (the sim always records heads).
pub(crate) fn stored_index(store: &MemoryStore) -> Vec<(String, Vec<[u8; 32]>)> {
    let mut index = Vec::new();
    store
        .scan_index(&mut |doc, heads| {
            let heads = heads.unwrap_or_else(|| panic!("{doc} is stored without heads"));
            index.push((doc.to_string(), heads.to_vec()));
        })
        .expect("a memory store scans");
    index
}

/// The listing of [`stored_index`] as a replica takes it.
pub(crate) fn as_stored(index: &[(String, Vec<[u8; 32]>)]) -> StoredIndex {
    let mut stored = StoredIndex::new();
    for (doc, heads) in index {
        stored.add(doc, heads);
    }
    stored
}

/// What a crash left must be consistent: every stored document loads, to the heads its
/// index entry records (a restart trusts the index until it reads the document).
pub(crate) fn check_store(name: &str, store: &MemoryStore, index: &[(String, Vec<[u8; 32]>)]) {
    let reader = store.reader();
    for (doc, heads) in index {
        let stored = reader
            .read(doc)
            .expect("a memory store reads")
            .unwrap_or_else(|| panic!("{name} lists {doc} in its store index, has no data"));
        let loaded = LoadedDoc::decode(doc, stored.snapshot.as_deref(), &stored.changes)
            .unwrap_or_else(|e| panic!("{name} cannot load {doc} from its store: {e}"));
        assert_eq!(
            &loaded.heads(),
            heads,
            "{name}: {doc} loads to other heads than its store index records"
        );
    }
}

/// Writes an initial document to `store`: its heads, then its snapshot.
fn store_initial(store: &mut MemoryStore, doc: &str) {
    let snapshot = initial_doc(doc);
    let heads = Automerge::load(&snapshot)
        .expect("the initial document loads")
        .get_heads()
        .iter()
        .map(|h| h.0)
        .collect();
    store
        .append(&[DocAppend {
            doc: doc.to_string(),
            changes: vec![],
            heads,
        }])
        .expect("a memory store appends");
    store
        .compact(vec![Compaction {
            doc: doc.to_string(),
            snapshot,
            keep: vec![],
        }])
        .expect("a memory store compacts");
}

/// A link of the topology between nodes `a` and `b`.
pub(crate) struct Link {
    pub(crate) a: usize,
    pub(crate) b: usize,
    /// Active cuts (a partition may cut a link that is already cut).
    pub(crate) cuts: u32,
    pub(crate) up: bool,
    /// Bumped whenever the link goes down or up: older messages in flight are dropped.
    pub(crate) epoch: u64,
    /// A link of the current topology (or of a removed node still handing off).
    pub(crate) active: bool,
}

/// One local write that made a change.
pub(crate) struct WriteRecord {
    pub(crate) node: usize,
    pub(crate) want_ack: bool,
    pub(crate) doc: String,
    pub(crate) hash: ChangeHash,
    /// What it added to the document's counter.
    pub(crate) increment: i64,
    /// Its persist completed at its node: it must never be lost.
    pub(crate) acked: bool,
    /// The peers that acknowledged it (have it durably): it must never have fewer copies.
    pub(crate) acks: BTreeSet<usize>,
}

impl WriteRecord {
    /// Copies acknowledged: its writer's once durable there, and one per acking peer.
    pub(crate) fn copies(&self) -> usize {
        usize::from(self.acked) + self.acks.len()
    }

    /// Durable at its writer or at a peer that acknowledged it: it must never be lost.
    pub(crate) fn acknowledged(&self) -> bool {
        self.copies() > 0
    }
}

/// Knobs drawn from the seed.
pub(crate) struct Params {
    pub(crate) loss: f64,
    pub(crate) dup: f64,
    pub(crate) reorder: f64,
    pub(crate) cut: f64,
    pub(crate) split: f64,
    pub(crate) crash: f64,
    pub(crate) compact_on_restart: f64,
    /// While running, a document whose log reaches this many changes after a persist is
    /// compacted (as the node's driver does); `None`: only on restart.
    pub(crate) compact_after: Option<usize>,
    /// Longest time one persist takes, in ms.
    pub(crate) persist_ms: u64,
    /// Longest time one read of a stored document takes, in ms.
    pub(crate) read_ms: u64,
}

/// The whole simulation of one seed.
pub(crate) struct Sim {
    pub(crate) rng: StdRng,
    pub(crate) now: u64,
    /// Tie-breaker: events at the same time run in the order they were scheduled.
    pub(crate) seq: u64,
    pub(crate) queue: BTreeMap<(u64, u64), Event>,
    /// Messages (other than reconciliation openings) and persists not yet carried out.
    pub(crate) in_flight: usize,
    pub(crate) nodes: Vec<Node>,
    pub(crate) links: Vec<Link>,
    pub(crate) link_of: BTreeMap<(usize, usize), usize>,
    pub(crate) params: Params,
    pub(crate) ring: bool,
    /// Writes and faults happen (the first phase).
    pub(crate) faults: bool,
    /// Bumped when everything heals, so older Heal events do nothing.
    pub(crate) era: u64,
    pub(crate) writes: Vec<WriteRecord>,
    /// Writes by document and hash (two documents may get the same change: a node's first
    /// change to each of two documents it did not have, with equal ops and time).
    pub(crate) write_index: BTreeMap<(String, ChangeHash), usize>,
    /// Writes waiting for their persist: (node, life, token) → indexes into `writes`.
    pub(crate) awaiting: BTreeMap<(usize, u64, u64), Vec<usize>>,
    pub(crate) config: CoreConfig,
    /// The documents written to: `d0` is stored at every node at start, `d1` only at n0,
    /// `d2` nowhere, the others at random subsets of the nodes.
    pub(crate) docs: Vec<String>,
    /// Counters of the replicas lost in crashes.
    pub(crate) retired: Totals,
    pub(crate) trace: bool,
    pub(crate) delivered: u64,
    pub(crate) acked_effects: u64,
    /// Each document on this many nodes (`None`: on every node, with the `Flood` router).
    pub(crate) replicas: Option<usize>,
    /// The nodes of the cluster, in ring order (the topology's order).
    pub(crate) members: Vec<usize>,
    /// The current topology with its placement, when `replicas` is set.
    pub(crate) topology: Option<Topology>,
    /// A removed node still handing its documents off (it stops once it stores nothing).
    pub(crate) retiring: Option<usize>,
    /// The seed's node added or removed, and when, once done (for the summary).
    pub(crate) changed: Option<(Change, u64)>,
    /// Writes taken by a node that does not replicate their document (hints).
    pub(crate) hinted: usize,
    /// `Effect::Drop`s carried out (documents handed off), and deletions they made.
    pub(crate) drops: u64,
    pub(crate) deletions: u64,
}

impl Sim {
    pub(crate) fn new(seed: u64, trace: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(3..=5usize);
        let ring = rng.random_bool(0.5);
        let params = Params {
            loss: rng.random_range(0.0..0.2),
            dup: rng.random_range(0.0..0.1),
            reorder: rng.random_range(0.0..0.3),
            cut: rng.random_range(0.0..0.08),
            split: rng.random_range(0.0..0.03),
            crash: rng.random_range(0.0..0.04),
            compact_on_restart: 0.5,
            compact_after: if rng.random_bool(0.8) {
                Some(rng.random_range(1..=8))
            } else {
                None
            },
            persist_ms: rng.random_range(5..=150),
            read_ms: rng.random_range(1..=60),
        };
        let config = CoreConfig {
            anti_entropy_ms: 500,
            quiet_ms: 200,
            session_timeout_ms: 2_000,
            repair_hold_ms: rng.random_range(50..=400),
            outbox_limit: if rng.random_bool(0.2) { 2_000 } else { 1 << 20 },
            ack_memory: 10_000,
            // A tiny cache: documents are dropped and read back at random moments.
            cache_docs: match rng.random_range(0..10) {
                0 | 1 => 4_096,
                2 | 3 => rng.random_range(4..=6),
                _ => rng.random_range(1..=3),
            },
            // Sometimes room for one to four small documents by bytes (see
            // `concordant::core::footprint`).
            cache_bytes: match rng.random_range(0..10) {
                0 | 1 => rng.random_range(14_000..=60_000),
                _ => 64 << 20,
            },
            want_window: if rng.random_bool(0.5) {
                rng.random_range(1..=4)
            } else {
                2_048
            },
            // Pushes and client messages this heavy are applied as lent jobs, which take
            // as long as reads: mostly all of them, or none.
            heavy_ops: match rng.random_range(0..4) {
                0 => 1,
                1 => 3,
                _ => 10_000,
            },
            ..CoreConfig::default()
        };
        let docs: Vec<String> = (0..rng.random_range(4..=12usize))
            .map(|k| format!("d{k}"))
            .collect();
        let mut pairs = BTreeSet::new();
        for i in 0..n {
            if ring {
                pairs.insert((i.min((i + 1) % n), i.max((i + 1) % n)));
            } else {
                for j in i + 1..n {
                    pairs.insert((i, j));
                }
            }
        }
        let links: Vec<Link> = pairs
            .iter()
            .map(|&(a, b)| Link {
                a,
                b,
                cuts: 0,
                up: false,
                epoch: 0,
                active: true,
            })
            .collect();
        let link_of = pairs
            .iter()
            .enumerate()
            .flat_map(|(l, &(a, b))| [((a, b), l), ((b, a), l)])
            .collect();
        let mut stores: Vec<MemoryStore> = (0..n).map(|_| MemoryStore::new()).collect();
        for (k, doc) in docs.iter().enumerate() {
            for (i, store) in stores.iter_mut().enumerate() {
                let stored = match k {
                    0 => true,
                    1 => i == 0,
                    2 => false,
                    _ => rng.random_bool(0.5),
                };
                if stored {
                    store_initial(store, doc);
                }
            }
        }
        // Most seeds place each document on R of the N nodes (R = 1 now and then: a
        // crash loses nothing acknowledged there, the store survives); half of those add
        // or remove a node while the writes go on. On a ring of more than 3 nodes, a node
        // is not linked to every replica: its strays go hop by hop (see core handoff).
        let replicas = rng.random_bool(0.6).then(|| {
            if rng.random_bool(0.2) {
                1
            } else {
                rng.random_range(2..n)
            }
        });
        // A removal keeps R below the nodes left, so the placement stays.
        let change = match replicas {
            Some(r) if rng.random_bool(0.5) => {
                let at = rng.random_range(500..=FAULT_MS - 1_000);
                let change = if r + 2 <= n && rng.random_bool(0.7) {
                    Change::Remove(rng.random_range(0..n))
                } else {
                    Change::Add
                };
                Some((change, at))
            }
            _ => None,
        };
        let nodes = stores
            .into_iter()
            .enumerate()
            .map(|(i, store)| Node::new(i, store))
            .collect();
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            in_flight: 0,
            nodes,
            links,
            link_of,
            params,
            ring,
            faults: true,
            era: 0,
            writes: Vec::new(),
            write_index: BTreeMap::new(),
            awaiting: BTreeMap::new(),
            config,
            docs,
            retired: Totals::default(),
            trace,
            delivered: 0,
            acked_effects: 0,
            replicas,
            members: (0..n).collect(),
            topology: None,
            retiring: None,
            changed: None,
            hinted: 0,
            drops: 0,
            deletions: 0,
        };
        sim.topology = sim.build_topology();
        sim.log(|| {
            format!(
                "{n} nodes on a {}, each document on {}, {:?}",
                if ring { "ring" } else { "mesh" },
                replicas.map_or("all".to_string(), |r| r.to_string()),
                change
            )
        });
        for i in 0..n {
            sim.start(i);
        }
        sim.schedule(TICK_MS, Event::Tick);
        sim.schedule(1, Event::Write);
        if let Some((change, at)) = change {
            sim.schedule(at, Event::Membership(change));
        }
        sim
    }

    pub(crate) fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("[{:>6}] {}", self.now, what());
        }
    }

    pub(crate) fn schedule(&mut self, delay: u64, event: Event) {
        if matches!(
            event,
            Event::Deliver {
                periodic: false,
                ..
            } | Event::PersistDone { .. }
                | Event::CompactDone { .. }
                | Event::RemoveDone { .. }
                | Event::ReadDone { .. }
                | Event::JobDone { .. }
        ) {
            self.in_flight += 1;
        }
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), event);
    }

    pub(crate) fn alive(&self, i: usize) -> bool {
        self.nodes[i].replica.is_some()
    }

    /// Builds a new replica over the node's store (a fresh actor every time; documents are
    /// read on first use), compacts the store half of the time, and brings its links up.
    pub(crate) fn start(&mut self, i: usize) {
        let seed: [u8; 16] = self.rng.random();
        let compact = self.rng.random_bool(self.params.compact_on_restart);
        let router: Box<dyn Router> = match &self.topology {
            Some(t) => Box::new(t.clone()),
            None => Box::new(Flood),
        };
        let node = &mut self.nodes[i];
        let mut replica = Replica::new(node.name.clone(), seed, router, self.config.clone());
        let index = stored_index(&node.store);
        if node.life > 0 {
            check_store(&node.name, &node.store, &index);
            check_held(node).unwrap_or_else(|e| panic!("at restart: {e}"));
        }
        replica.set_store(as_stored(&index));
        if compact {
            let mut compactions = Vec::new();
            for (doc, _) in &index {
                let loaded = LoadedDoc::read(node.store.reader().as_ref(), doc)
                    .unwrap_or_else(|e| panic!("{} cannot read its store: {e}", node.name))
                    .unwrap_or_else(|| panic!("{} lost {doc} from its store", node.name));
                let (snapshot, keep) = loaded.snapshot();
                compactions.push(Compaction {
                    doc: doc.clone(),
                    snapshot,
                    keep,
                });
            }
            node.store
                .compact(compactions)
                .expect("a memory store compacts");
        }
        node.replica = Some(replica);
        node.persist_free_at = self.now;
        node.compacting.clear();
        node.timer_at = None;
        self.log(|| format!("start n{i}{}", if compact { " (compacted)" } else { "" }));
        self.update_links(i);
    }

    pub(crate) fn crash(&mut self, i: usize) {
        self.log(|| format!("crash n{i}"));
        if let Some(r) = self.nodes[i].replica.take() {
            self.retired.add_stats(&r.stats());
        }
        self.nodes[i].life += 1;
        self.update_links(i);
    }

    pub(crate) fn update_links(&mut self, i: usize) {
        let ls: Vec<usize> = (0..self.links.len())
            .filter(|&l| self.links[l].a == i || self.links[l].b == i)
            .collect();
        for l in ls {
            self.update_link(l);
        }
    }

    pub(crate) fn update_link(&mut self, l: usize) {
        let (a, b) = (self.links[l].a, self.links[l].b);
        let want =
            self.links[l].active && self.links[l].cuts == 0 && self.alive(a) && self.alive(b);
        if want == self.links[l].up {
            return;
        }
        self.links[l].up = want;
        self.links[l].epoch += 1;
        self.log(|| format!("link n{a}-n{b} {}", if want { "up" } else { "down" }));
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.nodes[y].name.clone();
            let now = self.now;
            if let Some(r) = self.nodes[x].replica.as_mut() {
                if want {
                    r.peer_up(now, &peer);
                } else {
                    r.peer_down(now, &peer);
                }
            }
        }
        self.pump(a);
        self.pump(b);
    }

    /// Flushes node `i` and carries out its effects, until it has none.
    pub(crate) fn pump(&mut self, i: usize) {
        for _ in 0..1_000 {
            let Some(r) = self.nodes[i].replica.as_mut() else {
                return;
            };
            r.flush();
            let effects = r.drain_effects();
            if effects.is_empty() {
                self.schedule_timeout(i);
                return;
            }
            for effect in effects {
                self.carry_out(i, effect);
            }
        }
        panic!("n{i} keeps producing effects");
    }

    /// Schedules the timeout node `i`'s replica asks for, unless one as early is already.
    fn schedule_timeout(&mut self, i: usize) {
        let node = &self.nodes[i];
        let Some(at) = node.replica.as_ref().and_then(|r| r.poll_timeout()) else {
            return;
        };
        let at = at.max(self.now);
        if node.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        let life = node.life;
        self.nodes[i].timer_at = Some(at);
        self.schedule(at - self.now, Event::Timeout { node: i, life, at });
    }

    pub(crate) fn carry_out(&mut self, i: usize, effect: Effect) {
        match effect {
            Effect::Send { to, msg } => {
                let j: usize = to[1..].parse().expect("node names are n<i>");
                let l = *self
                    .link_of
                    .get(&(i, j))
                    .unwrap_or_else(|| panic!("n{i} sends to n{j}: no link"));
                assert!(
                    self.links[l].up,
                    "n{i} sends {} to n{j} over a link that is down",
                    msg.kind()
                );
                let frame = wire::encode(&msg).expect("encodable");
                let periodic = matches!(&msg, wire::Message::Fingerprints(f) if f.level == 1);
                let loss = if self.faults { self.params.loss } else { 0.0 };
                if self.rng.random_bool(loss) {
                    self.log(|| format!("lose n{i}->n{j} {}", msg.kind()));
                    if self.rng.random_bool(0.3) {
                        if let Some(r) = self.nodes[i].replica.as_mut() {
                            r.send_failed(&to, concordant::core::Unsent::of(&msg));
                        }
                    }
                    return;
                }
                let copies = if self.rng.random_bool(self.params.dup) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let mut delay = self.rng.random_range(1..=20);
                    if self.rng.random_bool(self.params.reorder) {
                        delay += self.rng.random_range(0..300);
                    }
                    let epoch = self.links[l].epoch;
                    self.schedule(
                        delay,
                        Event::Deliver {
                            link: l,
                            epoch,
                            from: i,
                            to: j,
                            frame: frame.clone(),
                            periodic,
                        },
                    );
                }
            }
            Effect::Persist { token, docs } => {
                let (life, delay) = self.store_job(i);
                self.schedule(
                    delay,
                    Event::PersistDone {
                        node: i,
                        life,
                        token,
                        docs,
                    },
                );
            }
            Effect::Acked { doc, hash, by } => {
                // An ack means: `by` has this write of ours on disk.
                self.acked_effects += 1;
                let w = self
                    .write_index
                    .get(&(doc.clone(), hash))
                    .map(|&w| &self.writes[w])
                    .unwrap_or_else(|| panic!("n{i} got an ack for {hash}, not a write"));
                assert!(
                    w.node == i && w.want_ack && w.doc == doc,
                    "n{i}: wrong ack {hash}"
                );
                let j: usize = by[1..].parse().expect("node names are n<i>");
                assert_ne!(i, j, "n{i} acked its own write");
                assert!(
                    self.nodes[j].durable.contains(&hash),
                    "n{i} got an ack from n{j} for {hash}, which n{j} has not persisted"
                );
                let w = self.write_index[&(doc.clone(), hash)];
                self.writes[w].acks.insert(j);
                if let Err(e) = self.check_copies(Some(&doc)) {
                    panic!("after n{j} acked {hash} of {doc} to n{i}: {e}");
                }
            }
            Effect::Read { doc, kind } => {
                let delay = self.rng.random_range(1..=self.params.read_ms);
                let life = self.nodes[i].life;
                let read = Event::ReadDone {
                    node: i,
                    life,
                    doc,
                    kind,
                };
                self.schedule(delay, read);
            }
            Effect::Apply { doc } => {
                let Some(job) = self.nodes[i]
                    .replica
                    .as_mut()
                    .and_then(|r| r.take_job(&doc))
                else {
                    panic!("n{i} announced a job on {doc} it does not have");
                };
                let delay = self.rng.random_range(1..=self.params.read_ms);
                let life = self.nodes[i].life;
                self.schedule(
                    delay,
                    Event::JobDone {
                        node: i,
                        life,
                        job: Box::new(job),
                    },
                );
            }
            // No automerge-repo clients in the simulation.
            Effect::Notify { .. } | Effect::Client { .. } => {}
            Effect::Drop { doc } => {
                assert!(
                    self.topology.is_some(),
                    "n{i} drops {doc} without a placement"
                );
                self.drops += 1;
                self.log(|| format!("n{i} hands {doc} off: drops it"));
                let (life, delay) = self.store_job(i);
                self.schedule(delay, Event::RemoveDone { node: i, life, doc });
            }
        }
    }

    /// Queues a job on node `i`'s store: jobs complete in order, each taking up to
    /// `persist_ms`. Returns the node's life and the delay until the job is done.
    fn store_job(&mut self, i: usize) -> (u64, u64) {
        let done = self.nodes[i].persist_free_at.max(self.now)
            + self.rng.random_range(1..=self.params.persist_ms);
        let node = &mut self.nodes[i];
        node.persist_free_at = done;
        (node.life, done - self.now)
    }

    /// After a persist: documents whose logs have grown long are compacted, with
    /// snapshots taken now, queued behind the persists already under way (so a snapshot
    /// holds only changes committed before the compaction is).
    fn compact_long_logs(&mut self, i: usize, appended: Vec<String>) {
        let Some(min) = self.params.compact_after else {
            return;
        };
        let node = &mut self.nodes[i];
        let Some(r) = node.replica.as_mut() else {
            return;
        };
        let mut compactions = Vec::new();
        for doc in appended {
            if node.store.log_len(&doc) < min || node.compacting.contains(&doc) {
                continue;
            }
            if let Some((snapshot, keep)) = r.snapshot(&doc) {
                node.compacting.insert(doc.clone());
                compactions.push(Compaction {
                    doc,
                    snapshot,
                    keep,
                });
            }
        }
        if compactions.is_empty() {
            return;
        }
        let (life, delay) = self.store_job(i);
        self.schedule(
            delay,
            Event::CompactDone {
                node: i,
                life,
                docs: compactions,
            },
        );
    }

    pub(crate) fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver {
                link,
                epoch,
                from,
                to,
                frame,
                periodic,
            } => {
                if !periodic {
                    self.in_flight -= 1;
                }
                if self.links[link].epoch != epoch || !self.links[link].up {
                    return;
                }
                let (msg, used) = wire::decode_frame(&frame)
                    .expect("decodes")
                    .expect("complete");
                assert_eq!(used, frame.len());
                self.delivered += 1;
                self.log(|| format!("deliver n{from}->n{to} {}", describe(&msg)));
                let name = self.nodes[from].name.clone();
                let now = self.now;
                let r = self.nodes[to]
                    .replica
                    .as_mut()
                    .expect("link up means alive");
                r.handle_message(now, &name, msg);
                self.pump(to);
                self.log(|| format!("  n{to} now {}", self.describe_heads(to)));
            }
            Event::PersistDone {
                node,
                life,
                token,
                docs,
            } => {
                self.in_flight -= 1;
                if self.nodes[node].life != life || !self.alive(node) {
                    return;
                }
                self.log(|| format!("persisted n{node} token {token}: {}", describe_batch(&docs)));
                for append in &docs {
                    for bytes in &append.changes {
                        let change = automerge::Change::from_bytes(bytes.clone())
                            .expect("persisted changes decode");
                        let n = &mut self.nodes[node];
                        n.durable.insert(change.hash());
                        n.held
                            .entry(append.doc.clone())
                            .or_default()
                            .insert(change.hash());
                    }
                }
                let appended: Vec<String> = docs.iter().map(|a| a.doc.clone()).collect();
                self.nodes[node]
                    .store
                    .append(&docs)
                    .expect("a memory store appends");
                if let Some(idx) = self.awaiting.remove(&(node, life, token)) {
                    for w in idx {
                        self.writes[w].acked = true;
                    }
                }
                self.nodes[node]
                    .replica
                    .as_mut()
                    .expect("alive")
                    .persisted(token);
                // As the node's driver does: compactions are queued before anything else.
                self.compact_long_logs(node, appended);
                self.pump(node);
            }
            Event::ReadDone {
                node,
                life,
                doc,
                kind,
            } => {
                self.in_flight -= 1;
                if self.nodes[node].life != life || !self.alive(node) {
                    return;
                }
                self.log(|| format!("read n{node} {doc} ({kind:?})"));
                let reader = self.nodes[node].store.reader();
                let result = Fetched::read(reader.as_ref(), &doc, kind);
                let now = self.now;
                if let Some(r) = self.nodes[node].replica.as_mut() {
                    r.read_done(now, &doc, result);
                }
                self.pump(node);
            }
            Event::JobDone {
                node,
                life,
                mut job,
            } => {
                self.in_flight -= 1;
                if self.nodes[node].life != life || !self.alive(node) {
                    return;
                }
                self.log(|| format!("job done n{node} {}", job.doc()));
                job.run();
                let now = self.now;
                if let Some(r) = self.nodes[node].replica.as_mut() {
                    r.job_done(now, *job);
                }
                self.pump(node);
            }
            Event::CompactDone { node, life, docs } => {
                self.in_flight -= 1;
                if self.nodes[node].life != life || !self.alive(node) {
                    return;
                }
                self.log(|| {
                    let names: Vec<&str> = docs.iter().map(|c| c.doc.as_str()).collect();
                    format!("compacted n{node}: {}", names.join(" "))
                });
                for c in &docs {
                    self.nodes[node].compacting.remove(&c.doc);
                }
                self.nodes[node]
                    .store
                    .compact(docs)
                    .expect("a memory store compacts");
            }
            Event::RemoveDone { node, life, doc } => {
                self.in_flight -= 1;
                if self.nodes[node].life != life || !self.alive(node) {
                    // Still stored: handed off again after the restart.
                    return;
                }
                self.log(|| format!("deleted n{node} {doc}"));
                let n = &mut self.nodes[node];
                n.store
                    .remove(std::slice::from_ref(&doc))
                    .expect("a memory store removes");
                n.held.remove(&doc);
                self.deletions += 1;
                if let Err(e) = self.check_copies(Some(&doc)) {
                    panic!("after n{node} deleted {doc}: {e}");
                }
            }
            Event::Membership(change) => self.change_membership(change),
            Event::Timeout { node, life, at } => {
                let n = &mut self.nodes[node];
                if n.life != life || n.timer_at != Some(at) {
                    return;
                }
                n.timer_at = None;
                let now = self.now;
                if let Some(r) = n.replica.as_mut() {
                    r.handle_timeout(now);
                    // Everything due is done: the node never asks to be woken again at
                    // once (which would make a driver spin).
                    if let Some(next) = r.poll_timeout() {
                        assert!(
                            next > now,
                            "n{node} handled its timeouts at {now} and asks for {next}"
                        );
                    }
                    self.pump(node);
                }
            }
            Event::Tick => {
                if self.faults {
                    self.random_faults();
                }
                self.retire_if_drained();
                if let Err(e) = self.check_copies(None) {
                    panic!("at {} ms: {e}", self.now);
                }
                self.schedule(TICK_MS, Event::Tick);
            }
            Event::Write => {
                if self.faults {
                    if self.rng.random_bool(0.03) {
                        self.random_merge();
                    } else {
                        self.random_write();
                    }
                    let next = self.rng.random_range(10..=70);
                    self.schedule(next, Event::Write);
                }
            }
            Event::Heal { links, era } => {
                if era == self.era {
                    for l in links {
                        self.links[l].cuts -= 1;
                        self.update_link(l);
                    }
                }
            }
            Event::Restart { node } => {
                if !self.alive(node) && !self.nodes[node].gone {
                    self.start(node);
                }
            }
        }
    }

    pub(crate) fn random_faults(&mut self) {
        let n = self.nodes.len();
        if self.rng.random_bool(self.params.cut) {
            let l = self.rng.random_range(0..self.links.len());
            self.cut(vec![l]);
        }
        if self.rng.random_bool(self.params.split) {
            let side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
            let ls = (0..self.links.len())
                .filter(|&l| side[self.links[l].a] != side[self.links[l].b])
                .collect();
            self.cut(ls);
        }
        if self.rng.random_bool(self.params.crash) {
            let i = self.rng.random_range(0..n);
            if self.alive(i) {
                self.crash(i);
                let after = self.rng.random_range(100..3_000);
                self.schedule(after, Event::Restart { node: i });
            }
        }
    }

    pub(crate) fn cut(&mut self, links: Vec<usize>) {
        if links.is_empty() {
            return;
        }
        for &l in &links {
            self.links[l].cuts += 1;
            self.update_link(l);
        }
        let after = self.rng.random_range(200..4_000);
        let era = self.era;
        self.schedule(after, Event::Heal { links, era });
    }

    /// Runs events until `until` (virtual ms), or until `stop` says so at a tick. Errs if
    /// the nodes send more than [`MAX_MESSAGES`]: a message storm (a run sends ~1,000).
    pub(crate) fn run_until(
        &mut self,
        until: u64,
        mut stop: impl FnMut(&Sim) -> bool,
    ) -> Result<bool, String> {
        while let Some(((at, _), _)) = self.queue.first_key_value() {
            if *at > until {
                return Ok(false);
            }
            if self.delivered > MAX_MESSAGES {
                return Err(format!(
                    "message storm: over {MAX_MESSAGES} messages by {} virtual ms",
                    self.now
                ));
            }
            let ((at, _), event) = self.queue.pop_first().expect("not empty");
            self.now = at;
            let tick = matches!(event, Event::Tick);
            self.handle(event);
            if tick && stop(self) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(crate) fn heal_all(&mut self) {
        self.faults = false;
        self.era += 1;
        for l in 0..self.links.len() {
            self.links[l].cuts = 0;
        }
        for i in 0..self.nodes.len() {
            if !self.alive(i) && !self.nodes[i].gone {
                self.start(i);
            }
        }
        for l in 0..self.links.len() {
            self.update_link(l);
        }
    }

    /// Quiet: nothing in flight, no removed node still handing off, and each document
    /// exactly on its replicas, with the same heads on each.
    pub(crate) fn converged(&self) -> bool {
        self.in_flight == 0 && self.retiring.is_none() && self.placement_errors().is_ok()
    }

    /// Every document of node `i` with its heads: those in memory from its replica, the
    /// others from its store (what a node's listing shows once its writes are durable);
    /// `None` if it is down.
    pub(crate) fn all_heads(&self, i: usize) -> Option<Vec<(String, Vec<ChangeHash>)>> {
        let node = &self.nodes[i];
        let r = node.replica.as_ref()?;
        let mut all: BTreeMap<String, Vec<ChangeHash>> = stored_index(&node.store)
            .into_iter()
            .filter(|(doc, _)| r.doc(doc).is_none())
            .map(|(doc, heads)| (doc, heads.into_iter().map(ChangeHash).collect()))
            .collect();
        all.extend(r.heads());
        all.retain(|_, heads| !heads.is_empty());
        Some(all.into_iter().collect())
    }

    /// Reads `doc` into node `i`'s replica at once if it is stored and not in memory (for
    /// the checks, which look at every document); false if it is down.
    pub(crate) fn read_now(&mut self, i: usize, doc: &str) -> bool {
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(r) = node.replica.as_mut() else {
            return false;
        };
        if !r.prepare(doc) {
            let fetched = Fetched::read(node.store.reader().as_ref(), doc, ReadKind::Doc);
            r.read_done(now, doc, fetched);
        }
        true
    }
}
