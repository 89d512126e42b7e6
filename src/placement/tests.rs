use std::collections::BTreeMap;

use super::*;

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

/// Partitions held per node.
fn loads(placement: &Placement, nodes: &[String]) -> Vec<usize> {
    nodes.iter().map(|n| placement.held_by(n).len()).collect()
}

/// Every (partition, node) a placement has that `before` has not: the copies a change
/// of nodes makes.
fn gained(before: &Placement, after: &Placement) -> Vec<(Partition, String)> {
    let mut copies = Vec::new();
    for p in (0..after.partitions()).map(Partition) {
        for id in after.replicas(p) {
            if !before.holds(id, p) {
                copies.push((p, id.to_string()));
            }
        }
    }
    copies
}

fn ring_of(nodes: &[String]) -> Vec<(String, Token)> {
    nodes
        .iter()
        .cloned()
        .zip(even_tokens(nodes.len()))
        .collect()
}

#[test]
fn documents_spread_over_partitions_and_stay_put() {
    let mut counts = vec![0usize; usize::from(PARTITIONS)];
    for i in 0..200_000 {
        let p = partition_of(&format!("doc-{i}"), PARTITIONS);
        counts[usize::from(p.0)] += 1;
    }
    // 195 per partition on average.
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(*min > 130 && *max < 260, "{min}..{max}");
    // Pinned: where a document lives must never change between builds.
    assert_eq!(
        partition_of("doc-1", PARTITIONS),
        partition_of("doc-1", PARTITIONS)
    );
    let pinned: Vec<u16> = ["", "a", "doc-1", "user/42"]
        .iter()
        .map(|id| partition_of(id, PARTITIONS).0)
        .collect();
    assert_eq!(pinned, PINNED_PARTITIONS);
}

/// `partition_of` of "", "a", "doc-1" and "user/42" among 1,024 partitions.
const PINNED_PARTITIONS: [u16; 4] = [980, 11, 960, 78];

#[test]
fn rendezvous_balances_nine_nodes_within_a_quarter() {
    for prefix in ["n", "node-", "eu-west-", "10.0.0.", "a"] {
        let nodes = ids(prefix, 9);
        let placement = Placement::rendezvous(&nodes, 3, PARTITIONS).unwrap();
        let loads = loads(&placement, &nodes);
        assert_eq!(loads.iter().sum::<usize>(), 3 * usize::from(PARTITIONS));
        let (min, max) = (*loads.iter().min().unwrap(), *loads.iter().max().unwrap());
        assert!(
            max as f64 <= 1.25 * min as f64,
            "{prefix}: {loads:?} (max/min {:.2})",
            max as f64 / min as f64
        );
        for p in (0..PARTITIONS).map(Partition) {
            let replicas: BTreeSet<&str> = placement.replicas(p).collect();
            assert_eq!(replicas.len(), 3, "three distinct replicas of {p:?}");
        }
    }
}

#[test]
fn rendezvous_moves_only_what_a_joining_or_leaving_node_takes() {
    let nine = ids("n", 9);
    let ten = ids("n", 10);
    let before = Placement::rendezvous(&nine, 3, PARTITIONS).unwrap();
    let after = Placement::rendezvous(&ten, 3, PARTITIONS).unwrap();
    let copies = gained(&before, &after);
    // Only the new node gains, and it takes its share: the ideal R/N of the partitions.
    assert!(copies.iter().all(|(_, id)| id == "n10"), "{copies:?}");
    let ideal = 3.0 * f64::from(PARTITIONS) / 10.0;
    let moved = copies.len() as f64;
    assert!(
        moved <= 1.3 * ideal && moved >= 0.7 * ideal,
        "{moved} against {ideal}"
    );
    // The order of the nodes does not matter.
    let mut shuffled = ten.clone();
    shuffled.reverse();
    let same = Placement::rendezvous(&shuffled, 3, PARTITIONS).unwrap();
    for p in (0..PARTITIONS).map(Partition) {
        let a: BTreeSet<&str> = after.replicas(p).collect();
        let b: BTreeSet<&str> = same.replicas(p).collect();
        assert_eq!(a, b);
    }
    // A node leaving: each partition it held gains one node, nothing else moves.
    let copies = gained(&after, &before);
    assert_eq!(copies.len(), after.held_by("n10").len());
    for (p, _) in &copies {
        assert!(after.holds("n10", *p));
    }
}

