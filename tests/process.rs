//! The `concordant` binary as real child processes: `init`, then nodes run with `node`,
//! killed with SIGKILL (they keep every change they acknowledged) and stopped with SIGTERM
//! (a clean shutdown, after catching up); plus the refusals of `node` with an invalid
//! file and of `init` over an existing cluster.
//!
//! Writes are driven from node n3 running in this process (from the same topology file), so
//! their hashes and acknowledgements are seen directly; n1 and n2 are child processes, and
//! what n1 stored is checked by opening its store directly once it has stopped. The
//! process harness is `common::procs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use automerge::ChangeHash;
use common::procs::{
    free_base_port, missing, run, stored_hashes, ChildGuard, BIN, POLL, TUNING, WAIT,
};
use concordant::config::Config;
use concordant::node::{Ack, Node, NodeConfig};

const DOC: &str = "log";
/// How often to retry the whole set-up when a port turns out to be taken.
const PORT_ATTEMPTS: usize = 5;

/// A running three-node cluster: n1 and n2 as processes, n3 in this process.
struct Cluster {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    config: Config,
    n1: Option<ChildGuard>,
    n2: ChildGuard,
    n3: Node,
}

impl Cluster {
    /// `concordant init` a ring of three on free ports, then starts it; retried with
    /// another base port if a port turns out to be taken.
    async fn start() -> Cluster {
        let mut dir = tempfile::tempdir().expect("temp dir");
        for attempt in 1..=PORT_ATTEMPTS {
            let base = free_base_port(3).to_string();
            let out = run(
                &[
                    "init",
                    "--nodes",
                    "3",
                    "--topology",
                    "ring",
                    "--base-port",
                    &base,
                    "--force",
                ],
                Some(dir.path()),
            );
            assert!(out.status.success(), "init failed: {out:?}");
            let config_path = dir.path().join("cluster.toml");
            let mut text = std::fs::read_to_string(&config_path).expect("cluster.toml");
            text.push_str(TUNING);
            std::fs::write(&config_path, text).expect("write cluster.toml");
            let config = Config::load(&config_path).expect("valid cluster.toml");

            let logs = dir.path().join("logs");
            std::fs::create_dir_all(&logs).expect("logs dir");
            let n1 = ChildGuard::node(&config_path, "n1", logs.join("n1.log"), None);
            let n2 = ChildGuard::node(&config_path, "n2", logs.join("n2.log"), None);
            let n3 =
                match Node::start(NodeConfig::from_file(&config, "n3").expect("n3 config")).await {
                    Ok(n3) => n3,
                    Err(e) if e.to_string().contains("cannot bind") => {
                        eprintln!("attempt {attempt}: n3: {e}; trying other ports");
                        continue;
                    }
                    Err(e) => panic!("n3 does not start: {e}"),
                };
            let mut cluster = Cluster {
                dir,
                config_path,
                config,
                n1: Some(n1),
                n2,
                n3,
            };
            match cluster.wait_connected(&["n1", "n2"]).await {
                Ok(()) => return cluster,
                Err(log) if log.contains("cannot bind") => {
                    eprintln!("attempt {attempt}: a port was taken; trying other ports");
                    let _ = cluster.n3.shutdown().await;
                    dir = cluster.dir;
                    continue;
                }
                Err(log) => panic!("a node exited early:\n{log}"),
            }
        }
        panic!("no free ports after {PORT_ATTEMPTS} attempts");
    }

    fn n1(&mut self) -> &mut ChildGuard {
        self.n1.as_mut().expect("n1 process")
    }

