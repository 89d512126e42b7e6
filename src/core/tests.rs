//! Unit tests of the replica, driven by hand through an effect-collecting harness.
//!
//! Each test wires two or three [`Replica`]s together: effects are collected after
//! `flush()`, messages go through the wire codec and are delivered in order by the test,
//! persists complete when the test says so. This file holds the harness; the tests are in
//! `tests/flow.rs` (push, batching, forwarding, acks), `tests/repair.rs` (anti-entropy and
//! sync), `tests/input.rs` (bad input, merge, load and snapshots), `tests/persist.rs`
//! (persist batches that storage failed), `tests/placement.rs` (documents on some of the
//! nodes: pushes, reconciliation and handoff), `tests/placement.rs` (documents on some of the
//! nodes: pushes, reconciliation and handoff), `tests/cache.rs` (documents read from a store
//! as effects, and the cache over it), `tests/lend.rs` (documents lent for heavy work) and `tests/fingerprint.rs` (the document-set
//! fingerprint). Owns nothing else.

mod cache;
mod clients;
mod fingerprint;
mod flow;
mod input;
mod lend;
mod persist;
mod placement;
mod repair;

use std::collections::{BTreeMap, VecDeque};

use automerge::transaction::{Transactable, Transaction};
use automerge::{AutoCommit, Automerge, ChangeHash, ObjType, ReadDoc, ROOT};
use serde_bytes::ByteBuf;

use super::{ChangeError, ClientMsg, CoreConfig, CoreError, Effect, Flood, Replica, Unsent};
use crate::wire::{self, DocChanges, Message};

type TxResult<R> = Result<R, automerge::AutomergeError>;
/// The documents of one persist batch, as in [`Effect::Persist`].
type Batch = Vec<(String, Vec<Vec<u8>>)>;

fn seed(id: &str, run: u8) -> [u8; 16] {
    let mut s = [run; 16];
    for (i, b) in id.bytes().enumerate().take(15) {
        s[i + 1] = b;
    }
    s
}

fn replica(id: &str) -> Replica {
    replica_with(id, CoreConfig::default())
}

fn replica_with(id: &str, config: CoreConfig) -> Replica {
    Replica::new(id, seed(id, 1), Box::new(Flood), config)
}

/// Passes a message through the codec, as the transport would.
fn via_wire(msg: &Message) -> Message {
    let bytes = wire::encode(msg).unwrap();
    let (back, used) = wire::decode_frame(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    back
}

fn effects(r: &mut Replica) -> Vec<Effect> {
    r.flush();
    r.drain_effects()
}

/// Like [`effects`], doing the heavy work it lends out ([`Effect::Apply`]) at once.
fn effects_with_jobs(r: &mut Replica, now: u64) -> Vec<Effect> {
    let mut rest = Vec::new();
    for _ in 0..100 {
        let list = effects(r);
        if list.is_empty() {
            break;
        }
        for e in list {
            match e {
                Effect::Apply { doc } => {
                    let mut job = r.take_job(&doc).expect("the job announced");
                    job.run();
                    assert!(r.job_done(now, job).is_none());
                }
                other => rest.push(other),
            }
        }
    }
    rest
}

fn put(r: &mut Replica, now: u64, doc: &str, key: &str, value: i64, want_ack: bool) -> ChangeHash {
    r.local_change(
        now,
        doc,
        want_ack,
        |tx: &mut Transaction<'_>| -> TxResult<()> {
            tx.put(ROOT, key, value)?;
            Ok(())
        },
    )
    .unwrap()
    .hash
    .unwrap()
}

fn sends(effects: &[Effect]) -> Vec<(String, Message)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { to, msg } => Some((to.clone(), msg.clone())),
            _ => None,
        })
        .collect()
}

