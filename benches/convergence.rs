//! Criterion benches of in-process convergence latency: real nodes in this process
//! ([`LocalCluster`]: QUIC with mutual TLS on 127.0.0.1, redb storage with fsync in a
//! temporary directory), a 3-node mesh and a 5-node two-way ring. One iteration is one
//! single-op write at one node (writers rotating) timed until every node shows it, by the
//! same [`LatencyProbe`] as the latency phase of `concordant bench`; each sample writes to
//! a fresh document.
//!
//! Run: `cargo bench --bench convergence`.

use std::time::Duration;

use concordant::bench::LatencyProbe;
use concordant::config::{RingDirection, TopologyKind, Tuning};
use concordant::local::LocalCluster;
use concordant::node::Node;
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::runtime::Runtime;

/// How long one write may take to reach every node before the bench fails.
const LIMIT: Duration = Duration::from_secs(10);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Starts `n` linked nodes in `kind` and benches one write until visible everywhere.
fn bench_cluster(c: &mut Criterion, name: &str, n: usize, kind: TopologyKind) {
    let rt = runtime();
    let tuning = Tuning {
        // Periodic anti-entropy stays out of these latency samples (`concordant bench`
        // runs it at the default period and measures its cost in an idle phase).
        anti_entropy_ms: 60_000,
        ..Tuning::default()
    };
    let (cluster, nodes) = rt.block_on(async {
        let cluster = LocalCluster::start("crit", n, kind, Vec::new(), None, tuning)
            .await
            .expect("cluster starts");
        let linked = cluster
            .wait_linked(Duration::from_secs(20))
            .await
            .expect("status");
        assert!(linked, "links did not come up within 20 s");
        let nodes: Vec<Node> = cluster.live().cloned().collect();
        (cluster, nodes)
    });
    let mut g = c.benchmark_group("convergence");
    g.sample_size(30);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(6));
    let mut sample = 0;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            // A fresh document per sample: Automerge's cost of applying a remote change
            // grows with the document's history, which would otherwise grow by thousands
            // of writes over the run and dominate the figure.
            sample += 1;
            let doc = format!("crit-latency-{sample}");
            rt.block_on(async {
                let mut probe = LatencyProbe::new(nodes.clone(), &doc)
                    .await
                    .expect("subscribes");
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += probe
                        .write(LIMIT)
                        .await
                        .expect("node running")
                        .expect("write visible on every node within the limit");
                }
                total
            })
        })
    });
    g.finish();
    rt.block_on(cluster.shutdown()).expect("clean shutdown");
}

fn mesh3(c: &mut Criterion) {
    bench_cluster(
        c,
        "3-node mesh, write until visible on all",
        3,
        TopologyKind::Mesh,
    );
}

fn ring5(c: &mut Criterion) {
    let ring = TopologyKind::Ring(RingDirection::Both);
    bench_cluster(
        c,
        "5-node ring (both ways), write until visible on all",
        5,
        ring,
    );
}

criterion_group!(benches, mesh3, ring5);
criterion_main!(benches);