#[test]
fn even_ring_tokens_balance_exactly_and_windows_follow_the_ring() {
    let nodes = ids("n", 9);
    let placement = Placement::ring(&ring_of(&nodes), 3, PARTITIONS).unwrap();
    let loads = loads(&placement, &nodes);
    let (min, max) = (*loads.iter().min().unwrap(), *loads.iter().max().unwrap());
    assert!(max - min <= 3, "{loads:?}");
    for p in (0..PARTITIONS).map(Partition) {
        let window: Vec<usize> = placement
            .replicas(p)
            .map(|id| nodes.iter().position(|n| n == id).unwrap())
            .collect();
        for pair in window.windows(2) {
            assert_eq!(
                pair[1],
                (pair[0] + 1) % 9,
                "{p:?}: {window:?} is consecutive"
            );
        }
    }
    // The first arc (from token 0) holds the first partitions.
    assert_eq!(
        placement.replicas(Partition(0)).collect::<Vec<_>>(),
        ["n1", "n2", "n3"]
    );
    assert_eq!(
        placement
            .replicas(Partition(PARTITIONS - 1))
            .collect::<Vec<_>>(),
        ["n9", "n1", "n2"]
    );
}

#[test]
fn a_node_joining_the_ring_takes_half_an_arc_and_nothing_else_moves() {
    let nodes = ids("n", 9);
    let ring = ring_of(&nodes);
    let before = Placement::ring(&ring, 3, PARTITIONS).unwrap();
    // n10 joins between n4 and n5.
    let token = token_between(ring[3].1, ring[4].1);
    let mut joined = ring.clone();
    joined.insert(4, ("n10".to_string(), token));
    let after = Placement::ring(&joined, 3, PARTITIONS).unwrap();
    let copies = gained(&before, &after);
    assert!(copies.iter().all(|(_, id)| id == "n10"), "{copies:?}");
    // It is in the windows of its own half arc, of n4's other half and of n3's whole arc:
    // 2/9 of the partitions (under the ideal R/(N+1) = 3/10, so the cluster is not
    // balanced again until the joiner's arc grows), each one copy.
    let held = after.held_by("n10").len();
    assert_eq!(copies.len(), held);
    let expected = 2.0 * f64::from(PARTITIONS) / 9.0;
    assert!(
        (held as f64 - expected).abs() <= 3.0,
        "{held} against {expected}"
    );
    assert!(held as f64 <= 1.3 * 3.0 * f64::from(PARTITIONS) / 10.0);
    // Each partition it joined dropped exactly one node.
    for (p, _) in &copies {
        let old: BTreeSet<&str> = before.replicas(*p).collect();
        let new: BTreeSet<&str> = after.replicas(*p).collect();
        assert_eq!(old.difference(&new).count(), 1, "{p:?}");
    }
    // Leaving again: its partitions each gain one node back, nothing else moves.
    let copies = gained(&after, &before);
    assert_eq!(copies.len(), held);
}

#[test]
fn a_node_leaving_the_ring_hands_each_partition_to_one_successor() {
    let nodes = ids("n", 9);
    let ring = ring_of(&nodes);
    let before = Placement::ring(&ring, 3, PARTITIONS).unwrap();
    let mut left = ring.clone();
    left.remove(4); // n5
    let after = Placement::ring(&left, 3, PARTITIONS).unwrap();
    let copies = gained(&before, &after);
    assert_eq!(copies.len(), before.held_by("n5").len());
    let mut per_partition = BTreeMap::new();
    for (p, _) in &copies {
        *per_partition.entry(*p).or_insert(0) += 1;
        assert!(before.holds("n5", *p), "{p:?} did not involve n5");
    }
    assert!(per_partition.values().all(|&n| n == 1));
}

