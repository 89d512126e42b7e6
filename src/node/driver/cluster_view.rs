//! The driver's part of the cluster view (`GET /v1/cluster`, see [`crate::cluster`]): this
//! node's events and write rate, its [`NodeView`], and the questions that gather every
//! node's view over the peer links.
//!
//! A question (`ClusterAsk`) floods: each node passes it to its other connected peers once
//! and answers with a `ClusterTell`, sent straight to the asker when connected to it, else
//! flooded the same way. The asker answers its caller when every node of the topology has
//! told, or after a wait with those that did; the others are shown down. The wait is
//! [`ASK_WAIT_MS`], or on slow links the time a question and its answers take to cross
//! the topology ([`Driver::ask_wait_ms`]): a live node is never shown down for being far.
//! Nothing is sent while nobody asks.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::Driver;
use crate::cluster::{Events, NodeView, PeerView};
use crate::wire::Message;

/// The longest an asker waits for the other nodes' answers on fast links, ms.
const ASK_WAIT_MS: u64 = 400;

/// What an asker waits on slow links beyond the round trips, ms (the nodes' work).
const ASK_MARGIN_MS: u64 = 100;

/// How often the write rate is measured, ms.
const RATE_EVERY_MS: u64 = 1_000;

/// Flooded questions and answers remembered (so each passes a node once).
const SEEN: usize = 4_096;

/// Wall-clock ms since the Unix epoch.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A question of this node's, waiting for answers.
struct Ask {
    deadline: u64,
    views: BTreeMap<String, NodeView>,
    reply: oneshot::Sender<serde_json::Value>,
}

/// The cluster view's state in the driver.
pub(super) struct Gather {
    events: Events,
    started_ms: u64,
    /// Last rate measurement: (driver ms, writes so far), and the rate.
    rate_at: (u64, u64),
    /// [`crate::core::Replica::activity`] when the rate was last taken.
    activity_at: u64,
    rate: f64,
    /// Repair counters at the last measurement: (documents asked for, diverged histories).
    repairs_at: (u64, u64),
    asks: BTreeMap<u64, Ask>,
    next_ask: u64,
    seen: HashSet<(String, u64, String)>,
    seen_order: VecDeque<(String, u64, String)>,
}

impl Gather {
    pub(super) fn new(me: &str) -> Self {
        let started_ms = wall_ms();
        let mut events = Events::new(me);
        events.push(started_ms, "started", "node started".into());
        Gather {
            events,
            started_ms,
            rate_at: (0, 0),
            activity_at: 0,
            rate: 0.0,
            repairs_at: (0, 0),
            asks: BTreeMap::new(),
            next_ask: 1,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
        }
    }

    /// Records an event now.
    pub(super) fn event(&mut self, kind: &str, text: String) {
        self.events.push(wall_ms(), kind, text);
    }

    /// True the first time a flooded message is seen.
    fn first_sight(&mut self, key: (String, u64, String)) -> bool {
        if self.seen.contains(&key) {
            return false;
        }
        if self.seen_order.len() >= SEEN {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key.clone());
        self.seen_order.push_back(key);
        true
    }
}

impl Driver {
    /// A caller wants the whole picture: ask every node, answer at once if alone.
    pub(super) fn ask_cluster(&mut self, now: u64, reply: oneshot::Sender<serde_json::Value>) {
        let id = self.gather.next_ask;
        self.gather.next_ask += 1;
        let mut views = BTreeMap::new();
        views.insert(self.id.clone(), self.node_view());
        self.gather.asks.insert(
            id,
            Ask {
                deadline: now + self.ask_wait_ms(),
                views,
                reply,
            },
        );
        let ask = Message::ClusterAsk {
            asker: self.id.clone(),
            id,
        };
        self.flood(None, ask);
        self.finish_asks(now);
    }

    /// How long a question waits for answers, ms: [`ASK_WAIT_MS`], or, if longer, the
    /// hops of the topology out to the farthest node and back at the longest round trip
    /// of this node's links (each hop half a round trip), one round trip more for a lost
    /// packet to be sent again, and [`ASK_MARGIN_MS`].
    pub(super) fn ask_wait_ms(&self) -> u64 {
        let rtt = self.max_rtt_ms();
        let topology = self.links.topology();
        let hops = |from: &str, to: &str| u64::from(topology.distance(from, to).unwrap_or(0));
        let (out, back) = topology
            .nodes()
            .iter()
            .map(|n| (hops(&self.id, n), hops(n, &self.id)))
            .fold((0, 0), |(o, b), (x, y)| (o.max(x), b.max(y)));
        let crossing = (out + back).saturating_mul(rtt) / 2;
        ASK_WAIT_MS.max(crossing + rtt + ASK_MARGIN_MS)
    }

