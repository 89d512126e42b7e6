//! The live topology of a cluster, held by every node and gossiped between them: a
//! state-based CRDT whose [`Membership::merge`] is a join (commutative, associative,
//! idempotent), so replicas that have seen the same proposals hold the same state and the
//! same [`Membership::digest`], whatever the order, loss or duplication of the gossip.
//!
//! The topology file is the bootstrap ([`Membership::from_config`]): its nodes and links
//! carry the stamp of clock 0. A change is a proposal at one node ([`Membership::propose_add`],
//! [`Membership::propose_remove`], [`Membership::propose_link`], ...) stamped with a Lamport
//! clock and the proposer's id; it is checked against the proposer's view and refused with a
//! [`MembershipError`] that leaves the state unchanged. Merging then settles concurrent
//! proposals: for an id present on both sides the entry with the greater `added` stamp gives
//! the addresses, and a removal is permanent (an id once removed never comes back). Ids are
//! TLS names, so two ids that differ only by case are one entry.
//!
//! The topology kind and the replicas of each document come from the file and never change
//! live: a state with another kind or other replicas is not merged, and a removal that would
//! leave fewer live nodes than the replicas is refused.
//!
//! The checks are local: two concurrent proposals that are each valid may together give a
//! state neither node would have accepted (two new nodes with the same address, two
//! removals that together cut an edges topology apart). The merged state is still the same
//! everywhere, and [`Membership::to_json`] shows it to the operator.
//!
//! This module owns the membership state and its rules. It does no IO and reads no clock:
//! the node driver stores it, sends it and decides when to merge. A state received from a
//! peer is untrusted: deserializing drops entries with invalid ids and never panics.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{is_valid_node_id, Config, RingDirection, TopologyKind};
use crate::fnv::Fnv1a;
use crate::topology::Topology;

/// A Lamport clock and the node that proposed the change; stamps are ordered by
/// `(clock, by)`, so two proposals at different nodes never tie.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Lamport clock of the proposal.
    pub clock: u64,
    /// The proposing node (empty for the topology file).
    pub by: String,
}

impl Stamp {
    /// The stamp of the nodes and links of the topology file: clock 0, by nobody.
    pub fn file() -> Stamp {
        Stamp {
            clock: 0,
            by: String::new(),
        }
    }
}

/// One node of the cluster, live or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id, `[A-Za-z0-9_-]{1,64}`.
    pub id: String,
    /// QUIC (UDP) address peers dial.
    pub peer: SocketAddr,
    /// HTTP API (TCP) address.
    pub api: SocketAddr,
    /// When it was added (clock 0 for a node of the topology file).
    pub added: Stamp,
    /// When it was removed, if it was; a removal is permanent.
    pub removed: Option<Stamp>,
    /// Index in the topology file, which fixes the ring order of the file's nodes.
    pos: Option<u32>,
}

impl Member {
    /// Whether the node is still part of the topology.
    pub fn is_live(&self) -> bool {
        self.removed.is_none()
    }

    /// Ring order: the file's nodes in file order, then added ones by (stamp, id).
    fn order_key(&self) -> (bool, Option<u32>, &Stamp, &str) {
        (self.pos.is_none(), self.pos, &self.added, &self.id)
    }

    /// Which of two entries for one id gives the addresses: the greater stamp, and a total
    /// order on the rest so that even equal stamps settle the same way everywhere.
    fn rank(&self) -> (&Stamp, &str, SocketAddr, SocketAddr, Option<u32>) {
        (&self.added, &self.id, self.peer, self.api, self.pos)
    }
}

/// The stamps of a link of an edges topology. Unlike a node, a link can come back: it is
/// live when it was added after its last removal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkEntry {
    added: Stamp,
    removed: Option<Stamp>,
}

impl LinkEntry {
    fn is_live(&self) -> bool {
        self.removed.as_ref().is_none_or(|r| self.added > *r)
    }

