//! Real `concordant` processes for the integration tests: [`ChildGuard`] (a child killed
//! and reaped when dropped, even on panic), [`ProcCluster`] (a cluster written by
//! `concordant init` whose nodes run as `concordant node` children, on free loopback ports
//! or each inside a network namespace, with their data directories kept across kills),
//! [`access::Access`] (a node's HTTP API, through the crate's client or through the
//! `concordant` command line run inside a namespace), a [`workload::Workload`] of concurrent
//! writers recording a history for the checker, and bounded waits for convergence ending
//! in the checker's verdict.
//!
//! Owns only test scaffolding: it drives the binary and its HTTP API and reads a stopped
//! node's store; it never reaches into the crate's internals.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use automerge::{Automerge, Change, ChangeHash};
use concordant::client::Client;
use concordant::config::Config;
use concordant::storage::{RedbStore, Store};

use super::checker::{check, ReplicaState, SharedHistory, Verdict};

pub mod access;
pub mod workload;

use access::{Access, Failure};

/// The `concordant` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_concordant");
/// Bound on every wait for a process, a link or an answer.
pub const WAIT: Duration = Duration::from_secs(15);
/// Poll period.
pub const POLL: Duration = Duration::from_millis(20);
/// Small timings so the cluster reacts fast (appended to every generated file).
pub const TUNING: &str = "\n[tuning]\ntick_ms = 50\nanti_entropy_ms = 300\nkeep_alive_ms = 200\n\
                          idle_timeout_ms = 1000\nreconnect_min_ms = 50\nreconnect_max_ms = 400\n\
                          compact_after = 250\n";
/// How often [`ProcCluster::start`] retries with other ports when one turns out taken.
const PORT_ATTEMPTS: usize = 5;

