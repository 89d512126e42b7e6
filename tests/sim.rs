//! Seeded deterministic simulation of the replication core with virtual time and faults.
//!
//! N (3..=5, one more once a node is added) core `Replica`s on a full mesh or a ring,
//! driven by a discrete-event queue: a simulated network (loss, duplication, delay and
//! reordering, links cut and healed, group partitions), crash and restart of nodes (a
//! crashed node loses its replica, its messages in flight and its unfinished persists and
//! compactions; what its `MemoryStore` committed survives, and a restart checks that every
//! stored document loads to the heads its index records, then builds a new replica with a
//! fresh actor over that store, which it may compact first), and concurrent writes on maps,
//! lists, text and counters to 4..=12 documents (two hot, the rest cold), initially stored
//! at differing subsets of the nodes. Every replica reads its documents from its store on
//! demand through a tiny cache (1..=3 documents or a few hundred bytes in most seeds), so
//! documents are dropped and read back at random moments; long logs are compacted while
//! running, as the node's driver does; bulk repair often runs with a small window. After
//! the faults everything heals, writes stop, and the run goes on until the cluster is
//! quiet; then it checks convergence (heads, values and reconciliation fingerprints), that
//! no acknowledged write was lost, counter bounds, and that every node's store reloads to
//! what its replica has. Across the suite, documents must have been evicted and reloaded,
//! and bulk repair must have asked for some.
//!
//! Most seeds place each document on R of the N nodes (`tests/sim/members.rs`): writes go
//! to any node (hints where it is not a replica), a node hands off what it stores but does
//! not replicate and deletes it, and half of those seeds add or remove a node while the
//! writes go on. Then convergence means: each document on its replicas only, with the same
//! heads and values there; every acknowledged write must end on all R replicas of the final
//! topology; and at every step (after each deletion and each ack, and at every tick) each
//! acknowledged write must be in at least as many stores as copies were acknowledged (up to
//! R). Across the suite, nodes must have been added and removed, hints written, and
//! documents handed off and deleted. On rings of more than 3 nodes, documents are handed
//! off hop by hop, and confirmations come back along the replicas.
//!
//! `cargo test --test sim` runs seeds 0..120 (about as long as 200 seeds of the simulation
//! before documents were cached). `CONCORDANT_SIM_SEEDS=N` runs N seeds from
//! `CONCORDANT_SIM_FIRST` (default 0); `CONCORDANT_SIM_SEED=S` replays one, and
//! `CONCORDANT_SIM_TRACE=1` prints its events; `CONCORDANT_SIM_KEEP_GOING=1` runs every
//! seed and lists the failing ones instead of stopping at the first.
//!
//! Owns this file and `tests/sim/` (world, members, workload, checks, trace); touches
//! nothing else: it drives the core only through its public API and the wire codec.

#[path = "sim/check.rs"]
mod check;
#[path = "sim/members.rs"]
mod members;
#[path = "sim/trace.rs"]
mod trace;
#[path = "sim/workload.rs"]
mod workload;
#[path = "sim/world.rs"]
mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};

use concordant::core::Replica;

use automerge::ChangeHash;

use members::Change;
use world::{Sim, Totals};

/// Virtual milliseconds between the world's ticks (faults, and checks for the run's end).
const TICK_MS: u64 = 100;
/// Length of the phase with writes and faults.
const FAULT_MS: u64 = 5_000;
/// Bound on the quiet phase.
const HEAL_LIMIT_MS: u64 = 120_000;
/// Bound on messages delivered in one run.
const MAX_MESSAGES: u64 = 100_000;

/// What a finished run reports.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    nodes: usize,
    docs: usize,
    ring: bool,
    writes: usize,
    acked: usize,
    delivered: u64,
    crashes: u64,
    acks: u64,
    heads: Vec<(String, Vec<ChangeHash>)>,
    /// Virtual ms from healing to quiet.
    heal_ms: u64,
    /// Counters of every replica of the run.
    totals: Totals,
    /// Each document on this many nodes (`None`: on all).
    replicas: Option<usize>,
    /// The node added or removed, and when.
    changed: Option<(Change, u64)>,
    /// Writes at a node that does not replicate their document.
    hinted: usize,
    /// Documents handed off and dropped by a node, and deleted from its store.
    drops: u64,
    deletions: u64,
}

fn run_seed(seed: u64, trace: bool) -> Result<Summary, String> {
    let mut sim = Sim::new(seed, trace);
    sim.run_until(FAULT_MS, |_| false)?;
    let crashes: u64 = sim.nodes.iter().map(|n| n.life).sum();
    sim.heal_all();
    let healed_at = sim.now;
    let deadline = sim.now + HEAL_LIMIT_MS;
    if !sim.run_until(deadline, Sim::converged)? {
        let heads: Vec<String> = (0..sim.nodes.len())
            .map(|i| {
                let n = &sim.nodes[i];
                let strays = n.replica.as_ref().map_or(0, Replica::stray_count);
                format!(
                    "{}{}: {:?} ({strays} strays)",
                    n.name,
                    if n.gone { " (gone)" } else { "" },
                    sim.all_heads(i)
                )
            })
            .collect();
        return Err(format!(
            "no convergence {} virtual s after healing ({} messages in flight, {}{})\n{}",
            HEAL_LIMIT_MS / 1000,
            sim.in_flight,
            sim.placement_errors()
                .err()
                .unwrap_or_else(|| "documents on their replicas".into()),
            sim.retiring.map_or(String::new(), |k| format!(
                ", removed n{k} still handing off"
            )),
            heads.join("\n")
        ));
    }
    sim.check()?;
    Ok(sim.summary(crashes, healed_at))
}