fn persists(effects: &[Effect]) -> Vec<(u64, Batch)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist { token, docs } => Some((
                *token,
                docs.iter()
                    .map(|d| (d.doc.clone(), d.changes.clone()))
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

fn pushes_to(effects: &[Effect], to: &str) -> Vec<DocChanges> {
    sends(effects)
        .into_iter()
        .filter(|(t, _)| t == to)
        .flat_map(|(_, m)| match m {
            Message::Push { groups, .. } => groups,
            _ => Vec::new(),
        })
        .collect()
}

fn change_bytes(doc: &Automerge, hash: ChangeHash) -> Vec<u8> {
    doc.get_change_by_hash(&hash).unwrap().raw_bytes().to_vec()
}

/// A few replicas, a FIFO network through the codec, and durable storage per node.
struct Cluster {
    nodes: BTreeMap<String, Replica>,
    /// (from, to, message) in flight.
    net: VecDeque<(String, String, Message)>,
    /// Persists not yet completed: (node, token).
    pending_persists: Vec<(String, u64)>,
    /// Durable changes per node and document.
    stored: BTreeMap<String, BTreeMap<String, Vec<Vec<u8>>>>,
    /// Acks seen by writers: (writer, doc, hash, by).
    acked: Vec<(String, String, ChangeHash, String)>,
    /// Complete persists as soon as they are requested.
    auto_persist: bool,
    now: u64,
    /// Messages for automerge-repo clients: (node, client, message).
    to_clients: Vec<(String, u64, ClientMsg)>,
    /// Every message sent so far, (from, to, message), for tests that count messages.
    sent: Vec<(String, String, Message)>,
}

/// The six nodes of [`Cluster::ring`].
const RING: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

impl Cluster {
    /// Six nodes linked in a two-way ring (a–b–c–d–e–f–a), each document on two of them,
    /// and a document whose replicas are c and d (two hops from a and from f).
    fn ring() -> (Cluster, crate::topology::Topology, String) {
        use crate::config::{RingDirection, TopologyKind};
        let ids = RING.iter().map(|s| s.to_string()).collect();
        let t = crate::topology::Topology::new(
            TopologyKind::Ring(RingDirection::Both),
            ids,
            Vec::new(),
        )
        .with_replicas(Some(2))
        .unwrap();
        let doc = (0..)
            .map(|i| format!("doc-{i}"))
            .find(|d| {
                let mut r = t.replicas_of(d);
                r.sort();
                r == ["c", "d"]
            })
            .unwrap();
        let mut c = Cluster::new(&RING, CoreConfig::default());
        for id in RING {
            c.node(id).set_router(Box::new(t.clone()));
        }
        for (i, id) in RING.iter().enumerate() {
            c.link(id, RING[(i + 1) % RING.len()]);
        }
        (c, t, doc)
    }

    fn new(ids: &[&str], config: CoreConfig) -> Self {
        Cluster {
            nodes: ids
                .iter()
                .map(|id| (id.to_string(), replica_with(id, config.clone())))
                .collect(),
            net: VecDeque::new(),
            pending_persists: Vec::new(),
            stored: BTreeMap::new(),
            acked: Vec::new(),
            auto_persist: true,
            now: 1_000,
            to_clients: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn node(&mut self, id: &str) -> &mut Replica {
        self.nodes.get_mut(id).unwrap()
    }

    fn link(&mut self, a: &str, b: &str) {
        let now = self.now;
        self.node(a).peer_up(now, b);
        self.node(b).peer_up(now, a);
        self.pump(a);
        self.pump(b);
    }

    fn unlink(&mut self, a: &str, b: &str) {
        let now = self.now;
        self.node(a).peer_down(now, b);
        self.node(b).peer_down(now, a);
        self.net
            .retain(|(f, t, _)| !((f == a && t == b) || (f == b && t == a)));
    }

    /// Flushes `id` and carries out its effects.
    fn pump(&mut self, id: &str) {
        let list = effects(self.node(id));
        self.carry_out(id, list);
    }

    fn carry_out(&mut self, id: &str, list: Vec<Effect>) {
        for effect in list {
            match effect {
                Effect::Send { to, msg } => {
                    self.sent.push((id.to_string(), to.clone(), msg.clone()));
                    self.net.push_back((id.to_string(), to, via_wire(&msg)))
                }
                Effect::Persist { token, docs } => {
                    let store = self.stored.entry(id.to_string()).or_default();
                    for d in docs {
                        store.entry(d.doc).or_default().extend(d.changes);
                    }
                    self.pending_persists.push((id.to_string(), token));
                }
                Effect::Acked { doc, hash, by } => self.acked.push((id.to_string(), doc, hash, by)),
                Effect::Drop { doc } => {
                    if let Some(store) = self.stored.get_mut(id) {
                        store.remove(&doc);
                    }
                }
                Effect::Notify { .. } => {}
                Effect::Read { doc, .. } => panic!("{id} asks to read {doc}, but it has no store"),
                Effect::Apply { doc } => {
                    // Heavy work, done at once.
                    let now = self.now;
                    let node = self.node(id);
                    let mut job = node.take_job(&doc).expect("the job announced");
                    job.run();
                    assert!(node.job_done(now, job).is_none(), "no client here");
                    self.pump(id);
                }
                Effect::Client { client, msg } => {
                    self.to_clients.push((id.to_string(), client, msg))
                }
            }
        }
        if self.auto_persist {
            self.complete_persists();
        }
    }

    fn complete_persists(&mut self) {
        while let Some((id, token)) = self.pending_persists.pop() {
            self.node(&id).persisted(token);
            let list = effects(self.node(&id));
            for effect in &list {
                assert!(
                    !matches!(effect, Effect::Persist { .. }),
                    "persisted() persists"
                );
            }
            self.carry_out(&id, list);
        }
    }

    /// Delivers messages until the network is empty.
    fn run(&mut self) {
        for _ in 0..100_000 {
            let Some((from, to, msg)) = self.net.pop_front() else {
                return;
            };
            if !self.nodes.contains_key(&to) {
                continue; // a peer played by the test itself
            }
            let now = self.now;
            self.node(&to).handle_message(now, &from, msg);
            self.pump(&to);
        }
        panic!("network did not become quiet");
    }

    /// Advances time, ticks every node and delivers until quiet.
    fn tick_all(&mut self, ms: u64) {
        self.now += ms;
        let ids: Vec<String> = self.nodes.keys().cloned().collect();
        for id in ids {
            let now = self.now;
            self.node(&id).handle_timeout(now);
            self.pump(&id);
        }
        self.run();
    }

    /// Runs `ms` of time: wakes each node at the times it asks for (`poll_timeout`), as a
    /// driver does, delivering until quiet after each.
    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        for _ in 0..10_000 {
            let due = |n: &Replica| n.poll_timeout().filter(|&t| t <= end);
            let Some(next) = self.nodes.values().filter_map(due).min() else {
                break;
            };
            self.now = self.now.max(next);
            let ids: Vec<String> = self.nodes.keys().cloned().collect();
            for id in ids {
                let now = self.now;
                if self.nodes[&id].poll_timeout().is_some_and(|t| t <= now) {
                    self.node(&id).handle_timeout(now);
                    self.pump(&id);
                }
            }
            self.run();
        }
        self.now = end;
    }

    fn put(&mut self, id: &str, doc: &str, key: &str, value: i64, want_ack: bool) -> ChangeHash {
        let now = self.now;
        put(self.node(id), now, doc, key, value, want_ack)
    }

    fn heads(&self, id: &str) -> Vec<(String, Vec<ChangeHash>)> {
        self.nodes[id].heads()
    }

    /// A fresh replica of `id` loaded from its storage only.
    fn reload(&self, id: &str) -> Replica {
        let mut r = Replica::new(id, seed(id, 2), Box::new(Flood), CoreConfig::default());
        for (doc, changes) in self.stored.get(id).cloned().unwrap_or_default() {
            r.load_doc(&doc, None, &changes).unwrap();
        }
        r
    }
}