    fn join(&mut self, other: &LinkEntry) -> bool {
        let before = self.clone();
        self.added = self.added.clone().max(other.added.clone());
        self.removed = self.removed.clone().max(other.removed.clone());
        *self != before
    }
}

/// The replicated live topology of one cluster. Serializes (JSON for storage, bincode on
/// the wire) as a list of members and a list of links; deserializing drops invalid entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Repr", try_from = "Repr")]
pub struct Membership {
    cluster: String,
    kind: TopologyKind,
    /// Each document on this many live nodes (from the file, like the kind; never 0);
    /// `None`: every node has every document.
    replicas: Option<usize>,
    /// By id in ASCII lower case (ids differing only by case are one TLS name).
    members: BTreeMap<String, Member>,
    /// By the lower-case ids of both ends, the smaller first.
    links: BTreeMap<(String, String), LinkEntry>,
    /// The greatest stamp clock seen.
    clock: u64,
}

/// Why a proposal was refused. Every refusal leaves the state unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The proposing node is not a live member; nothing changed.
    #[error("node {0:?} is not a live member of the topology, so it cannot propose changes")]
    NotMember(String),
    /// The id is not `[A-Za-z0-9_-]{1,64}`; nothing changed.
    #[error("invalid node id {0:?}; expected 1 to 64 of A-Z a-z 0-9 _ -")]
    InvalidId(String),
    /// A live node already has this id (ignoring case); nothing changed.
    #[error(
        "node id {id:?} is already taken by node {existing:?} (ids must differ ignoring case)"
    )]
    DuplicateId {
        /// The proposed id.
        id: String,
        /// The member holding it.
        existing: String,
    },
    /// The id (ignoring case) belonged to a removed node; nothing changed.
    #[error(
        "node id {id:?} was removed from the cluster (as {existing:?}) and can never come \
         back; choose a new id"
    )]
    RemovedId {
        /// The proposed id.
        id: String,
        /// The removed member.
        existing: String,
    },
    /// An address of the new node is already used by a live node; nothing changed.
    #[error("the {kind} address {addr} of node {id:?} is already the {other_kind} address of node {other:?}")]
    DuplicateAddress {
        /// The proposed node.
        id: String,
        /// `"peer"` or `"api"`.
        kind: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The live node using it.
        other: String,
        /// `"peer"` or `"api"`: which address of `other`.
        other_kind: &'static str,
    },
    /// A node added to an edges topology needs a link; nothing changed.
    #[error("node {0:?} needs at least one link in an edges topology, or it would have no path to the others")]
    NeedsLinks(String),
    /// Links were given for a topology (the kind) that is not edges; nothing changed.
    #[error("links only exist in an edges topology, not in a {0} topology")]
    LinksNotAllowed(TopologyKind),
    /// No member has this id (or no live one, for a link end); nothing changed.
    #[error("no node {0:?} in the topology")]
    UnknownNode(String),
    /// The node was removed already; nothing changed.
    #[error("node {0:?} was already removed")]
    AlreadyRemoved(String),
    /// The node is the last live one; nothing changed.
    #[error("node {0:?} is the last live node; a cluster keeps at least one")]
    LastNode(String),
    /// Removing the node would leave fewer live nodes than each document's replicas;
    /// nothing changed.
    #[error(
        "removing node {id:?} would leave {live} live nodes, fewer than replicas = {replicas}"
    )]
    BelowReplicas {
        /// The node to remove.
        id: String,
        /// The live nodes there would be.
        live: usize,
        /// The replicas of each document.
        replicas: usize,
    },
    /// Removing the node would cut the remaining nodes of an edges topology apart; nothing
    /// changed.
    #[error("removing node {0:?} would cut the other nodes apart; link them around it first")]
    WouldDisconnect(String),
    /// A link from a node to itself; nothing changed.
    #[error("node {0:?} cannot link to itself")]
    SelfLink(String),
    /// The two nodes are linked already; nothing changed.
    #[error("nodes {0:?} and {1:?} are already linked")]
    LinkExists(String, String),
    /// The two nodes have no live link; nothing changed.
    #[error("nodes {0:?} and {1:?} are not linked")]
    NoLink(String, String),
    /// Removing the link between the two nodes would cut the nodes apart; nothing changed.
    #[error("removing the link between {0:?} and {1:?} would cut the nodes apart")]
    LinkWouldDisconnect(String, String),
    /// The Lamport clock reached its maximum (only a hostile peer can cause this); nothing
    /// changed.
    #[error("the topology clock is exhausted")]
    ClockExhausted,
}