/// Runs one seed; a failure (an error or a panic) comes back as its message with the seed.
fn run_caught(seed: u64, trace: bool) -> Result<Summary, String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| run_seed(seed, trace)));
    let failure = match outcome {
        Ok(Ok(summary)) => return Ok(summary),
        Ok(Err(msg)) => msg,
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into()),
    };
    Err(format!(
        "simulation seed {seed} failed: {failure}\nreplay: CONCORDANT_SIM_SEED={seed} \
         CONCORDANT_SIM_TRACE=1 cargo test --test sim -- --nocapture"
    ))
}

fn run_checked(seed: u64, trace: bool) -> Summary {
    run_caught(seed, trace).unwrap_or_else(|e| panic!("{e}"))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

#[test]
fn simulated_clusters_converge_without_losing_acked_writes() {
    let trace = std::env::var("CONCORDANT_SIM_TRACE").is_ok_and(|v| v == "1");
    let seeds: Vec<u64> = match env_u64("CONCORDANT_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("CONCORDANT_SIM_FIRST").unwrap_or(0);
            (first..first + env_u64("CONCORDANT_SIM_SEEDS").unwrap_or(120)).collect()
        }
    };
    // With CONCORDANT_SIM_KEEP_GOING=1 every seed runs and the failing ones are listed.
    let keep_going = std::env::var("CONCORDANT_SIM_KEEP_GOING").is_ok_and(|v| v == "1");
    let mut failed = Vec::new();
    let mut total = Summary::default();
    let (mut rings, mut max_heal_ms) = (0, 0);
    let (mut placed, mut added, mut removed) = (0, 0, 0);
    for &seed in &seeds {
        let s = match run_caught(seed, trace) {
            Ok(s) => s,
            Err(e) if keep_going => {
                println!("{e}");
                failed.push(seed);
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        if seeds.len() == 1 {
            println!("seed {seed}: {s:?}");
        }
        total.writes += s.writes;
        total.acked += s.acked;
        total.crashes += s.crashes;
        total.acks += s.acks;
        total.delivered += s.delivered;
        total.totals.add(&s.totals);
        total.hinted += s.hinted;
        total.drops += s.drops;
        total.deletions += s.deletions;
        placed += usize::from(s.replicas.is_some());
        added += usize::from(matches!(s.changed, Some((Change::Add, _))));
        removed += usize::from(matches!(s.changed, Some((Change::Remove(_), _))));
        rings += usize::from(s.ring);
        max_heal_ms = max_heal_ms.max(s.heal_ms);
    }
    println!(
        "{} seeds ({} rings): {} writes, {} persisted, {} crashes, {} acks from peers, \
         {} messages, slowest quiet after healing {} ms; {} documents read from stores, \
         {} dropped from memory, {} asked for by bulk repair ({} changes sent), {} diverged \
         repairs, {} reconciliations ({} bytes); {} seeds with R < N ({} added a node, {} \
         removed one): {} hinted writes, {} documents handed off and dropped ({} deleted from \
         stores)",
        seeds.len(),
        rings,
        total.writes,
        total.acked,
        total.crashes,
        total.acks,
        total.delivered,
        max_heal_ms,
        total.totals.doc_loads,
        total.totals.doc_evictions,
        total.totals.wants_sent,
        total.totals.repair_changes_sent,
        total.totals.repairs,
        total.totals.reconcile_rounds,
        total.totals.reconcile_bytes,
        placed,
        added,
        removed,
        total.hinted,
        total.drops,
        total.deletions,
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    if seeds.len() >= 20 {
        // The faults must matter: some writes were lost with a crash, peers acknowledged.
        assert!(total.acked < total.writes && total.acks > 0 && total.crashes > 0);
        // The cache and bulk repair must be exercised: documents dropped and read back,
        // documents asked for.
        let t = &total.totals;
        assert!(
            t.doc_evictions > 0 && t.doc_loads > 0,
            "no document was evicted and reloaded: {t:?}"
        );
        assert!(t.wants_sent > 0, "bulk repair never asked: {t:?}");
        // Placements must be exercised: seeds with R < N, nodes added and removed, hints
        // written, documents handed off and deleted where they are not replicated.
        assert!(
            placed > 0 && added > 0 && removed > 0,
            "{placed} seeds with R < N, {added} added a node, {removed} removed one"
        );
        assert!(
            total.hinted > 0 && total.drops > 0 && total.deletions > 0,
            "{} hinted writes, {} documents handed off, {} deleted",
            total.hinted,
            total.drops,
            total.deletions
        );
    }
}

#[test]
fn same_seed_same_run() {
    for seed in [3, 17] {
        assert_eq!(run_checked(seed, false), run_checked(seed, false));
    }
}
