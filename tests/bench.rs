//! Runs `concordant bench` once at a tiny size so it cannot rot, and checks the SPEC's
//! JSON fields, the `--plot` SVG and a tiny `--sweep` through the built binary. The runs
//! are too small for their figures to mean anything: only presence and sanity are checked.

use std::process::Command;

use concordant::bench::{plot, run, BenchOptions};
use concordant::config::{RingDirection, TopologyKind};

/// Runs the benchmark (within a minute) and checks that it converged.
async fn converged_run(opts: &BenchOptions) -> concordant::bench::BenchReport {
    let report = tokio::time::timeout(std::time::Duration::from_secs(60), run(opts))
        .await
        .expect("bench finished within 60 s")
        .expect("bench ran");
    assert!(report.converged, "{}", report.human());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_runs_and_reports_every_field() {
    // The mesh writes to preloaded documents, the ring to new ones.
    for (topology, preload) in [
        (TopologyKind::Mesh, 200),
        (TopologyKind::Ring(RingDirection::Both), 0),
    ] {
        let opts = BenchOptions {
            nodes: 3,
            topology,
            docs: 2,
            writes: 60,
            latency_samples: 5,
            preload,
            // A short anti-entropy period keeps the idle window (two periods) short.
            idle_secs: 0.5,
            anti_entropy_ms: 500,
            ..BenchOptions::default()
        };
        let report = converged_run(&opts).await;
        assert_eq!(report.latency_samples, 5);
        assert!(report.latency_p50_us > 0 && report.latency_p50_us <= report.latency_max_us);
        assert!(report.writes_per_s > 0.0 && report.bytes_per_write > 0.0);
        assert!(report.catchup_s > 0.0);
        assert!(report.restart_s > 0.0 && report.first_link_s >= report.restart_s);
        assert!(report.idle_bytes_per_s >= 0.0 && report.idle_bytes_per_s.is_finite());
        assert!(report.idle_window_s >= 1.0, "two anti-entropy periods");
        assert_eq!(report.preload, preload);
        assert!(report.preload_s >= 0.0 && (preload == 0) == (report.preload_s == 0.0));
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
        let memory = cfg!(target_os = "linux").then_some("memory_per_node_bytes");
        for field in memory.into_iter().chain([
            "idle_bytes_per_s",
            "restart_s",
            "first_link_s",
            "preload",
            "preload_s",
            "ack_all_p50_us",
            "ack_all_p99_us",
        ]) {
            assert!(
                json.get(field).is_some_and(serde_json::Value::is_number),
                "{field} is not a number in {json}"
            );
        }
        assert_eq!(json["preload"], preload);
        assert_eq!(json["system"], "concordant");
        assert_eq!(json["nodes"], 3);
        assert!(
            json.get("latencies_us").is_none(),
            "--json stays one short line"
        );
        for field in ["replicas", "stored_docs_per_node", "catchup_writes"] {
            assert!(
                json.get(field).is_none(),
                "{field} without --replicas: {json}"
            );
        }
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
        ..BenchOptions::default()
    };
    assert!(run(&opts).await.is_err());
    let opts = BenchOptions {
        nodes: 2,
        anti_entropy_ms: 0,
        ..BenchOptions::default()
    };
    assert!(run(&opts).await.is_err());
}

/// `--replicas 2` of 4 nodes: each document on two of them, written and compared at its
/// replicas only, so a node stores half of them (exactly, on average over the nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_with_two_replicas_of_four_nodes_converges_on_half_the_documents() {
    let opts = BenchOptions {
        nodes: 4,
        topology: TopologyKind::Ring(RingDirection::Both),
        replicas: Some(2),
        docs: 20,
        writes: 80,
        latency_samples: 5,
        idle_secs: 0.5,
        anti_entropy_ms: 500,
        ..BenchOptions::default()
    };
    let report = converged_run(&opts).await;
    assert_eq!(report.replicas, Some(2));
    let stored = report.stored_docs_per_node.expect("measured");
    assert!((stored - 0.5).abs() <= 0.2, "{}", report.human());
    assert!(report.writes_per_s > 0.0 && report.bytes_per_write > 0.0);
    let behind = report.catchup_writes.expect("counted");
    assert!(
        0 < behind && behind < 80,
        "the stopped node missed its documents' writes only"
    );
    assert!(report.human().contains("each document on 2 of 4 nodes"));
    let json: serde_json::Value = serde_json::from_str(&report.summary_json()).unwrap();
    assert_eq!(json["replicas"], 2);
    assert!(json["stored_docs_per_node"].is_number(), "{json}");
}

