//! Runs `concordant bench` once at a tiny size so it cannot rot, and checks the SPEC's
//! JSON fields, the `--plot` SVG and a tiny `--sweep` through the built binary.

use std::process::Command;

use concordant::bench::{plot, run, BenchOptions};
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
        if topology == TopologyKind::Mesh {
            check_plot(&report);
        }
    }
}

/// The SVG of a real run has both panels, their text and one line per node.
fn check_plot(report: &concordant::bench::BenchReport) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.svg");
    plot::write_svg(report, &path).expect("plot written");
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for text in [
        plot::CDF_TITLE,
        plot::PROGRESS_TITLE,
        "latency (µs, log scale)",
        "fraction of writes",
        "changes seen",
        "\nn1\n",
        "\nn3\n",
    ] {
        assert!(svg.contains(text), "{text:?} missing from the SVG");
    }
    assert!(svg.contains("<text") && svg.contains("<polyline"));

    let bad = dir.path().join("no-such-dir").join("bench.svg");
    let err = plot::write_svg(report, &bad).expect_err("a missing directory is an error");
    assert!(
        err.to_string().contains(&bad.display().to_string()),
        "{err}"
    );
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

/// Runs `concordant bench --sweep` with the given extra arguments; returns the exit
/// success, stdout and stderr.
fn sweep(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_concordant"))
        .args([
            "bench",
            "--sweep",
            "--sweep-topologies",
            "mesh",
            "--sweep-docs",
            "1",
        ])
        .args(["--sweep-nodes", "2,3", "--writes", "40", "--samples", "5"])
        .args(args)
        .output()
        .expect("concordant runs");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn tiny_sweep_prints_a_row_per_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sweep.md");
    let (ok, stdout, stderr) = sweep(&["--sweep-timeout", "120", "--out", file.to_str().unwrap()]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for (row, nodes) in rows.iter().zip([2, 3]) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(
            cells[1..5],
            [nodes.to_string().as_str(), "mesh", "1", "40"],
            "{row}"
        );
        assert_eq!(cells[11], "true", "{row}");
    }
    assert_eq!(
        stderr.matches("sweep [").count(),
        4,
        "a line as each config starts and ends: {stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim_end(),
        stdout.trim_end()
    );
}

#[test]
fn a_failing_configuration_is_reported_and_the_sweep_goes_on() {
    // With no time at all every child is killed: each becomes a failed row.
    let (ok, stdout, _) = sweep(&["--sweep-timeout", "0", "--json"]);
    assert!(!ok, "a failed configuration fails the sweep");
    let rows: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON array");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in rows {
        assert!(
            row["error"].as_str().unwrap().contains("timed out"),
            "{row}"
        );
        assert!(row.get("converged").is_none(), "{row}");
    }
}