fn key(id: &str) -> String {
    id.to_ascii_lowercase()
}

fn link_key(a: &str, b: &str) -> Option<(String, String)> {
    let (a, b) = (key(a), key(b));
    match a.cmp(&b) {
        std::cmp::Ordering::Less => Some((a, b)),
        std::cmp::Ordering::Greater => Some((b, a)),
        std::cmp::Ordering::Equal => None,
    }
}

/// The address as serde keeps it: IP and port (no IPv6 flow info or scope id), so a state
/// is the same after any round trip.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip(), addr.port())
}

impl Membership {
    fn empty(cluster: String, kind: TopologyKind, replicas: Option<usize>) -> Membership {
        Membership {
            cluster,
            kind,
            replicas,
            members: BTreeMap::new(),
            links: BTreeMap::new(),
            clock: 0,
        }
    }

    /// The bootstrap state of a topology file: its nodes (in file order) and links, all
    /// with the stamp of clock 0, and its replicas.
    pub fn from_config(config: &Config) -> Membership {
        let replicas = config.replicas.filter(|&r| r > 0);
        let mut state = Membership::empty(config.cluster.clone(), config.topology, replicas);
        for (i, node) in config.nodes.iter().enumerate() {
            state.join_member(&Member {
                id: node.id.clone(),
                peer: node.peer,
                api: node.api,
                added: Stamp::file(),
                removed: None,
                pos: Some(u32::try_from(i).unwrap_or(u32::MAX)),
            });
        }
        if config.topology == TopologyKind::Edges {
            let file = LinkEntry {
                added: Stamp::file(),
                removed: None,
            };
            for (a, b) in &config.links {
                state.join_link(a, b, &file);
            }
        }
        state
    }

    /// The state a node starts with: the file's state together with the one it stored.
    /// Where both know a node or link, the stored entry wins (it is at least as new); nodes
    /// and links only the file knows are added. The kind and the replicas are the file's. A
    /// stored state of another cluster is ignored.
    pub fn with_config(config: &Config, stored: Option<Membership>) -> Membership {
        let file = Membership::from_config(config);
        let Some(mut state) = stored else {
            return file;
        };
        if state.cluster != file.cluster {
            return file;
        }
        state.kind = file.kind;
        state.replicas = file.replicas;
        for (k, m) in file.members {
            state.members.entry(k).or_insert(m);
        }
        for (k, l) in file.links {
            state.links.entry(k).or_insert(l);
        }
        state
    }

    /// Joins `other` into `self`; true if `self` changed. A state of another cluster, another
    /// topology kind or other replicas is ignored (false). Commutative, associative and
    /// idempotent.
    pub fn merge(&mut self, other: &Membership) -> bool {
        if other.cluster != self.cluster
            || other.kind != self.kind
            || other.replicas != self.replicas
        {
            return false;
        }
        let mut changed = false;
        for m in other.members.values() {
            changed |= self.join_member(m);
        }
        for ((a, b), l) in &other.links {
            changed |= self.join_link(a, b, l);
        }
        changed
    }

    /// Adds a node to a mesh or ring topology (see [`Membership::propose_add_with_links`]).
    pub fn propose_add(
        &mut self,
        me: &str,
        id: &str,
        peer: SocketAddr,
        api: SocketAddr,
    ) -> Result<(), MembershipError> {
        self.propose_add_with_links(me, id, peer, api, &[])
    }

