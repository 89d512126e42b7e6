//! Pure graph logic over the nodes of a cluster: static neighbours for mesh, ring (both
//! directions or forward only) and explicit edges; ring failover (which links to hold and
//! which down nodes to keep probing); hop distances; where a change is pushed next; and,
//! with a replication factor below the number of nodes, which nodes replicate each
//! document ([`Topology::with_replicas`], see [`crate::placement`]).
//!
//! This module owns no state beyond the static topology and does no IO: it takes the
//! liveness view (`is_down`) and the set of connected peers as arguments. It must not touch
//! sockets, files, clocks or the replication core.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use crate::placement::{self, Placement, PlacementError, PARTITIONS};

/// Which graph the nodes replicate over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopologyKind {
    /// Every node links to every other node.
    Mesh,
    /// Nodes form a ring in file order; a down neighbour is bypassed to the next live node.
    Ring(RingDirection),
    /// Explicit undirected links from the `[[link]]` tables.
    Edges,
}

/// The direction changes travel around a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingDirection {
    /// Changes travel both ways round the ring (the default).
    Both,
    /// Classic one-way circular replication: each node pushes to its successor only.
    Forward,
}

impl TopologyKind {
    /// The `topology` value of the file: `"mesh"`, `"ring"` or `"edges"`.
    pub fn name(self) -> &'static str {
        match self {
            TopologyKind::Mesh => "mesh",
            TopologyKind::Ring(_) => "ring",
            TopologyKind::Edges => "edges",
        }
    }

    /// Parses a `topology` value (`"mesh"`, `"ring"` meaning a two-way ring, `"edges"`).
    pub fn from_name(name: &str) -> Option<TopologyKind> {
        match name {
            "mesh" => Some(TopologyKind::Mesh),
            "ring" => Some(TopologyKind::Ring(RingDirection::Both)),
            "edges" => Some(TopologyKind::Edges),
            _ => None,
        }
    }
}

impl fmt::Display for TopologyKind {
    /// `mesh`, `ring`, `ring (forward)` or `edges`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyKind::Ring(RingDirection::Forward) => f.write_str("ring (forward)"),
            other => f.write_str(other.name()),
        }
    }
}

/// The static topology of a cluster: its kind, the node ids in file order (which is also the
/// ring order) and, for [`TopologyKind::Edges`], the undirected links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    kind: TopologyKind,
    nodes: Vec<String>,
    /// For each node (by index), its static neighbours by index, ascending.
    adjacency: Vec<Vec<usize>>,
    /// Where documents live when each is on fewer nodes than all (`None`: every node
    /// replicates every document).
    placement: Option<Arc<Placement>>,
    /// The ring's tokens, one per node in ring order (`None`: evenly spaced).
    tokens: Option<Vec<placement::Token>>,
}

impl Topology {
    /// Builds a topology. `links` only matter for [`TopologyKind::Edges`]; links naming an
    /// unknown node or a node itself are ignored (the config layer refuses them earlier).
    pub fn new(kind: TopologyKind, nodes: Vec<String>, links: Vec<(String, String)>) -> Topology {
        let n = nodes.len();
        let index = |id: &str| nodes.iter().position(|x| x == id);
        let mut sets: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        match kind {
            TopologyKind::Mesh => {
                for (i, set) in sets.iter_mut().enumerate() {
                    set.extend((0..n).filter(|&j| j != i));
                }
            }
            TopologyKind::Ring(_) => {
                if n > 1 {
                    for (i, set) in sets.iter_mut().enumerate() {
                        set.insert((i + 1) % n);
                        set.insert((i + n - 1) % n);
                    }
                }
            }
            TopologyKind::Edges => {
                for (a, b) in &links {
                    if let (Some(i), Some(j)) = (index(a), index(b)) {
                        if i != j {
                            sets[i].insert(j);
                            sets[j].insert(i);
                        }
                    }
                }
            }
        }
        let adjacency = sets.into_iter().map(|s| s.into_iter().collect()).collect();
        Topology {
            kind,
            nodes,
            adjacency,
            placement: None,
            tokens: None,
        }
    }