/// Runs `concordant bench` at a tiny size with the given extra arguments; returns the exit
/// success, stdout and stderr.
fn tiny_bench(args: &[&str]) -> (bool, String, String) {
    let base = ["bench", "--docs", "20", "--writes", "80", "--samples", "5"];
    run_bench(&base, args)
}

/// Runs `concordant` with `base`, a short idle window and anti-entropy period, then
/// `args`; returns the exit success, stdout and stderr.
fn run_bench(base: &[&str], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_concordant"))
        .args(base)
        .args(["--idle-secs", "0.5", "--anti-entropy-ms", "500"])
        .args(args)
        .output()
        .expect("concordant runs");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The report's JSON: the last line of a bench's stdout.
fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(line).expect("one line of JSON")
}

/// `--link-delay-ms 20`: every directed link through a relay delaying each datagram by
/// 20 ms. The run completes and reports its links; nothing can be seen sooner than one
/// delay after it was written, nor acknowledged by every node sooner than a round trip.
#[test]
fn a_bench_over_slow_links_completes_and_reports_them() {
    let (ok, stdout, stderr) = tiny_bench(&[
        "--nodes",
        "3",
        "--ack-samples",
        "5",
        "--link-delay-ms",
        "20",
        "--json",
    ]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let json = last_json(&stdout);
    assert_eq!(json["converged"], true, "{json}");
    assert_eq!(json["link_delay_ms"], 20, "{json}");
    assert_eq!(json["link_jitter_ms"], 0, "{json}");
    assert_eq!(json["link_loss_pct"], 0.0, "{json}");
    let number = |field: &str| {
        json[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} is not a number in {json}"))
    };
    assert!(number("messages_per_write") > 0.0, "{json}");
    // The same by kind: pushes among them, summing to the whole.
    let kinds = json["messages_by_kind"]
        .as_object()
        .expect("messages_by_kind");
    assert!(
        kinds.get("push").and_then(|n| n.as_f64()) > Some(0.0),
        "{json}"
    );
    let sum: f64 = kinds.values().filter_map(|n| n.as_f64()).sum();
    assert!(
        (sum - number("messages_per_write")).abs() < 0.01 * kinds.len() as f64,
        "{json}"
    );
    for field in ["latency_p50_us", "latency_p99_us", "latency_max_us"] {
        assert!(number(field) >= 20_000.0, "{field} below the delay: {json}");
    }
    assert!(
        number("ack_all_p50_us") >= 40_000.0,
        "acknowledged by every node in less than a round trip: {json}"
    );
    assert!(number("link_rtt_ms") >= 40.0, "{json}");
    assert_eq!(json["cluster_view_up"], 3, "{json}");
    assert!(stdout.contains("every directed link through a relay, 20 ± 0 ms one way"));
}

/// A link whose round trip is longer than a dial's first handshake wait (1 s) comes up:
/// the next dials wait longer.
#[test]
fn links_with_round_trips_over_a_second_come_up() {
    let (ok, stdout, stderr) = run_bench(
        &["bench", "--docs", "5", "--writes", "20", "--samples", "3"],
        &[
            "--nodes",
            "2",
            "--ack-samples",
            "2",
            "--link-delay-ms",
            "600",
            "--json",
        ],
    );
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let json = last_json(&stdout);
    assert_eq!(json["converged"], true, "{json}");
    assert!(json["link_rtt_ms"].as_f64() >= Some(1_200.0), "{json}");
    assert_eq!(json["links_lost"], 0, "{json}");
}

#[test]
fn link_flags_no_network_has_are_refused() {
    for (args, message) in [
        (
            &["--link-delay-ms", "-5"][..],
            "--link-delay-ms must be between 0 and 10000 ms, not -5",
        ),
        (
            &["--link-delay-ms", "999999"][..],
            "--link-delay-ms must be between 0 and 10000 ms",
        ),
        (
            &["--link-delay-ms", "10", "--link-jitter-ms", "20"][..],
            "--link-jitter-ms (20) must not exceed --link-delay-ms (10)",
        ),
        (
            &["--link-delay-ms", "10", "--link-loss", "100"][..],
            "--link-loss is a percentage of datagrams dropped, at least 0 and below 100",
        ),
        (
            &["--link-delay-ms", "10", "--link-loss", "-1"][..],
            "--link-loss is a percentage",
        ),
        (&["--link-loss", "1"][..], "--link-delay-ms"),
    ] {
        let (ok, stdout, stderr) = tiny_bench(args);
        assert!(!ok, "{args:?} ran: {stdout}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stdout.contains("latency"), "refused before any phase");
    }
}

/// `--topology tree`: an `edges` topology laid out as a tree (here n1 with children n2 and
/// n3, n4 under n2), so writes cross up to three links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_over_a_tree_converges() {
    let opts = BenchOptions {
        nodes: 4,
        topology: TopologyKind::Edges,
        tree_fanout: 2,
        docs: 2,
        writes: 40,
        latency_samples: 4,
        ack_samples: 4,
        idle_secs: 0.5,
        anti_entropy_ms: 500,
        ..BenchOptions::default()
    };
    let report = converged_run(&opts).await;
    assert_eq!(report.tree_fanout, Some(2));
    assert_eq!(report.ack_all_samples, 4);
    assert!(report.human().contains("edges (a tree, fanout 2)"));
    let json: serde_json::Value = serde_json::from_str(&report.summary_json()).unwrap();
    assert_eq!(json["topology"], "edges");
    assert!(
        json.get("link_delay_ms").is_none() && json.get("messages_per_write").is_none(),
        "no relays, no link figures: {json}"
    );
}

#[test]
fn the_cli_places_preloaded_documents_on_their_replicas() {
    let (ok, stdout, stderr) = tiny_bench(&[
        "--nodes",
        "4",
        "--topology",
        "mesh",
        "--replicas",
        "2",
        "--preload",
        "200",
        "--json",
    ]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains(
            "preload: 200/200 documents, each in the stores of its 2 replicas (of 4 nodes)"
        ),
        "{stderr}"
    );
    let json = last_json(&stdout);
    assert_eq!(json["converged"], true);
    assert_eq!(json["replicas"], 2);
    let stored = json["stored_docs_per_node"].as_f64().expect("a number");
    assert!((stored - 0.5).abs() <= 0.2, "{json}");
}

#[test]
fn replicas_the_topology_cannot_place_are_refused() {
    for (replicas, topology, message) in [
        (
            "0",
            "mesh",
            "replicas = 0: must be between 1 and the number of nodes (4)",
        ),
        (
            "9",
            "mesh",
            "replicas = 9: must be between 1 and the number of nodes (4)",
        ),
        (
            "2",
            "ring-forward",
            "replicas below the number of nodes needs",
        ),
    ] {
        let (ok, stdout, stderr) = tiny_bench(&[
            "--nodes",
            "4",
            "--topology",
            topology,
            "--replicas",
            replicas,
        ]);
        assert!(!ok, "--replicas {replicas} ran: {stdout}");
        assert!(
            stderr.contains("--replicas") && stderr.contains(message),
            "--replicas {replicas} --topology {topology}: {stderr}"
        );
        assert!(
            !stdout.contains("latency"),
            "refused before any phase: {stdout}"
        );
    }
}

/// Runs `concordant bench --sweep` with the given extra arguments; returns the exit
/// success, stdout and stderr.
fn sweep(args: &[&str]) -> (bool, String, String) {
    let base = [
        "bench",
        "--sweep",
        "--sweep-topologies",
        "mesh",
        "--sweep-docs",
        "1",
        "--sweep-nodes",
        "2,3",
        "--writes",
        "40",
        "--samples",
        "5",
    ];
    run_bench(&base, args)
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
            cells[1..6],
            [nodes.to_string().as_str(), "mesh", "1", "0", "40"],
            "{row}"
        );
        for (i, name) in [(11, "idle B/s"), (12, "restart s"), (13, "first link s")] {
            assert!(cells[i].parse::<f64>().is_ok(), "{name}: {row}");
        }
        assert_eq!(cells[15], "true", "{row}");
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

#[test]
fn the_cli_preloads_in_a_child_process_and_reports_the_new_fields() {
    let out = Command::new(env!("CARGO_BIN_EXE_concordant"))
        .args(["bench", "--nodes", "2", "--docs", "3", "--writes", "30"])
        .args(["--samples", "3", "--preload", "150", "--json"])
        .args(["--idle-secs", "0.5", "--anti-entropy-ms", "500"])
        .output()
        .expect("concordant runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("preload: 150/150 documents in each of 2 stores"),
        "the child's progress is shown: {stderr}"
    );
    let json = last_json(&stdout);
    assert_eq!(json["preload"], 150);
    assert_eq!(json["converged"], true);
    assert!(json["preload_s"].as_f64().unwrap() > 0.0);
    let restart = json["restart_s"].as_f64().unwrap();
    assert!(restart > 0.0 && json["first_link_s"].as_f64().unwrap() >= restart);
    assert!(json["idle_bytes_per_s"].as_f64().unwrap() >= 0.0);
    assert!(stdout.contains("idle: ") && stdout.contains("first link after"));
}

/// `concordant bench --sync-clients K --sync-hold N --json` at a tiny size: automerge-repo
/// clients over `GET /v1/sync` edit across the nodes and the held clients are all there.
#[test]
fn tiny_sync_clients_bench_reports_latency_and_held_clients() {
    let out = Command::new(env!("CARGO_BIN_EXE_concordant"))
        .args(["bench", "--sync-clients", "3", "--sync-hold", "20"])
        .args(["--sync-secs", "2", "--json"])
        .output()
        .expect("concordant runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("bench: sync: "), "progress lines: {stderr}");
    assert!(stdout.contains("hold: 20/20 clients on n1"), "{stdout}");
    let json = last_json(&stdout);
    assert_eq!(json["sync_clients_per_node"], 3);
    assert_eq!(json["nodes"], 3);
    let samples = json["sync_latency_samples"].as_u64().unwrap();
    assert!(samples > 0, "{json}");
    let writes = json["sync_writes"].as_u64().unwrap();
    assert_eq!(
        samples,
        writes * 2,
        "every change reached both other clients: {json}"
    );
    assert_eq!(json["sync_latency_missing"], 0);
    assert_eq!(json["sync_client_failures"], 0);
    let ms = |field: &str| {
        json[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field}: {json}"))
    };
    let (p50, p99, max) = (
        ms("sync_latency_p50_ms"),
        ms("sync_latency_p99_ms"),
        ms("sync_latency_max_ms"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{json}");
    assert!(ms("sync_setup_s") > 0.0);
    assert_eq!(json["sync_hold_requested"], 20);
    assert_eq!(json["sync_held_clients"], 20);
    assert_eq!(json["sync_hold_node_clients"], 20);
    assert_eq!(json["sync_hold_failures"], 0);
    assert_eq!(json["sync_hold_doc"], "own");
    assert!(ms("sync_hold_s") > 0.0);
}

/// Held clients that share one document all get one client's change (the fan-out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_hold_of_a_shared_document_fans_a_change_out_to_every_client() {
    use concordant::bench::clients::{run, SyncBenchOptions};
    let opts = SyncBenchOptions {
        clients_per_node: 0,
        hold: 12,
        hold_shared: true,
        ..SyncBenchOptions::default()
    };
    let report = tokio::time::timeout(std::time::Duration::from_secs(60), run(&opts))
        .await
        .expect("finished within 60 s")
        .expect("ran");
    assert!(report.ok(), "{}", report.human());
    assert_eq!(report.sync_held_clients, 12);
    assert_eq!(report.sync_hold_fanout_reached, 11);
    assert!(report.sync_hold_fanout_ms.is_some_and(|ms| ms > 0.0));
    assert_eq!(report.sync_latency_samples, 0, "no edit phase");
    let json: serde_json::Value = serde_json::from_str(&report.summary_json()).unwrap();
    assert_eq!(json["sync_hold_doc"], "shared");

    let nothing = SyncBenchOptions {
        clients_per_node: 0,
        hold: 0,
        ..SyncBenchOptions::default()
    };
    assert!(
        run(&nothing).await.is_err(),
        "nothing to measure is refused"
    );
}

#[test]
fn sync_clients_flags_do_not_mix_with_the_convergence_bench() {
    for extra in [["--nodes", "5"], ["--docs", "10"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_concordant"))
            .args(["bench", "--sync-clients", "3"])
            .args(extra)
            .output()
            .expect("concordant runs");
        assert!(!out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("cannot be used with"), "{stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_concordant"))
        .args(["bench", "--sync-secs", "3"])
        .output()
        .expect("concordant runs");
    assert!(
        !out.status.success(),
        "--sync-secs needs --sync-clients or --sync-hold"
    );
}
