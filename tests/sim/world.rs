//! The simulated world: nodes with their replicas and storage, links, the event queue
//! and virtual clock, and how effects and faults are carried out.

use std::collections::{BTreeMap, BTreeSet};

use automerge::ChangeHash;
use concordant::core::{CoreConfig, Effect, Flood, Replica};
use concordant::wire;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::trace::{describe, describe_batch};
use super::workload::initial_doc;
use super::{MAX_MESSAGES, TICK_MS};

/// Something that happens at a virtual time.
pub(crate) enum Event {
    Deliver {
        link: usize,
        epoch: u64,
        from: usize,
        to: usize,
        frame: Vec<u8>,
        /// Periodic digests never stop: they do not count as work in flight.
        digest: bool,
    },
    PersistDone {
        node: usize,
        life: u64,
        token: u64,
        docs: Vec<(String, Vec<Vec<u8>>)>,
    },
    Tick,
    Write,
    Heal {
        links: Vec<usize>,
        era: u64,
    },
    Restart {
        node: usize,
    },
}

/// A node's durable copy of one document: an optional snapshot and changes appended.
#[derive(Default, Clone)]
pub(crate) struct Stored {
    pub(crate) snapshot: Option<Vec<u8>>,
    pub(crate) changes: Vec<Vec<u8>>,
}

/// One node: its replica while it runs, and its storage, which outlives crashes.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) replica: Option<Replica>,
    /// Incremented at every crash: persists of an earlier life never complete.
    pub(crate) life: u64,
    pub(crate) storage: BTreeMap<String, Stored>,
    /// Persists complete in order: the next one finishes no earlier than this.
    pub(crate) persist_free_at: u64,
    /// Hashes of every change in `storage` (storage survives crashes, so does this).
    pub(crate) durable: BTreeSet<ChangeHash>,
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
    /// Longest time one persist takes, in ms.
    pub(crate) persist_ms: u64,
}