    /// The same topology with these ring tokens, one per node in ring order (see
    /// [`Placement::ring`]): where a ring's nodes sit on the circle that places partitions,
    /// so that a node joining or leaving moves only its neighbours' share. Set it before
    /// [`Topology::with_replicas`]; ignored if the count is wrong.
    pub fn with_ring_tokens(mut self, tokens: Vec<placement::Token>) -> Topology {
        // Evenly spaced tokens are the default: kept as none, so equal topologies compare
        // equal however they were made.
        let ring = matches!(self.kind, TopologyKind::Ring(_));
        if ring
            && tokens.len() == self.nodes.len()
            && tokens != placement::even_tokens(tokens.len())
        {
            self.tokens = Some(tokens);
        }
        self
    }

    /// The same topology with each document on `replicas` of its nodes (`None`, or as many
    /// as there are nodes: every node replicates everything). A mesh places partitions by
    /// rendezvous hashing; a ring (both directions) on windows of consecutive nodes in ring
    /// order, so changes still travel the ring. Refused: 0 or more than the nodes, and fewer
    /// than all nodes on an `edges` topology or a one-way ring (changes travel there only
    /// along links whose ends may not replicate the document).
    pub fn with_replicas(mut self, replicas: Option<usize>) -> Result<Topology, PlacementError> {
        let n = self.nodes.len();
        let r = replicas.unwrap_or(n);
        if r == 0 || r > n {
            return Err(PlacementError::Replicas {
                replicas: r,
                nodes: n,
            });
        }
        self.placement = if r == n {
            None
        } else {
            let placement = match self.kind {
                TopologyKind::Mesh => Placement::rendezvous(&self.nodes, r, PARTITIONS)?,
                TopologyKind::Ring(RingDirection::Both) => {
                    let tokens = self
                        .tokens
                        .clone()
                        .unwrap_or_else(|| placement::even_tokens(n));
                    let nodes: Vec<(String, u64)> =
                        self.nodes.iter().cloned().zip(tokens).collect();
                    Placement::ring(&nodes, r, PARTITIONS)?
                }
                kind => return Err(PlacementError::Unsupported(kind.to_string())),
            };
            Some(Arc::new(placement))
        };
        Ok(self)
    }

    /// The replicas of each document: the number of nodes when every node has everything.
    pub fn replicas(&self) -> usize {
        self.placement
            .as_ref()
            .map_or(self.nodes.len(), |p| p.replicas_per_partition())
    }

    /// Where documents live, if each is on fewer nodes than all.
    pub fn placement(&self) -> Option<&Placement> {
        self.placement.as_deref()
    }

    /// Whether `node` replicates `doc` (every node does without a placement).
    pub fn holds(&self, node: &str, doc: &str) -> bool {
        match &self.placement {
            Some(p) => p.holds_doc(node, doc),
            None => self.contains(node),
        }
    }

    /// The nodes that replicate `doc`, in order of preference (every node, in ring order,
    /// without a placement).
    pub fn replicas_of(&self, doc: &str) -> Vec<&str> {
        match &self.placement {
            Some(p) => p.replicas_of(doc).collect(),
            None => self.nodes.iter().map(String::as_str).collect(),
        }
    }

