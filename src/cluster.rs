//! The cluster view behind `GET /v1/cluster` and the page at `/`: what one node tells about
//! itself ([`NodeView`], sent over the peer links in `wire::Message::ClusterTell`), its
//! recent events ([`Event`], [`Events`]), and the whole picture one node assembles from the
//! views it gathered ([`assemble`]): every node up or down, every configured link and every
//! link made by ring healing, up or down, and the events of all nodes, newest first.
//!
//! Gathering (asking over the links, waiting, de-duplicating) is the driver's
//! (`node::driver::cluster`); this module is plain data and the assembly, tested alone.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{RingDirection, TopologyKind};
use crate::topology::Topology;

/// Events a node remembers for the page.
pub const EVENTS_KEPT: usize = 64;

/// Events shown in the assembled view.
const EVENTS_SHOWN: usize = 100;

/// One node's account of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// When the node started, ms since the Unix epoch.
    pub started_ms: u64,
    /// Documents stored.
    pub docs: u64,
    /// Changes written at this node (HTTP, embedded, automerge-repo clients) since it started.
    pub writes_total: u64,
    /// Of those, per second over the last interval.
    pub writes_per_s: f64,
    /// Writes waiting for durability or acknowledgements.
    pub pending_writes: u64,
    /// automerge-repo clients connected.
    pub sync_clients: u64,
    /// Partitions it replicates (all of them when every node has everything).
    pub partitions: u64,
    /// Partitions moving in (replicated here, documents still being fetched).
    pub partitions_in: u64,
    /// Partitions moving out (stored here, replicated elsewhere).
    pub partitions_out: u64,
    /// Documents it keeps for other nodes: hinted writes and partitions moved away.
    pub hints: u64,
    /// Every other node of its topology.
    pub peers: Vec<PeerView>,
    /// Its recent events, oldest first.
    pub events: Vec<Event>,
}

// The rate is never NaN (it is a count over a positive interval), so equality is total.
impl Eq for NodeView {}

/// A node's link to one other node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// The other node.
    pub id: String,
    /// A connection is up.
    pub connected: bool,
    /// The topology (after healing) wants the link.
    pub linked: bool,
    /// Linked although not a neighbour in the configured topology: made by ring healing.
    pub healed: bool,
    /// Changes pushed to it and not yet confirmed.
    pub lag_changes: u64,
    /// Their bytes.
    pub lag_bytes: u64,
    /// Age of the oldest, ms.
    pub lag_oldest_ms: u64,
    /// Documents the last anti-entropy round with it found different (`None`: no round yet).
    pub divergent: Option<u64>,
}

/// Something that happened at a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The node it happened at.
    pub node: String,
    /// `started`, `peer-up`, `peer-down`, `healing`, `healed`, `repair`.
    pub kind: String,
    /// What happened, in words.
    pub text: String,
}

/// A node's recent events, at most [`EVENTS_KEPT`].
#[derive(Debug, Default)]
pub struct Events {
    node: String,
    events: VecDeque<Event>,
}

impl Events {
    /// No events yet, for node `node`.
    pub fn new(node: &str) -> Self {
        Events {
            node: node.to_string(),
            events: VecDeque::new(),
        }
    }

    /// Records an event at `at_ms` (ms since the Unix epoch).
    pub fn push(&mut self, at_ms: u64, kind: &str, text: String) {
        if self.events.len() >= EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            at_ms,
            node: self.node.clone(),
            kind: kind.to_string(),
            text,
        });
    }

    /// The events, oldest first.
    pub fn list(&self) -> Vec<Event> {
        self.events.iter().cloned().collect()
    }
}