#[test]
fn token_between_wraps_around_the_circle() {
    assert_eq!(token_between(0, 100), 50);
    assert_eq!(token_between(u64::MAX - 9, 10), 0);
    assert_eq!(token_between(7, 7), 7 + u64::MAX / 2);
    let tokens = even_tokens(4);
    assert_eq!(tokens, [0, 1 << 62, 1 << 63, 3 << 62]);
}

#[test]
fn impossible_placements_are_refused() {
    let nodes = ids("n", 3);
    assert_eq!(
        Placement::rendezvous(&nodes, 0, PARTITIONS),
        Err(PlacementError::Replicas {
            replicas: 0,
            nodes: 3
        })
    );
    assert_eq!(
        Placement::rendezvous(&nodes, 4, PARTITIONS)
            .unwrap_err()
            .to_string(),
        "replicas = 4: must be between 1 and the number of nodes (3)"
    );
    assert_eq!(
        Placement::rendezvous(&nodes, 1, 0),
        Err(PlacementError::NoPartitions)
    );
    let twice = vec!["a".to_string(), "b".to_string(), "a".to_string()];
    assert_eq!(
        Placement::rendezvous(&twice, 1, PARTITIONS),
        Err(PlacementError::DuplicateNode("a".into()))
    );
    let mut ring = ring_of(&nodes);
    ring.swap(1, 2);
    assert!(matches!(
        Placement::ring(&ring, 2, PARTITIONS),
        Err(PlacementError::TokenOrder(_))
    ));
    // Any rotation of the ring is fine: order counts from the smallest token.
    let mut rotated = ring_of(&nodes);
    rotated.rotate_left(1);
    let a = Placement::ring(&ring_of(&nodes), 2, PARTITIONS).unwrap();
    let b = Placement::ring(&rotated, 2, PARTITIONS).unwrap();
    for p in (0..PARTITIONS).map(Partition) {
        assert_eq!(
            a.replicas(p).collect::<Vec<_>>(),
            b.replicas(p).collect::<Vec<_>>()
        );
    }
    // R = N: every node holds every partition.
    let all = Placement::rendezvous(&nodes, 3, 16).unwrap();
    assert!(nodes.iter().all(|n| all.held_by(n).len() == 16));
    assert_eq!(all.replicas(Partition(16)).count(), 0, "no such partition");
}

#[test]
fn shared_partitions_are_those_both_nodes_replicate() {
    let nodes = ids("n", 6);
    let placement = Placement::rendezvous(&nodes, 2, PARTITIONS).unwrap();
    let shared = placement.shared("n1", "n2");
    for p in (0..PARTITIONS).map(Partition) {
        assert_eq!(
            shared.contains(p),
            placement.holds("n1", p) && placement.holds("n2", p)
        );
    }
    assert!(!shared.is_empty());
    assert_eq!(placement.shared("n1", "zz"), PartitionSet::empty());
    let all: usize = nodes
        .iter()
        .flat_map(|a| nodes.iter().map(move |b| (a, b)))
        .filter(|(a, b)| a < b)
        .map(|(a, b)| placement.shared(a, b).len())
        .sum();
    assert_eq!(
        all,
        usize::from(PARTITIONS),
        "with R = 2 each partition is one pair's"
    );
    let doc = "some-doc";
    let replicas: Vec<&str> = placement.replicas_of(doc).collect();
    assert_eq!(replicas.len(), 2);
    assert!(replicas.iter().all(|r| placement.holds_doc(r, doc)));
}