/// A child process that is killed (SIGKILL) and reaped when dropped, even on panic.
pub struct ChildGuard {
    /// Node id (for messages).
    pub name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl ChildGuard {
    /// Runs `concordant node --config <config> --id <id>` with RUST_LOG=info and its
    /// stderr in `log`; inside network namespace `netns` (through `ip netns exec`, which
    /// execs the binary: the child is the node itself) if given.
    pub fn node(config: &Path, id: &str, log: PathBuf, netns: Option<&str>) -> ChildGuard {
        ChildGuard::node_with(config, id, log, netns, |_| {})
    }

    /// [`ChildGuard::node`] run by another `concordant` binary (another release).
    pub fn node_of(bin: &Path, config: &Path, id: &str, log: PathBuf) -> ChildGuard {
        ChildGuard::spawn(Command::new(bin), config, id, log)
    }

    /// [`ChildGuard::node`], with `setup` applied to the command before it runs (limits
    /// set in `pre_exec`, say).
    pub fn node_with(
        config: &Path,
        id: &str,
        log: PathBuf,
        netns: Option<&str>,
        setup: impl FnOnce(&mut Command),
    ) -> ChildGuard {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        setup(&mut cmd);
        ChildGuard::spawn(cmd, config, id, log)
    }

    /// Runs `cmd node --config <config> --id <id>` as [`ChildGuard::node`] does.
    fn spawn(mut cmd: Command, config: &Path, id: &str, log: PathBuf) -> ChildGuard {
        let stderr = File::create(&log).expect("log file");
        let child = cmd
            .args(["node", "--config"])
            .arg(config)
            .args(["--id", id])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn concordant node");
        ChildGuard {
            name: id.to_string(),
            log,
            child: Some(child),
        }
    }

    /// The process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to end, at most [`WAIT`].
    pub async fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return status;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "{} did not exit within {WAIT:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the log contains `needle`, at most [`WAIT`].
    pub async fn wait_log(&mut self, needle: &str) {
        let start = Instant::now();
        while !self.log_text().contains(needle) {
            if let Some(status) = self.exited() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            if start.elapsed() > WAIT {
                panic!(
                    "{} did not log {needle:?} within {WAIT:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) -> ExitStatus {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.wait().await
    }

    /// SIGTERM (a graceful stop), then wait for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
        self.wait().await
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the binary with `args` (and `--dir <dir>` if given) to completion.
pub fn run(args: &[&str], dir: Option<&Path>) -> Output {
    run_bin(Path::new(BIN), args, dir)
}

/// [`run`] with another `concordant` binary (another release).
pub fn run_bin(bin: &Path, args: &[&str], dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.arg("--dir").arg(dir);
    }
    cmd.stdin(Stdio::null()).output().expect("run concordant")
}

/// A base port P such that UDP P+1..=P+n and TCP P+1001..=P+1000+n on 127.0.0.1 are free
/// now. P is drawn below the kernel's ephemeral range (32768 and up), so the ports are not
/// handed out to the sockets other tests bind to port 0 while a node is down.
pub fn free_base_port(n: u16) -> u16 {
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    for _ in 0..200 {
        let base: u16 = rand::random_range(10_000..31_000);
        let udp: Vec<_> = (1..=n).map(|i| UdpSocket::bind(at(base + i))).collect();
        let tcp: Vec<_> = (1..=n)
            .map(|i| TcpListener::bind(at(base + 1000 + i)))
            .collect();
        if udp.iter().all(Result::is_ok) && tcp.iter().all(Result::is_ok) {
            return base;
        }
    }
    panic!("no free base port found");
}

/// Every change hash stored in the store at `dir` (snapshot and log).
pub fn stored_hashes(dir: &Path) -> BTreeSet<ChangeHash> {
    let mut store = RedbStore::open(dir).unwrap_or_else(|e| panic!("open store: {e}"));
    let docs = store
        .load_all()
        .unwrap_or_else(|e| panic!("load store: {e}"));
    let mut hashes = BTreeSet::new();
    for doc in docs {
        if let Some(snapshot) = &doc.snapshot {
            let loaded = Automerge::load(snapshot).expect("stored snapshot loads");
            hashes.extend(loaded.get_changes(&[]).iter().map(Change::hash));
        }
        for bytes in doc.changes {
            let change = Change::from_bytes(bytes).expect("stored change decodes");
            hashes.insert(change.hash());
        }
    }
    hashes
}

/// Short hex of the hashes of `want` missing from `have`.
pub fn missing(want: &[ChangeHash], have: &BTreeSet<ChangeHash>) -> Vec<String> {
    want.iter()
        .filter(|h| !have.contains(h))
        .map(|h| hex::encode(&h.0[..4]))
        .collect()
}

/// A cluster written by `concordant init` whose nodes run as child processes.
pub struct ProcCluster {
    /// Holds `cluster.toml`, `certs/`, `data/<id>` and `logs/`.
    pub dir: tempfile::TempDir,
    /// The topology file.
    pub config_path: PathBuf,
    /// The file as last written (what a node started now would run).
    pub config: Config,
    nodes: Vec<Option<ChildGuard>>,
    starts: Vec<usize>,
    netns: Vec<Option<String>>,
    /// The binary each node runs (`None`: the one under test).
    bins: Vec<Option<PathBuf>>,
}

impl ProcCluster {
    /// Writes a cluster of `n` nodes (`init --topology <topology>`) on free loopback ports
    /// with the test tuning; starts nothing.
    pub fn init(n: usize, topology: &str) -> ProcCluster {
        ProcCluster::init_with(n, topology, None)
    }

    /// [`ProcCluster::init`] with each document on `replicas` of the nodes.
    pub fn init_with(n: usize, topology: &str, replicas: Option<usize>) -> ProcCluster {
        ProcCluster::init_by(Path::new(BIN), n, topology, replicas)
    }

    /// [`ProcCluster::init_with`], written by `bin`'s `init` (another release's), whose
    /// nodes run `bin` until [`ProcCluster::set_binary`] says otherwise.
    pub fn init_by(bin: &Path, n: usize, topology: &str, replicas: Option<usize>) -> ProcCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = init_files(bin, dir.path(), n, topology, replicas);
        let own = bin == Path::new(BIN);
        ProcCluster {
            config_path: config.path.clone(),
            config,
            dir,
            nodes: (0..n).map(|_| None).collect(),
            starts: vec![0; n],
            netns: vec![None; n],
            bins: vec![(!own).then(|| bin.to_path_buf()); n],
        }
    }

    /// Node `i` runs `bin` from its next start on.
    pub fn set_binary(&mut self, i: usize, bin: &Path) {
        self.bins[i] = (bin != Path::new(BIN)).then(|| bin.to_path_buf());
    }

    /// [`ProcCluster::init`], every node started and answering; retried on other ports if
    /// one turns out taken.
    pub async fn start(n: usize, topology: &str) -> ProcCluster {
        ProcCluster::start_with(n, topology, None).await
    }

    /// [`ProcCluster::start`] with each document on `replicas` of the nodes.
    pub async fn start_with(n: usize, topology: &str, replicas: Option<usize>) -> ProcCluster {
        let mut cluster = ProcCluster::init_with(n, topology, replicas);
        for attempt in 1..=PORT_ATTEMPTS {
            match cluster.start_all().await {
                Ok(()) => return cluster,
                Err(log) if log.contains("cannot bind") || log.contains("in use") => {
                    eprintln!("attempt {attempt}: a port was taken; trying other ports");
                    for i in cluster.started() {
                        cluster.kill(i).await;
                    }
                    let _ = std::fs::remove_dir_all(cluster.dir.path().join("data"));
                    cluster.config =
                        init_files(Path::new(BIN), cluster.dir.path(), n, topology, replicas);
                }
                Err(log) => panic!("a node exited early:\n{log}"),
            }
        }
        panic!("no free ports after {PORT_ATTEMPTS} attempts");
    }

    /// Starts every node and waits until all are up; `Err` with the log of one that
    /// exited meanwhile (the others keep running).
    pub async fn start_all(&mut self) -> Result<(), String> {
        for i in 0..self.len() {
            self.spawn(i);
        }
        let start = Instant::now();
        for i in 0..self.len() {
            loop {
                let child = self.child(i);
                if let Some(status) = child.exited() {
                    let log = child.log_text();
                    self.nodes[i] = None;
                    return Err(format!("{} exited with {status}:\n{log}", self.id(i)));
                }
                if child.log_text().contains("running; stop with")
                    && self.access(i).status().await.is_ok()
                {
                    break;
                }
                assert!(
                    start.elapsed() < WAIT,
                    "{} not up within {WAIT:?}",
                    self.id(i)
                );
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    /// Replaces the topology file (it must be valid); running nodes keep what they read.
    pub fn write_config(&mut self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write cluster.toml");
        self.config = Config::load(&self.config_path).expect("valid cluster.toml");
    }

    /// The topology file's text.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).expect("cluster.toml")
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Id of node `i` (`n1`..).
    pub fn id(&self, i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// Every node id.
    pub fn ids(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.id(i)).collect()
    }

    /// Data directory of node `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.config.node(&self.id(i)).expect("node").data.clone()
    }

    /// Runs node `i` inside namespace `ns` from now on.
    pub fn set_netns(&mut self, i: usize, ns: &str) {
        self.netns[i] = Some(ns.to_string());
    }

    /// How the test reaches node `i`'s API.
    pub fn access(&self, i: usize) -> Access {
        match &self.netns[i] {
            Some(ns) => Access::Netns {
                ns: ns.clone(),
                config: self.config_path.clone(),
                node: self.id(i),
            },
            None => Access::Client(
                Client::for_node(&self.config, &self.id(i))
                    .expect("client")
                    .with_timeout(Duration::from_secs(10)),
            ),
        }
    }

    /// The indices of the nodes started and not stopped by the test.
    pub fn started(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    /// Starts node `i` from the current file (its log in `logs/<id>-<k>.log`).
    pub fn spawn(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "{} already runs", self.id(i));
        self.starts[i] += 1;
        let logs = self.dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let log = logs.join(format!("{}-{}.log", self.id(i), self.starts[i]));
        let child = match &self.bins[i] {
            Some(bin) => ChildGuard::node_of(bin, &self.config_path, &self.id(i), log),
            None => ChildGuard::node(
                &self.config_path,
                &self.id(i),
                log,
                self.netns[i].as_deref(),
            ),
        };
        self.nodes[i] = Some(child);
    }

    /// The child of node `i`.
    pub fn child(&mut self, i: usize) -> &mut ChildGuard {
        let id = self.id(i);
        self.nodes[i]
            .as_mut()
            .unwrap_or_else(|| panic!("{id} is not running"))
    }

    /// Waits until node `i` answers and handles SIGTERM; panics with its log if it exits.
    pub async fn wait_up(&mut self, i: usize) {
        self.child(i).wait_log("running; stop with").await;
        let access = self.access(i);
        let start = Instant::now();
        while let Err(e) = access.status().await {
            assert!(
                start.elapsed() < WAIT,
                "{} does not answer within {WAIT:?}: {e}",
                self.id(i)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts node `i` and waits until it is up.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_up(i).await;
    }

    /// SIGKILL node `i`; its data directory stays.
    pub async fn kill(&mut self, i: usize) -> ExitStatus {
        let status = self.child(i).kill().await;
        self.nodes[i] = None;
        status
    }

    /// Waits (at most [`WAIT`]) for node `i` to exit by itself; its status and log.
    pub async fn wait_exit(&mut self, i: usize) -> (ExitStatus, String) {
        let child = self.child(i);
        let status = child.wait().await;
        let log = child.log_text();
        self.nodes[i] = None;
        (status, log)
    }

    /// SIGTERM node `i` and wait for a successful exit.
    pub async fn terminate(&mut self, i: usize) {
        let child = self.child(i);
        let status = child.terminate().await;
        assert!(
            status.success(),
            "{} after SIGTERM: {status}:\n{}",
            child.name,
            child.log_text()
        );
        self.nodes[i] = None;
    }

    /// The states of every started node (`Err` if one does not answer).
    pub async fn states(&self) -> Result<Vec<ReplicaState>, Failure> {
        let mut out = Vec::new();
        for i in self.started() {
            out.push(self.access(i).replica_state(&self.id(i)).await?);
        }
        Ok(out)
    }

    /// Waits until every started node holds the same documents with the same heads and
    /// JSON (at least one document). Returns the states and how long it took; `Err` with
    /// the last states seen past `timeout`.
    pub async fn wait_converged(
        &self,
        timeout: Duration,
    ) -> Result<(Vec<ReplicaState>, Duration), Vec<ReplicaState>> {
        let start = Instant::now();
        let mut last = Vec::new();
        loop {
            if let Ok(states) = self.states().await {
                let same = states.windows(2).all(|w| w[0].docs == w[1].docs);
                if same && states.first().is_some_and(|s| !s.docs.is_empty()) {
                    return Ok((states, start.elapsed()));
                }
                last = states;
            }
            if start.elapsed() > timeout {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for convergence, then checks the history against every started node; panics
    /// with the verdict, a report and the logs' tails unless nothing is lost, every
    /// counter is in range and no replica diverged. Returns the verdict and the time
    /// convergence took.
    pub async fn check(
        &mut self,
        history: &SharedHistory,
        timeout: Duration,
    ) -> (Verdict, Duration) {
        let (states, took) = match self.wait_converged(timeout).await {
            Ok((states, took)) => (states, Some(took)),
            Err(states) => (states, None),
        };
        let verdict = check(&history.lock().expect("history"), &states);
        eprintln!("checker: {verdict}");
        if verdict.is_ok() && states.len() == self.started().len() {
            if let Some(took) = took {
                return (verdict, took);
            }
        }
        let mut tails = String::new();
        for i in self.started() {
            let log = self.child(i).log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            let _ = writeln!(tails, "--- {} log tail:\n{tail}", self.id(i));
        }
        panic!(
            "not converged within {timeout:?} or the checker failed ({} replicas answered):\n\
             {verdict}\n{}\n{tails}",
            states.len(),
            self.report().await
        );
    }

    /// One line per node: running or not, its peers (L linked, C connected, D down), its
    /// documents with short heads.
    pub async fn report(&self) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            if self.nodes[i].is_none() {
                let _ = writeln!(out, "  {}: stopped", self.id(i));
                continue;
            }
            let access = self.access(i);
            let peers = peers_line(&access).await;
            let docs = match access.docs().await {
                Ok(d) => d.to_string(),
                Err(e) => e.to_string(),
            };
            let _ = writeln!(out, "  {}: peers [{peers}] docs {docs}", self.id(i));
        }
        out
    }
}

/// Runs `bin init` for `n` nodes into `dir` on free loopback ports (over an existing
/// cluster), appends the test tuning; the loaded file.
fn init_files(bin: &Path, dir: &Path, n: usize, topology: &str, replicas: Option<usize>) -> Config {
    let base = free_base_port(u16::try_from(n).expect("node count")).to_string();
    let nodes = n.to_string();
    let mut args = vec![
        "init",
        "--nodes",
        &nodes,
        "--topology",
        topology,
        "--base-port",
        &base,
        "--force",
    ];
    let r = replicas.map(|r| r.to_string());
    if let Some(r) = &r {
        args.extend(["--replicas", r.as_str()]);
    }
    let out = run_bin(bin, &args, Some(dir));
    assert!(out.status.success(), "init failed: {out:?}");
    let path = dir.join("cluster.toml");
    let text = std::fs::read_to_string(&path).expect("cluster.toml");
    std::fs::write(&path, format!("{text}{TUNING}")).expect("write cluster.toml");
    Config::load(&path).expect("valid cluster.toml")
}

/// A node's peers for a report: `id:` then L (linked), C (connected), D (down).
pub async fn peers_line(access: &Access) -> String {
    match access.status().await {
        Ok(s) => s["peers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|p| {
                let flag = |k: &str, c: &'static str| if p[k] == true { c } else { "" };
                format!(
                    "{}:{}{}{}",
                    p["id"].as_str().unwrap_or("?"),
                    flag("linked", "L"),
                    flag("connected", "C"),
                    flag("down", "D")
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("no status: {e}"),
    }
}