/// The whole simulation of one seed.
pub(crate) struct Sim {
    pub(crate) rng: StdRng,
    pub(crate) now: u64,
    /// Tie-breaker: events at the same time run in the order they were scheduled.
    pub(crate) seq: u64,
    pub(crate) queue: BTreeMap<(u64, u64), Event>,
    /// Messages (other than digests) and persists not yet carried out.
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
    pub(crate) write_index: BTreeMap<ChangeHash, usize>,
    /// Writes waiting for their persist: (node, life, token) → indexes into `writes`.
    pub(crate) awaiting: BTreeMap<(usize, u64, u64), Vec<usize>>,
    pub(crate) config: CoreConfig,
    pub(crate) trace: bool,
    pub(crate) delivered: u64,
    pub(crate) acked_effects: u64,
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
            persist_ms: rng.random_range(5..=150),
        };
        let config = CoreConfig {
            anti_entropy_ms: 500,
            quiet_ms: 200,
            session_timeout_ms: 2_000,
            repair_hold_ms: rng.random_range(50..=400),
            outbox_limit: if rng.random_bool(0.2) { 2_000 } else { 1 << 20 },
            ack_memory: 10_000,
        };
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
            })
            .collect();
        let link_of = pairs
            .iter()
            .enumerate()
            .flat_map(|(l, &(a, b))| [((a, b), l), ((b, a), l)])
            .collect();
        let nodes = (0..n)
            .map(|i| {
                let mut storage = BTreeMap::new();
                storage.insert(
                    "d0".to_string(),
                    Stored {
                        snapshot: Some(initial_doc("d0")),
                        changes: vec![],
                    },
                );
                if i == 0 {
                    storage.insert(
                        "d1".to_string(),
                        Stored {
                            snapshot: Some(initial_doc("d1")),
                            changes: vec![],
                        },
                    );
                }
                Node {
                    name: format!("n{i}"),
                    replica: None,
                    life: 0,
                    storage,
                    persist_free_at: 0,
                    durable: BTreeSet::new(),
                }
            })
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
            trace,
            delivered: 0,
            acked_effects: 0,
        };
        for i in 0..n {
            sim.start(i);
        }
        sim.schedule(TICK_MS, Event::Tick);
        sim.schedule(1, Event::Write);
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
            Event::Deliver { digest: false, .. } | Event::PersistDone { .. }
        ) {
            self.in_flight += 1;
        }
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), event);
    }

    pub(crate) fn alive(&self, i: usize) -> bool {
        self.nodes[i].replica.is_some()
    }

    /// Builds a new replica from storage (a fresh actor every time) and brings its links up.
    pub(crate) fn start(&mut self, i: usize) {
        let seed: [u8; 16] = self.rng.random();
        let node = &mut self.nodes[i];
        let mut replica = Replica::new(
            node.name.clone(),
            seed,
            Box::new(Flood),
            self.config.clone(),
        );
        for (doc, stored) in &node.storage {
            replica
                .load_doc(doc, stored.snapshot.as_deref(), &stored.changes)
                .unwrap_or_else(|e| panic!("{} cannot load its storage: {e}", node.name));
        }
        if self.rng.random_bool(self.params.compact_on_restart) {
            for (doc, stored) in node.storage.iter_mut() {
                let (snapshot, orphans) = replica.snapshot(doc).expect("loaded just above");
                *stored = Stored {
                    snapshot: Some(snapshot),
                    changes: orphans,
                };
            }
        }
        node.replica = Some(replica);
        node.persist_free_at = self.now;
        self.log(|| format!("start n{i}"));
        self.update_links(i);
    }

    pub(crate) fn crash(&mut self, i: usize) {
        self.log(|| format!("crash n{i}"));
        self.nodes[i].replica = None;
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
        let want = self.links[l].cuts == 0 && self.alive(a) && self.alive(b);
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
                return;
            }
            for effect in effects {
                self.carry_out(i, effect);
            }
        }
        panic!("n{i} keeps producing effects");
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
                let loss = if self.faults { self.params.loss } else { 0.0 };
                if self.rng.random_bool(loss) {
                    self.log(|| format!("lose n{i}->n{j} {}", msg.kind()));
                    if self.rng.random_bool(0.3) {
                        if let Some(r) = self.nodes[i].replica.as_mut() {
                            r.send_failed(&to);
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
                            digest: matches!(msg, wire::Message::Digest(_)),
                        },
                    );
                }
            }
            Effect::Persist { token, docs } => {
                let done = self.nodes[i].persist_free_at.max(self.now)
                    + self.rng.random_range(1..=self.params.persist_ms);
                let node = &mut self.nodes[i];
                node.persist_free_at = done;
                let life = node.life;
                let delay = done - self.now;
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
                    .get(&hash)
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
            }
            Effect::Notify { .. } => {}
        }
    }

    pub(crate) fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver {
                link,
                epoch,
                from,
                to,
                frame,
                digest,
            } => {
                if !digest {
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
                for (doc, changes) in docs {
                    for bytes in &changes {
                        let change = automerge::Change::from_bytes(bytes.clone())
                            .expect("persisted changes decode");
                        self.nodes[node].durable.insert(change.hash());
                    }
                    self.nodes[node]
                        .storage
                        .entry(doc)
                        .or_default()
                        .changes
                        .extend(changes);
                }
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
                self.pump(node);
            }
            Event::Tick => {
                for i in 0..self.nodes.len() {
                    let now = self.now;
                    if let Some(r) = self.nodes[i].replica.as_mut() {
                        r.tick(now);
                        self.pump(i);
                    }
                }
                if self.faults {
                    self.random_faults();
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
                if !self.alive(node) {
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
            if !self.alive(i) {
                self.start(i);
            }
        }
        for l in 0..self.links.len() {
            self.update_link(l);
        }
    }

    pub(crate) fn converged(&self) -> bool {
        if self.in_flight > 0 {
            return false;
        }
        let first = self.nodes[0].replica.as_ref().map(|r| r.heads());
        self.nodes
            .iter()
            .all(|n| n.replica.as_ref().map(|r| r.heads()) == first)
    }
}