    /// Waits until n3 is connected to every peer in `peers`; `Err` with the log of a
    /// child that exited meanwhile.
    async fn wait_connected(&mut self, peers: &[&str]) -> Result<(), String> {
        let start = Instant::now();
        loop {
            for child in self.n1.iter_mut().chain([&mut self.n2]) {
                if let Some(status) = child.exited() {
                    return Err(format!(
                        "{} exited with {status}:\n{}",
                        child.name,
                        child.log_text()
                    ));
                }
            }
            let status = self.n3.status().await.expect("n3 status");
            let connected = status.connected_peers();
            if peers.iter().all(|p| connected.contains(p)) {
                return Ok(());
            }
            if start.elapsed() > WAIT {
                panic!(
                    "n3 not connected to {peers:?} within {WAIT:?}: {:?}",
                    status.peers
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Data directory of node `id`.
    fn data_dir(&self, id: &str) -> PathBuf {
        self.config.node(id).expect("node in config").data.clone()
    }

    /// Appends entry `n` at n3 with write concern `ack`; returns the change's hash and
    /// the peers that acknowledged it.
    async fn write(&self, n: usize, ack: Ack) -> (ChangeHash, Vec<String>) {
        let written = self
            .n3
            .change_with(DOC, ack, Duration::from_secs(10), move |tx| {
                use automerge::transaction::Transactable;
                tx.put(automerge::ROOT, format!("entry{n}"), n as i64)
            })
            .await
            .unwrap_or_else(|e| panic!("write {n} with {ack:?}: {e}"));
        // n3 is the only writer: its change is the single head.
        assert_eq!(
            written.heads.len(),
            1,
            "one head after a single writer's change"
        );
        (written.heads[0], written.acked_by)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_keeps_what_it_acknowledged_and_catches_up_after_restart() {
    let mut cluster = Cluster::start().await;
    let both = vec!["n1".to_string(), "n2".to_string()];

    // Acknowledged by every node: durable on n1 and n2.
    let mut acked_by_n1 = Vec::new();
    for n in 0..5 {
        let (hash, acked_by) = cluster.write(n, Ack::All).await;
        assert_eq!(acked_by, both);
        acked_by_n1.push(hash);
    }

    // SIGKILL n1; writes go on, acknowledged by n2.
    let status = cluster.n1().kill().await;
    assert!(!status.success(), "n1 was killed: {status}");
    let mut all = acked_by_n1.clone();
    for n in 5..10 {
        let (hash, acked_by) = cluster.write(n, Ack::Peers(1)).await;
        assert_eq!(acked_by, vec!["n2".to_string()]);
        all.push(hash);
    }

    // n1's store has every change it acknowledged before it was killed.
    let n1_dir = cluster.data_dir("n1");
    let stored = stored_hashes(&n1_dir);
    let lost = missing(&acked_by_n1, &stored);
    assert!(lost.is_empty(), "n1 lost acknowledged changes {lost:?}");

    // Restart n1; once it has caught up, stop it with SIGTERM: a clean exit, and its store
    // holds every write, those made while it was down included. n3 cannot see n1's state,
    // so this is checked after each graceful stop, restarting n1 if needed (bounded).
    let started = Instant::now();
    for round in 1.. {
        let log = cluster
            .dir
            .path()
            .join("logs")
            .join(format!("n1-{round}.log"));
        cluster.n1 = Some(ChildGuard::node(&cluster.config_path, "n1", log, None));
        if let Err(log) = cluster.wait_connected(&["n1", "n2"]).await {
            panic!("n1 exited after its restart:\n{log}");
        }
        // n1 is connected (possibly n3 still holds its connection to the killed instance,
        // which is not noticed before the idle timeout): a write with Ack::All must be
        // acknowledged by n1 too, whichever way the change reaches it.
        let key = format!("after-restart-{round}");
        let result = cluster
            .n3
            .change_with(DOC, Ack::All, Duration::from_secs(10), move |tx| {
                use automerge::transaction::Transactable;
                tx.put(automerge::ROOT, key, round as i64)
            })
            .await;
        match result {
            Ok(written) => {
                assert_eq!(written.acked_by, both);
                all.extend(written.heads);
            }
            Err(concordant::Error::AckTimeout { heads, acked_by }) => {
                let status = cluster.n1().terminate().await;
                let stored = stored_hashes(&n1_dir);
                panic!(
                    "Ack::All after n1's restart timed out, acknowledged only by {acked_by:?}, \
                     although n1 was connected and stored the change: {} (n1 exit: {status})",
                    heads.iter().all(|h| stored.contains(h))
                );
            }
            Err(e) => panic!("write after n1's restart: {e}"),
        }
        // SIGTERM only once n1 handles it (its signal handler is installed after start-up).
        cluster.n1().wait_log("running; stop with").await;

        let n1 = cluster.n1();
        let status = n1.terminate().await;
        let log = n1.log_text();
        assert!(
            status.success(),
            "n1 exit after SIGTERM: {status}; log:\n{log}"
        );
        assert!(
            log.contains("shutting down") && log.contains("stopped"),
            "n1's log shows no clean shutdown:\n{log}"
        );
        cluster.n1 = None;
        let stored = stored_hashes(&n1_dir);
        let lost = missing(&all, &stored);
        if lost.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "n1 did not catch up within {WAIT:?} ({round} restarts): missing {lost:?}"
        );
    }
    cluster.n3.shutdown().await.expect("n3 shutdown");
}

#[test]
fn node_with_an_invalid_config_exits_with_a_message_naming_file_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(
        &["init", "--nodes", "3", "--topology", "mesh"],
        Some(dir.path()),
    );
    assert!(out.status.success(), "init failed: {out:?}");
    let good = std::fs::read_to_string(dir.path().join("cluster.toml")).expect("cluster.toml");

    let cases = [
        (
            "bad-topology.toml",
            good.replace("topology = \"mesh\"", "topology = \"star\""),
            "topology",
        ),
        (
            "duplicate-id.toml",
            good.replace("id = \"n2\"", "id = \"n1\""),
            "node[2].id",
        ),
        (
            "bad-tuning.toml",
            format!("{good}\n[tuning]\nkeep_alive_ms = 5000\nidle_timeout_ms = 1000\n"),
            "tuning.idle_timeout_ms",
        ),
    ];
    for (name, text, field) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write config");
        let out = Command::new(BIN)
            .args(["node", "--config"])
            .arg(&path)
            .args(["--id", "n1"])
            .stdin(Stdio::null())
            .output()
            .expect("run concordant node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: node started: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()) && stderr.contains(field),
            "{name}: the message should name {} and {field}: {stderr}",
            path.display()
        );
    }

    // A node id that is not in the file.
    let out = Command::new(BIN)
        .args(["node", "--config"])
        .arg(dir.path().join("cluster.toml"))
        .args(["--id", "n9"])
        .stdin(Stdio::null())
        .output()
        .expect("run concordant node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unknown node started: {stderr}");
    assert!(
        stderr.contains("n9"),
        "the message should name n9: {stderr}"
    );
}

#[test]
fn init_refuses_to_overwrite_a_cluster_without_force() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ["init", "--nodes", "3", "--topology", "ring"];
    let out = run(&args, Some(dir.path()));
    assert!(out.status.success(), "init failed: {out:?}");
    let toml = dir.path().join("cluster.toml");
    let ca = dir.path().join("certs").join("ca.pem");
    let read = |p: &Path| std::fs::read(p).expect("read");
    let (toml_before, ca_before) = (read(&toml), read(&ca));

    let out = run(&args, Some(dir.path()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "init overwrote a cluster: {stderr}");
    assert!(
        stderr.contains("--force") && stderr.contains("cluster.toml"),
        "the message should name the file and --force: {stderr}"
    );
    assert_eq!(read(&toml), toml_before, "cluster.toml was changed");
    assert_eq!(read(&ca), ca_before, "the CA was changed");

    let mut forced = args.to_vec();
    forced.push("--force");
    let out = run(&forced, Some(dir.path()));
    assert!(out.status.success(), "init --force failed: {out:?}");
    assert_ne!(read(&ca), ca_before, "--force writes a new CA");
    Config::load(&toml).expect("the new cluster.toml is valid");
}