    /// Proposes, at node `me`, a new node `id`; in an edges topology, linked to the live
    /// nodes `links` (at least one). Refused: `me` not live, an invalid id, an id taken or
    /// ever removed (ignoring case), an address a live node uses (port 0 never clashes, and
    /// the new node may use one address for both), links missing (edges) or given
    /// (otherwise), a link to an unknown node or to itself.
    pub fn propose_add_with_links(
        &mut self,
        me: &str,
        id: &str,
        peer: SocketAddr,
        api: SocketAddr,
        links: &[String],
    ) -> Result<(), MembershipError> {
        self.check_proposer(me)?;
        if !is_valid_node_id(id) {
            return Err(MembershipError::InvalidId(id.to_string()));
        }
        if let Some(m) = self.members.get(&key(id)) {
            let (id, existing) = (id.to_string(), m.id.clone());
            return Err(if m.is_live() {
                MembershipError::DuplicateId { id, existing }
            } else {
                MembershipError::RemovedId { id, existing }
            });
        }
        let (peer, api) = (canonical(peer), canonical(api));
        for (addr, kind) in [(peer, "peer"), (api, "api")] {
            if addr.port() == 0 {
                continue;
            }
            for m in self.members.values().filter(|m| m.is_live()) {
                for (theirs, other_kind) in [(m.peer, "peer"), (m.api, "api")] {
                    if theirs == addr {
                        return Err(MembershipError::DuplicateAddress {
                            id: id.to_string(),
                            kind,
                            addr,
                            other: m.id.clone(),
                            other_kind,
                        });
                    }
                }
            }
        }
        let mut ends: BTreeSet<(String, String)> = BTreeSet::new();
        if self.kind == TopologyKind::Edges {
            if links.is_empty() {
                return Err(MembershipError::NeedsLinks(id.to_string()));
            }
            for to in links {
                if !self.is_live(to) {
                    return Err(MembershipError::UnknownNode(to.clone()));
                }
                match link_key(id, to) {
                    Some(k) => ends.insert(k),
                    None => return Err(MembershipError::SelfLink(id.to_string())),
                };
            }
        } else if !links.is_empty() {
            return Err(MembershipError::LinksNotAllowed(self.kind));
        }
        let stamp = self.next_stamp(me)?;
        self.join_member(&Member {
            id: id.to_string(),
            peer,
            api,
            added: stamp.clone(),
            removed: None,
            pos: None,
        });
        let entry = LinkEntry {
            added: stamp,
            removed: None,
        };
        for (a, b) in ends {
            self.join_link(&a, &b, &entry);
        }
        Ok(())
    }

    /// Proposes, at node `me`, the removal of node `id`, for good. Refused: `me` not live,
    /// `id` unknown or already removed, the last live node, a removal that leaves fewer live
    /// nodes than the replicas, or (edges) a removal that splits the live nodes into more
    /// groups than before. A mesh or a ring stays connected.
    pub fn propose_remove(&mut self, me: &str, id: &str) -> Result<(), MembershipError> {
        self.check_proposer(me)?;
        let Some(member) = self.member(id) else {
            return Err(MembershipError::UnknownNode(id.to_string()));
        };
        if !member.is_live() {
            return Err(MembershipError::AlreadyRemoved(id.to_string()));
        }
        let live = self.live().len();
        if live <= 1 {
            return Err(MembershipError::LastNode(id.to_string()));
        }
        if let Some(replicas) = self.replicas.filter(|&r| live - 1 < r) {
            return Err(MembershipError::BelowReplicas {
                id: id.to_string(),
                live: live - 1,
                replicas,
            });
        }
        let k = key(id);
        if self.kind == TopologyKind::Edges
            && self.components(Some(&k), None) > self.components(None, None)
        {
            return Err(MembershipError::WouldDisconnect(id.to_string()));
        }
        let stamp = self.next_stamp(me)?;
        self.observe(&stamp);
        if let Some(m) = self.members.get_mut(&k) {
            m.removed = Some(stamp);
        }
        Ok(())
    }

