//! `concordant bench --sweep`: the benchmark over a grid of nodes × topology × documents,
//! each configuration in a fresh child process (`concordant bench ... --json`) so that its
//! memory figure is its own and a failing configuration is reported without ending the
//! sweep. Renders the results as a Markdown table or a JSON array.
//!
//! A configuration of [`PRELOAD_FROM`] documents or more preloads them (`--preload D`):
//! every node starts with D documents and the writes are spread over them, which is how
//! the sweep reaches scale without writing every document first.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::BenchError;
use crate::config::{RingDirection, TopologyKind};

/// Lines of a failed child's stderr kept in its row.
const STDERR_TAIL_LINES: usize = 12;

/// Document counts from which a configuration preloads its documents.
pub const PRELOAD_FROM: usize = 100_000;

/// Options of a sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The `concordant` executable run for each configuration.
    pub exe: PathBuf,
    /// Node counts of the grid.
    pub nodes: Vec<usize>,
    /// Topologies of the grid (mesh or ring).
    pub topologies: Vec<TopologyKind>,
    /// Document counts of the grid.
    pub docs: Vec<usize>,
    /// Writes of every configuration.
    pub writes: usize,
    /// Latency samples of every configuration.
    pub samples: usize,
    /// Writes per second to aim for, if any.
    pub rate: Option<u64>,
    /// Seconds of every configuration's idle window (`--idle-secs`).
    pub idle_secs: f64,
    /// Anti-entropy period of every configuration, ms (`--anti-entropy-ms`).
    pub anti_entropy_ms: u64,
    /// A configuration still running after this long is killed and reported as failed.
    pub timeout: Duration,
    /// Print a line to stderr as each configuration starts and ends.
    pub progress: bool,
}

/// The figures of one successful run, as its child printed them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepFigures {
    /// Median single-write latency until every node shows it, µs.
    pub latency_p50_us: u64,
    /// 99th percentile, µs.
    pub latency_p99_us: u64,
    /// Throughput phase: writes per second until every node has all.
    pub writes_per_s: f64,
    /// Bytes on the wire per write.
    pub bytes_per_write: f64,
    /// Catch-up time of a restarted node, seconds.
    pub catchup_s: f64,
    /// Peer bytes per node per second once converged and idle.
    #[serde(default)]
    pub idle_bytes_per_s: Option<f64>,
    /// Seconds from a node's restart until it serves.
    #[serde(default)]
    pub restart_s: Option<f64>,
    /// Seconds from a node's restart until its first link.
    #[serde(default)]
    pub first_link_s: Option<f64>,
    /// Resident memory of the child divided by its nodes, bytes.
    pub memory_per_node_bytes: Option<u64>,
    /// True only if every replica ended with identical heads.
    pub converged: bool,
}

/// One configuration of the sweep and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// Number of nodes.
    pub nodes: usize,
    /// Topology name.
    pub topology: String,
    /// Documents.
    pub docs: usize,
    /// Documents preloaded into every node's store.
    pub preload: usize,
    /// Writes.
    pub writes: usize,
    /// Wall time of the child process, seconds.
    pub wall_s: f64,
    /// The figures, if the child reported them.
    #[serde(flatten)]
    pub figures: Option<SweepFigures>,
    /// Why the configuration failed (with the tail of its stderr), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SweepRow {
    /// True if the child reported figures and every replica converged.
    pub fn converged(&self) -> bool {
        self.figures.as_ref().is_some_and(|f| f.converged)
    }
}

/// The CLI value of a benchmark topology.
fn topology_arg(topology: TopologyKind) -> Result<&'static str, BenchError> {
    match topology {
        TopologyKind::Mesh => Ok("mesh"),
        TopologyKind::Ring(RingDirection::Both) => Ok("ring"),
        TopologyKind::Ring(RingDirection::Forward) => Ok("ring-forward"),
        TopologyKind::Edges => Err(BenchError::Options(
            "the sweep runs mesh or ring topologies".into(),
        )),
    }
}