/// The whole picture as `node` sees it at `now_ms`: `views` holds the nodes that answered.
pub fn assemble(
    node: &str,
    cluster: &str,
    topology: &Topology,
    views: &BTreeMap<String, NodeView>,
    now_ms: u64,
) -> Value {
    let order = topology.nodes();
    let nodes: Vec<Value> = order
        .iter()
        .map(
            |id| match views.get(id).map(|v| with_divergence(v, views)) {
                Some(v) => json!({
                    "id": id, "state": "up", "age_ms": 0,
                    "started_ms": v.started_ms, "docs": v.docs, "writes_total": v.writes_total,
                    "writes_per_s": v.writes_per_s, "pending_writes": v.pending_writes,
                    "sync_clients": v.sync_clients, "peers": v.peers,
                }),
                None => json!({
                    "id": id, "state": "down", "age_ms": null, "started_ms": null, "docs": null,
                    "writes_total": null, "writes_per_s": null, "pending_writes": null,
                    "sync_clients": null, "peers": [],
                }),
            },
        )
        .collect();
    let mut events: Vec<&Event> = views.values().flat_map(|v| &v.events).collect();
    events.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then_with(|| a.node.cmp(&b.node)));
    events.truncate(EVENTS_SHOWN);
    json!({
        "node": node,
        "cluster": cluster,
        "at_ms": now_ms,
        "topology": {"kind": kind_name(topology.kind()), "nodes": order},
        "nodes": nodes,
        "links": links(topology, views),
        "events": events,
    })
}

/// `v` with the divergence of each link filled in from the other end where `v` has none:
/// only one node of a pair compares in an anti-entropy round, and the result holds for both.
fn with_divergence(v: &NodeView, views: &BTreeMap<String, NodeView>) -> NodeView {
    let mut v = v.clone();
    for p in v.peers.iter_mut().filter(|p| p.divergent.is_none()) {
        p.divergent = views
            .get(&p.id)
            .and_then(|other| other.peers.iter().find(|q| q.id == v.id))
            .and_then(|q| q.divergent);
    }
    v
}

fn kind_name(kind: TopologyKind) -> &'static str {
    match kind {
        TopologyKind::Mesh => "mesh",
        TopologyKind::Ring(RingDirection::Forward) => "ring-forward",
        TopologyKind::Ring(_) => "ring",
        TopologyKind::Edges => "edges",
    }
}

/// Every configured link, then every healed one a node reports, each once: `id` is
/// `<a>-<b>` with `a` before `b` in topology order; in a one-way ring `from` names the node
/// that sends over it. A link is up when a node that answered is connected over it.
fn links(topology: &Topology, views: &BTreeMap<String, NodeView>) -> Vec<Value> {
    let order = topology.nodes();
    let n = order.len();
    let rank = |id: &str| order.iter().position(|o| o == id).unwrap_or(usize::MAX);
    let one_way = topology.kind() == TopologyKind::Ring(RingDirection::Forward);
    // (rank a, rank b) with a before b → healed.
    let mut found: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    for a in order {
        for b in topology.neighbours(a) {
            let (x, y) = (rank(a), rank(&b));
            found.entry((x.min(y), x.max(y))).or_insert(false);
        }
    }
    for v in views.values() {
        for p in v.peers.iter().filter(|p| p.healed && p.linked) {
            let (x, y) = (rank(&v.id), rank(&p.id));
            if x < n && y < n {
                found.entry((x.min(y), x.max(y))).or_insert(true);
            }
        }
    }
    let connected = |a: &str, b: &str| {
        let says = |from: &str, to: &str| {
            views
                .get(from)
                .is_some_and(|v| v.peers.iter().any(|p| p.id == to && p.connected))
        };
        says(a, b) || says(b, a)
    };
    found
        .into_iter()
        .map(|((x, y), healed)| {
            let (a, b) = (&order[x], &order[y]);
            let state = if connected(a, b) { "up" } else { "down" };
            // Forward round the ring from x to y is shorter: x sends.
            let from = one_way.then(|| if y - x <= n - (y - x) { a } else { b });
            json!({
                "id": format!("{a}-{b}"), "a": a, "b": b, "state": state,
                "healed": healed, "one_way": one_way, "from": from,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