    /// Proposes, at node `me`, a link between the live nodes `a` and `b` of an edges
    /// topology. Refused: `me` not live, not edges, an unknown end, a self link, a live link.
    pub fn propose_link(&mut self, me: &str, a: &str, b: &str) -> Result<(), MembershipError> {
        let k = self.check_link(me, a, b)?;
        if self.links.get(&k).is_some_and(LinkEntry::is_live) {
            return Err(MembershipError::LinkExists(a.to_string(), b.to_string()));
        }
        let stamp = self.next_stamp(me)?;
        let entry = LinkEntry {
            added: stamp,
            removed: None,
        };
        self.join_link(&k.0, &k.1, &entry);
        Ok(())
    }

    /// Proposes, at node `me`, the removal of the link between `a` and `b` (it may be added
    /// again later). Refused: `me` not live, not edges, an unknown end, no such live link,
    /// or a removal that splits the live nodes into more groups than before.
    pub fn propose_unlink(&mut self, me: &str, a: &str, b: &str) -> Result<(), MembershipError> {
        let k = self.check_link(me, a, b)?;
        let no_link = || MembershipError::NoLink(a.to_string(), b.to_string());
        let Some(entry) = self.links.get(&k).filter(|l| l.is_live()) else {
            return Err(no_link());
        };
        let added = entry.added.clone();
        if self.components(None, Some(&k)) > self.components(None, None) {
            return Err(MembershipError::LinkWouldDisconnect(
                a.to_string(),
                b.to_string(),
            ));
        }
        let stamp = self.next_stamp(me)?;
        let entry = LinkEntry {
            added,
            removed: Some(stamp),
        };
        self.join_link(&k.0, &k.1, &entry);
        Ok(())
    }

    /// The live topology: live nodes in ring order (the file's nodes in file order, then
    /// added ones by (added stamp, id)) and, for edges, the live links between them; each
    /// document on [`Membership::replicas`] of the live nodes, or on all of them when
    /// concurrent removals left fewer (or should the replicas be impossible, which the file's
    /// checks rule out: every node has every document).
    pub fn topology(&self) -> Topology {
        let members = self.live();
        let tokens = self.ring_tokens(&members);
        let nodes: Vec<String> = members.into_iter().map(|m| m.id.clone()).collect();
        let live = nodes.len();
        let full = Topology::new(self.kind, nodes, self.links()).with_ring_tokens(tokens);
        match self.replicas {
            Some(r) if live > 0 => full
                .clone()
                .with_replicas(Some(r.min(live)))
                .unwrap_or(full),
            _ => full,
        }
    }

    /// The ring tokens of `live` (the live members in ring order), which place partitions
    /// on a ring: the file's nodes evenly spaced by their place in the file (among all the
    /// file's nodes, removed ones too, so a removal moves nothing else), each added node
    /// halfway along the arc from the node before it to the first: a node that joins takes
    /// part of one node's share, and nothing else moves.
    fn ring_tokens(&self, live: &[&Member]) -> Vec<crate::placement::Token> {
        let file_nodes = self.members.values().filter(|m| m.pos.is_some()).count();
        let even = crate::placement::even_tokens(file_nodes);
        let mut tokens: Vec<crate::placement::Token> = Vec::with_capacity(live.len());
        let first = live
            .first()
            .and_then(|m| m.pos)
            .and_then(|p| even.get(p as usize).copied())
            .unwrap_or(0);
        for m in live {
            let token = match m.pos.and_then(|p| even.get(p as usize)) {
                Some(&t) => t,
                None => {
                    let prev = tokens.last().copied().unwrap_or(first);
                    crate::placement::token_between(prev, first)
                }
            };
            tokens.push(token);
        }
        tokens
    }

    /// The live links between live nodes (edges only; empty otherwise), as pairs of ids
    /// ordered by their lower-case form.
    pub fn links(&self) -> Vec<(String, String)> {
        if self.kind != TopologyKind::Edges {
            return Vec::new();
        }
        self.links
            .iter()
            .filter(|(_, l)| l.is_live())
            .filter_map(|((a, b), _)| {
                let a = self.members.get(a).filter(|m| m.is_live())?;
                let b = self.members.get(b).filter(|m| m.is_live())?;
                Some((a.id.clone(), b.id.clone()))
            })
            .collect()
    }