/// Runs every configuration of the grid in turn, each in its own child process.
/// Returns an error only for invalid options; a failing configuration is a failed row.
pub fn run(opts: &SweepOptions) -> Result<Vec<SweepRow>, BenchError> {
    if opts.nodes.is_empty() || opts.topologies.is_empty() || opts.docs.is_empty() {
        return Err(BenchError::Options(
            "the sweep grid is empty: give at least one node count, topology and doc count".into(),
        ));
    }
    if opts.nodes.iter().any(|&n| n < 2) {
        return Err(BenchError::Options(
            "--sweep-nodes must all be at least 2".into(),
        ));
    }
    if opts.docs.contains(&0) || opts.writes == 0 {
        return Err(BenchError::Options(
            "--sweep-docs and --writes must be at least 1".into(),
        ));
    }
    for &t in &opts.topologies {
        topology_arg(t)?;
    }
    let total = opts.nodes.len() * opts.topologies.len() * opts.docs.len();
    let mut rows = Vec::with_capacity(total);
    for &nodes in &opts.nodes {
        for &topology in &opts.topologies {
            for &docs in &opts.docs {
                let label = format!(
                    "[{}/{total}] {nodes} nodes, {topology}, {docs} docs, {} writes",
                    rows.len() + 1,
                    opts.writes
                );
                if opts.progress {
                    eprintln!("sweep {label}: running");
                }
                let row = run_one(opts, nodes, topology, docs)?;
                if opts.progress {
                    eprintln!("sweep {label}: {}", outcome(&row));
                }
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// A one-line outcome of a row for the progress output.
fn outcome(row: &SweepRow) -> String {
    match (&row.figures, &row.error) {
        (Some(f), None) => format!(
            "p50 {} µs, p99 {} µs, {:.0} writes/s, {:.0} B/write, catch-up {:.2} s, \
             idle {} B/s, restart {} s, first link {} s, converged {} ({:.1} s)",
            f.latency_p50_us,
            f.latency_p99_us,
            f.writes_per_s,
            f.bytes_per_write,
            f.catchup_s,
            cell(f.idle_bytes_per_s, 0),
            cell(f.restart_s, 3),
            cell(f.first_link_s, 3),
            f.converged,
            row.wall_s
        ),
        (_, Some(e)) => format!("FAILED after {:.1} s: {e}", row.wall_s),
        (None, None) => "no result".into(),
    }
}

/// Runs one configuration in a child process and reads its one line of JSON.
fn run_one(
    opts: &SweepOptions,
    nodes: usize,
    topology: TopologyKind,
    docs: usize,
) -> Result<SweepRow, BenchError> {
    let preload = if docs >= PRELOAD_FROM { docs } else { 0 };
    let mut cmd = Command::new(&opts.exe);
    cmd.arg("bench")
        .args(["--nodes", &nodes.to_string()])
        .args(["--topology", topology_arg(topology)?])
        .args(["--docs", &docs.to_string()])
        .args(["--writes", &opts.writes.to_string()])
        .args(["--samples", &opts.samples.to_string()])
        .args(["--preload", &preload.to_string()])
        .args(["--idle-secs", &opts.idle_secs.to_string()])
        .args(["--anti-entropy-ms", &opts.anti_entropy_ms.to_string()])
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(rate) = opts.rate {
        cmd.args(["--rate", &rate.to_string()]);
    }
    let mut row = SweepRow {
        nodes,
        topology: topology.to_string(),
        docs,
        preload,
        writes: opts.writes,
        wall_s: 0.0,
        figures: None,
        error: None,
    };
    let start = Instant::now();
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            row.error = Some(format!("cannot run {}: {e}", opts.exe.display()));
            return Ok(row);
        }
    };
    let finished = wait_bounded(child, opts.timeout);
    row.wall_s = start.elapsed().as_secs_f64();
    let (status, stdout, stderr) = match finished {
        Ok(done) => done,
        Err(e) => {
            row.error = Some(e);
            return Ok(row);
        }
    };
    let json_line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    match json_line.map(serde_json::from_str::<SweepFigures>) {
        Some(Ok(figures)) => row.figures = Some(figures),
        Some(Err(e)) => {
            row.error = Some(format!(
                "unreadable JSON from the child ({e}); stderr:\n{}",
                tail(&stderr)
            ))
        }
        None => {
            let why = match status {
                Some(code) => format!("exit status {code}"),
                None => format!(
                    "timed out after {} s and was killed",
                    opts.timeout.as_secs()
                ),
            };
            row.error = Some(format!("{why}; stderr:\n{}", tail(&stderr)));
        }
    }
    Ok(row)
}

/// The output of a finished or killed child: its exit code (None if killed after the
/// timeout), stdout and stderr.
type ChildOutput = (Option<i32>, String, String);

/// Waits for the child at most `timeout`, then kills it; both pipes are drained by threads
/// meanwhile so that a chatty child never blocks.
fn wait_bounded(mut child: Child, timeout: Duration) -> Result<ChildOutput, String> {
    let drain = |pipe: Option<Box<dyn Read + Send>>| -> JoinHandle<String> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status.code().unwrap_or(-1)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                let _ = child.kill();
                return Err(format!("cannot wait for the child: {e}"));
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((code, stdout, stderr))
}

/// The last lines of a child's stderr.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
    lines[from..].join("\n")
}

/// An optional figure with `decimals` decimals, or "n/a".
fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".into(), |v| format!("{v:.decimals$}"))
}

/// The rows as a Markdown table, failures explained below it.
pub fn markdown(rows: &[SweepRow]) -> String {
    let mut out = String::from(
        "| nodes | topology | docs | preload | writes | p50 µs | p99 µs | writes/s \
         | bytes/write | catch-up s | idle B/s | restart s | first link s | memory/node MiB \
         | converged |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: \
         | ---: | ---: | --- |\n",
    );
    let mut failures = String::new();
    for row in rows {
        let head = format!(
            "| {} | {} | {} | {} | {} |",
            row.nodes, row.topology, row.docs, row.preload, row.writes
        );
        match &row.figures {
            Some(f) => {
                let mem = cell(
                    f.memory_per_node_bytes
                        .map(|b| b as f64 / (1024.0 * 1024.0)),
                    1,
                );
                out.push_str(&format!(
                    "{head} {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {mem} | {} |\n",
                    f.latency_p50_us,
                    f.latency_p99_us,
                    f.writes_per_s,
                    f.bytes_per_write,
                    f.catchup_s,
                    cell(f.idle_bytes_per_s, 0),
                    cell(f.restart_s, 3),
                    cell(f.first_link_s, 3),
                    f.converged
                ));
            }
            None => {
                out.push_str(&format!(
                    "{head} – | – | – | – | – | – | – | – | – | failed |\n"
                ));
            }
        }
        if let Some(e) = &row.error {
            failures.push_str(&format!(
                "\n{} nodes, {}, {} docs: {}\n",
                row.nodes,
                row.topology,
                row.docs,
                e.trim_end()
            ));
        }
    }
    if !failures.is_empty() {
        out.push_str("\nFailed configurations:\n");
        out.push_str(&failures);
    }
    out
}

/// The rows as one JSON array.
pub fn json(rows: &[SweepRow]) -> String {
    serde_json::to_string_pretty(rows).unwrap_or_default()
}

/// Writes the rendered sweep to a file, naming the file in the error.
pub fn write_to(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| BenchError::Write {
        path: path.to_path_buf(),
        source: e,
    })
}