    /// The next hop from `me` towards `to` over the connected peers: `to` itself when
    /// connected; on a ring, the connected peer nearest to `to` the short way round (a
    /// one-way ring: the way changes travel); elsewhere any connected peer closer to `to`.
    /// `None` when no connected peer brings it closer. A node not in the topology (one
    /// leaving it) goes through the connected peer nearest to `to`.
    pub fn next_hop(&self, me: &str, to: &str, connected: &[String]) -> Option<String> {
        if connected.iter().any(|c| c == to) {
            return Some(to.to_string());
        }
        let t = self.index(to)?;
        let here = match self.index(me) {
            Some(m) => self.distance_idx(m, t)?,
            None => u32::MAX,
        };
        connected
            .iter()
            .filter_map(|c| Some((self.distance_idx(self.index(c)?, t)?, c)))
            .filter(|(d, _)| *d < here)
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)))
            .map(|(_, c)| c.clone())
    }

    /// Whether the topology links `a` and `b` directly (see [`Topology::neighbours`]).
    pub fn linked(&self, a: &str, b: &str) -> bool {
        match (self.index(a), self.index(b)) {
            (Some(i), Some(j)) => self.adjacency[i].contains(&j),
            _ => false,
        }
    }

    /// The node ids in file order (the ring order for a ring).
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The kind of topology.
    pub fn kind(&self) -> TopologyKind {
        self.kind
    }

    /// Whether `id` is a node of this topology.
    pub fn contains(&self, id: &str) -> bool {
        self.index(id).is_some()
    }

    /// Static neighbours of `me`, in file order: mesh, all other nodes; ring (both and
    /// forward, since connections are two-way), successor and predecessor; edges, the linked
    /// nodes. Empty for an unknown node. See [`Topology::forward_targets`] for the direction
    /// a forward ring pushes in.
    pub fn neighbours(&self, me: &str) -> Vec<String> {
        match self.index(me) {
            Some(i) => self.adjacency[i]
                .iter()
                .map(|&j| self.nodes[j].clone())
                .collect(),
            None => Vec::new(),
        }
    }

    /// The peers `me` should hold links to, given which nodes are believed down.
    ///
    /// Ring (both directions and forward): walking from `me` forward, the first node that is
    /// not down, and walking backward, the first node that is not down, so both sides heal
    /// around failed nodes. Mesh: every other node not down. Edges: the static neighbours
    /// not down (edges do not heal). Never contains `me`; empty for an unknown node.
    /// Deterministic: the same inputs give the same list in the same order.
    pub fn desired_links(&self, me: &str, is_down: &dyn Fn(&str) -> bool) -> Vec<String> {
        let Some(i) = self.index(me) else {
            return Vec::new();
        };
        let mut out: Vec<usize> = Vec::new();
        match self.kind {
            TopologyKind::Ring(_) => {
                for step in [1, self.nodes.len().saturating_sub(1)] {
                    let (_, live) = self.walk(i, step, is_down);
                    if let Some(j) = live {
                        if !out.contains(&j) {
                            out.push(j);
                        }
                    }
                }
            }
            TopologyKind::Mesh | TopologyKind::Edges => {
                out.extend(
                    self.adjacency[i]
                        .iter()
                        .copied()
                        .filter(|&j| !is_down(&self.nodes[j])),
                );
            }
        }
        out.into_iter().map(|j| self.nodes[j].clone()).collect()
    }

    /// The down nodes `me` should keep probing so that its original links come back when
    /// they return. Ring: on each side, every node skipped between `me` and the live node
    /// it currently links to (all other nodes if every one is down). Mesh and edges: the
    /// static neighbours that are down. Never contains `me`; deterministic.
    pub fn probe_targets(&self, me: &str, is_down: &dyn Fn(&str) -> bool) -> Vec<String> {
        let Some(i) = self.index(me) else {
            return Vec::new();
        };
        let mut out: Vec<usize> = Vec::new();
        match self.kind {
            TopologyKind::Ring(_) => {
                for step in [1, self.nodes.len().saturating_sub(1)] {
                    let (skipped, _) = self.walk(i, step, is_down);
                    for j in skipped {
                        if !out.contains(&j) {
                            out.push(j);
                        }
                    }
                }
            }
            TopologyKind::Mesh | TopologyKind::Edges => {
                out.extend(
                    self.adjacency[i]
                        .iter()
                        .copied()
                        .filter(|&j| is_down(&self.nodes[j])),
                );
            }
        }
        out.into_iter().map(|j| self.nodes[j].clone()).collect()
    }

    /// Hop distance from `origin` to `to` in the static graph: along directed successor
    /// edges for a forward ring, undirected otherwise. `Some(0)` when they are the same
    /// node; `None` if either is unknown or `to` is unreachable.
    pub fn distance(&self, origin: &str, to: &str) -> Option<u32> {
        let o = self.index(origin)?;
        let t = self.index(to)?;
        self.distance_idx(o, t)
    }

    /// The peers `me` pushes a change to. The change originated at `origin` (possibly `me`)
    /// and came from `from` (`None` for a local change); `connected` are the peers `me`
    /// currently has links to.
    ///
    /// Every connected `X` other than `me`, `origin` and `from` whose distance from `origin`
    /// is greater than `me`'s, so a change spreads outward from its origin and never flows
    /// back. On an even ring (both directions) the node opposite the origin is fed only from
    /// the successor side, so no node gets a change twice. On a forward ring, at most one
    /// peer: the connected peer that comes first after `me` in ring order (the successor, or
    /// the healed link past a down successor). Mesh: the origin pushes to all, nobody
    /// forwards. Unknown `origin` or `me`: every connected peer except `me` and `from`.
    /// The result keeps the order of `connected`, without duplicates.
    pub fn forward_targets(
        &self,
        me: &str,
        origin: &str,
        from: Option<&str>,
        connected: &[String],
    ) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let (Some(m), Some(o)) = (self.index(me), self.index(origin)) else {
            for x in connected {
                if x != me && Some(x.as_str()) != from && !out.contains(x) {
                    out.push(x.clone());
                }
            }
            return out;
        };
        let Some(my_distance) = self.distance_idx(o, m) else {
            return out;
        };
        let n = self.nodes.len();
        let candidates: Vec<usize> = match self.kind {
            TopologyKind::Ring(RingDirection::Forward) => connected
                .iter()
                .filter_map(|x| self.index(x))
                .filter(|&j| j != m)
                .min_by_key(|&j| (j + n - m) % n)
                .into_iter()
                .collect(),
            _ => connected.iter().filter_map(|x| self.index(x)).collect(),
        };
        for j in candidates {
            let id = &self.nodes[j];
            if j == m || j == o || Some(id.as_str()) == from || out.contains(id) {
                continue;
            }
            let Some(d) = self.distance_idx(o, j) else {
                continue;
            };
            if d <= my_distance {
                continue;
            }
            if self.kind == TopologyKind::Ring(RingDirection::Both) && n.is_multiple_of(2) {
                // The node opposite the origin is as far one way as the other: only the
                // successor side (offsets below n/2, the origin included) feeds it.
                let half = n / 2;
                if (j + n - o) % n == half && (m + n - o) % n >= half {
                    continue;
                }
            }
            out.push(id.clone());
        }
        out
    }

    fn index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|x| x == id)
    }

    /// Walks the ring from `start` by `step` (1 forward, n-1 backward): the down nodes
    /// passed, then the first live node (if any besides `start`).
    fn walk(
        &self,
        start: usize,
        step: usize,
        is_down: &dyn Fn(&str) -> bool,
    ) -> (Vec<usize>, Option<usize>) {
        let n = self.nodes.len();
        let mut skipped = Vec::new();
        let mut j = start;
        for _ in 1..n {
            j = (j + step) % n;
            if is_down(&self.nodes[j]) {
                skipped.push(j);
            } else {
                return (skipped, Some(j));
            }
        }
        (skipped, None)
    }

    fn distance_idx(&self, from: usize, to: usize) -> Option<u32> {
        let n = self.nodes.len();
        if from == to {
            return Some(0);
        }
        let hops = match self.kind {
            TopologyKind::Mesh => 1,
            TopologyKind::Ring(RingDirection::Forward) => (to + n - from) % n,
            TopologyKind::Ring(RingDirection::Both) => {
                let ahead = (to + n - from) % n;
                ahead.min(n - ahead)
            }
            TopologyKind::Edges => self.bfs(from, to)?,
        };
        u32::try_from(hops).ok()
    }

    fn bfs(&self, from: usize, to: usize) -> Option<usize> {
        let mut dist = vec![usize::MAX; self.nodes.len()];
        dist[from] = 0;
        let mut queue = VecDeque::from([from]);
        while let Some(x) = queue.pop_front() {
            if x == to {
                return Some(dist[x]);
            }
            for &y in &self.adjacency[x] {
                if dist[y] == usize::MAX {
                    dist[y] = dist[x] + 1;
                    queue.push_back(y);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};

    const BOTH: TopologyKind = TopologyKind::Ring(RingDirection::Both);
    const FORWARD: TopologyKind = TopologyKind::Ring(RingDirection::Forward);

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    fn topo(kind: TopologyKind, n: usize) -> Topology {
        Topology::new(kind, ids(n), Vec::new())
    }

    fn edges(n: usize, links: &[(usize, usize)]) -> Topology {
        let links = links
            .iter()
            .map(|(a, b)| (format!("n{a}"), format!("n{b}")))
            .collect();
        Topology::new(TopologyKind::Edges, ids(n), links)
    }

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn down_set<'a>(down: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
        move |id: &str| down.contains(&id)
    }

    #[test]
    fn mesh_neighbours_are_all_others() {
        let t = topo(TopologyKind::Mesh, 4);
        assert_eq!(t.neighbours("n2"), v(&["n1", "n3", "n4"]));
        assert_eq!(t.neighbours("zz"), Vec::<String>::new());
        assert_eq!(t.kind(), TopologyKind::Mesh);
        assert_eq!(t.nodes(), &ids(4)[..]);
        assert!(t.contains("n4") && !t.contains("n5"));
    }

    #[test]
    fn ring_neighbours_are_successor_and_predecessor() {
        for kind in [BOTH, FORWARD] {
            let t = topo(kind, 5);
            assert_eq!(t.neighbours("n1"), v(&["n2", "n5"]));
            assert_eq!(t.neighbours("n3"), v(&["n2", "n4"]));
            assert_eq!(t.neighbours("n5"), v(&["n1", "n4"]));
        }
        assert_eq!(topo(BOTH, 2).neighbours("n1"), v(&["n2"]));
        assert!(topo(BOTH, 1).neighbours("n1").is_empty());
    }

    #[test]
    fn edges_neighbours_follow_links_both_ways() {
        let t = edges(4, &[(1, 2), (3, 1), (2, 1)]);
        assert_eq!(t.neighbours("n1"), v(&["n2", "n3"]));
        assert_eq!(t.neighbours("n3"), v(&["n1"]));
        assert!(t.neighbours("n4").is_empty());
    }

    #[test]
    fn ring_heals_around_one_down_node() {
        for kind in [BOTH, FORWARD] {
            let t = topo(kind, 5);
            let down = down_set(&["n3"]);
            assert_eq!(t.desired_links("n2", &down), v(&["n4", "n1"]));
            assert_eq!(t.desired_links("n4", &down), v(&["n5", "n2"]));
            assert_eq!(t.desired_links("n1", &down), v(&["n2", "n5"]));
            assert_eq!(t.probe_targets("n2", &down), v(&["n3"]));
            assert_eq!(t.probe_targets("n4", &down), v(&["n3"]));
            assert!(t.probe_targets("n1", &down).is_empty());
            assert!(t.probe_targets("n5", &down).is_empty());
        }
    }

    #[test]
    fn ring_heals_around_two_non_adjacent_down_nodes() {
        let t = topo(BOTH, 5);
        let down = down_set(&["n2", "n4"]);
        assert_eq!(t.desired_links("n1", &down), v(&["n3", "n5"]));
        assert_eq!(t.desired_links("n3", &down), v(&["n5", "n1"]));
        assert_eq!(t.desired_links("n5", &down), v(&["n1", "n3"]));
        assert_eq!(t.probe_targets("n1", &down), v(&["n2"]));
        assert_eq!(t.probe_targets("n3", &down), v(&["n4", "n2"]));
        assert_eq!(t.probe_targets("n5", &down), v(&["n4"]));
    }

    #[test]
    fn ring_heals_around_adjacent_down_nodes_and_restores() {
        let t = topo(BOTH, 5);
        let down = down_set(&["n2", "n3"]);
        assert_eq!(t.desired_links("n1", &down), v(&["n4", "n5"]));
        assert_eq!(t.desired_links("n4", &down), v(&["n5", "n1"]));
        assert_eq!(t.probe_targets("n1", &down), v(&["n2", "n3"]));
        assert_eq!(t.probe_targets("n4", &down), v(&["n3", "n2"]));
        let none = down_set(&[]);
        assert_eq!(t.desired_links("n1", &none), v(&["n2", "n5"]));
        assert!(t.probe_targets("n1", &none).is_empty());
    }

    #[test]
    fn ring_with_every_other_node_down_links_nothing_and_probes_all() {
        let t = topo(BOTH, 3);
        let down = down_set(&["n2", "n3"]);
        assert!(t.desired_links("n1", &down).is_empty());
        assert_eq!(t.probe_targets("n1", &down), v(&["n2", "n3"]));
    }

    #[test]
    fn mesh_and_edges_drop_down_neighbours_without_healing() {
        let t = topo(TopologyKind::Mesh, 4);
        let down = down_set(&["n3"]);
        assert_eq!(t.desired_links("n1", &down), v(&["n2", "n4"]));
        assert_eq!(t.probe_targets("n1", &down), v(&["n3"]));
        let e = edges(4, &[(1, 2), (2, 3), (3, 4)]);
        assert_eq!(e.desired_links("n2", &down), v(&["n1"]));
        assert_eq!(e.probe_targets("n2", &down), v(&["n3"]));
        assert!(e.desired_links("n9", &down).is_empty());
    }

    #[test]
    fn distances() {
        let m = topo(TopologyKind::Mesh, 5);
        assert_eq!(m.distance("n1", "n1"), Some(0));
        assert_eq!(m.distance("n1", "n4"), Some(1));
        let b = topo(BOTH, 5);
        assert_eq!(b.distance("n1", "n3"), Some(2));
        assert_eq!(b.distance("n1", "n4"), Some(2));
        assert_eq!(b.distance("n1", "n5"), Some(1));
        let f = topo(FORWARD, 5);
        assert_eq!(f.distance("n1", "n5"), Some(4));
        assert_eq!(f.distance("n5", "n1"), Some(1));
        let e = edges(5, &[(1, 2), (2, 3), (3, 4)]);
        assert_eq!(e.distance("n1", "n4"), Some(3));
        assert_eq!(e.distance("n4", "n1"), Some(3));
        assert_eq!(e.distance("n1", "n5"), None);
        assert_eq!(e.distance("n1", "zz"), None);
    }

    #[test]
    fn forward_targets_basic_rules() {
        let m = topo(TopologyKind::Mesh, 4);
        let all = ids(4);
        assert_eq!(
            m.forward_targets("n1", "n1", None, &all),
            v(&["n2", "n3", "n4"])
        );
        assert!(m.forward_targets("n2", "n1", Some("n1"), &all).is_empty());
        let f = topo(FORWARD, 5);
        assert_eq!(
            f.forward_targets("n1", "n1", None, &v(&["n2", "n5"])),
            v(&["n2"])
        );
        assert!(f
            .forward_targets("n5", "n1", Some("n4"), &v(&["n1", "n4"]))
            .is_empty());
        // Healed successor past a down n3.
        assert_eq!(
            f.forward_targets("n2", "n1", Some("n1"), &v(&["n1", "n4"])),
            v(&["n4"])
        );
        // Unknown origin: everyone connected except the sender.
        assert_eq!(
            m.forward_targets("n1", "zz", Some("n2"), &v(&["n2", "n3", "n3"])),
            v(&["n3"])
        );
    }

    /// Which peers each live node holds links to: a link exists when either end wants it.
    fn links_held(t: &Topology, down: &[&str]) -> BTreeMap<String, Vec<String>> {
        let is_down = down_set(down);
        let live: Vec<String> = t.nodes().iter().filter(|x| !is_down(x)).cloned().collect();
        let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in &live {
            for b in t.desired_links(a, &is_down) {
                assert!(!is_down(&b), "{a} links to down {b}");
                assert_ne!(a, &b);
                for (x, y) in [(a, &b), (&b, a)] {
                    let list = held.entry(x.clone()).or_default();
                    if !list.contains(y) {
                        list.push(y.clone());
                    }
                }
            }
        }
        held
    }

    /// Pushes one change from `origin` over the links held; returns (nodes reached, links
    /// crossed).
    fn propagate(t: &Topology, down: &[&str], origin: &str) -> (HashSet<String>, usize) {
        let held = links_held(t, down);
        let mut reached = HashSet::from([origin.to_string()]);
        let mut crossings = 0;
        let mut queue: VecDeque<(String, Option<String>)> =
            VecDeque::from([(origin.to_string(), None)]);
        let mut budget = 10_000;
        while let Some((me, from)) = queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "propagation does not terminate");
            let connected = held.get(&me).cloned().unwrap_or_default();
            for to in t.forward_targets(&me, origin, from.as_deref(), &connected) {
                assert!(connected.contains(&to), "{me} pushed to unconnected {to}");
                crossings += 1;
                if reached.insert(to.clone()) {
                    queue.push_back((to, Some(me.clone())));
                }
            }
        }
        (reached, crossings)
    }

    fn assert_delivers(t: &Topology, down: &[&str]) {
        let live: HashSet<String> = t
            .nodes()
            .iter()
            .filter(|x| !down.contains(&x.as_str()))
            .cloned()
            .collect();
        for origin in &live {
            let (reached, crossings) = propagate(t, down, origin);
            assert_eq!(
                reached,
                live,
                "{:?} down {down:?} origin {origin}",
                t.kind()
            );
            assert!(crossings >= live.len() - 1);
        }
    }

    #[test]
    fn a_change_crosses_each_needed_link_once_without_failures() {
        for kind in [TopologyKind::Mesh, BOTH, FORWARD] {
            for n in [1, 2, 3, 5, 6, 7] {
                let t = topo(kind, n);
                for origin in t.nodes() {
                    let (reached, crossings) = propagate(&t, &[], origin);
                    assert_eq!(reached.len(), n, "{kind:?} n={n} origin {origin}");
                    assert_eq!(crossings, n - 1, "{kind:?} n={n} origin {origin}");
                }
            }
        }
        let t = edges(5, &[(1, 2), (2, 3), (3, 4), (4, 5), (5, 1)]);
        for origin in t.nodes() {
            assert_eq!(propagate(&t, &[], origin).1, 4);
        }
        let tree = edges(5, &[(1, 2), (1, 3), (3, 4), (3, 5)]);
        for origin in tree.nodes() {
            let (reached, crossings) = propagate(&tree, &[], origin);
            assert_eq!((reached.len(), crossings), (5, 4));
        }
    }

    #[test]
    fn five_ring_changes_cross_exactly_four_links() {
        for kind in [TopologyKind::Mesh, BOTH, FORWARD] {
            let t = topo(kind, 5);
            for origin in t.nodes() {
                assert_eq!(propagate(&t, &[], origin).1, 4, "{kind:?} origin {origin}");
            }
        }
    }

    #[test]
    fn delivery_reaches_every_live_node_with_nodes_down() {
        for kind in [TopologyKind::Mesh, BOTH, FORWARD] {
            let t = topo(kind, 5);
            for a in 1..=5 {
                let one = format!("n{a}");
                assert_delivers(&t, &[&one]);
                // Every pair of non-adjacent nodes.
                for b in (a + 2)..=5 {
                    if a == 1 && b == 5 {
                        continue;
                    }
                    let two = format!("n{b}");
                    assert_delivers(&t, &[&one, &two]);
                }
            }
            // Adjacent failures too, on a bigger ring.
            let t7 = topo(kind, 7);
            assert_delivers(&t7, &["n2", "n3"]);
            assert_delivers(&t7, &["n1", "n4", "n5"]);
        }
    }

    #[test]
    fn delivery_survives_every_failure_set_leaving_two_alive() {
        for kind in [TopologyKind::Mesh, BOTH, FORWARD] {
            for n in 2..=8 {
                let t = topo(kind, n);
                for mask in 0u32..(1 << n) {
                    let down: Vec<String> = (0..n)
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| format!("n{}", i + 1))
                        .collect();
                    if n - down.len() < 2 {
                        continue;
                    }
                    let down: Vec<&str> = down.iter().map(String::as_str).collect();
                    assert_delivers(&t, &down);
                }
            }
        }
    }

    #[test]
    fn forward_ring_with_one_down_crosses_one_link_per_live_node() {
        let t = topo(FORWARD, 5);
        for origin in ["n1", "n2", "n4", "n5"] {
            let (reached, crossings) = propagate(&t, &["n3"], origin);
            assert_eq!((reached.len(), crossings), (4, 3));
        }
    }
}
