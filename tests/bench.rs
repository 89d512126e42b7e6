//! Runs `concordant bench` once at a tiny size so it cannot rot, and checks the SPEC's
//! JSON fields.

use concordant::bench::{run, BenchOptions};
use concordant::config::{RingDirection, TopologyKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_runs_and_reports_every_field() {
    for topology in [TopologyKind::Mesh, TopologyKind::Ring(RingDirection::Both)] {
        let opts = BenchOptions {
            nodes: 3,
            topology,
            docs: 2,
            writes: 60,
            rate: None,
            latency_samples: 5,
            progress: false,
        };
        let report = tokio::time::timeout(std::time::Duration::from_secs(60), run(&opts))
            .await
            .expect("bench finished within 60 s")
            .expect("bench ran");
        assert!(report.converged, "{}", report.human());
        assert_eq!(report.latency_samples, 5);
        assert!(report.latency_p50_us > 0 && report.latency_p50_us <= report.latency_max_us);
        assert!(report.writes_per_s > 0.0 && report.bytes_per_write > 0.0);
        assert!(report.catchup_s > 0.0);
        let json: serde_json::Value =
            serde_json::from_str(&report.summary_json()).expect("one line of JSON");
        for field in [
            "system",
            "nodes",
            "topology",
            "docs",
            "writes",
            "latency_p50_us",
            "latency_p99_us",
            "latency_max_us",
            "converge_s",
            "writes_per_s",
            "bytes_per_write",
            "catchup_s",
            "converged",
        ] {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        assert_eq!(json["system"], "concordant");
        assert_eq!(json["nodes"], 3);
        assert!(
            json.get("latencies_us").is_none(),
            "--json stays one short line"
        );
    }
}

#[tokio::test]
async fn bad_options_are_refused() {
    let opts = BenchOptions {
        nodes: 1,
        topology: TopologyKind::Mesh,
        docs: 1,
        writes: 1,
        rate: None,
        latency_samples: 1,
        progress: false,
    };
    assert!(run(&opts).await.is_err());
}