    /// The live members in ring order.
    pub fn live(&self) -> Vec<&Member> {
        let mut live: Vec<&Member> = self.members.values().filter(|m| m.is_live()).collect();
        live.sort_by(|x, y| x.order_key().cmp(&y.order_key()));
        live
    }

    /// The removed members, by id.
    pub fn removed(&self) -> Vec<&Member> {
        self.members.values().filter(|m| !m.is_live()).collect()
    }

    /// The member with exactly this id, live or removed.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(&key(id)).filter(|m| m.id == id)
    }

    /// Whether a live member has exactly this id.
    pub fn is_live(&self, id: &str) -> bool {
        self.member(id).is_some_and(Member::is_live)
    }

    /// The cluster id.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The topology kind (from the file; it never changes live).
    pub fn kind(&self) -> TopologyKind {
        self.kind
    }

    /// Each document on this many live nodes (from the file, like the kind); `None`: every
    /// node has every document.
    pub fn replicas(&self) -> Option<usize> {
        self.replicas
    }

    /// The greatest stamp clock in the state: 0 for the file's topology, growing with
    /// every change.
    pub fn version(&self) -> u64 {
        self.clock
    }

    /// A stable 64-bit FNV-1a hash of the whole state (the same on every platform and in
    /// every process): equal states have equal digests, and different ones differ but for
    /// collisions.
    pub fn digest(&self) -> u64 {
        let mut h = Fnv::new();
        h.str(&self.cluster);
        h.str(kind_label(self.kind));
        h.u64(self.members.len() as u64);
        for m in self.members.values() {
            h.str(&m.id);
            h.addr(m.peer);
            h.addr(m.api);
            h.stamp(&m.added);
            h.opt_stamp(m.removed.as_ref());
            // A u32 never reaches u64::MAX: that stands for "not in the file".
            h.u64(m.pos.map_or(u64::MAX, u64::from));
        }
        h.u64(self.links.len() as u64);
        for ((a, b), l) in &self.links {
            h.str(a);
            h.str(b);
            h.stamp(&l.added);
            h.opt_stamp(l.removed.as_ref());
        }
        // Only when set: the digest of a state without replicas stays what it was.
        if let Some(r) = self.replicas {
            h.str("replicas");
            h.u64(r as u64);
        }
        h.0.finish()
    }

    /// The live topology as JSON (`GET /v1/topology`): `cluster`, `topology` (`"mesh"`,
    /// `"ring"` or `"edges"`, as in the file), `ring_direction` (rings only), `version`,
    /// `digest` (16 hex digits), `replicas` (only when set), `nodes` (`id`, `peer`, `api`, in
    /// ring order), `removed` (ids) and `links` (pairs of ids, edges only).
    pub fn to_json(&self) -> Value {
        let nodes: Vec<Value> = self
            .live()
            .into_iter()
            .map(|m| json!({"id": m.id, "peer": m.peer.to_string(), "api": m.api.to_string()}))
            .collect();
        let removed: Vec<&str> = self.removed().into_iter().map(|m| m.id.as_str()).collect();
        let mut out = json!({
            "cluster": self.cluster,
            "topology": self.kind.name(),
            "version": self.version(),
            "digest": format!("{:016x}", self.digest()),
            "nodes": nodes,
            "removed": removed,
        });
        if let Some(r) = self.replicas {
            out["replicas"] = json!(r);
        }
        if let TopologyKind::Ring(direction) = self.kind {
            out["ring_direction"] = json!(match direction {
                RingDirection::Both => "both",
                RingDirection::Forward => "forward",
            });
        }
        if self.kind == TopologyKind::Edges {
            let links: Vec<[String; 2]> = self.links().into_iter().map(|(a, b)| [a, b]).collect();
            out["links"] = json!(links);
        }
        out
    }

    fn check_proposer(&self, me: &str) -> Result<(), MembershipError> {
        if self.is_live(me) {
            Ok(())
        } else {
            Err(MembershipError::NotMember(me.to_string()))
        }
    }

    fn check_link(&self, me: &str, a: &str, b: &str) -> Result<(String, String), MembershipError> {
        self.check_proposer(me)?;
        if self.kind != TopologyKind::Edges {
            return Err(MembershipError::LinksNotAllowed(self.kind));
        }
        for end in [a, b] {
            if !self.is_live(end) {
                return Err(MembershipError::UnknownNode(end.to_string()));
            }
        }
        link_key(a, b).ok_or_else(|| MembershipError::SelfLink(a.to_string()))
    }

    fn next_stamp(&self, me: &str) -> Result<Stamp, MembershipError> {
        let clock = self
            .clock
            .checked_add(1)
            .ok_or(MembershipError::ClockExhausted)?;
        Ok(Stamp {
            clock,
            by: me.to_string(),
        })
    }

    fn observe(&mut self, stamp: &Stamp) {
        self.clock = self.clock.max(stamp.clock);
    }

    /// Joins one member entry (ignored if its id is invalid); true if anything changed.
    fn join_member(&mut self, m: &Member) -> bool {
        if !is_valid_node_id(&m.id) {
            return false;
        }
        let m = Member {
            peer: canonical(m.peer),
            api: canonical(m.api),
            ..m.clone()
        };
        self.observe(&m.added);
        if let Some(r) = &m.removed {
            self.observe(r);
        }
        match self.members.entry(key(&m.id)) {
            Entry::Vacant(e) => {
                e.insert(m);
                true
            }
            Entry::Occupied(mut e) => {
                let cur = e.get_mut();
                let removed = cur.removed.clone().max(m.removed.clone());
                let changed = m.rank() > cur.rank() || removed != cur.removed;
                if m.rank() > cur.rank() {
                    *cur = m;
                }
                cur.removed = removed;
                changed
            }
        }
    }

    /// Joins one link entry (ignored if an end is invalid or both ends are one node).
    fn join_link(&mut self, a: &str, b: &str, l: &LinkEntry) -> bool {
        if !is_valid_node_id(a) || !is_valid_node_id(b) {
            return false;
        }
        let Some(k) = link_key(a, b) else {
            return false;
        };
        self.observe(&l.added);
        if let Some(r) = &l.removed {
            self.observe(r);
        }
        match self.links.entry(k) {
            Entry::Vacant(e) => {
                e.insert(l.clone());
                true
            }
            Entry::Occupied(mut e) => e.get_mut().join(l),
        }
    }

    /// Connected groups of live nodes over live links, leaving out one node or one link.
    fn components(&self, without: Option<&str>, without_link: Option<&(String, String)>) -> usize {
        let nodes: BTreeSet<&str> = self
            .members
            .iter()
            .filter(|(k, m)| m.is_live() && Some(k.as_str()) != without)
            .map(|(k, _)| k.as_str())
            .collect();
        let mut adjacent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, l) in &self.links {
            let (a, b) = (k.0.as_str(), k.1.as_str());
            if l.is_live() && Some(k) != without_link && nodes.contains(a) && nodes.contains(b) {
                adjacent.entry(a).or_default().push(b);
                adjacent.entry(b).or_default().push(a);
            }
        }
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut groups = 0;
        for &start in &nodes {
            if !seen.insert(start) {
                continue;
            }
            groups += 1;
            let mut stack = vec![start];
            while let Some(x) = stack.pop() {
                for &y in adjacent.get(x).into_iter().flatten() {
                    if seen.insert(y) {
                        stack.push(y);
                    }
                }
            }
        }
        groups
    }
}

