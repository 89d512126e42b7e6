//! HAProxy in front of a [`ProcCluster`], run from the documented configuration itself
//! (`docs/haproxy.cfg`, its `${...}` variables set to the cluster's addresses and free
//! loopback ports): [`require_haproxy`] fails with what to install when it is missing,
//! [`Balancer`] runs `haproxy -db` as a child (killed when dropped) and reads its statistics
//! (`/stats;csv`) to see which nodes it has in its pool.
//!
//! Owns only test scaffolding: it runs HAProxy and reads what HAProxy reports.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use concordant::client::Client;
use hyper::Method;

use super::procs::{ProcCluster, POLL, WAIT};

/// The configuration the docs give (`docs/load-balancer.md`).
pub fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join("haproxy.cfg")
}

/// Where Debian installs HAProxy (not on the `PATH` of users other than root).
const SBIN_HAPROXY: &str = "/usr/sbin/haproxy";

/// The `haproxy` command: the one on the `PATH`, else Debian's.
fn haproxy() -> &'static str {
    let on_path = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if on_path || !Path::new(SBIN_HAPROXY).exists() {
        "haproxy"
    } else {
        SBIN_HAPROXY
    }
}

/// Panics with what to do unless `haproxy` runs.
pub fn require_haproxy() {
    match Command::new(haproxy()).arg("-v").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`haproxy -v` failed: {out:?}"),
        Err(e) => panic!(
            "cannot run `haproxy` ({e}): the load balancer tests need HAProxy 2.x; install \
             Debian's package with `apt-get install -y haproxy` (.ci/run does when it is missing)"
        ),
    }
}

/// A free TCP port on 127.0.0.1 below the ephemeral range (see `procs::free_base_port`).
fn free_port() -> u16 {
    for _ in 0..200 {
        let port: u16 = rand::random_range(10_000..31_000);
        if TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// One server row of HAProxy's statistics.
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    /// `UP`, `DOWN`, `UP 1/2`, `DOWN 1/2`, `MAINT`, ...
    pub status: String,
    /// The last check's outcome (`L7OK`, `L4CON`, `L7STS`, ...).
    pub check: String,
    /// Connections open now.
    pub current: u64,
    /// Answers with a 2xx status so far.
    pub answered_2xx: u64,
}

/// `haproxy -db -f docs/haproxy.cfg` for a cluster; killed when dropped.
pub struct Balancer {
    child: Option<Child>,
    log: PathBuf,
    /// `127.0.0.1:<port>` the balancer serves the API at.
    pub addr: String,
    stats: Client,
}

impl Balancer {
    /// Starts HAProxy in front of the cluster's nodes (`n1`..`n3`, as the configuration
    /// lists them) and waits until every node has passed a health check. Retried on other
    /// ports if one turns out taken.
    pub async fn start(cluster: &ProcCluster) -> Balancer {
        let log = cluster.dir.path().join("logs").join("haproxy.log");
        let config = config_path();
        for attempt in 1..=5 {
            let (api, stats) = (free_port(), free_port());
            let mut cmd = Command::new(haproxy());
            cmd.arg("-db")
                .arg("-f")
                .arg(&config)
                .env("CONCORDANT_LB_BIND", format!("127.0.0.1:{api}"))
                .env("CONCORDANT_LB_STATS", format!("127.0.0.1:{stats}"));
            for (i, node) in cluster.config.nodes.iter().enumerate() {
                cmd.env(format!("CONCORDANT_N{}", i + 1), node.api.to_string());
            }
            let out = File::create(&log).expect("haproxy log file");
            let err = out.try_clone().expect("haproxy log file");
            let child = cmd
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn haproxy");
            let mut balancer = Balancer {
                child: Some(child),
                log: log.clone(),
                addr: format!("127.0.0.1:{api}"),
                stats: Client::new(&format!("http://127.0.0.1:{stats}"), None)
                    .expect("stats URL")
                    .with_timeout(Duration::from_secs(5)),
            };
            match balancer.wait_ready(cluster).await {
                Ok(()) => return balancer,
                Err(text) if text.contains("cannot bind") => {
                    eprintln!("attempt {attempt}: a port was taken; trying other ports");
                }
                Err(text) => panic!("haproxy exited:\n{text}"),
            }
        }
        panic!("no free ports for haproxy after 5 attempts");
    }

    /// Waits until every node's check passed; `Err` with the log if HAProxy exited.
    async fn wait_ready(&mut self, cluster: &ProcCluster) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("{status}:\n{}", self.log_text()));
                }
            }
            if let Ok(servers) = self.servers().await {
                let ready = cluster
                    .ids()
                    .iter()
                    .all(|id| servers.get(&http(id)).is_some_and(|s| s.check == "L7OK"));
                if ready {
                    return Ok(());
                }
            }
            assert!(
                start.elapsed() < WAIT,
                "haproxy did not see every node pass a check within {WAIT:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The API's base URL through the balancer.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything HAProxy logged so far (requests, servers going up and down).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every server row of the statistics, by `(backend, server)`.
    pub async fn servers(&self) -> Result<BTreeMap<(String, String), ServerStats>, String> {
        let answer = self
            .stats
            .request(Method::GET, "/stats;csv", None)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .ok_or_else(|| format!("no CSV header in {text:?}"))?
            .split(',')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or_else(|| format!("no column {name} in the statistics"))
        };
        let (status, check, current, ok) = (
            col("status")?,
            col("check_status")?,
            col("scur")?,
            col("hrsp_2xx")?,
        );
        let mut out = BTreeMap::new();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < header.len() || f[1] == "FRONTEND" || f[1] == "BACKEND" {
                continue;
            }
            let number = |i: usize| f[i].parse().unwrap_or(0);
            out.insert(
                (f[0].to_string(), f[1].to_string()),
                ServerStats {
                    status: f[status].to_string(),
                    check: f[check].to_string(),
                    current: number(current),
                    answered_2xx: number(ok),
                },
            );
        }
        Ok(out)
    }

    /// The statistics of node `id` in the HTTP backend.
    pub async fn http_server(&self, id: &str) -> ServerStats {
        let servers = self
            .servers()
            .await
            .unwrap_or_else(|e| panic!("haproxy statistics: {e}"));
        servers.get(&http(id)).cloned().unwrap_or_default()
    }

    /// Waits (at most `within`) until HAProxy has taken node `id` out of both backends;
    /// how long that took.
    pub async fn wait_down(&self, id: &str, within: Duration) -> Duration {
        let start = Instant::now();
        let mut last = None;
        loop {
            if let Ok(servers) = self.servers().await {
                let down = |key| {
                    servers
                        .get(&key)
                        .is_some_and(|s: &ServerStats| s.status == "DOWN")
                };
                if down(http(id)) && down(sync(id)) {
                    return start.elapsed();
                }
                last = Some(servers);
            }
            assert!(
                start.elapsed() < within,
                "haproxy did not take {id} out of its pool within {within:?}: {last:?}\n{}",
                self.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The key of node `id` in the HTTP backend.
fn http(id: &str) -> (String, String) {
    ("nodes_http".into(), id.into())
}

/// The key of node `id` in the WebSocket backend.
fn sync(id: &str) -> (String, String) {
    ("nodes_sync".into(), id.into())
}