    /// A flooded question or answer from `from`.
    pub(super) fn cluster_message(&mut self, now: u64, from: &str, msg: Message) {
        match msg {
            Message::ClusterAsk { asker, id } => {
                if asker == self.id || !self.gather.first_sight((asker.clone(), id, String::new()))
                {
                    return;
                }
                self.flood(
                    Some(from),
                    Message::ClusterAsk {
                        asker: asker.clone(),
                        id,
                    },
                );
                let tell = Message::ClusterTell {
                    asker: asker.clone(),
                    id,
                    view: Box::new(self.node_view()),
                };
                self.send_toward(&asker, None, tell);
            }
            Message::ClusterTell { asker, id, view } => {
                if asker == self.id {
                    if let Some(ask) = self.gather.asks.get_mut(&id) {
                        ask.views.insert(view.id.clone(), *view);
                    }
                    self.finish_asks(now);
                } else if self
                    .gather
                    .first_sight((asker.clone(), id, view.id.clone()))
                {
                    self.send_toward(
                        &asker.clone(),
                        Some(from),
                        Message::ClusterTell { asker, id, view },
                    );
                }
            }
            _ => {}
        }
    }

    /// At each tick: the write rate (every second), repair events, and questions whose
    /// wait is over.
    /// When the cluster view next has work: a question's deadline, or the next write rate
    /// while writes or repairs move (an idle node's rate stays 0 without waking it).
    pub(super) fn cluster_due(&self) -> Option<u64> {
        let asks = self.gather.asks.values().map(|a| a.deadline).min();
        let stats = self.replica.activity();
        let moving = stats != self.gather.activity_at || self.gather.rate != 0.0;
        let rate = moving.then_some(self.gather.rate_at.0 + RATE_EVERY_MS);
        asks.into_iter().chain(rate).min()
    }

    pub(super) fn cluster_tick(&mut self, now: u64) {
        if now.saturating_sub(self.gather.rate_at.0) >= RATE_EVERY_MS {
            let stats = self.replica.stats();
            let writes = stats.local_changes + stats.client_changes;
            let (at, before) = self.gather.rate_at;
            let secs = now.saturating_sub(at) as f64 / 1000.0;
            self.gather.rate = writes.saturating_sub(before) as f64 / secs;
            self.gather.rate_at = (now, writes);
            let repairs = (stats.wants_sent, stats.repairs);
            let (asked, diverged) = (
                repairs.0.saturating_sub(self.gather.repairs_at.0),
                repairs.1.saturating_sub(self.gather.repairs_at.1),
            );
            if asked > 0 || diverged > 0 {
                let plural = |n: u64, one: &str, many: &str| {
                    format!("{n} {}", if n == 1 { one } else { many })
                };
                self.gather.event(
                    "repair",
                    format!(
                        "anti-entropy: asked peers for {}, repaired {}",
                        plural(asked, "document", "documents"),
                        plural(diverged, "diverged history", "diverged histories"),
                    ),
                );
            }
            self.gather.repairs_at = repairs;
            self.gather.activity_at = self.replica.activity();
        }
        self.finish_asks(now);
    }

    /// Answers the questions that have every node's view or waited long enough.
    fn finish_asks(&mut self, now: u64) {
        let everyone = self.links.topology().nodes().len();
        let done: Vec<u64> = self
            .gather
            .asks
            .iter()
            .filter(|(_, a)| a.views.len() >= everyone || now >= a.deadline)
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            if let Some(ask) = self.gather.asks.remove(&id) {
                let picture = crate::cluster::assemble(
                    &self.id,
                    &self.cluster,
                    self.links.topology(),
                    &ask.views,
                    wall_ms(),
                );
                let _ = ask.reply.send(picture);
            }
        }
    }

    /// This node's account of itself.
    fn node_view(&self) -> NodeView {
        let status = self.status();
        let stats = &status.core;
        NodeView {
            id: self.id.clone(),
            started_ms: self.gather.started_ms,
            docs: status.docs as u64,
            writes_total: stats.local_changes + stats.client_changes,
            writes_per_s: self.gather.rate,
            pending_writes: status.pending_writes as u64,
            sync_clients: status.sync_clients as u64,
            partitions: status.partitions as u64,
            partitions_in: status.partitions_in as u64,
            partitions_out: status.partitions_out as u64,
            hints: status.hints as u64,
            peers: status
                .peers
                .iter()
                .map(|p| PeerView {
                    id: p.id.clone(),
                    connected: p.connected,
                    linked: p.linked,
                    healed: p.healed,
                    lag_changes: p.unacked_changes,
                    lag_bytes: p.unacked_bytes,
                    lag_oldest_ms: p.unacked_oldest_ms,
                    divergent: p.divergent,
                })
                .collect(),
            events: self.gather.events.list(),
        }
    }

    /// Sends `msg` to every connected peer but `except`.
    fn flood(&mut self, except: Option<&str>, msg: Message) {
        for peer in self.transport.connected() {
            if Some(peer.as_str()) != except {
                let _ = self.transport.send(&peer, msg.clone());
            }
        }
    }

    /// Sends `msg` to `to` if connected to it, else floods it (but not back to `from`).
    fn send_toward(&mut self, to: &str, from: Option<&str>, msg: Message) {
        if self.transport.connected().iter().any(|p| p == to) {
            let _ = self.transport.send(to, msg);
        } else {
            self.flood(from, msg);
        }
    }
}