/// The kind as stored: `mesh`, `ring`, `ring-forward` or `edges`.
fn kind_label(kind: TopologyKind) -> &'static str {
    match kind {
        TopologyKind::Ring(RingDirection::Forward) => "ring-forward",
        other => other.name(),
    }
}

/// The digest's encoding: length-prefixed and little-endian, hashed with FNV-1a (64 bits).
struct Fnv(Fnv1a);

impl Fnv {
    fn new() -> Fnv {
        Fnv(Fnv1a::new())
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }

    /// A canonical address (no flow info or scope id) displays as one unique string.
    fn addr(&mut self, addr: SocketAddr) {
        self.str(&addr.to_string());
    }

    fn stamp(&mut self, s: &Stamp) {
        self.u64(s.clock);
        self.str(&s.by);
    }

    fn opt_stamp(&mut self, s: Option<&Stamp>) {
        match s {
            None => self.bytes(&[0]),
            Some(s) => {
                self.bytes(&[1]);
                self.stamp(s);
            }
        }
    }
}

/// The serialized form of a [`Membership`]: lists, so that JSON (string keys only) can
/// hold it; the clock is derived from the stamps. Fields are only ever added at the end
/// with a default, so that a topology stored (JSON) by an older version still loads. On the
/// wire it is JSON too, but for peers of protocol version 5 ([`V5Form`]).
#[derive(Serialize, Deserialize)]
struct Repr {
    cluster: String,
    kind: String,
    members: Vec<Member>,
    links: Vec<LinkRepr>,
    #[serde(default)]
    replicas: Option<usize>,
}

#[derive(Serialize, Deserialize)]
struct LinkRepr {
    a: String,
    b: String,
    added: Stamp,
    removed: Option<Stamp>,
}

impl From<Membership> for Repr {
    fn from(state: Membership) -> Repr {
        let links = state.links.into_iter();
        Repr {
            cluster: state.cluster,
            kind: kind_label(state.kind).to_string(),
            replicas: state.replicas,
            members: state.members.into_values().collect(),
            links: links
                .map(|((a, b), LinkEntry { added, removed })| LinkRepr {
                    a,
                    b,
                    added,
                    removed,
                })
                .collect(),
        }
    }
}

impl TryFrom<Repr> for Membership {
    type Error = String;

    /// Rebuilds the state from untrusted input: entries with invalid ids are dropped and
    /// repeated ones joined, so the result obeys every invariant. Fails on an unknown kind
    /// and on replicas = 0.
    fn try_from(repr: Repr) -> Result<Membership, String> {
        if repr.replicas == Some(0) {
            return Err("replicas = 0: each document needs at least 1 node".to_string());
        }
        let kind = match repr.kind.as_str() {
            "ring-forward" => TopologyKind::Ring(RingDirection::Forward),
            other => TopologyKind::from_name(other)
                .ok_or_else(|| format!("unknown topology kind {other:?}"))?,
        };
        let mut state = Membership::empty(repr.cluster, kind, repr.replicas);
        for m in &repr.members {
            state.join_member(m);
        }
        for LinkRepr {
            a,
            b,
            added,
            removed,
        } in repr.links
        {
            state.join_link(&a, &b, &LinkEntry { added, removed });
        }
        Ok(state)
    }
}

/// A [`Membership`] in the form protocol version 5 (release 0.1.0) carries it: [`Repr`]
/// without `replicas`, which that release does not know (bincode has no defaults: it reads
/// exactly these fields). A state read from it has no replicas.
pub struct V5Form(pub Membership);

#[derive(Serialize, Deserialize)]
struct ReprV5 {
    cluster: String,
    kind: String,
    members: Vec<Member>,
    links: Vec<LinkRepr>,
}

impl Serialize for V5Form {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Repr {
            cluster,
            kind,
            members,
            links,
            replicas: _,
        } = Repr::from(self.0.clone());
        ReprV5 {
            cluster,
            kind,
            members,
            links,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for V5Form {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<V5Form, D::Error> {
        let ReprV5 {
            cluster,
            kind,
            members,
            links,
        } = ReprV5::deserialize(d)?;
        let repr = Repr {
            cluster,
            kind,
            members,
            links,
            replicas: None,
        };
        Membership::try_from(repr)
            .map(V5Form)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
